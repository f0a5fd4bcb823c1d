"""Throughput of IPGuard generation on a ResNet-20-sized Flax model.

Measures, per batch size:
  * one input gradient of the batch alone (the floor of a step's cost), with XLA's FLOP count;
  * the step loop: ``generate`` with a margin no point can reach, so every point takes exactly
    ``--steps`` steps, with the loop on the host (unrolled compiled blocks) and on the device
    (``lax.while_loop``), compile time apart, median of ``--reps`` runs;
  * end to end: ``generate`` (keep="all", default k=3, Adam 0.01, at most ``--e2e-steps`` steps)
    on a warm cache, chunked and compacted alternating, median of ``--e2e-reps`` runs:
    fingerprints/s, convergence, mean and max steps per point. A chunk runs until its slowest
    point is done; compaction refills finished slots instead.

The owner is a randomly initialised CIFAR ResNet-20 (no trained weights are needed to time the
step; its convergence profile is not that of a trained model, so the end-to-end rate is
indicative only).

    python benchmarks/generate.py --batch-sizes 128 --steps 10 --reps 3 --e2e-steps 200 --e2e-reps 1
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import ipguard_jax as ipg
from ipguard_jax import engine, models

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402


def bench_batch(owner: ipg.Classifier, batch: int, steps: int, reps: int, e2e_steps: int,
                e2e_reps: int, e2e_num: int) -> dict:
    x0 = jax.random.uniform(jax.random.key(1), (batch, *owner.input_shape))
    i, j = engine.choose_targets(owner(x0), jax.random.key(2))
    one_step = jax.jit(lambda params, x: engine.loss_and_grad(owner.apply_fn, params, x, i, j,
                                                              3.0)[1])
    flops = None
    try:
        cost = one_step.lower(owner.params, x0).compile().cost_analysis()
        flops = (cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops")
    except Exception:  # cost analysis is best effort and backend dependent
        pass
    # First call (compile) apart: lower().compile() above does not fill jit's cache.
    grad_s = harness.measure(lambda: one_step(owner.params, x0), reps).median_s

    loops = {}
    for loop in ("host", "device"):
        # a margin no point reaches: every point takes every step
        config = ipg.FingerprintConfig(num=batch, batch_size=batch, init="noise", keep="all",
                                       k=1e6, steps=steps, loop=loop)
        timing = harness.measure(lambda: ipg.generate(owner, config, key=0, progress=False),
                                 reps)
        assert int(timing.result.steps.min()) == steps, "every point must take every step"
        median_s = timing.median_s
        loops[loop] = {
            "steps": steps,
            "first_call_s": round(timing.first_s, 3),
            "compile_s_approx": round(timing.compile_s, 3),
            "median_s": round(median_s, 4),
            "times_s": [round(t, 4) for t in timing.times_s],
            "steps_per_s": round(steps / median_s, 3),
            "point_steps_per_s": round(batch * steps / median_s, 1),
        }

    # End to end, chunked against compacted, alternating runs so both see the same machine.
    configs = {
        mode: ipg.FingerprintConfig(num=e2e_num, batch_size=batch, init="noise", keep="all",
                                    steps=e2e_steps, compact=mode == "compacted")
        for mode in ("chunked", "compacted")
    }
    for config in configs.values():
        # steps is traced: a 1-step call compiles the timed program; two batches of candidates
        # make the compacted run refill, which compiles the refill program too
        ipg.generate(owner, dataclasses.replace(config, steps=1, num=batch + 1), key=0,
                     progress=False)
    timings = harness.alternate(
        {mode: (lambda c=config: ipg.generate(owner, c, key=0, progress=False))
         for mode, config in configs.items()}, e2e_reps, rotate=False, first_call=False)
    results = {mode: t.result for mode, t in timings.items()}
    generate = {}
    for mode, config in configs.items():
        fp, median = results[mode], timings[mode].median_s
        generate[mode] = {
            "config": config.to_dict(),
            "loop": fp.metadata["loop"],
            "median_s": round(median, 4),
            "times_s": [round(t, 4) for t in timings[mode].times_s],
            "convergence_rate": float(fp.converged.mean()),
            "mean_steps_per_point": float(fp.steps.mean()),
            "max_steps": int(fp.steps.max()),
            "fingerprints_per_s": round(int(fp.converged.sum()) / median, 2),
        }
    same = all(np.array_equal(getattr(results["chunked"], n), getattr(results["compacted"], n))
               for n in ("source", "labels", "converged", "steps"))
    return {
        "batch_size": batch,
        "input_gradient_alone": {
            "median_s": round(grad_s, 4),
            "images_per_s": round(batch / grad_s, 1),
            "flops_xla": flops,
            "gflops_per_s": None if flops is None else round(flops / grad_s / 1e9, 2),
        },
        "step_loop": loops,
        "host_over_device": round(loops["device"]["median_s"] / loops["host"]["median_s"], 2),
        "generate": generate,
        "compaction_speedup": round(generate["chunked"]["median_s"]
                                    / generate["compacted"]["median_s"], 2),
        "compacted_equals_chunked": bool(same),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--e2e-steps", type=int, default=1000,
                        help="step cap of the end-to-end generate runs")
    parser.add_argument("--e2e-reps", type=int, default=3)
    parser.add_argument("--e2e-batches", type=int, default=4,
                        help="end-to-end runs generate this many batches of points")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "generate.json",
                        help="the JSON report (its Markdown summary is written by hand)")
    args = parser.parse_args(argv)

    module = models.create(args.model, num_classes=10, rngs=nnx.Rngs(0))
    owner = ipg.Classifier.from_nnx(module, input_shape=(32, 32, 3))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    rows = []
    for batch in args.batch_sizes:
        row = bench_batch(owner, batch, args.steps, args.reps, args.e2e_steps, args.e2e_reps,
                          args.e2e_batches * batch)
        rows.append(row)
        g = row["generate"]
        print(f"batch {batch:4d}: input gradient {row['input_gradient_alone']['images_per_s']:.0f}"
              f" img/s; step loop on host {row['step_loop']['host']['point_steps_per_s']:.0f}, "
              f"on device {row['step_loop']['device']['point_steps_per_s']:.0f} point-steps/s "
              f"(x{row['host_over_device']}); generate: chunked "
              f"{g['chunked']['fingerprints_per_s']:.2f}, compacted "
              f"{g['compacted']['fingerprints_per_s']:.2f} fingerprints/s "
              f"(x{row['compaction_speedup']}, same result: {row['compacted_equals_chunked']}); "
              f"converged {g['chunked']['convergence_rate']:.0%}, mean "
              f"{g['chunked']['mean_steps_per_point']:.1f} / max {g['chunked']['max_steps']} steps",
              flush=True)
    report = {
        "command": harness.command(__file__, argv),
        "model": args.model,
        "model_params": int(params),
        "weights": "random init (seed 0)",
        "input_shape": [32, 32, 3],
        "environment": harness.environment(rename={"cpus": "cpu_count"}),
        "results": rows,
    }
    [written] = harness.write_results(args.out, report)
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
