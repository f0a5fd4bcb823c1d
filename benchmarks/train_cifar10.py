"""Trains a zoo model on CIFAR-10 (image-folder archive or directory) and records the result.

Checkpoints go to a cache directory outside the repository, so an interrupted run resumes where
it stopped when the same command is run again. The final accuracy, the wall time and the training
throughput are written to ``benchmarks/results/train_<model>_cifar10.json``.

    python benchmarks/train_cifar10.py --model cnn --epochs 15
    python benchmarks/train_cifar10.py --model resnet20 --epochs 160 --lr 0.1

``--restart-epochs N [M ...]`` adds warm restarts (SGDR): once the first schedule is done, a
cosine schedule of N epochs from the first ``--restart-lr`` continues from its weights (fresh
optimizer state, another data order), then one of M epochs from the second, and so on. Every
phase has its own checkpoints, named after the phases before it, so the same command resumes any
phase, and a longer chain reuses the phases it shares with a shorter one.

    python benchmarks/train_cifar10.py --model resnet20 --epochs 30 --restart-epochs 10
    python benchmarks/train_cifar10.py --model resnet20 --epochs 30 \
        --restart-epochs 15 60 --restart-lr 0.05 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ipguard_jax import data, models, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402

DEFAULT_ARCHIVE = harness.ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE,
                        help="CIFAR-10 image-folder archive or directory (train/ and test/)")
    parser.add_argument("--model", default="cnn", help=f"one of {models.available()}")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="default: ~/.cache/ipguard_jax/train/<model>-cifar10-seed<seed>")
    parser.add_argument("--restart-epochs", type=int, nargs="+", default=[],
                        help="epochs of each warm restart, a cosine schedule that starts from "
                             "the weights of the phase before it")
    parser.add_argument("--restart-lr", type=float, nargs="+", default=None,
                        help="peak learning rate of each warm restart (default 0.02 each)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON report; default "
                             "benchmarks/results/train_<model>_cifar10.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"no CIFAR-10 data at {args.data}")
    restart_lrs = args.restart_lr or [0.02] * len(args.restart_epochs)
    if len(restart_lrs) != len(args.restart_epochs):
        parser.error(f"--restart-lr needs one value per warm restart: got {len(restart_lrs)} "
                     f"for {len(args.restart_epochs)} --restart-epochs")
    if any(n <= 0 for n in args.restart_epochs) or any(lr <= 0 for lr in restart_lrs):
        parser.error("--restart-epochs and --restart-lr must be > 0")

    cache = Path(os.environ.get("IPGUARD_JAX_CACHE", Path.home() / ".cache" / "ipguard_jax"))
    checkpoint_dir = args.checkpoint_dir or (
        cache / "train" / f"{args.model}-cifar10-seed{args.seed}-e{args.epochs}")
    out = args.out or harness.RESULTS / f"train_{args.model}_cifar10.json"

    if (hint := train.malloc_hint()) is not None:
        print(f"note: {hint}", flush=True)
    load_s, (train_set, test_set) = harness.clock(lambda: (
        data.load_image_folder(args.data, split="train"),
        data.load_image_folder(args.data, split="test")))
    print(f"loaded {len(train_set)} train / {len(test_set)} test images in {load_s:.0f} s",
          flush=True)

    model = models.create(args.model, num_classes=10,
                          rngs=nnx.Rngs(jax.random.key(args.seed, impl="rbg")))
    config = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                               optimizer=args.optimizer, lr=args.lr,
                               weight_decay=args.weight_decay, seed=args.seed,
                               checkpoint_dir=checkpoint_dir, checkpoint_every=1)
    result = train.fit(model, train_set.x, train_set.y, config, x_val=test_set.x,
                       y_val=test_set.y)
    accuracy = train.evaluate(model, test_set.x, test_set.y)
    phases = [result]
    restarts = []
    phase_config = config
    for seed_offset, (epochs, lr) in enumerate(zip(args.restart_epochs, restart_lrs), 1):
        phase_config = dataclasses.replace(
            phase_config, epochs=epochs, lr=lr, seed=args.seed + seed_offset,
            checkpoint_dir=Path(f"{phase_config.checkpoint_dir}-restart{epochs}-lr{lr:g}"))
        print(f"test accuracy {accuracy:.4f}; warm restart {seed_offset} for {epochs} epochs "
              f"from lr {lr:g}", flush=True)
        phase = train.fit(model, train_set.x, train_set.y, phase_config, x_val=test_set.x,
                          y_val=test_set.y)
        phases.append(phase)
        restarts.append({"epochs": epochs, "lr": lr, "test_accuracy_before": accuracy,
                         "resumed_from_epoch": phase.start_epoch, "history": phase.history,
                         "checkpoint_dir": str(phase_config.checkpoint_dir)})
        accuracy = train.evaluate(model, test_set.x, test_set.y)
    report = {
        "command": harness.command(__file__, argv),
        "model": args.model,
        "test_accuracy": accuracy,
        "epochs": args.epochs + sum(args.restart_epochs),
        "resumed_from_epoch": result.start_epoch,
        "wall_time_s_this_call": round(sum(r.wall_time_s for r in phases), 1),
        "train_seconds_all_epochs": round(sum(sum(r.history["seconds"]) for r in phases), 1),
        "images_per_s_median_epoch": round(float(np.median(
            [len(train_set) // args.batch_size * args.batch_size / sec
             for r in phases for sec in r.history["seconds"]])), 1),
        "history": result.history,
        "checkpoint_dir": str(checkpoint_dir),
        "environment": harness.environment(rename={"cpus": "cpu_count"}),
    }
    if restarts:
        report["restarts"] = restarts
    [written] = harness.write_results(out, report)
    print(f"test accuracy {accuracy:.4f}; wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
