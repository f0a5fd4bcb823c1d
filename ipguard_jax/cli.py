"""The ``ipguard`` command line: fingerprint, verify, calibrate, inspect, evaluate.

Commands::

    ipguard fingerprint MODEL -o FINGERPRINTS   model + data -> fingerprint file
    ipguard verify FINGERPRINTS SUSPECT         matching rate, p-value, verdict (--sequential:
                                                stop after the fewest queries that decide)
    ipguard calibrate FINGERPRINTS REF... -o OUT
                                                the null, measured on independent models
    ipguard inspect FINGERPRINTS                provenance of a fingerprint file (never the points)
    ipguard evaluate --quick --out DIR          the robustness/uniqueness (ARUC) benchmark
    ipguard demo                                train, fingerprint, calibrate and verify on
                                                digits; print the ARUC, save its plot

A MODEL or SUSPECT is a model file written by :func:`ipguard_jax.models.save_model`, a PyTorch
state dict file (``torch.save(model.state_dict(), path)``; converted by
:func:`ipguard_jax.convert.from_torch`), a Keras ``.keras`` file, or (SUSPECT only) an
``http(s)://`` prediction endpoint (:class:`ipguard_jax.HTTPSuspect`).

Exit status: ``verify`` exits 0 when the suspect is not judged a copy and 1 when it is; every
command exits 2 on an error (bad arguments, missing or corrupt files, an unreachable endpoint),
printing one line ``ipguard: error: ...`` on stderr (``--debug`` shows the traceback instead).

Example:
    >>> from ipguard_jax.cli import main
    >>> main(["verify", "owner_fp", "suspect_model", "--null-rate", "0.3"])  # doctest: +SKIP
    1
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shlex
import sys
import textwrap
import traceback
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROG = "ipguard"
#: ``verify``: the suspect is not judged a copy.
EXIT_NOT_COPY = 0
#: ``verify``: the suspect is judged a copy (pirated).
EXIT_COPY = 1
#: any command: bad arguments, missing or corrupt files, unreachable endpoints...
EXIT_ERROR = 2

_URL_PREFIXES = ("http://", "https://")


class UsageError(Exception):
    """A mistake in a command line or in the files it names; reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`UsageError` instead of exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- option types -------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    value = _non_negative_int(text)
    if value >= 2 ** 64:
        raise argparse.ArgumentTypeError(f"must be < 2**64 (a 64-bit seed), got {text}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _rate(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a rate in [0, 1], got {text}")
    return value


def _open_rate(text: str) -> float:
    value = _finite(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a rate strictly between 0 and 1, got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, e.g. 0.5 or 0.49,0.48,0.45, got {text!r}"
        ) from None
    if not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return values


def _bounds(text: str) -> tuple[float, float]:
    values = _floats(text)
    if len(values) != 2 or values[0] >= values[1]:
        raise argparse.ArgumentTypeError(f"expected LO,HI with LO < HI, e.g. 0,1, got {text!r}")
    return values[0], values[1]


