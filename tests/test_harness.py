"""benchmarks/_harness.py: timing, the recorded environment, and atomic result files."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture
def harness(benchmark_script):
    return benchmark_script("_harness")


def slow_first_call(first_s=0.2, then_s=0.005):
    """A function whose first call takes ``first_s`` (as a compile would), later ones ``then_s``."""
    calls = []

    def fn():
        time.sleep(first_s if not calls else then_s)
        calls.append(len(calls))
        return len(calls)

    return fn, calls


def test_measure_times_the_first_call_apart_from_the_steady_state(harness):
    fn, calls = slow_first_call()
    t = harness.measure(fn, reps=4)
    assert len(calls) == 5 and len(t.times_s) == 4 and t.result == 5
    assert t.first_s >= 0.2 and max(t.times_s) < 0.1  # the slow call is not among the timed
    assert t.compile_s == pytest.approx(t.first_s - t.median_s)
    assert t.median_s == pytest.approx(float(np.median(t.times_s)))
    assert t.spread_s == pytest.approx(max(t.times_s) - min(t.times_s)) and t.spread_s >= 0


def test_measure_with_a_real_compile(harness):
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    x = jnp.ones((64, 64))
    t = harness.measure(lambda: f(x), reps=3)
    assert t.first_s > t.median_s  # tracing and compiling happen in the first call only
    assert float(t.result) == pytest.approx(float(jnp.tanh(x @ x.T).sum()))


def test_measure_waits_for_every_result(harness, monkeypatch):
    waited = []
    real = jax.block_until_ready
    monkeypatch.setattr(jax, "block_until_ready", lambda v: waited.append(v) or real(v))
    values = iter(range(10))
    harness.measure(lambda: jnp.asarray(next(values)), reps=2, warmup=1)
    assert [int(v) for v in waited] == [0, 1, 2, 3]  # first, warm-up and timed calls


def test_measure_warmup_per_call_and_bad_arguments(harness):
    fn, calls = slow_first_call(first_s=0.05, then_s=0.02)
    t = harness.measure(fn, reps=2, first_call=False, warmup=1, per_call=4)
    assert t.first_s is None and t.compile_s is None and len(calls) == 3
    assert all(0.004 <= s < 0.05 for s in t.times_s)  # 0.02 s calls, per 4 steps
    for bad in (dict(reps=0), dict(reps=1, warmup=-1)):
        with pytest.raises(ValueError):
            harness.measure(fn, **bad)


def test_alternate_rotates_rounds_and_keeps_each_result(harness):
    order = []

    def make(name):
        return lambda: order.append(name) or name.upper()

    fns = {name: make(name) for name in "abc"}
    timings = harness.alternate(fns, reps=4)
    assert "".join(order) == "abc" + "abc" + "bca" + "cab" + "abc"
    assert list(timings) == ["a", "b", "c"]
    assert all(len(t.times_s) == 4 and t.first_s is not None for t in timings.values())
    assert timings["b"].result == "B"
    order.clear()
    fixed = harness.alternate(fns, reps=2, rotate=False, first_call=False)
    assert "".join(order) == "abcabc" and fixed["a"].first_s is None
    with pytest.raises(ValueError):
        harness.alternate(fns, reps=0)


def test_timing_summary(harness):
    t = harness.Timing([0.3, 0.1, 0.2], first_s=1.0, result="r")
    assert (t.median_s, t.min_s, t.max_s) == (0.2, 0.1, 0.3)
    d = t.to_dict(digits=3)
    assert d["first_call_s"] == 1.0 and d["compile_s"] == 0.8 and d["spread_s"] == 0.2
    assert d["times_s"] == [0.3, 0.1, 0.2] and "result" not in d
    json.dumps(d)


def test_results_are_written_with_their_command(harness, tmp_path):
    result = {"command": harness.command("benchmarks/toy.py", ["--reps", "2"]),
              "median_s": np.float32(0.5), "times_s": np.array([0.5, 0.25]),
              "out": tmp_path / "x", "n": np.int64(3)}
    written = harness.write_results(tmp_path / "deep" / "toy", result, "# Toy")
    assert written == [tmp_path / "deep" / "toy.json", tmp_path / "deep" / "toy.md"]
    back = json.loads(written[0].read_text())
    assert back == {"command": "python benchmarks/toy.py --reps 2", "median_s": 0.5,
                    "times_s": [0.5, 0.25], "out": str(tmp_path / "x"), "n": 3}
    assert written[1].read_text() == "# Toy\n"
    assert sorted(os.listdir(tmp_path / "deep")) == ["toy.json", "toy.md"]  # no temporaries
    # A suffix is replaced; no Markdown: the JSON file alone.
    assert harness.write_results(tmp_path / "g.json", {"command": "c"}) == [tmp_path / "g.json"]


def test_a_result_without_its_command_is_refused(harness, tmp_path):
    with pytest.raises(ValueError, match="command"):
        harness.write_results(tmp_path / "toy", {"median_s": 1.0}, "# Toy")
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_files(harness, tmp_path, monkeypatch):
    harness.write_results(tmp_path / "toy", {"command": "old"}, "old report")
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    with pytest.raises(TypeError):  # a value JSON cannot hold: nothing is touched
        harness.write_results(tmp_path / "toy", {"command": "new", "bad": object()}, "new")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before

    # The report fails after the JSON file is complete: neither file is replaced.
    real = pathlib.Path.write_text

    def fail_on_markdown(self, text, *args, **kwargs):
        if ".toy.md." in self.name:
            raise OSError("disk full")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", fail_on_markdown)
    with pytest.raises(OSError, match="disk full"):
        harness.write_results(tmp_path / "toy", {"command": "new"}, "new report")
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_command_names_the_script_and_quotes_its_arguments(harness, monkeypatch):
    assert harness.command("/x/benchmarks/scale.py", ["--out", "a b"]) == (
        "python benchmarks/scale.py --out 'a b'")
    monkeypatch.setattr(sys, "argv", ["benchmarks/step_batch.py", "--reps", "3"])
    assert harness.command("benchmarks/step_batch.py") == "python benchmarks/step_batch.py --reps 3"


def test_environment_records_software_and_machine(harness):
    env = harness.environment()
    assert set(env) == {"python", "jax", "jaxlib", "ipguard_jax", "backend", "devices", "cpus",
                        "cpu", "machine", "platform", "malloc"}
    assert env["jax"] == jax.__version__ and env["backend"] == jax.default_backend()
    assert env["devices"] == [str(d) for d in jax.devices()] and env["cpus"] == os.cpu_count()
    assert env["malloc"] in ("glibc", "tcmalloc", "jemalloc", "unknown")
    json.dumps(env)
    renamed = harness.environment(rename={"cpus": "cpu_count"}, omit=["devices"], torch="2.x")
    assert "cpus" not in renamed and renamed["cpu_count"] == os.cpu_count()
    assert "devices" not in renamed and list(renamed)[-1] == "torch"
    with pytest.raises(KeyError, match="nope"):
        harness.environment(omit=["nope"])
    assert harness.describe(env).startswith(f"{env['cpu']} x{os.cpu_count()}")


def test_table(harness):
    assert harness.table(["a", "b"], [[1, "x"], [2.5, None]]) == [
        "| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | None |"]
    with pytest.raises(ValueError, match="2 columns"):
        harness.table(["a", "b"], [[1]])


def test_docstring_examples(harness):
    import doctest

    result = doctest.testmod(harness, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 10
