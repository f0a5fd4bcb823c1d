"""Where the steps go: the useful share of executed point-steps, host round-trips and time, for
whole chunks on the device loop, compaction driven from the host, and compaction inside the
compiled loop with several refill rules.

A point-step is one optimisation step of one slot of the working batch; it is *useful* when the
slot holds a point that is still running. ``generate`` counts what it executed
(``metadata["runner"]``: blocks, point-steps, host syncs); the useful ones are the sum of each
candidate's own steps. The device loop without compaction runs one ``lax.while_loop`` per chunk
and does not count its iterations, so its executed point-steps are bounded here from the
chunks' slowest points: ``sum over chunks of batch * max(steps in the chunk)``.

The compaction inside the loop runs once per ``--refills`` rule: ``N`` refills sub-batches of
``W // N`` stopped slots (``W``: the working batch) as soon as that many stopped, ``Nw`` refills
every stopped slot with programs over the whole batch once ``W // N`` stopped (``4w`` is the
host-driven compaction's rule).

    # digits CNN and MLP (minutes on 2 CPU cores)
    python benchmarks/compaction.py
    python benchmarks/compaction.py --model mlp
    # the accelerator-path check on ResNet-20 (CIFAR-10 shapes; long on a CPU)
    python benchmarks/compaction.py --model resnet20 --points 512 --steps 1000 --ks 10
    # the same on the CIFAR-10 owner of the repository's zoo, from CIFAR-10 test images (hours)
    python benchmarks/compaction.py --model resnet20-zoo --points 512 --batch 128 \
        --steps 1000 --ks 10 --variants device --refills 16

Results: ``benchmarks/results/compaction_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402

VARIANTS = {  # name -> FingerprintConfig fields
    "device loop, whole chunks": {"loop": "device", "compact": False},
    "host loop, compaction": {"loop": "host", "compact": True},
}
REFERENCE = "host loop, compaction"


def zoo_owner():
    """The ResNet-20 owner of the CIFAR-10 tables, from ``benchmarks/zoo/cifar10``."""
    from ipguard_jax.evaluation import ModelZoo
    from ipguard_jax.evaluation import postprocess as pp

    zoo = ModelZoo(Path(__file__).resolve().parents[1] / "benchmarks" / "zoo" / "cifar10")
    record = next(r for r in zoo.records() if r["name"] == "owner")
    return zoo.load(record["recipe"], lambda: pp.build_model("resnet20", 10, 0))


def parse_refill(rule: str):
    """``"16"`` -> sub-batches of W/16; ``"4w"`` -> the whole batch once W/4 stopped."""
    from ipguard_jax.runners.device_compacted import RefillPolicy

    whole = rule.endswith("w")
    return RefillPolicy(int(rule[:-1] if whole else rule), whole_batch=whole)


def refill_name(rule: str) -> str:
    whole = rule.endswith("w")
    divisor = rule[:-1] if whole else rule
    what = f"whole batch once W/{divisor} stopped" if whole else f"sub-batches of W/{divisor}"
    return f"device loop, compaction in the loop ({what})"


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
    p.add_argument("--model", default="cnn", choices=["cnn", "mlp", "resnet20", "resnet20-zoo"],
                   help="the owner: the digits CNN or MLP (trained here), a ResNet-20 trained "
                   "one epoch on noise (resnet20), or the CIFAR-10 owner of the repository's "
                   "zoo started from CIFAR-10 test images (resnet20-zoo; needs --cifar)")
    p.add_argument("--cifar", default=str(Path(__file__).resolve().parents[2] / "shared"
                                          / "datasets" / "cifar10-jpeg.tar.gz"),
                   help="CIFAR-10 as JPEG folders (archive or directory), for resnet20-zoo")
    p.add_argument("--points", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ks", default="3,10")
    p.add_argument("--refills", default="4w,8w,16w,8,16,32",
                   help="refill rules of the compaction in the loop, comma-separated: N = "
                        "sub-batches of W/N, Nw = the whole batch once W/N stopped "
                        "(default %(default)s)")
    p.add_argument("--variants", default="all", choices=["all", "device"],
                   help="'device': only the compaction in the loop and the host-driven one")
    p.add_argument("--warm", action="store_true",
                   help="run every variant a second time and report that time too (no "
                        "compilation in it)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import ipguard_jax as ipg
    from ipguard_jax import data, train
    from ipguard_jax.evaluation import postprocess as pp
    from ipguard_jax.runners.device_compacted import RefillPolicy, refill_policy

    rules = [r.strip() for r in args.refills.split(",") if r.strip()]
    policies = {refill_name(r): parse_refill(r) for r in rules}
    variants = {name: fields for name, fields in VARIANTS.items()
                if args.variants == "all" or name == REFERENCE}
    variants.update({name: {"loop": "device", "compact": True} for name in policies})

    if args.model == "resnet20-zoo":
        shape = (32, 32, 3)
        model = zoo_owner()
        x = data.load_image_folder(args.cifar, "test").x[:args.points]
    elif args.model == "resnet20":
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
    started = time.perf_counter()
    for k in [float(v) for v in args.ks.split(",")]:
        fps = {}
        for name, fields in variants.items():
            config = ipg.FingerprintConfig(num=args.points, k=k, steps=args.steps, keep="all",
                                           batch_size=args.batch, **fields)
            policy = policies.get(name)
            with refill_policy(policy) if policy is not None else contextlib.nullcontext():
                t0 = time.perf_counter()
                fp = ipg.generate(owner, config, key=0, data=x, progress=False)
                seconds = time.perf_counter() - t0
                warm = None
                if args.warm:
                    t0 = time.perf_counter()
                    ipg.generate(owner, config, key=0, data=x, progress=False)
                    warm = round(time.perf_counter() - t0, 2)
            fps[name] = fp
            row = {"k": k, "variant": name, "seconds_with_compile": round(seconds, 2),
                   "seconds_second_run": warm,
                   "converged": float(fp.converged.mean()), **_useful(fp, config),
                   "refills": fp.metadata["runner"].get("refills"),
                   "load_average": harness.load_average()}
            if policy is not None:
                row["refill_rule"] = {"divisor": policy.divisor,
                                      "whole_batch": policy.whole_batch}
                ref = fps[REFERENCE]
                row["same_as_host_compaction"] = bool(
                    np.array_equal(ref.labels, fp.labels) and np.array_equal(ref.steps, fp.steps)
                    and np.array_equal(ref.converged, fp.converged)
                    and np.array_equal(ref.x, fp.x))
                row["points_with_other_steps"] = int((ref.steps != fp.steps).sum())
                row["points_with_other_labels"] = int((ref.labels != fp.labels).sum())
                row["max_abs_x_difference"] = float(np.abs(ref.x - fp.x).max())
            rows.append(row)
            print(f"k={k:g} {name}: useful {row['useful_share']:.3f} of "
                  f"{row['executed_point_steps']} point-steps, {row['host_syncs']} host syncs, "
                  f"{seconds:.1f} s" + ("" if warm is None else f", again {warm:.1f} s"),
                  flush=True)
    out = Path(args.out) if args.out else harness.RESULTS / f"compaction_{args.model}"
    result = {"command": harness.command("benchmarks/compaction.py", argv or sys.argv[1:]),
              "model": args.model, "points": args.points, "batch": args.batch,
              "steps": args.steps, "refills": rules,
              "wall_s": round(time.perf_counter() - started, 1),
              "environment": harness.environment(), "rows": rows}
    lines = [f"# Useful point-steps, {args.model}: whole chunks vs compaction", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {harness.describe(result['environment'])} (shared with other jobs: "
             f"load average {rows[0]['load_average']} at the start, {rows[-1]['load_average']} "
             f"at the end). {args.points} points, batch {args.batch}, at most {args.steps} "
             "steps, keep all. The first seconds include compilation (of every program a "
             "variant needs that an earlier row did not compile); with --warm the second run "
             "of the same variant is timed too. These are CPU times, where the device loop is "
             "not the fast path: they are not GPU/TPU timings. The device "
             "loop without compaction counts no point-steps itself: its row is a bound from "
             "each chunk's slowest point. W is the working batch; refills counts the "
             "refills run inside the loop.", "",
             *harness.table(
                 ["k", "variant", "converged", "useful share", "executed point-steps",
                  "host syncs", "refills", "s (first run)", "s (second run)"],
                 [[f"{r['k']:g}", r["variant"], f"{r['converged']:.2f}",
                   f"{r['useful_share']:.3f}", r["executed_point_steps"], r["host_syncs"],
                   "-" if r["refills"] is None else r["refills"],
                   r["seconds_with_compile"],
                   "-" if r["seconds_second_run"] is None else r["seconds_second_run"]]
                  for r in rows]), ""]
    default = RefillPolicy()
    lines += [f"The library's rule for the compaction in the loop (`RefillPolicy()`): "
              f"{refill_name(f'{default.divisor}' + ('w' if default.whole_batch else ''))}"
              f".", ""]
    same = [r for r in rows if "same_as_host_compaction" in r]
    lines += ["Compaction inside the loop against the host-driven compaction (same candidates, "
              "compared point by point):", ""]
    lines += [f"- k={r['k']:g}, {r['variant']}: "
              f"{'identical' if r['same_as_host_compaction'] else 'not identical'} "
              f"({r['points_with_other_steps']} of {args.points} points took other step "
              f"counts, {r['points_with_other_labels']} other labels, largest |x| difference "
              f"{r['max_abs_x_difference']:.2g})" for r in same]
    lines += ["", "On a convolutional owner a point's convolution can round differently in the "
              "last bit in another program or batch size, so a point near its tolerance can "
              "stop a step earlier or later (see docs/determinism.md); on the MLP the results "
              "are bit for bit the same (tests/test_generate.py).", ""]
    harness.write_results(out, result, "\n".join(lines))
    print(f"wrote {out}.json/.md")
    return result


if __name__ == "__main__":
    main()
