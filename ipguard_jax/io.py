"""Fingerprint files: orbax-checkpoint arrays plus JSON metadata, checksummed, written atomically.

Layout of a fingerprint directory ``path``::

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
size of its files (at most :data:`ipguard_jax._fileutil.MAX_EXPANSION` times their bytes, or
64 MiB) before anything is allocated.

Sealed files (``save(..., passphrase=...)``) are single files, encrypted and authenticated, for
fingerprints kept on shared storage or sent to a court or an escrow agent. Layout::

    b"IPGJSEAL"                      magic, 8 bytes
    u32be(len(header)) || header     canonical JSON: format, format_version, kdf ("scrypt" with
                                     n, r, p and a random 16-byte salt), cipher ("AES-256-GCM"),
                                     a random 12-byte nonce, and a passphrase check value
    ciphertext || tag                AES-256-GCM of the payload; the magic, length and header
                                     are its associated data, so they cannot be changed either

scrypt derives 64 bytes from the passphrase (UTF-8, NFC) and the salt: the first 32 are the
AES key, the last 32 key an HMAC-SHA256 of a fixed label, the check value, which tells a wrong
passphrase from a modified file. The payload is ``u32be(len(manifest)) || manifest || arrays``:
the manifest is JSON as in a directory (format, sha256, metadata) with each array's dtype,
shape and byte offset; the arrays follow as little-endian C-order bytes. A sealed file is
written to a temporary file and renamed into place. The cryptography comes from the
``cryptography`` package (``pip install ipguard-jax[seal]``).

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import ipguard_jax as ipg
    >>> fp = ipg.Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0],
    ...                       j=[0, 1], loss=[0.0, 0.0], converged=[True, True], steps=[5, 7],
    ...                       source=[0, 1])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = ipg.save(fp, os.path.join(tmp, "owner_fingerprints"))
    ...     sorted(os.listdir(path))[0], ipg.load(path).digest() == fp.digest()
    ('CURRENT', True)
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import hmac
import json
import os
import secrets
import shutil
import struct
import unicodedata
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ipguard_jax._fileutil import (UnsafeFileError, array_nbytes, check_expansion, check_tree,
                                   open_regular, orbax_array_specs, read_regular, rename_new,
                                   sha256_regular)
from ipguard_jax.fingerprints import ARRAY_FIELDS, Fingerprints, content_digest

FORMAT = "ipguard_jax.fingerprints"
FORMAT_VERSION = 1
_CURRENT = "CURRENT"
_MANIFEST = "fingerprints.json"
# Size caps of the small files of a directory: CURRENT holds a version name; a manifest holds
# array specs, sha256s and the metadata (kilobytes in practice).
_MAX_CURRENT_BYTES = 4096
_MAX_MANIFEST_BYTES = 64 << 20

#: First bytes of a sealed fingerprint file.
SEALED_MAGIC = b"IPGJSEAL"
SEALED_FORMAT = "ipguard_jax.sealed-fingerprints"
SEALED_FORMAT_VERSION = 1
#: scrypt cost of new sealed files: n = 2**17, r = 8, p = 1 (128 MiB; ~0.7 s on one core).
SCRYPT_N = 2 ** 17
SCRYPT_R = 8
SCRYPT_P = 1
# What a sealed file may ask of the KDF before it is authenticated (bounds the memory and time
# a crafted header can make load spend): 128 * n * r bytes <= 1 GiB.
_SCRYPT_MAX_MEMORY = 2 ** 30
_CHECK_LABEL = b"ipguard_jax/sealed/v1 passphrase check"
_SEAL_HINT = "sealed fingerprint files need the cryptography package: pip install ipguard-jax[seal]"


class FingerprintFileError(ValueError):
    """A fingerprint file is missing a part, corrupt, modified, or of an unknown format."""


# -- small file helpers -------------------------------------------------------------------------

def _write_bytes_atomic(path: Path, data: bytes, *, claim: bool = False) -> None:
    """Writes ``data`` to a temporary sibling of ``path``, flushes it and renames it into place.

    With ``claim`` the temporary file is made by :func:`_claimed`, which first removes the
    temporary files of earlier writes of ``path`` that were killed part-way. Only for paths
    whose parent no caller holds a lock on (not for ``CURRENT`` inside a directory).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with contextlib.ExitStack() as stack:
        if claim:
            stack.enter_context(_claimed(tmp, lambda item: item.touch(exist_ok=False),
                                         _leftovers(path, ".tmp")))
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _leftovers(path: Path, suffix: str) -> Callable[[], Iterable[Path]]:
    """The temporary siblings ``.<name>.<hex><suffix>`` that writes of ``path`` make."""
    pattern = glob.escape(f".{path.name}.") + "*" + suffix
    return lambda: path.parent.glob(pattern)


