"""Per-backend choices: the CPU convolution rewrite, its detection and its override; the
backend-aware defaults of generate (loop and compaction)."""

from __future__ import annotations

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import ipguard_jax as ipg
from ipguard_jax import backends
from ipguard_jax.backends import ENV_VAR, cpu, cpu_conv, cpu_conv_enabled
from ipguard_jax.evaluation.postprocess import build_model
from ipguard_jax.models import _common

DIMS = ("NHWC", "HWIO", "NHWC")

on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="needs the CPU backend")


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def gpu_default(monkeypatch):
    """As if the default backend were a GPU (and no default device were set)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with jax.default_device(None):
        yield


def primitives(closed_jaxpr) -> set[str]:
    """Names of the primitives in a jaxpr and in every jaxpr nested in its equations."""
    names: set[str] = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub.jaxpr)

    walk(closed_jaxpr.jaxpr)
    return names


@functools.cache
def _layer():
    return nnx.split(nnx.jit(lambda: _common.conv(4, 6, 3, 1, 1, rngs=nnx.Rngs(0)))())


def layer_gradient_jaxpr(size: int = 8):
    """The jaxpr of a zoo conv layer's gradient w.r.t. its kernel and its input."""
    graphdef, params = _layer()
    x = jnp.ones((2, size, size, 4))
    loss = lambda params, x: jnp.tanh(nnx.merge(graphdef, params)(x)).sum()
    return jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x)


# --- what is traced ---------------------------------------------------------------------------

@on_cpu
def test_default_on_cpu_is_the_rewrite():
    assert backends.trace_platform() == "cpu" and cpu_conv_enabled()
    default = layer_gradient_jaxpr()
    with cpu_conv(True):
        forced = layer_gradient_jaxpr()
    assert str(default) == str(forced)
    # The kernel gradient as products per kernel tap; no product without the rewrite.
    assert "dot_general" in primitives(default)


def test_forced_off_traces_xla_convolution_only():
    with cpu_conv(False):
        assert not cpu_conv_enabled()
        for size in (8, 3):  # the kernel-gradient rewrite's map size, then the patches path's
            names = primitives(layer_gradient_jaxpr(size))
            assert "conv_general_dilated" in names
            assert not names & {"dot_general", "custom_jvp_call", "checkpoint", "remat2",
                                "concatenate"}
        # Exactly jax.lax's program.
        x, w = jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))
        args = ((2, 2), ((1, 1), (1, 1)))
        ours = jax.make_jaxpr(lambda x, w: backends.conv_general_dilated(
            x, w, *args, dimension_numbers=DIMS))(x, w)
    native = jax.make_jaxpr(lambda x, w: jax.lax.conv_general_dilated(
        x, w, *args, dimension_numbers=DIMS))(x, w)
    assert str(ours) == str(native)


@pytest.mark.usefixtures("gpu_default")
def test_forced_on_uses_the_rewrite_whatever_the_platform():
    assert not cpu_conv_enabled()
    with cpu_conv(True):
        assert "custom_jvp_call" in primitives(jax.make_jaxpr(
            lambda x, w: backends.conv_general_dilated(
                x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DIMS))(
            jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2))))
        # The patches path on a 2x2 map: a matrix product, no convolution.
        names = primitives(layer_gradient_jaxpr(2))
    assert "dot_general" in names and "conv_general_dilated" not in names


# --- detection --------------------------------------------------------------------------------

@pytest.mark.usefixtures("gpu_default")
def test_detection_order():
    assert backends.trace_platform() == "gpu" and not cpu_conv_enabled()
    cpu0 = jax.devices("cpu")[0]
    with jax.default_device(cpu0):
        assert backends.trace_platform() == "cpu" and cpu_conv_enabled()
    mesh = Mesh(np.array([cpu0]), ("batch",))
    with jax.set_mesh(mesh):
        assert backends.trace_platform() == "cpu"
    # Operands on a mesh carry its platform into a jit trace.
    x = jax.device_put(jnp.ones((2, 3)), NamedSharding(mesh, PartitionSpec("batch")))
    seen = []
    jax.jit(lambda x: seen.append(backends.trace_platform(x)) or x)(x)
    jax.jit(lambda x: seen.append(backends.trace_platform(x)) or x)(jnp.ones((2, 3)))
    assert seen == ["cpu", "gpu"]


