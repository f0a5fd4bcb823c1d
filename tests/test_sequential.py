"""Sequential verification: the SPRT design, its error rates by simulation, and the query path."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_http_security import FAST, Server, reply

import ipguard_jax as ipg
from ipguard_jax.calibration import Calibration, calibrate, points_sha256, with_calibration
from ipguard_jax.sequential import sequential_design, verify_sequential
from ipguard_jax.suspects import HTTPSuspect, QueryBudgetExceeded, ResumeFileError

from test_calibration import C, make_set  # a set of 100 random points by default

N = 100


def null_of(alpha, beta, n=N):
    return Calibration(alpha, beta, n, (0.2,) * 5, tuple("abcde"), ("",) * 5, None, None, 0.01,
                       "test", "0" * 64)


class LabelSuspect:
    """A label-only black box that matches the owner on each fingerprint with probability
    ``rate`` (drawn once per point: a deterministic model), and counts what it is sent."""

    def __init__(self, fp, rate, seed):
        rng = np.random.default_rng(seed)
        hit = rng.random(len(fp)) < rate
        wrong = (fp.labels + 1 + rng.integers(0, C - 1, len(fp))) % C
        self.table = {row.tobytes(): int(label) for row, label in
                      zip(fp.x, np.where(hit, fp.labels, wrong))}
        self.sent, self.calls = [], []

    def __call__(self, x):
        self.sent.extend(row.tobytes() for row in x)
        self.calls.append(sum(row.tobytes() not in self.table for row in x))  # decoys
        return np.array([self.table.get(row.tobytes(), 0) for row in x])


@pytest.fixture(scope="module")
def fp():
    return make_set()


@pytest.fixture(scope="module")
def calibrated(fp):
    rng = np.random.default_rng(1)
    refs = []
    for rate in rng.beta(3.0, 17.0, 30):
        suspect = LabelSuspect(fp, rate, int(rng.integers(1 << 30)))
        refs.append(suspect(fp.x))
    return with_calibration(fp, calibrate(fp, refs))


# -- the design ------------------------------------------------------------------------------------

def simulate_design(design, rates, rng):
    """Monte Carlo of the design's stopping rule: (answers used, judged a copy) per path."""
    n = design.num_points
    s = np.cumsum(rng.random((len(rates), n)) < rates[:, None], axis=1)
    t = np.arange(1, n + 1)
    stop_copy = s >= design.upper[t]
    stop_innocent = s <= design.lower[t]
    stop_copy[:, -1] = s[:, -1] >= design.upper[n]
    stop_innocent[:, -1] = ~stop_copy[:, -1]
    first = np.argmax(stop_copy | stop_innocent, axis=1)
    return first + 1, stop_copy[np.arange(len(rates)), first]


@pytest.mark.parametrize("null", [{"calibration": null_of(3.0, 17.0)},
                                  {"calibration": null_of(1.0, 3.0)},
                                  {"null_rate": 0.3}])
def test_the_design_guarantees_its_error_rates_and_the_dp_is_exact(null):
    design = sequential_design(N, fpr=0.05, fnr=0.1, pirate_rate=0.8, **null)
    assert design.fpr_exact <= 0.05
    rng = np.random.default_rng(2)
    m = 20000
    cal = null.get("calibration")
    null_rates = rng.beta(cal.alpha, cal.beta, m) if cal else np.full(m, null["null_rate"])
    used, copy = simulate_design(design, null_rates, rng)
    sd = np.sqrt(design.fpr_exact * (1 - design.fpr_exact) / m)
    assert abs(copy.mean() - design.fpr_exact) < 4 * sd + 1e-4
    assert used.mean() == pytest.approx(design.expected_null, rel=0.05)
    used, copy = simulate_design(design, np.full(m, 0.8), rng)
    sd = np.sqrt(design.fnr_exact * (1 - design.fnr_exact) / m)
    assert abs((1 - copy.mean()) - design.fnr_exact) < 4 * sd + 1e-4
    assert used.mean() == pytest.approx(design.expected_pirate, rel=0.05)
    # copies that match more often are caught at least as often (monotone stopping sets)
    assert 1 - simulate_design(design, np.full(m, 0.95), rng)[1].mean() <= design.fnr_exact


