"""Tests of ipguard_jax.evaluation: pirated copies, the model cache and the ARUC report."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ipguard_jax as ipg
from ipguard_jax import evaluation as ev
from ipguard_jax import train
from ipguard_jax.data import load_digits
from ipguard_jax.evaluation import postprocess as pp
from ipguard_jax.evaluation import zoo

MLP_KW = {"in_features": 64, "in_channels": 1, "hidden": (32,)}
CNN_KW = {"in_channels": 1, "widths": (8, 16)}
FAST = pp.PirateConfig(epochs=3, lr=3e-3, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    owner, pirate, test = load_digits().split([0.5, 0.3, 0.2], seed=0)
    return owner, pirate, test


def _train(arch, kwargs, ds, epochs, seed=0):
    model = pp.build_model(arch, 10, seed, **kwargs)
    train.fit(model, ds.x, ds.y, train.TrainConfig(epochs=epochs, batch_size=64,
                                                   optimizer="adam", lr=3e-3, seed=seed,
                                                   random_crop=False, horizontal_flip=False),
              progress=False)
    return model


@pytest.fixture(scope="module")
def mlp_owner(digits):
    return _train("mlp", MLP_KW, digits[0], epochs=15)


@pytest.fixture(scope="module")
def cnn_owner(digits):
    return _train("cnn", CNN_KW, digits[0], epochs=4)


def _leaves(model):
    flat = nnx.to_flat_state(nnx.state(model))
    return {tuple(str(k) for k in path): np.asarray(v[...]) for path, v in flat}


def dataclasses_replace(config, **changes):
    return dataclasses.replace(config, **changes)


def _agreement(a, b, x):
    return float(np.mean(pp.apply_batched(a, x).argmax(-1) == pp.apply_batched(b, x).argmax(-1)))


class Stop(Exception):
    """Raised from ``on_epoch_end`` to stop training part-way, as a killed job would."""


def stop_after(last_epoch: int):
    """An ``on_epoch_end`` that stops training once epoch ``last_epoch`` is checkpointed."""
    def on_epoch_end(epoch, metrics):
        if epoch == last_epoch:
            raise Stop
    return on_epoch_end


# --- post-processing -------------------------------------------------------------------------


def test_find_head(mlp_owner, cnn_owner):
    assert pp.find_head(mlp_owner, 10) == ("head",)
    assert pp.find_head(cnn_owner, 10) == ("head",)
    with pytest.raises(ValueError, match="exactly one nnx.Linear with 7 outputs"):
        pp.find_head(mlp_owner, 7)


def test_ftll_changes_only_the_head(cnn_owner, digits):
    before = _leaves(cnn_owner)
    pirate = pp.fine_tune_last_layer(cnn_owner, digits[1].x, digits[1].y, FAST)
    assert all(np.array_equal(v, before[k]) for k, v in _leaves(cnn_owner).items())
    after = _leaves(pirate)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    # BatchNorm statistics included: only the head moved.
    assert changed and all(k[0] == "head" for k in changed)
    assert ("head", "kernel") in changed


def test_rtll_new_head_same_body(mlp_owner, digits):
    pirate = pp.retrain_last_layer(mlp_owner, digits[1].x, digits[1].y,
                                   dataclasses_replace(FAST, epochs=10))
    before, after = _leaves(mlp_owner), _leaves(pirate)
    for k in before:
        if k[0] == "head":
            assert not np.allclose(before[k], after[k])
        else:
            np.testing.assert_array_equal(before[k], after[k])
    assert train.evaluate(pirate, digits[2].x, digits[2].y) > 0.5


def test_ftal_and_rtal_change_all_layers(mlp_owner, digits):
    before = _leaves(mlp_owner)
    for fn in (pp.fine_tune_all_layers, pp.retrain_all_layers):
        after = _leaves(fn(mlp_owner, digits[1].x, digits[1].y, FAST))
        assert not np.allclose(before[("layers", "0", "kernel")], after[("layers", "0", "kernel")])
    assert all(np.array_equal(v, before[k]) for k, v in _leaves(mlp_owner).items())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_zeroes_the_asked_share(mlp_owner, scope):
    pruned = pp.prune(mlp_owner, 0.6, scope=scope)
    kernels = [np.asarray(pp._get(pruned, p).kernel[...]) for p in pp.kernel_paths(pruned)]
    total = sum(k.size for k in kernels)
    zeros = sum(int((k == 0).sum()) for k in kernels)
    assert abs(zeros - round(0.6 * total)) <= len(kernels)
    if scope == "layer":
        for k in kernels:
            assert abs((k == 0).mean() - 0.6) < 0.01
    # Biases are not pruned.
    assert np.count_nonzero(np.asarray(pruned.head.bias[...])) == 10


def test_prune_and_fine_tune_keeps_zeros(mlp_owner, digits):
    pruned = pp.prune(mlp_owner, 0.7)
    tuned = pp.prune_and_fine_tune(mlp_owner, digits[1].x, digits[1].y, 0.7, FAST)
    for p in pp.kernel_paths(pruned):
        a, b = np.asarray(pp._get(pruned, p).kernel[...]), np.asarray(pp._get(tuned, p).kernel[...])
        np.testing.assert_array_equal(b[a == 0], 0.0)
        assert not np.allclose(a[a != 0], b[a != 0])  # the rest was trained
    assert train.evaluate(tuned, digits[2].x, digits[2].y) > 0.8


def test_int8_quantisation(cnn_owner, digits):
    quant = pp.quantize_int8(cnn_owner)
    for p in pp.kernel_paths(quant):
        w = np.asarray(pp._get(quant, p).kernel[...])
        per_channel = w.reshape(-1, w.shape[-1])
        assert max(len(np.unique(per_channel[:, c])) for c in range(w.shape[-1])) <= 256
    x = digits[2].x
    a, b = pp.apply_batched(cnn_owner, x), pp.apply_batched(quant, x)
    assert np.max(np.abs(a - b)) < 0.05 * np.max(np.abs(a))
    assert _agreement(cnn_owner, quant, x) > 0.97


def test_distillation_student_agrees_with_owner(mlp_owner, digits):
    cfg = dataclasses_replace(FAST, epochs=8, lr=1e-2)
    same = pp.distill(mlp_owner, digits[1].x, cfg, temperature=2.0, label_copies=2)
    other = pp.distill(mlp_owner, digits[1].x, cfg, student="mlp", label_copies=2,
                       student_kwargs={"in_features": 64, "in_channels": 1, "hidden": (48,)})
    assert other.layers[0].kernel[...].shape == (64, 48)
    # Same architecture, new weights: not a copy of the owner's parameters.
    owner_head = np.asarray(mlp_owner.head.kernel[...])
    assert not np.allclose(np.asarray(same.head.kernel[...]), owner_head)
    for student in (same, other):
        assert _agreement(mlp_owner, student, digits[2].x) > 0.6  # chance is 0.1


def test_make_pirate_rejects_unknown_kind(mlp_owner, digits):
    with pytest.raises(ValueError, match="unknown post-processing 'steal'"):
        pp.make_pirate("steal", mlp_owner, digits[1].x, digits[1].y)
    with pytest.raises(ValueError, match="rate must be in"):
        pp.prune(mlp_owner, 1.5)


@pytest.mark.parametrize("kind,params", [
    ("ftll", {}), ("prune_ft", {"rate": 0.5}),
    # slow: the resumption is the same code as the cases above (which keep it in the default
    # suite); distillation itself stays there in test_distillation_student_agrees_with_owner
    pytest.param("distill", {"temperature": 4.0}, marks=pytest.mark.slow)])
def test_a_pirate_stopped_part_way_resumes_to_the_same_weights(mlp_owner, digits, tmp_path,
                                                                kind, params):
    x, y = digits[1].x, digits[1].y
    reference = pp.make_pirate(kind, mlp_owner, x, y, FAST, **params)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        pp.make_pirate(kind, mlp_owner, x, y, dataclasses.replace(
            FAST, checkpoint_dir=ckpt, on_epoch_end=stop_after(2)), **params)
    assert train.checkpoint_history(ckpt)["epoch"] == [1, 2]
    epochs_run = []
    resumed = pp.make_pirate(kind, mlp_owner, x, y, dataclasses.replace(
        FAST, checkpoint_dir=ckpt, on_epoch_end=lambda e, m: epochs_run.append(e)), **params)
    assert epochs_run == [3]
    assert ev.model_hash(resumed) == ev.model_hash(reference)
    history = train.checkpoint_history(ckpt)
    assert history["epoch"] == [1, 2, 3] and all(s > 0 for s in history["seconds"])


def test_pirate_checkpoints_are_not_part_of_the_recipe(tmp_path):
    plain = pp.PirateConfig(epochs=3)
    with_ckpt = dataclasses.replace(plain, checkpoint_dir=tmp_path, on_epoch_end=print)
    assert with_ckpt.to_dict() == plain.to_dict() and with_ckpt == plain
    assert with_ckpt.train_config(100).checkpoint_dir == tmp_path
    assert train.checkpoint_history(tmp_path) is None  # an empty directory: no checkpoint
    assert train.checkpoint_history(tmp_path / "absent") is None


# --- model cache -----------------------------------------------------------------------------


def test_cache_loads_second_request(tmp_path, digits, monkeypatch):
    calls = []
    real_fit = train.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(pp, "fit", counting_fit)
    cache = ev.ModelCache(tmp_path / "models")
    owner_ds, pirate_ds, _ = digits
    base = pp.build_model("mlp", 10, 0, **MLP_KW)
    recipe = {"kind": "ftal", "owner": ev.model_hash(base),
              "data": ev.array_digest(pirate_ds.x, pirate_ds.y), "config": FAST.to_dict()}

    def make():
        return pp.make_pirate("ftal", base, pirate_ds.x, pirate_ds.y, FAST)

    def like():
        return pp.build_model("mlp", 10, 9, **MLP_KW)

    first = cache.get_or_create(recipe, make, like)
    second = cache.get_or_create(recipe, make, like)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert ev.model_hash(first) == ev.model_hash(second)
    assert recipe in cache and {**recipe, "kind": "rtal"} not in cache
    assert not list((tmp_path / "models").glob(".tmp-*"))  # atomic write left no debris
    meta = json.loads((cache.path(recipe) / "recipe.json").read_text())
    assert meta["recipe"] == recipe and meta == cache.info(recipe)
    assert meta["build_s"] > 0  # the time make() took, recorded on the miss
    assert cache.info({**recipe, "kind": "rtal"}) is None
    # A cached entry whose weights no longer match its recorded hash is refused.
    meta["state_hash"] = "0" * 64
    (cache.path(recipe) / "recipe.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match the hash recorded"):
        cache.get_or_create(recipe, make, like)


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("IPGUARD_JAX_CACHE", str(tmp_path))
    assert zoo.default_model_dir() == tmp_path / "models"
    assert ev.ModelCache().root == tmp_path / "models"
    assert ev.recipe_key({"a": 1, "b": 2}) == ev.recipe_key({"b": 2, "a": 1})


# --- report math -----------------------------------------------------------------------------


def test_report_math_on_hand_made_rates():
    pirated = {"p1": 0.9, "p2": 0.8, "p3": 0.4}
    independent = {"i1": 0.3, "i2": 0.4, "i3": 0.5}
    rep = ev.summarize(pirated, independent, num_points=10)
    # Pairs p > i: p1, p2 beat all three (6); p3 beats i1, ties i2, loses to i3 -> 7.5 / 9.
    assert rep.aruc_roc == pytest.approx(7.5 / 9)
    # R(t): 1 on (0, .4], 2/3 on (.4, .8], 1/3 on (.8, .9]. U(t): 0 on (0, .3], 1/3 on
    # (.3, .4], 2/3 on (.4, .5], 1 on (.5, 1]. min: .1/3 + .1*2/3 + .3*2/3 + .1/3.
    assert rep.aruc_min == pytest.approx(0.1 / 3 + 0.1 * 2 / 3 + 0.3 * 2 / 3 + 0.1 / 3)
    # FPR <= 1% needs t > 0.5: R = 2/3.
    assert rep.tpr_at_1pct_fpr == pytest.approx(2 / 3)
    # R + U - 1 = 2/3 on (.5, .8] (and on (.4, .5]: 2/3 + 2/3 - 1 = 1/3): midpoint 0.65.
    assert rep.best_threshold == pytest.approx(0.65)
    assert rep.best_youden == pytest.approx(2 / 3)
    assert rep.null_rate == pytest.approx(0.4) and rep.null_rate_source == "mean independent rate"
    assert rep.p_values["p1"] < rep.p_values["i1"]
    assert ev.roc_auc([1.0], [0.0]) == 1.0 and ev.min_integral([1.0], [0.0]) == 1.0
    assert ev.roc_auc([0.5], [0.5]) == 0.5


def test_report_given_null_rate_and_ties_midpoint():
    rep = ev.summarize({"p": 0.6}, {"i": 0.2}, num_points=50, null_rate=0.1)
    assert rep.null_rate_source == "given" and rep.null_rate == 0.1
    assert rep.best_threshold == pytest.approx(0.4)  # J = 1 on (0.2, 0.6]
    assert rep.tpr_at_1pct_fpr == 1.0


def test_report_outputs(tmp_path):
    rep = ev.summarize({"FTAL": 0.95, "prune50": 0.7}, {"seed1": 0.2, "vgg": 0.35},
                       num_points=100, meta={"k": 3})
    rep.to_json(tmp_path / "r.json")
    back = ev.EvaluationReport.from_json(tmp_path / "r.json")
    assert back == rep
    assert "ROC-AUC" in json.loads((tmp_path / "r.json").read_text())["metric_notes"]["aruc_roc"]
    md = rep.to_markdown(title="digits")
    for name in ("FTAL", "prune50", "seed1", "vgg", "ROC-AUC", "min(R(t), U(t))"):
        assert name in md
    rep.plot(tmp_path / "r.png")
    data = (tmp_path / "r.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_report_threshold_grid():
    rep = ev.summarize({"p": 0.555}, {"i": 0.1}, num_points=10)
    assert 0.555 in rep.thresholds and 0.5 in rep.thresholds
    assert len(rep.thresholds) == len(rep.robustness) == len(rep.uniqueness)


# --- evaluate() on real fingerprints and input validation ------------------------------------


@pytest.fixture(scope="module")
def linear_setup():
    w = jnp.array([[1.0, -1.0, 0.5], [-0.5, 1.0, 0.2], [0.3, 0.1, -1.0]])
    owner = ipg.Classifier(lambda p, x: x @ p, w, input_shape=(3,))
    fp = ipg.generate(owner, ipg.FingerprintConfig(num=16, k=0.1, init="noise"), key=0,
                      progress=False)
    return owner, fp, w


def test_evaluate_queries_every_model(linear_setup):
    owner, fp, w = linear_setup
    copy = ipg.Classifier(lambda p, x: x @ p, w * 1.01, input_shape=(3,))
    other = ipg.Classifier(lambda p, x: x @ p, -w, input_shape=(3,))

    def labels_only(x):  # a black-box API returning labels
        return np.zeros(len(x), np.int64)

    rep = ev.evaluate(fp, owner, {"copy": copy}, {"neg": other, "api": labels_only})
    assert rep.owner_rate == 1.0 and rep.pirated["copy"] == 1.0
    assert rep.independent["neg"] < 1.0 and rep.num_points == len(fp)


def test_evaluate_validates_inputs(linear_setup):
    owner, fp, w = linear_setup
    with pytest.raises(ValueError, match="pirated must be a non-empty dict"):
        ev.evaluate(fp, owner, {}, {"a": owner})
    with pytest.raises(ValueError, match="independent must be a non-empty dict"):
        ev.evaluate(fp, owner, {"a": owner}, {})
    four = ipg.Classifier(lambda p, x: x @ p, jnp.ones((3, 4)), input_shape=(3,))
    with pytest.raises(ValueError, match="independent model 'four' has 4 classes.*has 3"):
        ev.evaluate(fp, owner, {"a": owner}, {"four": four})
    with pytest.raises(ValueError, match="pirated model 'bad'.*returns 5 classes"):
        ev.evaluate(fp, owner, {"bad": lambda x: np.zeros((len(x), 5))}, {"b": owner})
    with pytest.raises(ValueError, match="both pirated and independent.*'a'"):
        ev.evaluate(fp, owner, {"a": owner}, {"a": owner})
    with pytest.raises(ValueError, match="rate 1.5, not in"):
        ev.summarize({"a": 1.5}, {"b": 0.1}, num_points=3)
    with pytest.raises(ValueError, match="num_points"):
        ev.summarize({"a": 0.5}, {"b": 0.1}, num_points=0)


def test_benchmark_settings_match_the_recorded_run(benchmark_script):
    import argparse
    from pathlib import Path

    from ipguard_jax.cli.evaluate import add_arguments, setting_from_args
    from ipguard_jax.evaluation import protocol

    script = benchmark_script("aruc_cifar10")
    recorded = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    recorded = json.loads((recorded / "aruc_digits_quick.json").read_text())
    # The recorded run is `--quick`, with at most where its cache lives added.
    prefix = "python benchmarks/aruc_cifar10.py "
    assert recorded["command"].startswith(prefix)
    recorded_args = recorded["command"][len(prefix):].split()
    assert recorded_args[0] == "--quick" and recorded_args[1::2] in ([], ["--cache-dir"])
    setting = script.make_setting(script.parse_args(recorded_args))
    as_json = json.loads(json.dumps(dataclasses.asdict(setting)))
    assert as_json == recorded["setting"]
    assert setting == protocol.make_setting(quick=True)
    # without --quick the script defaults to the CIFAR-10 archive next to the repository
    full = script.make_setting(script.parse_args(["--ks", "3", "--subset", "600"]))
    assert full.data == str(script.DEFAULT_CIFAR) and full.owner == "resnet20"
    assert full.ks == [3.0] and full.subset == 600
    # the package has no such default: it asks for the data
    with pytest.raises(ValueError, match="--data"):
        setting_from_args(add_arguments(argparse.ArgumentParser()).parse_args([]))
    with pytest.raises(ValueError, match="give the data"):
        protocol.make_setting()
    with pytest.raises(ValueError, match=r"baselines: unknown \['sift'\]"):
        protocol.make_setting(quick=True, baselines=["sift"])


def test_cli_evaluate_needs_data_or_quick(capsys):
    from ipguard_jax.cli import main

    assert main(["evaluate", "--ks", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ipguard: error: ") and "--quick" in err and "Traceback" not in err
    assert main(["evaluate", "--quick", "--ks", "three"]) == 2
    assert "--ks" in capsys.readouterr().err


@pytest.mark.slow  # trains a model zoo
def test_smoke_benchmark_writes_its_reports(tmp_path, benchmark_script):
    """The whole pipeline, each model trained one epoch: what every full run ends with."""
    from ipguard_jax.evaluation import protocol

    script = benchmark_script("aruc_cifar10")
    result = script.main(["--quick", "--subset", "400", "--epochs", "1", "--pirate-epochs",
                          "1", "--ks", "3", "--inits", "data", "--targets", "random",
                          "--num", "8", "--steps", "300", "--baselines", "none",
                          "--cache-dir", str(tmp_path / "cache"),
                          "--out", str(tmp_path / "s")])
    specs = protocol.pirate_specs(protocol.make_setting(quick=True))
    assert list(result["pirated"]) == [name for name, _, _ in specs]
    assert result["pirated"]["prune50"] == {"kind": "prune", "params": {"rate": 0.5}}
    # The defender's surrogates and references are built too, and scored nowhere.
    members = {*result["surrogates"], *result["references"]}
    assert len(result["surrogates"]) == 10 and len(result["references"]) == 8
    assert set(result["model_build_s"]) == {"owner", *result["pirated"], *result["independent"],
                                            *members}
    for rep in result["reports"].values():
        assert not members & {*rep["pirated"], *rep["independent"]}
    assert [row["config"] for row in result["configs"]] == [
        "k=3 init=data target=random", "conferrable k=3 init=data target=random",
        "conferrable k=10 init=data target=random"]
    assert "## Conferrable rows: members, screening and cost" in (tmp_path / "s.md").read_text()
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["configs"][0]["num_fingerprints"] == result["configs"][0]["num_fingerprints"]
    md = (tmp_path / "s.md").read_text()
    assert "Owner test accuracy: " in md
    cold = re.search(r"With the model cache empty this run needs about ([\d.]+) h: building "
                     r"the (\d+) models took ([\d.]+) h", md)
    assert int(cold.group(2)) == len(result["model_build_s"])
    assert float(cold.group(1)) >= float(cold.group(3)) == pytest.approx(
        sum(result["model_build_s"].values()) / 3600, abs=0.006)
    assert (tmp_path / "s.png").exists() == bool(result["reports"])
    # Every trained model's epoch checkpoints are gone once it is cached.
    assert not any((tmp_path / "cache" / "training").glob("*"))


def test_benchmark_report_title_names_the_data_not_its_folder():
    from ipguard_jax.evaluation.report import run_markdown

    timings = {"total_s": 10.0, "fingerprint_and_verify_s": 4.0, "owner_s": 1.0,
               "pirated_s": 1.0, "independent_s": 1.0}
    result = {"setting": {"data": "/home/me/datasets/cifar10-jpeg.tar.gz", "owner": "resnet20"},
              "command": "python benchmarks/aruc_cifar10.py", "pirated": {}, "independent": {},
              "cache": {"hits": 0, "misses": 1}, "timings_s": timings,
              "model_build_s": {"owner": 60.0}, "configs": [], "accuracy": {"owner": 0.8}}
    md = run_markdown(result, {})
    title = "# ARUC of IPGuard fingerprints (cifar10-jpeg.tar.gz, owner resnet20)"
    assert md.splitlines()[0] == title
    assert "/home/me" not in md
    assert "Owner test accuracy: 0.800, trained in 1.0 min." in md
    result["setting"]["data"] = "tfds:imagenette/160px"
    assert "fingerprints (tfds:imagenette/160px, owner" in run_markdown(result, {})


def test_the_former_benchmark_module_still_answers_and_warns():
    import argparse
    import importlib

    from ipguard_jax.evaluation import pipeline, protocol

    sys.modules.pop("ipguard_jax.evaluation.benchmark", None)
    with pytest.warns(DeprecationWarning, match="evaluation.benchmark is deprecated"):
        benchmark = importlib.import_module("ipguard_jax.evaluation.benchmark")
    sys.modules.pop("ipguard_jax.evaluation.benchmark", None)
    assert benchmark.run is pipeline.run and benchmark.plan is pipeline.plan
    assert benchmark.Setting is protocol.Setting and benchmark.load_data is protocol.load_data
    args = benchmark.add_arguments(argparse.ArgumentParser()).parse_args(["--quick"])
    assert benchmark.make_setting(args) == protocol.make_setting(quick=True)
    assert benchmark.make_setting(args.__class__(**{**vars(args), "quick": False}),
                                  "cifar.tar.gz").data == "cifar.tar.gz"


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path, benchmark_script, capsys):
    from ipguard_jax.cli import main

    module = benchmark_script("aruc_cifar10")
    # The conferrable rows (their 18 member models) are the smoke test's; here they are off.
    args = ["--quick", "--ks", "3", "--inits", "data", "--targets", "random",
            "--conferrable-ks", "none", "--cache-dir", str(tmp_path / "cache")]
    result = module.main([*args, "--out", str(tmp_path / "q")])
    assert len(result["pirated"]) >= 12 and len(result["independent"]) >= 10
    assert math.isfinite(result["configs"][0]["aruc_roc"])
    assert result["command"] == "python benchmarks/aruc_cifar10.py " + " ".join(
        [*args, "--out", str(tmp_path / "q")])
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"q.{ext}").stat().st_size > 0
    log = capsys.readouterr().out  # a long run says what it trains, epoch by epoch
    epochs = module.make_setting(module.parse_args(["--quick"])).epochs
    assert "training owner (" in log and f"owner epoch {epochs}/{epochs}: loss" in log
    assert "making the pirated copy FTLL (ftll)" in log

    # The command line runs the same pipeline (here from the cache: no training) into a folder.
    # With --zoo, every model it obtains goes into the zoo too.
    zoo_dir = tmp_path / "zoo"
    assert main(["evaluate", *args, "--zoo", str(zoo_dir), "--out", str(tmp_path / "cli")]) == 0
    again = json.loads((tmp_path / "cli" / "aruc_digits_quick.json").read_text())
    models = len(result["pirated"]) + len(result["independent"]) + 1
    assert again["cache"] == {"root": result["cache"]["root"], "hits": models, "misses": 0,
                              "zoo": str(zoo_dir), "zoo_hits": 0, "precision": "float16"}
    assert len(ev.ModelZoo(zoo_dir)) == models
    assert again["command"].startswith("ipguard evaluate --quick")
    log = capsys.readouterr().out
    assert not re.search(r"^training ", log, re.M) and "making the pirated copy" not in log
    # Every model's build time, recorded on the miss, is reported again from the cache.
    assert set(result["model_build_s"]) == {"owner", *result["pirated"], *result["independent"]}
    assert again["model_build_s"] == result["model_build_s"]
    assert all(v is not None and v >= 0 for v in result["model_build_s"].values())
    assert result["model_build_s"]["owner"] > 0
    models_line = f"building the {models} models took"
    assert models_line in (tmp_path / "cli" / "aruc_digits_quick.md").read_text()

    def timeless(value):
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if k != "generation_s"}
        return value

    first = json.loads((tmp_path / "q.json").read_text())
    assert timeless(again["reports"]) == timeless(first["reports"])
    assert timeless(again["configs"][0]) == timeless(first["configs"][0])
    for ext in ("md", "png"):
        assert (tmp_path / "cli" / f"aruc_digits_quick.{ext}").stat().st_size > 0

    # A fresh machine (empty cache) reproduces the same tables from the zoo alone.
    fresh = ["--cache-dir", str(tmp_path / "fresh_cache"), "--zoo", str(zoo_dir), "--from-zoo"]
    zoo_run = module.main([*args[:-2], *fresh, "--out", str(tmp_path / "z")])
    assert zoo_run["cache"]["zoo_hits"] == models and zoo_run["cache"]["misses"] == 0
    assert timeless(zoo_run["reports"]) == timeless(first["reports"])
    assert zoo_run["accuracy"] == first["accuracy"]
    log = capsys.readouterr().out
    assert not re.search(r"^training ", log, re.M) and "making the pirated copy" not in log


@pytest.mark.slow  # trains a model zoo
def test_plan_lists_every_model_of_the_run_and_sees_the_cache(tmp_path, capsys):
    from ipguard_jax.cli import main
    from ipguard_jax.evaluation import factories, pipeline, protocol
    from ipguard_jax.evaluation import postprocess as pp

    setting = protocol.make_setting(quick=True)
    owner_ds, _, indep_ds, _ = protocol.load_data(setting, 0)
    cache_dir = tmp_path / "cache"
    p = pipeline.plan(setting, cache_dir=cache_dir, probe_batches=1)
    rows = {r["name"]: r for r in p["models"]}
    expected = (["owner"] + [n for n, _, _ in protocol.pirate_specs(setting)]
                + [s[0] for s in protocol.independent_specs(setting, owner_ds, indep_ds, 0)]
                + [n for n, _, _ in protocol.surrogate_specs(setting)]
                + [s[0] for s in setting.references])
    assert [r["name"] for r in p["models"]] == expected
    assert {r["role"] for r in p["models"]} == {"owner", "pirated", "independent", "surrogate",
                                                "reference"}
    assert not any(r["cached"] for r in p["models"])
    for name in ("prune30", "prune70", "int8"):  # weight edits: nothing to train
        assert rows[name]["epochs"] == 0 and rows[name]["estimated_s"] == 0
    trains = [r for r in p["models"] if r["epochs"]]
    assert all(r["estimated_s"] > 0 for r in trains)
    assert rows["distill-cnn"]["arch"] == "cnn" and rows["FTAL"]["arch"] == "mlp"
    assert rows["owner"]["train_images"] == len(owner_ds)
    assert p["estimated_uncached_s"] == pytest.approx(sum(r["estimated_s"] for r in trains))
    assert set(p["train_images_per_s"]) == {r["arch"] + json.dumps(r["kwargs"], sort_keys=True)
                                            for r in trains}
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.json"))  # nothing written

    # Cache an owner (untrained will do) and one pirate made from it: the plan sees both.
    config = protocol.train_config(setting, 0, len(owner_ds))
    recipe = protocol.trained_recipe(setting.owner, setting.owner_kwargs,
                                     owner_ds.num_classes, owner_ds, "owner split", 0, config)
    cache = ev.ModelCache(cache_dir, precision=protocol.PRECISION)  # as the run rounds

    def build():
        return pp.build_model(setting.owner, owner_ds.num_classes, 0, **setting.owner_kwargs)

    owner = cache.get_or_create(recipe, build, build)
    _, pirate_ds, _, _ = protocol.load_data(setting, 0)
    pirate_recipe = protocol.pirate_recipe(
        ev.model_hash(owner), "int8", {}, ev.array_digest(pirate_ds.x, pirate_ds.y),
        protocol.pirate_config(setting, 0))
    cache.get_or_create(pirate_recipe, lambda: pp.make_pirate("int8", owner, None, None), build)
    # and a pirate stopped after its first epoch: the plan counts only the epochs left
    pirate_config = protocol.pirate_config(setting, 0)
    ftal_recipe = protocol.pirate_recipe(
        ev.model_hash(owner), "ftal", {}, ev.array_digest(pirate_ds.x, pirate_ds.y),
        pirate_config)
    with pytest.raises(Stop):
        pp.make_pirate("ftal", owner, pirate_ds.x, pirate_ds.y, dataclasses.replace(
            pirate_config, checkpoint_dir=factories.training_dir(cache, ftal_recipe),
            on_epoch_end=stop_after(1)))
    again = pipeline.plan(setting, cache_dir=cache_dir, probe_batches=1)
    cached = {r["name"] for r in again["models"] if r["cached"]}
    assert cached == {"owner", "int8"}
    rows = {r["name"]: r for r in again["models"]}
    assert rows["FTAL"]["epochs_done"] == 1 and rows["FTAL"]["epochs"] == setting.pirate_epochs
    assert rows["FTAL"]["estimated_s"] < rows["RTAL"]["estimated_s"]  # same model, fewer epochs
    assert all(r["epochs_done"] == 0 for r in again["models"] if r["name"] != "FTAL")
    # Cached models cost nothing; the rest is re-probed, so compare no times across probes.
    assert all(r["estimated_s"] == 0 for r in again["models"] if r["cached"])
    assert again["estimated_uncached_s"] == pytest.approx(
        sum(r["estimated_s"] for r in again["models"] if not r["cached"]))

    assert main(["evaluate", "--quick", "--plan", "--cache-dir", str(cache_dir),
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    total = len(p["models"])  # two of them cached above
    assert "| owner | owner | mlp |" in out and f"To train: {total - 2} of {total} models" in out
    assert f"| no, 1/{setting.pirate_epochs} epochs done |" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
@pytest.mark.slow  # probes training throughput
def test_plan_says_when_other_processes_slowed_its_probe(tmp_path, benchmark_script):
    from ipguard_jax.evaluation import pipeline, protocol

    harness = benchmark_script("_harness")  # the benchmark's load monitor (/proc/stat)
    setting = protocol.make_setting(quick=True)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        p = pipeline.plan(setting, cache_dir=tmp_path / "cache", probe_batches=1,
                          load_monitor=harness.other_load)
    finally:
        spinner.kill()
        spinner.wait()
    # a busy loop takes most of a core from the probe (and the compiles are single-threaded)
    assert p["other_cores_while_probing"] >= 0.25, p["other_cores_while_probing"]
    text = pipeline.format_plan(p)
    assert re.search(r"Other processes kept \d\.\d of \d+ cores busy", text), text
    assert "Other processes" not in pipeline.format_plan({**p, "other_cores_while_probing": 0.1})


@pytest.mark.parametrize("arch, kwargs", [
    ("mlp", {"in_features": 64, "in_channels": 1}),
    # slow: the same on a convolutional model (slower to compile); the MLP
    # case keeps protocol.train_cached covered in the default suite
    pytest.param("cnn", {"in_channels": 1}, marks=pytest.mark.slow)])
def test_a_benchmark_model_stopped_part_way_resumes_to_the_same_parameters(tmp_path, arch,
                                                                            kwargs):
    from ipguard_jax import data, train
    from ipguard_jax.evaluation import postprocess as pp
    from ipguard_jax.evaluation import protocol

    ds = data.load_digits().subset(np.arange(256))
    config = train.TrainConfig(epochs=3, batch_size=64, optimizer="adam", lr=3e-3,
                               weight_decay=0.0, random_crop=False, horizontal_flip=False)
    recipe = protocol.trained_recipe(arch, kwargs, 10, ds, "digits", 0, config)

    def build():
        return pp.build_model(arch, 10, 0, **kwargs)

    reference = protocol.train_cached(ev.ModelCache(tmp_path / "a"), recipe, build, ds, config)

    seconds = []

    def stop_after_two(epoch, metrics):
        seconds.append(metrics["seconds"])
        stop_after(2)(epoch, metrics)

    cache = ev.ModelCache(tmp_path / "b")
    with pytest.raises(Stop):
        protocol.train_cached(cache, recipe, build, ds, config, on_epoch_end=stop_after_two)
    partial = tmp_path / "b" / "training" / cache.path(recipe).name
    assert partial.is_dir() and recipe not in cache  # epochs 1-2 saved, nothing cached yet
    assert cache.info(recipe) is None
    epochs_run = []

    def record(epoch, metrics):
        epochs_run.append(epoch)
        seconds.append(metrics["seconds"])

    resumed = protocol.train_cached(cache, recipe, build, ds, config, on_epoch_end=record)
    assert epochs_run == [3]
    assert ev.model_hash(resumed) == ev.model_hash(reference)
    assert recipe in cache and not partial.exists()
    # The cache records the training time of all three epochs, not only of the resumed call.
    info = cache.info(recipe)
    assert info["train_s"] == pytest.approx(sum(seconds), abs=1e-3)
    assert info["train_s"] > seconds[-1] and info["build_s"] > 0


@pytest.mark.parametrize("preset", ["cpu", "wide"])
def test_image_presets_meet_the_protocol(preset):
    from ipguard_jax.evaluation import protocol

    setting = protocol.make_setting(data="cifar", preset=preset)
    quick = protocol.make_setting(quick=True)
    owner_ds, _, indep_ds, _ = protocol.load_data(quick, 0)  # any data: only names matter
    specs = protocol.independent_specs(setting, owner_ds, indep_ds, 0)
    names = [spec[0] for spec in specs]
    assert len(names) >= 10 and len(set(names)) == len(names)
    same_arch = [spec for spec in specs if spec[1] == setting.owner]
    assert len({spec[5] for spec in same_arch}) >= 2  # other seeds
    assert {spec[4] for spec in same_arch} >= {"independent", "owner split", "indep half A"}
    assert len({spec[1] for spec in specs}) >= 3  # other architectures
    pirates = protocol.pirate_specs(setting)
    assert len(pirates) >= 12 and sum(kind == "prune" for _, kind, _ in pirates) >= 3
    assert {kind for _, kind, _ in pirates} >= {"ftll", "ftal", "rtll", "rtal", "prune",
                                               "prune_ft", "distill", "int8"}
    with pytest.raises(ValueError, match=r"owner_variants: unknown \['seed9'\]"):
        protocol.independent_specs(dataclasses.replace(setting, owner_variants=["seed9"]),
                                   owner_ds, indep_ds, 0)


def test_report_bootstrap_intervals_over_models(tmp_path):
    from ipguard_jax.evaluation.report import _resamples, _tpr_at_fpr, bootstrap_intervals

    rng = np.random.default_rng(0)
    pirated = {f"p{k}": float(r) for k, r in enumerate(rng.uniform(0.5, 1.0, 12).round(2))}
    independent = {f"i{k}": float(r) for k, r in enumerate(rng.beta(3, 9, 10).round(2))}
    rep = ev.summarize(pirated, independent, num_points=100)
    ci = rep.intervals
    assert ci["draws"] == 1000 and ci["seed"] == 0 and ci["level"] == 0.95
    for name in ("aruc_roc", "aruc_min", "tpr_at_1pct_fpr"):
        lo, hi = ci[name]
        assert 0.0 <= lo <= getattr(rep, name) <= hi <= 1.0, name
    assert ci["aruc_min"][1] - ci["aruc_min"][0] > 0.02  # a dozen models: not a point
    assert ev.summarize(pirated, independent, num_points=100).intervals == ci  # fixed seed
    assert ev.summarize(pirated, independent, num_points=100, seed=1).intervals != ci
    assert ev.summarize(pirated, independent, num_points=100, bootstrap=0).intervals == {}
    # the draws are the plain metrics of resampled models
    p, i = np.array(list(pirated.values())), np.array(list(independent.values()))
    small = bootstrap_intervals(p, i, draws=50, seed=3, level=0.5)
    ip, ii = _resamples(len(p), len(i), 50, 3)
    for name, fn in (("aruc_roc", ev.roc_auc), ("aruc_min", ev.min_integral),
                     ("tpr_at_1pct_fpr", lambda a, b: _tpr_at_fpr(a, b, 0.01)[0])):
        draws = [fn(p[a], i[b]) for a, b in zip(ip, ii)]
        assert small[name] == pytest.approx(np.quantile(draws, [0.25, 0.75]).tolist())
    rep.to_json(tmp_path / "r.json")
    assert ev.EvaluationReport.from_json(tmp_path / "r.json") == rep
    assert "95% CI (bootstrap over models)" in rep.to_markdown()
    assert f"{ci['aruc_min'][0]:.4f}-{ci['aruc_min'][1]:.4f}" in rep.to_markdown()
    old = {k: v for k, v in rep.to_dict().items() if k != "intervals"}  # a report from before
    assert ev.EvaluationReport.from_dict(old).intervals == {}
    with pytest.raises(ValueError, match="bootstrap must be an int >= 0"):
        ev.summarize(pirated, independent, num_points=100, bootstrap=-1)


def test_owner_mistake_rows_start_from_the_images_the_owner_gets_wrong(mlp_owner, cnn_owner,
                                                                          digits, monkeypatch):
    from ipguard_jax.evaluation import protocol, scoring
    from ipguard_jax.seeds import owner_mistakes

    owner = ipg.Classifier.from_nnx(mlp_owner, input_shape=(8, 8, 1))
    independent = ipg.Classifier.from_nnx(cnn_owner, input_shape=(8, 8, 1))

    setting = protocol.make_setting(quick=True, ks=[3, 1], inits=["data"], targets=["random"],
                                    baselines=["mistakes"], conferrable_ks=[])
    rows = [c for c in scoring.configurations(setting) if c.row.get("seeds")]
    assert [c.label for c in rows] == ["random seeds=owner-mistakes",
                                       "k=1 seeds=owner-mistakes target=random"]
    x, y = digits[2].x, digits[2].y
    wrong = owner_mistakes(owner, x, y)
    assert 0 < len(wrong) < len(y) and (owner.predict(x[wrong]) != y[wrong]).all()
    made = []
    real = ipg.generate
    monkeypatch.setattr(ipg, "generate", lambda *a, **kw: made.append(real(*a, **kw))
                        or made[-1])
    row, rep = scoring.score(rows[0], owner, {"owner": owner}, {"other": independent},
                             key=0, data=x, labels=y)
    assert row["seeds"] == "owner-mistakes" and rep.owner_rate == 1.0
    # The points are the owner's mistakes, labelled with its (wrong) answers.
    fp, = made
    assert row["num_fingerprints"] == len(fp) > 0
    index = {bytes(p): n for n, p in enumerate(x)}
    at = np.asarray([index[bytes(p)] for p in np.asarray(fp.x)])
    assert np.isin(at, wrong).all()
    np.testing.assert_array_equal(fp.labels, owner.predict(x[at]))
    assert (fp.labels != y[at]).all()
    with pytest.raises(ValueError, match="need the test images and their labels"):
        scoring.score(rows[1], owner, {"owner": owner}, {"other": independent}, key=0, data=x)
    with pytest.raises(ValueError, match=r"labels outside the owner's classes \[0, 10\)"):
        owner_mistakes(owner, x, np.full(len(x), 12))
    with pytest.raises(ValueError, match="one label per example"):
        owner_mistakes(owner, x, y[:-1])
    with pytest.raises(TypeError, match="integer labels"):
        owner_mistakes(owner, x, y.astype(np.float32))


def test_finished_rows_are_kept_and_a_rerun_makes_none_again(mlp_owner, cnn_owner, digits,
                                                               tmp_path, monkeypatch):
    from ipguard_jax.evaluation import protocol, scoring

    owner = ipg.Classifier.from_nnx(mlp_owner, input_shape=(8, 8, 1))
    other = ipg.Classifier.from_nnx(cnn_owner, input_shape=(8, 8, 1))
    setting = protocol.make_setting(quick=True, ks=[3], inits=["data"], targets=["random"],
                                    baselines=["random"], conferrable_ks=[], num=16)
    configs = scoring.configurations(setting)
    store = scoring.RowStore(tmp_path / "rows")
    test = digits[2]
    run = lambda: scoring.score_all(configs, owner, {"self": owner}, {"other": other}, key=0,
                                    data=test.x, labels=test.y, store=store)
    rows, reports = run()
    files = sorted((tmp_path / "rows").glob("*.json"))
    assert len(files) == len(configs) == 3
    assert not list((tmp_path / "rows").glob("*.checkpoint"))  # removed after each row
    # Again: every row comes from the store, nothing is generated.
    monkeypatch.setattr(ipg, "generate", lambda *a, **kw: pytest.fail("generated again"))
    again_rows, again_reports = run()
    assert json.dumps(again_rows, sort_keys=True) == json.dumps(
        json.loads(json.dumps(rows, default=float)), sort_keys=True)
    assert {n: r.aruc_roc for n, r in again_reports.items()} == {
        n: r.aruc_roc for n, r in reports.items()}
    # A damaged, foreign or swapped file is not used: that row is made again.
    monkeypatch.undo()
    files[0].write_text("{not json")
    record = json.loads(files[1].read_text())
    files[2].write_text(json.dumps({**record, "key": "0" * 64}))
    made = []
    real = ipg.generate
    monkeypatch.setattr(ipg, "generate", lambda *a, **kw: made.append(1) or real(*a, **kw))
    run()
    assert len(made) == 2
    # Another model is another row.
    key = scoring.RowStore.key(configs[0], owner, {"self": owner}, {"other": other}, key=0,
                               data=test.x, labels=test.y)
    assert key != scoring.RowStore.key(configs[0], owner, {"self": other}, {"other": owner},
                                       key=0, data=test.x, labels=test.y)
    assert scoring.RowStore.key(configs[0], owner, {"self": lambda x: x}, {}, key=0) is None
    with pytest.raises(ValueError, match="a row key is 64 hex digits, got '../x'"):
        store.load("../x")
