"""The ``ipguard`` command line and the model files it reads, run in-process on tiny models."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import ipguard_jax as ipg
from ipguard_jax import data, models, train
from ipguard_jax.cli import main

MLP_KWARGS = {"in_features": 64, "in_channels": 1, "hidden": [32]}


def _train_mlp(x, y, seed):
    net = models.create("mlp", 10, rngs=nnx.Rngs(seed), **MLP_KWARGS)
    config = train.TrainConfig(epochs=10, batch_size=64, optimizer="adam", lr=3e-3,
                               weight_decay=0.0, random_crop=False, horizontal_flip=False,
                               seed=seed)
    train.fit(net, x, y, config, progress=False)
    return net


def _save(net, path):
    return models.save_model(path, net, arch="mlp", num_classes=10, input_shape=(8, 8, 1),
                              model_kwargs=MLP_KWARGS, metadata={"trained_on": "digits"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An owner and an independent model file, and the owner's fingerprints made by the CLI."""
    root = tmp_path_factory.mktemp("cli")
    digits = data.load_digits()
    order = np.random.default_rng(0).permutation(len(digits))
    x, y = digits.x[order], digits.y[order]
    owner = _train_mlp(x[:700], y[:700], seed=0)
    independent = _train_mlp(x[700:1400], y[700:1400], seed=1)
    paths = {"root": root, "owner": _save(owner, root / "owner_model"),
             "independent": _save(independent, root / "independent_model"),
             "fp": root / "owner_fp", "owner_net": owner}
    code = main(["fingerprint", str(paths["owner"]), "-o", str(paths["fp"]), "--data", "digits",
                 "--num", "30", "--k", "0.1", "--steps", "200", "--quiet"])
    assert code == 0
    return paths


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ipguard: error: "), err


# --- model files --------------------------------------------------------------------------------

def test_model_file_round_trip_gives_identical_logits(files):
    net, spec = models.load_model(files["owner"])
    assert (spec.arch, spec.num_classes, spec.input_shape, spec.bounds) == (
        "mlp", 10, (8, 8, 1), (0.0, 1.0))
    assert spec.model_kwargs == MLP_KWARGS and spec.metadata == {"trained_on": "digits"}
    x = data.load_digits().x[:64]
    original = ipg.Classifier.from_nnx(files["owner_net"], input_shape=(8, 8, 1))
    loaded = spec.classifier(net)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(original(x)))
    assert spec.state_sha256 == original.params_hash == loaded.params_hash


