"""End-to-end demo on the embedded digits data: train, fingerprint, calibrate, verify, score.

Trains an owner CNN on part of scikit-learn's digits and fingerprints it with IPGuard. Five
reference models (CNNs and MLPs on halves of the data, other seeds) calibrate the null, the
matching rates of innocent models; then five suspects are judged against it: two pirated
copies (fine-tuned on other data; half the weights pruned, then fine-tuned) and three
independent models (a CNN and an MLP on other data, a smaller CNN on the owner's data), none
of them a reference. Prints a table and the ARUC, and saves a robustness-uniqueness plot.
Runs in under 1.5 minutes on a 2-core CPU, offline.

    python -m ipguard_jax demo [--num 100] [--k 3] [--out fingerprints_dir] [--plot PNG]

The plot needs matplotlib (the ``plot`` extra); without it the demo says so and skips it.

Example:
    >>> from ipguard_jax import demo
    >>> result = demo.run(num=50, epochs=10, progress=False)  # doctest: +SKIP
    >>> result.rows["fine-tuned copy"]["is_copy"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

import ipguard_jax as ipg
from ipguard_jax import data as ipg_data
from ipguard_jax import evaluation, models, train
from ipguard_jax.evaluation import postprocess

#: The plot's file name when ``--plot`` is not given (next to ``--out``, else here).
PLOT_NAME = "ipguard_demo_aruc.png"
#: False-positive rate of the calibrated verdicts: a copy's p-value is at most this.
FPR = 0.01
#: Share of every layer's weights the pruning pirate zeroes before fine-tuning.
PRUNE_RATE = 0.5
PIRATED, INDEPENDENT = "pirated", "independent"


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What :func:`run` measured.

    Attributes:
        rows: suspect name -> ``{"kind", "accuracy", "matching_rate", "is_copy",
            "p_value"}`` (``kind`` is ``"pirated"`` or ``"independent"``), in table order.
        calibration: the null, fitted on the reference models (never on the suspects).
        report: robustness, uniqueness and ARUC of the suspects' matching rates.
        plot: the PNG written, or ``None`` (not asked for, or matplotlib missing).
        seconds: wall time of the whole run.
    """

    rows: dict[str, dict[str, Any]]
    calibration: ipg.Calibration
    report: evaluation.EvaluationReport
    plot: Path | None
    seconds: float


def _train(name: str, x: np.ndarray, y: np.ndarray, seed: int, epochs: int, progress: bool,
           **kwargs: Any) -> nnx.Module:
    """A fresh ``name`` model (``"cnn"`` or ``"mlp"``) trained with Adam on ``(x, y)``."""
    shape = x.shape[1:]
    extra = {"in_features": int(np.prod(shape))} if name == "mlp" else {}
    model = models.create(name, num_classes=10, rngs=nnx.Rngs(seed), in_channels=shape[-1],
                          **extra, **kwargs)
    config = train.TrainConfig(epochs=epochs, batch_size=64, optimizer="adam", lr=3e-3,
                               weight_decay=1e-4, random_crop=False, horizontal_flip=False,
                               seed=seed)
    train.fit(model, x, y, config, progress=progress)
    return model


