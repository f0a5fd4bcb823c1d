"""float32 against bfloat16 generation: speed and convergence at equal settings, side by side.

``FingerprintConfig(precision="bfloat16")`` runs the owner's forward and backward passes in
bfloat16 (loss, points and Adam updates stay float32; the final labels and convergence are
re-checked with the float32 owner). This measures what that buys on this machine: the two
precisions alternate, several repetitions each, medians reported, compilation (a warm-up run
of the same shapes) apart.

Owner: the CIFAR-10 CNN trained by ``benchmarks/train_cifar10.py`` (loaded from its checkpoint)
when the CIFAR-10 archive is there, else a CNN trained briefly on digits.

Usage:
    python benchmarks/precision.py [--points 256] [--steps 200] [--reps 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402

sys.path.insert(0, str(harness.ROOT))
import ipguard_jax as ipg  # noqa: E402
from ipguard_jax import data, models, train  # noqa: E402

ARCHIVE = harness.ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _owner(quick: bool):
    cache = Path(os.environ.get("IPGUARD_JAX_CACHE", Path.home() / ".cache" / "ipguard_jax"))
    checkpoint = cache / "train" / "cnn-cifar10-seed0-e15"
    if not quick and ARCHIVE.exists() and checkpoint.exists():
        train_set = data.load_image_folder(ARCHIVE, split="train")
        test_set = data.load_image_folder(ARCHIVE, split="test")
        model = models.create("cnn", num_classes=10, rngs=nnx.Rngs(jax.random.key(0,
                                                                                   impl="rbg")))
        config = train.TrainConfig(epochs=15, batch_size=128, optimizer="sgd",
                                   weight_decay=5e-4, seed=0, checkpoint_dir=checkpoint,
                                   checkpoint_every=1)
        train.fit(model, train_set.x, train_set.y, config, progress=False)  # restores
        name, x_test, y_test = "cnn-cifar10 (15 epochs)", test_set.x, test_set.y
    else:
        digits = data.load_digits()
        model = models.create("cnn", num_classes=10, in_channels=1, rngs=nnx.Rngs(0))
        train.fit(model, digits.x[:1200], digits.y[:1200], train.TrainConfig(
            epochs=3 if quick else 20, optimizer="adam", lr=3e-3, random_crop=False,
            horizontal_flip=False), progress=False)
        name, x_test, y_test = "cnn-digits", digits.x[1200:], digits.y[1200:]
    accuracy = train.evaluate(model, x_test, y_test)
    return name, accuracy, ipg.Classifier.from_nnx(model, input_shape=x_test.shape[1:]), x_test


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--k", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="digits CNN, tiny sizes")
    parser.add_argument("--out", type=Path, default=harness.RESULTS,
                        help="results directory (precision.json and precision.md)")
    args = parser.parse_args(argv)

    name, accuracy, owner, x_test = _owner(args.quick)
    configs, warmup_s = {}, {}
    for precision in ("float32", "bfloat16"):
        configs[precision] = ipg.FingerprintConfig(
            num=args.points, k=args.k, steps=args.steps, keep="all",
            batch_size=min(128, args.points), precision=precision)
        # Compiles: the same shapes, another key.
        warmup_s[precision], _ = harness.clock(lambda: ipg.generate(
            owner, configs[precision], key=1, data=x_test, progress=False))
    timings = harness.alternate(
        {p: (lambda c=c: ipg.generate(owner, c, key=0, data=x_test, progress=False))
         for p, c in configs.items()}, args.reps, rotate=False, first_call=False)
    f32 = timings["float32"].result
    result = {
        "command": harness.command(__file__, argv),
        "owner": name, "owner_accuracy": accuracy, "points": args.points,
        "steps": args.steps, "k": args.k, "reps": args.reps,
        "machine": harness.environment(),
        "precisions": {},
    }
    for precision, timing in timings.items():
        fp, median = timing.result, timing.median_s
        result["precisions"][precision] = {
            "median_s": median, "seconds": timing.times_s, "warmup_s": warmup_s[precision],
            "points_per_s": len(fp) / median,
            "converged_per_s": int(fp.converged.sum()) / median,
            "convergence_rate": float(fp.converged.mean()),
            "mean_steps": float(fp.steps.mean()),
            "same_converged_as_float32": float((fp.converged == f32.converged).mean()),
        }
    p32, p16 = result["precisions"]["float32"], result["precisions"]["bfloat16"]
    result["speedup_bf16_over_f32"] = p32["median_s"] / p16["median_s"]
    rows = [[precision, f"{r['median_s']:.2f}", f"{r['points_per_s']:.1f}",
             f"{r['convergence_rate']:.3f}", f"{r['converged_per_s']:.1f}",
             f"{r['mean_steps']:.1f}", f"{r['warmup_s']:.1f}"]
            for precision, r in result["precisions"].items()]
    lines = ["# float32 vs bfloat16 generation", "", f"Command: `{result['command']}`  ",
             f"Owner: {name}, test accuracy {accuracy:.3f}; {args.points} points from test "
             f"images, k={args.k:g}, <= {args.steps} steps, Adam 0.01, keep='all'; medians of "
             f"{args.reps} alternating runs, compile apart. Machine: "
             f"{harness.describe(result['machine'])}.", "",
             *harness.table(["precision", "median s", "points/s", "converged", "converged/s",
                             "mean steps", "warm-up s"], rows),
             "", f"bfloat16 / float32 speed: {result['speedup_bf16_over_f32']:.2f}x. "
             "Convergence under bfloat16 is re-checked with the float32 owner."]
    harness.write_results(args.out / "precision", result, "\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
