"""Model zoo: registry, shapes, parameter counts, torch-compatible layout, modes, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ipguard_jax import models
from ipguard_jax.models import _common

# Measured nnx.Param counts with 10 classes and default arguments; each class
# docstring states the same numbers.
PARAM_COUNTS = {
    "mlp": 1_707_274,
    "cnn": 94_762,
    "resnet20": 272_474,
    "resnet32": 466_906,
    "resnet56": 855_770,
    "resnet18": 11_181_642,
    "resnet34": 21_289_802,
    "resnet50": 23_528_522,
    "vgg11": 9_756_426,
    "vgg13": 9_941_322,
    "vgg16": 15_253_578,
    "wrn16_1": 175_066,
    "wrn16_4": 2_748_890,
    "wrn28_10": 36_479_194,
    "mobilenet_v2": 2_236_682,
}

CLASSES = {
    "mlp": models.MLP,
    "cnn": models.CNN,
    "resnet20": models.CifarResNet,
    "resnet32": models.CifarResNet,
    "resnet56": models.CifarResNet,
    "resnet18": models.ResNet,
    "resnet34": models.ResNet,
    "resnet50": models.ResNet,
    "vgg11": models.VGG,
    "vgg13": models.VGG,
    "vgg16": models.VGG,
    "wrn16_1": models.WideResNet,
    "wrn16_4": models.WideResNet,
    "wrn28_10": models.WideResNet,
    "mobilenet_v2": models.MobileNetV2,
}


def abstract(name, num_classes=10, **kwargs):
    """The model with shape-only variables: no parameter memory, no init compute."""
    return _abstract(name, num_classes, tuple(sorted(kwargs.items())))


@functools.cache
def _abstract(name, num_classes, kwargs):
    return nnx.eval_shape(
        lambda: models.create(name, num_classes, rngs=nnx.Rngs(0), **dict(kwargs))
    )


def count_params(model):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def paths(model):
    return {tuple(path) for path, _ in nnx.to_flat_state(nnx.state(model))}


def test_available_lists_every_family():
    assert models.available() == list(PARAM_COUNTS)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as info:
        models.create("resnet21", rngs=nnx.Rngs(0))
    for name in models.available():
        assert name in str(info.value)


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_output_shape_and_documented_param_count(name):
    model = abstract(name)
    assert count_params(model) == PARAM_COUNTS[name]
    assert f"{PARAM_COUNTS[name]:,}" in CLASSES[name].__doc__
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert out.shape == (2, 10)
    assert out.dtype == jnp.float32


def test_num_classes_and_input_size():
    graphdef, state = nnx.split(abstract("resnet18", num_classes=7, in_channels=1))
    x = jax.ShapeDtypeStruct((1, 224, 224, 1), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert out.shape == (1, 7)


@pytest.mark.parametrize(
    ("name", "num_classes", "kwargs", "torch_count"),
    [
        # torchvision's published parameter counts pin the layouts.
        ("resnet18", 1000, {}, 11_689_512),
        ("resnet50", 1000, {}, 25_557_032),
        ("mobilenet_v2", 1000, {}, 3_504_872),
        ("vgg16", 1000, {"pool_size": 7, "hidden": 4096}, 138_365_992),
        ("vgg11", 1000, {"pool_size": 7, "hidden": 4096}, 132_868_840),
    ],
)
def test_torchvision_parameter_counts(name, num_classes, kwargs, torch_count):
    assert count_params(abstract(name, num_classes, **kwargs)) == torch_count


def test_state_paths_mirror_pytorch_state_dict_keys():
    assert {
        ("conv1", "kernel"),
        ("layer1", 0, "conv1", "kernel"),
        ("layer2", 0, "downsample", 0, "kernel"),
        ("layer2", 0, "downsample", 1, "mean"),
        ("layer4", 1, "bn2", "var"),
        ("fc", "kernel"),
    } <= paths(abstract("resnet18"))
    assert ("layer3", 5, "conv3", "kernel") in paths(abstract("resnet50"))
    assert {
        ("layer2", 0, "shortcut", 0, "kernel"),
        ("layer2", 0, "shortcut", 1, "scale"),
        ("linear", "kernel"),
    } <= paths(abstract("resnet20"))
    assert {
        ("features", 0, "kernel"),
        ("features", 0, "bias"),  # torchvision's VGG convs keep a bias
        ("features", 1, "mean"),
        ("classifier", 6, "kernel"),
    } <= paths(abstract("vgg16"))
    assert {
        ("features", 0, 0, "kernel"),
        ("features", 1, "conv", 0, 0, "kernel"),  # no expansion: depthwise first
        ("features", 2, "conv", 3, "scale"),
        ("features", 18, 1, "mean"),
        ("classifier", 1, "kernel"),
    } <= paths(abstract("mobilenet_v2"))
    assert {
        ("block1", "layer", 0, "convShortcut", "kernel"),
        ("block3", "layer", 1, "bn2", "scale"),
        ("bn1", "mean"),
    } <= paths(abstract("wrn16_4"))


def test_convolutions_pad_symmetrically_like_torch():
    resnet = abstract("resnet18")
    assert resnet.conv1.padding == ((3, 3), (3, 3))
    assert resnet.layer2[0].conv1.padding == ((1, 1), (1, 1))
    assert resnet.layer2[0].conv1.strides == (2, 2)
    assert resnet.bn1.epsilon == 1e-5 and resnet.bn1.momentum == 0.9
    mobilenet = abstract("mobilenet_v2")
    assert mobilenet.features[0][0].padding == ((1, 1), (1, 1))


@nnx.jit
def forward(model, x):
    """One compiled program per mode instead of one per eager op; BatchNorm
    statistics updated in train mode propagate back to ``model``."""
    return model(x)


def build(fn):
    """Builds a model in one compiled program (faster than eager init)."""
    return nnx.jit(fn)()


def uniform(seed, shape):
    # numpy, not jax.random: threefry programs compile slowly on CPU.
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def fast_rngs(seed):
    # XLA compiles the "rbg" generator's ops far faster than threefry's on
    # CPU; real weights here only need to be random, not portable.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@pytest.fixture(scope="module")
def small_models():
    """Real (initialised) small members of the families, built once."""
    return {
        "cnn": (
            build(lambda: models.create("cnn", in_channels=1, widths=(4, 8), rngs=fast_rngs(0))),
            (8, 8, 1),
        ),
        "resnet8": (
            build(lambda: models.CifarResNet(8, widths=(4, 8, 16), rngs=fast_rngs(1))),
            (16, 16, 3),
        ),
        "wrn10_1": (
            build(lambda: models.WideResNet(10, 1, dropout=0.3, rngs=fast_rngs(2))),
            (16, 16, 3),
        ),
    }


@pytest.mark.parametrize("name", ["cnn", "resnet8", "wrn10_1"])
def test_eval_is_deterministic_and_differs_from_train(small_models, name):
    model, shape = small_models[name]
    x = uniform(0, (4, *shape))
    model.eval()
    y1, y2 = forward(model, x), forward(model, x)
    np.testing.assert_array_equal(y1, y2)
    model.train()
    bn = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    y_train = forward(model, x)
    # Batch statistics in train mode, running averages in eval mode.
    assert not np.allclose(y_train, y1, atol=1e-4)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), bn, nnx.state(model, nnx.BatchStat))
    assert all(jax.tree.leaves(changed))
    model.eval()
    assert not np.allclose(forward(model, x), y1, atol=1e-6)  # updated running stats


@pytest.mark.parametrize("name", ["cnn", "resnet8", "wrn10_1"])
def test_input_gradient_flows(small_models, name):
    model, shape = small_models[name]
    model.eval()
    graphdef, state = nnx.split(model)
    x = uniform(1, (3, *shape))

    def margin(x):
        logits = nnx.merge(graphdef, state)(x)
        return (logits[:, 0] - logits[:, 1]).sum()

    grad = jax.jit(jax.grad(margin))(x)
    assert grad.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(jnp.abs(grad).sum(axis=(1, 2, 3)) > 0))


def test_dropout_active_in_train_mode_only():
    model = build(
        lambda: models.create(
            "mlp", in_features=64, in_channels=1, hidden=(32,), dropout=0.5, rngs=fast_rngs(0)
        )
    )
    x = uniform(0, (4, 8, 8, 1))
    assert not np.allclose(forward(model, x), forward(model, x))
    model.eval()
    np.testing.assert_array_equal(forward(model, x), forward(model, x))


def test_normalisation_happens_inside_the_model():
    x = uniform(0, (2, 4, 4, 3))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    normed = build(lambda: models.MLP(48, hidden=(8,), mean=mean, std=std, rngs=fast_rngs(0)))
    plain = build(lambda: models.MLP(48, hidden=(8,), mean=0.0, std=1.0, rngs=fast_rngs(0)))
    expected = forward(plain, (x - jnp.array(mean)) / jnp.array(std))
    np.testing.assert_allclose(forward(normed, x), expected, rtol=1e-5, atol=1e-6)


def test_default_normalisation_statistics():
    assert abstract("resnet20").mean == _common.CIFAR10_MEAN
    assert abstract("resnet18").std == _common.IMAGENET_STD
    assert abstract("cnn", in_channels=1).mean == (0.5,)


@pytest.mark.parametrize(
    "kwargs",
    [{"mean": (0.5, 0.5)}, {"std": (1.0, 0.0, 1.0)}, {"in_channels": 0}],
)
def test_bad_normalisation_raises(kwargs):
    with pytest.raises(ValueError):
        models.create("cnn", rngs=nnx.Rngs(0), **kwargs)


def test_bad_depth_and_features_raise():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.CifarResNet(21, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth"):
        models.ResNet(20, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="6n \\+ 4"):
        models.WideResNet(15, 2, rngs=nnx.Rngs(0))
    mlp = models.MLP(64, in_channels=1, hidden=(4,), rngs=fast_rngs(0))
    with pytest.raises(ValueError, match="expects 64"):
        mlp(jnp.zeros((1, 4, 4, 1)))


def test_max_pool_2x2_matches_reduce_window():
    x = normal(0, (2, 7, 6, 3))  # odd height: floor mode
    expected = jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )
    np.testing.assert_array_equal(_common.max_pool_2x2(x), expected)


def test_stem_max_pool_pads_with_minus_infinity():
    x = -jnp.arange(1.0, 26.0).reshape(1, 5, 5, 1)  # all negative: zero padding would win
    out = _common.max_pool(x, 3, 2, 1)
    assert out.shape == (1, 3, 3, 1)
    np.testing.assert_array_equal(out[0, :, :, 0], [[-1, -2, -4], [-6, -7, -9], [-16, -17, -19]])


def test_adaptive_avg_pool_uses_torch_bins():
    x = jnp.arange(5.0).reshape(1, 1, 5, 1) * jnp.ones((1, 5, 1, 1))
    out = _common.adaptive_avg_pool(x, 3)
    # torch bins for 5 -> 3: [0, 2), [1, 4), [3, 5)
    np.testing.assert_allclose(out[0, 0, :, 0], [0.5, 2.0, 3.5])
    np.testing.assert_allclose(_common.adaptive_avg_pool(x, 1)[0, 0, 0, 0], 2.0)
    np.testing.assert_allclose(_common.adaptive_avg_pool(x, 5), x)


def test_flatten_uses_torch_channel_first_order():
    x = jnp.arange(12.0).reshape(1, 2, 3, 2)  # (B, H, W, C)
    np.testing.assert_array_equal(
        _common.flatten_chw(x)[0], jnp.transpose(x, (0, 3, 1, 2)).reshape(-1)
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_every_model_runs_and_differentiates_wrt_input(name):
    model = build(lambda: models.create(name, rngs=fast_rngs(0)))
    model.eval()
    graphdef, state = nnx.split(model)
    x = uniform(0, (2, 32, 32, 3))

    @jax.jit
    def logits_and_grad(x):
        logits = nnx.merge(graphdef, state)(x)
        grad = jax.grad(lambda x: nnx.merge(graphdef, state)(x)[:, 0].sum())(x)
        return logits, grad

    logits, grad = logits_and_grad(x)
    assert logits.shape == (2, 10)
    assert bool(jnp.all(jnp.isfinite(logits))) and bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(jnp.abs(grad).sum(axis=(1, 2, 3)) > 0))


@pytest.mark.parametrize("x_shape,w_shape,stride,pad", [
    ((3, 2, 2, 8), (3, 3, 8, 5), 1, 1),   # 2x2 map: the patches path
    ((3, 4, 4, 8), (3, 3, 8, 5), 2, 1),   # stride 2 down to 2x2
    ((3, 1, 1, 8), (3, 3, 8, 5), 1, 1),   # 1x1 map, only the centre tap sees data
    ((3, 5, 5, 4), (2, 2, 4, 6), 2, 0),   # even kernel, no padding, odd input
    ((3, 9, 9, 4), (3, 3, 4, 6), 1, 1),   # 81 output pixels: native, matmul kernel gradient
    ((2, 9, 9, 4), (3, 3, 4, 6), 2, 1),   # strided, native, matmul kernel gradient
    ((2, 10, 10, 4), (1, 1, 4, 6), 2, 0),  # 1x1 strided shortcut
    ((2, 8, 7, 3), (3, 3, 3, 4), 1, (0, 2)),  # asymmetric padding, non-square map
])
def test_convolution_rewrites_equal_lax(x_shape, w_shape, stride, pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    pad = pad if isinstance(pad, tuple) else (pad, pad)
    args = ((stride, stride), (pad, pad))
    dims = ("NHWC", "HWIO", "NHWC")
    ours = lambda x, w: _common.conv_general_dilated(x, w, *args, dimension_numbers=dims)
    native = lambda x, w: jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dims)
    np.testing.assert_allclose(ours(x, w), native(x, w), rtol=1e-5, atol=1e-5)
    grads = lambda f: jax.jit(jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=(0, 1)))(x, w)
    (dx, dw), (dx_ref, dw_ref) = grads(ours), grads(native)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)
    assert dw.dtype == w.dtype


def test_kernel_gradient_rewrite_keeps_forward_and_input_gradient_bitwise():
    """Beyond the small-map path only the kernel gradient changes: fingerprints do not move."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 12, 12, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 7)), jnp.float32)
    args = ((1, 1), ((1, 1), (1, 1)))
    dims = ("NHWC", "HWIO", "NHWC")
    ours = lambda x: _common.conv_general_dilated(x, w, *args, dimension_numbers=dims)
    native = lambda x: jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dims)
    value_and_dx = lambda f: jax.jit(jax.value_and_grad(lambda x: jnp.tanh(f(x)).sum()))(x)
    (v, dx), (v_ref, dx_ref) = value_and_dx(ours), value_and_dx(native)
    assert np.array_equal(np.asarray(v), np.asarray(v_ref))
    assert np.array_equal(np.asarray(dx), np.asarray(dx_ref))


