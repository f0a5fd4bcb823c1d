"""Calibrated nulls: the beta-binomial fit, its p-values and thresholds, its record, verify."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

import ipguard_jax as ipg
from ipguard_jax.calibration import (Calibration, betabinom_logpmf, betabinom_sf, calibrate,
                                     calibration_of, with_calibration)

C = 10


def make_set(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 4)).astype(np.float32)
    labels = rng.integers(0, C, n)
    zeros = np.zeros(n, np.int32)
    return ipg.Fingerprints(x=x, labels=labels, i=zeros, j=labels, loss=zeros.astype(float),
                            converged=np.ones(n, bool), steps=zeros, source=np.arange(n),
                            metadata={"classifier": {"num_classes": C}})


def answers(fp, matches, rng):
    """Labels that match the owner's on ``matches`` random fingerprints, and differ elsewhere."""
    hit = np.zeros(len(fp), bool)
    hit[rng.choice(len(fp), matches, replace=False)] = True
    return np.where(hit, fp.labels, (fp.labels + 1 + rng.integers(0, C - 1, len(fp))) % C)


def simulated_references(fp, alpha, beta, m, seed):
    rng = np.random.default_rng(seed)
    counts = rng.binomial(len(fp), rng.beta(alpha, beta, m))
    return counts, [answers(fp, k, rng) for k in counts]


@pytest.fixture(scope="module")
def fp():
    return make_set()


@pytest.fixture(scope="module")
def calibration(fp):
    return calibrate(fp, simulated_references(fp, 3.0, 12.0, 12, seed=1)[1])


# -- the fit ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, beta", [(3.0, 12.0), (0.8, 4.0), (20.0, 60.0)])
def test_the_fit_recovers_known_shapes_from_simulated_rates(fp, alpha, beta):
    counts, labels = simulated_references(fp, alpha, beta, m=400, seed=2)
    cal = calibrate(fp, labels)
    assert cal.mean == pytest.approx(alpha / (alpha + beta), abs=0.015)
    rho = 1 / (alpha + beta + 1)
    assert 1 / (cal.ml_alpha + cal.ml_beta + 1) == pytest.approx(rho, rel=0.3)
    assert cal.ml_alpha == pytest.approx(alpha, rel=0.35) and cal.ml_beta == pytest.approx(
        beta, rel=0.35)
    # it is the maximum of the likelihood: a generic optimiser finds no better point
    n = len(fp)

    def nll(theta):
        return -stats.betabinom.logpmf(counts, n, *np.exp(theta)).sum()

    best = optimize.minimize(nll, np.log([alpha, beta]), method="Nelder-Mead",
                             options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 4000})
    assert nll(np.log([cal.ml_alpha, cal.ml_beta])) <= best.fun + 1e-6
    np.testing.assert_allclose([cal.ml_alpha, cal.ml_beta], np.exp(best.x), rtol=1e-3)
    # 400 references: the corrections for few references barely move the fit
    assert cal.dispersion == pytest.approx(max(rho, 0.01), rel=0.35)
    assert list(cal.rates) == [k / n for k in counts]


def test_no_over_dispersion_falls_back_to_the_floor_and_few_references_widen(fp):
    rng = np.random.default_rng(3)
    counts = [20, 20, 20, 21, 19]  # less spread than binomial noise
    cal = calibrate(fp, [answers(fp, k, rng) for k in counts])
    assert cal.ml_alpha is None and cal.ml_beta is None
    assert cal.mean == pytest.approx(0.2, abs=1e-6)
    assert cal.dispersion > 0.01  # the floor, widened for 5 references
    assert "floored at 0.01" in cal.method and "1 + 1/5" in cal.method
    # the widening matches the variance of a new model's rate: (1 + 1/M) times the fit's
    n, m = len(fp), 5
    g = lambda rho: rho * (1 - 1 / n) + 1 / n  # noqa: E731
    assert g(cal.dispersion) == pytest.approx(g(0.01) * (1 + 1 / m), rel=1e-9)
    looser = calibrate(fp, [answers(fp, k, rng) for k in counts], min_dispersion=0.0)
    assert looser.dispersion < cal.dispersion and looser.threshold() <= cal.threshold()


def test_all_zero_matches_give_a_positive_mean(fp):
    rng = np.random.default_rng(4)
    cal = calibrate(fp, [answers(fp, 0, rng) for _ in range(5)])
    assert 0 < cal.mean < 0.01 and cal.threshold() > 0