def _shape(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers like 32,32,3 (H,W,C), got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# --- the parser ---------------------------------------------------------------------------------

def _help_text(description: str, examples: Sequence[str]) -> dict[str, Any]:
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return {"description": textwrap.dedent(description).strip(), "epilog": epilog,
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")


def _add_model_options(parser: argparse.ArgumentParser, role: str) -> None:
    group = parser.add_argument_group(
        f"{role} model options (PyTorch and Keras files only; a model file carries its own spec)")
    group.add_argument("--arch", help="architecture of a PyTorch state dict (detected from its "
                                      "keys if omitted), e.g. resnet18, vgg11_bn, resnet20, cnn")
    group.add_argument("--input-shape", type=_shape, metavar="H,W,C",
                       help="one input's shape (default: from the data or the fingerprints)")
    group.add_argument("--bounds", type=_bounds, metavar="LO,HI",
                       help="range of valid raw inputs (default 0,1)")
    group.add_argument("--mean", type=_floats, metavar="M[,M,M]",
                       help="per-channel mean the PyTorch model's inputs were normalised with")
    group.add_argument("--std", type=_floats, metavar="S[,S,S]",
                       help="per-channel std the PyTorch model's inputs were normalised with")


def _add_data_limits(parser: argparse.ArgumentParser) -> None:
    from ipguard_jax.data import _folder

    group = parser.add_argument_group(
        "input limits (a small hostile file must not exhaust memory or disk; raise them for "
        "larger data you trust)")
    group.add_argument("--max-input-bytes", type=_positive_int,
                       default=_folder.DEFAULT_MAX_ARCHIVE_BYTES, metavar="N",
                       help="most bytes an archive extracts to, or an .npz array unpacks to "
                            "(default %(default)s)")
    group.add_argument("--max-image-pixels", type=_positive_int,
                       default=_folder.DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                       help="most pixels of one image (default %(default)s)")


def _add_passphrase_options(parser: argparse.ArgumentParser, action: str) -> None:
    group = parser.add_argument_group(
        f"sealed fingerprint files (encrypted; {action}; needs the cryptography package)")
    group.add_argument("--passphrase-env", metavar="VAR",
                       help="read the passphrase from this environment variable")
    group.add_argument("--passphrase-file", metavar="FILE",
                       help="read the passphrase from the first line of this file")


def _add_commitment_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "commitment (check FINGERPRINTS against a commitment published before any dispute: "
        "ipguard_jax.commit)")
    group.add_argument("--commitment", metavar="FILE",
                       help="file whose first line is the published commitment (64 hex "
                            "digits); a set that does not match it is an error")
    group.add_argument("--nonce-env", metavar="VAR",
                       help="environment variable holding the commitment's secret nonce (hex); "
                            "omit for an unsalted commitment")


def build_parser() -> argparse.ArgumentParser:
    """The ``ipguard`` argument parser, with one sub-parser per command.

    Returns:
        The parser; its errors raise :class:`UsageError` instead of exiting.

    Example:
        >>> args = build_parser().parse_args(["inspect", "owner_fp"])
        >>> args.command, args.fingerprints
        ('inspect', 'owner_fp')
    """
    from ipguard_jax.config import FingerprintConfig
    from ipguard_jax.evaluation import benchmark

    defaults = FingerprintConfig()
    parser = _Parser(
        prog=PROG,
        **_help_text(
            """
            IPGuard fingerprints of a classifier's decision boundary: fingerprint an owner
            model, verify whether a suspect model is a copy of it, inspect fingerprint files,
            evaluate robustness and uniqueness.

            verify exits 0 (not a copy) or 1 (a copy); every command exits 2 on an error.
            """,
            ["ipguard fingerprint owner_model -o owner_fp --num 100 --k 3",
             "ipguard verify owner_fp suspect_model --null-rate 0.3",
             "ipguard calibrate owner_fp indep1 indep2 indep3 indep4 indep5 -o owner_fp_cal",
             "ipguard verify owner_fp_cal https://api.example.com/predict --sequential",
             "ipguard inspect owner_fp",
             "ipguard evaluate --quick --out results",
             "ipguard demo"]))
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    # fingerprint ---------------------------------------------------------------------------
    p = commands.add_parser(
        "fingerprint", help="fingerprint an owner model: model + data -> fingerprint file",
        **_help_text(
            """
            Generate IPGuard fingerprints of an owner model and write them to a fingerprint
            file (a directory, checksummed, written atomically).

            MODEL is a model file (ipguard_jax.models.save_model), a PyTorch state dict file
            (with --arch if its architecture is not detected) or a Keras .keras file. Start
            points come from --data (the embedded digits by default, an image folder or
            .tar.gz archive, or an .npz file with an array x) or from uniform noise
            (--init noise). A progress bar runs on stderr unless --quiet.
            """,
            ["ipguard fingerprint owner_model -o owner_fp --data digits --num 100 --k 3",
             "ipguard fingerprint resnet20.pt --arch resnet20 --data cifar10.tar.gz --split test "
             "--mean 0.49,0.48,0.45 --std 0.25,0.24,0.26 -o owner_fp"]))
    p.add_argument("model", metavar="MODEL", help="the owner model")
    p.add_argument("-o", "--out", required=True, metavar="FINGERPRINTS",
                   help="fingerprint file to write (a directory; its parent must exist)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing fingerprint file at --out")
    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="SOURCE",
                      help="start images: 'digits' (default), an image folder or tar archive, "
                           "an .npz file with an array x (and optionally y), or tfds:NAME (a "
                           "prepared TensorFlow Datasets dataset)")
    data.add_argument("--split", help="split directory inside an image folder, e.g. test, or "
                                      "the TFDS split (default test)")
    gen = p.add_argument_group("generation (ipguard_jax.FingerprintConfig)")
    gen.add_argument("--num", type=_positive_int, default=defaults.num,
                     help="fingerprints to generate (default %(default)s)")
    gen.add_argument("--k", type=_finite, default=defaults.k,
                     help="margin in logit units (default %(default)s)")
    gen.add_argument("--steps", type=_positive_int, default=defaults.steps,
                     help="most optimisation steps per point (default %(default)s)")
    gen.add_argument("--lr", type=_finite, default=defaults.lr,
                     help="Adam learning rate (default %(default)s)")
    gen.add_argument("--tol", type=_finite, default=defaults.tol,
                     help="a point with loss <= tol has converged (default %(default)s)")
    gen.add_argument("--init", choices=("data", "noise"), default=defaults.init,
                     help="start points (default %(default)s)")
    gen.add_argument("--target", choices=("random", "least_likely"), default=defaults.target,
                     help="target class (default %(default)s)")
    gen.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size,
                     help="candidates optimised together (default %(default)s)")
    gen.add_argument("--keep", choices=("converged", "all"), default=defaults.keep,
                     help="keep converged points only, drawing more candidates, or all "
                          "(default %(default)s)")
    gen.add_argument("--max-candidates", type=_positive_int, default=None,
                     help="candidate budget for --keep converged (default 4 x --num)")
    gen.add_argument("--compact", action="store_true",
                     help="swap finished points out of the working batch (CPU loop)")
    gen.add_argument("--seed", type=_seed, default=None,
                     help="PRNG seed in [0, 2**64) (default: 64 bits drawn from the OS, so "
                          "nobody, not even a thief holding the weights, can regenerate the "
                          "set; a seed you give makes it reproducible by anyone who knows it)")
    gen.add_argument("--method", choices=("ipguard", "random", "fgsm", "pgd", "cw"),
                     default="ipguard",
                     help="ipguard (default), or a baseline on the same engine: random start "
                          "points, FGSM, PGD (L-inf) or Carlini-Wagner L2 "
                          "(ipguard_jax.baselines; their own defaults but --eps)")
    gen.add_argument("--eps", type=_finite, default=None,
                     help="L-inf radius of --method fgsm/pgd (default 0.03)")
    gen.add_argument("--checkpoint", metavar="DIR", default=None,
                     help="save progress to DIR after every chunk; run the same command "
                          "again after an interruption to resume (DIR holds every candidate "
                          "point in plaintext and is deleted after success)")
    gen.add_argument("--keep-checkpoint", action="store_true",
                     help="keep --checkpoint DIR after success")
    _add_model_options(p, "owner")
    _add_data_limits(p)
    _add_passphrase_options(p, "with a passphrase, --out is written as one sealed file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)

    # verify --------------------------------------------------------------------------------
    p = commands.add_parser(
        "verify", help="verify a suspect model against a fingerprint file",
        **_help_text(
            """
            Query a suspect on the fingerprints and judge whether it is a copy of their owner:
            the matching rate (share of fingerprints where the suspect gives the owner's
            label) and, given a null, its p-value: the chance that an independently trained
            model matches as often. The null is --null-rate if given (an exact binomial
            test), else the calibration stored in FINGERPRINTS by 'ipguard calibrate' (a
            beta-binomial fitted on reference models); the output says which.

            With a calibrated null the suspect is a copy when its p-value is at most --fpr
            (default 1%); otherwise when its matching rate reaches --threshold (default 0.5).
            --sequential queries a few fingerprints at a time in a secret random order and
            stops as soon as a sequential test decides at --fpr and --fnr (for copies
            matching at least --pirate-rate): far fewer queries to a paid API.

            SUSPECT is a model file, a PyTorch state dict file, a Keras .keras file or an
            http(s):// endpoint answering {"inputs": [...]} with {"labels": [...]} or
            {"logits": [...]}.

            exit status: 0 not a copy, 1 a copy (pirated), 2 error.
            """,
            ["ipguard verify owner_fp suspect_model --null-rate 0.3",
             "ipguard verify owner_fp_cal suspect_model --fpr 0.001",
             "ipguard verify owner_fp_cal https://api.example.com/predict --sequential "
             "--order-seed $SECRET_SEED --query-budget 200 --resume resume.json",
             "ipguard verify owner_fp https://api.example.com/predict --query-budget 1000 "
             "--resume resume.json --json"]))
    p.add_argument("fingerprints", metavar="FINGERPRINTS", help="the owner's fingerprint file")
    p.add_argument("suspect", metavar="SUSPECT", help="the suspect model or endpoint")
    p.add_argument("--threshold", type=_rate, default=None,
                   help="a matching rate >= threshold means a copy (default: the calibrated "
                        "threshold for --fpr in a calibrated set, else 0.5)")
    p.add_argument("--null-rate", type=_rate, default=None,
                   help="matching rate of independent models, for a binomial p-value "
                        "(overrides the set's calibration)")
    p.add_argument("--fpr", type=_open_rate, default=0.01,
                   help="false-positive rate to allow: sets the calibrated threshold and the "
                        "sequential test (default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="points per query (default 64; 10 with --sequential)")
    seq = p.add_argument_group(
        "sequential verification (stop as soon as the answers decide; needs a null)")
    seq.add_argument("--sequential", action="store_true",
                     help="query in small batches, in a secret random order, and stop as "
                          "soon as a sequential test (SPRT) decides at --fpr and --fnr")
    seq.add_argument("--fnr", type=_open_rate, default=None,
                     help="false-negative rate to aim for, for copies matching --pirate-rate "
                          "(default 0.05)")
    seq.add_argument("--pirate-rate", type=_open_rate, default=None,
                     help="matching rate of the copies to catch (default 0.8)")
    seq.add_argument("--order-seed", type=_seed, default=None,
                     help="seed of the secret query order (default: fresh OS randomness; fix "
                          "it, and keep it secret, to resume an endpoint run with --resume)")
    decoys = p.add_argument_group(
        "decoys (natural inputs mixed into every query, so a suspect cannot single out the "
        "fingerprints)")
    decoys.add_argument("--decoys", metavar="SOURCE",
                        help="'digits', an image folder or tar archive, an .npz with x, or "
                             "tfds:NAME")
    decoys.add_argument("--decoy-split", metavar="SPLIT",
                        help="split directory inside a decoy image folder")
    decoys.add_argument("--decoy-ratio", type=_finite, default=None,
                        help="decoys per fingerprint (default 1 with --decoys)")
    decoys.add_argument("--decoy-seed", type=_seed, default=None,
                        help="seed of the decoys' draw and order (default: fresh randomness; "
                             "fix it to resume an endpoint run with --resume)")
    _add_data_limits(p)
    _add_model_options(p, "suspect")
    _add_passphrase_options(p, "to read a sealed FINGERPRINTS")
    _add_commitment_options(p)
    http = p.add_argument_group("endpoint options (http(s):// suspects only)")
    http.add_argument("--timeout", type=_finite, default=10.0,
                      help="seconds per request (default %(default)s)")
    http.add_argument("--retries", type=_non_negative_int, default=5,
                      help="retries per batch on errors, 5xx and 429 (default %(default)s)")
    http.add_argument("--query-budget", type=_non_negative_int, default=None,
                      help="most points ever sent (counting earlier runs on --resume)")
    http.add_argument("--query-log", metavar="FILE",
                      help="JSON-lines log of the requests (hashes, never the points)")
    http.add_argument("--resume", metavar="FILE",
                      help="answers kept here; a rerun does not query them again")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    _add_common(p)

    # calibrate -----------------------------------------------------------------------------
    p = commands.add_parser(
        "calibrate", help="measure the null on independent reference models",
        **_help_text(
            """
            Query reference models trained independently of the owner (other seeds, data or
            architectures: never copies of it) on the fingerprints, fit how often such
            models match as a beta-binomial across models, and write the fingerprint set
            with this calibration to --out (inside the sealed file with a passphrase; a
            sealed FINGERPRINTS needs one). 'ipguard verify' then reports p-values under
            this null and decides at a false-positive rate you choose.

            At least --min-references models are needed (default 5); with few, the fit is
            widened to stay conservative (see ipguard_jax.calibration).
            """,
            ["ipguard calibrate owner_fp indep1 indep2 indep3 indep4 indep5 -o owner_fp_cal",
             "ipguard calibrate owner.sealed m1 m2 m3 m4 m5 m6 -o owner_cal.sealed "
             "--passphrase-env FP_PASS"]))
    p.add_argument("fingerprints", metavar="FINGERPRINTS", help="the owner's fingerprint file")
    p.add_argument("references", metavar="REF", nargs="+",
                   help="independently trained reference models (model, PyTorch or Keras "
                        "files)")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="fingerprint file to write, with the calibration")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing fingerprint file at --out")
    p.add_argument("--min-references", type=_positive_int, default=5,
                   help="fewest reference models accepted (default %(default)s, at least 2)")
    p.add_argument("--min-dispersion", type=_unit_interval, default=0.01,
                   help="floor on the fitted over-dispersion (default %(default)s)")
    p.add_argument("--fpr", type=_open_rate, default=0.01,
                   help="false-positive rate whose threshold is shown (default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=256,
                   help="points per query (default %(default)s)")
    _add_model_options(p, "reference")
    _add_passphrase_options(p, "reads a sealed FINGERPRINTS; with a passphrase, --out is "
                               "written as one sealed file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_common(p)

    # inspect -------------------------------------------------------------------------------
    p = commands.add_parser(
        "inspect", help="show a fingerprint file's provenance (never its points)",
        **_help_text(
            """
            Check a fingerprint file's integrity (its sha256: catches damage, not deliberate
            edits; a sealed file is also authenticated) and show its provenance: the
            generation config, where its key came from, the owner's parameter hash and input
            spec, library versions, creation time, counts and convergence rate. The points,
            labels and key are never shown. With --commitment, also check the set against a
            commitment published earlier (ipguard_jax.commit), the evidence that it was not
            edited since.
            """,
            ["ipguard inspect owner_fp", "ipguard inspect owner_fp --json",
             "ipguard inspect owner_fp --commitment commitment.txt --nonce-env FP_NONCE"]))
    p.add_argument("fingerprints", metavar="FINGERPRINTS", help="a fingerprint file")
    _add_passphrase_options(p, "to read a sealed FINGERPRINTS")
    _add_commitment_options(p)
    p.add_argument("--json", action="store_true", help="print as JSON")
    _add_common(p)

    # evaluate ------------------------------------------------------------------------------
    p = commands.add_parser(
        "evaluate", help="robustness/uniqueness (ARUC) benchmark",
        **_help_text(
            """
            Train an owner, pirated copies (fine-tuning, retraining, pruning, distillation,
            int8) and independent models, fingerprint the owner under several configurations
            and report ARUC (as ROC-AUC and as the integral of min(R, U)), TPR at 1% FPR and
            the convergence rate. Writes aruc_digits_quick.{json,md,png} (--quick) or
            aruc_cifar10.{json,md,png} into --out. Trained models are cached, so a rerun
            only fingerprints and queries.
            """,
            ["ipguard evaluate --quick --out results",
             "ipguard evaluate --data cifar10.tar.gz --ks 3,10 --inits data --out results"]))
    benchmark.add_arguments(p, data_default="none: give --data, or --quick")
    p.add_argument("--out", default=".", metavar="DIR",
                   help="directory for the reports (created; default the current directory)")
    _add_common(p)

    # demo (dispatched before parsing; listed here for the help) ----------------------------
    commands.add_parser("demo", add_help=False,
                        help="train, fingerprint, calibrate and verify on the embedded digits, "
                             "print the ARUC (see 'ipguard demo --help')")
    return parser


# --- errors and warnings ------------------------------------------------------------------------

def _error_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    if not isinstance(error, (UsageError, OSError, ValueError, TypeError, RuntimeError,
                              ImportError)):
        text = f"{type(error).__name__}: {text}"
    return " ".join(text.split())


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen = set()
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
            continue
        text = " ".join(str(w.message).split())
        if text not in seen:
            seen.add(text)
            print(f"{PROG}: warning: {text}", file=sys.stderr)


# --- models and data ----------------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_kind(source: str) -> str:
    """``"url"``, ``"bundle"``, ``"keras"`` or ``"torch"``; raises UsageError for the rest."""
    if source.startswith(_URL_PREFIXES):
        return "url"
    from ipguard_jax.models.bundle import is_model_file

    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"{source}: no such file or directory")
    if path.is_dir():
        if is_model_file(path):
            return "bundle"
        if (path / "CURRENT").is_file():
            raise UsageError(f"{source} is a fingerprint file, not a model")
        raise UsageError(f"{source} is a directory but not a model file (no model.json); "
                         "save models with ipguard_jax.models.save_model")
    if path.suffix.lower() == ".keras":
        return "keras"
    if _is_sealed(path):
        raise UsageError(f"{source} is a sealed fingerprint file, not a model")
    return "torch"


def _spec_options(args: argparse.Namespace) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in ("arch", "input_shape", "bounds", "mean",
                                                       "std")
            if getattr(args, name, None) is not None]


