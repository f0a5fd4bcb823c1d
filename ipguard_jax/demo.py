"""End-to-end demo on the embedded digits data: train, fingerprint, verify suspects.

Trains an owner CNN on part of scikit-learn's digits, fingerprints it with IPGuard, then checks
four suspects: an exact copy, a pirated copy fine-tuned on other data, and two models trained
independently (other data, other seeds; one of them calibrates the rate at which independent
models agree with the owner, which the binomial test uses as its null). Runs in about a minute
on a 2-core CPU, offline.

    python -m ipguard_jax demo [--num 100] [--k 3] [--out fingerprints_dir]

Example:
    >>> from ipguard_jax import demo
    >>> rows = demo.run(num=50, epochs=10, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from flax import nnx

import ipguard_jax as ipg
from ipguard_jax import data as ipg_data
from ipguard_jax import models, train


def _train(name, x, y, seed, epochs, progress, init_from=None):
    shape = x.shape[1:]
    extra = {"in_features": int(np.prod(shape))} if name == "mlp" else {}
    model = models.create(name, num_classes=10, rngs=nnx.Rngs(seed), in_channels=shape[-1],
                          **extra)
    if init_from is not None:
        nnx.update(model, nnx.state(init_from))
    config = train.TrainConfig(epochs=epochs, batch_size=64, optimizer="adam", lr=3e-3,
                               weight_decay=1e-4, random_crop=False, horizontal_flip=False,
                               seed=seed)
    train.fit(model, x, y, config, progress=progress)
    return model


def run(num: int = 100, k: float = 3.0, epochs: int = 30, seed: int = 0,
        out: Path | None = None, progress: bool = True) -> dict:
    """Runs the demo and prints a table; returns the matching rates and verdicts by suspect.

    Args:
        num: fingerprints to generate.
        k: the margin in logit units.
        epochs: training epochs of the owner and the independent models (the fine-tuned
            copy trains ``max(epochs // 6, 2)`` epochs).
        seed: seed of the data split, the models and the fingerprints.
        out: also save the fingerprints to this directory (overwriting a fingerprint
            directory there); ``None`` uses a temporary one.
        progress: show progress bars and messages; the result table is printed either way.

    Returns:
        Suspect name -> ``{"accuracy", "matching_rate", "is_copy", "p_value"}``, for
        ``"exact copy"``, ``"fine-tuned copy"``, ``"independent A"`` (which calibrates the
        null rate) and ``"independent B (MLP)"``.

    Example:
        >>> rows = run(num=50, epochs=10, progress=False)  # doctest: +SKIP
        >>> rows["exact copy"]["is_copy"], rows["independent B (MLP)"]["is_copy"]  # doctest: +SKIP
        (True, False)
    """
    start = time.perf_counter()
    digits = ipg_data.load_digits()
    order = np.random.default_rng(seed).permutation(len(digits))
    owner_idx, other_idx, test_idx = np.split(order, [700, 1400])
    x, y = digits.x, digits.y
    say = print if progress else (lambda *a, **kw: None)

    say(f"training the owner CNN on {len(owner_idx)} digits ...")
    owner_module = _train("cnn", x[owner_idx], y[owner_idx], seed, epochs, progress)
    say("making suspects: a fine-tuned pirated copy and two independent models ...")
    modules = {
        "exact copy": owner_module,
        "fine-tuned copy": _train("cnn", x[other_idx], y[other_idx], seed + 10,
                                  max(epochs // 6, 2), progress, init_from=owner_module),
        "independent A": _train("cnn", x[other_idx], y[other_idx], seed + 1, epochs, progress),
        "independent B (MLP)": _train("mlp", x[other_idx], y[other_idx], seed + 2, epochs,
                                      progress),
    }
    suspects = {name: ipg.Classifier.from_nnx(m, input_shape=x.shape[1:])
                for name, m in modules.items()}
    owner = suspects["exact copy"]

    config = ipg.FingerprintConfig(num=num, k=k)
    fingerprints = ipg.generate(owner, config, key=seed, data=x[test_idx], progress=progress)
    say(f"{len(fingerprints)} fingerprints, convergence rate "
        f"{fingerprints.convergence_rate:.0%} (k={k}, {config.steps} steps max)")
    with tempfile.TemporaryDirectory() as tmp:
        path = ipg.save(fingerprints, out if out is not None else Path(tmp) / "fingerprints",
                        overwrite=out is not None)
        fingerprints = ipg.load(path)  # verified against its sha256
        say(f"saved to {path if out is not None else 'a temporary directory'} and reloaded")

    # Independent model A calibrates the null rate; the others are judged against it.
    null_rate = min(max(ipg.matching_rate(fingerprints, suspects["independent A"]), 0.05), 0.95)
    rows = {}
    print(f"\n{'suspect':22s} {'test acc':>8s} {'match':>6s} {'verdict':>10s} {'p-value':>9s}")
    for name, suspect in suspects.items():
        verdict = ipg.verify(fingerprints, suspect, threshold=0.5, null_rate=null_rate)
        accuracy = float((suspect.predict(x[test_idx]) == y[test_idx]).mean())
        rows[name] = {"accuracy": accuracy, "matching_rate": verdict.matching_rate,
                      "is_copy": verdict.is_copy, "p_value": verdict.p_value}
        p_text = "(null)" if name == "independent A" else f"{verdict.p_value:9.2g}"
        print(f"{name:22s} {accuracy:8.1%} {verdict.matching_rate:6.0%} "
              f"{'COPY' if verdict.is_copy else 'no':>10s} {p_text:>9s}")
    print(f"\nthreshold 50%; null rate {null_rate:.0%} from independent A; "
          f"{time.perf_counter() - start:.0f} s in all")
    return rows


def main(argv: list[str] | None = None) -> int:
    """The ``ipguard demo`` command line: parses the options and calls :func:`run`.

    Args:
        argv: the arguments after ``demo``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0.

    Raises:
        SystemExit: bad arguments, or ``--help`` (argparse).

    Example:
        >>> main(["--num", "50", "--quiet"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(prog="ipguard demo", description=__doc__.split("\n\n")[1])
    parser.add_argument("--num", type=int, default=100, help="fingerprints to generate")
    parser.add_argument("--k", type=float, default=3.0, help="margin in logit units")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also save the fingerprints here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    run(num=args.num, k=args.k, epochs=args.epochs, seed=args.seed, out=args.out,
        progress=not args.quiet)
    return 0
