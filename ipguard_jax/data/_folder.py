"""Image-folder data sets (``root/[split/]class/*.jpg``), as directories or tar archives.

Archives are extracted once into a cache directory keyed by their sha256, never next to the
archive. Decoded images are cached there as ``.npz`` files, so a second load only reads one file.

Archives and images may come from anyone, so what they can make a load spend is capped: an
archive's extracted bytes and member count (:data:`DEFAULT_MAX_ARCHIVE_BYTES`,
:data:`DEFAULT_MAX_ARCHIVE_MEMBERS`) and an image's pixel count
(:data:`DEFAULT_MAX_IMAGE_PIXELS`), each raised by an argument of :func:`load_image_folder`.

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

#: Default cap on the bytes an archive may extract (its files, names and extended headers):
#: 4 GiB. The CIFAR-10 JPEG archive (19 MB) extracts 55 MB.
DEFAULT_MAX_ARCHIVE_BYTES = 4 << 30
#: Default cap on an archive's members (files, directories, links): CIFAR-10 has 60,022.
DEFAULT_MAX_ARCHIVE_MEMBERS = 1_000_000
#: Default cap on one image's pixels, width * height, checked before it is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096

# Bump when the layout of cached .npz files changes, so old files are not read.
_CACHE_FORMAT = 1
_CHUNK = 1024
_IGNORED_NAMES = ("__MACOSX",)
# tarfile reads a long-name or pax header into memory whole, before it returns the member it
# belongs to: refuse larger ones from the header block that declares their size.
_MAX_TAR_HEADER_BYTES = 1 << 20
_TAR_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                     tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
# Pillow modes of 16-bit (and 32-bit integer) grey images; PNG stores 16-bit grey as "I;16"
# (as "I" in older Pillows). Their samples are scaled to 8 bits by keeping the high byte.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class _UnsafeMemberError(tarfile.TarError):
    """A tar member would land outside the extraction directory."""


class _ArchiveCapError(Exception):
    """An archive passes a cap on its extracted bytes, its members or a header's size."""


class _CappedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that refuses oversized long-name and pax headers before they are read."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        info = super().frombuf(buf, encoding, errors)
        if info.type in _TAR_HEADER_TYPES and info.size > _MAX_TAR_HEADER_BYTES:
            raise _ArchiveCapError(f"a {info.size:,}-byte long-name or pax header, more than "
                                   f"{_MAX_TAR_HEADER_BYTES:,}")
        return info


