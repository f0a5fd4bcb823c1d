"""Cost of one optimisation step per point as a function of the batch size, on this machine.

Compaction keeps the working batch full of unconverged points, so what a fingerprint costs is
(updates it needs) x (time of one point-step at the working batch size). This script times one
compiled block of ``engine.run_steps`` (4 unrolled steps, as ``generate`` runs on CPU) at each
batch size, in alternating rounds, and reports the median per point-step, compile time apart.
The weights are freshly initialised: the cost of a step does not depend on their values.

    python benchmarks/step_batch.py --models resnet20 cnn --batches 4 8 16 32 64 128 --reps 5
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ipguard_jax import Classifier, engine, models

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402

STEPS_PER_BLOCK = 4


def sweep(model_name: str, batches: list[int], reps: int, seed: int = 0) -> dict:
    """Median ms per point-step of ``model_name`` at each batch size (alternating rounds).

    Args:
        model_name: a zoo model (CIFAR-10 shape, 10 classes).
        batches: the batch sizes.
        reps: timed rounds; each round runs every batch size once, in a rotated order.
        seed: seed of the weights and of the start points.

    Returns:
        ``{"compile_s": {batch: s}, "ms_per_point_step": {batch: median},
        "times_ms": {batch: [per round]}}`` (batch sizes as strings).
    """
    model = models.create(model_name, num_classes=10,
                          rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))
    clf = Classifier.from_nnx(model, input_shape=(32, 32, 3))
    rng = np.random.default_rng(seed)
    optimizer = optax.adam(0.01)

    @functools.partial(jax.jit, static_argnames="num_steps")
    def block(params, state, i, j, num_steps):  # compiled once per batch shape
        return engine.run_steps(clf.apply_fn, params, state, i, j, k=3.0, optimizer=optimizer,
                                num_steps=num_steps, max_steps=10 ** 6)

    blocks = {}
    for batch in batches:
        x = jnp.asarray(rng.uniform(0, 1, (batch, 32, 32, 3)).astype(np.float32))
        i = jnp.asarray(rng.integers(0, 10, batch))
        j = (i + 1 + jnp.asarray(rng.integers(0, 9, batch))) % 10
        state = engine.init_points(optimizer, x)
        blocks[str(batch)] = functools.partial(block, clf.params, state, i, j, STEPS_PER_BLOCK)
    # First calls (compile) in batch order, then rounds in an order rotated per round.
    timings = harness.alternate(blocks, reps)
    times = {b: [round(1e3 * s / STEPS_PER_BLOCK / int(b), 4) for s in t.times_s]
             for b, t in timings.items()}
    return {"compile_s": {b: round(t.first_s, 2) for b, t in timings.items()},
            "ms_per_point_step": {b: float(np.median(t)) for b, t in times.items()},
            "times_ms": times}


def render(result: dict) -> str:
    """The sweep as a Markdown table, fastest batch in bold."""
    lines = ["# One optimisation step per point, by batch size", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {harness.describe(result['environment'])}. Load average at the start "
             f"{result['load_average'][0]}, at the end {result['load_average'][1]}. Medians of "
             f"{result['reps']} alternating rounds; one round times a compiled block of "
             f"{STEPS_PER_BLOCK} unrolled steps (forward, input gradient, Adam, clip) at every "
             f"batch size.", ""]
    for name, res in result["models"].items():
        best = min(res["ms_per_point_step"], key=res["ms_per_point_step"].get)
        rows = [[batch, f"**{ms:.3f}**" if batch == best else f"{ms:.3f}",
                 f"{ms / res['ms_per_point_step'][best]:.2f}x", res["compile_s"][batch]]
                for batch, ms in res["ms_per_point_step"].items()]
        lines += [f"## {name}", "", *harness.table(
            ["batch", "ms per point-step", "relative to the fastest", "compile s"], rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "cnn"])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "step_batch")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batches) or args.reps < 1:
        parser.error("batch sizes and --reps must be >= 1")
    for name in args.models:
        if name not in models.available():
            parser.error(f"unknown model {name!r}; one of {models.available()}")
    load_start = harness.load_average()
    result = {
        "command": harness.command(__file__, argv),
        "reps": args.reps,
        "environment": harness.environment(),
        "models": {name: sweep(name, args.batches, args.reps) for name in args.models},
    }
    result["load_average"] = [load_start, harness.load_average()]
    harness.write_results(args.out, result, render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
