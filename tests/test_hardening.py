"""Secrecy of the points, commitments, decoy-interleaved verification and determinism."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ipguard_jax as ipg
from ipguard_jax import fingerprints as fpmod
from ipguard_jax.suspects import HTTPSuspect, SuspectQueryError

NUM_CLASSES = 4
DIM = 8


@pytest.fixture(scope="module")
def owner():
    w = jax.random.normal(jax.random.key(3), (DIM, NUM_CLASSES))
    return ipg.Classifier(lambda p, x: x @ p, w, input_shape=(DIM,))


@pytest.fixture(scope="module")
def fp(owner):
    config = ipg.FingerprintConfig(num=40, k=0.5, init="noise", steps=200, batch_size=64)
    out = ipg.generate(owner, config, key=0, progress=False)
    assert len(out) == 40 and out.converged.all()
    return out


@pytest.fixture(scope="module")
def natural():
    """Owner-supplied natural inputs: quantised to 1/255 like pixels, never a fingerprint."""
    rng = np.random.default_rng(11)
    return (np.round(rng.uniform(0, 1, (400, DIM)) * 255) / 255).astype(np.float32)


# -- secrecy -----------------------------------------------------------------------------------

def point_strings(fingerprints):
    """Ways a point value could be written: rounded, truncated repr, float32 repr."""
    out = set()
    for v in np.asarray(fingerprints.x, np.float64).ravel():
        if abs(v) < 1e-3 or abs(v - round(v, 2)) < 1e-6:
            continue  # values at the bounds (0.0, 1.0) or short ones appear in any text
        out.add(f"{v:.4f}")
        out.add(repr(float(v))[:6])
        out.add(str(np.float32(v))[:6])
    return out


def assert_secret(text, fingerprints, where=""):
    leaked = sorted(s for s in point_strings(fingerprints) if s in text)
    assert not leaked, f"{where}: point values {leaked[:3]} in {text[:300]!r}"


def test_repr_and_str_hide_the_points(fp):
    for text in (repr(fp), str(fp), f"{fp}", f"{fp!r:>20}", repr(fp[:3]), str([fp]),
                 repr(ipg.verify(fp, lambda b: np.zeros(len(b), int))), repr(fp.metadata)):
        assert_secret(text, fp)
    assert "n=40" in repr(fp)


def test_error_messages_hide_the_points(fp, owner, tmp_path):
    arrays = fp.arrays()
    x_nan = fp.x.copy()
    x_nan[3, 2] = np.nan
    x_out = fp.x.copy()
    x_out[0, 0] = 7.0
    bad_calls = [
        lambda: ipg.Fingerprints(**{**arrays, "x": x_nan}, metadata=fp.metadata),
        lambda: ipg.Fingerprints(**{**arrays, "x": x_out}, metadata=fp.metadata),
        lambda: ipg.Fingerprints(**{**arrays, "labels": arrays["labels"] + 9},
                                 metadata=fp.metadata),
        lambda: ipg.Fingerprints(**{**arrays, "labels": arrays["labels"][:5]}),
        lambda: ipg.Fingerprints(**{**arrays, "x": fp.x[:, :, None].astype(np.int32)}),
        lambda: ipg.Fingerprints(**{**arrays, "x": fp.x.astype(str)}),
        lambda: ipg.Fingerprints(**{**arrays, "steps": arrays["loss"] + 0.5}),
        lambda: ipg.matching_rate(fp, lambda b: np.asarray(b)[:, :3]),
        lambda: ipg.matching_rate(fp, lambda b: np.asarray(b)),
        lambda: ipg.matching_rate(fp, lambda b: np.asarray(b)[:-1, :NUM_CLASSES]),
        lambda: ipg.matching_rate(fp, lambda b: np.asarray(b)[:, 0]),
        lambda: ipg.matching_rate(fp, lambda b: np.asarray(b)[:, :1] * np.nan + np.zeros(4)),
        lambda: ipg.matching_rate(fp, ipg.Classifier(lambda p, x: x[:, :3], None, (DIM,))),
        lambda: ipg.matching_rate(fp, owner, decoys=fp.x[:, :3]),
        lambda: ipg.matching_rate(fp, owner, decoys=fp.x + 5),
        lambda: ipg.matching_rate(fp, owner, decoys=fp.x[:2]),
        lambda: ipg.verify_commitment(fp, fp.x.tobytes().hex()[:64] + "zz"),
        lambda: ipg.commit(fp, nonce=fp.x.tobytes()[:8]),
    ]
    messages = []
    for call in bad_calls:
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        messages.append(str(info.value))
    path = ipg.save(fp, tmp_path / "fp")
    manifest = path / (path / "CURRENT").read_text() / "fingerprints.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"format_version": 1', '"format_version": 1,'))
    with pytest.raises(ipg.FingerprintFileError) as info:
        ipg.load(path)
    messages.append(str(info.value))
    for message in messages:
        assert_secret(message, fp, "error message")


def test_progress_and_logs_hide_the_points(owner, capsys, caplog, tmp_path):
    caplog.set_level(logging.DEBUG, logger="ipguard_jax")  # the library's own, at any level
    config = ipg.FingerprintConfig(num=12, k=0.5, init="noise", steps=100)
    out = ipg.generate(owner, config, key=5, progress=True)
    path = ipg.save(out, tmp_path / "fp")
    ipg.verify(ipg.load(path), owner)
    captured = capsys.readouterr()
    assert_secret(captured.out + captured.err, out, "progress output")
    records = [r.getMessage() for r in caplog.records
               if r.name.startswith("ipguard_jax") or r.levelno >= logging.WARNING]
    assert_secret("\n".join(records), out, "log records")


class EchoServer:
    """An API that refuses every request with a validation error echoing the input (as
    FastAPI's 422 does)."""

    def __enter__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                inputs = json.loads(body)["inputs"]
                data = json.dumps({"detail": [{"msg": "field required", "input": inputs}]}
                                  ).encode()
                self.send_response(422)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_http_errors_that_echo_the_query_hide_the_points(fp, tmp_path):
    log = tmp_path / "queries.jsonl"
    with EchoServer() as server:
        suspect = HTTPSuspect(server.url, log_path=log, resume_path=tmp_path / "resume.json")
        with pytest.raises(SuspectQueryError, match="HTTP 422") as info:
            ipg.matching_rate(fp, suspect)
    assert "<num>" in info.value.body
    for text in (str(info.value), info.value.body, repr(suspect), log.read_text(),
                 (tmp_path / "resume.json").read_text()):
        assert_secret(text, fp, "HTTP error")


# -- commitments -------------------------------------------------------------------------------

def reference_commitment(fingerprints, nonce: bytes) -> str:
    """The documented byte layout, written out independently of the library."""
    def field(name, value):
        return struct.pack(">B", len(name)) + name + struct.pack(">Q", len(value)) + value

    def array(a):
        a = np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
        return (f"{a.dtype.name}|{','.join(map(str, a.shape))}\n".encode() + a.tobytes())

    def canonical(v):
        return json.dumps(v, sort_keys=True, separators=(",", ":")).encode()

    meta = fingerprints.metadata
    data = (b"ipguard_jax/fingerprint-commitment/v1\n" + field(b"nonce", nonce)
            + field(b"x", array(fingerprints.x)) + field(b"labels", array(fingerprints.labels))
            + field(b"config", canonical(meta.get("config")))
            + field(b"owner", canonical(meta["classifier"]["params_sha256"])))
    return hashlib.sha256(data).hexdigest()


def with_metadata(fingerprints, metadata):
    return ipg.Fingerprints(**fingerprints.arrays(), metadata=metadata)


def test_commitment_layout_and_binding(fp):
    nonce = ipg.new_nonce()
    c = ipg.commit(fp, nonce)
    assert c == fp.commitment(nonce) == reference_commitment(fp, bytes.fromhex(nonce))
    assert len(c) == 64 and c == c.lower()
    assert ipg.commit(fp) == reference_commitment(fp, b"")
    assert ipg.commit(fp, bytes.fromhex(nonce)) == c  # bytes or hex

    # independent of dict order, of provenance beyond config + owner, of diagnostics
    reordered = json.loads(json.dumps(fp.metadata))
    reordered = {k: reordered[k] for k in reversed(list(reordered))}
    reordered["config"] = {k: reordered["config"][k] for k in reversed(list(reordered["config"]))}
    reordered["created"] = "1999-01-01T00:00:00+00:00"
    reordered["wall_time_s"] = 123.0
    same = ipg.Fingerprints(**{**fp.arrays(), "loss": fp.loss + 1, "steps": fp.steps + 1},
                            metadata=reordered)
    assert ipg.commit(same, nonce) == c

    # binds the points (one ulp), the labels, the dtype, the config, the owner and the nonce
    x = fp.x.copy()
    x[7, 3] = np.nextafter(x[7, 3], np.float32(2))
    labels = fp.labels.copy()
    labels[0] = (labels[0] + 1) % NUM_CLASSES
    meta_k = json.loads(json.dumps(fp.metadata))
    meta_k["config"]["k"] = 0.6
    meta_owner = json.loads(json.dumps(fp.metadata))
    meta_owner["classifier"]["params_sha256"] = "0" * 64
    changed = [
        ipg.Fingerprints(**{**fp.arrays(), "x": x}, metadata=fp.metadata),
        ipg.Fingerprints(**{**fp.arrays(), "labels": labels}, metadata=fp.metadata),
        ipg.Fingerprints(**{**fp.arrays(), "x": fp.x.astype(np.float64)}, metadata=fp.metadata),
        with_metadata(fp, meta_k), with_metadata(fp, meta_owner), fp[:-1],
    ]
    for other in changed:
        assert ipg.commit(other, nonce) != c
        assert not ipg.verify_commitment(other, c, nonce)
    assert ipg.commit(fp, ipg.new_nonce()) != c
    assert ipg.commit(fp) != c


def test_verify_commitment(fp, monkeypatch):
    nonce = ipg.new_nonce()
    c = ipg.commit(fp, nonce)
    assert ipg.verify_commitment(fp, c, nonce)
    assert ipg.verify_commitment(fp, c.upper(), nonce)
    assert not ipg.verify_commitment(fp, c)  # the nonce is needed
    assert not ipg.verify_commitment(fp, c, ipg.new_nonce())
    assert not ipg.verify_commitment(fp, c[:-1] + ("0" if c[-1] != "0" else "1"), nonce)
    calls = []
    real = fpmod.hmac.compare_digest
    monkeypatch.setattr(fpmod.hmac, "compare_digest",
                        lambda a, b: calls.append(1) or real(a, b))
    assert ipg.verify_commitment(fp, c, nonce) and calls  # constant-time comparison
    monkeypatch.undo()
    for bad, error, match in [(None, TypeError, "commitment"),
                              (b"ab" * 32, TypeError, "commitment"),
                              ("xyz", ValueError, "64 hex"), ("g" * 64, ValueError, "64 hex")]:
        with pytest.raises(error, match=match):
            ipg.verify_commitment(fp, bad, nonce)
    for bad, error in [("ab" * 8 + "z", ValueError), ("ab" * 4, ValueError), (b"short", ValueError),
                       (12345, TypeError)]:
        with pytest.raises(error, match="nonce"):
            ipg.commit(fp, bad)
    with pytest.raises(TypeError, match="fingerprints"):
        ipg.commit(fp.arrays())
    assert len(ipg.new_nonce()) == 64 and ipg.new_nonce() != ipg.new_nonce()


def test_commitment_of_a_minimal_set():
    bare = ipg.Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1], loss=[0.0],
                            converged=[True], steps=[3], source=[0])
    nonce = b"\x01" * 16
    assert ipg.verify_commitment(bare, ipg.commit(bare, nonce), nonce)
    assert ipg.commit(bare, nonce) != ipg.commit(
        with_metadata(bare, {"config": {"k": 1.0}}), nonce)


