"""Reading files that someone else may have written: bounded, regular files only.

Fingerprint directories (:mod:`ipguard_jax.io`) and model files
(:mod:`ipguard_jax.models.bundle`) come from other people. A hostile one must not make a
reader hang or exhaust memory: a FIFO or a device where a file should be, a symbolic link to
``/dev/zero``, a manifest that declares arrays far larger than the files that hold them. The
helpers here refuse all of these before anything is read or allocated, with
:class:`UnsafeFileError`; the readers re-raise it as their own error type, naming the file.

Example:
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     os.mkfifo(os.path.join(tmp, "pipe"))
    ...     read_regular(os.path.join(tmp, "pipe"), max_bytes=100)
    Traceback (most recent call last):
    ...
    ipguard_jax._fileutil.UnsafeFileError: .../pipe is a FIFO, not a regular file
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Array files may hold their arrays compressed (orbax stores them with zstd): the arrays a
#: file declares may take up to this many times the bytes of its array files...
MAX_EXPANSION = 256
#: ... or this many bytes, whichever is more, before a reader refuses to allocate them.
SMALL_ARRAYS_BYTES = 64 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


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
    """
    with os.fdopen(open_regular(path, follow_symlinks=follow_symlinks), "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFileError(f"{path} is larger than {max_bytes:,} bytes, the most allowed")
    return data


def sha256_regular(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a regular file, refusing links and special files like
    :func:`open_regular`."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    """
    import orbax.checkpoint as ocp

    meta = ocp.PyTreeCheckpointer().metadata(Path(directory))
    tree = getattr(meta, "item_metadata", meta)  # a StepMetadata in recent orbax versions
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping):
        raise ValueError(f"the checkpoint holds a {type(tree).__name__}, not a dict of arrays")
    return {str(name): (np.dtype(leaf.dtype), tuple(int(d) for d in leaf.shape))
            for name, leaf in tree.items()}


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
    """
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise FileExistsError(
                f"{dst} was created by another process while this {what} was being written; "
                f"pass overwrite=True to replace it") from None
        raise
