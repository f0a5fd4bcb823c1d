"""Tests of ipguard_jax.data: the Dataset container and every loader."""

from __future__ import annotations

import gzip
import io
import os
import struct
import sys
import tarfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from ipguard_jax import data
from ipguard_jax.data import Dataset, from_arrays, load_digits, load_image_folder, load_tfds
from ipguard_jax.data import _folder

CIFAR10_ARCHIVE = Path(__file__).parents[1] / ".." / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


# --- Dataset and from_arrays ----------------------------------------------------------------

def _grouped(n_per_class=10, num_classes=3, size=2):
    """A dataset whose examples come grouped by class, like an image folder."""
    y = np.repeat(np.arange(num_classes, dtype=np.int32), n_per_class)
    x = np.broadcast_to((y / num_classes)[:, None, None, None].astype(np.float32),
                        (len(y), size, size, 1)).copy()
    return Dataset(x, y, tuple(f"c{c}" for c in range(num_classes)), "grouped")


def test_dataset_basics():
    ds = _grouped()
    assert len(ds) == 30
    assert ds.num_classes == 3
    assert ds.image_shape == (2, 2, 1)
    assert ds.class_counts().tolist() == [10, 10, 10]
    assert repr(ds) == "Dataset(name='grouped', len=30, image_shape=(2, 2, 1), num_classes=3)"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=np.zeros((2, 2, 2, 1), np.float64)), TypeError, "x must be a 4-D float32"),
    (dict(x=np.zeros((2, 2, 2), np.float32)), TypeError, "x must be a 4-D float32"),
    (dict(y=np.zeros(2, np.int64)), TypeError, "y must be a 1-D int32"),
    (dict(y=np.zeros(3, np.int32)), ValueError, "same length"),
    (dict(y=np.array([0, 2], np.int32)), ValueError, r"labels must lie in \[0, 2\)"),
    (dict(class_names=["a", "b"]), TypeError, "class_names must be a tuple of str"),
])
def test_dataset_constructor_checks(kwargs, error, match):
    args = dict(x=np.zeros((2, 2, 2, 1), np.float32), y=np.array([0, 1], np.int32),
                class_names=("a", "b"))
    with pytest.raises(error, match=match):
        Dataset(**{**args, **kwargs})


def test_from_arrays_converts():
    ds = from_arrays(np.array([[[0, 255]], [[51, 102]]], np.uint8), [1, 0])
    assert ds.x.dtype == np.float32 and ds.x.shape == (2, 1, 2, 1)
    np.testing.assert_allclose(ds.x[..., 0], [[[0.0, 1.0]], [[0.2, 0.4]]], rtol=1e-6)
    assert ds.y.dtype == np.int32 and ds.y.tolist() == [1, 0]
    assert ds.class_names == ("0", "1")
    assert ds.name == "arrays"

    ds = from_arrays(np.full((3, 4, 4, 3), 0.5), np.array([0, 1, 1], np.int64), ["a", "b", "c"],
                     name="mine")
    assert ds.x.dtype == np.float32 and ds.x.shape == (3, 4, 4, 3)
    assert ds.class_names == ("a", "b", "c") and ds.num_classes == 3
    assert ds.name == "mine"


_X = np.zeros((2, 4, 4, 1), np.float32)
_Y = np.array([0, 1])