# -- decoys ------------------------------------------------------------------------------------

class EvasiveSuspect:
    """A true copy of the owner that answers at random whenever a whole request consists of
    fingerprints (it recognises them exactly) and honestly otherwise."""

    def __init__(self, owner, fingerprints):
        self.owner = owner
        self.known = {row.tobytes() for row in np.asarray(fingerprints.x)}
        self.rng = np.random.default_rng(0)
        self.batches = []  # (number of fingerprints, batch size, sha256 of the batch)

    def __call__(self, batch):
        batch = np.asarray(batch)
        hits = sum(row.tobytes() in self.known for row in batch)
        self.batches.append((hits, len(batch), hashlib.sha256(batch.tobytes()).hexdigest()))
        if hits == len(batch):
            return self.rng.integers(0, NUM_CLASSES, len(batch))
        return self.owner.predict(batch)


def test_plain_verification_is_fooled_and_interleaved_is_not(owner, fp, natural):
    evasive = EvasiveSuspect(owner, fp)
    plain = ipg.verify(fp, evasive, threshold=0.5, batch_size=16)
    assert plain.matching_rate < 0.6 and not plain.is_copy, plain  # random answers: ~1/4

    evasive = EvasiveSuspect(owner, fp)
    mixed = ipg.verify(fp, evasive, threshold=0.5, batch_size=16, decoys=natural, key=1)
    assert mixed.matching_rate == 1.0 and mixed.is_copy and mixed.num_points == len(fp)
    assert len(evasive.batches) == 5  # 40 fingerprints + 40 decoys in batches of <= 16
    assert sum(h for h, _, _ in evasive.batches) == len(fp)
    assert sum(n for _, n, _ in evasive.batches) == 2 * len(fp)
    assert all(0 < h < n <= 16 for h, n, _ in evasive.batches)  # every batch mixed

    # more decoys per fingerprint, and the rate counts fingerprints only
    evasive = EvasiveSuspect(owner, fp)
    assert ipg.matching_rate(fp, evasive, batch_size=32, decoys=natural, decoy_ratio=3.0,
                             key=2) == 1.0
    assert sum(n for _, n, _ in evasive.batches) == 4 * len(fp)
    assert all(h < n for h, n, _ in evasive.batches)
    assert ipg.matching_rate(fp, owner, decoys=natural, key=0) == 1.0  # Classifier suspects


