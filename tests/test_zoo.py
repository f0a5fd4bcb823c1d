"""Models kept as files (ModelZoo) and a cache that rounds to float16 and reads a zoo first."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest
from flax import nnx

from ipguard_jax import evaluation as ev
from ipguard_jax import models

RECIPE = {"arch": "mlp", "seed": 0}


def _build(seed=0):
    return models.create("mlp", 10, in_features=64, in_channels=1, hidden=[16],
                         rngs=nnx.Rngs(seed))


@pytest.fixture()
def stored(tmp_path):
    zoo = ev.ModelZoo(tmp_path / "zoo")
    net = ev.round_model(_build())
    path = zoo.add("mlp-seed0", RECIPE, net, {"test_accuracy": 0.5, "train_s": 1.5})
    return zoo, net, path


def test_round_trip_restores_the_same_model_with_its_record(stored):
    zoo, net, path = stored
    again = zoo.load(RECIPE, like=lambda: _build(seed=7))  # other init: all from the file
    assert ev.model_hash(again) == ev.model_hash(net)
    x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(net(x)))
    info = zoo.info(RECIPE)
    assert info["test_accuracy"] == 0.5 and info["train_s"] == 1.5
    assert info["recipe"] == RECIPE and info["recipe_key"] == ev.recipe_key(RECIPE)
    assert RECIPE in zoo and {"arch": "mlp", "seed": 1} not in zoo and len(zoo) == 1
    assert [r["name"] for r in zoo.records()] == ["mlp-seed0"]
    with np.load(path.with_name(path.name.replace(".json", ".npz"))) as arrays:
        floats = [arrays[k] for k in arrays.files if arrays[k].dtype.kind == "f"]
    assert floats and all(a.dtype == np.float16 for a in floats)
    assert not [p for p in zoo.root.iterdir() if p.name.startswith(".")]  # no debris


def test_round_model_is_idempotent_and_float16_representable():
    net = _build()
    before = ev.model_hash(net)
    ev.round_model(net)
    once = ev.model_hash(net)
    assert once != before and ev.model_hash(ev.round_model(net)) == once
    import jax
    leaves = [np.asarray(v) for v in jax.tree.leaves(nnx.state(net))]
    assert leaves and all(v.dtype == np.float32 for v in leaves)  # dtypes kept
    for value in leaves:
        np.testing.assert_array_equal(value.astype(np.float16).astype(value.dtype), value)
    with pytest.raises(ValueError, match="precision"):
        ev.round_model(net, "int4")


def test_a_model_is_written_once_and_must_be_rounded(stored, tmp_path):
    zoo, net, _ = stored
    with pytest.raises(FileExistsError, match="already holds"):
        zoo.add("again", RECIPE, net)
    with pytest.raises(ValueError, match="float16-representable"):
        zoo.add("raw", {"arch": "mlp", "seed": 2}, _build(seed=2))
    with pytest.raises(ValueError, match="name"):
        zoo.add("../evil", {"arch": "mlp", "seed": 3}, net)


def _npz(path):
    return path.with_name(path.name.replace(".json", ".npz"))


def test_an_edited_weight_file_is_refused(stored):
    zoo, _, path = stored
    raw = bytearray(_npz(path).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    _npz(path).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256 differs"):
        zoo.load(RECIPE, like=_build)


def _fix_sha256(path):
    record = json.loads(path.read_text())
    record["npz_sha256"] = hashlib.sha256(_npz(path).read_bytes()).hexdigest()
    path.write_text(json.dumps(record))


def _rewrite(path, arrays):
    """Replaces the .npz with ``arrays`` and fixes the record's sha256, as an attacker could."""
    np.savez_compressed(_npz(path), **arrays)
    _fix_sha256(path)


