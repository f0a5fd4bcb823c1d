"""The persistent compilation cache generate turns on: where, when not, and that it fills."""

import os
import subprocess
import sys

import pytest

from ipguard_jax import compile_cache

SCRIPT = """
import sys, jax
if len(sys.argv) > 1:
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
import jax.numpy as jnp, numpy as np
import ipguard_jax as ipg
w = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
clf = ipg.Classifier(lambda p, x: x.reshape(len(x), -1) @ p, jnp.asarray(w), input_shape=(8, 8, 1))
ipg.generate(clf, ipg.FingerprintConfig(num=4, steps=20, init="noise", keep="all"), key=0,
             progress=False)
print("DIR", jax.config.jax_compilation_cache_dir)
"""


def _run(env_value, *args):
    env = {**os.environ, compile_cache.ENV_VAR: env_value,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("DIR ")[-1].strip()


@pytest.mark.slow  # three subprocesses
def test_generate_turns_the_cache_on_unless_told_otherwise(tmp_path):
    cache = tmp_path / "xla"
    assert _run(str(cache)) == str(cache)
    assert cache.is_dir() and any(cache.iterdir())  # compiled programs were stored
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    assert _run("0") == "None"  # turned off: JAX's setting stays unset
    mine = tmp_path / "mine"
    assert _run(str(cache), str(mine)) == str(mine)  # a process's own setting wins


def test_default_directory_follows_xdg():
    assert compile_cache.resolve_directory({}) == os.path.join(
        os.path.expanduser("~"), ".cache", "ipguard_jax", "xla")
    assert compile_cache.resolve_directory({"IPGUARD_COMPILE_CACHE": "on",
                                            "XDG_CACHE_HOME": "/x"}) == "/x/ipguard_jax/xla"
    assert compile_cache.resolve_directory({"IPGUARD_COMPILE_CACHE": "false"}) is None
