"""Throughput of IPGuard generation on a ResNet-20-sized Flax model.

Measures, per batch size:
  * the optimisation step itself: ``optimize_points`` with a margin no point can reach, so every
    point takes exactly ``--steps`` steps; compile time apart, median of ``--reps`` runs;
  * end to end: ``generate`` (keep="all", default k=3, Adam 0.01, at most ``--e2e-steps`` steps)
    on a warm cache, median of ``--e2e-reps`` runs: fingerprints/s, convergence, mean and max
    steps per point. A batch runs until its slowest point is done, so this rate is set by the
    straggler tail.

The owner is a randomly initialised CIFAR ResNet-20 (no trained weights are needed to time the
step; its convergence profile is not that of a trained model, so the end-to-end rate is
indicative only).

    python benchmarks/generate.py --batch-sizes 128 256 --steps 20 --reps 5 --e2e-reps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import ipguard_jax as ipg
from ipguard_jax import engine, models


def _timed(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def bench_batch(owner: ipg.Classifier, batch: int, steps: int, reps: int, e2e_steps: int,
                e2e_reps: int) -> dict:
    x0 = jax.random.uniform(jax.random.key(1), (batch, *owner.input_shape))
    i, j = engine.choose_targets(owner(x0), jax.random.key(2))
    step_fn = jax.jit(lambda params, x0, i, j: engine.optimize_points(
        owner.apply_fn, params, x0, i, j, k=1e6, optimizer=optax.adam(0.01), steps=steps))
    start = time.perf_counter()
    compiled = step_fn.lower(owner.params, x0, i, j).compile()
    compile_s = time.perf_counter() - start
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = cost.get("flops")
    except Exception:  # cost analysis is best effort and backend dependent
        pass
    result = compiled(owner.params, x0, i, j)
    assert int(result.steps.min()) == steps, "every point must take every step"
    median_s, times = _timed(lambda: compiled(owner.params, x0, i, j), reps)

    config = ipg.FingerprintConfig(num=batch, batch_size=batch, init="noise", keep="all",
                                   steps=e2e_steps)
    # steps is a traced value: a 1-step call compiles exactly what the timed calls run
    start = time.perf_counter()
    ipg.generate(owner, dataclasses.replace(config, steps=1), key=0, progress=False)
    first_call_s = time.perf_counter() - start
    fps = []
    e2e_s, e2e_times = _timed(
        lambda: fps.append(ipg.generate(owner, config, key=0, progress=False)) or fps[-1].x,
        e2e_reps)
    fp = fps[-1]
    return {
        "batch_size": batch,
        "step": {
            "steps": steps,
            "compile_s": round(compile_s, 3),
            "median_s": round(median_s, 4),
            "times_s": [round(t, 4) for t in times],
            "steps_per_s": round(steps / median_s, 2),
            "point_steps_per_s": round(batch * steps / median_s, 1),
            "flops_per_call_xla": flops,
        },
        "generate": {
            "config": config.to_dict(),
            "compile_call_s": round(first_call_s, 3),
            "median_s": round(e2e_s, 4),
            "times_s": [round(t, 4) for t in e2e_times],
            "convergence_rate": float(fp.converged.mean()),
            "mean_steps_per_point": float(fp.steps.mean()),
            "max_steps": int(fp.steps.max()),
            "fingerprints_per_s": round(int(fp.converged.sum()) / e2e_s, 2),
        },
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--e2e-steps", type=int, default=1000,
                        help="step cap of the end-to-end generate runs")
    parser.add_argument("--e2e-reps", type=int, default=3)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "generate.json")
    args = parser.parse_args(argv)

    module = models.create(args.model, num_classes=10, rngs=nnx.Rngs(0))
    owner = ipg.Classifier.from_nnx(module, input_shape=(32, 32, 3))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    rows = []
    for batch in args.batch_sizes:
        row = bench_batch(owner, batch, args.steps, args.reps, args.e2e_steps, args.e2e_reps)
        rows.append(row)
        s, g = row["step"], row["generate"]
        print(f"batch {batch:4d}: {s['steps_per_s']:.2f} steps/s = {s['point_steps_per_s']:.0f} "
              f"point-steps/s (compile {s['compile_s']:.1f} s); generate: "
              f"{g['fingerprints_per_s']:.1f} fingerprints/s, converged "
              f"{g['convergence_rate']:.0%}, mean {g['mean_steps_per_point']:.1f} steps",
              flush=True)
    report = {
        "command": "python benchmarks/generate.py " + " ".join(argv if argv is not None
                                                               else sys.argv[1:]),
        "model": args.model,
        "model_params": int(params),
        "weights": "random init (seed 0)",
        "input_shape": [32, 32, 3],
        "environment": {
            "jax": jax.__version__, "ipguard_jax": ipg.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
