"""benchmarks/cold_start.py: cold, warm and second-process times of generate, at a tiny size."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_tiny_run_records_three_times_per_variant(benchmark_script, tmp_path):
    module = benchmark_script("cold_start")
    out = tmp_path / "cold"
    result = module.main(["--arch", "tiny", "--num", "4", "--steps", "5", "--data", "",
                          "--variants", "default", "--out", str(out)])
    row = result["variants"]["default"]
    # Three separate calls, each timed, from two processes on one compile-cache directory.
    assert row["cold_s"] > 0 and row["warm_s"] > 0 and row["second_process_s"] > 0
    assert len(row["first"]["calls"]) == 2 and len(row["second"]["calls"]) == 1
    assert row["first"]["backend"] == "cpu"
    assert row["cold_target_s"] == pytest.approx(2 * row["warm_s"] + 10)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["command"].startswith("python benchmarks/cold_start.py --arch tiny")
    assert "| default |" in out.with_suffix(".md").read_text()


def test_unknown_variant_is_refused(benchmark_script):
    module = benchmark_script("cold_start")
    with pytest.raises(SystemExit):
        module.main(["--variants", "fastest"])