def test_interleaving_order_is_random_per_call_and_seeded(owner, fp, natural):
    def run(key):
        evasive = EvasiveSuspect(owner, fp)
        labels = ipg.query_labels(fp, evasive, batch_size=16, decoys=natural, key=key)
        np.testing.assert_array_equal(labels, fp.labels)  # in fingerprint order
        return [digest for _, _, digest in evasive.batches]

    assert run(1) == run(1)
    assert run(jax.random.key(4)) == run(jax.random.key(4))
    assert run(1) != run(2)
    assert run(None) != run(None)  # fresh OS randomness
    assert run(np.random.default_rng(3)) == run(np.random.default_rng(3))


class LabelServer:
    """The owner behind a JSON API that notes, per request, how many inputs were fingerprints."""

    def __init__(self, owner, fingerprints):
        self.owner, self.known = owner, {row.tobytes() for row in fingerprints.x}
        self.requests = []

    def __enter__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                x = np.asarray(json.loads(body)["inputs"], np.float32)
                server.requests.append((sum(r.tobytes() in server.known for r in x), len(x)))
                data = json.dumps({"labels": server.owner.predict(x).tolist()}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_every_http_request_mixes_decoys(owner, fp, natural, tmp_path):
    with LabelServer(owner, fp) as server:
        suspect = HTTPSuspect(server.url, batch_size=8, resume_path=tmp_path / "resume.json")
        verdict = ipg.verify(fp, suspect, batch_size=256, decoys=natural, key=3)
        assert verdict.matching_rate == 1.0
        assert len(server.requests) == 10  # 80 queries in requests of at most 8
        assert all(0 < hits < n <= 8 for hits, n in server.requests)
        assert suspect.points_sent == 2 * len(fp)
        assert verdict.num_decoys == len(fp) and f"among {len(fp)} decoys" in str(verdict)
        assert ipg.verify(fp, owner).num_decoys == 0
        half = ipg.verify(fp, owner, decoys=natural, decoy_ratio=0.5, key=3)
        assert half.num_decoys == round(0.5 * len(fp)) and half.matching_rate == 1.0
        # the same key cuts the same requests: a rerun is answered from the resume file
        again = HTTPSuspect(server.url, batch_size=8, resume_path=tmp_path / "resume.json")
        assert ipg.verify(fp, again, decoys=natural, key=3).matching_rate == 1.0
        assert len(server.requests) == 10


def test_decoy_arguments_are_checked(owner, fp, natural):
    cases = [
        (dict(decoys=natural[:, :3]), ValueError, "decoys must have shape"),
        (dict(decoys=natural[:0]), ValueError, "decoys is empty"),
        (dict(decoys=natural * np.nan), ValueError, "decoys contains NaN"),
        (dict(decoys=natural + 2), ValueError, "decoys has values outside"),
        (dict(decoys=(natural * 255).astype(np.uint8)), TypeError, "decoys must be a floating"),
        (dict(decoys=natural[:10]), ValueError, "needs 40 decoys.*decoys has 10"),
        (dict(decoys=natural, decoy_ratio=0.0), ValueError, "decoy_ratio"),
        (dict(decoys=natural, decoy_ratio=float("nan")), ValueError, "decoy_ratio"),
        (dict(decoys=natural, decoy_ratio=True), ValueError, "decoy_ratio"),
        (dict(decoys=natural, decoy_ratio=0.05, batch_size=4), ValueError,
         "every batch needs at least one decoy"),
        (dict(decoy_ratio=1.0), ValueError, "decoy_ratio needs decoys"),
        (dict(decoys=natural, key="seed"), TypeError, "key must be"),
        (dict(decoys=natural, key=-1), ValueError, "key must be"),
        (dict(decoys="natural"), TypeError, "decoys must be a floating"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            ipg.matching_rate(fp, owner, **kwargs)
    # float64 decoys are queried in the points' dtype: requests do not differ by dtype
    seen = []
    ipg.matching_rate(fp, lambda b: seen.append(b.dtype) or owner.predict(b),
                      decoys=natural.astype(np.float64), key=0)
    assert set(seen) == {np.dtype(np.float32)}


# -- determinism -------------------------------------------------------------------------------

def _mlp():
    k1, k2 = jax.random.split(jax.random.key(7))
    params = (jax.random.normal(k1, (DIM, 16)) / 3, jax.random.normal(k2, (16, NUM_CLASSES)))
    return ipg.Classifier(lambda p, x: jnp.tanh(x @ p[0]) @ p[1], params, input_shape=(DIM,))


@pytest.mark.parametrize("loop", ["host", "device"])
def test_same_inputs_give_bit_identical_fingerprints(natural, loop):
    clf = _mlp()
    config = ipg.FingerprintConfig(num=16, k=0.3, steps=60, batch_size=8, keep="all", loop=loop)
    runs = [ipg.generate(clf, config, key=9, data=natural, progress=False) for _ in range(2)]
    for name, a in runs[0].arrays().items():
        b = runs[1].arrays()[name]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert ipg.commit(runs[0]) == ipg.commit(runs[1])  # creation times differ, content not
    other = ipg.generate(clf, config, key=10, data=natural, progress=False)
    assert other.x.tobytes() != runs[0].x.tobytes()
