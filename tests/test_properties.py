"""Property-based tests of the public API: every input works or is refused by name.

Each test draws arguments, some valid and some not (wrong types, shapes and dtypes, empty
arrays, NaN/inf, values outside the bounds, labels out of range, mismatched class counts), and
checks that a call either gives the right answer or raises ``TypeError``/``ValueError`` naming
the bad argument; anything else (another exception, a silently wrong result) fails.
"""

from __future__ import annotations

import collections
import json
import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ipguard_jax as ipg
from ipguard_jax import data
from ipguard_jax import io as fio

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
COUNTS: collections.Counter = collections.Counter()  # cases run, per API
GAPS: collections.Counter = collections.Counter()  # cases that hit a known gap


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and COUNTS:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nhypothesis cases tried: {sum(COUNTS.values())} "
                                f"{dict(sorted(COUNTS.items()))}; known gaps hit: "
                                f"{dict(GAPS) or 'none'}")


def expect_named_error(call, names):
    """Runs ``call``; it must raise TypeError/ValueError whose message names one of ``names``."""
    try:
        call()
    except (TypeError, ValueError) as e:
        message = str(e)
        assert any(name in message for name in names), (names, message)
        return e
    raise AssertionError(f"no error, expected one naming {names}")


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_))


# -- Classifier --------------------------------------------------------------------------------

def _logits(x):
    flat = x.reshape(x.shape[0], -1)
    s = flat.sum(axis=1)
    return jnp.stack([s, -s, jnp.sin(s)], axis=1)


APPLY_FNS = {
    "ok": lambda p, x: _logits(x),
    "1-D": lambda p, x: _logits(x)[:, 0],
    "3-D": lambda p, x: _logits(x)[:, :, None],
    "int": lambda p, x: _logits(x).astype(jnp.int32),
    "one class": lambda p, x: _logits(x)[:, :1],
    "raises": lambda p, x: x @ jnp.ones((999, 2)),
    "not callable": 42,
}

shapes = st.one_of(
    st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    st.lists(st.integers(-2, 4), min_size=0, max_size=3).map(tuple),
    st.lists(st.integers(1, 4), min_size=1, max_size=2).map(lambda s: [np.int64(d) for d in s]),
    st.just((3.5,)), st.just((2.0, 2)), st.just((True, 2)), st.just("33"), st.just(3),
    st.just(None), st.just(()),
)
finite = st.floats(-5, 5, allow_nan=False)
bounds_st = st.one_of(
    st.tuples(finite, finite), st.tuples(st.floats(), st.floats()), st.just((0, 1)),
    st.just([np.float32(-1), np.float64(1)]), st.just("01"), st.just((False, True)),
    st.just((0.0, 1.0, 2.0)), st.just((0.0,)), st.just(None), st.just((0, 10 ** 400)),
)
dtypes = st.sampled_from([jnp.float32, np.float16, jnp.bfloat16, "float64", np.int32, bool,
                          "nope", None, object])


def valid_shape(shape):
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
        return False
    return (len(shape) > 0 and all(is_int(d) for d in shape) and all(d > 0 for d in shape))


def valid_bounds(bounds):
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or not all(
            is_real(b) for b in bounds):
        return False
    try:
        lo, hi = float(bounds[0]), float(bounds[1])
    except OverflowError:
        return False
    return math.isfinite(lo) and math.isfinite(hi) and lo < hi


def valid_dtype(dtype):
    try:
        return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))
    except TypeError:
        return False


