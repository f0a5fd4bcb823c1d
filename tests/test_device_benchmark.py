"""benchmarks/device.py, the prepared accelerator benchmark, on the CPU at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device.py"


def test_arguments_and_names(benchmark_script):
    module = benchmark_script("device")
    assert module.device_kind_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert module.device_kind_slug("TPU v5 lite") == "tpu_v5_lite"
    assert module.device_kind_slug("cpu") == "cpu"
    args = module.parse_args([])
    assert args.time_limit == 480 and args.sizes == "full"
    assert args.models == ["resnet18", "resnet50"] and args.ks == [3.0, 10.0]
    full = module.SIZES["full"]
    assert (full["resnet18"]["image"], full["resnet50"]["image"]) == (32, 224)
    for bad in (["--models", "vgg"], ["--time-limit", "0"], ["--sizes", "huge"],
                ["--ks", "3,x"], ["--ks", "-1"]):
        with pytest.raises(SystemExit):
            module.parse_args(bad)


# slow: runs the benchmark in a subprocess up to its 16 s limit; its options stay in the
# default suite in test_arguments_and_names
@pytest.mark.slow
def test_time_limit_writes_partial_results_before_it(tmp_path):
    # 16 s cannot hold a ResNet-18 compile: the watchdog writes what is there, flagged, and
    # ends the process before the limit.
    out = tmp_path / "device"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "IPGUARD_COMPILE_CACHE": "0"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "tiny", "--models",
                           "resnet18", "--time-limit", "16", "--reserve-s", "1", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert took < 18, took  # the interpreter's start adds a little to the script's own clock
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["partial"] is True
    assert result["partial_reason"].startswith("time limit 16 s: stopped during resnet18")
    assert result["device"]["platform"] == "cpu"
    assert "PARTIAL" in proc.stdout
    assert "**Partial results**" in out.with_suffix(".md").read_text()


@pytest.mark.slow  # compiles ResNet-18 and ResNet-50 on the CPU (about 2 minutes)
def test_tiny_run_on_cpu_records_every_phase(benchmark_script, tmp_path):
    module = benchmark_script("device")
    out = tmp_path / "device"
    # The GPU/TPU default path (device loop, compaction in the loop), forced on the CPU.
    result = module.main(["--sizes", "tiny", "--loop", "device", "--compact", "on",
                          "--no-second-process", "--out", str(out)])
    assert result["partial"] is False, (result["skipped"], result["errors"])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["command"].startswith("python benchmarks/device.py --sizes tiny")
    assert saved["device"]["platform"] == "cpu" and saved["device"]["device_kind"]
    assert saved["ks"] == [3.0, 10.0]
    for arch, image in (("resnet18", 32), ("resnet50", 32)):
        model = saved["models"][arch]
        assert model["image"] == image and set(model["by_k"]) == {"3", "10"}
        for k, run in model["by_k"].items():
            phases = run["phases"]
            assert {"ipguard_jax_warm", "torch_per_point", "torch_batched"} <= set(phases)
            assert ("ipguard_jax_cold" in phases) == (k == "3")  # compiled once, at the first k
            warm = phases["ipguard_jax_warm"]
            assert warm["loop"] == "device" and warm["compact"] is True
            assert warm["points"] == model["points"] and 0 < warm["useful_share"] <= 1
            assert phases["torch_per_point"]["points_run"] >= 1
            assert phases["torch_batched"]["calls"] >= 1
            # The same problem in both frameworks: the same start points, labels, targets.
            assert phases["torch_batched"]["steps_equal_ipguard_jax"] >= 0.5
        cold = model["by_k"]["3"]["phases"]["ipguard_jax_cold"]
        assert cold["seconds"] > model["by_k"]["3"]["phases"]["ipguard_jax_warm"]["seconds"]
    text = out.with_suffix(".md").read_text()
    assert "## resnet18 at 32x32" in text and "### k = 10" in text
    assert "PyTorch per point" in text
