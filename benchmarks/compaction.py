"""Where the steps go: the useful share of executed point-steps, host round-trips and time, for
whole chunks on the device loop, compaction driven from the host, and compaction inside the
compiled loop.

A point-step is one optimisation step of one slot of the working batch; it is *useful* when the
slot holds a point that is still running. ``generate`` counts what it executed
(``metadata["runner"]``: blocks, point-steps, host syncs); the useful ones are the sum of each
candidate's own steps. The device loop without compaction runs one ``lax.while_loop`` per chunk
and does not count its iterations, so its executed point-steps are bounded here from the
chunks' slowest points: ``sum over chunks of batch * max(steps in the chunk)``.

    # digits CNN and MLP (minutes on 2 CPU cores)
    python benchmarks/compaction.py
    # the accelerator-path check on ResNet-20 (CIFAR-10 shapes; long on a CPU)
    python benchmarks/compaction.py --model resnet20 --points 512 --steps 1000 --ks 10

Results: ``benchmarks/results/compaction_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402

VARIANTS = {  # name -> FingerprintConfig fields
    "device loop, whole chunks": {"loop": "device", "compact": False},
    "host loop, compaction": {"loop": "host", "compact": True},
    "device loop, compaction in the loop": {"loop": "device", "compact": True},
}


def _useful(fp, config) -> dict:
    runner = fp.metadata["runner"]
    useful = int(fp.steps.sum()) if config.keep == "all" else None
    executed = runner["point_steps"]
    if not executed:  # the device loop without compaction: bound it from the chunks
        steps = np.asarray(fp.steps)
        batch = config.batch_size
        executed = int(sum(batch * steps[s:s + batch].max() for s in range(0, len(steps), batch)))
    return {"useful_point_steps": useful, "executed_point_steps": executed,
            "useful_share": None if useful is None else useful / executed,
            "host_syncs": runner["syncs"], "programs": runner["programs"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn", choices=["cnn", "mlp", "resnet20"])
    p.add_argument("--points", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ks", default="3,10")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import ipguard_jax as ipg
    from ipguard_jax import data, train
    from ipguard_jax.evaluation import postprocess as pp

    if args.model == "resnet20":
        shape = (32, 32, 3)
        x = np.random.default_rng(0).uniform(size=(args.points, *shape)).astype(np.float32)
        model = pp.build_model("resnet20", 10, 0)
        y = np.arange(args.points) % 10
        train.fit(model, x, y, train.TrainConfig(epochs=1, batch_size=64), progress=False)
    else:
        digits = data.load_digits()
        shape = (8, 8, 1)
        kwargs = {"in_channels": 1} if args.model == "cnn" else {"in_features": 64,
                                                                  "in_channels": 1}
        model = pp.build_model(args.model, 10, 0, **kwargs)
        train.fit(model, digits.x[:1000], digits.y[:1000],
                  train.TrainConfig(epochs=10, batch_size=64, optimizer="adam", lr=3e-3,
                                    random_crop=False, horizontal_flip=False), progress=False)
        x = np.resize(digits.x[1000:], (args.points, *shape))
    owner = ipg.Classifier.from_nnx(model, input_shape=shape)
    rows = []
    for k in [float(v) for v in args.ks.split(",")]:
        fps = {}
        for name, fields in VARIANTS.items():
            config = ipg.FingerprintConfig(num=args.points, k=k, steps=args.steps, keep="all",
                                           batch_size=args.batch, **fields)
            t0 = time.perf_counter()
            fp = ipg.generate(owner, config, key=0, data=x, progress=False)
            seconds = time.perf_counter() - t0
            fps[name] = fp
            row = {"k": k, "variant": name, "seconds_with_compile": round(seconds, 2),
                   "converged": float(fp.converged.mean()), **_useful(fp, config)}
            rows.append(row)
            print(f"k={k:g} {name}: useful {row['useful_share']:.2f} of "
                  f"{row['executed_point_steps']} point-steps, {row['host_syncs']} host syncs, "
                  f"{seconds:.1f} s", flush=True)
        ref = fps["host loop, compaction"]
        dev = fps["device loop, compaction in the loop"]
        rows[-1]["same_as_host_compaction"] = bool(
            np.array_equal(ref.labels, dev.labels) and np.array_equal(ref.steps, dev.steps)
            and np.array_equal(ref.converged, dev.converged))
        rows[-1]["points_with_other_steps"] = int((ref.steps != dev.steps).sum())
        rows[-1]["points_with_other_labels"] = int((ref.labels != dev.labels).sum())
        rows[-1]["max_abs_x_difference"] = float(np.abs(ref.x - dev.x).max())
    out = Path(args.out) if args.out else harness.RESULTS / f"compaction_{args.model}"
    result = {"command": harness.command("benchmarks/compaction.py", argv or sys.argv[1:]),
              "model": args.model, "points": args.points, "batch": args.batch,
              "steps": args.steps, "environment": harness.environment(), "rows": rows}
    lines = [f"# Useful point-steps, {args.model}: whole chunks vs compaction", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {harness.describe(result['environment'])}. {args.points} points, "
             f"batch {args.batch}, at most {args.steps} steps, keep all. Seconds include "
             "compilation (one run each). The device loop without compaction counts no "
             "point-steps itself: its row is a bound from each chunk's slowest point.", "",
             *harness.table(
                 ["k", "variant", "converged", "useful share", "executed point-steps",
                  "host syncs", "s (with compile)"],
                 [[f"{r['k']:g}", r["variant"], f"{r['converged']:.2f}",
                   f"{r['useful_share']:.3f}", r["executed_point_steps"], r["host_syncs"],
                   r["seconds_with_compile"]] for r in rows]), ""]
    same = [r for r in rows if "same_as_host_compaction" in r]
    lines += ["Compaction inside the loop against the host-driven compaction, per k: "
              + "; ".join(f"k={r['k']:g}: {'identical' if r['same_as_host_compaction'] else 'not identical'}"
                          f" ({r['points_with_other_steps']} of {args.points} points took "
                          f"other step counts, {r['points_with_other_labels']} other labels, "
                          f"largest |x| difference {r['max_abs_x_difference']:.2g})"
                          for r in same)
              + ". On a convolutional owner the compiled loop rounds the convolution differently "
              "in the last bit from the standalone block programs, so a point near its "
              "tolerance can stop a step earlier or later (see docs/determinism.md); on the MLP "
              "the two are identical (tests/test_generate.py).", ""]
    harness.write_results(out, result, "\n".join(lines))
    print(f"wrote {out}.json/.md")
    return result


if __name__ == "__main__":
    main()