@pytest.mark.parametrize("x, y, names, error, match", [
    ([["a", "b"]], _Y, None, TypeError, "x must be a numeric array"),
    (np.zeros((2, 4, 4, 1), np.int64), _Y, None, TypeError, r"x must hold floats .* or uint8"),
    (np.zeros((2, 4, 4, 1), bool), _Y, None, TypeError, "x must hold floats"),
    (np.zeros((2, 16), np.float32), _Y, None, ValueError, "x must be 4-D"),
    (np.zeros((0, 4, 4, 1), np.float32), _Y[:0], None, ValueError, "x is empty"),
    (np.zeros((2, 0, 4, 1), np.float32), _Y, None, ValueError, "empty image axis"),
    (np.full((2, 4, 4, 1), np.nan, np.float32), _Y, None, ValueError,
     "x must be finite; it holds 32 NaN"),
    (np.full((2, 4, 4, 1), np.inf, np.float32), _Y, None, ValueError, "x must be finite"),
    (np.full((2, 4, 4, 1), 255.0), _Y, None, ValueError,
     r"x values must lie in \[0, 1\]; got values in \[255, 255\] .*divide by 255"),
    (np.full((2, 4, 4, 1), -0.5), _Y, None, ValueError, r"x values must lie in \[0, 1\]"),
    (np.zeros((2, 3, 32, 32), np.float32), _Y, None, ValueError, "channels-first"),
    (_X, np.array([0.0, 1.0]), None, TypeError, "y must hold integer labels"),
    (_X, np.array([True, False]), None, TypeError, "y must hold integer labels"),
    (_X, np.eye(2, dtype=np.int32), None, ValueError, "y must be 1-D .*one-hot"),
    (_X, np.array([0, 1, 1]), None, ValueError, "same length; got 2 images and 3 labels"),
    (_X, np.array([0, -1]), None, ValueError, "y must be non-negative"),
    (_X, np.array([0, 2]), ["a", "b"], ValueError,
     r"label 2, but class_names has only 2 names.*\[0, 2\)"),
    (_X, _Y, "ab", TypeError, "class_names must be a sequence of str"),
    (_X, _Y, ["a", 1], TypeError, "class_names must hold only str"),
    (_X, _Y, ["a", "a"], ValueError, "class_names must be unique"),
])
def test_from_arrays_rejects(x, y, names, error, match):
    with pytest.raises(error, match=match):
        from_arrays(x, y, names)


def test_subset():
    ds = _grouped()
    sub = ds.subset([0, 29, 10])
    assert sub.y.tolist() == [0, 2, 1]
    assert sub.class_names == ds.class_names and sub.name == ds.name
    assert len(ds.subset(ds.y == 1)) == 10
    assert ds.subset([], name="none").name == "none"
    with pytest.raises(ValueError, match="boolean mask for indices must have shape"):
        ds.subset(np.ones(3, bool))
    with pytest.raises(TypeError, match="indices must be a 1-D array of integers"):
        ds.subset([0.5])


def test_split_shuffles_with_a_fixed_seed():
    ds = _grouped(n_per_class=20)
    a, b = ds.split(0.25, seed=3)
    assert (len(a), len(b)) == (15, 45)
    # Grouped input, yet both parts hold every class.
    assert (a.class_counts() > 0).all() and (b.class_counts() > 0).all()
    a2, _ = ds.split(0.25, seed=3)
    np.testing.assert_array_equal(a.y, a2.y)
    np.testing.assert_array_equal(a.x, a2.x)
    a3, _ = ds.split(0.25, seed=4)
    assert not np.array_equal(a.x[:, 0, 0, 0], a3.x[:, 0, 0, 0])
    assert a.name == "grouped[part 0]" and b.name == "grouped[part 1]"


def test_split_sizes_and_fractions():
    ds = _grouped(n_per_class=11)  # 33 examples
    parts = ds.split([10, 5, 3], seed=0)
    assert [len(p) for p in parts] == [10, 5, 3]
    parts = ds.split([0.5, 0.25, 0.25], seed=0)
    assert [len(p) for p in parts] == [16, 8, 9]  # the last part takes the remainder
    assert [len(p) for p in ds.split([0.5, 0.25], seed=0)] == [16, 8]

    # Parts are disjoint: mark each example by its index.
    marked = Dataset(np.arange(33, dtype=np.float32).reshape(33, 1, 1, 1) / 33, ds.y,
                     ds.class_names)
    parts = marked.split([0.5, 0.25, 0.25], seed=1)
    ids = np.concatenate([np.rint(p.x.ravel() * 33) for p in parts])
    assert sorted(ids.tolist()) == list(range(33))