def test_a_usual_null_decides_in_a_few_answers_and_meets_both_targets():
    design = sequential_design(N, calibration=null_of(3.0, 17.0))
    assert design.fpr_exact <= 0.01 and design.fnr_exact <= 0.05
    assert design.expected_null < 10 and design.expected_pirate < 10
    t = np.arange(1, N)
    assert (np.diff(design.upper[1:N]) >= 0).all() and (design.lower[t] < design.upper[t]).all()
    assert not design.upper.flags.writeable


def test_a_null_too_dispersed_for_the_pirate_rate_reports_the_fnr_it_reaches():
    # Beta(1, 3): about 1% of independent models match 80% or more; copies at 80% cannot be
    # told from them, and the design says so instead of claiming fnr=0.05
    design = sequential_design(N, calibration=null_of(1.0, 3.0))
    assert design.fpr_exact <= 0.01 and design.fnr_exact > 0.3
    assert design.upper[N] == null_of(1.0, 3.0).threshold(0.01)  # the fixed test's


def test_design_arguments_are_checked():
    cases = [({"null_rate": 0.9}, "pirate_rate must be a number between the null's mean"),
             ({"null_rate": 0.0}, r"null_rate must be a number in \(0, 1\)"),
             ({}, "give the null as calibration= or null_rate="),
             ({"null_rate": 0.2, "calibration": null_of(2.0, 8.0)}, "one of them"),
             ({"null_rate": 0.2, "fnr": 0.0}, r"fnr must be a number in \(0, 1\)"),
             ({"null_rate": 0.2, "fpr": 1.5}, r"fpr must be a number in \(0, 1\)"),
             ({"null_rate": 0.2, "pirate_rate": 1.0}, "between the null's mean")]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            sequential_design(N, **kwargs)
    with pytest.raises(ValueError, match="num_points must be an int >= 1"):
        sequential_design(0, null_rate=0.2)


# -- verify_sequential on synthetic suspects -------------------------------------------------------

def test_error_rates_and_queries_by_simulation(calibrated):
    cal = ipg.calibration.calibration_of(calibrated)
    design = sequential_design(N, calibration=cal, fpr=0.05, fnr=0.1)
    rng = np.random.default_rng(3)
    runs = {}
    for kind, rates in (("innocent", rng.beta(cal.alpha, cal.beta, 600)),
                        ("pirate", np.full(400, 0.8))):
        verdicts = [verify_sequential(calibrated, LabelSuspect(calibrated, rate, seed), key=seed,
                                      fpr=0.05, fnr=0.1)
                    for seed, rate in enumerate(rates)]
        runs[kind] = verdicts
        queried = [v.num_queried for v in verdicts]
        assert np.median(queried) <= 20 and max(queried) <= N  # batches of 10: 1 or 2
        assert all(v.fpr_exact == design.fpr_exact and v.fnr_exact == design.fnr_exact
                   for v in verdicts)
    fpr = np.mean([v.is_copy for v in runs["innocent"]])
    fnr = np.mean([not v.is_copy for v in runs["pirate"]])
    assert fpr <= design.fpr_exact + 3 * np.sqrt(design.fpr_exact / 600)
    assert fnr <= design.fnr_exact + 3 * np.sqrt(design.fnr_exact / 400)
    for v in runs["innocent"] + runs["pirate"]:  # the stage-wise p-value agrees with the decision
        assert (v.p_value <= v.fpr_exact) == v.is_copy
        assert v.stopped_by in ("copy boundary", "innocent boundary", "final test")