def _load_torch(path: Path, args: argparse.Namespace, input_shape: tuple[int, ...]):
    try:
        import torch
    except ImportError:
        raise UsageError("reading PyTorch files needs torch: pip install 'ipguard-jax[torch]'"
                         ) from None
    from ipguard_jax.convert import SUPPORTED_ARCHS, from_torch

    if args.arch is not None and args.arch not in SUPPORTED_ARCHS:
        raise UsageError(f"--arch {args.arch!r} is not a supported PyTorch architecture; "
                         f"supported: {', '.join(SUPPORTED_ARCHS)}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a readable state dict"
        if "Weights only load failed" in str(e):
            reason = ("torch.load(weights_only=True) refused it: it is not a PyTorch file, or "
                      "it holds pickled objects besides tensors, such as a whole model")
        else:
            first = (str(e).strip().splitlines() or [""])[0]
            reason = f"{type(e).__name__}: {first[:200]}"
        raise UsageError(f"{path}: cannot read it as a PyTorch state dict ({reason}); save one "
                         "with torch.save(model.state_dict(), path)") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not (isinstance(loaded, Mapping) and loaded
            and all(isinstance(v, torch.Tensor) for v in loaded.values())):
        raise UsageError(f"{path} does not hold a PyTorch state dict (names -> tensors); save "
                         "one with torch.save(model.state_dict(), path)")
    clf = from_torch(dict(loaded), input_shape=input_shape, bounds=args.bounds or (0.0, 1.0),
                     mean=args.mean, std=args.std, arch=args.arch)
    return clf, {"kind": "pytorch state dict", "file": path.name,
                 "file_sha256": _sha256_file(path), "arch": args.arch or "detected",
                 "params_sha256": clf.params_hash}


def _load_keras(path: Path, args: argparse.Namespace, input_shape: tuple[int, ...] | None):
    import ipguard_jax as ipg

    if args.arch is not None or args.mean is not None or args.std is not None:
        raise UsageError("--arch, --mean and --std apply to PyTorch files only")
    os.environ.setdefault("KERAS_BACKEND", "jax")  # read by keras at its first import
    try:
        import keras
    except ImportError:
        raise UsageError("reading .keras files needs Keras 3: pip install 'ipguard-jax[keras]'"
                         ) from None
    if keras.backend.backend() != "jax":
        raise UsageError(f"keras runs on the {keras.backend.backend()!r} backend; set "
                         "KERAS_BACKEND=jax")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many kinds for unreadable files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"{path}: cannot load it as a Keras model ({type(e).__name__}: "
                         f"{first[:200]})") from None
    clf = ipg.Classifier.from_keras(model, input_shape=args.input_shape or input_shape,
                                    bounds=args.bounds or (0.0, 1.0))
    return clf, {"kind": "keras file", "file": path.name, "file_sha256": _sha256_file(path),
                 "params_sha256": clf.params_hash}


