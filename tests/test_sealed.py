"""Sealed fingerprint files: authenticated encryption, clear refusals, no plaintext points."""

from __future__ import annotations

import builtins
import json
import struct

import numpy as np
import pytest

import ipguard_jax as ipg
from ipguard_jax import io as fio

pytest.importorskip("cryptography")

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    """scrypt at n=2**12 keeps each seal/unseal in milliseconds (load reads n from the file)."""
    monkeypatch.setattr(fio, "SCRYPT_N", 2 ** 12)


def make_fingerprints(n=40, seed=0, shape=(6,)):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, (n, *shape)).astype(np.float32)
    labels = rng.integers(0, 5, n)
    meta = {"config": {"k": 1.5, "num": n}, "classifier": {
        "params_sha256": "ab" * 32, "num_classes": 5, "bounds": [0.0, 1.0],
        "input_shape": list(shape), "dtype": "float32"}}
    return ipg.Fingerprints(x=x, labels=labels, i=(labels + 1) % 5, j=labels,
                            loss=rng.uniform(0, 1, n), converged=np.ones(n, bool),
                            steps=rng.integers(1, 50, n), source=np.arange(n), metadata=meta)


def assert_same(a, b):
    for name, array in a.arrays().items():
        other = b.arrays()[name]
        assert array.dtype == other.dtype and array.shape == other.shape, name
        np.testing.assert_array_equal(array, other, err_msg=name)
    assert a.metadata == b.metadata and a.digest() == b.digest()


