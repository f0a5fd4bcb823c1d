"""Fingerprint files: orbax-checkpoint arrays plus JSON metadata, checksummed, written atomically.

Layout of a fingerprint directory ``path``::

    path/CURRENT                     name of the live version (replaced atomically on overwrite)
    path/<version>/fingerprints.json format, metadata, array specs and the sha256 of the content
    path/<version>/arrays/           the arrays, an orbax PyTree checkpoint

A save builds a complete new version beside the old one and then switches ``CURRENT`` with an
atomic rename, so a reader (or a crash) sees either the old set or the new one, never a mixture.
No pickle is written or read.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ipguard_jax.fingerprints import ARRAY_FIELDS, Fingerprints, content_digest

FORMAT = "ipguard_jax.fingerprints"
FORMAT_VERSION = 1
_CURRENT = "CURRENT"
_MANIFEST = "fingerprints.json"


class FingerprintFileError(ValueError):
    """A fingerprint file is missing a part, corrupt, modified, or of an unknown format."""


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_version(fingerprints: Fingerprints, version_dir: Path) -> None:
    import orbax.checkpoint as ocp

    version_dir.mkdir()
    arrays = fingerprints.arrays()
    ocp.PyTreeCheckpointer().save(version_dir / "arrays", arrays)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": fingerprints.digest(),
        "arrays": {name: {"dtype": a.dtype.str, "shape": list(a.shape)}
                   for name, a in arrays.items()},
        "metadata": fingerprints.metadata,
    }
    _write_text_atomic(version_dir / _MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def save(fingerprints: Fingerprints, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Saves a fingerprint set to the directory ``path``.

    Args:
        fingerprints: the set to save.
        path: a directory (created; its parent must exist).
        overwrite: replace an existing fingerprint directory (atomically: readers see the old
            set until the new one is complete).

    Returns:
        The absolute path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FingerprintFileError: ``path`` exists but is not a fingerprint directory.
    """
    if not isinstance(fingerprints, Fingerprints):
        raise TypeError(f"fingerprints must be Fingerprints, got {type(fingerprints).__name__}")
    try:
        json.dumps(fingerprints.metadata)
    except (TypeError, ValueError) as e:
        raise ValueError(f"fingerprint metadata must be JSON-serialisable: {e}") from None
    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the parent directory of {path} does not exist")
    version = f"v-{uuid.uuid4().hex}"
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if not (path.is_dir() and (path / _CURRENT).is_file()):
            raise FingerprintFileError(
                f"{path} exists and is not a fingerprint directory; refusing to overwrite it"
            )
        old = (path / _CURRENT).read_text(encoding="utf-8").strip()
        try:
            _write_version(fingerprints, path / version)
            _write_text_atomic(path / _CURRENT, version)
        except BaseException:
            shutil.rmtree(path / version, ignore_errors=True)
            raise
        if old and old != version and "/" not in old and old not in (".", ".."):
            shutil.rmtree(path / old, ignore_errors=True)
        return path
    # A new set is built in a hidden sibling and renamed into place once complete.
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        staging.mkdir()
        _write_version(fingerprints, staging / version)
        _write_text_atomic(staging / _CURRENT, version)
        _fsync_dir(staging)
        os.rename(staging, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load(path: str | os.PathLike) -> Fingerprints:
    """Loads a fingerprint set and checks its sha256.

    Args:
        path: a directory written by :func:`save`.

    Returns:
        The :class:`Fingerprints`, bit-identical to the ones saved.

    Raises:
        FileNotFoundError: nothing at ``path``.
        FingerprintFileError: not a fingerprint directory, a part missing or unreadable, a
            newer format version, or content that does not match its sha256 (modified or corrupt).
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no fingerprint file at {path}")
    if not path.is_dir():
        raise FingerprintFileError(f"{path} is a file, not a fingerprint directory")
    try:
        version = (path / _CURRENT).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        raise FingerprintFileError(
            f"{path} is not a fingerprint directory (its {_CURRENT} file is missing or unreadable)"
        ) from None
    version_dir = path / version
    if "/" in version or not version_dir.is_dir():
        raise FingerprintFileError(f"{path}: version {version!r} named by {_CURRENT} is missing")
    try:
        manifest = json.loads((version_dir / _MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FingerprintFileError(f"{path}: {_MANIFEST} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FingerprintFileError(f"{path}: {_MANIFEST} is corrupt ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FingerprintFileError(f"{path}: {_MANIFEST} is not an {FORMAT} manifest")
    file_version = manifest.get("format_version")
    if not isinstance(file_version, int) or file_version > FORMAT_VERSION:
        raise FingerprintFileError(
            f"{path} has format version {file_version!r}; this library reads up to version "
            f"{FORMAT_VERSION}: upgrade ipguard_jax to read it"
        )
    expected = manifest.get("arrays", {})
    if not isinstance(expected, dict) or set(expected) != set(ARRAY_FIELDS):
        raise FingerprintFileError(f"{path}: the manifest lists arrays {sorted(expected)}, "
                                   f"expected {sorted(ARRAY_FIELDS)}")
    if not (version_dir / "arrays").is_dir():
        raise FingerprintFileError(f"{path}: the arrays directory is missing")
    try:
        arrays: dict[str, Any] = ocp.PyTreeCheckpointer().restore(version_dir / "arrays")
        arrays = {name: np.asarray(arrays[name]) for name in ARRAY_FIELDS}
    except Exception as e:  # any failure of the array store means the same to the user
        raise FingerprintFileError(
            f"{path}: the arrays cannot be read, the file is corrupt or incomplete "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from None
    for name, spec in expected.items():
        a = arrays[name]
        if a.dtype.str != spec.get("dtype") or list(a.shape) != spec.get("shape"):
            raise FingerprintFileError(
                f"{path}: array {name!r} has dtype {a.dtype.str} and shape {list(a.shape)}, the "
                f"manifest says {spec.get('dtype')} and {spec.get('shape')}"
            )
    metadata = manifest.get("metadata", {})
    if content_digest(arrays, metadata) != manifest.get("sha256"):
        raise FingerprintFileError(
            f"{path}: the content does not match its sha256: the file was modified or is corrupt"
        )
    return Fingerprints(**arrays, metadata=metadata)
