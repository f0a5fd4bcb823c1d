"""Fingerprint files: round trip, integrity, atomicity, clear errors."""

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ipguard_jax as ipg
from ipguard_jax import io as fio


def _largest_file(root: Path) -> Path:
    files = [p for p in root.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _assert_same(a, b):
    for name, array in a.arrays().items():
        other = b.arrays()[name]
        assert array.dtype == other.dtype and array.shape == other.shape, name
        np.testing.assert_array_equal(array, other, err_msg=name)
    assert a.metadata == b.metadata


def test_round_trip(tmp_path, owner_fingerprints):
    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    loaded = ipg.load(path)
    _assert_same(owner_fingerprints, loaded)
    assert loaded.digest() == owner_fingerprints.digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp"]  # no staging left behind


def test_flipped_byte_in_the_arrays_is_detected(tmp_path, owner_fingerprints):
    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    version = (path / "CURRENT").read_text()
    victim = _largest_file(path / version / "arrays")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(ipg.FingerprintFileError, match="corrupt|modified"):
        ipg.load(path)


def test_edited_metadata_is_detected(tmp_path, owner_fingerprints):
    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    manifest_path = path / (path / "CURRENT").read_text() / "fingerprints.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metadata"]["config"]["k"] = 1.0
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ipg.FingerprintFileError, match="does not match its sha256"):
        ipg.load(path)


def test_overwrite_rules(tmp_path, owner_fingerprints):
    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ipg.save(owner_fingerprints, path)
    subset = owner_fingerprints[:10]
    ipg.save(subset, path, overwrite=True)
    _assert_same(subset, ipg.load(path))
    assert len(list(path.iterdir())) == 2  # CURRENT and one version: the old one is gone
    (tmp_path / "plain").mkdir()
    with pytest.raises(ipg.FingerprintFileError, match="not a fingerprint directory"):
        ipg.save(owner_fingerprints, tmp_path / "plain", overwrite=True)


def test_failed_save_leaves_nothing(tmp_path, owner_fingerprints, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fio, "_write_text_atomic", boom)
    with pytest.raises(OSError, match="disk full"):
        ipg.save(owner_fingerprints, tmp_path / "fp")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    monkeypatch.setattr(fio, "_write_text_atomic", boom)
    with pytest.raises(OSError, match="disk full"):
        ipg.save(owner_fingerprints[:5], path, overwrite=True)
    monkeypatch.undo()
    _assert_same(owner_fingerprints, ipg.load(path))  # the old set is intact
    assert len(list(path.iterdir())) == 2


def test_load_errors(tmp_path, owner_fingerprints):
    with pytest.raises(FileNotFoundError, match="no fingerprint file"):
        ipg.load(tmp_path / "missing")
    (tmp_path / "afile").write_text("hello")
    with pytest.raises(ipg.FingerprintFileError, match="is a file"):
        ipg.load(tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ipg.FingerprintFileError, match="CURRENT file is missing"):
        ipg.load(tmp_path / "empty")

    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    manifest_path = path / (path / "CURRENT").read_text() / "fingerprints.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ipg.FingerprintFileError, match="format version 99.*upgrade"):
        ipg.load(path)
    manifest_path.write_text("{not json")
    with pytest.raises(ipg.FingerprintFileError, match="corrupt"):
        ipg.load(path)
    manifest_path.unlink()
    with pytest.raises(ipg.FingerprintFileError, match="missing"):
        ipg.load(path)


def test_missing_arrays_part(tmp_path, owner_fingerprints):
    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    arrays = path / (path / "CURRENT").read_text() / "arrays"
    for p in sorted(arrays.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    arrays.rmdir()
    with pytest.raises(ipg.FingerprintFileError, match="arrays directory is missing"):
        ipg.load(path)


def test_no_pickle_anywhere(tmp_path, owner_fingerprints):
    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    for p in path.rglob("*"):
        if p.is_file():
            assert not p.read_bytes().startswith(b"\x80"), f"{p} looks like a pickle"
    assert os.path.isdir(path)


def test_save_rejects_bad_arguments(tmp_path, owner_fingerprints):
    with pytest.raises(TypeError, match="must be Fingerprints"):
        ipg.save({"x": 1}, tmp_path / "fp")
    with pytest.raises(FileNotFoundError, match="parent directory"):
        ipg.save(owner_fingerprints, tmp_path / "no" / "such" / "fp")
    odd = ipg.Fingerprints(**owner_fingerprints.arrays(), metadata={"when": object()})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        ipg.save(odd, tmp_path / "fp")
    assert list(tmp_path.iterdir()) == []


def test_load_detects_inconsistent_parts(tmp_path, owner_fingerprints):
    path = ipg.save(owner_fingerprints, tmp_path / "fp")
    version = (path / "CURRENT").read_text()
    manifest_path = path / version / "fingerprints.json"
    original = manifest_path.read_text()

    manifest = json.loads(original)
    manifest["arrays"]["labels"]["shape"] = [99]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ipg.FingerprintFileError, match="array 'labels' has dtype"):
        ipg.load(path)
    manifest = json.loads(original)
    del manifest["arrays"]["steps"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ipg.FingerprintFileError, match="lists arrays"):
        ipg.load(path)
    manifest_path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ipg.FingerprintFileError, match="not an ipguard_jax.fingerprints"):
        ipg.load(path)
    manifest_path.write_text(original)
    (path / "CURRENT").write_text("v-gone")
    with pytest.raises(ipg.FingerprintFileError, match="'v-gone' named by CURRENT is missing"):
        ipg.load(path)