def load_model_source(source: str, args: argparse.Namespace, *,
                      input_shape: tuple[int, ...] | None = None, allow_url: bool = False):
    """Opens a model given on the command line as a classifier (or, for a URL, a suspect).

    Args:
        source: a model file, a PyTorch state dict file, a ``.keras`` file or an http(s) URL.
        args: the parsed options (``--arch``, ``--input-shape``, ``--bounds``, ``--mean``,
            ``--std``; for URLs the endpoint options).
        input_shape: the input shape to use for PyTorch files when ``--input-shape`` is not
            given (from the data or the fingerprints).
        allow_url: accept an http(s) URL (suspects only).

    Returns:
        ``(model, description)``: a :class:`~ipguard_jax.Classifier` (or an
        :class:`~ipguard_jax.HTTPSuspect` for a URL) and a JSON-able description of it.

    Raises:
        UsageError: an unreadable or unsupported source, or options that do not apply to it.

    Example:
        >>> args = build_parser().parse_args(["verify", "fp", "owner_model"])
        >>> clf, about = load_model_source("owner_model", args)  # doctest: +SKIP
    """
    kind = _model_kind(source)
    if kind == "url":
        if not allow_url:
            raise UsageError("fingerprinting needs the owner's weights, not an endpoint; give a "
                             "model file")
        import ipguard_jax as ipg

        suspect = ipg.HTTPSuspect(
            source, batch_size=args.batch_size, timeout=args.timeout, max_retries=args.retries,
            query_budget=args.query_budget, log_path=args.query_log, resume_path=args.resume)
        from ipguard_jax.suspects import redact_url

        return suspect, {"kind": "http endpoint", "url": redact_url(source)}
    path = Path(source).expanduser()
    if kind == "bundle":
        if given := _spec_options(args):
            raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to "
                             "PyTorch and Keras files only; a model file carries its own spec")
        from ipguard_jax.models.bundle import load_model

        module, spec = load_model(path)
        return spec.classifier(module), {"kind": "model file", "file": path.name,
                                         "arch": spec.arch, "params_sha256": spec.state_sha256}
    if kind == "keras":
        return _load_keras(path, args, input_shape)
    shape = args.input_shape or input_shape
    if shape is None:
        raise UsageError("a PyTorch file needs --input-shape H,W,C (or data to take it from)")
    return _load_torch(path, args, shape)


def load_data_source(source: str | None, split: str | None = None, channels: int | None = None,
                     option: str = "--data", *, max_bytes: int | None = None,
                     max_pixels: int | None = None):
    """Loads start images given on the command line.

    Args:
        source: ``None`` or ``"digits"`` (the embedded digits), an image folder or tar
            archive, an ``.npz`` file with an array ``x`` (and optionally ``y``), or
            ``tfds:NAME`` for a TensorFlow Datasets dataset already prepared on this machine
            (in ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``; nothing is downloaded).
        split: the split directory inside an image folder, or the TFDS split (default
            ``"test"``).
        channels: the model's input channels: 1 loads image folders as grey, else RGB.
        option: the option that named the source, for messages.
        max_bytes: most bytes an archive extracts to or an ``.npz`` array unpacks to
            (default: :func:`~ipguard_jax.data.load_image_folder`'s).
        max_pixels: most pixels of one image (default: ``load_image_folder``'s).

    Returns:
        A :class:`ipguard_jax.data.Dataset`.

    Raises:
        UsageError: a missing or unreadable source, or one beyond the limits.

    Example:
        >>> load_data_source("digits").x.shape
        (1797, 8, 8, 1)
    """
    from ipguard_jax import data
    from ipguard_jax.data import _folder

    max_bytes = _folder.DEFAULT_MAX_ARCHIVE_BYTES if max_bytes is None else max_bytes
    max_pixels = _folder.DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if source is None or source == "digits":
        return data.load_digits()
    if source.startswith("tfds:"):
        name = source[len("tfds:"):]
        if not name:
            raise UsageError(f"{option} tfds: needs a dataset name, e.g. tfds:cifar10")
        try:
            return data.load_tfds(name, split or "test",
                                  data_dir=os.environ.get("TFDS_DATA_DIR") or None)
        except (ImportError, FileNotFoundError, ValueError) as e:
            raise UsageError(f"{option} {source}: {e}") from None
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"{option} {source}: no such file or directory")
    if path.is_file() and path.suffix.lower() == ".npz":
        if split is not None:
            raise UsageError(f"{option}: a split applies to image folders only")
        try:
            with zipfile.ZipFile(path) as archive:  # sizes checked before anything inflates
                unpacked = sum(member.file_size for member in archive.infolist())
            if unpacked > max_bytes:
                raise UsageError(f"{option} {source} unpacks to {unpacked} bytes, more than "
                                 f"--max-input-bytes {max_bytes}")
            with np.load(path, allow_pickle=False) as arrays:
                names = list(arrays.files)
                if "x" not in names:
                    raise UsageError(f"{option} {source} has no array named x (it has "
                                     f"{', '.join(names) or 'none'})")
                x = arrays["x"]
                y = arrays["y"] if "y" in names else np.zeros(len(x), np.int32)
        except UsageError:
            raise
        except Exception as e:  # zip, format and pickle refusals
            raise UsageError(f"{option} {source}: cannot read it as an .npz file of arrays "
                             f"({type(e).__name__}: {e})") from None
        return data.from_arrays(x, y, name=path.name)
    return data.load_image_folder(path, split, mode="L" if channels == 1 else "RGB",
                                  max_archive_bytes=max_bytes, max_image_pixels=max_pixels)