@pytest.mark.usefixtures("gpu_default")
def test_environment_variable(monkeypatch):
    for value, expected in (("1", True), ("0", False), (" AUTO ", False), ("", False)):
        monkeypatch.setenv(ENV_VAR, value)
        assert cpu_conv_enabled() is expected, value
    monkeypatch.setenv(ENV_VAR, "0")
    with cpu_conv(True):  # the context manager wins
        assert cpu_conv_enabled()
    monkeypatch.setenv(ENV_VAR, "yes")
    with pytest.raises(ValueError, match=f'{ENV_VAR} must be "0", "1" or "auto"'):
        backends.conv_general_dilated(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), (1, 1),
                                      ((1, 1), (1, 1)), dimension_numbers=DIMS)


# --- the override -----------------------------------------------------------------------------

def test_override_restores_the_previous_state(monkeypatch):
    before = cpu_conv_enabled()
    with cpu_conv(not before):
        assert cpu_conv_enabled() is (not before)
        with cpu_conv(before):
            assert cpu_conv_enabled() is before
        assert cpu_conv_enabled() is (not before)
    assert cpu_conv_enabled() is before
    with pytest.raises(RuntimeError, match="boom"):
        with cpu_conv(not before):
            raise RuntimeError("boom")
    assert cpu_conv_enabled() is before
    # None inside a block hands the choice back to the variable (and detection).
    monkeypatch.setenv(ENV_VAR, "0")
    with cpu_conv(True):
        with cpu_conv(None):
            assert not cpu_conv_enabled()
        assert cpu_conv_enabled()
    assert not cpu_conv_enabled()
    with pytest.raises(TypeError, match="True, False or None"):
        with cpu_conv(1):
            pass


def test_override_is_per_thread_and_keys_the_jit_cache():
    seen = []
    with cpu_conv(False):
        thread = threading.Thread(target=lambda: seen.append(cpu_conv_enabled()))
        thread.start()
        thread.join()
    assert seen == [cpu_conv_enabled()]  # the other thread kept the default
    traces = []
    f = jax.jit(lambda x: traces.append(cpu_conv_enabled()) or x + 1)
    for enabled in (True, False, True, False):
        with cpu_conv(enabled):
            f(jnp.ones(2))
    assert traces == [True, False]  # traced once per setting, then cached


# --- the models -------------------------------------------------------------------------------

def _outputs(model: nnx.Module, x: jax.Array, enabled: bool, param_grads: bool = False):
    """Eval-mode logits, input gradient and (optionally) parameter gradients, in one program."""
    model = nnx.view(model, use_running_average=True, deterministic=True,
                     raise_if_not_found=False)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss = lambda params, x: jax.nn.log_softmax(nnx.merge(graphdef, params, rest)(x))[:, 0].sum()

    def run(params, x):
        logits = nnx.merge(graphdef, params, rest)(x)
        grads = jax.grad(loss, argnums=(0, 1) if param_grads else 1)(params, x)
        return logits, grads

    with cpu_conv(enabled):
        return jax.jit(run)(params, x)


def _assert_close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.slow  # ResNet-20 compiles
def test_resnet20_same_logits_and_input_gradients_either_way():
    model = build_model("resnet20", 10, 0)
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    (logits_on, grad_on), (logits_off, grad_off) = (
        _outputs(model, x, enabled) for enabled in (True, False))
    assert bool(jnp.all(jnp.isfinite(logits_on))) and float(jnp.abs(grad_off).max()) > 0
    _assert_close(logits_on, logits_off)
    _assert_close(grad_on, grad_off)


def test_small_cnn_same_logits_and_gradients_either_way():
    """8x8 digits: the 4x4 and 2x2 maps take the patches path, the 8x8 one the tap products."""
    model = build_model("cnn", 10, 0, in_channels=1, widths=(8, 16, 16))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    on, off = (_outputs(model, x, enabled, param_grads=True) for enabled in (True, False))
    # Logits, input gradient and the parameter gradients, where the kernel rewrite acts.
    leaves_on, leaves_off = jax.tree.leaves(on), jax.tree.leaves(off)
    assert len(leaves_on) == len(leaves_off) > 2
    for a, b in zip(leaves_on, leaves_off):
        _assert_close(a, b)


def test_rewrite_module_is_the_cpu_path():
    assert cpu.SMALL_OUTPUT_PIXELS == 16 and cpu.WGRAD_ROW_BLOCKS == 2
    assert _common.conv_general_dilated is backends.conv_general_dilated


# --- generate's defaults ----------------------------------------------------------------------

