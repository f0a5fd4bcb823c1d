"""Fingerprint files: round trip, integrity, atomicity, clear errors."""

import json
import os
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