def _limits(args: argparse.Namespace) -> dict[str, int]:
    return {"max_bytes": args.max_input_bytes, "max_pixels": args.max_image_pixels}


def _passphrase(args: argparse.Namespace) -> str | None:
    env, file = getattr(args, "passphrase_env", None), getattr(args, "passphrase_file", None)
    if env is not None and file is not None:
        raise UsageError("give --passphrase-env or --passphrase-file, not both")
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise UsageError(f"--passphrase-env {env}: the environment variable is not set or "
                             "empty")
        return value
    if file is not None:
        try:
            with open(Path(file).expanduser(), encoding="utf-8") as f:
                value = f.readline().rstrip("\r\n")
        except OSError as e:
            raise UsageError(f"--passphrase-file {file}: {e.strerror or e}") from None
        if not value:
            raise UsageError(f"--passphrase-file {file}: the first line is empty")
        return value
    return None


def _check_commitment(fingerprints, args: argparse.Namespace) -> str | None:
    """Checks ``--commitment``/``--nonce-env``; returns the commitment file, or ``None``."""
    import ipguard_jax as ipg

    file, env = getattr(args, "commitment", None), getattr(args, "nonce_env", None)
    if file is None:
        if env is not None:
            raise UsageError("--nonce-env needs --commitment FILE")
        return None
    path = Path(file).expanduser()
    try:
        with path.open("r", encoding="utf-8") as f:
            published = f.readline(256).strip()
    except OSError as e:
        raise UsageError(f"--commitment {file}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--commitment {file}: not a text file") from None
    nonce = None
    if env is not None:
        nonce = os.environ.get(env, "").strip()
        if not nonce:
            raise UsageError(f"--nonce-env {env}: the environment variable is not set or empty")
    try:
        matches = ipg.verify_commitment(fingerprints, published, nonce)
    except ValueError as e:  # the messages name the problem, never the nonce's value
        raise UsageError(f"--commitment {file}: {e}") from None
    if not matches:
        raise UsageError(f"{args.fingerprints} does not match the commitment in {file}"
                         + (f" with the nonce in ${env}" if env else " (unsalted; give "
                            "--nonce-env if it was made with a nonce)"))
    return str(path)


def _is_sealed(path: Path) -> bool:
    from ipguard_jax.io import SEALED_MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(SEALED_MAGIC)) == SEALED_MAGIC
    except OSError:
        return False


def load_fingerprints(source: str, args: argparse.Namespace):
    """Loads the fingerprint file given on the command line (sealed or not); checks its sha256.

    Args:
        source: a fingerprint directory or a sealed fingerprint file.
        args: the parsed options (``--passphrase-env`` / ``--passphrase-file`` for sealed
            files).

    Returns:
        The :class:`~ipguard_jax.Fingerprints`.

    Raises:
        UsageError: a sealed file without a passphrase, or a passphrase for a directory.
        FileNotFoundError: nothing at ``source``.
        ipguard_jax.FingerprintFileError: a corrupt, modified or unknown file, a wrong
            passphrase.

    Example:
        >>> args = build_parser().parse_args(["inspect", "owner_fp"])
        >>> fp = load_fingerprints("owner_fp", args)  # doctest: +SKIP
    """
    import ipguard_jax as ipg

    path = Path(source).expanduser()
    passphrase = _passphrase(args)
    if path.is_file() and _is_sealed(path) and passphrase is None:
        raise UsageError(f"{source} is a sealed fingerprint file: give its passphrase with "
                         "--passphrase-env VAR or --passphrase-file FILE")
    if path.is_dir() and (path / "model.json").is_file():
        raise UsageError(f"{source} is a model file, not a fingerprint file")
    if path.is_dir() and passphrase is not None:
        raise UsageError(f"{source} is not sealed: drop --passphrase-env/--passphrase-file")
    return ipg.load(path, passphrase=passphrase)


# --- commands -----------------------------------------------------------------------------------

def _check_out(out: Path, overwrite: bool, sealed: bool) -> None:
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise UsageError(f"{out} exists; pass --overwrite to replace it")
        if sealed and not (out.is_file() and _is_sealed(out)):
            raise UsageError(f"{out} exists and is not a sealed fingerprint file; refusing to "
                             "overwrite it")
        if not sealed and not (out.is_dir() and (out / "CURRENT").is_file()):
            raise UsageError(f"{out} exists and is not a fingerprint directory; refusing to "
                             "overwrite it")
    if not out.absolute().parent.is_dir():
        raise UsageError(f"the directory {out.absolute().parent} does not exist")