def test_convolution_rewrite_keeps_forward_mode_autodiff():
    """jax.jvp (and so jacfwd, Hessian-vector products) still works through the zoo's convs."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    x_dot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    w_dot = jnp.asarray(rng.normal(size=w.shape), jnp.float32)
    args = ((2, 2), ((1, 1), (1, 1)))
    dims = ("NHWC", "HWIO", "NHWC")
    ours = lambda x, w: _common.conv_general_dilated(x, w, *args, dimension_numbers=dims)
    native = lambda x, w: jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dims)
    for tangents in ((x_dot, w_dot), (x_dot, jnp.zeros_like(w)), (jnp.zeros_like(x), w_dot)):
        y, y_dot = jax.jvp(ours, (x, w), tangents)
        y_ref, y_dot_ref = jax.jvp(native, (x, w), tangents)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y_dot, y_dot_ref, rtol=1e-4, atol=1e-4)
    # A Hessian-vector product (forward over reverse) of a small network's loss.
    loss = lambda f: (lambda w: jnp.sum(jnp.tanh(f(x, w)) ** 2))
    hvp = lambda f: jax.jvp(jax.grad(loss(f)), (w,), (w_dot,))[1]
    np.testing.assert_allclose(hvp(ours), hvp(native), rtol=1e-3, atol=1e-3)


def test_kernel_gradient_rewrite_in_bfloat16_accumulates_in_float32():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(size=(8, 16, 16, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(3, 3, 8, 8)), jnp.bfloat16)
    args = ((1, 1), ((1, 1), (1, 1)))
    dims = ("NHWC", "HWIO", "NHWC")
    loss = lambda w, f: f(x, w).astype(jnp.float32).sum()
    dw = jax.grad(loss)(w, lambda x, w: _common.conv_general_dilated(
        x, w, *args, dimension_numbers=dims))
    exact = jax.grad(loss)(w.astype(jnp.float32), lambda x, w: jax.lax.conv_general_dilated(
        x.astype(jnp.float32), w, *args, dimension_numbers=dims))
    assert dw.dtype == jnp.bfloat16
    # One bfloat16 rounding of a float32-accumulated sum over 2048 terms.
    np.testing.assert_allclose(np.asarray(dw, np.float32), exact, rtol=1e-2)


# --- model files from someone else: every field checked before anything is built -------------

MLP_FILE_KWARGS = {"in_features": 64, "in_channels": 1, "hidden": [32, 16]}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    net = models.create("mlp", 10, rngs=nnx.Rngs(0), **MLP_FILE_KWARGS)
    return models.save_model(tmp_path_factory.mktemp("bundle") / "model", net, arch="mlp",
                             num_classes=10, input_shape=(8, 8, 1),
                             model_kwargs=MLP_FILE_KWARGS)


def _edited_copy(model_file, tmp_path, **fields):
    import json
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(model_file, copy)
    spec = json.loads((copy / "model.json").read_text())
    spec.update(fields)
    (copy / "model.json").write_text(json.dumps(spec))
    return copy


@pytest.mark.parametrize("fields, match", [
    (dict(num_classes=True), r"invalid 'num_classes': must be an int >= 2, got True"),
    (dict(num_classes=1), r"invalid 'num_classes': must be an int >= 2, got 1"),
    (dict(num_classes=-5), r"invalid 'num_classes': must be an int >= 2, got -5"),
    (dict(num_classes=3), r"num_classes=3 but the weights have 10 logits"),
    (dict(input_shape=[8, -8, 1]), r"invalid 'input_shape': .*positive ints"),
    (dict(input_shape=[8, 8.0, 1]), r"invalid 'input_shape': .*tuple of ints"),
    (dict(input_shape=[100000, 100000, 3]), r"invalid 'input_shape': .*more than"),
    (dict(bounds=[1.0, 0.0]), r"invalid 'bounds': .*lo < hi"),
    (dict(bounds=[0.0, float("inf")]), r"invalid 'bounds': .*finite"),
    (dict(bounds=[0.0]), r"invalid 'bounds': .*pair of numbers"),
    (dict(arch="mlp2"), r"invalid 'arch': 'mlp2' is not one of"),
    (dict(model_kwargs={**MLP_FILE_KWARGS, "hidden": [32, 0]}),
     r"invalid 'model_kwargs.hidden': sizes must be positive ints"),
    (dict(model_kwargs={**MLP_FILE_KWARGS, "hidden": [32, True]}),
     r"invalid 'model_kwargs.hidden'"),
    (dict(model_kwargs={**MLP_FILE_KWARGS, "in_channels": -1}),
     r"invalid 'model_kwargs.in_channels'"),
    (dict(model_kwargs={**MLP_FILE_KWARGS, "hidden": [32]}),
     r"the weights hold 6 arrays, the 'mlp' model model.json describes .* has 4"),
    (dict(metadata=[1]), r"invalid 'metadata': must be an object"),
])
def test_model_file_fields_are_checked_before_building(model_file, tmp_path, monkeypatch,
                                                        fields, match):
    from ipguard_jax.models import bundle

    monkeypatch.setattr(bundle, "_build", _refuse_real_builds(monkeypatch, bundle))
    copy = _edited_copy(model_file, tmp_path, **fields)
    with pytest.raises(models.ModelFileError, match=match) as info:
        models.load_model(copy)
    assert str(copy) in str(info.value) and "model.json" in str(info.value)


def _refuse_real_builds(monkeypatch, bundle):
    """A ``bundle._build`` that fails unless called by ``_abstract_state`` (shapes only)."""
    real_build, real_abstract = bundle._build, bundle._abstract_state
    abstract_calls = []

    def abstract_state(*args):
        abstract_calls.append(args)
        try:
            return real_abstract(*args)
        finally:
            abstract_calls.pop()

    def build(*args):
        assert abstract_calls, f"built the model for real: {args}"
        return real_build(*args)

    monkeypatch.setattr(bundle, "_abstract_state", abstract_state)
    return build


def test_model_file_asking_for_huge_layers_is_refused_without_building(model_file, tmp_path,
                                                                       monkeypatch):
    import time

    from ipguard_jax.models import bundle

    monkeypatch.setattr(bundle, "_build", _refuse_real_builds(monkeypatch, bundle))
    copy = _edited_copy(model_file, tmp_path,
                        model_kwargs={**MLP_FILE_KWARGS, "hidden": [2097152, 16]})
    start = time.perf_counter()
    with pytest.raises(models.ModelFileError,
                       match=r"weights do not fit the 'mlp' model model.json describes .*"
                             r"\[32\] in the weights, float32\[2097152\] in the model"):
        models.load_model(copy)
    assert time.perf_counter() - start < 5


def test_model_file_round_trip_still_loads(model_file):
    net, spec = models.load_model(model_file)
    assert (spec.num_classes, spec.input_shape, spec.bounds) == (10, (8, 8, 1), (0.0, 1.0))
    assert spec.classifier(net).num_classes == 10


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
@pytest.mark.parametrize("part", ["model.json", "weight file"])
def test_model_file_special_files_are_refused_without_hanging(model_file, tmp_path, kind, part):
    import os
    import shutil
    import threading

    if not hasattr(os, "mkfifo"):
        pytest.skip("needs FIFOs (POSIX)")
    copy = tmp_path / "model"
    shutil.copytree(model_file, copy)
    victim = (copy / "model.json" if part == "model.json" else
              max((p for p in (copy / "weights").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size))
    victim.unlink()
    os.mkfifo(victim) if kind == "fifo" else os.symlink("/dev/zero", victim)
    outcome = []

    def run():
        try:
            models.load_model(copy)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "load_model hangs"
    assert outcome and isinstance(outcome[0], models.ModelFileError), outcome
    assert "FIFO" in str(outcome[0]) or "symbolic link" in str(outcome[0])