def test_round_trip_and_overwrite(tmp_path):
    fp = make_fingerprints()
    path = ipg.save(fp, tmp_path / "fp.sealed", passphrase=PASSPHRASE)
    assert path.is_file() and path.read_bytes().startswith(fio.SEALED_MAGIC)
    assert_same(fp, ipg.load(path, passphrase=PASSPHRASE))
    assert_same(fp, ipg.load(path, passphrase=PASSPHRASE.encode()))  # bytes work too
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ipg.save(fp, path, passphrase=PASSPHRASE)
    other = make_fingerprints(n=7, seed=1)
    ipg.save(other, path, overwrite=True, passphrase="another one")
    assert_same(other, ipg.load(path, passphrase="another one"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp.sealed"]  # no temporary left


def test_fresh_salt_and_nonce_every_time():
    fp = make_fingerprints()
    a, b = fio.seal(fp, PASSPHRASE), fio.seal(fp, PASSPHRASE)
    assert a != b
    assert_same(fio.unseal(a, PASSPHRASE), fio.unseal(b, PASSPHRASE))


def test_wrong_passphrase_is_refused(tmp_path):
    path = ipg.save(make_fingerprints(), tmp_path / "fp.sealed", passphrase=PASSPHRASE)
    with pytest.raises(ipg.FingerprintFileError, match="wrong passphrase"):
        ipg.load(path, passphrase=PASSPHRASE + "!")


def test_tampering_is_refused(tmp_path):
    fp = make_fingerprints()
    blob = fio.seal(fp, PASSPHRASE)
    header_end = len(fio.SEALED_MAGIC) + 4 + struct.unpack_from(">I", blob, 8)[0]
    # every byte of the ciphertext and tag, sampled, and the header's salt are covered
    positions = list(range(header_end, len(blob), max(1, (len(blob) - header_end) // 25)))
    positions.append(len(blob) - 1)
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises(ipg.FingerprintFileError, match="modified or is corrupt"):
            fio.unseal(bytes(bad), PASSPHRASE)
    header = json.loads(blob[12:header_end])
    for edit in ("salt", "cipher", "n"):
        changed = dict(header, kdf=dict(header["kdf"]))
        if edit == "salt":
            changed["kdf"]["salt"] = "00" * 16
        elif edit == "n":
            changed["kdf"]["n"] = 2 ** 40
        else:
            changed["cipher"] = "ROT13"
        raw = json.dumps(changed).encode()
        forged = fio.SEALED_MAGIC + struct.pack(">I", len(raw)) + raw + blob[header_end:]
        with pytest.raises(ipg.FingerprintFileError, match="wrong passphrase|header is corrupt"):
            fio.unseal(forged, PASSPHRASE)
    for cut in (5, 10, header_end - 3, header_end + 5, len(blob) - 1):
        with pytest.raises(ipg.FingerprintFileError):
            fio.unseal(blob[:cut], PASSPHRASE)
    with pytest.raises(ipg.FingerprintFileError, match="modified or is corrupt"):
        fio.unseal(blob + b"\0", PASSPHRASE)
    path = tmp_path / "fp.sealed"
    ipg.save(fp, path, passphrase=PASSPHRASE)
    data = bytearray(path.read_bytes())
    data[-20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ipg.FingerprintFileError, match="modified or is corrupt"):
        ipg.load(path, passphrase=PASSPHRASE)


def test_newer_sealed_format_is_refused():
    blob = fio.seal(make_fingerprints(), PASSPHRASE)
    header_end = 12 + struct.unpack_from(">I", blob, 8)[0]
    header = json.loads(blob[12:header_end])
    raw = json.dumps(dict(header, format_version=99)).encode()
    forged = fio.SEALED_MAGIC + struct.pack(">I", len(raw)) + raw + blob[header_end:]
    with pytest.raises(ipg.FingerprintFileError, match="version 99.*upgrade"):
        fio.unseal(forged, PASSPHRASE)


def test_passphrase_mismatches_with_the_kind_of_file(tmp_path):
    fp = make_fingerprints()
    sealed = ipg.save(fp, tmp_path / "fp.sealed", passphrase=PASSPHRASE)
    with pytest.raises(ipg.FingerprintFileError, match="sealed fingerprint file: pass passphrase"):
        ipg.load(sealed)
    plain = ipg.save(fp, tmp_path / "plain")
    with pytest.raises(ipg.FingerprintFileError, match="without a passphrase"):
        ipg.load(plain, passphrase=PASSPHRASE)
    with pytest.raises(ipg.FingerprintFileError, match="cannot replace it atomically"):
        ipg.save(fp, plain, overwrite=True, passphrase=PASSPHRASE)
    with pytest.raises(ipg.FingerprintFileError, match="cannot replace it atomically"):
        ipg.save(fp, sealed, overwrite=True)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ipg.FingerprintFileError, match="not a sealed fingerprint file"):
        ipg.save(fp, tmp_path / "notes.txt", overwrite=True, passphrase=PASSPHRASE)
    assert (tmp_path / "notes.txt").read_text() == "hello"
    for bad, error in (("", ValueError), (b"", ValueError), (123, TypeError)):
        with pytest.raises(error, match="passphrase"):
            ipg.save(fp, tmp_path / "x.sealed", passphrase=bad)
    assert not (tmp_path / "x.sealed").exists()
    with pytest.raises(TypeError, match="data must be bytes"):
        fio.unseal("not bytes", PASSPHRASE)


def test_sealed_file_holds_no_plaintext(tmp_path):
    fp = make_fingerprints(n=64)
    path = ipg.save(fp, tmp_path / "fp.sealed", passphrase=PASSPHRASE)
    data = path.read_bytes()
    raw = fp.x.tobytes()
    # no 8-byte window of the points (two float32 values) appears in the file
    assert not any(raw[s:s + 8] in data for s in range(0, len(raw) - 8, 4))
    for text in (b"params_sha256", b"ab" * 32, b"config", b"labels"):
        assert text not in data


def test_missing_cryptography_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_cryptography(name, *args, **kwargs):
        if name.startswith("cryptography"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cryptography)
    with pytest.raises(ImportError, match=r"pip install ipguard-jax\[seal\]"):
        ipg.save(make_fingerprints(), tmp_path / "fp.sealed", passphrase=PASSPHRASE)
    assert not (tmp_path / "fp.sealed").exists()
    (tmp_path / "fake.sealed").write_bytes(fio.SEALED_MAGIC + b"\0" * 40)
    with pytest.raises(ImportError, match=r"pip install ipguard-jax\[seal\]"):
        ipg.load(tmp_path / "fake.sealed", passphrase=PASSPHRASE)


def test_bfloat16_points_round_trip():
    import jax.numpy as jnp

    fp = make_fingerprints(n=5)
    arrays = {**fp.arrays(), "x": fp.x.astype(jnp.bfloat16)}
    bf = ipg.Fingerprints(**arrays, metadata=fp.metadata)
    assert_same(bf, fio.unseal(fio.seal(bf, PASSPHRASE), PASSPHRASE))
