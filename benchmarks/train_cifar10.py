"""Trains a zoo model on CIFAR-10 (image-folder archive or directory) and records the result.

Checkpoints go to a cache directory outside the repository, so an interrupted run resumes where
it stopped when the same command is run again. The final accuracy, the wall time and the training
throughput are written to ``benchmarks/results/train_<model>_cifar10.json``.

    python benchmarks/train_cifar10.py --model cnn --epochs 15
    python benchmarks/train_cifar10.py --model resnet20 --epochs 160 --lr 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
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
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"no CIFAR-10 data at {args.data}")

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
    report = {
        "command": "python benchmarks/train_cifar10.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "test_accuracy": accuracy,
        "epochs": args.epochs,
        "resumed_from_epoch": result.start_epoch,
        "wall_time_s_this_call": round(result.wall_time_s, 1),
        "train_seconds_all_epochs": round(sum(result.history["seconds"]), 1),
        "images_per_s_this_call": round(result.images_per_s, 1),
        "history": result.history,
        "checkpoint_dir": str(checkpoint_dir),
        "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"test accuracy {accuracy:.4f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
