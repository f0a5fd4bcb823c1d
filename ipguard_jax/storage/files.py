"""Files on disk: atomic writes, locks and cleanup of killed writes, and bounded safe reads.

Writing. :func:`atomic_path` is the one atomic writer: the new content goes to a temporary
sibling of the target (same directory, so on the same file system), is flushed to disk and
then renamed over the target with :func:`os.replace`, so a reader (or a crash, even a
``SIGKILL``) sees the complete old file or the complete new one, and a write that fails leaves
no temporary file behind. :func:`atomic_open` and :func:`write_atomic` are the same writer for
content written through a file object or given as bytes or text. With ``claim`` a write first
removes the temporary files of earlier writes of the same path that were killed part-way
(:func:`claimed`: a live write holds an ``flock`` on its temporary file, so concurrent writes
never remove each other's).

Reading. Fingerprint directories (:mod:`ipguard_jax.storage.fingerprint_files`) and model
files (:mod:`ipguard_jax.models.bundle`) come from other people. A hostile one must not make a
reader hang or exhaust memory: a FIFO or a device where a file should be, a symbolic link to
``/dev/zero``, a manifest that declares arrays far larger than the files that hold them. The
read helpers here refuse all of these before anything is read or allocated, with
:class:`UnsafeFileError`; the readers re-raise it as their own error type, naming the file.

Example:
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_atomic(os.path.join(tmp, "note.txt"), b"complete")
    ...     os.listdir(tmp), read_regular(os.path.join(tmp, "note.txt"), max_bytes=100)
    (['note.txt'], b'complete')
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     os.mkfifo(os.path.join(tmp, "pipe"))
    ...     read_regular(os.path.join(tmp, "pipe"), max_bytes=100)
    Traceback (most recent call last):
    ...
    ipguard_jax.storage.files.UnsafeFileError: .../pipe is a FIFO, not a regular file
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import numpy as np

#: Array files may hold their arrays compressed (orbax stores them with zstd): the arrays a
#: file declares may take up to this many times the bytes of its array files...
MAX_EXPANSION = 256
#: ... or this many bytes, whichever is more, before a reader refuses to allocate them.
SMALL_ARRAYS_BYTES = 64 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


# -- atomic writes ------------------------------------------------------------------------------

def temp_sibling(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden name beside ``path`` for a temporary file: ``.<name>.<32 hex><suffix>``.

    Example:
        >>> tmp = temp_sibling("/data/fp/CURRENT")
        >>> tmp.parent, tmp.name.startswith(".CURRENT."), tmp.suffix, len(tmp.name)
        (PosixPath('/data/fp'), True, '.tmp', 45)
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{suffix}")


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes the file or directory ``path`` to disk.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     fsync_path(tmp)
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """Flushes every file and directory under ``root`` (so a rename after it is durable).

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     os.mkdir(os.path.join(tmp, "sub"))
        ...     write_atomic(os.path.join(tmp, "sub", "a"), b"x")
        ...     fsync_tree(tmp)
    """
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def _fsync_file(path: Path) -> None:
    """Flushes a file this process may write (opened for writing: Windows needs it)."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, tmp: str | os.PathLike | None = None,
                sync: bool = True) -> Iterator[Path]:
    """The atomic writer: yields a temporary sibling of ``path`` to write, then renames it over.

    On a clean exit of the ``with`` block the temporary file is flushed to disk (unless the
    caller did it: ``sync=False``) and renamed to ``path`` with :func:`os.replace`; whatever
    happens, no temporary file is left behind (on an error ``path`` is untouched).

    Args:
        path: the file to write (its directory must exist).
        tmp: the temporary file to use; default :func:`temp_sibling` of ``path``. Give one in
            the same directory as ``path``.
        sync: flush the temporary file to disk before the rename.

    Yields:
        The temporary path; the caller creates and writes it (e.g. ``np.savez(tmp, ...)``).

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     target = os.path.join(tmp, "out.bin")
        ...     with atomic_path(target) as part:
        ...         _ = part.write_bytes(b"new")
        ...     try:
        ...         with atomic_path(target) as part:
        ...             _ = part.write_bytes(b"half")
        ...             raise OSError("disk full")
        ...     except OSError:
        ...         pass
        ...     os.listdir(tmp), Path(target).read_bytes()
        (['out.bin'], b'new')
    """
    path = Path(path)
    tmp = temp_sibling(path) if tmp is None else Path(tmp)
    try:
        yield tmp
        if sync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *,
                tmp: str | os.PathLike | None = None, private: bool = False,
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """:func:`atomic_path` with the temporary file opened: yields the file object to write.

    The temporary file is created with permissions ``0o666`` (``0o600`` if ``private``) less
    the umask, as :func:`open` (:func:`tempfile.mkstemp`) would; symbolic links are not
    followed. The file is flushed and synced to disk before it is closed and renamed.

    Args:
        path: the file to write.
        mode: ``"wb"`` for bytes or ``"w"`` for text (``encoding`` then applies).
        tmp: as for :func:`atomic_path`.
        private: readable and writable by the owner only.
        encoding: the text encoding in mode ``"w"``.

    Yields:
        The open temporary file.

    Example:
        >>> import json, os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with atomic_open(os.path.join(tmp, "a.json"), "w", encoding="utf-8") as f:
        ...         json.dump({"a": 1}, f)
        ...     Path(tmp, "a.json").read_text()
        '{"a": 1}'
    """
    flags = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_BINARY", 0))
    with atomic_path(path, tmp=tmp, sync=False) as part:
        fd = os.open(part, flags, 0o600 if private else 0o666)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, data: bytes | str, *,
                 tmp: str | os.PathLike | None = None, private: bool = False,
                 claim: bool = False, encoding: str = "utf-8") -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: the file to write.
        data: bytes, written as they are, or text, written in text mode with ``encoding``
            (newlines translated as :func:`open` does).
        tmp: as for :func:`atomic_path`.
        private: readable and writable by the owner only.
        claim: first remove the temporary files (``.<name>.<hex>.tmp``) that earlier writes of
            ``path`` killed part-way left, holding a lock on this write's own (see
            :func:`claimed`). Only for paths whose directory no caller holds a lock on.
        encoding: the encoding of text ``data``.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     target = os.path.join(tmp, "CURRENT")
        ...     write_atomic(target, "v-1")
        ...     write_atomic(target, b"v-2", claim=True)
        ...     os.listdir(tmp), Path(target).read_text()
        (['CURRENT'], 'v-2')
    """
    tmp = temp_sibling(path) if tmp is None else Path(tmp)
    text = isinstance(data, str)
    with contextlib.ExitStack() as stack:
        if claim:
            mode = 0o600 if private else 0o666
            stack.enter_context(claimed(
                tmp, lambda item: os.close(os.open(item, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                                   mode)),
                temp_leftovers(path, ".tmp")))
        with atomic_open(path, "w" if text else "wb", tmp=tmp, private=private,
                         encoding=encoding if text else None) as f:
            f.write(data)


# -- locks and the leftovers of killed writes ---------------------------------------------------

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


@contextlib.contextmanager
def locked(path: str | os.PathLike, exclusive: bool) -> Iterator[None]:
    """An advisory lock on the directory ``path`` (``flock``; a no-op where there is none).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with locked(tmp, exclusive=False), locked(tmp, exclusive=False):
        ...         pass  # shared locks do not exclude each other
    """
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


def temp_leftovers(path: str | os.PathLike, suffix: str) -> Callable[[], Iterable[Path]]:
    """The temporary siblings ``.<name>.<anything><suffix>`` that writes of ``path`` make.

    Returns:
        A function listing them now (for :func:`claimed`).

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in (".f.0a.tmp", ".g.0b.tmp", "f"):
        ...         open(os.path.join(tmp, name), "w").close()
        ...     [p.name for p in temp_leftovers(os.path.join(tmp, "f"), ".tmp")()]
        ['.f.0a.tmp']
    """
    path = Path(path)
    pattern = glob.escape(f".{path.name}.") + "*" + suffix
    return lambda: path.parent.glob(pattern)


def remove_tree(path: str | os.PathLike, *, attempts: int = 50, wait_s: float = 0.05) -> bool:
    """Removes the directory ``path`` and everything in it, again while something refills it.

    A failed save (a full disk, an interrupted write) can leave a writer thread of the
    checkpointing library still finishing its files after the error reached us; one
    ``rmtree`` then races with it and leaves the directory behind. This tries again, a short
    wait apart, until the directory is gone.

    Args:
        path: the directory (a missing one is already removed).
        attempts: how many removals to try.
        wait_s: seconds between two tries.

    Returns:
        Whether ``path`` is gone.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     os.makedirs(os.path.join(tmp, "a", "b"))
        ...     remove_tree(os.path.join(tmp, "a")), os.listdir(tmp)
        (True, [])
    """
    import time

    path = Path(path)
    for attempt in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return True
        if attempt + 1 < attempts:
            time.sleep(wait_s)
    return False


def _remove_if_abandoned(entry: Path) -> None:
    """Removes the temporary ``entry`` if no live save holds its lock (see :func:`claimed`)."""
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


@contextlib.contextmanager
def claimed(item: Path, make: Callable[[Path], None],
            leftovers: Callable[[], Iterable[Path]]) -> Iterator[None]:
    """Makes the temporary file or directory ``item`` and holds a lock on it until the end.

    A save killed part-way (``SIGKILL``, power loss) leaves its temporary items behind. Under an
    exclusive lock on ``item``'s parent this first removes those of ``leftovers()`` that no
    live save holds, then makes ``item`` with ``make(item)`` and locks it, so a concurrent save
    never takes a live item for a leftover. Where ``flock`` is missing (Windows, some network
    mounts) nothing is removed: a live item cannot be told from a leftover there.

    Example:
        >>> import os, tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     dead = Path(tmp, ".out.0a.partial")
        ...     dead.mkdir()
        ...     with claimed(Path(tmp, ".out.1b.partial"), Path.mkdir,
        ...                  temp_leftovers(Path(tmp, "out"), ".partial")):
        ...         sorted(os.listdir(tmp))
        ['.out.1b.partial']
    """
    with contextlib.ExitStack() as stack:
        with locked(item.parent, exclusive=True):
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


def rename_new(src: Path, dst: Path, what: str) -> None:
    """Renames the complete directory ``src`` to ``dst``, which must not exist.

    Two processes that both found ``dst`` missing race to create it: the loser's rename fails
    (``ENOTEMPTY`` or ``EEXIST`` on a directory, ``ENOTDIR`` on a file), and is reported as
    :class:`FileExistsError` naming ``dst``.

    Args:
        src: the staged directory.
        dst: its final path.
        what: what is saved, for the message (``"fingerprint directory"``...).

    Raises:
        FileExistsError: ``dst`` was created meanwhile.
        OSError: any other failure of the rename.

    Example:
        >>> import os, tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in ("a", "b", "taken"):
        ...         os.mkdir(os.path.join(tmp, name))
        ...     open(os.path.join(tmp, "taken", "x"), "w").close()
        ...     rename_new(Path(tmp, "a"), Path(tmp, "new"), "model file")
        ...     rename_new(Path(tmp, "b"), Path(tmp, "taken"), "model file")
        Traceback (most recent call last):
        ...
        FileExistsError: .../taken was created by another process while this model file was ...
    """
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise FileExistsError(
                f"{dst} was created by another process while this {what} was being written; "
                f"pass overwrite=True to replace it") from None
        raise


# -- bounded reads of regular files -------------------------------------------------------------

class UnsafeFileError(ValueError):
    """A file is not a regular file, is too large, or declares more data than it holds."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _not_regular(path: str | os.PathLike, mode: int) -> UnsafeFileError:
    return UnsafeFileError(f"{path} is {_kind(mode)}, not a regular file")