@pytest.mark.parametrize("sizes, error, match", [
    (1.5, ValueError, r"single fraction for sizes must lie in \(0, 1\)"),
    ([20, 20], ValueError, "sizes sum to 40, more than the 30 examples"),
    ([5, -1], ValueError, "non-negative"),
    ([0.7, 0.7], ValueError, "sum to at most 1"),
    ([1, 0.5], TypeError, "only ints or only floats"),
    ("ab", TypeError, "sizes must be a float"),
    ([], TypeError, "sizes must be a float"),
])
def test_split_rejects(sizes, error, match):
    with pytest.raises(error, match=match):
        _grouped().split(sizes)


def test_shuffle():
    ds = _grouped()
    shuffled = ds.shuffle(seed=0)
    assert sorted(shuffled.y.tolist()) == sorted(ds.y.tolist())
    assert shuffled.y.tolist() != ds.y.tolist()
    np.testing.assert_array_equal(shuffled.y, ds.shuffle(seed=0).y)


# --- digits ---------------------------------------------------------------------------------

def test_load_digits():
    ds = load_digits()
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.y.dtype == np.int32 and sorted(set(ds.y.tolist())) == list(range(10))
    assert ds.class_names == tuple(str(c) for c in range(10))
    assert ds.name == "digits"
    # Values are multiples of 1/16: the raw pixels are 0..16.
    np.testing.assert_allclose(ds.x * 16, np.round(ds.x * 16), atol=1e-5)


# --- image folders --------------------------------------------------------------------------

CLASSES = ("dog", "cat", "bird")  # not sorted on purpose
SORTED_CLASSES = ("bird", "cat", "dog")


def _colour(class_name: str, i: int) -> tuple[int, int, int]:
    """A distinct colour per class and image, so tests can check which file landed where."""
    c = SORTED_CLASSES.index(class_name)
    return (40 * c + 10, 5 * i, 200)


def _write_image(file: Path, colour, size=(5, 6), mode="RGB"):
    from PIL import Image

    file.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(file)


def _make_tree(root: Path, splits=("train", "test"), n=3, ext="png", size=(5, 6)) -> Path:
    for split in splits:
        base = root / split if split else root
        for class_name in CLASSES:
            for i in range(n):
                _write_image(base / class_name / f"{i:03d}.{ext}", _colour(class_name, i), size)
    return root


