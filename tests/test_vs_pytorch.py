"""The PyTorch comparison benchmark runs end to end in its tiny --quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_pytorch.py"
IMPLEMENTATIONS = ("a_per_point", "b1_naive", "b2_best", "c_chunked", "c_compact")


@pytest.mark.torch
@pytest.mark.slow
def test_quick_mode_writes_the_report(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "vs_pytorch.json").read_text())
    assert (tmp_path / "vs_pytorch.md").read_text().startswith("# IPGuard generation")
    for key in ("command", "settings", "environment", "matmul_peak", "models", "wall_time_s"):
        assert key in report
    assert report["quick"] and "--quick" in report["command"]
    assert report["matmul_peak"]["best_gflops"] > 0
    model = report["models"]["resnet8"]
    # torch and the converted JAX model give every start point the same owner label i
    assert model["labels"]["torch_argmax_equals_generate_i"] == 1.0
    assert model["labels"]["max_abs_logit_diff_torch_vs_jax"] < 1e-3
    num = model["settings"]["num_points"]
    assert len(model["owner_labels_i"]) == len(model["targets_j"]) == num
    assert all(i != j for i, j in zip(model["owner_labels_i"], model["targets_j"]))
    assert set(model["per_k"]) == {"0.1", "3"}
    for per in model["per_k"].values():
        for name in IMPLEMENTATIONS:
            summary = per[name]
            for key in ("seconds", "fingerprints_per_s", "points_per_s", "converged_share",
                        "mean_steps", "times_s"):
                assert key in summary, (name, key)
            assert summary["max_steps"] <= model["settings"]["steps"]
            # same i, j and algorithm: every implementation converges the same points
            assert per["agreement"][name]["converged_same_as_b1"] == 1.0
        assert per["a_per_point"]["extrapolated_all_points"]["seconds"] > 0
        assert per["c_compact"]["executed"]["point_steps"] > 0
        assert {"c_compact_vs_a_per_point", "c_compact_vs_b1_naive",
                "c_compact_vs_b2_best"} <= set(per["speedup"])
    roofline = model["roofline"]
    assert roofline["xla_step"]["step_flops"] > 0
    assert all(0 < g["utilisation_of_peak"] for g in roofline["generate"].values())