class _CappedTarFile(tarfile.TarFile):
    """A ``TarFile`` that refuses archives over caps on their members and extracted bytes.

    Open it with ``_CappedTarFile.open(archive, "r:*", max_bytes=..., max_members=...)``.
    :meth:`checked_members` checks the sizes the headers declare before anything is written;
    every regular file is then also counted while it is written (tarfile's ``makefile`` hook,
    or :meth:`copy_member`), so no header, however crafted, writes past ``max_bytes``.
    """

    tarinfo = _CappedTarInfo

    def __init__(self, *args, max_bytes: int, max_members: int, **kwargs):
        self.max_bytes, self.max_members, self.written = max_bytes, max_members, 0
        super().__init__(*args, **kwargs)

    def _over_bytes(self) -> _ArchiveCapError:
        return _ArchiveCapError(
            f"it extracts more than {self.max_bytes:,} bytes, the cap; pass a larger "
            f"max_archive_bytes to load it")

    def checked_members(self) -> list[tarfile.TarInfo]:
        """All members, from their headers only; refuses the archive as soon as the members
        or the bytes their headers declare (content, names, extended headers) pass a cap."""
        members, declared = [], 0
        for member in self:
            members.append(member)
            if len(members) > self.max_members:
                raise _ArchiveCapError(
                    f"it has more than {self.max_members:,} members, the cap; pass a larger "
                    f"max_archive_members to load it")
            declared += member.size + len(member.name) + len(member.linkname) + sum(
                len(k) + len(v) for k, v in member.pax_headers.items())
            if declared > self.max_bytes:
                raise self._over_bytes()
        return members

    def copy_member(self, member: tarfile.TarInfo, target: str | os.PathLike) -> None:
        """Writes a regular member's content to ``target``, counting it against the cap."""
        with self.extractfile(member) as src, open(target, "wb") as dst:
            while block := src.read(1 << 20):
                self.written += len(block)
                if self.written > self.max_bytes:
                    raise self._over_bytes()
                dst.write(block)

    def makefile(self, tarinfo, targetpath):  # tarfile's hook that writes a regular member
        self.copy_member(tarinfo, targetpath)


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
                      num_workers: int = 0,
                      max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
                      max_archive_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS,
                      max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Dataset:
    """Loads images laid out as ``root/split/class/*.{jpg,jpeg,png}`` or ``root/class/*``.

    ``path`` is a directory or a tar archive (``.tar.gz``, ``.tgz``, ``.tar``, ``.tar.bz2``,
    ``.tar.xz``) of such a tree. An archive is extracted once into
    ``<cache_dir>/<first 16 hex digits of its sha256>/tree``: into a temporary sibling directory
    first, renamed into place only when complete, so an interrupted or failed extraction leaves
    no half-extracted tree behind. Members that would land outside that directory (``..``
    paths, links pointing out, device files) are refused; leading slashes are stripped
    (tarfile's ``"data"`` filter). So that a small archive cannot fill the disk or the memory
    (a "tar bomb"), one that extracts more than ``max_archive_bytes`` or has more than
    ``max_archive_members`` members is refused: the sizes its headers declare are checked
    before anything is written, and the bytes are counted again while they are written. A
    single wrapping top-level directory (as in ``cifar10/train/...``) is looked through.

    Classes are the sub-directories of the split, sorted by name (plain string order, so
    CIFAR-10 gets its usual label order); label ``c`` is the ``c``-th name. Class names are the
    union over all splits found next to ``split``, so ``train`` and ``test`` get the same labels
    even if one split lacks a class. Inside a class folder, files are read in name order;
    sub-directories and files with other extensions are ignored, as are hidden entries.

    Images are decoded by Pillow and converted to ``mode``: ``"RGB"`` (the default; grey files
    become three equal channels, so folders that mix grey and colour files load as one shape)
    or ``"L"`` (8-bit grey, one channel; colour files are converted to luminance). 16-bit grey
    PNGs are scaled to 8 bits (``value >> 8``, so 65535 becomes 255). An image of more than
    ``max_image_pixels`` pixels is refused from its header, before it is decoded (Pillow's own
    ``PIL.Image.MAX_IMAGE_PIXELS`` check still refuses images over twice that limit). All
    images must have the same height and width. The decoded uint8 arrays are cached as an ``.npz``
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
        max_archive_bytes: most bytes an archive may extract (its files, plus their names and
            extended headers); :data:`DEFAULT_MAX_ARCHIVE_BYTES` (4 GiB) by default.
        max_archive_members: most members (files, directories, links) an archive may have;
            :data:`DEFAULT_MAX_ARCHIVE_MEMBERS` (1,000,000) by default.
        max_image_pixels: most pixels (width * height) one image may have;
            :data:`DEFAULT_MAX_IMAGE_PIXELS` (4096 * 4096) by default.

    Returns:
        A ``Dataset`` with ``x`` of shape ``(N, H, W, 3)`` (or ``(N, H, W, 1)`` for
        ``mode="L"``), float32 in ``[0, 1]`` (uint8 values scaled by ``1/255``), named
        ``"<archive or folder name>:<split>"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is neither a directory nor an archive; the archive is corrupt,
            truncated, holds unsafe members or passes ``max_archive_bytes`` or
            ``max_archive_members`` (the archive and the cap are named; nothing is left in the
            cache); the split is missing (or needed but not given); a class folder holds no
            images; an image cannot be decoded or has more than ``max_image_pixels`` pixels
            (the file is named); images differ in size.

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
    for cap, value in (("max_archive_bytes", max_archive_bytes),
                       ("max_archive_members", max_archive_members),
                       ("max_image_pixels", max_image_pixels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{cap} must be a positive int; got {value!r}")
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
        root = _extract_once(path, entry, max_archive_bytes, max_archive_members)
    else:
        raise ValueError(f"{path} is neither a directory nor a tar archive "
                         f"({', '.join(ARCHIVE_SUFFIXES)})")

    split_dir, class_names = _find_classes(root, split, shown=path)
    files, labels = _list_images(split_dir, class_names, shown=path)
    if entry is None and use_cache:
        entry = cache_root / ("dir-" + _listing_key(path, class_names, files))
        if (cached := _read_npz(entry / npz_name)) is not None:
            return _to_dataset(*cached, name)

    x = _decode_all(files, mode, num_workers, max_image_pixels)
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


def _extract_once(archive: Path, entry: Path, max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
                  max_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS) -> Path:
    """Extracts ``archive`` to ``entry/tree`` unless already there; returns ``entry/tree``.

    Refuses (``ValueError``) an archive over ``max_bytes`` or ``max_members`` (see
    :class:`_CappedTarFile`); a failed extraction leaves nothing in ``entry``.
    """
    tree = entry / "tree"
    if tree.is_dir():
        return tree
    entry.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".tree-partial-", dir=entry))
    try:
        try:
            with _CappedTarFile.open(archive, "r:*", max_bytes=max_bytes,
                                     max_members=max_members) as tar:
                _safe_extractall(tar, partial)
        except _ArchiveCapError as e:
            raise ValueError(f"refusing to extract {archive}: {e}") from None
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


def _safe_extractall(tar: _CappedTarFile, dest: Path) -> None:
    """Extracts the members of ``tar`` that stay inside ``dest``, within its caps."""
    members = tar.checked_members()  # nothing is written if the headers pass a cap
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
        return
    # Pythons without extraction filters (before 3.11.4): extract only plain files and
    # directories whose names stay inside dest.
    dest = dest.resolve()
    for member in members:
        target = (dest / member.name).resolve()
        if os.path.isabs(member.name) or not target.is_relative_to(dest):
            raise _UnsafeMemberError(f"{member.name!r} would be extracted outside the target")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            tar.copy_member(member, target)


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


def _decode_file(file: str, mode: str, max_pixels: int) -> np.ndarray:
    """Decodes one image file to a uint8 array in Pillow ``mode``, ``(H, W)`` or ``(H, W, C)``.

    The pixel count is read from the header and checked against ``max_pixels`` before the
    image is decoded. Pillow's own decompression-bomb check is reported the same way: its
    warning is superseded by ``max_pixels``, its error becomes a ``ValueError`` naming the file.
    """
    Image, UnidentifiedImageError = _import_pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                width, height = im.size
                if width * height <= max_pixels:
                    return _to_uint8(Image, im, mode)
    except Image.DecompressionBombError as e:
        raise ValueError(f"refusing to decode image file {file}: {e} (Pillow's "
                         f"PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image file {file}: {e}") from e
    raise ValueError(f"refusing to decode image file {file}: it has {width}x{height} = "
                     f"{width * height:,} pixels, more than max_image_pixels={max_pixels:,}; "
                     f"pass a larger max_image_pixels to load it")


def _to_uint8(Image, im, mode: str) -> np.ndarray:
    """The pixels of the opened image ``im`` in ``mode``, 8 bits per sample."""
    if im.mode in _WIDE_GREY_MODES:  # Pillow's convert would saturate them at 255
        wide = np.asarray(im)
        im = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    if im.mode == mode:
        im.load()
        return np.asarray(im)
    return np.asarray(im.convert(mode))


def _decode_chunk(files: Sequence[str], mode: str,
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decodes image files into one ``(n, H, W, C)`` uint8 array; runs in worker processes."""
    arrays = []
    for f in files:
        a = _decode_file(f, mode, max_pixels)
        if arrays and a.shape != arrays[0].shape:
            raise ValueError(_size_error(files[0], arrays[0].shape, f, a.shape))
        arrays.append(a)
    x = np.stack(arrays)
    return x[..., None] if x.ndim == 3 else x


def _size_error(file_a: str, shape_a, file_b: str, shape_b) -> str:
    return (f"images differ in size: {file_a} is {shape_a[0]}x{shape_a[1]} (height x width) but "
            f"{file_b} is {shape_b[0]}x{shape_b[1]}; resize them to one size first")


def _decode_all(files: list[str], mode: str, num_workers: int,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    if num_workers == 0:
        parts = [_decode_chunk(c, mode, max_pixels) for c in chunks]
    else:
        # spawn, not fork: forking a process that runs JAX's threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
            parts = list(pool.map(_decode_chunk, chunks, [mode] * len(chunks),
                                  [max_pixels] * len(chunks)))
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