def _split(n: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint indices: the owner's 700 digits, 700 "other" digits, the rest for testing."""
    owner, other, test = np.split(np.random.default_rng(seed).permutation(n), [700, 1400])
    return {"owner": owner, "other": other, "test": test}


def _pirates(owner: nnx.Module, x: np.ndarray, y: np.ndarray, seed: int,
             epochs: int) -> dict[str, nnx.Module]:
    """Two pirated copies of ``owner``, made with the pirate's data ``(x, y)``."""
    config = postprocess.PirateConfig(epochs=max(epochs // 6, 2), lr=3e-3, seed=seed + 10)
    return {
        "fine-tuned copy": postprocess.make_pirate("ftal", owner, x, y, config),
        "pruned + fine-tuned copy": postprocess.make_pirate(
            "prune_ft", owner, x, y, dataclasses.replace(config, seed=seed + 11),
            rate=PRUNE_RATE),
    }


def _independents(x: np.ndarray, y: np.ndarray, idx: dict[str, np.ndarray], seed: int,
                  epochs: int, progress: bool) -> dict[str, nnx.Module]:
    """Three models trained without the owner: other data, seeds and architectures."""
    other, owner = idx["other"], idx["owner"]
    return {
        "independent CNN": _train("cnn", x[other], y[other], seed + 1, epochs, progress),
        "independent MLP": _train("mlp", x[other], y[other], seed + 2, epochs, progress),
        "independent small CNN": _train("cnn", x[owner], y[owner], seed + 3, epochs, progress,
                                        widths=(16, 32, 64)),
    }


def _references(x: np.ndarray, y: np.ndarray, idx: dict[str, np.ndarray], seed: int,
                epochs: int, progress: bool) -> dict[str, nnx.Module]:
    """Five reference models for the null: CNNs and MLPs on halves of the data, other seeds.

    They stand for the innocent models a verdict must clear, so they are trained like the
    independent suspects (same epochs, both architectures; under-trained references agree
    with the owner less often and would make the null too strict), but they are not those
    suspects: a model that calibrates the null is never scored against it.
    """
    halves = [*np.array_split(idx["other"], 2), *np.array_split(idx["owner"], 2)]
    recipes = ["cnn", "mlp", "cnn", "mlp", "cnn"]
    return {f"reference {i + 1} ({name.upper()})":
            _train(name, x[halves[i % 4]], y[halves[i % 4]], seed + 101 + i, epochs, progress)
            for i, name in enumerate(recipes)}


def _save_reload(fingerprints: ipg.Fingerprints, out: Path | None,
                 say) -> ipg.Fingerprints:
    """Saves the set (to ``out``, or a temporary directory) and loads it back, checksummed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = ipg.save(fingerprints, out if out is not None else Path(tmp) / "fingerprints",
                        overwrite=out is not None)
        loaded = ipg.load(path)  # verified against its sha256
        say(f"saved to {path if out is not None else 'a temporary directory'} and reloaded")
    return loaded


def _print_table(rows: dict[str, dict[str, Any]]) -> None:
    """The verdict table: one line per suspect."""
    print(f"\n{'suspect':26s} {'kind':11s} {'test acc':>8s} {'match':>6s} {'p-value':>9s} "
          f"{'verdict':>8s}")
    for name, row in rows.items():
        print(f"{name:26s} {row['kind']:11s} {row['accuracy']:8.1%} {row['matching_rate']:6.0%} "
              f"{row['p_value']:9.2g} {'COPY' if row['is_copy'] else 'no':>8s}")


def _save_plot(report: evaluation.EvaluationReport, path: Path, say) -> Path | None:
    """Writes the robustness-uniqueness plot, or says how to get matplotlib and skips it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install 'ipguard-jax[plot]', "
              "or pip install matplotlib)")
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    report.plot(path, title="ipguard demo: digits")
    say(f"robustness-uniqueness plot saved to {path}")
    return path


def run(num: int = 100, k: float = 3.0, epochs: int = 30, seed: int = 0,
        out: Path | None = None, plot: Path | None = None,
        progress: bool = True) -> DemoResult:
    """Runs the demo and prints the verdicts and the ARUC.

    Args:
        num: fingerprints to generate.
        k: the margin in logit units.
        epochs: training epochs of the owner, the independent and the reference models (the
            pirates fine-tune for ``max(epochs // 6, 2)`` epochs).
        seed: seed of the data split, the models and the fingerprints.
        out: also save the fingerprints, with their calibration, to this directory
            (overwriting a fingerprint directory there); ``None`` uses a temporary one.
        plot: write the robustness-uniqueness plot (PNG) here; ``None`` for none. Skipped,
            with a message, when matplotlib is missing.
        progress: show progress bars and messages; the table and the ARUC are printed
            either way.

    Returns:
        A :class:`DemoResult`.

    Example:
        >>> result = run(num=50, epochs=10, progress=False)  # doctest: +SKIP
        >>> {row["kind"] for row in result.rows.values() if row["is_copy"]}  # doctest: +SKIP
        {'pirated'}
    """
    start = time.perf_counter()
    say = print if progress else (lambda *a, **kw: None)
    digits = ipg_data.load_digits()
    x, y = digits.x, digits.y
    idx = _split(len(digits), seed)

    say(f"training the owner CNN on {len(idx['owner'])} digits ...")
    owner = _train("cnn", x[idx["owner"]], y[idx["owner"]], seed, epochs, progress)
    say("making two pirated copies and three independent models ...")
    kinds = {PIRATED: _pirates(owner, x[idx["other"]], y[idx["other"]], seed, epochs),
             INDEPENDENT: _independents(x, y, idx, seed, epochs, progress)}
    say("training five reference models to calibrate the null ...")
    references = _references(x, y, idx, seed, epochs, progress)

    def classifier(module: nnx.Module) -> ipg.Classifier:
        return ipg.Classifier.from_nnx(module, input_shape=x.shape[1:])

    owner_clf = classifier(owner)
    config = ipg.FingerprintConfig(num=num, k=k)
    fingerprints = ipg.generate(owner_clf, config, key=seed, data=x[idx["test"]],
                                progress=progress)
    say(f"{len(fingerprints)} fingerprints, convergence rate "
        f"{fingerprints.convergence_rate:.0%} (k={k}, {config.steps} steps max)")
    calibration = ipg.calibrate(fingerprints, {n: classifier(m) for n, m in references.items()})
    fingerprints = _save_reload(ipg.with_calibration(fingerprints, calibration), out, say)

    rows = {}
    for kind, suspects in kinds.items():
        for name, module in suspects.items():
            suspect = classifier(module)
            verdict = ipg.verify(fingerprints, suspect, fpr=FPR)  # the stored calibration
            accuracy = float((suspect.predict(x[idx["test"]]) == y[idx["test"]]).mean())
            rows[name] = {"kind": kind, "accuracy": accuracy,
                          "matching_rate": verdict.matching_rate, "is_copy": verdict.is_copy,
                          "p_value": verdict.p_value}
    _print_table(rows)
    threshold = calibration.threshold(FPR) / len(fingerprints)
    print(f"\nnull: {calibration}\na suspect is a copy when p <= {FPR:.0%}, i.e. when it "
          f"matches >= {threshold:.0%} of the fingerprints")

    report = evaluation.summarize(
        {n: r["matching_rate"] for n, r in rows.items() if r["kind"] == PIRATED},
        {n: r["matching_rate"] for n, r in rows.items() if r["kind"] == INDEPENDENT},
        num_points=len(fingerprints), null_rate=calibration.mean,
        owner_rate=ipg.matching_rate(fingerprints, owner_clf), bootstrap=0)
    print(f"ARUC: ROC-AUC {report.aruc_roc:.3f} (pirated vs independent matching rates), "
          f"min-integral {report.aruc_min:.3f}; the owner itself matches "
          f"{report.owner_rate:.0%}")
    plot_path = _save_plot(report, Path(plot), say) if plot is not None else None
    seconds = time.perf_counter() - start
    print(f"{seconds:.0f} s in all")
    return DemoResult(rows=rows, calibration=calibration, report=report, plot=plot_path,
                      seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    """The ``ipguard demo`` command line: parses the options and calls :func:`run`.

    Args:
        argv: the arguments after ``demo``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0.

    Raises:
        SystemExit: bad arguments, or ``--help`` (argparse).

    Example:
        >>> main(["--num", "50", "--quiet", "--no-plot"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(prog="ipguard demo", description=__doc__.split("\n\n")[1])
    parser.add_argument("--num", type=int, default=100, help="fingerprints to generate")
    parser.add_argument("--k", type=float, default=3.0, help="margin in logit units")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        help="also save the fingerprints (with their calibration) here")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help=f"robustness-uniqueness plot (default: {PLOT_NAME} next to --out, "
                             f"else in the current directory; needs matplotlib)")
    parser.add_argument("--no-plot", action="store_true", help="do not save the plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    plot = args.plot
    if plot is None and not args.no_plot:
        plot = (args.out.parent if args.out is not None else Path()) / PLOT_NAME
    run(num=args.num, k=args.k, epochs=args.epochs, seed=args.seed, out=args.out,
        plot=None if args.no_plot else plot, progress=not args.quiet)
    return 0