def _make_archive(tree: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=child.name)
    return archive


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache root, also set as the environment default."""
    root = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(root))
    return root


def test_image_folder_with_splits(tmp_path, cache):
    tree = _make_tree(tmp_path / "tree")
    ds = load_image_folder(tree, "train")
    assert ds.x.shape == (9, 6, 5, 3) and ds.x.dtype == np.float32
    assert ds.class_names == SORTED_CLASSES
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.name == "tree:train"
    for k in range(len(ds)):
        name = ds.class_names[ds.y[k]]
        expected = np.array(_colour(name, k % 3), np.float32) / 255  # PNG is lossless
        np.testing.assert_allclose(ds.x[k], np.broadcast_to(expected, (6, 5, 3)), rtol=1e-6)
    assert len(load_image_folder(tree, "test")) == 9


def test_image_folder_without_split_and_with_wrapper(tmp_path, cache):
    flat = _make_tree(tmp_path / "flat", splits=(None,), n=2)
    ds = load_image_folder(flat)
    assert len(ds) == 6 and ds.class_names == SORTED_CLASSES
    # A single wrapping directory, as archives often have, is looked through.
    _make_tree(tmp_path / "wrapped" / "cifar", n=2)
    assert len(load_image_folder(tmp_path / "wrapped", "test")) == 6


def test_image_folder_grey_mode_extensions_and_ignored_files(tmp_path, cache):
    tree = tmp_path / "tree"
    _write_image(tree / "a" / "1.JPG", (200, 0, 0), mode="L")
    _write_image(tree / "a" / "2.jpeg", (100, 0, 0))
    _write_image(tree / "b" / "3.png", (0, 0, 0))
    (tree / "b" / "notes.txt").write_text("not an image")
    (tree / "b" / ".hidden.png").write_bytes(b"not an image either")
    (tree / "b" / "nested").mkdir()
    (tree / ".DS_Store").write_bytes(b"")
    grey = load_image_folder(tree, mode="L")
    assert grey.x.shape == (3, 6, 5, 1) and grey.y.tolist() == [0, 0, 1]
    assert abs(float(grey.x[0].mean()) - 200 / 255) < 0.02  # JPEG is lossy
    rgb = load_image_folder(tree)
    assert rgb.x.shape == (3, 6, 5, 3)
    # A grey file becomes three equal channels.
    np.testing.assert_array_equal(rgb.x[0, ..., 0], rgb.x[0, ..., 2])


def test_image_folder_labels_agree_across_splits(tmp_path, cache):
    tree = _make_tree(tmp_path / "tree", n=1)
    for f in (tree / "test" / "cat").iterdir():
        f.unlink()
    (tree / "test" / "cat").rmdir()
    test = load_image_folder(tree, "test")
    assert test.class_names == SORTED_CLASSES  # "cat" is still label 1
    assert test.y.tolist() == [0, 2]


def test_image_folder_archive(tmp_path, cache):
    tree = _make_tree(tmp_path / "tree")
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    archive = _make_archive(tree, archive_dir / "pets.tgz")
    ds = load_image_folder(archive, "train")
    expected = load_image_folder(tree, "train", use_cache=False)
    np.testing.assert_array_equal(ds.x, expected.x)
    np.testing.assert_array_equal(ds.y, expected.y)
    assert ds.class_names == SORTED_CLASSES and ds.name == "pets.tgz:train"
    # Extracted under the cache root, keyed by content; nothing next to the archive.
    assert [p.name for p in archive_dir.iterdir()] == ["pets.tgz"]
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith("dir-")]
    assert entry.name == _folder._sha256(archive)[:16]
    assert (entry / "tree" / "train" / "cat").is_dir()
    assert (entry / "train-RGB-v1.npz").is_file()
    assert not [p for p in entry.iterdir() if p.name.startswith(".")]


def test_image_folder_second_load_reads_the_npz_cache(tmp_path, cache, monkeypatch):
    tree = _make_tree(tmp_path / "tree")
    archive = _make_archive(tree, tmp_path / "pets.tar.gz")
    first_archive = load_image_folder(archive, "test")
    first_dir = load_image_folder(tree, "test")

    def fail(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(_folder, "_decode_chunk", fail)
    np.testing.assert_array_equal(load_image_folder(archive, "test").x, first_archive.x)
    again = load_image_folder(tree, "test")
    np.testing.assert_array_equal(again.x, first_dir.x)
    assert again.class_names == first_dir.class_names
    with np.load(cache / _folder._sha256(archive)[:16] / "test-RGB-v1.npz",
                 allow_pickle=False) as z:
        assert z["x"].dtype == np.uint8  # cached as bytes, 4x smaller than float32
    # Another mode is another cache file, so it is decoded.
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(tree, "test", mode="L")


def test_image_folder_directory_cache_follows_changes(tmp_path, cache):
    tree = _make_tree(tmp_path / "tree", n=1)
    before = load_image_folder(tree, "train")
    target = tree / "train" / "cat" / "000.png"
    _write_image(target, (1, 2, 3))
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, surely
    after = load_image_folder(tree, "train")
    assert not np.array_equal(before.x, after.x)
    np.testing.assert_allclose(after.x[1, 0, 0], np.array([1, 2, 3]) / 255, rtol=1e-6)


def test_image_folder_without_cache_writes_nothing(tmp_path):
    tree = _make_tree(tmp_path / "tree", n=1)
    cache_dir = tmp_path / "cache"
    load_image_folder(tree, "train", cache_dir=cache_dir, use_cache=False)
    assert not cache_dir.exists()


def test_image_folder_cache_write_failure_warns(tmp_path, monkeypatch):
    tree = _make_tree(tmp_path / "tree", n=1)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.warns(RuntimeWarning, match="could not cache decoded images"):
        ds = load_image_folder(tree, "train", cache_dir=tmp_path / "cache")
    assert len(ds) == 3
    assert not list((tmp_path / "cache").rglob("*.npz"))


def test_image_folder_worker_processes(tmp_path):
    tree = _make_tree(tmp_path / "tree", n=2)
    ds = load_image_folder(tree, "train", num_workers=2, use_cache=False)
    serial = load_image_folder(tree, "train", num_workers=0, use_cache=False)
    np.testing.assert_array_equal(ds.x, serial.x)


# --- image folder errors --------------------------------------------------------------------

def test_image_folder_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder or archive not found: .*nowhere"):
        load_image_folder(tmp_path / "nowhere")


def test_image_folder_not_a_directory_or_archive(tmp_path):
    file = tmp_path / "images.zip"
    file.write_bytes(b"PK")
    with pytest.raises(ValueError, match="neither a directory nor a tar archive"):
        load_image_folder(file)


def _assert_cache_clean(cache: Path):
    """No tree, partial directory or empty entry is left in the cache."""
    assert not cache.exists() or not list(cache.iterdir())


def test_image_folder_garbage_archive(tmp_path, cache):
    archive = tmp_path / "garbage.tar.gz"
    archive.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(ValueError, match="cannot read archive .*garbage.tar.gz: corrupt or trunc"):
        load_image_folder(archive)
    _assert_cache_clean(cache)


def test_image_folder_truncated_archive(tmp_path, cache):
    full = _make_archive(_make_tree(tmp_path / "tree", n=20), tmp_path / "full.tar.gz")
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image_folder(archive, "train")
    _assert_cache_clean(cache)


def test_image_folder_interrupted_extraction_leaves_nothing(tmp_path, cache, monkeypatch):
    archive = _make_archive(_make_tree(tmp_path / "tree", n=1), tmp_path / "a.tar.gz")
    real_extract = _folder._safe_extractall

    def interrupted(tar, dest):
        real_extract(tar, dest)  # everything written, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(_folder, "_safe_extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image_folder(archive, "train")
    _assert_cache_clean(cache)
    monkeypatch.setattr(_folder, "_safe_extractall", real_extract)
    assert len(load_image_folder(archive, "train")) == 3


@pytest.mark.parametrize("member, link_to", [("../evil.png", None), ("link", "../../evil.png"),
                                             ("abs-link", "/etc/passwd")])
def test_image_folder_refuses_path_traversal(tmp_path, cache, member, link_to):
    archive = tmp_path / "sub" / "evil.tar.gz"
    archive.parent.mkdir()
    payload = b"x" * 10
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if link_to is None:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        else:
            info.type, info.linkname = tarfile.SYMTYPE, link_to
            tar.addfile(info)
    with pytest.raises(ValueError, match="refusing to extract .*unsafe member"):
        load_image_folder(archive)
    _assert_cache_clean(cache)
    assert not (tmp_path / "sub" / "evil.png").exists()
    assert not (cache.parent / "evil.png").exists()


def test_image_folder_extraction_without_tar_filters(tmp_path, cache, monkeypatch):
    """Pythons before 3.11.4 lack tarfile's filters; the fallback still refuses escapes."""
    monkeypatch.delattr(tarfile, "data_filter")
    archive = _make_archive(_make_tree(tmp_path / "tree", n=1), tmp_path / "ok.tar.gz")
    assert len(load_image_folder(archive, "train")) == 3
    evil = tmp_path / "sub" / "evil.tar.gz"
    evil.parent.mkdir()
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../evil.png")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="refusing to extract .*unsafe member"):
        load_image_folder(evil)
    assert not (tmp_path / "sub" / "evil.png").exists()
    assert [p.name for p in cache.iterdir()] == [_folder._sha256(archive)[:16]]


