"""The models kept in the repository (benchmarks/zoo): within budget, every record and file
intact, and (slow) every model restores to the hash its record names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ipguard_jax import evaluation as ev

ZOO = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo"
BUDGET_BYTES = 60 * 10**6


def _zoos():
    return [ev.ModelZoo(p) for p in sorted(ZOO.iterdir()) if p.is_dir()] if ZOO.is_dir() else []


def test_the_zoo_stays_within_its_budget():
    total = sum(p.stat().st_size for p in ZOO.rglob("*") if p.is_file()) if ZOO.is_dir() else 0
    assert total <= BUDGET_BYTES, f"benchmarks/zoo holds {total / 1e6:.1f} MB"


def test_every_record_is_valid_and_names_its_file():
    for zoo in _zoos():
        for record in zoo.records():  # each record's own checks
            npz = zoo.root / f"{record['name']}.{record['recipe_key'][:16]}.npz"
            assert hashlib.sha256(npz.read_bytes()).hexdigest() == record["npz_sha256"], npz
            assert npz.stat().st_size == record["npz_bytes"]
            assert 0.0 <= record["test_accuracy"] <= 1.0
        stray = {p.name for p in zoo.root.iterdir()} - {
            f"{r['name']}.{r['recipe_key'][:16]}.{ext}" for r in zoo.records()
            for ext in ("json", "npz")}
        assert not stray, f"files without a record in {zoo.root}: {sorted(stray)}"


@pytest.mark.slow
def test_every_model_restores_to_its_recorded_hash():
    from ipguard_jax.evaluation import postprocess as pp

    for zoo in _zoos():
        for record in zoo.records():
            recipe = record["recipe"]
            params = recipe.get("params", {})
            kwargs = params.get("student_kwargs", recipe.get("kwargs", {})) or {}
            num_classes = recipe.get("num_classes", 10)
            model = zoo.load(recipe, like=lambda: pp.build_model(record["arch"], num_classes, 0,
                                                                 **kwargs))
            assert ev.model_hash(model) == record["state_hash"]
