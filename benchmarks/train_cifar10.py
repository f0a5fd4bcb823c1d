"""Trains a zoo model on CIFAR-10 (image-folder archive or directory) and records the result.

Checkpoints go to a cache directory outside the repository, so an interrupted run resumes where
it stopped when the same command is run again. The final accuracy, the wall time and the training
throughput are written to ``benchmarks/results/train_<model>_cifar10.json``.

    python benchmarks/train_cifar10.py --model cnn --epochs 15
    python benchmarks/train_cifar10.py --model resnet20 --epochs 160 --lr 0.1

``--restart-epochs N`` adds a warm restart (SGDR): once the first schedule is done, a second
cosine schedule of N epochs from ``--restart-lr`` continues from its weights (fresh optimizer
state, another data order), with its own checkpoints; the same command resumes either phase.

    python benchmarks/train_cifar10.py --model resnet20 --epochs 30 --restart-epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ipguard_jax import data, models, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


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
    parser.add_argument("--restart-epochs", type=int, default=0,
                        help="epochs of a second cosine schedule from the first one's weights")
    parser.add_argument("--restart-lr", type=float, default=0.02,
                        help="peak learning rate of the warm restart")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"no CIFAR-10 data at {args.data}")
    if args.restart_epochs < 0 or args.restart_lr <= 0:
        parser.error("--restart-epochs must be >= 0 and --restart-lr > 0")

    cache = Path(os.environ.get("IPGUARD_JAX_CACHE", Path.home() / ".cache" / "ipguard_jax"))
    checkpoint_dir = args.checkpoint_dir or (
        cache / "train" / f"{args.model}-cifar10-seed{args.seed}-e{args.epochs}")
    out = args.out or ROOT / "benchmarks" / "results" / f"train_{args.model}_cifar10.json"

    start = time.perf_counter()
    train_set = data.load_image_folder(args.data, split="train")
    test_set = data.load_image_folder(args.data, split="test")
    load_s = time.perf_counter() - start
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
    if args.restart_epochs:
        first_accuracy = accuracy
        restart = dataclasses.replace(
            config, epochs=args.restart_epochs, lr=args.restart_lr, seed=args.seed + 1,
            checkpoint_dir=Path(f"{checkpoint_dir}-restart{args.restart_epochs}"
                                f"-lr{args.restart_lr:g}"))
        print(f"first schedule: test accuracy {accuracy:.4f}; warm restart for "
              f"{args.restart_epochs} epochs from lr {args.restart_lr:g}", flush=True)
        phases.append(train.fit(model, train_set.x, train_set.y, restart, x_val=test_set.x,
                                y_val=test_set.y))
        accuracy = train.evaluate(model, test_set.x, test_set.y)
    report = {
        "command": "python benchmarks/train_cifar10.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "test_accuracy": accuracy,
        "epochs": args.epochs + args.restart_epochs,
        "resumed_from_epoch": result.start_epoch,
        "wall_time_s_this_call": round(sum(r.wall_time_s for r in phases), 1),
        "train_seconds_all_epochs": round(sum(sum(r.history["seconds"]) for r in phases), 1),
        "images_per_s_median_epoch": round(float(np.median(
            [len(train_set) // args.batch_size * args.batch_size / sec
             for r in phases for sec in r.history["seconds"]])), 1),
        "history": result.history,
        "checkpoint_dir": str(checkpoint_dir),
        "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    if args.restart_epochs:
        report["restart"] = {"epochs": args.restart_epochs, "lr": args.restart_lr,
                             "test_accuracy_before": first_accuracy,
                             "resumed_from_epoch": phases[1].start_epoch,
                             "history": phases[1].history,
                             "checkpoint_dir": str(restart.checkpoint_dir)}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"test accuracy {accuracy:.4f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