@contextlib.contextmanager
def _claimed(item: Path, make: Callable[[Path], None],
             leftovers: Callable[[], Iterable[Path]]) -> Iterator[None]:
    """Makes the temporary file or directory ``item`` and holds a lock on it until the end.

    A save killed part-way (``SIGKILL``, power loss) leaves its temporary items behind. Under an
    exclusive lock on ``item``'s parent this first removes those of ``leftovers()`` that no
    live save holds, then makes ``item`` with ``make(item)`` and locks it, so a concurrent save
    never takes a live item for a leftover. Where ``flock`` is missing (Windows, some network
    mounts) nothing is removed: a live item cannot be told from a leftover there.
    """
    with contextlib.ExitStack() as stack:
        with _locked(item.parent, exclusive=True):
            for entry in leftovers():
                if entry != item:
                    _remove_if_abandoned(entry)
            make(item)
            try:
                fd = os.open(item, os.O_RDONLY)
            except OSError:  # cannot be locked: it is only not protected from cleanup
                fd = None
            if fd is not None:
                stack.callback(os.close, fd)
                _flock(fd, nonblocking=False)
        yield


def _flock(fd: int, *, nonblocking: bool) -> bool:
    """An exclusive ``flock`` on ``fd``; whether it was taken (False where there is none)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if nonblocking else 0))
    except OSError:  # held by a live save (EWOULDBLOCK), or a file system without flock
        return False
    return True


def _remove_if_abandoned(entry: Path) -> None:
    """Removes the temporary ``entry`` if no live save holds its lock (see :func:`_claimed`)."""
    try:
        fd = os.open(entry, os.O_RDONLY)
    except OSError:  # gone already, or not ours to read: leave it
        return
    try:
        if _flock(fd, nonblocking=True):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    _write_bytes_atomic(path, text.encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flushes every file and directory under ``root`` (so a rename after it is durable)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _is_sealed_file(path: Path) -> bool:
    try:
        with os.fdopen(open_regular(path, follow_symlinks=True), "rb") as f:
            return f.read(len(SEALED_MAGIC)) == SEALED_MAGIC
    except (OSError, UnsafeFileError):  # a FIFO or device is no sealed file (and is not read)
        return False


def _permission_error(path: Path, error: OSError) -> PermissionError:
    why = "read-only file system" if error.errno == errno.EROFS else "permission denied"
    return PermissionError(
        error.errno, f"cannot write the fingerprint file {path}: {why} (is {path.parent} "
        f"writable?)"
    )


def _check_save_args(fingerprints: Any) -> None:
    if not isinstance(fingerprints, Fingerprints):
        raise TypeError(f"fingerprints must be Fingerprints, got {type(fingerprints).__name__}")
    try:
        _check_json_keys(fingerprints.metadata)
        json.dumps(fingerprints.metadata, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"fingerprint metadata must be JSON-serialisable: {e}") from None


def _check_json_keys(value: Any) -> None:
    """Dict keys must be strings: JSON would turn others into strings and loading would not
    give back the metadata saved."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"key {key!r} is not a string")
            _check_json_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_json_keys(item)


# -- fingerprint directories --------------------------------------------------------------------

