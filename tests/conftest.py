"""Shared fixtures: small classifiers trained on scikit-learn's digits in the test session."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# The tests do not write JAX's persistent compilation cache into the home directory
# (tests/test_compile_cache.py turns it on in subprocesses of its own).
os.environ.setdefault("IPGUARD_COMPILE_CACHE", "0")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ipguard_jax as ipg
from ipguard_jax.data import load_digits


def mlp_apply(params, x):
    """A plain-JAX MLP on flattened inputs: ``params`` is a list of ``(w, b)``."""
    h = x.reshape(x.shape[0], -1)
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def train_mlp(x, y, seed, hidden=64, num_classes=10, steps=300, lr=1e-2):
    """Full-batch Adam on an MLP; a few seconds on digits."""
    sizes = [int(np.prod(x.shape[1:])), hidden, num_classes]
    keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
    params = [(jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), jnp.zeros(n))
              for k, m, n in zip(keys, sizes[:-1], sizes[1:])]
    opt = optax.adam(lr)

    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, x), y).mean()

    @jax.jit
    def fit(params):
        def step(carry, _):
            p, s = carry
            grads = jax.grad(loss_fn)(p)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return params

    return fit(params)


@pytest.fixture
def benchmark_script(monkeypatch):
    """``load(name)`` imports ``benchmarks/<name>.py`` as a module, registered for the test only."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def digits():
    """Digits as (N, 8, 8, 1) float32 in [0, 1], shuffled, split into owner/other/test parts."""
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits))
    x, y = digits.x[order], digits.y[order]
    return {"owner": (x[:700], y[:700]), "other": (x[700:1400], y[700:1400]),
            "test": (x[1400:], y[1400:])}


@pytest.fixture(scope="session")
def owner(digits):
    x, y = digits["owner"]
    return ipg.Classifier(mlp_apply, train_mlp(x, y, seed=0), input_shape=(8, 8, 1))


@pytest.fixture(scope="session")
def independent(digits):
    """Trained from scratch, on other data, with another seed."""
    x, y = digits["other"]
    return ipg.Classifier(mlp_apply, train_mlp(x, y, seed=1), input_shape=(8, 8, 1))


@pytest.fixture(scope="session")
def owner_fingerprints(owner, digits):
    """The default config (k=3, Adam 0.01, 1000 steps) on test images."""
    config = ipg.FingerprintConfig(num=100)
    return ipg.generate(owner, config, key=0, data=digits["test"][0], progress=False)