def _output(args: argparse.Namespace) -> tuple[Path, str | None]:
    """``--out`` and the passphrase to seal it with, checked before any work is done."""
    out = Path(args.out).expanduser()
    passphrase = _passphrase(args)
    _check_out(out, args.overwrite, passphrase is not None)
    if passphrase is not None and importlib.util.find_spec("cryptography") is None:
        raise UsageError("sealed fingerprint files need the cryptography package: pip install "
                         "'ipguard-jax[seal]'")
    return out, passphrase


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    import ipguard_jax as ipg

    out, passphrase = _output(args)  # a refusal must not cost a run
    config = ipg.FingerprintConfig(
        num=args.num, k=args.k, steps=args.steps, lr=args.lr, tol=args.tol, init=args.init,
        target=args.target, batch_size=args.batch_size, keep=args.keep,
        max_candidates=args.max_candidates, compact=args.compact)
    if args.init == "noise" and (args.data is not None or args.split is not None):
        raise UsageError("--data and --split are for --init data; noise starts need no data")
    if args.keep_checkpoint and args.checkpoint is None:
        raise UsageError("--keep-checkpoint needs --checkpoint DIR")

    kind = _model_kind(args.model)
    dataset = None
    if args.init == "data" and kind == "torch":  # its input shape may come from the data
        channels = args.input_shape[-1] if args.input_shape else None
        dataset = load_data_source(args.data, args.split, channels, **_limits(args))
        owner, about = load_model_source(args.model, args,
                                         input_shape=tuple(dataset.x.shape[1:]))
    else:
        owner, about = load_model_source(args.model, args)
        if args.init == "data":
            dataset = load_data_source(args.data, args.split, owner.input_shape[-1],
                                       **_limits(args))
    if dataset is not None and tuple(dataset.x.shape[1:]) != owner.input_shape:
        raise UsageError(f"--data {args.data or 'digits'} holds images of shape "
                         f"{tuple(dataset.x.shape[1:])}, the model takes {owner.input_shape}")

    from ipguard_jax import baselines

    if args.eps is not None and args.method not in ("fgsm", "pgd"):
        raise UsageError("--eps is for --method fgsm or pgd")
    method = {"fgsm": baselines.FGSM, "pgd": baselines.PGD}.get(args.method)
    method = (method(eps=args.eps) if args.eps is not None else method()) if method \
        else args.method
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fingerprints = ipg.generate(owner, config, key=args.seed,
                                    data=None if dataset is None else dataset.x,
                                    method=method, checkpoint=args.checkpoint,
                                    keep_checkpoint=args.keep_checkpoint,
                                    progress=not args.quiet)
    _print_warnings(caught)
    if args.keep_checkpoint and passphrase is not None:
        print(f"{PROG}: warning: --checkpoint {args.checkpoint} is kept and holds every "
              "candidate point and label in plaintext beside the sealed file; delete it once "
              "you no longer need to resume", file=sys.stderr)
    if len(fingerprints) == 0:
        raise UsageError("no candidate point converged, nothing written; raise --steps or "
                         "--max-candidates, lower --k, or pass --keep all")
    origin: dict[str, Any] = {"tool": f"{PROG} fingerprint", "model": about}
    if dataset is not None:
        x = np.ascontiguousarray(dataset.x)
        origin["data"] = {"name": dataset.name or (args.data or "digits"),
                          "num_images": int(len(x)),
                          "sha256": hashlib.sha256(x.tobytes()).hexdigest()}
    fingerprints = ipg.Fingerprints(**fingerprints.arrays(),
                                    metadata={**fingerprints.metadata, "origin": origin})
    path = ipg.save(fingerprints, out, overwrite=args.overwrite, passphrase=passphrase)
    meta = fingerprints.metadata
    summary = {
        "path": str(path),
        "num_fingerprints": len(fingerprints),
        "num_candidates": meta["num_candidates"],
        "num_converged": meta["num_converged"],
        "convergence_rate": meta["convergence_rate"],
        "owner_params_sha256": meta["classifier"]["params_sha256"],
        "sha256": fingerprints.digest(),
        "sealed": passphrase is not None,
        "key_source": meta["key"]["source"],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {summary['num_fingerprints']} fingerprints to {path}"
              + (" (sealed)" if passphrase is not None else ""))
        print(f"  owner        {about['kind']} {about.get('file', '')}, parameters sha256 "
              f"{summary['owner_params_sha256']}")
        if "data" in origin:
            print(f"  start points {origin['data']['name']} ({origin['data']['num_images']} "
                  "images)")
        else:
            print("  start points uniform noise")
        print(f"  converged    {meta['num_converged']} of {meta['num_candidates']} candidates "
              f"({meta['convergence_rate']:.1%}), k={config.k:g}, at most {config.steps} steps")
        print(f"  key          {_describe_key(meta['key'])}")
        print(f"  content      sha256 {summary['sha256']}")
    return 0


def _describe_null(verdict: Any, calibration: Any) -> str:
    """The verdict's null in words, for the ``null`` line of ``verify``."""
    if calibration is not None:
        return (f"{verdict.null_source} (beta-binomial, mean rate {calibration.mean:.1%}, "
                f"over-dispersion {calibration.dispersion:.3g})")
    if verdict.null_rate is not None:
        return f"{verdict.null_source}: {verdict.null_rate:.1%} (binomial)"
    return "none (give --null-rate, or calibrate the set: ipguard calibrate)"


def _verify_options(args: argparse.Namespace, calibration: Any) -> Any:
    """Checks the options that depend on each other; returns the query key (a seed or None)."""
    if args.sequential:
        if args.threshold is not None:
            raise UsageError("--threshold does not apply to --sequential: the sequential test "
                             "decides at --fpr and --fnr")
        if args.null_rate is None and calibration is None:
            raise UsageError("--sequential needs a null: give --null-rate, or calibrate the "
                             "set with 'ipguard calibrate'")
        if args.null_rate is not None and not 0.0 < args.null_rate < 1.0:
            raise UsageError("--sequential needs a --null-rate strictly between 0 and 1")
    else:
        given = [name for name, value in (("--fnr", args.fnr),
                                          ("--pirate-rate", args.pirate_rate),
                                          ("--order-seed", args.order_seed))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} "
                             f"--sequential")
    if args.decoys is None and (args.decoy_ratio is not None or args.decoy_seed is not None):
        raise UsageError("--decoy-ratio and --decoy-seed need --decoys")
    if args.decoy_seed is not None and args.order_seed is not None:
        raise UsageError("give --decoy-seed or --order-seed, not both: one key orders the "
                         "queries and draws the decoys")
    if args.batch_size is None:
        args.batch_size = 10 if args.sequential else 64
    return args.decoy_seed if args.decoy_seed is not None else args.order_seed