def _orbax_save(directory: Path, arrays: dict[str, np.ndarray], target: Path) -> None:
    """orbax's save, with a full disk (a ``ValueError`` from tensorstore, ``RESOURCE_EXHAUSTED``
    and a page of paths) reported as the ``OSError`` it is, naming ``target``."""
    import orbax.checkpoint as ocp

    try:
        ocp.PyTreeCheckpointer().save(directory, arrays)
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
    _write_text_atomic(version_dir / _MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    _fsync_tree(version_dir)


def _check_files(path: Path, version_dir: Path, files: Any) -> None:
    """Checks the array store's files against the manifest's sha256s (if it lists them).

    Each is opened as a regular file only (see :func:`ipguard_jax._fileutil.open_regular`): a
    symbolic link, FIFO or device in its place is refused, not followed, read or waited on.
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
        if path.is_file() and _is_sealed_file(path):
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
            with _claimed(path / version, Path.mkdir, abandoned_versions):
                _write_version(fingerprints, path / version, path)
                # Readers hold a shared lock while they read a version: the old one is deleted
                # only once none is reading it. Concurrent writers switch one at a time.
                with _locked(path, exclusive=True):
                    old = _current_version(path)
                    _write_text_atomic(path / _CURRENT, version)  # the switch: atomic
                    _fsync_dir(path)
                    if old != version and _is_version_name(old):
                        shutil.rmtree(path / old, ignore_errors=True)
                    # CURRENT is only written under this lock: any other temporary copy of
                    # it is left by a killed save.
                    for leftover in _leftovers(path / _CURRENT, ".tmp")():
                        leftover.unlink(missing_ok=True)
        except BaseException:
            if _current_version_or_none(path) != version:
                shutil.rmtree(path / version, ignore_errors=True)
            raise
        return
    # A new set is built in a hidden sibling and renamed into place once complete.
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with _claimed(staging, Path.mkdir, _leftovers(path, ".partial")):
            (staging / version).mkdir()
            _write_version(fingerprints, staging / version, path)
            _write_text_atomic(staging / _CURRENT, version)
            _fsync_dir(staging)
            rename_new(staging, path, "fingerprint directory")
            _fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock on the directory ``path`` (``flock``; a no-op where there is none)."""
    try:
        import fcntl
    except ImportError:  # Windows: readers fall back on retrying
        yield
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a directory we may enter but not list: go on unlocked
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # a file system without flock (some network mounts)
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


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
    _check_save_args(fingerprints)
    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the parent directory of {path} does not exist")
    try:
        if passphrase is None:
            _save_directory(fingerprints, path, overwrite)
        else:
            _save_sealed(fingerprints, path, overwrite, passphrase)
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


def _check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FingerprintFileError(f"{path}: {_MANIFEST} is not an {FORMAT} manifest")
    file_version = manifest.get("format_version")
    if not isinstance(file_version, int) or isinstance(file_version, bool) or file_version < 1:
        raise FingerprintFileError(f"{path}: {_MANIFEST} has no valid format_version")
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
            _spec_nbytes(spec)
        except (KeyError, TypeError, ValueError) as e:
            raise FingerprintFileError(
                f"{path}: the manifest's spec of array {name!r} is malformed ({e})") from None
    if not isinstance(manifest.get("metadata", {}), dict):
        raise FingerprintFileError(f"{path}: the manifest's metadata is not an object")
    return expected


def _build(path: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> Fingerprints:
    """Checks the content digest, then the arrays' values, and builds the set."""
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


def _empty_set(specs: dict[str, Any]) -> bool:
    shape = specs["labels"].get("shape")
    return isinstance(shape, list) and shape == [0]


def _spec_dtype(spec: dict[str, Any]) -> np.dtype:
    import jax.numpy as jnp  # dtype names such as bfloat16

    return jnp.dtype(spec.get("name") or spec["dtype"])


def _spec_nbytes(spec: dict[str, Any]) -> int:
    """Bytes of the array a manifest spec declares (exact: no overflow on crafted shapes)."""
    return array_nbytes(_spec_dtype(spec), spec.get("shape"))


def _read_manifest(path: Path, version_dir: Path) -> Any:
    try:
        return json.loads(read_regular(version_dir / _MANIFEST, max_bytes=_MAX_MANIFEST_BYTES
                                       ).decode("utf-8"))
    except FileNotFoundError:
        raise FingerprintFileError(f"{path}: {_MANIFEST} is missing") from None
    except UnsafeFileError as e:
        raise FingerprintFileError(f"{path}: refusing to read {_MANIFEST}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FingerprintFileError(f"{path}: {_MANIFEST} is corrupt ({e})") from None


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
    expected = _check_manifest(path, manifest)
    store = version_dir / "arrays"
    if not store.is_dir():
        raise FingerprintFileError(f"{path}: the arrays directory is missing")
    try:
        stored_bytes = check_tree(store)  # no link, FIFO or device for orbax to open
    except UnsafeFileError as e:
        raise FingerprintFileError(f"{path}: refusing to read the arrays: {e}") from None
    _check_files(path, version_dir, manifest.get("files"))
    try:  # before anything is allocated
        check_expansion(sum(_spec_nbytes(spec) for spec in expected.values()), stored_bytes,
                        "the arrays its manifest declares")
    except UnsafeFileError as e:
        raise FingerprintFileError(f"{path}: {e}") from None
    if _empty_set(expected):
        arrays = {name: np.zeros(spec["shape"], _spec_dtype(spec))
                  for name, spec in expected.items()}
    else:
        with _array_store_errors(path):
            stored = orbax_array_specs(store)
        _check_arrays(path, expected, stored)  # the store allocates what it declares
        with _array_store_errors(path):
            restored = ocp.PyTreeCheckpointer().restore(store)
            arrays = {name: np.asarray(restored[name]) for name in ARRAY_FIELDS}
    _check_arrays(path, expected, {name: (a.dtype, a.shape) for name, a in arrays.items()})
    return _build(path, arrays, manifest)


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
        return _unseal(_read_sealed_file(path, passphrase), passphrase, str(path))
    if passphrase is not None:
        raise FingerprintFileError(
            f"{path} is an unsealed fingerprint directory: load it without a passphrase"
        )
    # The shared lock keeps a concurrent save from deleting the version being read; where
    # there is no lock, a version deleted under us is read again from the new CURRENT.
    for attempt in range(3):
        with _locked(path, exclusive=False):
            version = _current_version(path)
            try:
                return _load_version(path, version)
            except FingerprintFileError:
                if attempt == 2 or _current_version(path) == version:
                    raise
    raise AssertionError("unreachable")


# -- sealed files -------------------------------------------------------------------------------

def _read_sealed_file(path: Path, passphrase: Any) -> bytes:
    """The bytes of the sealed file ``path`` (not a directory); a regular file only."""
    try:
        fd = open_regular(path, follow_symlinks=True)
    except UnsafeFileError as e:
        raise FingerprintFileError(f"{e}: not a fingerprint file; refusing to read it") from None
    except OSError as e:
        raise FingerprintFileError(f"{path}: cannot read the sealed file ({e.strerror})"
                                   ) from None
    with os.fdopen(fd, "rb") as f:
        try:
            magic = f.read(len(SEALED_MAGIC))
            if magic != SEALED_MAGIC:
                raise FingerprintFileError(f"{path} is a file, not a fingerprint directory")
            if passphrase is None:
                raise FingerprintFileError(
                    f"{path} is a sealed fingerprint file: pass passphrase=... to load it"
                )
            return magic + f.read()
        except OSError as e:
            raise FingerprintFileError(f"{path}: cannot read the sealed file ({e.strerror})"
                                       ) from None


def _aead_backend() -> tuple[Any, Any, Any]:
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    except ImportError as e:
        raise ImportError(_SEAL_HINT) from e
    return AESGCM, Scrypt, InvalidTag


def _passphrase_bytes(passphrase: Any) -> bytes:
    if isinstance(passphrase, str):
        raw = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, (bytes, bytearray, memoryview)):
        raw = bytes(passphrase)
    else:
        raise TypeError(f"passphrase must be a str or bytes, got {type(passphrase).__name__}")
    if not raw:
        raise ValueError("passphrase must not be empty")
    return raw


def _derive(scrypt: Any, passphrase: bytes, salt: bytes, n: int, r: int, p: int
            ) -> tuple[bytes, str]:
    """The AES key and the passphrase check value (hex)."""
    keys = scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase)
    check = hmac.new(keys[32:], _CHECK_LABEL, hashlib.sha256).hexdigest()
    return keys[:32], check


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True
                      ).encode("ascii")


