"""Fingerprint directories: orbax-checkpoint arrays plus JSON metadata, checksummed, versioned.

This is the store behind :func:`ipguard_jax.save` and :func:`ipguard_jax.load` (re-exported by
:mod:`ipguard_jax.io`); a passphrase makes them write and read a sealed file instead
(:mod:`ipguard_jax.storage.sealed`). Layout of a fingerprint directory ``path``::

    path/CURRENT                     name of the live version (replaced atomically on overwrite)
    path/<version>/fingerprints.json format, metadata, array specs and the sha256 of the content
    path/<version>/arrays/           the arrays, an orbax PyTree checkpoint

A save builds a complete new version beside the old one, flushes it to disk and then switches
``CURRENT`` with an atomic rename, so a reader (or a crash, even a ``SIGKILL``) sees either the
old set or the new one, never a mixture. What a killed save leaves behind (a version that
never went live, a hidden ``.<name>.<hex>.partial`` or ``.tmp`` sibling) is removed by the next
save of the same path; each live save holds an ``flock`` on its temporary files, so concurrent
saves never remove each other's. Of two saves that create the same new directory at once, one
wins and the other raises :class:`FileExistsError`. No pickle is written or read.

The sha256 of a directory is an integrity check: it catches a damaged or truncated file, not a
deliberate edit (whoever can edit the file can recompute it). Evidence against edits is a sealed
file's authentication tag, or a commitment published before the dispute
(:func:`ipguard_jax.commit`).

A fingerprint file may come from someone else, so loading bounds what it reads and allocates:
every file of a directory is opened as a regular file only (a symbolic link, FIFO or device
is refused, never read or waited on), ``CURRENT`` and the manifest have size caps, and the
arrays the manifest declares are checked against the array store's metadata and against the
size of its files (at most :data:`ipguard_jax.storage.files.MAX_EXPANSION` times their bytes,
or 64 MiB) before anything is allocated.

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from ipguard_jax import Fingerprints
    >>> fp = Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0], j=[0, 1],
    ...                   loss=[0.0, 0.0], converged=[True, True], steps=[5, 7], source=[0, 1])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save(fp, os.path.join(tmp, "owner_fingerprints"))
    ...     sorted(os.listdir(path))[0], load(path).digest() == fp.digest()
    ('CURRENT', True)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ipguard_jax.fingerprints import ARRAY_FIELDS, Fingerprints
from ipguard_jax.storage import sealed
from ipguard_jax.storage.digest import sha256_regular
from ipguard_jax.storage.files import (UnsafeFileError, check_expansion, check_tree, claimed,
                                       fsync_path, fsync_tree, locked, orbax_array_specs,
                                       read_regular, remove_tree, rename_new, temp_leftovers,
                                       write_atomic)
# The manifest's format and checks, shared with sealed files; its public names stay
# importable from here.
from ipguard_jax.storage.manifest import (FORMAT, FORMAT_VERSION, MANIFEST,  # noqa: F401
                                          FingerprintFileError, build_fingerprints,
                                          check_manifest, check_save_args, spec_dtype,
                                          spec_nbytes)

_CURRENT = "CURRENT"
# Size caps of the small files of a directory: CURRENT holds a version name; a manifest holds
# array specs, sha256s and the metadata (kilobytes in practice).
_MAX_CURRENT_BYTES = 4096
_MAX_MANIFEST_BYTES = 64 << 20


# -- small helpers ------------------------------------------------------------------------------

def _write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see
    :func:`ipguard_jax.storage.files.atomic_path`)."""
    write_atomic(path, text.encode("utf-8"))


def _permission_error(path: Path, error: OSError) -> PermissionError:
    why = "read-only file system" if error.errno == errno.EROFS else "permission denied"
    return PermissionError(
        error.errno, f"cannot write the fingerprint file {path}: {why} (is {path.parent} "
        f"writable?)"
    )


# -- fingerprint directories --------------------------------------------------------------------

def _orbax_save(directory: Path, arrays: dict[str, np.ndarray], target: Path) -> None:
    """orbax's save, with a full disk (a ``ValueError`` from tensorstore, ``RESOURCE_EXHAUSTED``
    and a page of paths) reported as the ``OSError`` it is, naming ``target``."""
    import orbax.checkpoint as ocp

    try:
        # Closed on the way out, failure included: a save that failed part-way (a full disk)
        # otherwise leaves the checkpointer's writers running while the caller removes the
        # staging directory, and their event loop dies with a traceback at exit.
        with ocp.PyTreeCheckpointer() as checkpointer:
            checkpointer.save(directory, arrays)
    except ValueError as e:
        text = str(e)
        for code in (errno.ENOSPC, errno.EDQUOT):
            if os.strerror(code) in text:
                raise OSError(code, os.strerror(code), str(target)) from None
        raise