@settings(max_examples=60, **SETTINGS)
@given(shape=shapes, bounds=bounds_st, dtype=dtypes, fn=st.sampled_from(sorted(APPLY_FNS)))
def test_classifier_constructor(shape, bounds, dtype, fn):
    COUNTS["Classifier"] += 1
    bad = []
    if not callable(APPLY_FNS[fn]):
        bad.append("apply_fn")
    if not valid_shape(shape):
        bad.append("input_shape")
    if not valid_bounds(bounds):
        bad.append("bounds")
    if not valid_dtype(dtype):
        bad.append("dtype")
    if bad:
        expect_named_error(lambda: ipg.Classifier(APPLY_FNS[fn], None, shape, bounds, dtype),
                           bad)
        return
    if fn != "ok":
        expect_named_error(lambda: ipg.Classifier(APPLY_FNS[fn], None, shape, bounds, dtype),
                           ["apply_fn", "logits", "classes"])
        return
    clf = ipg.Classifier(APPLY_FNS[fn], None, shape, bounds, dtype)
    assert clf.input_shape == tuple(int(d) for d in shape)
    assert clf.bounds == (float(bounds[0]), float(bounds[1])) and clf.num_classes == 3
    x = np.full((2, *clf.input_shape), float(bounds[0]), np.float32)
    labels = clf.predict(x)
    assert labels.shape == (2,) and labels.dtype == np.int32
    expect_named_error(lambda: clf.predict(x, batch_size=0), ["batch_size"])
    expect_named_error(lambda: clf.predict(x[:, None]), ["x"])
    expect_named_error(lambda: clf.predict(x.astype(np.int32)), ["x"])
    expect_named_error(lambda: clf.predict(x * np.nan), ["x"])
    expect_named_error(lambda: clf.predict(x[:0]), ["x"])


# -- FingerprintConfig -------------------------------------------------------------------------

INT_FIELDS = ("num", "steps", "batch_size", "block_steps")
NUM_FIELDS = ("k", "lr", "tol")
CHOICES = {"init": ("data", "noise"), "target": ("random", "least_likely"),
           "keep": ("converged", "all"), "loop": ("auto", "device", "host")}
odd_values = st.sampled_from([None, "3", 2.5, -1, 0, True, float("nan"), float("inf"), [1],
                              np.int64(4), np.float32(0.5), -0.5])


@settings(max_examples=80, **SETTINGS)
@given(field=st.sampled_from(INT_FIELDS + NUM_FIELDS + tuple(CHOICES) + (
    "max_candidates", "optimizer", "compact")), value=st.one_of(odd_values, st.integers(-3, 50),
                                                               st.floats(-1, 10),
                                                               st.sampled_from(
                                                                   ["data", "noise", "all",
                                                                    "host", "random", "yes"])))
def test_fingerprint_config_fields(field, value):
    COUNTS["FingerprintConfig"] += 1
    if field in INT_FIELDS:  # numpy integers are taken too
        ok = is_int(value) and isinstance(value, (int, np.integer)) and value > 0
    elif field in NUM_FIELDS:
        ok = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, bool) and math.isfinite(value)
              and {"k": value >= 0, "lr": value > 0, "tol": value >= 0}[field])
    elif field in CHOICES:
        ok = isinstance(value, str) and value in CHOICES[field]
    elif field == "max_candidates":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool)
                               and value >= 100)
    elif field == "optimizer":
        ok = value is None
    else:  # compact
        ok = isinstance(value, bool)
    if ok:
        config = ipg.FingerprintConfig(**{field: value})
        assert getattr(config, field) == value
    else:
        expect_named_error(lambda: ipg.FingerprintConfig(**{field: value}), [field])


# -- generate ----------------------------------------------------------------------------------

W = jnp.array([[1.0, -1.0, 0.5], [-0.5, 1.0, 0.2], [0.3, 0.1, -1.0]])
OWNER = ipg.Classifier(lambda p, x: x @ p, W, input_shape=(3,))
DATA_KINDS = ["ok", "nan", "outside", "shape", "int", "empty", "few", "none", "list"]


def _data(kind, n, rng):
    x = rng.uniform(0, 1, (max(n, 1) + 3, 3)).astype(np.float32)
    return {"ok": x, "nan": np.where(x > 0.9, np.nan, x) if (x > 0.9).any() else x * np.nan,
            "outside": x + 1.5, "shape": x[:, :2], "int": (x * 10).astype(np.int32),
            "empty": x[:0], "few": x[:n - 1] if n > 1 else x[:0], "none": None,
            "list": x.tolist()}[kind]


