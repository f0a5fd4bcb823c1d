"""Generation time and peak memory against the number of points, batch size, compaction and
device count.

Each configuration runs in a fresh process (the CPU device count is fixed when JAX starts, and
peak memory is a per-process high-water mark): it builds the owner, compiles with a short
warm-up run of the same shapes (reported apart), then times ``generate`` once and reads the
process's peak resident memory before and after. The owner is an MLP trained on the embedded
digits; candidates start from uniform noise so that any number of points can be drawn, and run
at most ``--steps`` steps (Adam 0.01). The default k=20 gives this owner a heavy-tailed
convergence profile like a CIFAR ResNet's at k=10: median 55 steps, 90th percentile 106, about
1% of points never converging within 300.

Usage:
    python benchmarks/scale.py                       # the full grid (about 15-30 min here)
    python benchmarks/scale.py --points 100 300 --batch 64 --devices 1 --out /tmp/scale

Writes ``scale.json`` and ``scale.md`` to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402  (imports no JAX: workers set the device count first)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this process."""
    import jax

    jax.config.update("jax_num_cpu_devices", spec["devices"])
    import numpy as np
    import optax

    import ipguard_jax as ipg
    from ipguard_jax.data import load_digits

    digits = load_digits()
    x, y = digits.x[:1000], digits.y[:1000]

    def apply(params, inputs):
        h = inputs.reshape(inputs.shape[0], -1)
        for w, b in params[:-1]:
            h = jax.nn.relu(h @ w + b)
        w, b = params[-1]
        return h @ w + b

    keys = jax.random.split(jax.random.key(0), 2)
    params = [(jax.random.normal(keys[0], (64, 64)) * np.sqrt(2 / 64), np.zeros(64, np.float32)),
              (jax.random.normal(keys[1], (64, 10)) * np.sqrt(2 / 64), np.zeros(10, np.float32))]
    opt = optax.adam(1e-2)
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    @jax.jit
    def train(params):
        def step(carry, _):
            p, s = carry
            updates, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(step, (params, opt.init(params)), None, length=300)[0][0]

    params = train(params)
    owner = ipg.Classifier(apply, params, input_shape=(8, 8, 1))

    config = ipg.FingerprintConfig(num=spec["points"], k=spec["k"], steps=spec["steps"],
                                   init="noise", keep="all", batch_size=spec["batch"],
                                   compact=spec["compact"], loop="host")
    warm = ipg.FingerprintConfig(**{**config.__dict__, "num": min(spec["batch"], spec["points"])})
    warmup, _ = harness.clock(lambda: ipg.generate(owner, warm, key=1, progress=False))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds, fp = harness.clock(lambda: ipg.generate(owner, config, key=0, progress=False))
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**spec, "seconds": seconds, "warmup_s": warmup, "points_per_s": len(fp) / seconds,
            "converged": float(fp.converged.mean()), "mean_steps": float(fp.steps.mean()),
            "peak_rss_mib_before": rss_before, "peak_rss_mib": rss_after,
            "devices_used": fp.metadata["devices"]}


def _run_one(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"configuration {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fit_line(xs, ys) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x`` and its R^2."""
    import numpy as np

    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(xs, ys, 1)
    pred = a + b * xs
    ss = ((ys - ys.mean()) ** 2).sum()
    return float(a), float(b), float(1 - ((ys - pred) ** 2).sum() / ss) if ss > 0 else 1.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--compact", choices=["off", "on", "both"], default="both")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--k", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=harness.RESULTS,
                        help="results directory (scale.json and scale.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}

    compacts = {"off": [False], "on": [True], "both": [False, True]}[args.compact]
    rows = []
    for devices in args.devices:
        for batch in args.batch:
            for compact in compacts:
                for points in args.points:
                    spec = dict(points=points, batch=batch, compact=compact, devices=devices,
                                steps=args.steps, k=args.k)
                    row = _run_one(spec)
                    rows.append(row)
                    print(f"devices={devices} batch={batch} compact={compact} points={points}: "
                          f"{row['seconds']:.2f} s, {row['points_per_s']:.0f} pt/s, "
                          f"peak {row['peak_rss_mib']:.0f} MiB", flush=True)
    fits = []
    for devices in args.devices:
        for batch in args.batch:
            for compact in compacts:
                group = [r for r in rows if (r["devices"], r["batch"], r["compact"])
                         == (devices, batch, compact)]
                if len(group) < 2:
                    continue
                a, b, r2 = _fit_line([r["points"] for r in group], [r["seconds"] for r in group])
                mem = [r["peak_rss_mib"] for r in group]
                fits.append(dict(devices=devices, batch=batch, compact=compact,
                                 intercept_s=a, seconds_per_1000_points=1000 * b, r2=r2,
                                 peak_rss_mib_min=min(mem), peak_rss_mib_max=max(mem)))
    result = {
        "command": harness.command(__file__, argv),
        # This (parent) process's; each row's device count is its worker's own.
        "machine": harness.environment(omit=["devices"]),
        "rows": rows, "fits": fits,
    }
    harness.write_results(args.out / "scale", result, _markdown(result))
    return result


def _markdown(result: dict[str, Any]) -> str:
    lines = ["# Generation time and memory against scale", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {harness.describe(result['machine'])}", "",
             f"MLP owner on digits, noise starts, k={result['rows'][0]['k']}, "
             f"steps<={result['rows'][0]['steps']}, Adam 0.01, keep='all', host loop. Time "
             "excludes compilation (a warm-up run of the same shapes, reported apart). Peak "
             "memory is the process's peak resident set (JAX runtime, data and model "
             "included).", "",
             *harness.table(
                 ["devices", "batch", "compact", "points", "seconds", "points/s", "converged",
                  "mean steps", "warm-up s", "peak MiB"],
                 [[r["devices"], r["batch"], r["compact"], r["points"], f"{r['seconds']:.2f}",
                   f"{r['points_per_s']:.0f}", f"{r['converged']:.2f}",
                   f"{r['mean_steps']:.0f}", f"{r['warmup_s']:.1f}",
                   f"{r['peak_rss_mib']:.0f}"] for r in result["rows"]]),
             "", "Linear fit of time against points (per device count, batch, compaction):", "",
             *harness.table(
                 ["devices", "batch", "compact", "s per 1000 points", "intercept s", "R^2",
                  "peak MiB (min-max)"],
                 [[f["devices"], f["batch"], f["compact"], f"{f['seconds_per_1000_points']:.2f}",
                   f"{f['intercept_s']:.2f}", f"{f['r2']:.4f}",
                   f"{f['peak_rss_mib_min']:.0f}-{f['peak_rss_mib_max']:.0f}"]
                  for f in result["fits"]])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