def open_regular(path: str | os.PathLike, *, follow_symlinks: bool = False) -> int:
    """Opens a regular file read-only without blocking; returns its file descriptor.

    Without ``follow_symlinks`` the path is checked with ``lstat`` and opened with
    ``O_NOFOLLOW``, so a symbolic link is refused. Either way it is opened with
    ``O_NONBLOCK`` (opening a FIFO does not wait for a writer) and checked again with
    ``fstat``, so a file swapped in between the checks is refused too.

    Args:
        path: the file.
        follow_symlinks: accept a symbolic link to a regular file (for a path the user named).

    Returns:
        A file descriptor; the caller closes it.

    Raises:
        UnsafeFileError: ``path`` is a symbolic link (without ``follow_symlinks``), a FIFO, a
            device, a socket or a directory.
        OSError: it cannot be opened (``FileNotFoundError`` if missing).

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     open_regular(tmp)
        Traceback (most recent call last):
        ...
        ipguard_jax.storage.files.UnsafeFileError: /... is a directory, not a regular file
    """
    if not follow_symlinks:
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symbolic link swapped in after the lstat
            raise UnsafeFileError(f"{path} is a symbolic link, not a regular file") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode)
    return fd


def read_regular(path: str | os.PathLike, *, max_bytes: int,
                 follow_symlinks: bool = False) -> bytes:
    """The content of a regular file of at most ``max_bytes`` (see :func:`open_regular`).

    Raises:
        UnsafeFileError: not a regular file, or larger than ``max_bytes``.
        OSError: it cannot be opened or read.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_atomic(os.path.join(tmp, "big"), b"0123456789")
        ...     read_regular(os.path.join(tmp, "big"), max_bytes=4)
        Traceback (most recent call last):
        ...
        ipguard_jax.storage.files.UnsafeFileError: .../big is larger than 4 bytes, the most allowed
    """
    with os.fdopen(open_regular(path, follow_symlinks=follow_symlinks), "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFileError(f"{path} is larger than {max_bytes:,} bytes, the most allowed")
    return data


def check_tree(root: str | os.PathLike) -> int:
    """Checks that ``root`` and everything under it are plain directories and regular files.

    Array stores (orbax checkpoints) are read by code that follows links and blocks on FIFOs;
    this refuses a tree holding any symbolic link, FIFO, device or socket before that code
    runs.

    Returns:
        The total size in bytes of the regular files.

    Raises:
        UnsafeFileError: an entry that is neither a directory nor a regular file (the first
            found is named).
        OSError: ``root`` cannot be read.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_atomic(os.path.join(tmp, "a"), b"abc")
        ...     check_tree(tmp)
        3
    """
    mode = os.lstat(root).st_mode
    if not stat.S_ISDIR(mode):
        raise UnsafeFileError(f"{root} is {_kind(mode)}, not a directory")
    total = 0
    for folder, dirs, files in os.walk(root):  # does not descend into links to directories
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                raise _not_regular(os.path.join(folder, name), st.st_mode)
    return total


def array_nbytes(dtype: Any, shape: Any) -> int:
    """Bytes of an array of ``shape`` and ``dtype``, in exact integer arithmetic.

    Raises:
        TypeError: ``shape`` is not a list or tuple of non-negative ints (bools are no ints).

    Example:
        >>> array_nbytes("float32", [2**40, 2**40])  # no overflow
        4835703278458516698824704
    """
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TypeError(f"a shape must be a list of non-negative ints, got {shape!r}")
    return int(np.dtype(dtype).itemsize) * int(np.prod(shape, dtype=object))


def check_expansion(declared: int, stored: int, what: str) -> None:
    """Refuses arrays that take far more memory than the files that hold them.

    Args:
        declared: bytes of the arrays as their file declares them.
        stored: bytes of the files holding them.
        what: names the arrays in the message, e.g. ``"/path/fp: the manifest's arrays"``.

    Raises:
        UnsafeFileError: ``declared`` exceeds ``max(SMALL_ARRAYS_BYTES, MAX_EXPANSION *
            stored)``.

    Example:
        >>> check_expansion(10 << 20, 1000, "the arrays")  # small arrays always pass
        >>> check_expansion(1 << 40, 1000, "the arrays")
        Traceback (most recent call last):
        ...
        ipguard_jax.storage.files.UnsafeFileError: the arrays take 1,099,511,627,776 bytes ...
    """
    limit = max(SMALL_ARRAYS_BYTES, MAX_EXPANSION * stored)
    if declared > limit:
        raise UnsafeFileError(
            f"{what} take {declared:,} bytes but their files hold only {stored:,}; refusing "
            f"to allocate more than {limit:,} bytes (the file is corrupt or crafted)"
        )


def orbax_array_specs(directory: str | os.PathLike) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Dtype and shape of every array in an orbax PyTree checkpoint, from its metadata only.

    Nothing is allocated: call it (after :func:`check_tree`) to compare what a checkpoint holds
    with what its reader expects before restoring it.

    Returns:
        ``{name: (dtype, shape)}`` for the top-level keys of the checkpointed dict.

    Raises:
        ValueError: the metadata is not that of a dict of arrays.
        Exception: whatever orbax raises on unreadable metadata.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> import orbax.checkpoint as ocp
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     ocp.PyTreeCheckpointer().save(os.path.join(tmp, "ckpt"),
        ...                                   {"w": np.zeros((2, 3), np.float32)})
        ...     orbax_array_specs(os.path.join(tmp, "ckpt"))
        {'w': (dtype('float32'), (2, 3))}
    """
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as checkpointer:
        meta = checkpointer.metadata(Path(directory))
    tree = getattr(meta, "item_metadata", meta)  # a StepMetadata in recent orbax versions
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping):
        raise ValueError(f"the checkpoint holds a {type(tree).__name__}, not a dict of arrays")
    return {str(name): (np.dtype(leaf.dtype), tuple(int(d) for d in leaf.shape))
            for name, leaf in tree.items()}
