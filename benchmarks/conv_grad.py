"""Training-gradient cost of zoo models with each way of computing convolution kernel gradients.

On the CPU backend the zoo's convolutions (``ipguard_jax.backends.cpu.conv_general_dilated``,
chosen by ``ipguard_jax.backends.conv_general_dilated``) keep XLA's native forward pass and
input gradient but write the kernel gradient as matrix products, because XLA:CPU lowers it to
a convolution that runs at a fraction of the forward's speed. This script
times one training gradient (forward and backward with respect to the parameters, BatchNorm in
train mode, no optimizer) of each model with:

* ``native``: ``jax.lax.conv_general_dilated`` everywhere (XLA's own kernel gradient);
* ``taps``: one product per kernel tap, rows in one block;
* ``taps_blocks<N>``: the same with the rows split into N blocks (the zoo's default,
  ``ipguard_jax.backends.cpu.WGRAD_ROW_BLOCKS``), whose kernel gradient is a batched product
  that XLA:CPU spreads over threads.

The ``taps`` variants use the CPU rewrite whatever backend runs the script.

Variants run in alternating rounds (order rotated per round); medians; compile time apart.

    python benchmarks/conv_grad.py --models resnet20 cnn --batch 128 --reps 10
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ipguard_jax import models
# Private: the library has no public switch between kernel-gradient variants yet (see
# _variant); this is the one place a benchmark still sets library internals.
from ipguard_jax.backends import cpu
from ipguard_jax.models import _common

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402


@contextlib.contextmanager
def _variant(name: str):
    """Models built inside use the named kernel-gradient variant (see the module docstring).

    Sets ``ipguard_jax.models._common.conv_general_dilated`` (read when a model is built) and
    ``ipguard_jax.backends.cpu.WGRAD_ROW_BLOCKS`` (read when the gradient is traced) and
    restores both on exit.
    To go once the library can build a model with a given variant.
    """
    saved = _common.conv_general_dilated, cpu.WGRAD_ROW_BLOCKS
    try:
        if name == "native":
            _common.conv_general_dilated = jax.lax.conv_general_dilated
        else:
            _common.conv_general_dilated = cpu.conv_general_dilated
            if name == "taps":
                cpu.WGRAD_ROW_BLOCKS = 1
        yield
    finally:
        _common.conv_general_dilated, cpu.WGRAD_ROW_BLOCKS = saved


def _gradient_fn(model_name: str, variant: str, batch: int, seed: int):
    """A jitted ``() -> grads`` of the model's training loss, compiled under ``variant``."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))
    with _variant(variant):
        model = models.create(model_name, num_classes=10,
                              rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))
        model.train()  # BatchNorm on batch statistics, as in training
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            logits = nnx.merge(graphdef, params, rest, copy=True)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grad = jax.jit(jax.grad(loss))
        compile_s, grads = harness.clock(lambda: grad(params))  # traced in the variant
    return (lambda: grad(params)), grads, compile_s


def compare(model_name: str, variants: list[str], batch: int, reps: int, seed: int = 0) -> dict:
    """Median seconds of one training gradient per variant, alternating rounds.

    Args:
        model_name: a zoo model (CIFAR-10 shape, 10 classes).
        variants: variant names (see the module docstring).
        batch: the batch size.
        reps: timed rounds; each round runs every variant once, in a rotated order.
        seed: seed of the weights and the batch.

    Returns:
        ``{"median_s", "images_per_s", "compile_s", "times_s", "max_rel_diff_vs_first"}``,
        each keyed by variant; the last compares every gradient leaf with the first variant's.
    """
    fns, grads, compile_s = {}, {}, {}
    for v in variants:
        fns[v], grads[v], compile_s[v] = _gradient_fn(model_name, v, batch, seed)
    ref = jax.tree.leaves(grads[variants[0]])
    diff = {v: max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                   for a, b in zip(jax.tree.leaves(grads[v]), ref)) for v in variants}
    # Compiled above (inside each variant); rounds in an order rotated per round.
    timings = harness.alternate(fns, reps, first_call=False)
    times = {v: [round(s, 4) for s in t.times_s] for v, t in timings.items()}
    median = {v: t.median_s for v, t in timings.items()}
    return {"median_s": median, "images_per_s": {v: batch / s for v, s in median.items()},
            "compile_s": {v: round(s, 2) for v, s in compile_s.items()}, "times_s": times,
            "max_rel_diff_vs_first": diff}


def render(result: dict) -> str:
    """The comparison as Markdown tables, one per model, fastest variant in bold."""
    lines = ["# Training gradient by convolution kernel-gradient variant", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {harness.describe(result['environment'])}. Load average at the start "
             f"{result['load_average'][0]}, at the end {result['load_average'][1]}. One "
             f"training gradient (forward and backward w.r.t. the parameters, BatchNorm in "
             f"train mode) at batch {result['batch']}; medians of {result['reps']} alternating "
             f"rounds.", ""]
    for name, res in result["models"].items():
        first = result["variants"][0]
        best = min(res["median_s"], key=res["median_s"].get)
        rows = [[v, f"**{s:.3f}**" if v == best else f"{s:.3f}",
                 f"{res['images_per_s'][v]:.0f}", f"{res['median_s'][first] / s:.2f}x",
                 res["compile_s"][v], f"{res['max_rel_diff_vs_first'][v]:.1e}"]
                for v, s in res["median_s"].items()]
        lines += [f"## {name}", "", *harness.table(
            ["variant", "s per gradient", "images/s", f"speed-up over {first}", "compile s",
             f"max rel. difference vs {first}"], rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "cnn"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "conv_grad")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.reps < 1:
        parser.error("--batch and --reps must be >= 1")
    for name in args.models:
        if name not in models.available():
            parser.error(f"unknown model {name!r}; one of {models.available()}")
    variants = ["native", "taps", f"taps_blocks{cpu.WGRAD_ROW_BLOCKS}"]
    load_start = harness.load_average()
    result = {
        "command": harness.command(__file__, argv),
        "batch": args.batch, "reps": args.reps, "variants": variants,
        "environment": harness.environment(),
        "models": {name: compare(name, variants, args.batch, args.reps)
                   for name in args.models},
    }
    result["load_average"] = [load_start, harness.load_average()]
    harness.write_results(args.out, result, render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