@settings(max_examples=25, **SETTINGS)
@given(num=st.sampled_from([2, 3]), k=st.sampled_from([0.0, 0.05, 0.5, 5.0]),
       steps=st.integers(1, 6),
       init=st.sampled_from(["noise", "data"]), keep=st.sampled_from(["all", "converged"]),
       loop=st.sampled_from(["host", "device"]),
       target=st.sampled_from(["random", "least_likely"]),
       key=st.one_of(st.integers(0, 2 ** 31), st.just(-1), st.just("seed"), st.just(1.5)),
       kind=st.sampled_from(DATA_KINDS), seed=st.integers(0, 3))
def test_generate(num, k, steps, init, keep, loop, target, key, kind, seed):
    COUNTS["generate"] += 1
    rng = np.random.default_rng(seed)
    config = ipg.FingerprintConfig(num=num, k=k, steps=steps, init=init, keep=keep, loop=loop,
                                   target=target, batch_size=2)  # few shapes to compile
    x = _data(kind, num, rng)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ipg.ConvergenceWarning)
            return ipg.generate(OWNER, config, key=key, data=x if init == "data" else None,
                                progress=False)

    bad_key = not is_int(key) or key < 0  # an int seed is in [0, 2**64)
    bad_data = init == "data" and kind not in ("ok", "list")
    if bad_key or bad_data:
        expect_named_error(run, (["key"] if bad_key else []) + (["data"] if bad_data else []))
        return
    fp = run()
    assert 0 <= len(fp) <= num
    assert len(fp) == num or keep == "converged"
    assert fp.x.dtype == np.float32 and fp.input_shape == (3,)
    assert (fp.x >= 0).all() and (fp.x <= 1).all() and np.isfinite(fp.x).all()
    if len(fp):
        np.testing.assert_array_equal(fp.labels, OWNER.predict(fp.x))
        assert (fp.i != fp.j).all()
    conv = fp.converged
    if conv.any():
        np.testing.assert_array_equal(fp.labels[conv], fp.j[conv])
        logits = np.asarray(OWNER(fp.x[conv]))
        rows = np.arange(int(conv.sum()))
        margin = logits[rows, fp.j[conv]] - logits[rows, fp.i[conv]]
        assert (margin >= k - 1e-4).all()
    if keep == "converged":
        assert fp.converged.all()


# -- Fingerprints ------------------------------------------------------------------------------

FIELD_VARIANTS = ["ok", "short", "2-D", "float", "bool", "negative", "huge", "str", "empty",
                  "list"]
X_VARIANTS = ["ok", "nan", "inf", "outside", "int", "1-D", "zero-dim", "empty", "float64",
              "str", "list"]


def _field(name, variant, n, rng):
    if name == "x":
        x = rng.uniform(0.1, 0.9, (n, 2, 3)).astype(np.float32)
        first = np.arange(x.size).reshape(x.shape) == 0
        return {"ok": x, "nan": np.where(first, np.nan, x), "inf": np.where(first, np.inf, x),
                "outside": x - 0.5, "int": (x * 9).astype(int),
                "1-D": x[:, 0, 0], "zero-dim": x[:, :0], "empty": x[:0],
                "float64": x.astype(np.float64), "str": x.astype(str), "list": x.tolist()
                }[variant]
    if name == "converged":
        base = rng.integers(0, 2, n).astype(bool)
    elif name == "loss":
        base = rng.uniform(0, 3, n).astype(np.float32)
    else:
        base = rng.integers(0, 4, n)
    return {"ok": base, "short": base[:-1] if n else base[:0][None], "2-D": base[:, None],
            "float": base.astype(np.float64) + 0.5, "bool": base.astype(bool),
            "negative": -1 - base.astype(np.int64), "huge": base.astype(np.int64) + 2 ** 40,
            "str": base.astype(str), "empty": base[:0] if n else np.zeros(0),
            "list": base.tolist()}[variant]


