"""Image-folder data sets (``root/[split/]class/*.jpg``), as directories or tar archives.

Archives are extracted once into a cache directory keyed by their sha256, never next to the
archive. Decoded images are cached there as ``.npz`` files, so a second load only reads one file.

Example:
    >>> from ipguard_jax.data import load_image_folder
    >>> train = load_image_folder("cifar10-jpeg.tar.gz", "train")  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import lzma
import multiprocessing
import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ipguard_jax.data._dataset import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CACHE_ENV_VAR = "IPGUARD_JAX_CACHE"

# Bump when the layout of cached .npz files changes, so old files are not read.
_CACHE_FORMAT = 1
_CHUNK = 1024
_IGNORED_NAMES = ("__MACOSX",)


class _UnsafeMemberError(tarfile.TarError):
    """A tar member would land outside the extraction directory."""


# tarfile.FilterError exists from Python 3.11.4 on, together with extraction filters.
_UNSAFE_MEMBER_ERRORS = (_UnsafeMemberError,) + (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ())


def default_cache_dir() -> Path:
    """The cache root: ``$IPGUARD_JAX_CACHE`` if set, else ``~/.cache/ipguard_jax/datasets``.

    Returns:
        The directory under which archives are extracted and decoded arrays are cached.

    Example:
        Without ``$IPGUARD_JAX_CACHE``, for a user whose home is ``/home/me``:

        >>> default_cache_dir()  # doctest: +SKIP
        PosixPath('/home/me/.cache/ipguard_jax/datasets')
    """
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ipguard_jax" / "datasets"


def load_image_folder(path: str | os.PathLike, split: str | None = None, *,
                      mode: Literal["RGB", "L"] = "RGB",
                      cache_dir: str | os.PathLike | None = None,
                      use_cache: bool = True,
                      num_workers: int = 0) -> Dataset:
    """Loads images laid out as ``root/split/class/*.{jpg,jpeg,png}`` or ``root/class/*``.

    ``path`` is a directory or a tar archive (``.tar.gz``, ``.tgz``, ``.tar``, ``.tar.bz2``,
    ``.tar.xz``) of such a tree. An archive is extracted once into
    ``<cache_dir>/<first 16 hex digits of its sha256>/tree``: into a temporary sibling directory
    first, renamed into place only when complete, so an interrupted or failed extraction leaves
    no half-extracted tree behind. Members that would land outside that directory (``..``
    paths, links pointing out, device files) are refused; leading slashes are stripped
    (tarfile's ``"data"`` filter). A single wrapping top-level directory (as in
    ``cifar10/train/...``) is looked through.

    Classes are the sub-directories of the split, sorted by name (plain string order, so
    CIFAR-10 gets its usual label order); label ``c`` is the ``c``-th name. Class names are the
    union over all splits found next to ``split``, so ``train`` and ``test`` get the same labels
    even if one split lacks a class. Inside a class folder, files are read in name order;
    sub-directories and files with other extensions are ignored, as are hidden entries.

    Images are decoded by Pillow and converted to ``mode``: ``"RGB"`` (the default; grey files
    become three equal channels, so folders that mix grey and colour files load as one shape)
    or ``"L"`` (8-bit grey, one channel; colour files are converted to luminance). All images
    must have the same height and width. The decoded uint8 arrays are cached as an ``.npz``
    file in the cache directory (for a directory input, keyed by its path and the names, sizes
    and modification times of its files), so later loads skip decoding.

    Args:
        path: a directory or tar archive.
        split: name of the split directory, e.g. ``"train"``; ``None`` for a tree without a
            split level.
        mode: Pillow mode to convert images to, ``"RGB"`` or ``"L"``.
        cache_dir: cache root; defaults to :func:`default_cache_dir` (``$IPGUARD_JAX_CACHE`` or
            ``~/.cache/ipguard_jax/datasets``).
        use_cache: read and write the ``.npz`` cache of decoded arrays. Archives are extracted
            into ``cache_dir`` either way.
        num_workers: worker processes for decoding; ``0`` (the default) decodes in this
            process. Workers pay for starting Python and importing this package, so they help
            only with several idle cores: on 2 cores, 50,000 32x32 JPEGs took 14 s in-process
            and 21 s with 2 workers. Workers are started with ``spawn``; in a script, call this
            under ``if __name__ == "__main__":`` when using them.

    Returns:
        A ``Dataset`` with ``x`` of shape ``(N, H, W, 3)`` (or ``(N, H, W, 1)`` for
        ``mode="L"``), float32 in ``[0, 1]`` (uint8 values scaled by ``1/255``), named
        ``"<archive or folder name>:<split>"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is neither a directory nor an archive; the archive is corrupt,
            truncated or holds unsafe members; the split is missing (or needed but not given);
            a class folder holds no images; an image cannot be decoded (the file is named);
            images differ in size.

    Example:
        Two one-image classes in ``root/train/{cat,dog}/``:

        >>> import os, tempfile
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as root:
        ...     for name, value in (("cat", 0), ("dog", 255)):
        ...         os.makedirs(os.path.join(root, "train", name))
        ...         image = Image.new("RGB", (4, 4), (value, value, value))
        ...         image.save(os.path.join(root, "train", name, "0.png"))
        ...     train = load_image_folder(root, "train", use_cache=False)
        >>> train.x.shape, train.class_names, train.x.max(axis=(1, 2, 3)).tolist()
        ((2, 4, 4, 3), ('cat', 'dog'), [0.0, 1.0])

        The CIFAR-10 archive of JPEG files (extracted once into the cache):

        >>> train = load_image_folder("cifar10-jpeg.tar.gz", "train")  # doctest: +SKIP
        >>> train.x.shape, train.class_names[:2]  # doctest: +SKIP
        ((50000, 32, 32, 3), ('airplane', 'automobile'))
    """
    path = Path(path).expanduser()
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L'; got {mode!r}")
    if split is not None and (not isinstance(split, str) or not split or "/" in split
                              or "\\" in split or split in (".", "..")):
        raise ValueError(f"split must be the name of one directory, e.g. 'train'; got {split!r}")
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int; got {num_workers!r}")
    if not path.exists():
        raise FileNotFoundError(f"image folder or archive not found: {path}")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = path.name if split is None else f"{path.name}:{split}"
    npz_name = f"{split or '_root'}-{mode}-v{_CACHE_FORMAT}.npz"

    if path.is_dir():
        root, entry = path, None
    elif path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        entry = cache_root / _sha256(path)[:16]
        if use_cache and (cached := _read_npz(entry / npz_name)) is not None:
            return _to_dataset(*cached, name)
        root = _extract_once(path, entry)
    else:
        raise ValueError(f"{path} is neither a directory nor a tar archive "
                         f"({', '.join(ARCHIVE_SUFFIXES)})")

    split_dir, class_names = _find_classes(root, split, shown=path)
    files, labels = _list_images(split_dir, class_names, shown=path)
    if entry is None and use_cache:
        entry = cache_root / ("dir-" + _listing_key(path, class_names, files))
        if (cached := _read_npz(entry / npz_name)) is not None:
            return _to_dataset(*cached, name)

    x = _decode_all(files, mode, num_workers)
    if use_cache:
        _write_npz(entry / npz_name, x, labels, class_names)
    return _to_dataset(x, labels, class_names, name)


# --- archives -------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _extract_once(archive: Path, entry: Path) -> Path:
    """Extracts ``archive`` to ``entry/tree`` unless already there; returns ``entry/tree``."""
    tree = entry / "tree"
    if tree.is_dir():
        return tree
    entry.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".tree-partial-", dir=entry))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                _safe_extractall(tar, partial)
        except _UNSAFE_MEMBER_ERRORS as e:
            raise ValueError(f"refusing to extract {archive}: unsafe member ({e})") from e
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
            raise ValueError(f"cannot read archive {archive}: corrupt or truncated ({e})") from e
        try:
            # Atomic on one file system: readers see no tree or a complete one.
            os.rename(partial, tree)
        except OSError:
            if not tree.is_dir():  # not just another process finishing first
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
        if not tree.is_dir():
            try:
                entry.rmdir()  # leave no empty cache entry after a failure
            except OSError:
                pass
    return tree


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    # Pythons without extraction filters (before 3.11.4): extract only plain files and
    # directories whose names stay inside dest.
    dest = dest.resolve()
    for member in tar:
        target = (dest / member.name).resolve()
        if os.path.isabs(member.name) or not target.is_relative_to(dest):
            raise _UnsafeMemberError(f"{member.name!r} would be extracted outside the target")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


# --- layout ---------------------------------------------------------------------------------

def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name not in _IGNORED_NAMES


def _subdirs(directory: Path) -> list[Path]:
    with os.scandir(directory) as it:
        return sorted(Path(e.path) for e in it if _visible(e) and e.is_dir())


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _has_images(directory: Path) -> bool:
    with os.scandir(directory) as it:
        return any(_is_image_name(e.name) and e.is_file() for e in it)


def _is_split_dir(directory: Path) -> bool:
    return any(_has_images(d) for d in _subdirs(directory))


def _find_classes(root: Path, split: str | None, shown: Path) -> tuple[Path, tuple[str, ...]]:
    """Returns the directory holding the class folders, and the class names."""
    # Look through wrapping directories such as "cifar10/" around "train/" and "test/".
    while True:
        subs = _subdirs(root)
        if (len(subs) == 1 and not _has_images(root) and not _has_images(subs[0])
                and subs[0].name != split):
            root = subs[0]
        else:
            break
    splits = [d for d in subs if not _has_images(d) and _is_split_dir(d)]
    if split is None:
        if any(_has_images(d) for d in subs):
            return root, tuple(d.name for d in subs)
        if splits:
            raise ValueError(f"{shown} has split directories {[d.name for d in splits]}; "
                             "pass split=<one of them>")
        raise ValueError(f"found no images in {shown}: expected class folders of images, "
                         "root/<class>/*.jpg or root/<split>/<class>/*.jpg")
    split_dir = root / split
    if not split_dir.is_dir():
        if any(_has_images(d) for d in subs):
            raise ValueError(f"split {split!r} not found: {shown} has class folders and no split "
                             "level; pass split=None")
        raise ValueError(f"split {split!r} not found in {shown}; available splits: "
                         f"{[d.name for d in splits]}")
    if split_dir not in splits:
        splits.append(split_dir)
    # The union over splits keeps labels consistent between e.g. train and test.
    names = sorted({d.name for s in splits for d in _subdirs(s)})
    if not names:
        raise ValueError(f"split {split!r} of {shown} holds no class folders")
    return split_dir, tuple(names)


def _list_images(split_dir: Path, class_names: Sequence[str],
                 shown: Path) -> tuple[list[str], np.ndarray]:
    files: list[str] = []
    labels: list[int] = []
    for label, class_name in enumerate(class_names):
        class_dir = split_dir / class_name
        if not class_dir.is_dir():
            continue  # a class that only other splits have
        with os.scandir(class_dir) as it:
            names = sorted(e.name for e in it if _is_image_name(e.name) and e.is_file())
        if not names:
            raise ValueError(f"class folder {class_name!r} ({class_dir}, in {shown}) holds no "
                             f"images ({', '.join(IMAGE_EXTENSIONS)})")
        files.extend(os.path.join(class_dir, n) for n in names)
        labels.extend([label] * len(names))
    return files, np.asarray(labels, dtype=np.int32)


# --- decoding -------------------------------------------------------------------------------

def _import_pillow():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise ImportError("load_image_folder needs Pillow: pip install 'ipguard-jax[data]'") from e
    return Image, UnidentifiedImageError


def _decode_chunk(files: Sequence[str], mode: str) -> np.ndarray:
    """Decodes image files into one ``(n, H, W, C)`` uint8 array; runs in worker processes."""
    Image, UnidentifiedImageError = _import_pillow()
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode == mode:
                    im.load()
                    a = np.asarray(im)
                else:
                    a = np.asarray(im.convert(mode))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot decode image file {f}: {e}") from e
        if arrays and a.shape != arrays[0].shape:
            raise ValueError(_size_error(files[0], arrays[0].shape, f, a.shape))
        arrays.append(a)
    x = np.stack(arrays)
    return x[..., None] if x.ndim == 3 else x


def _size_error(file_a: str, shape_a, file_b: str, shape_b) -> str:
    return (f"images differ in size: {file_a} is {shape_a[0]}x{shape_a[1]} (height x width) but "
            f"{file_b} is {shape_b[0]}x{shape_b[1]}; resize them to one size first")


def _decode_all(files: list[str], mode: str, num_workers: int) -> np.ndarray:
    chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    if num_workers == 0:
        parts = [_decode_chunk(c, mode) for c in chunks]
    else:
        # spawn, not fork: forking a process that runs JAX's threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            parts = list(pool.map(_decode_chunk, chunks, [mode] * len(chunks)))
    for chunk, part in zip(chunks, parts):
        if part.shape[1:] != parts[0].shape[1:]:
            raise ValueError(_size_error(chunks[0][0], parts[0].shape[1:], chunk[0],
                                         part.shape[1:]))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


# --- cache of decoded arrays ----------------------------------------------------------------

def _listing_key(path: Path, class_names: Sequence[str], files: Sequence[str]) -> str:
    """A key that changes with the folder's path, its classes or a file's name, size or mtime."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    digest.update("\0".join(class_names).encode())
    for f in files:
        st = os.stat(f)
        digest.update(f"\0{f}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _read_npz(file: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None:
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            x, y, names = z["x"], z["y"], tuple(str(s) for s in z["class_names"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable cache: decode again and overwrite it
    if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int32 or y.shape != x.shape[:1]:
        return None
    return x, y, names


def _write_npz(file: Path, x: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> None:
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".npz", dir=file.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y, class_names=np.asarray(class_names, dtype=str))
        os.replace(tmp, file)  # readers never see a partly written file
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        warnings.warn(f"could not cache decoded images at {file}: {e}", RuntimeWarning,
                      stacklevel=3)


def _to_dataset(x: np.ndarray, y: np.ndarray, class_names: Sequence[str], name: str) -> Dataset:
    x_float = x.astype(np.float32)
    np.divide(x_float, np.float32(255.0), out=x_float)  # in place: CIFAR-10 is 600 MB as float32
    return Dataset(x_float, y, tuple(class_names), name)

