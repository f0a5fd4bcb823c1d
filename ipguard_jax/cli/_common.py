"""What the ``ipguard`` commands share: exit codes, option types and groups, error lines, the
passphrase, commitment and output checks, and the command line's view of the source loaders.

The module is private to :mod:`ipguard_jax.cli`; its public names are what the command
modules use from it.

The loaders themselves live in :mod:`ipguard_jax.adapters.sources`; :func:`load_model_source`
and :func:`load_data_source` only turn the parsed options into its keyword arguments and its
:class:`~ipguard_jax.adapters.sources.SourceError` into :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import ipguard_jax as ipg
from ipguard_jax import data
from ipguard_jax.adapters import sources
from ipguard_jax.storage.sealed import is_sealed_file

PROG = "ipguard"
#: ``verify``: the suspect is not judged a copy.
EXIT_NOT_COPY = 0
#: ``verify``: the suspect is judged a copy (pirated).
EXIT_COPY = 1
#: any command: bad arguments, missing or corrupt files, unreachable endpoints...
EXIT_ERROR = 2


class UsageError(Exception):
    """A mistake in a command line or in the files it names; reported as one line, exit 2."""

    __module__ = "ipguard_jax.cli"  # where it is public (and was defined before the split)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`UsageError` instead of exiting."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- option types -------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    """An option type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An option type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seed_int(text: str) -> int:
    """An option type: a 64-bit seed, a whole number in ``[0, 2**64)``."""
    value = non_negative_int(text)
    if value >= 2 ** 64:
        raise argparse.ArgumentTypeError(f"must be < 2**64 (a 64-bit seed), got {text}")
    return value


def finite_float(text: str) -> float:
    """An option type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def closed_rate(text: str) -> float:
    """An option type: a rate in ``[0, 1]``."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a rate in [0, 1], got {text}")
    return value


def open_rate(text: str) -> float:
    """An option type: a rate strictly between 0 and 1."""
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a rate strictly between 0 and 1, got {text}")
    return value


def unit_interval(text: str) -> float:
    """An option type: a number in ``[0, 1)``."""
    value = finite_float(text)
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


# --- option groups ------------------------------------------------------------------------------

def help_text(description: str, examples: Sequence[str]) -> dict[str, Any]:
    """The ``description``, ``epilog`` (the examples) and formatter of a parser, as
    keyword arguments of ``add_parser``; ``description`` is dedented."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return {"description": textwrap.dedent(description).strip(), "epilog": epilog,
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_common(parser: argparse.ArgumentParser) -> None:
    """Adds the options every command takes (``--debug``) to a command's parser."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")


def add_model_options(parser: argparse.ArgumentParser, role: str) -> None:
    """Adds the options of a PyTorch or Keras model file (``--arch``, ``--input-shape``,
    ``--bounds``, ``--mean``, ``--std``) for the model in the ``role`` named."""
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


def add_data_limits(parser: argparse.ArgumentParser) -> None:
    """Adds ``--max-input-bytes`` and ``--max-image-pixels`` (see :func:`data_limits`)."""
    group = parser.add_argument_group(
        "input limits (a small hostile file must not exhaust memory or disk; raise them for "
        "larger data you trust)")
    group.add_argument("--max-input-bytes", type=positive_int,
                       default=data.DEFAULT_MAX_ARCHIVE_BYTES, metavar="N",
                       help="most bytes an archive extracts to, or an .npz array unpacks to "
                            "(default %(default)s)")
    group.add_argument("--max-image-pixels", type=positive_int,
                       default=data.DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                       help="most pixels of one image (default %(default)s)")


def add_passphrase_options(parser: argparse.ArgumentParser, action: str) -> None:
    """Adds ``--passphrase-env`` and ``--passphrase-file`` for a sealed file; ``action`` says
    what the passphrase is for."""
    group = parser.add_argument_group(
        f"sealed fingerprint files (encrypted; {action}; needs the cryptography package)")
    group.add_argument("--passphrase-env", metavar="VAR",
                       help="read the passphrase from this environment variable")
    group.add_argument("--passphrase-file", metavar="FILE",
                       help="read the passphrase from the first line of this file")


def add_commitment_options(parser: argparse.ArgumentParser) -> None:
    """Adds ``--commitment`` and ``--nonce-env`` (see :func:`check_commitment`)."""
    group = parser.add_argument_group(
        "commitment (check FINGERPRINTS against a commitment published before any dispute: "
        "ipguard_jax.commit)")
    group.add_argument("--commitment", metavar="FILE",
                       help="file whose first line is the published commitment (64 hex "
                            "digits); a set that does not match it is an error")
    group.add_argument("--nonce-env", metavar="VAR",
                       help="environment variable holding the commitment's secret nonce (hex); "
                            "omit for an unsalted commitment")


# --- errors and warnings ------------------------------------------------------------------------

def error_line(error: BaseException) -> str:
    """The one line an error is reported as after ``ipguard: error:`` (its type named only
    for unexpected errors)."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    if not isinstance(error, (UsageError, OSError, ValueError, TypeError, RuntimeError,
                              ImportError)):
        text = f"{type(error).__name__}: {text}"
    return " ".join(text.split())


def print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Prints each distinct warning caught (deprecations left out) as one
    ``ipguard: warning:`` line on stderr."""
    seen = set()
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
            continue
        text = " ".join(str(w.message).split())
        if text not in seen:
            seen.add(text)
            print(f"{PROG}: warning: {text}", file=sys.stderr)


# --- models and data (ipguard_jax.adapters.sources, from the parsed options) --------------------

@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """Re-raises the loaders' :class:`~ipguard_jax.adapters.sources.SourceError` as a
    :class:`UsageError` with the same message."""
    try:
        yield
    except sources.SourceError as e:
        raise UsageError(str(e)) from e