def fingerprints_ok(name, variant, n, with_meta):
    """Whether Fingerprints accepts ``variant`` of field ``name`` (the others valid)."""
    if name == "x":
        if variant in ("ok", "float64", "list"):
            return True
        if variant == "empty":
            return n == 0  # else the lengths differ
        if variant in ("nan", "inf"):
            return n == 0
        if variant == "outside":
            return n == 0 or not with_meta  # without known bounds any finite point will do
        return False  # int, 1-D, zero-dim, str
    if variant in ("ok", "list"):
        return True
    if variant in ("short", "2-D", "str"):
        return False
    if n == 0:
        return True  # empty: nothing to lose in a cast
    return {"empty": False, "float": name == "loss", "bool": name == "converged",
            "negative": name == "loss", "huge": name in ("loss", "source")}[variant]


@settings(max_examples=150, **SETTINGS)
@given(n=st.integers(0, 5), name=st.sampled_from(["x", "labels", "i", "j", "loss", "converged",
                                                  "steps", "source"]),
       variant=st.sampled_from(sorted(set(FIELD_VARIANTS + X_VARIANTS))),
       with_meta=st.booleans(), seed=st.integers(0, 5))
def test_fingerprints_constructor(n, name, variant, with_meta, seed):
    variants = X_VARIANTS if name == "x" else FIELD_VARIANTS
    assume(variant in variants)
    COUNTS["Fingerprints"] += 1
    rng = np.random.default_rng(seed)
    arrays = {f: _field(f, "ok", n, rng) for f in ("x", "labels", "i", "j", "loss", "converged",
                                                   "steps", "source")}
    arrays[name] = _field(name, variant, n, rng)
    meta = ({"classifier": {"num_classes": 4, "bounds": [0.0, 1.0], "input_shape": [2, 3]}}
            if with_meta else {})

    def build():
        return ipg.Fingerprints(**arrays, metadata=meta)

    if not fingerprints_ok(name, variant, n, with_meta):
        expect_named_error(build, [f"Fingerprints.{name}", "Fingerprints arrays must share"])
        return
    fp = build()
    assert len(fp) == n and fp.labels.dtype == np.int32 and fp.source.dtype == np.int64
    assert fp.loss.dtype == np.float32 and fp.converged.dtype == np.bool_
    for f in ("labels", "i", "j", "steps", "source"):
        np.testing.assert_array_equal(getattr(fp, f), np.asarray(arrays[f]).reshape(-1))
    np.testing.assert_array_equal(fp.converged, np.asarray(arrays["converged"]).astype(bool))
    np.testing.assert_array_equal(fp.x, np.asarray(arrays["x"]))
    assert not fp.x.flags.writeable and fp[:0].input_shape == fp.input_shape


