"""PyTorch -> NNX conversion: numeric equivalence per architecture, key checks, suspects, e2e."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import ipguard_jax as ipg  # noqa: E402
from ipguard_jax.convert import TorchSuspect, from_torch, nnx_from_torch  # noqa: E402
from ipguard_jax.convert.torch_reference import CifarResNet, TorchCNN  # noqa: E402
from ipguard_jax.models._common import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

nn = torch.nn
F = torch.nn.functional

pytestmark = [pytest.mark.torch]


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny torch ops run far faster on one thread than on two contended ones (shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm affine parameters and running statistics; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def small_vgg_head(model: nn.Module, num_classes: int = 10) -> nn.Module:
    """torchvision's VGG with the CIFAR-sized head (1x1 pool, 512 hidden) the zoo defaults to."""
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(
        nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
        nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, num_classes))
    return model


def max_logit_diff(model: nn.Module, size: int, channels: int = 3, n: int = 4, **kwargs):
    """Converts ``model`` and returns (max |torch - jax| logits, max |torch logits|)."""
    clf = from_torch(model, input_shape=(size, size, channels), **kwargs)
    x = np.random.default_rng(0).random((n, size, size, channels), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    out = np.asarray(clf(x))
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())


def assert_equivalent(model: nn.Module, size: int, channels: int = 3, **kwargs) -> None:
    diff, scale = max_logit_diff(model, size, channels, **kwargs)
    assert diff <= 1e-4, (diff, scale)
    # float32 rounding grows with the logits' magnitude, not beyond it.
    assert diff <= 1e-5 * max(scale, 1.0), (diff, scale)


# --- numeric equivalence ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [20, pytest.param(32, marks=pytest.mark.slow),
                                   pytest.param(56, marks=pytest.mark.slow)])
def test_cifar_resnet(depth):
    torch.manual_seed(depth)
    assert_equivalent(randomize_bn(CifarResNet(depth)), 32)


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet34", marks=pytest.mark.slow)])
def test_torchvision_resnet(name):
    torch.manual_seed(0)
    assert_equivalent(randomize_bn(getattr(torchvision.models, name)(num_classes=10)), 64)


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 224])
def test_torchvision_resnet50(size):
    torch.manual_seed(0)
    assert_equivalent(randomize_bn(torchvision.models.resnet50(num_classes=10)), size, n=2)


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in ("vgg13", "vgg16", "vgg13_bn", "vgg16_bn")])
def test_torchvision_vgg_small_head(name):
    torch.manual_seed(0)
    model = small_vgg_head(getattr(torchvision.models, name)(num_classes=10))
    assert_equivalent(randomize_bn(model), 64)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11", "vgg16_bn"])
def test_torchvision_vgg_full_head(name):
    # torchvision's own 7x7 pool + 25088-4096-4096 head (~120 M parameters).
    torch.manual_seed(0)
    assert_equivalent(randomize_bn(getattr(torchvision.models, name)(num_classes=10)), 64, n=2)


def test_torchvision_mobilenet_v2():
    torch.manual_seed(0)
    assert_equivalent(randomize_bn(torchvision.models.mobilenet_v2(num_classes=10)), 64)


@pytest.mark.slow
def test_torchvision_mobilenet_v2_half_width():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    assert_equivalent(randomize_bn(model), 96)


def test_cnn_layout_on_8x8():
    torch.manual_seed(0)
    assert_equivalent(randomize_bn(TorchCNN(in_channels=1)), 8, channels=1)