def _write_version(fingerprints: Fingerprints, version_dir: Path, target: Path) -> None:
    arrays = fingerprints.arrays()
    if len(fingerprints):
        _orbax_save(version_dir / "arrays", arrays, target)
    else:  # orbax stores no zero-size arrays; the manifest's specs say all there is
        (version_dir / "arrays").mkdir()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": fingerprints.digest(),
        "arrays": {name: {"dtype": a.dtype.str, "name": a.dtype.name, "shape": list(a.shape)}
                   for name, a in arrays.items()},
        # Every file of the array store, checked before the store reads any of them.
        "files": {p.relative_to(version_dir).as_posix(): sha256_regular(p)
                  for p in sorted((version_dir / "arrays").rglob("*")) if p.is_file()},
        "metadata": fingerprints.metadata,
    }
    _write_text_atomic(version_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    fsync_tree(version_dir)


def _check_files(path: Path, version_dir: Path, files: Any) -> None:
    """Checks the array store's files against the manifest's sha256s (if it lists them).

    Each is opened as a regular file only (see :func:`ipguard_jax.storage.files.open_regular`):
    a symbolic link, FIFO or device in its place is refused, not followed, read or waited on.
    """
    if files is None:  # written before the manifest listed its files
        return
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise FingerprintFileError(f"{path}: the manifest's file list is malformed")
    for name, expected in files.items():
        parts = Path(name).parts
        if not parts or parts[0] != "arrays" or ".." in parts or Path(name).is_absolute():
            raise FingerprintFileError(f"{path}: the manifest lists an odd file {name!r}")
        try:
            actual = sha256_regular(version_dir / name)
        except FileNotFoundError:
            raise FingerprintFileError(f"{path}: part {name} is missing") from None
        except UnsafeFileError:
            raise FingerprintFileError(
                f"{path}: part {name} is not a regular file (a link, FIFO or device); refusing "
                f"to read it") from None
        except OSError as e:
            raise FingerprintFileError(f"{path}: part {name} cannot be read ({e.strerror})"
                                       ) from None
        if actual != expected:
            raise FingerprintFileError(
                f"{path}: part {name} does not match its sha256: the file was modified or is "
                f"corrupt"
            )


def _save_directory(fingerprints: Fingerprints, path: Path, overwrite: bool) -> None:
    version = f"v-{uuid.uuid4().hex}"
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if path.is_file() and sealed.is_sealed_file(path):
            raise FingerprintFileError(
                f"{path} is a sealed fingerprint file; a fingerprint directory cannot replace "
                f"it atomically: pass passphrase=... to save a sealed file, or remove it first"
            )
        if not (path.is_dir() and (path / _CURRENT).is_file()):
            raise FingerprintFileError(
                f"{path} exists and is not a fingerprint directory; refusing to overwrite it"
            )

        def abandoned_versions():  # never the live version, nor any if that is unreadable
            current = _current_version_or_none(path)
            return [] if current is None else [
                p for p in path.glob("v-*") if p.name != current and p.is_dir()]

        try:
            with claimed(path / version, Path.mkdir, abandoned_versions):
                _write_version(fingerprints, path / version, path)
                # Readers hold a shared lock while they read a version: the old one is deleted
                # only once none is reading it. Concurrent writers switch one at a time.
                with locked(path, exclusive=True):
                    old = _current_version(path)
                    _write_text_atomic(path / _CURRENT, version)  # the switch: atomic
                    fsync_path(path)
                    if old != version and _is_version_name(old):
                        shutil.rmtree(path / old, ignore_errors=True)
                    # CURRENT is only written under this lock: any other temporary copy of
                    # it is left by a killed save.
                    for leftover in temp_leftovers(path / _CURRENT, ".tmp")():
                        leftover.unlink(missing_ok=True)
        except BaseException:
            if _current_version_or_none(path) != version:
                remove_tree(path / version)
            raise
        return
    # A new set is built in a hidden sibling and renamed into place once complete.
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with claimed(staging, Path.mkdir, temp_leftovers(path, ".partial")):
            (staging / version).mkdir()
            _write_version(fingerprints, staging / version, path)
            _write_text_atomic(staging / _CURRENT, version)
            fsync_path(staging)
            rename_new(staging, path, "fingerprint directory")
            fsync_path(path.parent)
    finally:
        remove_tree(staging)


def _current_version_or_none(path: Path) -> str | None:
    try:
        return _current_version(path)
    except FingerprintFileError:
        return None


def _is_version_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def save(fingerprints: Fingerprints, path: str | os.PathLike, overwrite: bool = False, *,
         passphrase: str | bytes | None = None) -> Path:
    """Saves a fingerprint set to the directory ``path``, or to a sealed file.

    Without a passphrase ``path`` becomes a fingerprint directory (orbax arrays and a JSON
    manifest with a sha256, see the module docs). With one it becomes a single sealed file:
    encrypted and authenticated with AES-256-GCM under a key derived from the passphrase by
    scrypt, with a random salt and nonce, so it reveals nothing about the points and any change
    to it is detected on :func:`load`. Either way the write is atomic: after a crash at any
    point, ``path`` holds the complete old set or the complete new one.

    Args:
        fingerprints: the set to save.
        path: a directory (or, with ``passphrase``, a file) to create; its parent must exist.
        overwrite: replace an existing fingerprint directory or sealed file of the same kind
            (atomically: readers see the old set until the new one is complete).
        passphrase: seal the file with this passphrase (str or bytes, not empty). Needs the
            ``cryptography`` package (``pip install ipguard-jax[seal]``).

    Returns:
        The absolute path written.

    Raises:
        TypeError: ``fingerprints`` is not :class:`~ipguard_jax.Fingerprints`, or a passphrase
            that is neither str nor bytes.
        ValueError: metadata that is not JSON-serialisable (with string keys), or an empty
            passphrase.
        FileNotFoundError: the parent directory of ``path`` does not exist.
        FileExistsError: ``path`` exists and ``overwrite`` is False, or another process created
            it while this save was writing a new directory there.
        FingerprintFileError: ``path`` exists but is not a fingerprint file of the kind saved.
        PermissionError: the location is not writable.
        ImportError: a passphrase without the ``cryptography`` package.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> import ipguard_jax as ipg
        >>> fp = ipg.Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
        ...                       loss=[0.0], converged=[True], steps=[3], source=[0])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = ipg.save(fp, os.path.join(tmp, "owner_fingerprints"))
        ...     try:
        ...         ipg.save(fp, path)
        ...     except FileExistsError:
        ...         path = ipg.save(fp[:0], path, overwrite=True)  # atomic replacement
        ...     len(ipg.load(path))
        0

        A sealed file instead: ``ipg.save(fp, "owner.sealed", passphrase="...")``.
    """
    check_save_args(fingerprints)
    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the parent directory of {path} does not exist")
    try:
        if passphrase is None:
            _save_directory(fingerprints, path, overwrite)
        else:
            sealed.save_sealed(fingerprints, path, overwrite, passphrase)
    except OSError as e:
        if isinstance(e, PermissionError) or e.errno == errno.EROFS:
            raise _permission_error(path, e) from None
        raise
    return path


def _current_version(path: Path) -> str:
    try:
        data = read_regular(path / _CURRENT, max_bytes=_MAX_CURRENT_BYTES)
        return data.decode("utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError, UnsafeFileError) as e:
        why = f": {e}" if isinstance(e, UnsafeFileError) else ""
        raise FingerprintFileError(
            f"{path} is not a fingerprint directory (its {_CURRENT} file is missing or "
            f"unreadable{why})"
        ) from None


def _empty_set(specs: dict[str, Any]) -> bool:
    shape = specs["labels"].get("shape")
    return isinstance(shape, list) and shape == [0]


def _read_manifest(path: Path, version_dir: Path) -> Any:
    try:
        return json.loads(read_regular(version_dir / MANIFEST, max_bytes=_MAX_MANIFEST_BYTES
                                       ).decode("utf-8"))
    except FileNotFoundError:
        raise FingerprintFileError(f"{path}: {MANIFEST} is missing") from None
    except UnsafeFileError as e:
        raise FingerprintFileError(f"{path}: refusing to read {MANIFEST}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FingerprintFileError(f"{path}: {MANIFEST} is corrupt ({e})") from None


@contextlib.contextmanager
def _array_store_errors(path: Path) -> Iterator[None]:
    """Any failure of the array store means the same to the user: a corrupt file."""
    try:
        yield
    except Exception as e:
        raise FingerprintFileError(
            f"{path}: the arrays cannot be read, the file is corrupt or incomplete "
            f"({type(e).__name__}: {str(e)[:200]})"
        ) from None


def _check_arrays(path: Path, expected: dict[str, Any],
                  found: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
    """Checks the dtype and shape of each array (stored or restored) against the manifest."""
    for name, spec in expected.items():
        if name not in found:
            raise FingerprintFileError(f"{path}: the array store lacks array {name!r}")
        dtype, shape = found[name]
        if np.dtype(dtype).str != spec.get("dtype") or list(shape) != spec.get("shape"):
            raise FingerprintFileError(
                f"{path}: array {name!r} has dtype {np.dtype(dtype).str} and shape "
                f"{list(shape)}, the manifest says {spec.get('dtype')} and {spec.get('shape')}"
            )


def _load_version(path: Path, version: str) -> Fingerprints:
    import orbax.checkpoint as ocp

    version_dir = path / version
    if not _is_version_name(version) or not version_dir.is_dir():
        raise FingerprintFileError(f"{path}: version {version!r} named by {_CURRENT} is missing")
    manifest = _read_manifest(path, version_dir)
    expected = check_manifest(path, manifest)
    store = version_dir / "arrays"
    if not store.is_dir():
        raise FingerprintFileError(f"{path}: the arrays directory is missing")
    try:
        stored_bytes = check_tree(store)  # no link, FIFO or device for orbax to open
    except UnsafeFileError as e:
        raise FingerprintFileError(f"{path}: refusing to read the arrays: {e}") from None
    _check_files(path, version_dir, manifest.get("files"))
    try:  # before anything is allocated
        check_expansion(sum(spec_nbytes(spec) for spec in expected.values()), stored_bytes,
                        "the arrays its manifest declares")
    except UnsafeFileError as e:
        raise FingerprintFileError(f"{path}: {e}") from None
    if _empty_set(expected):
        arrays = {name: np.zeros(spec["shape"], spec_dtype(spec))
                  for name, spec in expected.items()}
    else:
        with _array_store_errors(path):
            stored = orbax_array_specs(store)
        _check_arrays(path, expected, stored)  # the store allocates what it declares
        with _array_store_errors(path):
            with ocp.PyTreeCheckpointer() as checkpointer:
                restored = checkpointer.restore(store)
            arrays = {name: np.asarray(restored[name]) for name in ARRAY_FIELDS}
    _check_arrays(path, expected, {name: (a.dtype, a.shape) for name, a in arrays.items()})
    return build_fingerprints(path, arrays, manifest)


def load(path: str | os.PathLike, *, passphrase: str | bytes | None = None) -> Fingerprints:
    """Loads a fingerprint set and checks its sha256 (and, if sealed, its authentication tag).

    The sha256 is an integrity check (damage, not deliberate edits: see the module docs).

    Args:
        path: a directory written by :func:`save`, or a sealed file.
        passphrase: the passphrase of a sealed file; must be ``None`` for a directory.

    Returns:
        The :class:`Fingerprints`, bit-identical to the ones saved.

    Raises:
        FileNotFoundError: nothing at ``path``.
        FingerprintFileError: not a fingerprint file, a part missing or unreadable or not a
            regular file (a symbolic link, FIFO or device), a manifest that declares arrays its
            files cannot hold, a newer format version, content that does not match its sha256
            or authentication tag (modified or corrupt), a wrong passphrase, a sealed file
            without a passphrase or a passphrase for an unsealed directory.
        ImportError: a sealed file without the ``cryptography`` package.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> import ipguard_jax as ipg
        >>> fp = ipg.Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
        ...                       loss=[0.0], converged=[True], steps=[3], source=[0])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     loaded = ipg.load(ipg.save(fp, os.path.join(tmp, "fingerprints")))
        >>> loaded.digest() == fp.digest(), loaded.labels.tolist()
        (True, [1])

        A sealed file needs its passphrase: ``ipg.load("owner.sealed", passphrase="...")``.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no fingerprint file at {path}")
    if not path.is_dir():
        return sealed.load_sealed(path, passphrase)
    if passphrase is not None:
        raise FingerprintFileError(
            f"{path} is an unsealed fingerprint directory: load it without a passphrase"
        )
    # The shared lock keeps a concurrent save from deleting the version being read; where
    # there is no lock, a version deleted under us is read again from the new CURRENT.
    for attempt in range(3):
        with locked(path, exclusive=False):
            version = _current_version(path)
            try:
                return _load_version(path, version)
            except FingerprintFileError:
                if attempt == 2 or _current_version(path) == version:
                    raise
    raise AssertionError("unreachable")