def test_model_file_with_a_flipped_byte_is_refused(files, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(files["owner"], copy)
    weights = max((p for p in (copy / "weights").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(models.ModelFileError, match="modified or is corrupt"):
        models.load_model(copy)


def test_model_file_save_checks_its_arguments(files, tmp_path):
    net = files["owner_net"]
    with pytest.raises(FileExistsError):
        _save(net, files["owner"])
    with pytest.raises(ValueError, match="is not what models.create"):
        models.save_model(tmp_path / "m", net, arch="mlp", num_classes=10,
                          input_shape=(8, 8, 1), model_kwargs={"in_features": 64,
                                                               "in_channels": 1})
    with pytest.raises(models.ModelFileError, match="not a model file"):
        models.load_model(files["fp"])
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())


# --- fingerprint, verify, inspect ---------------------------------------------------------------

def test_fingerprint_writes_a_loadable_file_with_its_origin(files):
    fp = ipg.load(files["fp"])
    assert len(fp) == 30 and fp.metadata["config"]["k"] == 0.1
    origin = fp.metadata["origin"]
    assert origin["model"]["kind"] == "model file" and origin["model"]["arch"] == "mlp"
    assert origin["data"]["num_images"] == 1797
    _, spec = models.load_model(files["owner"])
    assert fp.metadata["classifier"]["params_sha256"] == spec.state_sha256


def test_fingerprint_refuses_to_overwrite(files, capsys):
    before = ipg.load(files["fp"]).digest()
    code = main(["fingerprint", str(files["owner"]), "-o", str(files["fp"]), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "exists; pass --overwrite" in err
    assert ipg.load(files["fp"]).digest() == before


def test_fingerprint_overwrite_and_json_summary(files, tmp_path, capsys):
    out = tmp_path / "fp"
    args = ["fingerprint", str(files["owner"]), "-o", str(out), "--num", "8", "--k", "0.1",
            "--steps", "50", "--init", "noise", "--keep", "all", "--quiet", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["num_fingerprints"] == second["num_fingerprints"] == 8
    assert first["sha256"] != second["sha256"] == ipg.load(out).digest()


@pytest.mark.parametrize("flag, config_value, resolved", [
    ([], "auto", False),                 # auto: off on the CPU
    (["--compact"], True, True),         # the flag alone, as before: on
    (["--compact", "off"], False, False)])
def test_fingerprint_compact_choice(files, tmp_path, capsys, flag, config_value, resolved):
    out = tmp_path / "fp"
    assert main(["fingerprint", str(files["owner"]), "-o", str(out), "--num", "4", "--k", "0.1",
                 "--steps", "20", "--init", "noise", "--keep", "all", "--quiet", *flag]) == 0
    meta = ipg.load(out).metadata
    assert meta["config"]["compact"] == config_value and meta["compact"] is resolved


def test_fingerprint_with_a_baseline_method_and_a_checkpoint(files, tmp_path, capsys):
    out, ckpt = tmp_path / "fp", tmp_path / "ckpt"
    args = ["fingerprint", str(files["owner"]), "-o", str(out), "--num", "8", "--method", "pgd",
            "--eps", "0.2", "--keep", "all", "--batch-size", "4", "--checkpoint", str(ckpt),
            "--keep-checkpoint", "--quiet"]
    assert main(args) == 0
    fp = ipg.load(out)
    assert fp.metadata["method"]["name"] == "pgd" and fp.metadata["method"]["params"]["eps"] == 0.2
    assert any(p.name.isdigit() for p in ckpt.iterdir())  # progress was saved
    assert main(["fingerprint", str(files["owner"]), "-o", str(tmp_path / "x"), "--eps", "0.1",
                 "--quiet"]) == 2
    assert "--eps is for --method fgsm or pgd" in capsys.readouterr().err


def test_verify_the_owner_is_pirated(files, capsys):
    code = main(["verify", str(files["fp"]), str(files["owner"]), "--null-rate", "0.3"])
    out = capsys.readouterr().out
    assert code == 1
    assert "matching rate  100.0% (30 of 30)" in out and "PIRATED" in out
    assert "p-value" in out and "null rate 30.0%" in out


def test_verify_an_independent_model_is_not_pirated(files, capsys):
    code = main(["verify", str(files["fp"]), str(files["independent"]), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["verdict"] == "not pirated" and not result["is_copy"]
    assert result["matching_rate"] < result["threshold"] == 0.5
    assert result["p_value"] is None and result["suspect"]["kind"] == "model file"


def test_verify_with_decoys(files, capsys):
    code = main(["verify", str(files["fp"]), str(files["owner"]), "--decoys", "digits",
                 "--decoy-seed", "3", "--batch-size", "16"])
    out = capsys.readouterr().out
    assert code == 1 and "100.0%" in out
    num_points = re.search(r"\((\d+) points, owner", out).group(1)
    assert re.search(rf"decoys +{num_points} natural inputs mixed into the queries", out)
    assert main(["verify", str(files["fp"]), str(files["owner"]), "--decoys", "digits",
                 "--decoy-ratio", "2", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["decoys"]["sent"] == 2 * report["num_points"]


@pytest.mark.parametrize("case", ["missing fingerprints", "missing suspect", "corrupt",
                                  "bad option", "unreachable url", "unknown command"])
def test_errors_exit_2_with_one_line(files, tmp_path, capsys, case):
    fp, owner = str(files["fp"]), str(files["owner"])
    if case == "missing fingerprints":
        argv = ["verify", str(tmp_path / "nothing"), owner]
    elif case == "missing suspect":
        argv = ["verify", fp, str(tmp_path / "nothing")]
    elif case == "corrupt":
        copy = tmp_path / "fp"
        shutil.copytree(files["fp"], copy)
        manifest = next(copy.rglob("fingerprints.json"))
        text = json.loads(manifest.read_text())
        text["metadata"]["config"]["k"] = 30.0  # a forged provenance
        manifest.write_text(json.dumps(text))
        argv = ["verify", str(copy), owner]
    elif case == "bad option":
        argv = ["verify", fp, owner, "--threshold", "1.5"]
    elif case == "unreachable url":
        argv = ["verify", fp, "http://127.0.0.1:9/predict", "--retries", "0", "--timeout", "2"]
    else:
        argv = ["frobnicate"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    _no_traceback(captured.err)
    assert captured.out == ""
    if case == "corrupt":
        assert "does not match its sha256" in captured.err


def test_inspect_shows_provenance_but_never_the_points(files, capsys):
    assert main(["inspect", str(files["fp"])]) == 0
    out = capsys.readouterr().out
    fp = ipg.load(files["fp"])
    owner_hash = fp.metadata["classifier"]["params_sha256"]
    assert owner_hash in out and fp.digest() in out and "integrity check passed" in out
    assert "drawn from the OS" in out and "verified" not in out
    assert "k=0.1" in out and "ipguard_jax" in out and fp.metadata["created"] in out
    values = {float(v) for v in fp.x.ravel()} - {0.0, 1.0}
    assert values
    for v in values:
        for text in (repr(v), f"{v:.6f}", f"{v:.4f}"):
            assert text not in out, text
    assert str(fp.labels.tolist()) not in out and str(fp.labels.tolist()[:5])[:-1] not in out

    assert main(["inspect", str(files["fp"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metadata"]["classifier"]["params_sha256"] == owner_hash
    assert report["integrity_checked"] and "sha256_verified" not in report
    assert report["authenticated"] is False and report["commitment"] is None
    assert report["metadata"]["key"]["source"] == "os"
    assert report["metadata"]["key"]["data"] == "(hidden)"
    assert "x" not in report and "labels" not in report


def test_inspect_a_corrupt_file_exits_2(files, tmp_path, capsys):
    copy = tmp_path / "fp"
    shutil.copytree(files["fp"], copy)
    (copy / "CURRENT").write_text("v-missing")
    assert main(["inspect", str(copy)]) == 2
    _no_traceback(capsys.readouterr().err)


def test_sealed_fingerprint_file(files, tmp_path, capsys, monkeypatch):
    pytest.importorskip("cryptography")
    sealed = tmp_path / "owner.sealed"
    (tmp_path / "pass.txt").write_text("correct horse battery\n")
    monkeypatch.setenv("IPGUARD_TEST_PASSPHRASE", "correct horse battery")
    assert main(["fingerprint", str(files["owner"]), "-o", str(sealed), "--num", "4", "--k",
                 "0.1", "--steps", "20", "--init", "noise", "--keep", "all", "--quiet",
                 "--passphrase-env", "IPGUARD_TEST_PASSPHRASE"]) == 0
    assert sealed.is_file() and "(sealed)" in capsys.readouterr().out
    assert main(["inspect", str(sealed)]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "--passphrase-file" in err
    assert main(["inspect", str(sealed), "--passphrase-file", str(tmp_path / "pass.txt")]) == 0
    assert "sealed: AES-256-GCM" in capsys.readouterr().out


# --- help ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["fingerprint", "verify", "inspect", "evaluate"])
def test_help_of_each_command(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: ipguard {command}" in out and "examples:" in out
    assert f"ipguard {command} " in out.split("examples:")[1]


def test_top_level_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fingerprint", "verify", "inspect", "evaluate", "demo"):
        assert command in out


def test_python_dash_m_help_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "ipguard_jax", "--help"], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    assert "usage: ipguard" in result.stdout and "verify" in result.stdout


def test_fingerprint_and_decoys_from_a_tfds_dataset(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    kwargs = {"in_features": 784, "in_channels": 1, "hidden": [16]}
    net = models.create("mlp", 10, rngs=nnx.Rngs(0), **kwargs)
    model = models.save_model(tmp_path / "mnist_model", net, arch="mlp", num_classes=10,
                              input_shape=(28, 28, 1), model_kwargs=kwargs)
    out = tmp_path / "fp"
    with tfds.testing.mock_data(num_examples=12):
        assert main(["fingerprint", str(model), "-o", str(out), "--data", "tfds:mnist",
                     "--num", "4", "--k", "0.1", "--steps", "20", "--quiet"]) == 0
        code = main(["verify", str(out), str(model), "--decoys", "tfds:mnist",
                     "--decoy-split", "train", "--decoy-seed", "0"])
    assert code == 1 and "100.0%" in capsys.readouterr().out  # the owner is its own copy
    fp = ipg.load(out)
    assert len(fp) == 4 and fp.x.shape[1:] == (28, 28, 1)
    assert fp.metadata["origin"]["data"]["num_images"] == 12
    assert "tfds:mnist/test" in json.dumps(fp.metadata["origin"]["data"])


@pytest.mark.parametrize("source,message", [("tfds:", "needs a dataset name"),
                                            ("tfds:mnist", "not prepared")])
def test_a_bad_tfds_source_exits_2_with_one_line(files, tmp_path, capsys, monkeypatch, source,
                                                 message):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # empty: nothing prepared
    argv = ["fingerprint", str(files["owner"]), "-o", str(tmp_path / "fp"), "--data", source]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert message in err and not (tmp_path / "fp").exists()