def test_image_folder_missing_split(tmp_path, cache):
    tree = _make_tree(tmp_path / "tree", n=1)
    with pytest.raises(ValueError, match=r"split 'valid' not found .*\['test', 'train'\]"):
        load_image_folder(tree, "valid")
    with pytest.raises(ValueError, match=r"has split directories \['test', 'train'\]; pass split="):
        load_image_folder(tree)
    flat = _make_tree(tmp_path / "flat", splits=(None,), n=1)
    with pytest.raises(ValueError, match="no split level; pass split=None"):
        load_image_folder(flat, "train")


def test_image_folder_empty_class_folder(tmp_path, cache):
    tree = _make_tree(tmp_path / "tree", n=1)
    (tree / "train" / "emu").mkdir()
    (tree / "train" / "emu" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="class folder 'emu' .* holds no images"):
        load_image_folder(tree, "train")


def test_image_folder_no_images(tmp_path, cache):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="found no images in"):
        load_image_folder(tmp_path / "empty")


@pytest.mark.parametrize("content", [b"not a png at all", "truncated"])
def test_image_folder_corrupt_image(tmp_path, cache, content):
    tree = _make_tree(tmp_path / "tree", n=1, ext="jpg", size=(64, 64))
    bad = tree / "train" / "cat" / "broken.jpg"
    if content == "truncated":
        content = (tree / "train" / "cat" / "000.jpg").read_bytes()[:300]
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="cannot decode image file .*cat.broken.jpg"):
        load_image_folder(tree, "train")