def valid_fingerprints(n, dtype=np.float32, shape=(2, 3), seed=0, metadata=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    return ipg.Fingerprints(
        x=rng.uniform(0, 1, (n, *shape)).astype(dtype), labels=labels, i=(labels + 1) % 4,
        j=labels, loss=rng.uniform(0, 1, n), converged=rng.integers(0, 2, n).astype(bool),
        steps=rng.integers(0, 100, n), source=rng.integers(0, 1000, n),
        metadata=metadata if metadata is not None else {"classifier": {"num_classes": 4}})


METADATA_CASES = [
    ([("a", 1)], "Fingerprints.metadata"), ("meta", "Fingerprints.metadata"),
    ({"classifier": 5}, "metadata['classifier']"), ({"config": [1]}, "metadata['config']"),
    ({"classifier": {"num_classes": "4"}}, "num_classes"),
    ({"classifier": {"num_classes": 1}}, "num_classes"),
    ({"classifier": {"num_classes": True}}, "num_classes"),
    ({"classifier": {"num_classes": 2}}, "Fingerprints.labels"),
    ({"classifier": {"bounds": [1.0, 0.0]}}, "bounds"),
    ({"classifier": {"bounds": "01"}}, "bounds"),
    ({"classifier": {"bounds": [0.0, float("nan")]}}, "bounds"),
    ({"classifier": {"bounds": [0.0, 0.5]}}, "Fingerprints.x"),
    ({"classifier": {"input_shape": [3, 2]}}, "input shape"),
    ({"classifier": {"input_shape": "23"}}, "input_shape"),
    ({"classifier": {"num_classes": 4, "bounds": [-1, 2], "input_shape": [2, 3]}}, None),
    ({"classifier": None, "config": None}, None), ({}, None),
]


@settings(max_examples=40, **SETTINGS)
@given(case=st.sampled_from(range(len(METADATA_CASES))), n=st.integers(0, 4),
       seed=st.integers(0, 3))
def test_fingerprints_metadata(case, n, seed):
    COUNTS["Fingerprints metadata"] += 1
    meta, name = METADATA_CASES[case]
    arrays = valid_fingerprints(max(n, 1), seed=seed, metadata={}).arrays()
    arrays["labels"] = np.full(len(arrays["labels"]), 3)
    arrays["x"] = np.asarray(arrays["x"]) * 0.5 + 0.4  # in [0.4, 0.9]
    if n == 0:
        arrays = {k: v[:0] for k, v in arrays.items()}
    if name is None or (n == 0 and name in ("Fingerprints.labels", "Fingerprints.x")):
        fp = ipg.Fingerprints(**arrays, metadata=meta)
        assert len(fp) == n and fp.metadata == dict(meta)
        assert f"n={n}" in repr(fp) and fp.num_classes in (None, 4)
        return
    expect_named_error(lambda: ipg.Fingerprints(**arrays, metadata=meta), [name])


@settings(max_examples=40, **SETTINGS)
@given(n=st.integers(1, 6), seed=st.integers(0, 9), nonce_len=st.integers(0, 40),
       flip=st.sampled_from(["x", "labels", "k", "owner", "nonce", "none"]))
def test_commitments(n, seed, nonce_len, flip):
    COUNTS["commit/verify_commitment"] += 1
    fp = valid_fingerprints(n, seed=seed, metadata={
        "config": {"k": 1.0}, "classifier": {"params_sha256": "c" * 64, "num_classes": 4}})
    nonce = bytes(range(nonce_len))
    if 0 < nonce_len < 16:
        expect_named_error(lambda: ipg.commit(fp, nonce), ["nonce"])
        return
    nonce = nonce or None
    c = ipg.commit(fp, nonce)
    assert ipg.verify_commitment(fp, c, nonce)
    arrays, meta = fp.arrays(), json.loads(json.dumps(fp.metadata))
    other_nonce = nonce
    if flip == "x":
        arrays["x"] = np.where(np.arange(arrays["x"].size).reshape(arrays["x"].shape) == 0,
                               np.nextafter(arrays["x"], np.float32(2)), arrays["x"])
    elif flip == "labels":
        arrays["labels"] = (arrays["labels"] + 1) % 4
    elif flip == "k":
        meta["config"]["k"] = 1.5
    elif flip == "owner":
        meta["classifier"]["params_sha256"] = "d" * 64
    elif flip == "nonce":
        other_nonce = bytes(16) if nonce is None else None
    other = ipg.Fingerprints(**arrays, metadata=meta)
    assert ipg.verify_commitment(other, c, other_nonce) == (flip == "none")


@settings(max_examples=60, **SETTINGS)
@given(n=st.integers(1, 30), pool=st.integers(0, 40), ratio=st.one_of(
    st.floats(0.01, 4.0), st.just(0.0), st.just(-1.0), st.just(float("inf"))),
    batch_size=st.integers(1, 12), key=st.integers(0, 5))
def test_decoy_interleaving(n, pool, ratio, batch_size, key):
    COUNTS["query_labels with decoys"] += 1
    fp = valid_fingerprints(n, seed=key)
    rng = np.random.default_rng(key)
    decoys = rng.uniform(0, 1, (pool, 2, 3)).astype(np.float32)
    known = {row.tobytes() for row in fp.x}
    batches = []

    def suspect(batch):
        batches.append(sum(row.tobytes() in known for row in batch) / len(batch))
        assert len(batch) <= batch_size
        return np.asarray(batch).reshape(len(batch), -1)[:, :4].argmax(1)

    def call():
        return ipg.query_labels(fp, suspect, batch_size=batch_size, decoys=decoys,
                                decoy_ratio=ratio, key=key)

    m = max(1, round(ratio * n)) if math.isfinite(ratio) and ratio > 0 else None
    if pool == 0:
        expect_named_error(call, ["decoys"])
    elif m is None:
        expect_named_error(call, ["decoy_ratio"])
    elif m > pool or m < -(-(n + m) // batch_size):
        expect_named_error(call, ["decoy_ratio"])
    else:
        labels = call()
        np.testing.assert_array_equal(labels, fp.x.reshape(n, -1)[:, :4].argmax(1))
        assert len(batches) == -(-(n + m) // batch_size)
        assert all(share < 1 for share in batches)  # a decoy in every batch


# -- matching_rate / verify --------------------------------------------------------------------

SUSPECTS = ["logits", "labels", "jax logits", "probabilities", "5 classes", "3 classes",
            "nan logits", "short", "3-D", "float labels", "negative labels", "big labels",
            "none", "strings", "raises", "not callable", "classifier", "classifier 5"]


def _suspect(kind, fp, rng):
    noise = rng.normal(size=(4, 4)).astype(np.float32)

    def logits(b):
        return np.asarray(b, np.float32).reshape(len(b), -1)[:, :4] @ noise

    return {
        "logits": logits, "labels": lambda b: logits(b).argmax(1),
        "jax logits": lambda b: jnp.asarray(logits(b)),
        "probabilities": lambda b: np.exp(logits(b)) / np.exp(logits(b)).sum(1, keepdims=True),
        "5 classes": lambda b: np.zeros((len(b), 5)), "3 classes": lambda b: np.zeros((len(b), 3)),
        "nan logits": lambda b: logits(b) * np.nan, "short": lambda b: logits(b)[:-1],
        "3-D": lambda b: logits(b)[:, :, None], "float labels": lambda b: logits(b)[:, 0],
        "negative labels": lambda b: -np.ones(len(b), int),
        "big labels": lambda b: np.full(len(b), 7), "none": lambda b: None,
        "strings": lambda b: np.array(["cat"] * len(b)),
        "raises": lambda b: (_ for _ in ()).throw(ValueError("suspect API is down")),
        "not callable": "http://suspect",
        "classifier": ipg.Classifier(lambda p, x: x.reshape(x.shape[0], -1)[:, :4] @ p,
                                     jnp.asarray(noise), fp.input_shape),
        "classifier 5": ipg.Classifier(lambda p, x: x.reshape(x.shape[0], -1)[:, :5], None,
                                       fp.input_shape),
    }[kind], logits


def suspect_ok(kind, known_classes):
    """Whether a suspect of this kind is usable (None: it raises its own error)."""
    if kind == "raises":
        return None
    if kind in ("5 classes", "3 classes", "classifier 5", "big labels"):
        return not known_classes  # a class count the owner's is unknown: just mismatches
    return kind in ("logits", "labels", "jax logits", "probabilities", "classifier")


@settings(max_examples=120, **SETTINGS)
@given(n=st.integers(0, 9), kind=st.sampled_from(SUSPECTS),
       threshold=st.one_of(st.floats(-0.5, 1.5), st.just(float("nan")), st.just(True),
                           st.just("0.5"), st.just(np.float32(0.25))),
       null_rate=st.one_of(st.none(), st.floats(-0.5, 1.5), st.just(float("nan"))),
       batch_size=st.one_of(st.integers(-1, 5), st.just(True), st.just(2.0), st.just(None)),
       known_classes=st.booleans(), seed=st.integers(0, 3))
def test_matching_rate_and_verify(n, kind, threshold, null_rate, batch_size, known_classes,
                                  seed):
    COUNTS["matching_rate/verify"] += 1
    rng = np.random.default_rng(seed)
    fp = valid_fingerprints(n, seed=seed,
                            metadata={"classifier": {"num_classes": 4}} if known_classes else {})
    suspect, logits = _suspect(kind, fp, rng)
    bad = []
    if n == 0:
        bad.append("fingerprints")
    if not (is_int(batch_size) and batch_size > 0):
        bad.append("batch_size")
    usable = suspect_ok(kind, known_classes)
    if usable is False:
        bad.append("suspect")

    def rate_call():
        return ipg.matching_rate(fp, suspect, batch_size=batch_size)

    if bad:
        expect_named_error(rate_call, bad)
    elif usable is None:
        with pytest.raises(ValueError, match="suspect API is down"):  # the suspect's own
            rate_call()
        return
    else:
        rate = rate_call()
        flat = np.asarray(fp.x, np.float32).reshape(n, -1)
        expected_labels = {"big labels": np.full(n, 7), "5 classes": np.zeros(n, int),
                           "3 classes": np.zeros(n, int),
                           "classifier 5": flat[:, :5].argmax(1)}.get(kind)
        if expected_labels is None:
            expected_labels = logits(fp.x).argmax(1)
        assert rate == pytest.approx(float(np.mean(expected_labels == fp.labels)))

    verify_bad = list(bad)
    if not (is_real(threshold) and 0 <= threshold <= 1):
        verify_bad.append("threshold")
    if null_rate is not None and not (0 <= null_rate <= 1):
        verify_bad.append("null_rate")

    def verify_call():
        return ipg.verify(fp, suspect, threshold=threshold, null_rate=null_rate,
                          batch_size=batch_size)

    if verify_bad:
        expect_named_error(verify_call, verify_bad)
        return
    verdict = verify_call()
    assert verdict.matching_rate == pytest.approx(rate) and verdict.num_points == n
    assert verdict.num_matches == round(rate * n)
    assert verdict.is_copy == (verdict.matching_rate >= threshold)
    if null_rate is None:
        assert verdict.p_value is None
    else:
        assert 0.0 <= verdict.p_value <= 1.0
    assert str(verdict)


# -- save / load -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 6, 10 ** 6) | st.floats(allow_nan=False,
                                                                         allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                     children, max_size=3),
    max_leaves=8)


@pytest.fixture(scope="module")
def cheap_kdf():
    old = fio.SCRYPT_N
    fio.SCRYPT_N = 2 ** 10
    yield
    fio.SCRYPT_N = old


@settings(max_examples=20, **SETTINGS)
@given(n=st.integers(0, 6), dtype=st.sampled_from([np.float32, np.float16, np.float64]),
       shape=st.sampled_from([(1,), (2, 3), (2, 1, 2)]),
       extra=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=3),
       sealed=st.booleans(), seed=st.integers(0, 9))