def test_generation_platform_is_that_of_the_run_devices():
    cpu0 = jax.devices("cpu")[0]
    assert backends.generation_platform() == jax.default_backend()
    assert backends.generation_platform(Mesh(np.array([cpu0]), ("batch",))) == "cpu"


@pytest.mark.usefixtures("gpu_default")
def test_generation_platform_follows_the_default_device_and_the_mesh():
    assert backends.generation_platform() == "gpu"
    cpu0 = jax.devices("cpu")[0]
    with jax.default_device(cpu0):
        assert backends.generation_platform() == "cpu"
    assert backends.generation_platform(Mesh(np.array([cpu0]), ("batch",))) == "cpu"


@pytest.mark.parametrize("platform, loop, compact", [
    ("cpu", "host", False), ("gpu", "device", True), ("tpu", "device", True)])
def test_auto_resolution_per_platform(platform, loop, compact):
    assert backends.resolve_loop("auto", platform) == loop
    assert backends.resolve_compact("auto", platform) is compact
    for explicit in ("host", "device"):
        assert backends.resolve_loop(explicit, platform) == explicit
    for explicit in (True, False):
        assert backends.resolve_compact(explicit, platform) is explicit
    with pytest.raises(ValueError, match="compact must be"):
        backends.resolve_compact("yes", platform)


@pytest.mark.parametrize("platform", ["gpu", "tpu", "cpu"])
def test_generate_resolves_auto_from_the_reported_backend(owner, digits, monkeypatch, platform):
    # The backend query is replaced: on "gpu"/"tpu" the run takes the device loop with the
    # refills inside it (here on CPU devices), on "cpu" today's host-driven whole chunks.
    from ipguard_jax import generation

    asked, ran = [], []
    monkeypatch.setattr(backends, "generation_platform",
                        lambda mesh=None: asked.append(mesh) or platform)
    for module, name in ((generation, "run_chunked"), (generation, "run_compacted"),
                         (generation, "run_device_compacted")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda run, real=real, name=name: ran.append(name) or real(run))
    config = ipg.FingerprintConfig(num=12, k=3.0, steps=40, batch_size=8, keep="all")
    assert config.loop == "auto" and config.compact == "auto"
    fp = ipg.generate(owner, config, key=0, data=digits["test"][0], progress=False)
    accelerator = platform != "cpu"
    assert asked == [None]  # one device here: no mesh
    assert ran == (["run_device_compacted"] if accelerator else ["run_chunked"])
    assert fp.metadata["backend"] == platform
    assert fp.metadata["loop"] == ("device" if accelerator else "host")
    assert fp.metadata["compact"] is accelerator
    assert fp.metadata["config"]["loop"] == "auto" and fp.metadata["config"]["compact"] == "auto"
    # Values given explicitly are used whatever the backend.
    ran.clear()
    explicit = ipg.FingerprintConfig(num=12, k=3.0, steps=40, batch_size=8, keep="all",
                                     loop="host", compact=True)
    fp = ipg.generate(owner, explicit, key=0, data=digits["test"][0], progress=False)
    assert ran == ["run_compacted"]
    assert fp.metadata["loop"] == "host" and fp.metadata["compact"] is True


def test_cpu_default_is_todays_host_loop_without_compaction(owner, digits):
    if jax.default_backend() != "cpu":
        pytest.skip("needs the CPU backend")
    data = digits["test"][0]
    base = dict(num=16, k=3.0, steps=60, batch_size=8)
    default = ipg.generate(owner, ipg.FingerprintConfig(**base), key=5, data=data,
                           progress=False)
    explicit = ipg.generate(owner, ipg.FingerprintConfig(**base, loop="host", compact=False),
                            key=5, data=data, progress=False)
    for name, a in default.arrays().items():
        np.testing.assert_array_equal(a, explicit.arrays()[name], err_msg=name)
    assert default.metadata["loop"] == "host" and default.metadata["compact"] is False
    assert default.metadata["backend"] == "cpu"


def test_compact_setting_is_validated():
    assert ipg.FingerprintConfig().compact == "auto"
    assert ipg.FingerprintConfig(compact=np.bool_(True)).compact is True
    with pytest.raises(ValueError, match='compact must be True, False or "auto"'):
        ipg.FingerprintConfig(compact="on")
    with pytest.raises(TypeError, match='compact must be True, False or "auto"'):
        ipg.FingerprintConfig(compact=None)
    with pytest.raises(TypeError, match='compact must be True, False or "auto"'):
        ipg.FingerprintConfig(compact=1)