def test_image_folder_images_of_different_sizes(tmp_path, cache):
    tree = _make_tree(tmp_path / "tree", n=1)
    _write_image(tree / "train" / "cat" / "big.png", (0, 0, 0), size=(7, 9))
    with pytest.raises(ValueError, match=r"images differ in size: .* is 6x5 .*big.png is 9x7"):
        load_image_folder(tree, "train")


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="CMYK"), "mode must be 'RGB' or 'L'"),
    (dict(split="../train"), "split must be the name of one directory"),
    (dict(split="train", num_workers=-1), "num_workers must be a non-negative int"),
])
def test_image_folder_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_image_folder(tmp_path, **kwargs)


# --- hostile archives and images: caps on bytes, members and pixels ---------------------------

def _bomb(archive: Path, size: int, name="train/cat/0.png", count=1) -> Path:
    """A .tar.gz of ``count`` members of ``size`` zero bytes each: a tiny file that expands."""
    with tarfile.open(archive, "w:gz") as tar:
        for k in range(count):
            info = tarfile.TarInfo(f"{name}.{k}" if count > 1 else name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return archive


@pytest.mark.parametrize("filters", [True, False], ids=["tar-filters", "no-tar-filters"])
def test_image_folder_refuses_an_archive_over_the_byte_cap(tmp_path, cache, monkeypatch,
                                                           filters):
    if not filters:  # Pythons before 3.11.4 extract through the fallback
        monkeypatch.delattr(tarfile, "data_filter")
    archive = _bomb(tmp_path / "bomb.tar.gz", 1 << 20)  # 1 MiB of zeros in about 1 kB
    assert archive.stat().st_size < 10_000
    with pytest.raises(ValueError, match=r"refusing to extract .*bomb.tar.gz: it extracts more "
                                         r"than 100,000 bytes, the cap; pass a larger "
                                         r"max_archive_bytes"):
        load_image_folder(archive, "train", max_archive_bytes=100_000)
    _assert_cache_clean(cache)


def test_image_folder_counts_bytes_while_extracting(tmp_path, cache, monkeypatch):
    """A header that lies about its size (here: no header check at all) is caught by the
    count of bytes actually written, and the partial tree is removed."""
    monkeypatch.setattr(_folder._CappedTarFile, "checked_members", lambda tar: list(tar))
    archive = _bomb(tmp_path / "bomb.tar.gz", 300_000)
    with pytest.raises(ValueError, match=r"refusing to extract .*bomb.tar.gz: it extracts more "
                                         r"than 100,000 bytes"):
        load_image_folder(archive, "train", max_archive_bytes=100_000)
    _assert_cache_clean(cache)


def test_image_folder_refuses_an_archive_over_the_member_cap(tmp_path, cache):
    archive = _bomb(tmp_path / "many.tar.gz", 0, count=20)
    with pytest.raises(ValueError, match=r"refusing to extract .*many.tar.gz: it has more than "
                                         r"10 members, the cap; pass a larger "
                                         r"max_archive_members"):
        load_image_folder(archive, "train", max_archive_members=10)
    _assert_cache_clean(cache)


def test_image_folder_refuses_a_huge_long_name_header(tmp_path, cache):
    """tarfile would read a 2 GiB GNU long-name header into memory whole."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 2 << 30
    archive = tmp_path / "longname.tar.gz"
    with gzip.open(archive, "wb") as f:
        f.write(info.tobuf(tarfile.GNU_FORMAT) + bytes(1 << 16))
    with pytest.raises(ValueError, match=r"refusing to extract .*longname.tar.gz: a "
                                         r"2,147,483,648-byte long-name or pax header"):
        load_image_folder(archive, "train")
    _assert_cache_clean(cache)


def test_image_folder_default_caps_load_a_normal_archive(tmp_path, cache):
    archive = _make_archive(_make_tree(tmp_path / "tree", n=2), tmp_path / "ok.tar.gz")
    assert len(load_image_folder(archive, "train")) == 6
    assert _folder.DEFAULT_MAX_ARCHIVE_BYTES == 4 << 30
    assert _folder.DEFAULT_MAX_ARCHIVE_MEMBERS == 1_000_000


def _png(file: Path, width: int, height: int) -> Path:
    """A valid 1-bit grey PNG of ``width x height`` zero pixels: small on disk however large."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return file


@pytest.mark.parametrize("size, kwargs, match", [
    # Over the default cap (and over Pillow's warning threshold, which must not escape).
    ((10_000, 10_000), {}, r"10000x10000 = 100,000,000 pixels, more than "
                           r"max_image_pixels=16,777,216; pass a larger max_image_pixels"),
    ((300, 300), dict(max_image_pixels=10_000), r"more than max_image_pixels=10,000"),
    # Under a raised cap but over twice Pillow's limit: Pillow's error, with the file named.
    ((20_000, 20_000), dict(max_image_pixels=10**9), r"could be decompression bomb"),
])
def test_image_folder_refuses_images_over_the_pixel_cap(tmp_path, cache, size, kwargs, match):
    tree = _make_tree(tmp_path / "tree", n=1)
    big = _png(tree / "train" / "cat" / "big.png", *size)
    assert big.stat().st_size < 100_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes
        with pytest.raises(ValueError, match=rf"refusing to decode image file .*big.png: .*"
                                             rf"{match}"):
            load_image_folder(tree, "train", **kwargs)


def test_image_folder_pixel_cap_allows_images_within_it(tmp_path, cache):
    tree = _make_tree(tmp_path / "tree", n=1, size=(5, 6))
    assert len(load_image_folder(tree, "train", max_image_pixels=30)) == 3
    with pytest.raises(ValueError, match="more than max_image_pixels=29"):
        load_image_folder(tree, "train", max_image_pixels=29, use_cache=False)


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_image_folder_scales_16_bit_png_to_8_bits(tmp_path, cache, mode, channels):
    from PIL import Image

    tree = tmp_path / "tree"
    for name, value in (("half", 32768), ("full", 65535), ("low", 255)):
        (tree / name).mkdir(parents=True)
        Image.fromarray(np.full((4, 5), value, np.uint16)).save(tree / name / "0.png")
    with Image.open(tree / "half" / "0.png") as im:
        assert im.mode.startswith("I")  # really 16-bit
    ds = load_image_folder(tree, mode=mode)
    assert ds.x.shape == (3, 4, 5, channels)
    expected = {"half": 128 / 255, "full": 1.0, "low": 0.0}  # value >> 8, then / 255
    for k, name in enumerate(ds.class_names):
        np.testing.assert_allclose(ds.x[k], expected[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("cap", ["max_archive_bytes", "max_archive_members",
                                 "max_image_pixels"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_image_folder_bad_caps(tmp_path, cap, value):
    with pytest.raises(ValueError, match=f"{cap} must be a positive int"):
        load_image_folder(tmp_path, **{cap: value})


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_ARCHIVE.exists(), reason=f"needs {CIFAR10_ARCHIVE}")
def test_cifar10_archive(tmp_path):
    test = load_image_folder(CIFAR10_ARCHIVE, "test", cache_dir=tmp_path)
    assert test.x.shape == (10000, 32, 32, 3)
    assert test.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                "horse", "ship", "truck")
    assert test.class_counts().tolist() == [1000] * 10
    assert 0.3 < float(test.x.mean()) < 0.7
    start = time.perf_counter()
    again = load_image_folder(CIFAR10_ARCHIVE, "test", cache_dir=tmp_path)
    assert time.perf_counter() - start < 2.0  # from the npz cache
    np.testing.assert_array_equal(again.x, test.x)
    train = load_image_folder(CIFAR10_ARCHIVE, "train", cache_dir=tmp_path)
    assert train.x.shape == (50000, 32, 32, 3) and train.class_names == test.class_names
    assert train.class_counts().tolist() == [5000] * 10


# --- TFDS -----------------------------------------------------------------------------------

def test_load_tfds_without_tfds_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'ipguard-jax\[data\]'"):
        load_tfds("mnist", "train")


def test_load_tfds_bad_method():
    with pytest.raises(ValueError, match="method must be"):
        load_tfds("mnist", "train", method="torch")


@pytest.mark.parametrize("method", ["auto", "data_source"])
def test_load_tfds_mock_mnist(method):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7):
        ds = load_tfds("mnist", "train", method=method)
    assert ds.x.shape == (7, 28, 28, 1) and ds.x.dtype == np.float32
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert ds.y.dtype == np.int32 and ds.y.min() >= 0 and ds.y.max() < 10
    assert ds.class_names == tuple(str(c) for c in range(10))
    assert ds.name == "tfds:mnist/train"


def test_load_tfds_mock_cifar10():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5):
        ds = load_tfds("cifar10", "test", method="data_source")
    assert ds.x.shape == (5, 32, 32, 3)
    assert len(ds.class_names) == 10


def test_load_tfds_missing_key():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match="no feature 'picture'.*pass image_key="):
            load_tfds("mnist", "train", image_key="picture")