def test_save_load_round_trip(tmp_path_factory, cheap_kdf, n, dtype, shape, extra, sealed, seed):
    COUNTS["save/load"] += 1
    meta = {**extra, "classifier": {"num_classes": 4, "input_shape": list(shape)}}
    fp = valid_fingerprints(n, dtype, shape, seed, meta)
    target = tmp_path_factory.mktemp("fp") / ("fp.sealed" if sealed else "fp")
    passphrase = {"passphrase": "pw"} if sealed else {}
    ipg.save(fp, target, **passphrase)
    loaded = ipg.load(target, **passphrase)
    for name, array in fp.arrays().items():
        other = loaded.arrays()[name]
        assert array.dtype == other.dtype and array.shape == other.shape, name
        assert array.tobytes() == other.tobytes(), name
    assert loaded.metadata == meta and loaded.digest() == fp.digest()
    assert ipg.commit(loaded) == ipg.commit(fp)


@settings(max_examples=20, **SETTINGS)
@given(meta=st.sampled_from([{"when": object()}, {1: "a", "b": 2}, {"x": {1, 2}},
                             {"n": {3: 4}}, {"f": np.float32(1)}, {"b": b"bytes"}]),
       sealed=st.booleans())
def test_save_refuses_metadata_that_is_not_json(tmp_path_factory, cheap_kdf, meta, sealed):
    COUNTS["save/load"] += 1
    fp = ipg.Fingerprints(**valid_fingerprints(2).arrays(), metadata=meta)
    target = tmp_path_factory.mktemp("fp") / "fp"
    expect_named_error(lambda: ipg.save(fp, target, **({"passphrase": "pw"} if sealed else {})),
                       ["metadata"])
    assert not target.exists()