def _cmd_verify(args: argparse.Namespace) -> int:
    import ipguard_jax as ipg
    from ipguard_jax.calibration import calibration_of

    fingerprints = load_fingerprints(args.fingerprints, args)
    if len(fingerprints) == 0:
        raise UsageError(f"{args.fingerprints} holds no fingerprints")
    commitment = _check_commitment(fingerprints, args)  # before any query
    try:
        calibration = calibration_of(fingerprints)
    except ValueError as e:
        raise UsageError(f"{args.fingerprints}: {e}") from None
    key = _verify_options(args, calibration)
    if args.null_rate is not None:
        calibration = None  # --null-rate overrides the set's calibration
    decoys = None
    if args.decoys is not None:
        decoys = load_data_source(args.decoys, args.decoy_split, fingerprints.input_shape[-1],
                                  option="--decoys").x
    suspect, about = load_model_source(args.suspect, args, input_shape=fingerprints.input_shape,
                                       allow_url=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.sequential:
            verdict = ipg.verify_sequential(
                fingerprints, suspect, fpr=args.fpr,
                fnr=0.05 if args.fnr is None else args.fnr,
                pirate_rate=0.8 if args.pirate_rate is None else args.pirate_rate,
                null_rate=args.null_rate, batch_size=args.batch_size, decoys=decoys,
                decoy_ratio=args.decoy_ratio, key=key)
        else:
            verdict = ipg.verify(fingerprints, suspect, threshold=args.threshold,
                                 null_rate=args.null_rate, batch_size=args.batch_size,
                                 fpr=args.fpr, decoys=decoys, decoy_ratio=args.decoy_ratio,
                                 key=key)
    _print_warnings(caught)
    owner_hash = fingerprints.metadata.get("classifier", {}).get("params_sha256")
    sequential = None
    if args.sequential:
        sequential = {"stopped_by": verdict.stopped_by, "answers_used": verdict.num_points,
                      "fingerprints_queried": verdict.num_queried,
                      "fingerprints_available": verdict.num_available, "fnr": verdict.fnr,
                      "pirate_rate": verdict.pirate_rate, "fpr_exact": verdict.fpr_exact,
                      "fnr_exact": verdict.fnr_exact}
    if args.json:
        print(json.dumps({
            "fingerprints": str(Path(args.fingerprints).absolute()),
            "owner_params_sha256": owner_hash,
            "suspect": about,
            "matching_rate": verdict.matching_rate,
            "num_matches": verdict.num_matches,
            "num_points": verdict.num_points,
            "threshold": verdict.threshold,
            "null_source": verdict.null_source,
            "null_rate": verdict.null_rate,
            "null": None if calibration is None else calibration.to_dict(),
            "p_value": verdict.p_value,
            "fpr": verdict.fpr,
            "fpr_threshold": verdict.fpr_threshold,
            "is_copy": verdict.is_copy,
            "verdict": "pirated" if verdict.is_copy else "not pirated",
            "sequential": sequential,
            "decoys": None if decoys is None else {"source": args.decoys,
                                                   "ratio": args.decoy_ratio or 1.0,
                                                   "sent": verdict.num_decoys},
            "commitment": commitment,
        }, indent=1))
    else:
        name = about.get("url") or about.get("file")
        print(f"fingerprints   {args.fingerprints} ({len(fingerprints)} points, owner "
              f"parameters sha256 {str(owner_hash)[:16]}...)")
        if commitment is not None:
            print(f"commitment     matches {commitment}")
        print(f"suspect        {name} ({about['kind']})")
        print(f"null           {_describe_null(verdict, calibration)}")
        print(f"matching rate  {verdict.matching_rate:.1%} ({verdict.num_matches} of "
              f"{verdict.num_points})")
        if sequential is not None:
            print(f"sequential     decided by the {verdict.stopped_by} after "
                  f"{verdict.num_points} answers; {verdict.num_queried} of "
                  f"{verdict.num_available} fingerprints queried")
            print(f"error rates    {verdict.fpr_exact:.3g} false positive (asked <= "
                  f"{verdict.fpr:g}), {verdict.fnr_exact:.3g} false negative for copies "
                  f"matching {verdict.pirate_rate:.0%} (asked {verdict.fnr:g})")
        if verdict.num_decoys:
            print(f"decoys         {verdict.num_decoys} natural inputs mixed into the queries "
                  f"(not counted)")
        if sequential is None:
            print(f"threshold      {verdict.threshold:.1%}")
        if verdict.p_value is None:
            print("p-value        n/a (give --null-rate, the matching rate of independent "
                  "models, or calibrate the set: ipguard calibrate)")
        elif calibration is not None:
            print(f"p-value        {verdict.p_value:.3g} (beta-binomial null "
                  f"{verdict.null_source}{', sequential design' if sequential else ''})")
        else:
            print(f"p-value        {verdict.p_value:.3g} (null rate {verdict.null_rate:.1%}"
                  f"{', sequential design' if sequential else ''})")
        if verdict.fpr_threshold is not None:
            count = round(verdict.fpr_threshold * len(fingerprints))
            print(f"fpr threshold  {verdict.fpr_threshold:.1%}: {count} of {len(fingerprints)} "
                  f"matches give p <= {verdict.fpr:g}")
        print("verdict        " + ("PIRATED: the suspect matches the owner's fingerprints"
                                   if verdict.is_copy else
                                   "NOT PIRATED: the suspect does not match enough "
                                   "fingerprints"))
    return EXIT_COPY if verdict.is_copy else EXIT_NOT_COPY


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import ipguard_jax as ipg
    from ipguard_jax.calibration import calibrate, with_calibration

    out, passphrase = _output(args)  # a refusal must not cost a run
    if args.min_references < 2:
        raise UsageError(f"--min-references must be at least 2, got {args.min_references}")
    if len(args.references) < args.min_references:
        raise UsageError(f"calibrate needs at least {args.min_references} reference models, "
                         f"got {len(args.references)} (--min-references lowers the minimum; "
                         f"fewer cannot estimate how much independent models differ)")
    if len(set(args.references)) != len(args.references):
        raise UsageError("a reference model is given twice")
    source = Path(args.fingerprints).expanduser()
    sealed_in = source.is_file() and _is_sealed(source)
    reading = args if sealed_in else argparse.Namespace(
        **{**vars(args), "passphrase_env": None, "passphrase_file": None})
    fingerprints = load_fingerprints(args.fingerprints, reading)
    if len(fingerprints) < 2:
        raise UsageError(f"{args.fingerprints} holds {len(fingerprints)} fingerprints; "
                         "calibration needs at least 2")
    owner_hash = fingerprints.metadata.get("classifier", {}).get("params_sha256")
    models, descriptions = [], []
    for ref in args.references:
        if ref.startswith(_URL_PREFIXES):
            raise UsageError(f"{ref}: references must be model files here (for an endpoint, "
                             "call ipguard_jax.calibrate with an HTTPSuspect)")
        model, about = load_model_source(ref, args, input_shape=fingerprints.input_shape)
        if owner_hash is not None and about.get("params_sha256") == owner_hash:
            raise UsageError(f"{ref} is the owner itself (its parameters sha256 is the "
                             "fingerprints' owner's): references must be independent models")
        models.append(model)
        descriptions.append(", ".join(f"{k}={v}" for k, v in about.items()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibration = calibrate(fingerprints, models, names=list(args.references),
                                descriptions=descriptions, min_references=args.min_references,
                                min_dispersion=args.min_dispersion, batch_size=args.batch_size)
    _print_warnings(caught)
    path = ipg.save(with_calibration(fingerprints, calibration), out, overwrite=args.overwrite,
                    passphrase=passphrase)
    n = len(fingerprints)
    count = calibration.threshold(args.fpr)
    if args.json:
        print(json.dumps({"path": str(path), "sealed": passphrase is not None,
                          "num_points": n, "fpr": args.fpr, "threshold_matches": count,
                          "calibration": calibration.to_dict()}, indent=1))
        return 0
    print(f"wrote {args.fingerprints} with its calibration to {path}"
          + (" (sealed)" if passphrase is not None else ""))
    print(f"null        {calibration}")
    width = max(len(name) for name in calibration.names)
    for name, rate in zip(calibration.names, calibration.rates):
        print(f"  {name:<{width}}  {rate:.1%}")
    print(f"fit         {calibration.method}")
    reach = (f"{count} of {n} matches ({count / n:.1%})" if count <= n
             else f"more than all {n} fingerprints (no verdict possible at this rate)")
    print(f"threshold   at a false-positive rate of {args.fpr:g} a copy needs {reach}")
    return 0


_KEY_SOURCES = {
    "os": "drawn from the OS (secret: nobody can regenerate the set)",
    "explicit": "given explicitly (anyone who knows it and holds the weights can regenerate "
                "the set)",
    "checkpoint": "restored from a checkpoint",
}


def _describe_key(record: Any) -> str:
    """The key's source in words, for ``fingerprint`` and ``inspect`` (never its value)."""
    if not isinstance(record, Mapping):
        return "not recorded (a set written before keys were recorded)"
    source = record.get("source")
    return _KEY_SOURCES.get(source, f"source {source!r}" if source else "source not recorded")


def _format_config(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def _cmd_inspect(args: argparse.Namespace) -> int:
    fingerprints = load_fingerprints(args.fingerprints, args)  # the integrity check
    commitment = _check_commitment(fingerprints, args)
    sealed = Path(args.fingerprints).expanduser().is_file()
    meta = dict(fingerprints.metadata)
    if isinstance(meta.get("key"), Mapping) and "data" in meta["key"]:
        # with the owner's weights the key regenerates every point: shown no more than they are
        meta["key"] = {**meta["key"], "data": "(hidden)"}
    digest = fingerprints.digest()
    converged = int(fingerprints.converged.sum())
    if args.json:
        # The sha256 catches accidental damage; whoever can edit a plain directory can also
        # rewrite it. Evidence against deliberate edits is the sealed file's authentication
        # tag, or a match with a commitment published earlier.
        print(json.dumps({"path": str(Path(args.fingerprints).absolute()), "sha256": digest,
                          "integrity_checked": True, "sealed": sealed,
                          "authenticated": sealed, "commitment": commitment,
                          "key_source": _describe_key(meta.get("key")),
                          "num_points": len(fingerprints),
                          "num_converged": converged, "metadata": meta},
                         indent=1, sort_keys=True, default=str))
        return 0
    clf = meta.get("classifier", {})
    library = meta.get("library", {})
    rows = [
        ("fingerprint file", str(Path(args.fingerprints).absolute())
         + (" (sealed: AES-256-GCM, authenticated)" if sealed else "")),
        ("content sha256", f"{digest} (integrity check passed: catches damage, not "
                           "deliberate edits" + ("; the seal authenticates the file)"
                                                 if sealed else ")")),
        ("points", f"{len(fingerprints)} ({converged} converged), input shape "
                   f"{fingerprints.input_shape}, {fingerprints.x.dtype}"),
        ("owner", f"parameters sha256 {clf.get('params_sha256', '?')}"),
        ("owner input", f"{clf.get('num_classes', '?')} classes, shape "
                        f"{tuple(clf.get('input_shape', ()))}, {clf.get('dtype', '?')} in "
                        f"{clf.get('bounds', '?')}"),
        ("config", _format_config(meta.get("config", {}))),
        ("key", _describe_key(meta.get("key"))),
        ("candidates", f"{meta.get('num_candidates', '?')} drawn, "
                       f"{meta.get('num_converged', '?')} converged (rate "
                       f"{fingerprints.convergence_rate:.1%})"),
        ("generation", f"loop={meta.get('loop', '?')} compact={meta.get('compact', '?')}, "
                       f"{meta.get('wall_time_s', '?')} s"),
        ("created", str(meta.get("created", "?"))),
        ("library", f"{library.get('name', '?')} {library.get('version', '?')}, jax "
                    f"{library.get('jax', '?')}"),
    ]
    origin = meta.get("origin")
    if isinstance(origin, Mapping):
        if isinstance(origin.get("model"), Mapping):
            rows.append(("owner model", ", ".join(f"{k}={v}"
                                                  for k, v in origin["model"].items())))
        if isinstance(origin.get("data"), Mapping):
            rows.append(("start data", ", ".join(f"{k}={v}" for k, v in origin["data"].items())))
    if meta.get("calibration") is not None:
        from ipguard_jax.calibration import calibration_of

        try:
            calibration = calibration_of(fingerprints)
            rows.append(("null", f"{calibration}; at 1% false positives a copy matches >= "
                                 f"{calibration.threshold(0.01)} of {len(fingerprints)}"))
        except ValueError as e:
            rows.append(("null", f"INVALID calibration: {e}"))
    known = {"format_version", "library", "created", "config", "loop", "compact", "key",
             "classifier", "num_candidates", "num_converged", "convergence_rate", "wall_time_s",
             "origin", "calibration"}
    for key in sorted(set(meta) - known):
        rows.append((key, json.dumps(meta[key], default=str)[:500]))
    if commitment is not None:
        rows.insert(2, ("commitment", f"matches {commitment}"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


def _cmd_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ipguard_jax.evaluation import benchmark

    setting = benchmark.make_setting(args)
    if args.from_zoo and args.zoo is None:
        raise UsageError("--from-zoo needs --zoo DIR")
    if args.plan:
        print(benchmark.format_plan(benchmark.plan(setting, seed=args.seed,
                                                   cache_dir=args.cache_dir, zoo=args.zoo)))
        return 0
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / (benchmark.QUICK_NAME if args.quick else benchmark.FULL_NAME)
    benchmark.run(setting, out=prefix, command=shlex.join([PROG, *argv]), seed=args.seed,
                  cache_dir=args.cache_dir, zoo=args.zoo, from_zoo=args.from_zoo)
    return 0


#: Loggers of the libraries underneath that report a failure (with its traceback) before
#: raising it: orbax's writer threads through absl, asyncio's closed loops. The error itself
#: still reaches the one ``ipguard: error:`` line.
_LIBRARY_LOGGERS = ("absl", "orbax", "asyncio", "jax._src.distributed")


@contextlib.contextmanager
def _quiet_library_logs(quiet: bool):
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    hook, sys.unraisablehook = sys.unraisablehook, _ignore_unraisable
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        sys.unraisablehook = hook


def _ignore_unraisable(unraisable: Any) -> None:
    """Drops errors raised where nobody can catch them (callbacks from tensorstore's threads
    into an event loop orbax already closed after a failed write)."""


def _first_command(argv: Sequence[str]) -> int | None:
    for index, arg in enumerate(argv):
        if not arg.startswith("-"):
            return index
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``ipguard`` command line.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 success (``verify``: not a copy), 1 ``verify``: a copy, 2 an error
        (reported as one line on stderr), 130 when interrupted (Ctrl-C). ``--help`` prints
        the help and returns 0.

    With ``--debug`` an error prints its traceback (and the libraries' logs stay on) instead
    of the one line; the exit status is 2 all the same.

    Example:
        >>> main(["inspect", "owner_fp"])  # doctest: +SKIP
        0
        >>> main(["inspect", "/no/such/fingerprints"])  # "ipguard: error: ..." on stderr
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    index = _first_command(argv)
    debug = "--debug" in argv
    try:
        if index is not None and argv[index] == "demo":  # the demo parses its own options
            from ipguard_jax import demo

            try:
                return demo.main([a for a in argv[index + 1:] if a != "--debug"])
            except SystemExit as e:  # --help, or argparse's one-line error (status 2)
                return e.code if isinstance(e.code, int) else 0
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else 0
        if args.command is None:
            parser.print_help()
            return 0
        debug = args.debug
        commands = {"fingerprint": _cmd_fingerprint, "verify": _cmd_verify,
                    "calibrate": _cmd_calibrate, "inspect": _cmd_inspect}
        with _quiet_library_logs(not debug):
            if args.command == "evaluate":
                return _cmd_evaluate(args, argv)
            return commands[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure is reported as one line with exit status 2
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_error_line(e)}", file=sys.stderr)
        return EXIT_ERROR
