"""The command line's secrecy and error contract: OS-drawn keys, bounded seeds, commitments,
checkpoints that do not outlive the run, one error line (also on a full disk), exit 2 always."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import ipguard_jax as ipg
from ipguard_jax import cli
from ipguard_jax.cli import main

from test_cli import _no_traceback, files  # noqa: F401  (the module-scoped model fixture)

FAST = ["--num", "6", "--k", "0.1", "--steps", "30", "--init", "noise", "--keep", "all",
        "--quiet"]


def _fingerprint(files, out, *extra):
    return main(["fingerprint", str(files["owner"]), "-o", str(out), *FAST, *extra])


def test_without_a_seed_the_key_comes_from_the_os_and_differs_per_run(files, tmp_path, capsys):
    assert _fingerprint(files, tmp_path / "a", "--json") == 0
    first = json.loads(capsys.readouterr().out)
    assert _fingerprint(files, tmp_path / "b", "--json") == 0
    second = json.loads(capsys.readouterr().out)
    assert first["key_source"] == second["key_source"] == "os"
    assert first["sha256"] != second["sha256"]
    a, b = ipg.load(tmp_path / "a"), ipg.load(tmp_path / "b")
    assert a.metadata["key"]["data"] != b.metadata["key"]["data"]
    assert not np.array_equal(a.x, b.x)


def test_an_explicit_seed_is_reproducible_and_said_to_be(files, tmp_path, capsys):
    seed = str(2 ** 64 - 1)  # all 64 bits are usable
    assert _fingerprint(files, tmp_path / "a", "--seed", seed) == 0
    text = capsys.readouterr().out
    assert "given explicitly" in text and "regenerate" in text
    assert _fingerprint(files, tmp_path / "b", "--seed", seed) == 0
    a, b = ipg.load(tmp_path / "a"), ipg.load(tmp_path / "b")
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.labels, b.labels)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "a")]) == 0
    assert "given explicitly" in capsys.readouterr().out


@pytest.mark.parametrize("option,value,message", [
    ("--seed", str(2 ** 64), "2**64"), ("--seed", str(2 ** 70), "2**64"),
    ("--seed", "-1", ">= 0"), ("--seed", "1e3", "whole number")])
def test_out_of_range_seeds_are_one_line_errors(files, tmp_path, capsys, option, value, message):
    assert _fingerprint(files, tmp_path / "fp", option, value) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert message in err and not (tmp_path / "fp").exists()


def test_out_of_range_decoy_seed_is_a_one_line_error(files, capsys):
    code = main(["verify", str(files["fp"]), str(files["independent"]), "--decoys", "digits",
                 "--decoy-seed", str(2 ** 64)])
    assert code == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "2**64" in err


# --- commitments --------------------------------------------------------------------------------

@pytest.fixture()
def committed(files, tmp_path, monkeypatch):
    fp = ipg.load(files["fp"])
    nonce = ipg.new_nonce()
    path = tmp_path / "commitment.txt"
    path.write_text(ipg.commit(fp, nonce) + "\n")
    monkeypatch.setenv("IPG_TEST_NONCE", nonce)
    return path


def test_inspect_and_verify_check_a_matching_commitment(files, committed, capsys):
    args = ["--commitment", str(committed), "--nonce-env", "IPG_TEST_NONCE"]
    assert main(["inspect", str(files["fp"]), *args]) == 0
    out = capsys.readouterr().out
    assert f"matches {committed}" in out
    assert main(["inspect", str(files["fp"]), *args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["commitment"] == str(committed)
    code = main(["verify", str(files["fp"]), str(files["owner"]), *args, "--json"])
    assert code == cli.EXIT_COPY
    assert json.loads(capsys.readouterr().out)["commitment"] == str(committed)


def test_a_set_edited_after_its_commitment_is_refused(files, committed, tmp_path, capsys):
    fp = ipg.load(files["fp"])
    labels = fp.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    edited = ipg.Fingerprints(**{**fp.arrays(), "labels": labels}, metadata=fp.metadata)
    ipg.save(edited, tmp_path / "edited")  # a fresh, self-consistent sha256
    assert main(["inspect", str(tmp_path / "edited")]) == 0  # the integrity check passes...
    capsys.readouterr()
    for command in (["inspect", str(tmp_path / "edited")],
                    ["verify", str(tmp_path / "edited"), str(files["owner"])]):
        code = main([*command, "--commitment", str(committed), "--nonce-env", "IPG_TEST_NONCE"])
        captured = capsys.readouterr()
        assert code == 2, command  # ...the commitment does not
        _no_traceback(captured.err)
        assert "does not match the commitment" in captured.err and captured.out == ""
        assert os.environ["IPG_TEST_NONCE"] not in captured.err


@pytest.mark.parametrize("case", ["wrong nonce", "no nonce", "nonce without commitment",
                                  "missing file", "not hex"])
def test_commitment_option_errors(files, committed, tmp_path, capsys, monkeypatch, case):
    args = {"wrong nonce": ["--commitment", str(committed), "--nonce-env", "OTHER_NONCE"],
            "no nonce": ["--commitment", str(committed)],
            "nonce without commitment": ["--nonce-env", "IPG_TEST_NONCE"],
            "missing file": ["--commitment", str(tmp_path / "nope")],
            "not hex": ["--commitment", str(tmp_path / "bad")]}[case]
    monkeypatch.setenv("OTHER_NONCE", ipg.new_nonce())
    (tmp_path / "bad").write_text("zz" * 32)
    assert main(["inspect", str(files["fp"]), *args]) == 2
    captured = capsys.readouterr()
    _no_traceback(captured.err)
    assert captured.out == ""
    assert os.environ["IPG_TEST_NONCE"] not in captured.err
    assert os.environ["OTHER_NONCE"] not in captured.err


# --- checkpoints --------------------------------------------------------------------------------

def test_the_checkpoint_is_removed_after_success_unless_kept(files, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert _fingerprint(files, tmp_path / "a", "--checkpoint", str(ckpt), "--batch-size",
                        "2") == 0
    assert not ckpt.exists()
    assert _fingerprint(files, tmp_path / "b", "--checkpoint", str(ckpt), "--batch-size", "2",
                        "--keep-checkpoint") == 0
    assert ckpt.is_dir() and any(ckpt.iterdir())
    assert main(["fingerprint", str(files["owner"]), "-o", str(tmp_path / "c"), *FAST,
                 "--keep-checkpoint"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "--keep-checkpoint needs --checkpoint" in err


def test_sealing_beside_a_kept_checkpoint_warns(files, tmp_path, capsys, monkeypatch):
    pytest.importorskip("cryptography")
    monkeypatch.setenv("IPG_TEST_PASS", "correct horse battery")
    ckpt = tmp_path / "ckpt"
    assert _fingerprint(files, tmp_path / "fp.sealed", "--passphrase-env", "IPG_TEST_PASS",
                        "--checkpoint", str(ckpt), "--keep-checkpoint") == 0
    err = capsys.readouterr().err
    assert "ipguard: warning:" in err and "plaintext" in err and str(ckpt) in err
    assert _fingerprint(files, tmp_path / "fp2.sealed", "--passphrase-env", "IPG_TEST_PASS",
                        "--checkpoint", str(tmp_path / "ckpt2")) == 0
    assert "plaintext" not in capsys.readouterr().err and not (tmp_path / "ckpt2").exists()


# --- the error contract ---------------------------------------------------------------------------

def test_debug_shows_the_traceback_and_still_exits_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("ipguard: error: ")


def test_library_logs_and_unraisable_errors_do_not_reach_stderr(files, tmp_path, capsys,
                                                                monkeypatch):
    """What orbax and tensorstore do on a failed write (log the error with its traceback from
    a worker thread, call into a closed event loop) stays off the one error line."""
    def failing_save(*args, **kwargs):
        try:
            raise ValueError("RESOURCE_EXHAUSTED: writing ocdbt")
        except ValueError:
            logging.getLogger("absl").exception("_SignalingThread.run() raised an exception")
        unraisable = types.SimpleNamespace(exc_type=RuntimeError, exc_traceback=None,
                                           exc_value=RuntimeError("Event loop is closed"),
                                           err_msg="Exception ignored in", object=None)
        sys.unraisablehook(unraisable)
        raise OSError(28, "No space left on device", str(tmp_path / "fp"))

    monkeypatch.setattr(ipg, "save", failing_save)
    hook = sys.unraisablehook
    assert _fingerprint(files, tmp_path / "fp") == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "No space left on device" in err
    assert sys.unraisablehook is hook and logging.getLogger("absl").level != logging.CRITICAL + 1


def test_a_full_disk_is_one_error_line(files, tmp_path):
    """A real full file system (a 64 KiB tmpfs; needs root to mount, skipped otherwise)."""
    mount = tmp_path / "full"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "ipguard_jax", "fingerprint", str(files["owner"]), "-o",
             str(mount / "fp"), "--data", "digits", "--num", "200", "--k", "0.1", "--steps",
             "20", "--keep", "all", "--quiet"],
            capture_output=True, text=True, timeout=300)
        assert run.returncode == 2
        _no_traceback(run.stderr)
        assert run.stderr.strip() == f"ipguard: error: {mount / 'fp'}: No space left on device"
        assert list(mount.iterdir()) == []  # nothing half-written
    finally:
        subprocess.run(["umount", str(mount)], check=False, capture_output=True, timeout=30)


# --- input limits ---------------------------------------------------------------------------------

def test_input_limits_are_options(files, tmp_path, capsys):
    from PIL import Image

    npz = tmp_path / "start.npz"
    np.savez_compressed(npz, x=np.zeros((64, 8, 8, 1), np.float32))  # 16 KiB unpacked
    folder = tmp_path / "images" / "test" / "0"
    folder.mkdir(parents=True)
    Image.new("L", (64, 64)).save(folder / "big.png")
    base = ["fingerprint", str(files["owner"]), "-o", str(tmp_path / "fp"), "--num", "2",
            "--steps", "5", "--keep", "all", "--quiet"]
    assert main([*base, "--data", str(npz), "--max-input-bytes", "1000"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "--max-input-bytes 1000" in err and "start.npz" in err
    assert main([*base, "--data", str(tmp_path / "images"), "--split", "test",
                 "--max-image-pixels", "100"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "big.png" in err
    assert main([*base, "--data", str(npz)]) == 0 and (tmp_path / "fp").is_dir()