# -- data.from_arrays --------------------------------------------------------------------------

X_KINDS = ["float32", "float64", "float16", "uint8", "int16", "bool", "complex", "nan", "inf",
           "above", "below", "huge", "3-D", "5-D", "2-D", "empty", "zero-axis", "channels-first",
           "list", "string"]
Y_KINDS = ["ok", "int8", "uint64", "float", "bool", "negative", "2-D", "short", "huge",
           "very large", "list", "string"]
NAME_KINDS = ["none", "ok", "tuple", "few", "duplicate", "non-str", "str", "numpy"]


def _x(kind, n, rng):
    base = rng.uniform(0, 1, (n, 6, 6, 3))
    return {
        "float32": base.astype(np.float32), "float64": base, "float16": base.astype(np.float16),
        "uint8": (base * 255).astype(np.uint8), "int16": (base * 255).astype(np.int16),
        "bool": base > 0.5, "complex": base + 0j, "nan": np.where(base > 0.5, np.nan, base),
        "inf": np.where(base > 0.5, np.inf, base), "above": base + 1.01, "below": base - 1.01,
        "huge": base * 1e300, "3-D": base[..., 0], "5-D": base[..., None], "2-D": base[:, :, 0, 0],
        "empty": base[:0], "zero-axis": base[:, :0], "channels-first": np.moveaxis(base, 3, 1),
        "list": base.tolist(), "string": base.astype(str),
    }[kind]


