"""A fingerprint set pinned before the library's internals are rearranged: the same owner,
config, key and data must give the same set afterwards.

The owner (a digits MLP), the start data and the expected arrays live in
``tests/golden/pinned_digits_mlp.npz``; ``python tests/test_pinned.py --write`` remakes the file
(only do that on purpose: it re-pins). On the platform that wrote it (same jax/jaxlib and CPU
flags) the set must match bit for bit. Elsewhere XLA may round sums in another order
(docs/determinism.md), so the test then asks for what such rounding cannot change: the same
labels, runner-ups, targets and start points, points within a few Adam steps of the pinned ones
(mean difference <= 2e-3, none over 0.05) and step counts within 3.
"""

from __future__ import annotations

import json
from importlib import metadata
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ipguard_jax as ipg

GOLDEN = Path(__file__).resolve().parent / "golden" / "pinned_digits_mlp.npz"
CONFIG = dict(num=24, k=1.0, steps=150, batch_size=8, keep="all", init="data",
              target="random", loop="host")
KEY = 20261206


def _platform() -> str:
    return json.dumps({"jax": jax.__version__, "jaxlib": metadata.version("jaxlib"),
                       "machine": platform.machine(), "backend": jax.default_backend(),
                       "cpu": _cpu_flags()}, sort_keys=True)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return ",".join(sorted(f for f in flags if f.startswith(("avx", "fma", "sse4"))))
    except OSError:
        pass
    return "unknown"


def _owner(params: dict[str, np.ndarray]) -> ipg.Classifier:
    def apply(p, x):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
        return h @ p["w2"] + p["b2"]

    return ipg.Classifier(apply, {k: jnp.asarray(v) for k, v in params.items()},
                          input_shape=(8, 8, 1))


def _generate(params, data):
    return ipg.generate(_owner(params), ipg.FingerprintConfig(**CONFIG), key=KEY, data=data,
                        progress=False)


def _write() -> None:
    from ipguard_jax import data as ipg_data

    digits = ipg_data.load_digits()
    rng = np.random.default_rng(0)
    x, y = digits.x[:600].reshape(600, -1), digits.y[:600]
    params = {"w1": rng.normal(0, 0.1, (64, 32)).astype(np.float32),
              "b1": np.zeros(32, np.float32),
              "w2": rng.normal(0, 0.1, (32, 10)).astype(np.float32),
              "b2": np.zeros(10, np.float32)}
    # a few hundred steps of plain gradient descent: an owner that classifies digits
    loss = jax.jit(jax.value_and_grad(lambda p: -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]),
        y[:, None], axis=1))))
    p = {k: jnp.asarray(v) for k, v in params.items()}
    for _ in range(300):
        _, g = loss(p)
        p = {k: p[k] - 0.5 * g[k] for k in p}
    params = {k: np.asarray(v) for k, v in p.items()}
    data = digits.x[600:700]
    fp = _generate(params, data)
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, data=data, platform=np.array(_platform()),
                        **{f"param_{k}": v for k, v in params.items()},
                        **{f"fp_{k}": v for k, v in fp.arrays().items()})
    print(f"wrote {GOLDEN}: {len(fp)} points, {int(fp.converged.sum())} converged")


def test_the_pinned_set_is_generated_again():
    with np.load(GOLDEN, allow_pickle=False) as f:
        params = {k[len("param_"):]: f[k] for k in f.files if k.startswith("param_")}
        expected = {k[len("fp_"):]: f[k] for k in f.files if k.startswith("fp_")}
        data, pinned_on = f["data"], str(f["platform"])
    got = _generate(params, data).arrays()
    assert set(got) == set(expected)
    assert expected["converged"].mean() > 0.5  # the pin is of real boundary points
    if _platform() == pinned_on:  # the same platform: bit for bit
        for name, value in expected.items():
            assert got[name].dtype == value.dtype and got[name].tobytes() == value.tobytes(), name
        return
    for name in ("labels", "i", "j", "source"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # A last-bit difference can stop a point a step earlier or later (one Adam step moves a
    # pixel by up to lr = 0.01), so the points agree closely, not exactly.
    assert np.abs(got["x"] - expected["x"]).mean() <= 2e-3
    np.testing.assert_allclose(got["x"], expected["x"], atol=0.05)
    assert np.abs(got["steps"].astype(int) - expected["steps"]).max() <= 3


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write()
    else:
        sys.exit("usage: python tests/test_pinned.py --write   (re-pins the golden set)")