def test_normalisation_moves_inside():
    # The torch model sees normalised input; the converted one takes raw [0, 1] images.
    torch.manual_seed(0)
    model = randomize_bn(TorchCNN(in_channels=3))
    clf = from_torch(model, input_shape=(16, 16, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = np.random.default_rng(1).random((3, 16, 16, 3), dtype=np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    xt = (xt - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    with torch.no_grad():
        ref = model(xt).numpy()
    np.testing.assert_allclose(np.asarray(clf(x)), ref, atol=1e-4, rtol=0)
    assert clf.bounds == (0.0, 1.0)


def test_batchnorm_eps_and_momentum_are_carried():
    torch.manual_seed(0)
    model = TorchCNN(in_channels=3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-1, 0.3
    randomize_bn(model)
    assert_equivalent(model, 16)
    nnx_model = nnx_from_torch(model)
    assert nnx_model.stages[0][0].bn.epsilon == pytest.approx(0.1)
    assert nnx_model.stages[0][0].bn.momentum == pytest.approx(0.7)


def test_state_dict_with_explicit_arch():
    torch.manual_seed(0)
    model = randomize_bn(CifarResNet(8, widths=(4, 8, 8)))
    clf = from_torch(model.state_dict(), input_shape=(16, 16, 3), arch="cifar_resnet")
    x = np.random.default_rng(2).random((2, 16, 16, 3), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(np.asarray(clf(x)), ref, atol=1e-4, rtol=0)


# --- errors -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet20_state():
    torch.manual_seed(0)
    return CifarResNet(20).state_dict()


def test_unexpected_key_is_named(resnet20_state):
    sd = dict(resnet20_state)
    sd["layer1.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected keys \['layer1\.0\.extra\.weight'\]"):
        from_torch(sd, input_shape=(32, 32, 3))


def test_missing_key_is_named(resnet20_state):
    sd = dict(resnet20_state)
    del sd["layer2.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing keys \['layer2\.1\.bn2\.running_var'\]"):
        from_torch(sd, input_shape=(32, 32, 3))


def test_shape_mismatch_is_named(resnet20_state):
    sd = dict(resnet20_state)
    sd["layer1.1.conv2.weight"] = torch.zeros(16, 16, 5, 5)
    with pytest.raises(ValueError, match=r"'layer1\.1\.conv2\.weight' has shape \(16, 16, 5, 5\)"
                                         r".*expects \(16, 16, 3, 3\)"):
        from_torch(sd, input_shape=(32, 32, 3))


def test_unsupported_model_class_is_named():
    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 2)

    with pytest.raises(TypeError, match="Mystery"):
        from_torch(Mystery(), input_shape=(2, 2, 1))
    with pytest.raises(TypeError, match="torch.nn.Module or a state_dict"):
        from_torch(object(), input_shape=(2, 2, 1))


def test_unsupported_layer_is_named():
    model = torchvision.models.resnet18(num_classes=10)
    model.layer1[0].relu = nn.GELU()
    with pytest.raises(TypeError, match="GELU.*layer1.0.relu"):
        from_torch(model, input_shape=(32, 32, 3))


def test_reference_layouts_check_their_arguments():
    with pytest.raises(ValueError, match="depth must be 6n"):
        CifarResNet(21)
    with pytest.raises(ValueError, match="option must be 'A' or 'B'"):
        CifarResNet(20, option="C")


def test_option_a_cifar_resnet_is_rejected():
    with pytest.raises(ValueError, match="option-A"):
        from_torch(CifarResNet(20, option="A"), input_shape=(32, 32, 3))


def test_conv_settings_are_checked():
    model = CifarResNet(20)
    model.layer1[0].conv1.padding = (2, 2)
    with pytest.raises(ValueError, match="layer1.0.conv1"):
        from_torch(model, input_shape=(32, 32, 3))


def test_arch_and_input_shape_are_checked(resnet20_state):
    with pytest.raises(ValueError, match="resnet32.*resnet20"):
        from_torch(resnet20_state, input_shape=(32, 32, 3), arch="resnet32")
    with pytest.raises(ValueError, match="layout of a cifar_resnet"):
        from_torch(resnet20_state, input_shape=(32, 32, 3), arch="vgg11")
    with pytest.raises(ValueError, match="unknown arch"):
        from_torch(resnet20_state, input_shape=(32, 32, 3), arch="alexnet")
    with pytest.raises(ValueError, match="channels"):
        from_torch(resnet20_state, input_shape=(3, 32, 32))


# --- TorchSuspect -------------------------------------------------------------------------------


def test_torch_suspect_labels_match_converted_classifier():
    torch.manual_seed(0)
    model = randomize_bn(TorchCNN(in_channels=1))
    model.train()  # TorchSuspect runs in eval mode and restores the mode afterwards
    suspect = TorchSuspect(model, batch_size=7)
    x = np.random.default_rng(3).random((20, 8, 8, 1), dtype=np.float32)
    labels = suspect(x)
    assert labels.dtype == np.int64 and labels.shape == (20,)
    assert model.training
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2)).argmax(-1).numpy()
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(labels, from_torch(model, input_shape=(8, 8, 1)).predict(x))


def test_torch_suspect_normalises_and_checks_input():
    torch.manual_seed(0)
    model = randomize_bn(TorchCNN(in_channels=3))
    x = np.random.default_rng(4).random((6, 16, 16, 3), dtype=np.float32)
    suspect = TorchSuspect(model, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    clf = from_torch(model, input_shape=(16, 16, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    np.testing.assert_array_equal(suspect(x), clf.predict(x))
    with pytest.raises(ValueError, match="NHWC"):
        suspect(x[0])
    with pytest.raises(TypeError, match="floating"):
        suspect((x * 255).astype(np.uint8))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        TorchSuspect(lambda x: x)


# --- end to end ---------------------------------------------------------------------------------


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int):
    """Adam on minibatches of 64; a few seconds for the small CNN on 700 digits."""
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


# slow: trains three PyTorch models; from_torch and TorchSuspect stay in the default suite in
# the torchvision conversion tests and the TorchSuspect tests above
@pytest.mark.slow
def test_end_to_end_fingerprint_torch_models(digits):
    start = time.perf_counter()
    (x_own, y_own), (x_other, y_other) = digits["owner"], digits["other"]
    x_test, y_test = digits["test"]
    torch.manual_seed(0)
    owner = _train(TorchCNN(1, widths=(8, 16, 32)), x_own, y_own, epochs=10, lr=5e-3, seed=0)
    pirate = _train(copy.deepcopy(owner), x_other, y_other, epochs=2, lr=1e-3, seed=1)
    torch.manual_seed(1)
    independent = _train(TorchCNN(1, widths=(8, 16, 32)), x_other, y_other, epochs=10, lr=5e-3,
                         seed=2)

    clf = from_torch(owner, input_shape=(8, 8, 1))
    assert (clf.predict(x_test) == y_test).mean() > 0.85
    config = ipg.FingerprintConfig(num=60, steps=300)
    fingerprints = ipg.generate(clf, config, key=0, data=x_test, progress=False)
    rates = {name: ipg.matching_rate(fingerprints, TorchSuspect(m))
             for name, m in [("owner", owner), ("pirate", pirate), ("independent", independent)]}
    print(rates, f"{time.perf_counter() - start:.1f} s")
    assert fingerprints.convergence_rate > 0.9
    assert rates["owner"] >= 0.98  # the torch original agrees with its conversion
    assert rates["pirate"] >= 0.6
    assert rates["pirate"] - rates["independent"] >= 0.3