def _y(kind, n, rng):
    base = rng.integers(0, 3, n)
    return {"ok": base, "int8": base.astype(np.int8), "uint64": base.astype(np.uint64),
            "float": base.astype(float), "bool": base.astype(bool), "negative": base - 5,
            "2-D": np.eye(3)[base].astype(int), "short": base[:-1], "huge": base + 2 ** 40,
            "very large": base + 10 ** 9, "list": base.tolist(), "string": base.astype(str)
            }[kind]


BAD_X = {"int16", "bool", "complex", "string", "2-D", "5-D", "empty", "zero-axis",
         "channels-first", "nan", "inf", "above", "below", "huge"}
BAD_Y = {"float", "bool", "negative", "2-D", "short", "huge", "string"}
BAD_NAMES = {"non-str", "str", "numpy", "duplicate"}


@settings(max_examples=120, **SETTINGS)
@given(n=st.integers(1, 4), xk=st.sampled_from(X_KINDS), yk=st.sampled_from(Y_KINDS),
       nk=st.sampled_from(NAME_KINDS), seed=st.integers(0, 5))
def test_from_arrays(n, xk, yk, nk, seed):
    COUNTS["data.from_arrays"] += 1
    rng = np.random.default_rng(seed)
    x, y = _x(xk, n, rng), _y(yk, n, rng)
    names = {"none": None, "ok": ["a", "b", "c"], "tuple": ("a", "b", "c", "d"), "few": ["a"],
             "duplicate": ["a", "a", "b"], "non-str": [1, 2, 3], "str": "abc",
             "numpy": np.array(["a", "b", "c"])}[nk]
    y_arr = np.asarray(y)
    bad = []
    if xk in BAD_X:
        bad.append("x")
    if yk in BAD_Y or yk == "very large" or (nk == "few" and y_arr.max() >= 1):
        bad += ["y", "class_names"]  # labels past the names: either may be named
    if nk in BAD_NAMES:
        bad.append("class_names")
    if bad:
        expect_named_error(lambda: data.from_arrays(x, y, names), bad)
        return
    ds = data.from_arrays(x, y, names)
    x_arr = np.asarray(x)
    assert ds.x.dtype == np.float32 and ds.x.ndim == 4 and len(ds) == n
    assert ds.x.min() >= 0 and ds.x.max() <= 1
    expected = x_arr.astype(np.float32) / 255 if xk == "uint8" else x_arr.astype(np.float32)
    np.testing.assert_allclose(ds.x.reshape(expected.shape), expected, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, y_arr.astype(np.int64))
    assert ds.num_classes == (len(names) if names is not None else int(y_arr.max()) + 1)