def model_kind(source: str) -> str:
    """``"url"``, ``"bundle"``, ``"keras"`` or ``"torch"``; raises UsageError for the rest."""
    with _usage_errors():
        return sources.model_kind(source)


def load_model_source(source: str, args: argparse.Namespace, *,
                      input_shape: tuple[int, ...] | None = None, allow_url: bool = False):
    """Opens a model given on the command line as a classifier (or, for a URL, a suspect).

    The command line's view of :func:`ipguard_jax.adapters.sources.load_model`, which does
    the work.

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
        >>> from ipguard_jax.cli import build_parser
        >>> args = build_parser().parse_args(["verify", "fp", "owner_model"])
        >>> clf, about = load_model_source("owner_model", args)  # doctest: +SKIP
    """
    endpoint: dict[str, Any] = {}
    if allow_url and source.startswith(sources.URL_PREFIXES):
        endpoint = {"batch_size": args.batch_size, "timeout": args.timeout,
                    "max_retries": args.retries, "query_budget": args.query_budget,
                    "log_path": args.query_log, "resume_path": args.resume}
    spec = {name: getattr(args, name, None)
            for name in ("arch", "input_shape", "bounds", "mean", "std")}
    with _usage_errors():
        return sources.load_model(source, **spec, default_input_shape=input_shape,
                                  allow_url=allow_url, **endpoint)


def load_data_source(source: str | None, split: str | None = None, channels: int | None = None,
                     option: str = "--data", *, max_bytes: int | None = None,
                     max_pixels: int | None = None):
    """Loads start images given on the command line.

    The command line's view of :func:`ipguard_jax.adapters.sources.load_data`, which does
    the work.

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
    with _usage_errors():
        return sources.load_data(source, split=split, channels=channels,
                                 max_input_bytes=max_bytes, max_image_pixels=max_pixels,
                                 option=option)


def data_limits(args: argparse.Namespace) -> dict[str, int]:
    """``--max-input-bytes`` and ``--max-image-pixels`` as keyword arguments of
    :func:`load_data_source`."""
    return {"max_bytes": args.max_input_bytes, "max_pixels": args.max_image_pixels}


# --- fingerprint files: passphrases, commitments, outputs ---------------------------------------

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


def check_commitment(fingerprints, args: argparse.Namespace) -> str | None:
    """Checks ``--commitment``/``--nonce-env``; returns the commitment file, or ``None``."""
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
        >>> from ipguard_jax.cli import build_parser
        >>> args = build_parser().parse_args(["inspect", "owner_fp"])
        >>> fp = load_fingerprints("owner_fp", args)  # doctest: +SKIP
    """
    path = Path(source).expanduser()
    passphrase = _passphrase(args)
    if path.is_file() and is_sealed_file(path) and passphrase is None:
        raise UsageError(f"{source} is a sealed fingerprint file: give its passphrase with "
                         "--passphrase-env VAR or --passphrase-file FILE")
    if path.is_dir() and (path / "model.json").is_file():
        raise UsageError(f"{source} is a model file, not a fingerprint file")
    if path.is_dir() and passphrase is not None:
        raise UsageError(f"{source} is not sealed: drop --passphrase-env/--passphrase-file")
    return ipg.load(path, passphrase=passphrase)


def _check_out(out: Path, overwrite: bool, sealed: bool) -> None:
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise UsageError(f"{out} exists; pass --overwrite to replace it")
        if sealed and not (out.is_file() and is_sealed_file(out)):
            raise UsageError(f"{out} exists and is not a sealed fingerprint file; refusing to "
                             "overwrite it")
        if not sealed and not (out.is_dir() and (out / "CURRENT").is_file()):
            raise UsageError(f"{out} exists and is not a fingerprint directory; refusing to "
                             "overwrite it")
    if not out.absolute().parent.is_dir():
        raise UsageError(f"the directory {out.absolute().parent} does not exist")


def checked_output(args: argparse.Namespace) -> tuple[Path, str | None]:
    """``--out`` and the passphrase to seal it with, checked before any work is done."""
    out = Path(args.out).expanduser()
    passphrase = _passphrase(args)
    _check_out(out, args.overwrite, passphrase is not None)
    if passphrase is not None and importlib.util.find_spec("cryptography") is None:
        raise UsageError("sealed fingerprint files need the cryptography package: pip install "
                         "'ipguard-jax[seal]'")
    return out, passphrase


_KEY_SOURCES = {
    "os": "drawn from the OS (secret: nobody can regenerate the set)",
    "explicit": "given explicitly (anyone who knows it and holds the weights can regenerate "
                "the set)",
    "checkpoint": "restored from a checkpoint",
}


def describe_key(record: Any) -> str:
    """The key's source in words, for ``fingerprint`` and ``inspect`` (never its value)."""
    if not isinstance(record, Mapping):
        return "not recorded (a set written before keys were recorded)"
    source = record.get("source")
    return _KEY_SOURCES.get(source, f"source {source!r}" if source else "source not recorded")


# --- the libraries' own logs --------------------------------------------------------------------

#: Loggers of the libraries underneath that report a failure (with its traceback) before
#: raising it: orbax's writer threads through absl, asyncio's closed loops. The error itself
#: still reaches the one ``ipguard: error:`` line.
_LIBRARY_LOGGERS = ("absl", "orbax", "asyncio", "jax._src.distributed")


@contextlib.contextmanager
def quiet_library_logs(quiet: bool):
    """Silences, while active and if ``quiet``, the logs of the libraries underneath and the
    errors raised where nobody can catch them, so that a failure is the one error line."""
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
