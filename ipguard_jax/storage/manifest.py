"""The fingerprint manifest: what fingerprint directories and sealed files share.

Both containers of a fingerprint set, the versioned directory
(:mod:`ipguard_jax.storage.fingerprint_files`) and the sealed file
(:mod:`ipguard_jax.storage.sealed`), describe it with the same JSON manifest: the format name
and version, the sha256 of the content, the metadata and a spec (dtype, shape) per array. This
module holds that format and its checks, so that each container builds on it and neither
imports the other's internals: :func:`check_save_args` before a set is written,
:func:`check_manifest` and :func:`spec_nbytes` before anything is allocated on load, and
:func:`build_fingerprints` to check the content digest and build the set.

Example:
    >>> spec_nbytes({"dtype": "<f4", "name": "float32", "shape": [2, 3]})
    24
    >>> check_manifest("fp", {"format": "something else"})
    Traceback (most recent call last):
    ...
    ipguard_jax.storage.fingerprint_files.FingerprintFileError: fp: fingerprints.json is not an ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ipguard_jax.fingerprints import ARRAY_FIELDS, Fingerprints
from ipguard_jax.storage.canonical import canonical_json
from ipguard_jax.storage.digest import content_digest
from ipguard_jax.storage.files import array_nbytes

#: The ``format`` field of a fingerprint manifest.
FORMAT = "ipguard_jax.fingerprints"
#: The newest ``format_version`` of a manifest this library writes and reads.
FORMAT_VERSION = 1
#: The manifest's file name in a fingerprint directory (and its name in messages).
MANIFEST = "fingerprints.json"


class FingerprintFileError(ValueError):
    """A fingerprint file is missing a part, corrupt, modified, or of an unknown format."""

    # where it is public (and was defined before the manifest got a module of its own)
    __module__ = "ipguard_jax.storage.fingerprint_files"


def check_save_args(fingerprints: Any) -> None:
    """Checks what a save is given before anything is written.

    Args:
        fingerprints: the set to save.

    Raises:
        TypeError: ``fingerprints`` is not :class:`~ipguard_jax.Fingerprints`.
        ValueError: its metadata is not JSON-serialisable with string keys.
    """
    if not isinstance(fingerprints, Fingerprints):
        raise TypeError(f"fingerprints must be Fingerprints, got {type(fingerprints).__name__}")
    try:
        check_json_keys(fingerprints.metadata)
        canonical_json(fingerprints.metadata, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"fingerprint metadata must be JSON-serialisable: {e}") from None


def check_json_keys(value: Any) -> None:
    """Checks that every dict key in ``value`` is a string: JSON would turn others into
    strings and loading would not give back the metadata saved.

    Raises:
        TypeError: a key that is not a string.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"key {key!r} is not a string")
            check_json_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_json_keys(item)


def check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    """Checks a manifest's format, version, array specs and metadata, reading nothing else.

    Args:
        path: the fingerprint file, for messages.
        manifest: the decoded JSON manifest.

    Returns:
        The array specs, by array name (every name of
        :data:`~ipguard_jax.fingerprints.ARRAY_FIELDS`).

    Raises:
        FingerprintFileError: not a fingerprint manifest, a newer format version, or
            malformed array specs or metadata.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FingerprintFileError(f"{path}: {MANIFEST} is not an {FORMAT} manifest")
    file_version = manifest.get("format_version")
    if not isinstance(file_version, int) or isinstance(file_version, bool) or file_version < 1:
        raise FingerprintFileError(f"{path}: {MANIFEST} has no valid format_version")
    if file_version > FORMAT_VERSION:
        raise FingerprintFileError(
            f"{path} has format version {file_version!r}; this library reads up to version "
            f"{FORMAT_VERSION}: upgrade ipguard_jax to read it"
        )
    expected = manifest.get("arrays", {})
    if not isinstance(expected, dict) or set(expected) != set(ARRAY_FIELDS):
        listed = sorted(expected) if isinstance(expected, dict) else expected
        raise FingerprintFileError(f"{path}: the manifest lists arrays {listed}, "
                                   f"expected {sorted(ARRAY_FIELDS)}")
    if not all(isinstance(spec, dict) for spec in expected.values()):
        raise FingerprintFileError(f"{path}: the manifest's array specs are not objects")
    for name, spec in expected.items():
        try:
            spec_nbytes(spec)
        except (KeyError, TypeError, ValueError) as e:
            raise FingerprintFileError(
                f"{path}: the manifest's spec of array {name!r} is malformed ({e})") from None
    if not isinstance(manifest.get("metadata", {}), dict):
        raise FingerprintFileError(f"{path}: the manifest's metadata is not an object")
    return expected


def build_fingerprints(path: Path, arrays: dict[str, np.ndarray],
                       manifest: dict[str, Any]) -> Fingerprints:
    """Checks the content digest, then the arrays' values, and builds the set.

    Args:
        path: the fingerprint file, for messages.
        arrays: the arrays read, by name.
        manifest: the checked manifest (see :func:`check_manifest`).

    Returns:
        The :class:`~ipguard_jax.Fingerprints`.

    Raises:
        FingerprintFileError: content that does not match the manifest's sha256, or that is
            not a valid fingerprint set.
    """
    metadata = manifest.get("metadata", {})
    if content_digest(arrays, metadata) != manifest.get("sha256"):
        raise FingerprintFileError(
            f"{path}: the content does not match its sha256: the file was modified or is corrupt"
        )
    try:
        return Fingerprints(**arrays, metadata=metadata)
    except (TypeError, ValueError) as e:  # consistent digest, inconsistent content
        raise FingerprintFileError(f"{path}: the content is not a valid fingerprint set ({e})"
                                   ) from None


def spec_dtype(spec: dict[str, Any]) -> np.dtype:
    """The dtype of the array a manifest spec declares (names such as ``bfloat16`` included)."""
    import jax.numpy as jnp  # dtype names such as bfloat16

    return jnp.dtype(spec.get("name") or spec["dtype"])


def spec_nbytes(spec: dict[str, Any]) -> int:
    """Bytes of the array a manifest spec declares (exact: no overflow on crafted shapes)."""
    return array_nbytes(spec_dtype(spec), spec.get("shape"))