def test_a_binomial_null_and_the_verdict_fields(fp):
    suspect = LabelSuspect(fp, 1.0, 0)
    v = verify_sequential(fp, suspect, null_rate=0.2, key=5, batch_size=4)
    assert v.is_copy and v.stopped_by == "copy boundary" and v.null_source == "user-given rate"
    assert v.num_points <= v.num_queried == 4 * -(-v.num_points // 4) and v.num_available == N
    assert len(suspect.sent) == v.num_queried == len(set(suspect.sent))  # nothing after
    assert v.matching_rate == 1.0 and v.threshold <= 1.0 and v.p_value <= v.fpr_exact <= 0.01
    assert "COPY (copy boundary, sequential)" in str(v) and "of 100 queried" in str(v)
    innocent = verify_sequential(fp, LabelSuspect(fp, 0.0, 1), null_rate=0.2, key=5)
    assert not innocent.is_copy and innocent.stopped_by == "innocent boundary"
    assert innocent.p_value > 0.01 and innocent.num_matches == 0
    with pytest.raises(ValueError, match="sequential verification needs a null"):
        verify_sequential(fp, suspect)
    with pytest.raises(ValueError, match="pirate_rate must be a number between"):
        verify_sequential(fp, suspect, null_rate=0.85)


def test_undecided_to_the_end_falls_back_to_the_fixed_test(fp):
    # Beta(1, 3): so dispersed that no copy stop is possible before the end
    cal = dataclasses.replace(null_of(1.0, 3.0), points_sha256=points_sha256(fp))
    calibrated = with_calibration(fp, cal)
    design = sequential_design(N, calibration=cal)
    assert (design.upper[1:N] > np.arange(1, N)).all()
    v = verify_sequential(calibrated, LabelSuspect(fp, 1.0, 11), key=0)
    assert v.stopped_by == "final test" and v.num_points == v.num_queried == N
    assert v.is_copy and design.upper[N] == cal.threshold() == ipg.verify(
        calibrated, LabelSuspect(fp, 1.0, 11)).fpr_threshold * N
    assert v.fpr_threshold == design.upper[N] / N and v.p_value <= v.fpr_exact


def test_the_order_is_secret_random_and_fixed_by_the_key(fp):
    def order(key):
        suspect = LabelSuspect(fp, 0.5, 0)
        verify_sequential(fp, suspect, null_rate=0.3, pirate_rate=0.6, key=key,
                          batch_size=N, fpr=0.4)
        return suspect.sent

    first = order(7)
    assert first == order(7) and first != order(8)
    assert order(None) != order(None)
    assert sorted(first) == sorted(row.tobytes() for row in fp.x)  # a permutation
    assert first != [row.tobytes() for row in fp.x]


def test_decoys_are_mixed_into_every_batch(fp):
    natural = np.random.default_rng(4).uniform(0, 1, (300, 4)).astype(np.float32)
    suspect = LabelSuspect(fp, 1.0, 0)
    v = verify_sequential(fp, suspect, null_rate=0.2, decoys=natural, key=3, batch_size=6)
    assert v.is_copy and 1 <= v.num_decoys < v.num_queried + v.num_decoys
    assert len(suspect.sent) == v.num_queried + v.num_decoys
    assert min(suspect.calls) >= 1  # every request mixes


# -- HTTPSuspect -----------------------------------------------------------------------------------

def endpoint_for(fp, rate, seed):
    suspect = LabelSuspect(fp, rate, seed)

    def respond(handler, body):
        inputs = np.asarray(json.loads(body)["inputs"], np.float32)
        reply(handler, 200, json.dumps({"labels": suspect(inputs).tolist()}).encode())

    return respond


def test_http_suspect_budget_resume_and_binding(fp, tmp_path):
    resume = tmp_path / "resume.json"
    with Server(endpoint_for(fp, 0.5, 2)) as server:
        def suspect(**kwargs):
            return HTTPSuspect(server.url, batch_size=5, resume_path=resume, **FAST, **kwargs)

        kwargs = dict(null_rate=0.3, pirate_rate=0.6, fpr=0.01, fnr=0.01, key=21, batch_size=5)
        with pytest.raises(QueryBudgetExceeded):
            verify_sequential(fp, suspect(query_budget=10), **kwargs)
        assert len(server.requests) == 2
        done = verify_sequential(fp, suspect(query_budget=N), **kwargs)  # resumes, then more
        sent = len(server.requests)
        assert done.num_queried == 5 * sent and sent > 2  # 2 batches came from the file
        again = suspect()  # the same run again: every answer from the resume file
        assert verify_sequential(fp, again, **kwargs) == done
        assert len(server.requests) == sent and again.requests_sent == 0
        with pytest.raises(ResumeFileError, match="written for other order"):
            verify_sequential(fp, suspect(), **{**kwargs, "key": 22})
        with pytest.raises(ResumeFileError, match="written for other order"):
            ipg.verify(fp, suspect(), batch_size=5)  # a fixed run is another run
        assert len(server.requests) == sent


def test_http_suspect_with_decoys_shares_its_batches_with_the_fixed_run(fp, tmp_path):
    natural = np.random.default_rng(5).uniform(0, 1, (200, 4)).astype(np.float32)
    resume = tmp_path / "resume.json"
    with Server(endpoint_for(fp, 1.0, 3)) as server:
        kwargs = dict(decoys=natural, key=4, batch_size=8)
        v = verify_sequential(fp, HTTPSuspect(server.url, batch_size=8, resume_path=resume,
                                              **FAST), null_rate=0.2, **kwargs)
        assert v.is_copy and len(server.requests) == -(-(v.num_queried + v.num_decoys) // 8)
        first = len(server.requests)
        full = ipg.verify(fp, HTTPSuspect(server.url, batch_size=8, resume_path=resume, **FAST),
                          **kwargs)
        assert full.num_matches == N
        assert len(server.requests) == -(-(N + full.num_decoys) // 8)  # the first resumed
        assert first < len(server.requests)


def test_the_verdicts_benchmark_analysis_on_recorded_labels(benchmark_script):
    """benchmarks/verdicts.py at toy size: its analysis of recorded answers (no models)."""
    module = benchmark_script("verdicts")
    fp = make_set(n=60, seed=6)
    rng = np.random.default_rng(7)
    independent = {f"i{k}": LabelSuspect(fp, r, k)(fp.x)
                   for k, r in enumerate(rng.beta(3.0, 12.0, 8))}
    pirated = {f"p{k}": LabelSuspect(fp, r, 100 + k)(fp.x) for k, r in enumerate((0.95, 0.85))}
    result = module.analyse(fp, pirated, independent, orders=3)
    s = result["summary"]
    assert s["num_independent"] == 8 and s["queries_fixed"] == 60
    assert s["pirated_detected"] == 2 and s["loo_false_positives"] <= 1
    assert s["median_queries_sequential"] <= 20 and s["disagreement_with_fixed"] <= 0.2
    assert set(result["leave_one_out"]) == set(independent)
    md = module.markdown({"options": {"fpr": 0.01, "fnr": 0.05, "pirate_rate": 0.8,
                                      "batch_size": 10, "orders": 3},
                          "setting": {"data": "digits"},
                          "configs": {"toy": {"num_fingerprints": 60, **result}}}, "cmd")
    assert "| toy | 60 | " in md and "- toy: p0 " in md


def test_the_verdicts_benchmark_reports_a_null_no_sequential_test_can_beat(benchmark_script):
    """Independents matching more than pirate_rate (digits at k=10 match ~0.9): the fixed test
    is still reported, the sequential columns say there is no design."""
    module = benchmark_script("verdicts")
    fp = make_set(n=60, seed=8)
    rng = np.random.default_rng(9)
    independent = {f"i{k}": LabelSuspect(fp, r, k)(fp.x)
                   for k, r in enumerate(rng.beta(40.0, 4.0, 6))}
    pirated = {"p0": LabelSuspect(fp, 0.99, 100)(fp.x)}
    result = module.analyse(fp, pirated, independent, orders=2)
    s = result["summary"]
    assert s["models_without_sequential_design"] == 7 and s["median_queries_sequential"] is None
    assert "fixed_is_copy" in result["sequential"]["pirated"]["p0"]
    md = module.markdown({"options": {"fpr": 0.01, "fnr": 0.05, "pirate_rate": 0.8,
                                      "batch_size": 10, "orders": 2},
                          "setting": {"data": "digits"},
                          "configs": {"toy": {"num_fingerprints": 60, **result}}}, "cmd")
    assert "no design for 7 models" in md