def _payload(fingerprints: Fingerprints) -> bytes:
    specs, chunks, offset = {}, [], 0
    for name, array in fingerprints.arrays().items():
        array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
        data = array.tobytes()
        specs[name] = {"dtype": array.dtype.name, "shape": list(array.shape), "offset": offset,
                       "nbytes": len(data)}
        chunks.append(data)
        offset += len(data)
    manifest = _canonical({"format": FORMAT, "format_version": FORMAT_VERSION,
                           "sha256": fingerprints.digest(), "arrays": specs,
                           "metadata": fingerprints.metadata})
    return struct.pack(">I", len(manifest)) + manifest + b"".join(chunks)


def _parse_payload(payload: bytes, where: str) -> Fingerprints:
    import jax.numpy as jnp  # dtype names such as bfloat16

    try:
        (size,) = struct.unpack_from(">I", payload, 0)
        manifest = json.loads(payload[4:4 + size].decode("utf-8"))
        expected = _check_manifest(Path(where), manifest)
        body = memoryview(payload)[4 + size:]
        arrays = {}
        for name in ARRAY_FIELDS:
            spec = expected[name]
            dtype = jnp.dtype(spec["dtype"]).newbyteorder("<")
            shape = tuple(spec["shape"])
            start, nbytes = int(spec["offset"]), int(spec["nbytes"])
            if start < 0 or start + nbytes > len(body) or nbytes != _spec_nbytes(spec):
                raise ValueError(f"array {name!r} does not fit the payload")
            arrays[name] = np.frombuffer(body[start:start + nbytes], dtype).reshape(shape).copy()
    except FingerprintFileError:
        raise
    except (struct.error, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise FingerprintFileError(f"{where}: the sealed content is malformed ({e})") from None
    return _build(Path(where), arrays, manifest)


def seal(fingerprints: Fingerprints, passphrase: str | bytes) -> bytes:
    """A fingerprint set as the bytes of a sealed file (see the module docs for the layout).

    Args:
        fingerprints: the set to seal.
        passphrase: str (UTF-8, NFC-normalised) or bytes, not empty.

    Returns:
        The sealed bytes: a fresh random salt and nonce every call.

    Raises:
        TypeError: ``fingerprints`` is not :class:`~ipguard_jax.Fingerprints`, or a passphrase
            that is neither str nor bytes.
        ValueError: an empty passphrase, or metadata that is not JSON-serialisable.
        ImportError: without the ``cryptography`` package (``pip install ipguard-jax[seal]``).

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints
        >>> fp = Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
        ...                   loss=[0.0], converged=[True], steps=[3], source=[0])
        >>> blob = seal(fp, "correct horse battery")  # scrypt: about a second
        >>> blob[:8], unseal(blob, "correct horse battery").digest() == fp.digest()
        (b'IPGJSEAL', True)
    """
    _check_save_args(fingerprints)
    secret = _passphrase_bytes(passphrase)
    aesgcm, scrypt, _ = _aead_backend()
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key, check = _derive(scrypt, secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    header = _canonical({
        "format": SEALED_FORMAT, "format_version": SEALED_FORMAT_VERSION,
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex()},
        "cipher": "AES-256-GCM", "nonce": nonce.hex(), "check": check,
    })
    prefix = SEALED_MAGIC + struct.pack(">I", len(header)) + header
    return prefix + aesgcm(key).encrypt(nonce, _payload(fingerprints), prefix)


def _sealed_header(data: bytes, where: str) -> tuple[bytes, dict[str, Any]]:
    if data[:len(SEALED_MAGIC)] != SEALED_MAGIC:
        raise FingerprintFileError(f"{where} is not a sealed fingerprint file")
    try:
        (size,) = struct.unpack_from(">I", data, len(SEALED_MAGIC))
        end = len(SEALED_MAGIC) + 4 + size
        if end > len(data):
            raise ValueError("the header runs past the end of the file")
        header = json.loads(data[len(SEALED_MAGIC) + 4:end].decode("ascii"))
        if not isinstance(header, dict) or header.get("format") != SEALED_FORMAT:
            raise ValueError("not a sealed-fingerprints header")
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise FingerprintFileError(f"{where}: the sealed file's header is corrupt ({e})"
                                   ) from None
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FingerprintFileError(f"{where}: the sealed file's header has no valid version")
    if version > SEALED_FORMAT_VERSION:
        raise FingerprintFileError(
            f"{where} is a sealed file of format version {version}; this library reads up to "
            f"version {SEALED_FORMAT_VERSION}: upgrade ipguard_jax to read it"
        )
    return data[:end], header


def _kdf_params(header: dict[str, Any], where: str) -> tuple[bytes, int, int, int, bytes, str]:
    try:
        kdf = header["kdf"]
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        if kdf["name"] != "scrypt" or header["cipher"] != "AES-256-GCM":
            raise ValueError(f"unknown kdf {kdf['name']!r} or cipher {header['cipher']!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n, r, p)):
            raise ValueError("scrypt parameters must be positive ints")
        if n < 2 or n & (n - 1) or 128 * n * r > _SCRYPT_MAX_MEMORY or p > 16:
            raise ValueError(f"scrypt parameters n={n}, r={r}, p={p} are out of range")
        salt, nonce = bytes.fromhex(kdf["salt"]), bytes.fromhex(header["nonce"])
        check = header["check"]
        if len(nonce) != 12 or len(salt) < 16 or not isinstance(check, str):
            raise ValueError("bad salt, nonce or check value")
    except (KeyError, TypeError, ValueError) as e:
        raise FingerprintFileError(f"{where}: the sealed file's header is corrupt ({e})"
                                   ) from None
    return salt, n, r, p, nonce, check


def _unseal(data: bytes, passphrase: Any, where: str) -> Fingerprints:
    secret = _passphrase_bytes(passphrase)
    aesgcm, scrypt, invalid_tag = _aead_backend()
    prefix, header = _sealed_header(data, where)
    salt, n, r, p, nonce, check = _kdf_params(header, where)
    key, expected_check = _derive(scrypt, secret, salt, n, r, p)
    if not hmac.compare_digest(expected_check.encode("ascii"), check.encode("ascii", "replace")):
        raise FingerprintFileError(
            f"{where}: wrong passphrase (or the sealed file's header was modified)"
        )
    try:
        payload = aesgcm(key).decrypt(nonce, data[len(prefix):], prefix)
    except invalid_tag:
        raise FingerprintFileError(
            f"{where}: the sealed file was modified or is corrupt (authentication failed)"
        ) from None
    return _parse_payload(payload, where)


def unseal(data: bytes, passphrase: str | bytes) -> Fingerprints:
    """The fingerprint set in the bytes of a sealed file, authenticated and checked.

    Args:
        data: bytes from :func:`seal` (or a sealed file's content).
        passphrase: the passphrase it was sealed with.

    Returns:
        The :class:`Fingerprints`, bit-identical to the ones sealed.

    Raises:
        TypeError: ``data`` is not bytes, or a passphrase that is neither str nor bytes.
        ValueError: an empty passphrase.
        FingerprintFileError: not sealed fingerprints, a wrong passphrase, modified or corrupt
            bytes, or a newer format version.
        ImportError: without the ``cryptography`` package (``pip install ipguard-jax[seal]``).

    Example:
        A round trip is in :func:`seal`'s example; bytes that are not sealed are refused:

        >>> unseal(b"just some bytes", "correct horse battery")
        Traceback (most recent call last):
        ...
        ipguard_jax.io.FingerprintFileError: sealed data is not a sealed fingerprint file

        The bytes of a sealed file: ``unseal(Path("owner.sealed").read_bytes(), passphrase)``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return _unseal(bytes(data), passphrase, "sealed data")


def _save_sealed(fingerprints: Fingerprints, path: Path, overwrite: bool,
                 passphrase: Any) -> None:
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if path.is_dir():
            raise FingerprintFileError(
                f"{path} is a directory; a sealed file cannot replace it atomically: choose "
                f"another path or remove it first"
            )
        if not _is_sealed_file(path):
            raise FingerprintFileError(
                f"{path} exists and is not a sealed fingerprint file; refusing to overwrite it"
            )
    data = seal(fingerprints, passphrase)
    _write_bytes_atomic(path, data, claim=True)
    _fsync_dir(path.parent)
