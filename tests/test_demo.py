"""The demo and the command line stay runnable, and the demo's verdicts are right."""

import contextlib
import io
import sys
from pathlib import Path

import pytest

import ipguard_jax as ipg
from ipguard_jax import __main__ as cli
from ipguard_jax import demo, evaluation
from ipguard_jax.calibration import calibration_of


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One small run of the demo (fewer fingerprints and epochs): its result, output, paths."""
    tmp = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = demo.run(num=40, epochs=15, out=tmp / "fp", plot=tmp / "plots" / "aruc.png",
                          progress=False)
    return result, printed.getvalue(), tmp


@pytest.mark.slow  # runs the whole demo (about a minute)
def test_pirated_copies_are_flagged_and_independent_models_cleared(demo_run):
    result, _, _ = demo_run
    kinds = {name: row["kind"] for name, row in result.rows.items()}
    assert sorted(kinds.values()) == ["independent"] * 3 + ["pirated"] * 2
    for name, row in result.rows.items():
        assert row["is_copy"] == (row["kind"] == "pirated"), name
        if row["kind"] == "pirated":
            assert row["p_value"] <= demo.FPR and row["matching_rate"] >= 0.8, name
        else:
            assert row["p_value"] > demo.FPR and row["matching_rate"] < 0.6, name
        assert row["accuracy"] > 0.9, name


@pytest.mark.slow  # runs the whole demo (about a minute)
def test_the_null_is_calibrated_on_five_references_that_are_not_scored(demo_run):
    result, _, tmp = demo_run
    calibration = result.calibration
    assert calibration.num_references == 5 and calibration.n_points == 40
    assert not set(calibration.names) & set(result.rows)
    # The saved set carries the calibration the verdicts used.
    assert calibration_of(ipg.load(tmp / "fp")) == calibration


@pytest.mark.slow  # runs the whole demo (about a minute)
def test_aruc_report_and_printed_table(demo_run):
    result, printed, _ = demo_run
    report = result.report
    assert report.aruc_roc == 1.0 and 0.0 < report.aruc_min <= 1.0
    assert report.owner_rate == 1.0
    assert set(report.pirated) == {n for n, r in result.rows.items() if r["kind"] == "pirated"}
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("suspect"))
    assert header.split() == ["suspect", "kind", "test", "acc", "match", "p-value", "verdict"]
    for name, row in result.rows.items():
        line = next(line for line in lines if line.startswith(name + " "))
        assert row["kind"] in line
        assert line.split()[-1] == ("COPY" if row["is_copy"] else "no")
        assert f"{row['matching_rate']:.0%}" in line
    assert "calibrated on 5 models" in printed
    assert f"ROC-AUC {report.aruc_roc:.3f}" in printed
    assert f"min-integral {report.aruc_min:.3f}" in printed


@pytest.mark.slow  # runs the whole demo (about a minute)
def test_plot_is_written_when_matplotlib_is_present(demo_run):
    pytest.importorskip("matplotlib")
    result, printed, tmp = demo_run
    assert result.plot == tmp / "plots" / "aruc.png"
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot skipped" not in printed


def test_plot_is_skipped_with_advice_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    report = evaluation.summarize({"copy": 0.9}, {"other": 0.3}, num_points=10, bootstrap=0)
    assert demo._save_plot(report, tmp_path / "aruc.png", print) is None
    assert "pip install 'ipguard-jax[plot]'" in capsys.readouterr().out
    assert not (tmp_path / "aruc.png").exists()


@pytest.mark.parametrize("argv, plot", [
    ([], Path(demo.PLOT_NAME)),
    (["--out", "results/fp"], Path("results") / demo.PLOT_NAME),
    (["--out", "fp", "--plot", "x.png"], Path("x.png")),
    (["--out", "fp", "--no-plot"], None),
])
def test_cli_options_reach_run(argv, plot, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run", lambda **kw: calls.append(kw))
    assert cli.main(["demo", "--num", "7", "--k", "2", "--quiet", *argv]) == 0
    assert calls[0]["plot"] == plot
    assert (calls[0]["num"], calls[0]["k"], calls[0]["progress"]) == (7, 2.0, False)


def test_cli_usage_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["demo", "--num", "many"]) == 2  # argparse's one-line error, no traceback
    assert "invalid int value" in capsys.readouterr().err
    assert cli.main(["demo", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--plot" in help_text and "--out" in help_text