def test_consistent_but_wrong_files_are_refused(stored):
    zoo, _, path = stored
    with np.load(_npz(path)) as f:
        arrays = {k: f[k] for k in f.files}
    first = sorted(arrays)[0]
    _rewrite(path, {**arrays, first: np.zeros((3, 3), arrays[first].dtype)})
    with pytest.raises(ValueError, match="the model expects"):
        zoo.load(RECIPE, like=_build)
    _rewrite(path, {k: v for k, v in arrays.items() if k != first})
    with pytest.raises(ValueError, match="arrays"):
        zoo.load(RECIPE, like=_build)
    # Right shapes, other values: the restored model's hash gives it away.
    _rewrite(path, {**arrays, first: (arrays[first] + 1).astype(arrays[first].dtype)})
    with pytest.raises(ValueError, match="hash differs"):
        zoo.load(RECIPE, like=_build)


def test_an_array_that_inflates_beyond_its_shape_is_refused_unread(stored):
    zoo, _, path = stored
    npz = _npz(path)
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    first = sorted(arrays)[0]
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as archive:
        for k, v in arrays.items():
            with archive.open(f"{k}.npy", "w") as member:
                np.lib.format.write_array(member, v)
                if k == first:
                    member.write(b"\0" * (8 << 20))  # 8 MiB of zeros: a few KiB packed
    _fix_sha256(path)
    with pytest.raises(ValueError, match="unpacks to more bytes"):
        zoo.load(RECIPE, like=_build)




@pytest.mark.parametrize("edit,message", [
    (lambda r: {**r, "recipe": {**r["recipe"], "seed": 9}}, "does not hash"),
    (lambda r: {**r, "state_hash": "xyz"}, "64 lowercase hex"),
    (lambda r: {**r, "format": "other"}, "not a"),
    (lambda r: [r], "not a"),
])
def test_bad_records_are_refused(stored, edit, message):
    zoo, _, path = stored
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ValueError, match=message):
        zoo.records()


def test_a_record_that_is_not_a_regular_file_is_refused(stored, tmp_path):
    zoo, _, path = stored
    target = tmp_path / "elsewhere.json"
    shutil.move(path, target)
    path.symlink_to(target)
    with pytest.raises(ValueError, match="regular file"):
        zoo.info(RECIPE)


# --- the cache in front of a zoo --------------------------------------------------------------

def test_the_cache_rounds_on_a_miss_and_on_a_hit(tmp_path):
    cache = ev.ModelCache(tmp_path / "cache", precision="float16")
    made = cache.get_or_create(RECIPE, make=_build, like=lambda: _build(5))
    loaded = ev.ModelCache(tmp_path / "cache", precision="float16").get_or_create(
        RECIPE, make=pytest.fail, like=lambda: _build(5))
    assert ev.model_hash(made) == ev.model_hash(loaded) == ev.model_hash(
        ev.round_model(_build()))
    # An entry stored unrounded (an older cache) is rounded as it is loaded.
    plain = ev.ModelCache(tmp_path / "plain")
    plain.get_or_create(RECIPE, make=_build, like=_build)
    rounded = ev.ModelCache(tmp_path / "plain", precision="float16").get_or_create(
        RECIPE, make=pytest.fail, like=_build)
    assert ev.model_hash(rounded) == ev.model_hash(made)
    with pytest.raises(ValueError, match="precision"):
        ev.ModelCache(tmp_path, precision="bfloat8")


def test_the_cache_reads_the_zoo_before_building_and_can_refuse_to_build(stored, tmp_path):
    zoo, net, _ = stored
    cache = ev.ModelCache(tmp_path / "cache", precision="float16", zoo=zoo, build=False)
    assert RECIPE in cache and cache.info(RECIPE)["test_accuracy"] == 0.5
    got = cache.get_or_create(RECIPE, make=pytest.fail, like=_build)
    assert ev.model_hash(got) == ev.model_hash(net)
    assert (cache.zoo_hits, cache.hits, cache.misses) == (1, 0, 0)
    with pytest.raises(LookupError, match="building is off"):
        cache.get_or_create({"arch": "mlp", "seed": 5}, make=pytest.fail, like=_build)
    with pytest.raises(TypeError, match="ModelZoo"):
        ev.ModelCache(tmp_path, zoo=str(zoo.root))


def test_a_weight_file_that_is_not_a_zip_is_refused(stored):
    zoo, _, path = stored
    _npz(path).write_bytes(b"not a zip at all")
    _fix_sha256(path)
    with pytest.raises(ValueError, match="not an .npz"):
        zoo.load(RECIPE, like=_build)