def test_load_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="'mnist' is not prepared .*does not download"):
        load_tfds("mnist", "train", data_dir=tmp_path, method="data_source")


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A real array_record TFDS data set, built offline (a Tensor feature needs no TensorFlow)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)

    class IpgTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(range(7)),
                    "test": self._generate_examples(range(7, 10))}

        def _generate_examples(self, indices):
            for i in indices:
                yield i, {"image": images[i], "label": i % 3}

    data_dir = tmp_path_factory.mktemp("tfds")
    IpgTinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir, images


def test_load_tfds_array_record(tiny_tfds):
    data_dir, images = tiny_tfds
    ds = load_tfds("ipg_tiny_images", "train", data_dir=data_dir, method="data_source")
    assert ds.x.shape == (7, 4, 4, 3) and ds.class_names == ("a", "b", "c")
    # TFDS shuffles examples when preparing; match them by content.
    for x, y in zip(ds.x, ds.y):
        (i,) = [i for i in range(7) if np.array_equal(x, images[i] / np.float32(255))]
        assert y == i % 3
    assert len(load_tfds("ipg_tiny_images", "test", data_dir=data_dir)) == 3
    assert len(load_tfds("ipg_tiny_images", "train[:3]", data_dir=data_dir)) == 3


def test_load_tfds_with_tensorflow():
    pytest.importorskip("tensorflow", reason="method='tf' needs TensorFlow, not installed here")
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = load_tfds("mnist", "test", method="tf")
    assert ds.x.shape == (6, 28, 28, 1) and ds.class_names[0] == "0"
