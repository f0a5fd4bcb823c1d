"""Secrecy of the set and trust in what generation reads back: OS-drawn default keys, 64-bit
seeds, checkpoints bound to their run, checked, re-labelled by the owner and removed."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import ipguard_jax as ipg
from ipguard_jax.generation import as_key, secret_key

CONFIG = ipg.FingerprintConfig(num=8, batch_size=4, keep="all", steps=20)


def _key_words(fp: ipg.Fingerprints) -> list[int]:
    return fp.metadata["key"]["data"]


def test_the_default_key_comes_from_the_os_and_is_recorded(owner, digits):
    data = digits["test"][0]
    a = ipg.generate(owner, CONFIG, data=data, progress=False)
    b = ipg.generate(owner, CONFIG, data=data, progress=False)
    assert a.metadata["key"]["source"] == b.metadata["key"]["source"] == "os"
    assert _key_words(a) != _key_words(b)
    assert not np.array_equal(a.source, b.source)  # another candidate order too
    # A thief re-running the public default (seed 0) does not get the owner's set ...
    public = ipg.generate(owner, CONFIG, key=0, data=data, progress=False)
    assert public.metadata["key"]["source"] == "explicit"
    assert not np.array_equal(public.x, a.x)
    # ... while the owner regenerates it bit for bit from the recorded key.
    words = np.asarray(_key_words(a), np.uint32)
    again = ipg.generate(owner, CONFIG, key=jax.random.wrap_key_data(words), data=data,
                         progress=False)
    np.testing.assert_array_equal(again.x, a.x)
    np.testing.assert_array_equal(again.labels, a.labels)


def test_int_seeds_use_all_64_bits_and_out_of_range_seeds_are_refused():
    assert jax.random.key_data(as_key(7)).tolist() == jax.random.key_data(
        jax.random.key(7)).tolist()
    assert jax.random.key_data(as_key(2**32)).tolist() == [1, 0]  # not the key of seed 0
    assert jax.random.key_data(as_key(2**64 - 1)).tolist() == [2**32 - 1, 2**32 - 1]
    for bad in (2**64, 2**70, -1):
        with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
            as_key(bad)
    assert jax.random.key_data(secret_key()).shape == (2,)


def test_a_successful_run_removes_its_checkpoint_unless_asked_to_keep_it(owner, digits,
                                                                         tmp_path):
    data = digits["test"][0]
    ipg.generate(owner, CONFIG, key=3, data=data, progress=False, checkpoint=tmp_path / "c")
    assert not (tmp_path / "c").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    ipg.generate(owner, CONFIG, key=3, data=data, progress=False, checkpoint=tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    ipg.generate(owner, CONFIG, key=3, data=data, progress=False, checkpoint=tmp_path / "k",
                 keep_checkpoint=True)
    assert any(p.name.isdigit() for p in (tmp_path / "k").iterdir())


def test_a_resumed_run_without_a_key_takes_the_checkpoints_key(owner, digits, tmp_path):
    data = digits["test"][0]
    first = ipg.generate(owner, CONFIG, data=data, progress=False, checkpoint=tmp_path / "c",
                         keep_checkpoint=True)
    resumed = ipg.generate(owner, CONFIG, data=data, progress=False,
                           checkpoint=tmp_path / "c")
    assert resumed.metadata["key"]["source"] == "checkpoint"
    assert _key_words(resumed) == _key_words(first)
    np.testing.assert_array_equal(resumed.x, first.x)


def _rewrite_checkpoint(directory, edit):
    """Saves the latest checkpoint again as a new step, after ``edit(arrays, meta)``."""
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    arrays = {name: np.asarray(v) for name, v in dict(restored.arrays).items()}
    meta = dict(restored.meta)
    edit(arrays, meta)
    manager.save(step + 1, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
    manager.close()


def test_labels_edited_in_a_checkpoint_do_not_reach_the_set(owner, digits, tmp_path):
    data = digits["test"][0]
    config = ipg.FingerprintConfig(num=8, batch_size=4, keep="all", steps=200, k=0.5)
    honest = ipg.generate(owner, config, key=5, data=data, progress=False,
                          checkpoint=tmp_path / "c", keep_checkpoint=True)

    def wrong_labels(arrays, meta):
        arrays["labels"] = (arrays["labels"] + 1) % 10

    _rewrite_checkpoint(tmp_path / "c", wrong_labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = ipg.generate(owner, config, key=5, data=data, progress=False,
                               checkpoint=tmp_path / "c")
    assert any("edited or damaged checkpoint" in str(w.message) for w in caught)
    assert ipg.matching_rate(resumed, owner) == 1.0  # the owner matches its own set
    np.testing.assert_array_equal(resumed.labels, honest.labels)
    assert not resumed.converged[honest.converged].any()  # they no longer count as converged


@pytest.mark.parametrize("edit, message", [
    (lambda a, m: a.update(id=a["id"] + 10_000), "candidate ids"),
    (lambda a, m: a.update(x=a["x"] * np.float32(np.nan)), "NaN or inf"),
    (lambda a, m: a.update(x=a["x"] + 5), "outside the owner's bounds"),
    (lambda a, m: a.update(labels=a["labels"][:-1]), "labels has shape"),
    (lambda a, m: a.pop("loss"), "arrays"),
    (lambda a, m: m.update(next_id=-1000), "next_id"),
    (lambda a, m: m.update(pending=["7"]), "pending"),
])
def test_a_checkpoint_that_fails_its_checks_is_refused(owner, digits, tmp_path, edit, message):
    data = digits["test"][0]
    ipg.generate(owner, CONFIG, key=9, data=data, progress=False, checkpoint=tmp_path / "c",
                 keep_checkpoint=True)
    _rewrite_checkpoint(tmp_path / "c", edit)
    with pytest.raises(ValueError, match=f"is invalid: .*{message}"):
        ipg.generate(owner, CONFIG, key=9, data=data, progress=False, checkpoint=tmp_path / "c")