# -- hostile files: bounded reads and allocations, regular files only ---------------------------

def _small_set(n=4):
    return ipg.Fingerprints(x=np.zeros((n, 3), np.float32), labels=np.arange(n) % 2,
                            i=np.arange(n) % 2, j=(np.arange(n) + 1) % 2, loss=np.zeros(n),
                            converged=np.ones(n, bool), steps=np.ones(n, np.int32),
                            source=np.arange(n))


def _manifest_path(path: Path) -> Path:
    return path / (path / "CURRENT").read_text() / "fingerprints.json"


def _load_error(path, seconds=5.0, **kwargs):
    """The error ``ipg.load`` raises, asserting it returns within ``seconds`` (no hang)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = ipg.load(path, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"load({path}) still running after {seconds} s"
    assert "error" in outcome, "load succeeded"
    assert time.perf_counter() - start < seconds
    return outcome["error"]


@pytest.mark.parametrize("labels_shape", [[4], [0]], ids=["set", "empty-set"])
def test_manifest_declaring_huge_arrays_fails_before_allocating(tmp_path, labels_shape):
    path = ipg.save(_small_set(), tmp_path / "fp")
    manifest_path = _manifest_path(path)
    manifest = json.loads(manifest_path.read_text())
    manifest["arrays"]["x"]["shape"] = [100000, 100000, 100]  # 4 TB of float32
    manifest["arrays"]["labels"]["shape"] = labels_shape
    manifest_path.write_text(json.dumps(manifest))
    error = _load_error(path)
    assert isinstance(error, ipg.FingerprintFileError)
    assert re.search(r"take 4,000,000,\d{3},\d{3} bytes .* refusing to allocate", str(error))
    assert str(path) in str(error)


@pytest.mark.parametrize("shape", [[-1, 3], [True, 3], [4.0, 3], "4x3", None])
def test_malformed_array_shapes_are_refused(tmp_path, shape):
    path = ipg.save(_small_set(), tmp_path / "fp")
    manifest_path = _manifest_path(path)
    manifest = json.loads(manifest_path.read_text())
    manifest["arrays"]["x"]["shape"] = shape
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ipg.FingerprintFileError, match="spec of array 'x' is malformed"):
        ipg.load(path)


def test_shapes_are_checked_against_the_store_before_it_restores(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    path = ipg.save(_small_set(), tmp_path / "fp")
    manifest_path = _manifest_path(path)
    manifest = json.loads(manifest_path.read_text())
    manifest["arrays"]["x"]["shape"] = [4, 5]
    manifest_path.write_text(json.dumps(manifest))

    def no_restore(*args, **kwargs):
        raise AssertionError("restored before the shapes were checked")

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", no_restore)
    with pytest.raises(ipg.FingerprintFileError,
                       match=r"array 'x' has dtype <f4 and shape \[4, 3\], the manifest says "
                             r"<f4 and \[4, 5\]"):
        ipg.load(path)


def _replace_with(victim: Path, kind: str) -> None:
    victim.unlink()
    if kind == "fifo":
        os.mkfifo(victim)
    else:
        os.symlink("/dev/zero", victim)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
@pytest.mark.parametrize("part", ["array file", "manifest", "CURRENT"])
def test_special_files_are_refused_without_hanging(tmp_path, kind, part):
    path = ipg.save(_small_set(), tmp_path / "fp")
    version_dir = path / (path / "CURRENT").read_text()
    victim = {"array file": _largest_file(version_dir / "arrays"),
              "manifest": version_dir / "fingerprints.json", "CURRENT": path / "CURRENT"}[part]
    _replace_with(victim, kind)
    error = _load_error(path)
    assert isinstance(error, ipg.FingerprintFileError), repr(error)
    assert str(path) in str(error)
    assert re.search("FIFO|symbolic link|not a regular file", str(error)), str(error)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
def test_special_file_as_a_sealed_file_is_refused(tmp_path, kind):
    victim = tmp_path / "owner.sealed"
    victim.touch()
    _replace_with(victim, kind)
    for passphrase in (None, "pw"):
        error = _load_error(victim, passphrase=passphrase)
        assert isinstance(error, ipg.FingerprintFileError), repr(error)
        assert "not a fingerprint" in str(error)


def test_losing_a_race_to_create_the_directory_raises_file_exists(tmp_path, monkeypatch):
    """Two saves of a new set to one path: the one whose rename finds the other's directory
    there raises FileExistsError and leaves the winner's set alone."""
    ours, theirs = _small_set(4), _small_set(2)
    target = tmp_path / "fp"
    real_write = fio._write_version

    def write_then_lose_the_race(fingerprints, version_dir, target_path):
        real_write(fingerprints, version_dir, target_path)
        monkeypatch.setattr(fio, "_write_version", real_write)
        ipg.save(theirs, target)  # another process finishes first

    monkeypatch.setattr(fio, "_write_version", write_then_lose_the_race)
    with pytest.raises(FileExistsError, match=f"{re.escape(str(target))} was created by another"):
        ipg.save(ours, target)
    assert ipg.load(target).digest() == theirs.digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp"]  # no staging left behind