# -- p-values and thresholds -----------------------------------------------------------------------

def brute_sf(m, n, a, b):
    def log_pmf(k):
        return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                + math.lgamma(k + a) + math.lgamma(n - k + b) - math.lgamma(n + a + b)
                - math.lgamma(a) - math.lgamma(b) + math.lgamma(a + b))
    return math.fsum(math.exp(log_pmf(k)) for k in range(max(m, 0), n + 1))


@pytest.mark.parametrize("n, a, b", [(10, 2.0, 8.0), (100, 0.3, 4.2), (100, 50.0, 200.0),
                                     (1000, 1.5, 9.0), (30, 1e4, 4e4), (50, 0.05, 0.05)])
def test_p_values_and_thresholds_equal_brute_force_sums(n, a, b):
    pmf = np.exp(betabinom_logpmf(n, a, b))
    np.testing.assert_allclose(pmf, stats.betabinom.pmf(np.arange(n + 1), n, a, b), rtol=1e-9,
                               atol=1e-300)
    for m in sorted({0, 1, n // 10, n // 3, n // 2, n - 1, n}):
        expected = brute_sf(m, n, a, b)
        assert betabinom_sf(m, n, a, b) == pytest.approx(expected, rel=1e-9, abs=1e-300)
        # scipy's survival function is less exact in the tail (1e-7 relative, or 0)
        assert betabinom_sf(m, n, a, b) == pytest.approx(stats.betabinom.sf(m - 1, n, a, b),
                                                         rel=1e-5, abs=1e-12)
    cal = Calibration(a, b, n, (0.0,) * 5, tuple("abcde"), ("",) * 5, None, None, 0.0, "test",
                      "0" * 64)
    for fpr in (0.2, 0.05, 0.01, 1e-4):
        t = cal.threshold(fpr)
        smallest = next((m for m in range(n + 2) if m > n or brute_sf(m, n, a, b) <= fpr))
        assert t == smallest
        if t <= n:
            assert cal.p_value(t) <= fpr < cal.p_value(t - 1) if t > 0 else True


def test_tails_far_below_double_precision_are_summed_in_log_space():
    p = betabinom_sf(1000, 1000, 1.0, 200.0)
    assert p == pytest.approx(brute_sf(1000, 1000, 1.0, 200.0), rel=1e-9) and 0 < p < 1e-200
    assert betabinom_sf(0, 10, 1.0, 1.0) == 1.0 and betabinom_sf(11, 10, 1.0, 1.0) == 0.0


def test_p_value_and_threshold_check_their_arguments(calibration):
    with pytest.raises(ValueError, match="fpr must be a number in"):
        calibration.threshold(0.0)
    with pytest.raises(ValueError, match="matches=101 is more than n=100"):
        calibration.p_value(101)
    with pytest.raises(ValueError, match="matches must be an int >= 0"):
        calibration.p_value(2.5)
    assert calibration.p_value(5, n=10) == betabinom_sf(5, 10, calibration.alpha,
                                                        calibration.beta)


# -- refusals --------------------------------------------------------------------------------------

def test_too_few_references_are_refused(fp):
    labels = simulated_references(fp, 3.0, 12.0, 4, seed=5)[1]
    with pytest.raises(ValueError, match="at least 5 reference models, got 4"):
        calibrate(fp, labels)
    assert calibrate(fp, labels, min_references=4).num_references == 4
    with pytest.raises(ValueError, match="min_references must be an int >= 2"):
        calibrate(fp, labels[:1], min_references=1)


@pytest.mark.parametrize("change, error, match", [
    (lambda refs: refs[:-1] + [refs[-1][:50]], ValueError, "has 50 labels for 100"),
    (lambda refs: refs[:-1] + [refs[-1] + C], ValueError, r"labels outside \[0, 10\)"),
    (lambda refs: refs[:-1] + [refs[-1].astype(float)], TypeError, "integer labels"),
    (lambda refs: refs[:-1] + ["model.bin"], TypeError, "1-D array of integer labels"),
    (lambda refs: refs[:-1] + [lambda x: np.zeros(len(x) - 1, int)], ValueError,
     "reference 'reference 5': the suspect returned 99 labels"),
])
def test_bad_references_are_named(fp, change, error, match):
    refs = simulated_references(fp, 3.0, 12.0, 5, seed=6)[1]
    with pytest.raises(error, match=match):
        calibrate(fp, change(refs))


def test_names_descriptions_and_mapping(fp):
    refs = simulated_references(fp, 3.0, 12.0, 5, seed=7)[1]
    owner = ipg.Classifier(lambda p, x: x @ p, jnp.zeros((4, C)), input_shape=(4,))
    cal = calibrate(fp, {"seed1": refs[0], "seed2": refs[1], "vgg": refs[2], "api": owner,
                         "fn": lambda x: np.zeros(len(x), int)})
    assert cal.names == ("seed1", "seed2", "vgg", "api", "fn")
    assert cal.descriptions[0] == "precomputed labels"
    assert cal.descriptions[3] == f"Classifier, parameters sha256 {owner.params_hash}"
    assert cal.descriptions[4].startswith("callable ")
    with pytest.raises(ValueError, match="names must be unique"):
        calibrate(fp, refs, names=["a", "a", "b", "c", "d"])
    with pytest.raises(ValueError, match="names has 2 entries for 5 references"):
        calibrate(fp, refs, names=["a", "b"])
    with pytest.raises(TypeError, match="references must be a sequence or a mapping"):
        calibrate(fp, refs[0].tobytes())
    with pytest.raises(ValueError, match="at least 2 fingerprints"):
        calibrate(fp[:1], [r[:1] for r in refs])


# -- the record ------------------------------------------------------------------------------------

def test_to_dict_from_dict_round_trip_and_validation(calibration):
    d = calibration.to_dict()
    assert Calibration.from_dict(d) == calibration
    bad = [({"alpha": -1.0}, "alpha must be a finite number > 0"),
           ({"beta": float("nan")}, "beta must be a finite number > 0"),
           ({"alpha": float("inf")}, "alpha must be a finite number > 0"),
           ({"rates": [1.5] + d["rates"][1:]}, r"rates\[0\] must be a number in \[0, 1\]"),
           ({"rates": [0.123456] + d["rates"][1:]}, "not a count of matches"),
           ({"rates": d["rates"][:-1]}, "one entry per reference"),
           ({"names": ["a"] * len(d["names"])}, "names must be unique"),
           ({"ml_alpha": None}, "both be numbers or both be None"),
           ({"points_sha256": "xyz"}, "64 lowercase hex"),
           ({"n_points": 1}, "n_points must be an int >= 2"),
           ({"format_version": 2}, "format version 2"),
           ({"distribution": "binomial"}, "is not 'beta-binomial'"),
           ({"extra": 1}, "unknown fields extra"),
           ({"rates": "0.1"}, "rates must be a list")]
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            Calibration.from_dict({**d, **change})
    with pytest.raises(ValueError, match="missing fields alpha"):
        Calibration.from_dict({k: v for k, v in d.items() if k != "alpha"})
    with pytest.raises(ValueError, match="must be a mapping"):
        Calibration.from_dict([1, 2])


def test_round_trip_through_save_load_and_sealed_files(fp, calibration, tmp_path):
    calibrated = with_calibration(fp, calibration)
    assert calibrated.metadata["calibration"] == calibration.to_dict()
    assert "calibration" not in fp.metadata  # a new set; the old one is unchanged
    ipg.save(calibrated, tmp_path / "plain")
    loaded = ipg.load(tmp_path / "plain")
    assert calibration_of(loaded) == calibration and loaded.digest() == calibrated.digest()
    pytest.importorskip("cryptography")
    ipg.save(calibrated, tmp_path / "fp.sealed", passphrase="correct horse")
    assert b"beta-binomial" not in (tmp_path / "fp.sealed").read_bytes()  # encrypted
    assert calibration_of(ipg.load(tmp_path / "fp.sealed",
                                   passphrase="correct horse")) == calibration


def test_a_calibration_belongs_to_its_set(fp, calibration):
    with pytest.raises(ValueError, match="measured on another set"):
        with_calibration(make_set(seed=9), calibration)
    sliced = with_calibration(fp, calibration)[:50]
    with pytest.raises(ValueError, match="measured on another set"):
        calibration_of(sliced)
    calls = []
    with pytest.raises(ValueError, match="measured on another set"):
        ipg.verify(sliced, lambda x: calls.append(1) or np.zeros(len(x), int))
    assert calls == []  # refused before any query
    tampered = ipg.Fingerprints(**fp.arrays(), metadata={
        **fp.metadata, "calibration": {**calibration.to_dict(), "alpha": 0.0}})
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        ipg.verify(tampered, lambda x: np.zeros(len(x), int))


# -- verify ----------------------------------------------------------------------------------------

def label_suspect(fp, matches, seed=0):
    """A label-only suspect matching the owner on exactly ``matches`` fingerprints."""
    table = {row.tobytes(): label for row, label in
             zip(fp.x, answers(fp, matches, np.random.default_rng(seed)))}
    return lambda x: np.array([table[row.tobytes()] for row in x])


def test_verify_reports_where_its_null_came_from(fp, calibration):
    calibrated = with_calibration(fp, calibration)
    count = calibration.threshold(0.01)
    copy = ipg.verify(calibrated, label_suspect(fp, count))
    assert copy.null_source == "calibrated on 12 models" and copy.is_copy
    assert copy.p_value == calibration.p_value(count) <= 0.01
    assert copy.fpr == 0.01 and copy.fpr_threshold == copy.threshold == count / 100
    assert copy.null_rate == pytest.approx(calibration.mean)
    assert "under the beta-binomial null calibrated on 12 models" in str(copy)
    below = ipg.verify(calibrated, label_suspect(fp, count - 1))
    assert not below.is_copy and below.p_value > 0.01
    strict = ipg.verify(calibrated, label_suspect(fp, count), fpr=1e-4)
    assert not strict.is_copy and strict.fpr_threshold > copy.fpr_threshold
    given_threshold = ipg.verify(calibrated, label_suspect(fp, count - 1), threshold=0.1)
    assert given_threshold.is_copy and given_threshold.threshold == 0.1  # the user decides

    user = ipg.verify(calibrated, label_suspect(fp, 40), null_rate=0.3)  # overrides
    assert user.null_source == "user-given rate" and user.p_value == ipg.verification \
        .binomial_sf(40, 100, 0.3)
    assert user.threshold == 0.5 and not user.is_copy  # the old behaviour
    assert ipg.verification.binomial_sf(round(user.fpr_threshold * 100), 100, 0.3) <= 0.01
    none = ipg.verify(fp, label_suspect(fp, 40))
    assert none.null_source == "none" and none.p_value is None and none.fpr is None
    assert none.threshold == 0.5
    with pytest.raises(ValueError, match=r"fpr must be a number in \(0, 1\)"):
        ipg.verify(calibrated, label_suspect(fp, 40), fpr=1.0)


# -- the command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """An owner, five independent reference models (files) and the owner's fingerprints."""
    from flax import nnx

    from ipguard_jax import data, models, train
    from ipguard_jax.cli import main

    root = tmp_path_factory.mktemp("calibrate_cli")
    digits = data.load_digits()
    order = np.random.default_rng(0).permutation(len(digits))
    x, y = digits.x[order], digits.y[order]
    kwargs = {"in_features": 64, "in_channels": 1, "hidden": [32]}

    def model_file(name, seed, part):
        net = models.create("mlp", 10, rngs=nnx.Rngs(seed), **kwargs)
        config = train.TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=3e-3,
                                   weight_decay=0.0, random_crop=False, horizontal_flip=False,
                                   seed=seed)
        train.fit(net, x[part], y[part], config, progress=False)
        return models.save_model(root / name, net, arch="mlp", num_classes=10,
                                 input_shape=(8, 8, 1), model_kwargs=kwargs)

    paths = {"owner": model_file("owner", 0, slice(0, 700)),
             "refs": [model_file(f"ref{i}", i, slice(700, 1400)) for i in range(1, 6)],
             "fp": root / "owner_fp", "root": root}
    assert main(["fingerprint", str(paths["owner"]), "-o", str(paths["fp"]), "--num", "40",
                 "--k", "0.1", "--steps", "100", "--quiet"]) == 0
    return paths


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ipguard: error: "), err
    return lines[0]


def test_cli_calibrate_then_verify_with_the_calibrated_null(model_files, tmp_path, capsys):
    from ipguard_jax.cli import main

    refs = [str(p) for p in model_files["refs"]]
    out = tmp_path / "fp_cal"
    assert main(["calibrate", str(model_files["fp"]), *refs, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibrated on 5 models" in text and "threshold   at a false-positive rate" in text
    cal = calibration_of(ipg.load(out))
    assert cal.names == tuple(refs) and "arch=mlp" in cal.descriptions[0]
    assert cal.n_points == len(ipg.load(model_files["fp"]))

    owner = str(model_files["owner"])
    assert main(["verify", str(out), owner]) == 1
    text = capsys.readouterr().out
    assert "null           calibrated on 5 models (beta-binomial" in text
    assert "beta-binomial null calibrated on 5 models" in text and "PIRATED" in text
    assert "fpr threshold" in text and "give p <= 0.01" in text
    assert main(["verify", str(out), owner, "--null-rate", "0.3", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["null_source"] == "user-given rate" and report["null"] is None

    assert main(["verify", str(out), owner, "--sequential", "--order-seed", "3", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["sequential"]["stopped_by"] == "copy boundary"
    assert report["sequential"]["fingerprints_queried"] == 10  # one batch of 10
    assert report["null_source"] == "calibrated on 5 models"
    assert report["sequential"]["fpr_exact"] <= report["fpr"] == 0.01
    assert main(["verify", str(out), owner, "--sequential"]) == 1
    assert "sequential     decided by the copy boundary" in capsys.readouterr().out

    assert main(["inspect", str(out)]) == 0
    assert "beta-binomial null calibrated on 5 models" in capsys.readouterr().out
    assert main(["verify", str(model_files["fp"]), owner]) == 1  # uncalibrated: as before
    assert "null           none (give --null-rate" in capsys.readouterr().out


def test_cli_calibrate_sealed(model_files, tmp_path, capsys, monkeypatch):
    pytest.importorskip("cryptography")
    from ipguard_jax.cli import main

    monkeypatch.setenv("FP_PASS", "correct horse battery")
    sealed = tmp_path / "cal.sealed"
    refs = [str(p) for p in model_files["refs"]]
    assert main(["calibrate", str(model_files["fp"]), *refs, "-o", str(sealed),
                 "--passphrase-env", "FP_PASS", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sealed"] and summary["calibration"]["format_version"] == 1
    assert b"beta-binomial" not in sealed.read_bytes()
    assert main(["verify", str(sealed), str(model_files["owner"]), "--passphrase-env",
                 "FP_PASS"]) == 1
    assert "calibrated on 5 models" in capsys.readouterr().out
    again = tmp_path / "again.sealed"  # a sealed input stays sealed
    assert main(["calibrate", str(sealed), *refs, "-o", str(again), "--passphrase-env",
                 "FP_PASS"]) == 0
    assert calibration_of(ipg.load(again, passphrase="correct horse battery")) is not None


@pytest.mark.parametrize("case, message", [
    ("four refs", "at least 5 reference models, got 4"),
    ("owner as ref", "is the owner itself"),
    ("sequential without null", "--sequential needs a null"),
    ("fnr without sequential", "--fnr needs --sequential"),
    ("threshold with sequential", "--threshold does not apply to --sequential"),
    ("bad fpr", "--fpr: must be a rate strictly between 0 and 1"),
    ("url ref", "references must be model files"),
])
def test_cli_errors_exit_2_with_one_line(model_files, tmp_path, capsys, case, message):
    from ipguard_jax.cli import main

    fp, owner = str(model_files["fp"]), str(model_files["owner"])
    refs = [str(p) for p in model_files["refs"]]
    out = str(tmp_path / "out")
    argv = {"four refs": ["calibrate", fp, *refs[:4], "-o", out],
            "owner as ref": ["calibrate", fp, owner, *refs, "-o", out],
            "sequential without null": ["verify", fp, owner, "--sequential"],
            "fnr without sequential": ["verify", fp, owner, "--fnr", "0.1"],
            "threshold with sequential": ["verify", fp, owner, "--sequential", "--null-rate",
                                          "0.2", "--threshold", "0.5"],
            "bad fpr": ["verify", fp, owner, "--fpr", "0"],
            "url ref": ["calibrate", fp, "http://127.0.0.1:9/p", *refs, "-o", out]}[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in _one_error_line(captured.err) and captured.out == ""
    assert not (tmp_path / "out").exists()


def test_cli_calibrate_help(capsys):
    from ipguard_jax.cli import main

    assert main(["calibrate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: ipguard calibrate" in out and "ipguard calibrate owner_fp" in out
