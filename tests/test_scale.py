"""Scale-out: sharded generation on 8 CPU devices, two processes under jax.distributed, and
checkpointed runs that resume after SIGKILL. Each case runs in its own process (the device
count and the distributed runtime are fixed when JAX starts)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ipguard_jax as ipg
from ipguard_jax.sharding import resolve_mesh

WORKER = Path(__file__).parent / "workers" / "generate_worker.py"
FIELDS = ("x", "labels", "i", "j", "loss", "converged", "steps", "source")


def _spawn(spec: dict) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen([sys.executable, str(WORKER), json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(spec: dict, timeout: float = 400) -> dict:
    proc = _spawn(spec)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    with np.load(spec["out"], allow_pickle=False) as f:
        return dict(f)


def _assert_same(results, a, b, exact=True):
    for field in FIELDS:
        x, y = results[f"{a}_{field}"], results[f"{b}_{field}"]
        if exact or field not in ("x", "loss"):
            np.testing.assert_array_equal(x, y, err_msg=field)
        else:
            np.testing.assert_allclose(x, y, atol=1e-5, err_msg=field)


SHARDED_CONFIGS = [
    dict(num=37, batch_size=12, keep="all"),  # 12 -> 16 per chunk over 8 devices, padded
    dict(num=37, batch_size=12),  # keep="converged": refills across chunks
    dict(num=37, batch_size=12, compact=True),
    dict(num=37, batch_size=12, loop="device"),
    dict(num=37, batch_size=12, loop="device", compact=True),  # refills inside the loop
    dict(num=20, batch_size=12, init="noise", keep="all"),
]


@pytest.mark.parametrize("configs", [
    SHARDED_CONFIGS[:1],
    # slow: refills, compaction and the device loop, sharded; the first case keeps sharded
    # generation and verification in the default suite
    pytest.param(SHARDED_CONFIGS[1:], marks=pytest.mark.slow)], ids=["padded", "refills"])
def test_sharded_generation_and_verification_on_8_devices_equal_one_device(tmp_path, configs):
    results = _run({"devices": 8, "compare": True, "configs": configs,
                    "out": str(tmp_path / "mlp.npz")})
    for index, config in enumerate(configs):
        assert results[f"{index}_sharded_devices"] == 8
        assert results[f"{index}_single_devices"] == 1
        assert len(results[f"{index}_sharded_x"]) == config["num"]
        _assert_same(results, f"{index}_sharded", f"{index}_single")
        # The owner as a suspect, queried sharded (13-row batches: padded to 16) and not.
        for run in ("sharded", "single"):
            np.testing.assert_array_equal(results[f"{index}_{run}_suspect_labels"],
                                          results[f"{index}_{run}_labels"])


@pytest.mark.slow  # a subprocess with 8 devices, two runs of 192 points each
def test_each_device_compacts_its_own_slots(tmp_path):
    # Device loop with compaction on 8 devices, 8 slots each: the same fingerprints as one
    # device, with the refills done by each device on its own slots. The compiled loop's only
    # collectives are the scalar reductions that decide when it stops (all-reduce): no
    # candidate, point or result crosses devices until the host reads the results.
    configs = [dict(num=192, batch_size=64, keep="all", k=10.0, steps=60, loop="device",
                    compact=True),
               dict(num=64, batch_size=64, k=3.0, steps=60, loop="device", compact=True)]
    results = _run({"devices": 8, "compare": True, "collectives": True, "configs": configs,
                    "out": str(tmp_path / "own.npz")})
    for index in range(len(configs)):
        sharded, single = f"{index}_sharded", f"{index}_single"
        _assert_same(results, sharded, single)
        assert results[f"{sharded}_all-reduce"] > 0
        for op in ("all-gather", "all-to-all", "collective-permute", "reduce-scatter"):
            assert results[f"{sharded}_{op}"] == 0, op
        assert results[f"{sharded}_syncs"] <= 1 + np.log2(64)
    # keep="all": every candidate ran, on 8 devices in about as many point-steps as on one
    # (each device refills 2 of its 8 slots at a time, one device 4 of 64).
    useful = int(results["0_single_steps"].sum())
    share = {run: useful / int(results[f"0_{run}_point_steps"]) for run in ("sharded", "single")}
    assert share["sharded"] >= 0.9 * share["single"] > 0.5, share


@pytest.mark.slow  # subprocesses with 8 devices / 2 hosts
def test_sharded_convolutional_owner_agrees_with_one_device(tmp_path):
    # Convolutions may round differently with 2 rows per device than with 16 on one.
    config = dict(num=21, batch_size=16, keep="all", steps=60, k=0.02)
    results = _run({"devices": 8, "compare": True, "model": "cnn", "configs": [config],
                    "out": str(tmp_path / "cnn.npz")})
    _assert_same(results, "0_sharded", "0_single", exact=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # subprocesses with 8 devices / 2 hosts
def test_two_processes_share_the_work_and_both_get_the_whole_result(tmp_path):
    config = dict(num=37, batch_size=12)
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [_spawn({"devices": 2, "process_id": p, "num_processes": 2,
                     "coordinator": coordinator, "configs": [config],
                     "out": str(tmp_path / f"p{p}.npz")}) for p in range(2)]
    for proc in procs:
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-3000:]
    single = _run({"devices": 1, "configs": [config], "out": str(tmp_path / "single.npz")})
    for p in range(2):
        with np.load(tmp_path / f"p{p}.npz") as f:
            multi = dict(f)
        assert multi["0_run_processes"] == 2 and multi["0_run_devices"] == 4
        for field in FIELDS:
            np.testing.assert_array_equal(multi[f"0_run_{field}"], single[f"0_run_{field}"])


def _wait_for_checkpoint(directory: Path, proc: subprocess.Popen, step: int) -> bool:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (directory / str(step)).is_dir():
            return True
        time.sleep(0.02)
    return False


# slow: kills a run in a subprocess and resumes it (three processes); generate's checkpoints
# stay in the default suite in test_a_checkpoint_of_another_run_is_refused (written, a
# finished run resumed, another run refused) and tests/test_cli_secrecy.py (removed, kept)
@pytest.mark.slow
@pytest.mark.parametrize("compact, loop", [(False, "host"), (True, "host"), (True, "device")])
def test_a_run_killed_part_way_resumes_to_the_same_fingerprints(tmp_path, compact, loop):
    # k=30 on the digits MLP: most points run their whole budget, so chunks take a while.
    config = dict(num=48, batch_size=8, keep="all", k=30.0, steps=600, compact=compact,
                  loop=loop)
    spec = {"configs": [config], "checkpoint": str(tmp_path / "ckpt")}
    proc = _spawn({**spec, "out": str(tmp_path / "killed.npz")})
    assert _wait_for_checkpoint(tmp_path / "ckpt", proc, step=2), proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.npz").exists()  # it did not finish
    resumed = _run({**spec, "out": str(tmp_path / "resumed.npz")})
    fresh = _run({"configs": [config], "out": str(tmp_path / "fresh.npz")})
    for field in FIELDS:
        np.testing.assert_array_equal(resumed[f"0_run_{field}"], fresh[f"0_run_{field}"],
                                      err_msg=field)


def test_a_checkpoint_of_another_run_is_refused(owner, digits, tmp_path):
    config = ipg.FingerprintConfig(num=8, batch_size=4, keep="all", steps=20)
    data = digits["test"][0]
    first = ipg.generate(owner, config, key=0, data=data, progress=False,
                         checkpoint=tmp_path / "ckpt", keep_checkpoint=True)
    again = ipg.generate(owner, config, key=0, data=data, progress=False,
                         checkpoint=tmp_path / "ckpt", keep_checkpoint=True)  # nothing to run
    np.testing.assert_array_equal(first.x, again.x)
    with pytest.raises(ValueError, match="holds another generation run .*key"):
        ipg.generate(owner, config, key=1, data=data, progress=False,
                     checkpoint=tmp_path / "ckpt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="checkpoint must be a directory"):
        ipg.generate(owner, config, key=0, data=data, progress=False,
                     checkpoint=tmp_path / "file")
    with pytest.raises(ValueError, match="checkpoint_every"):
        ipg.generate(owner, config, key=0, data=data, progress=False,
                     checkpoint=tmp_path / "c2", checkpoint_every=0)


def test_mesh_argument_is_checked():
    assert resolve_mesh(None) is None
    assert resolve_mesh("auto") is None  # one CPU device in this process
    with pytest.raises(ValueError, match="mesh must be"):
        resolve_mesh("all")
    with pytest.raises(TypeError, match="mesh must be"):
        resolve_mesh(8)
