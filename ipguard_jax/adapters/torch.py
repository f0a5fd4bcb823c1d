"""PyTorch -> Flax NNX weight conversion into the model zoo, and a label-only PyTorch suspect.

:func:`from_torch` maps a PyTorch classifier's ``state_dict`` onto the zoo model
(:mod:`ipguard_jax.models`) of the same architecture and returns a :class:`~ipguard_jax.Classifier`
that computes the same logits (float32, within ~1e-5 of torch's). Supported layouts:

* torchvision ``ResNet`` (ResNet-18/34/50/101/152, v1.5),
* torchvision ``VGG`` 11/13/16, with BatchNorm (``vgg11_bn``...) and without (``vgg11``...),
  with torchvision's 7x7/4096 head or a smaller head of the same shape (``avgpool`` to ``p x p``,
  ``classifier`` = Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear),
* torchvision ``MobileNetV2`` (width multipliers 0.25...1.4),
* CIFAR ResNets (``conv1``, ``bn1``, ``layer1..3`` of blocks ``conv1/bn1/conv2/bn2`` with a
  projection shortcut ``shortcut.0`` (1x1 conv) / ``shortcut.1`` (BN), ``linear``), depth 6n+2,
* the zoo's small ``cnn`` layout (``stages.i.j.conv`` / ``stages.i.j.bn``, ``head``).

The architecture is detected from the ``state_dict`` keys and shapes (or named with ``arch=``);
every key must be consumed, so a model that only resembles a supported one fails loudly.

Layout conversions: Conv ``OIHW -> HWIO``, Linear ``(out, in) -> (in, out)``, BatchNorm
``weight/bias/running_mean/running_var -> scale/bias/mean/var`` with torch's ``eps`` and
momentum. Padding needs no change: the zoo pads symmetrically like torch, and flattens VGG
features in torch's ``(C, H, W)`` order.

Input normalisation: torch models usually expect normalised input, normalised outside the
model. The zoo models normalise inside, so pass the torch pipeline's ``mean``/``std`` and the
resulting classifier takes raw images in ``bounds`` (``[0, 1]``); without them it takes exactly
what the torch module takes.

torch is imported lazily: importing this module does not need it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ipguard_jax import models
from ipguard_jax.classifier import Classifier
from ipguard_jax.models import mobilenet_v2 as _mobilenet_v2
from ipguard_jax.models import vgg as _vgg

SUPPORTED_ARCHS: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11", "vgg13", "vgg16", "vgg11_bn", "vgg13_bn", "vgg16_bn",
    "mobilenet_v2",
    "cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "cnn",
)
"""Names accepted by ``arch=``. VGG names follow torchvision: ``vgg11`` has no BatchNorm,
``vgg11_bn`` has it. ``cifar_resnet`` is any CIFAR ResNet depth (6n+2)."""

_RESNET_DEPTHS = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}
_MOBILENET_WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4)

# Torch leaf modules allowed inside a converted model: the parametrised ones are mapped, the
# others are the parameter-free layers the zoo models apply in the same places.
_ALLOWED_LEAVES = frozenset({
    "Conv2d", "BatchNorm2d", "Linear", "ReLU", "ReLU6", "Dropout", "MaxPool2d",
    "AdaptiveAvgPool2d", "Identity", "Flatten",
    "Sequential", "ModuleList",  # empty: an identity shortcut
})

# torch leaf name -> zoo leaf name, per zoo module kind; None: consumed without a counterpart.
_LEAVES: dict[type, dict[str, str | None]] = {
    nnx.Conv: {"weight": "kernel", "bias": "bias"},
    nnx.Linear: {"weight": "kernel", "bias": "bias"},
    nnx.BatchNorm: {
        "weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var",
        "num_batches_tracked": None,
    },
}


@dataclasses.dataclass
class _Plan:
    """What to build and how torch module prefixes map onto its state paths."""

    arch: str
    build: Callable[[Sequence[float], Sequence[float]], nnx.Module]
    in_channels: int
    # torch prefix (``"features.3"``) -> zoo path; identity (dots -> path) when absent.
    prefix_map: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    # zoo paths of BatchNorm layers to drop (no-BN VGG).
    drop: tuple[tuple[Any, ...], ...] = ()


def _path(prefix: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in prefix.split(".")) if prefix else ()


def _indices(keys: Sequence[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _shape(sd: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"missing key {key!r} in the state_dict")
    return tuple(sd[key].shape)


def _family(keys: Sequence[str]) -> str | None:
    ks = set(keys)
    if "fc.weight" in ks and "layer4.0.conv1.weight" in ks:
        return "resnet"
    if "linear.weight" in ks and "layer3.0.conv1.weight" in ks:
        return "cifar_resnet"
    if "features.0.0.weight" in ks and "features.1.conv.0.0.weight" in ks:
        return "mobilenet_v2"
    if "features.0.weight" in ks and "classifier.0.weight" in ks:
        return "vgg"
    if "stages.0.0.conv.weight" in ks and "head.weight" in ks:
        return "cnn"
    return None


def _arch_family(arch: str) -> str:
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    if arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        return "resnet"
    if arch.startswith("vgg"):
        return "vgg"
    if arch.startswith("resnet") or arch == "cifar_resnet":
        return "cifar_resnet"
    return arch


def _plan_resnet(sd, module) -> _Plan:
    keys = list(sd)
    bottleneck = "layer1.0.conv3.weight" in sd
    layers = tuple(len(_indices(keys, rf"layer{i}\.(\d+)\.")) for i in range(1, 5))
    depth = _RESNET_DEPTHS.get((bottleneck, layers))
    if depth is None:
        raise ValueError(
            f"unsupported ResNet layout: {'Bottleneck' if bottleneck else 'BasicBlock'} blocks "
            f"{layers} per stage; supported depths: 18, 34, 50, 101, 152"
        )
    num_classes, in_channels = _shape(sd, "fc.weight")[0], _shape(sd, "conv1.weight")[1]

    def build(mean, std):
        return models.ResNet(depth, num_classes, in_channels=in_channels, mean=mean, std=std,
                             rngs=nnx.Rngs(0))

    return _Plan(f"resnet{depth}", build, in_channels)


def _plan_cifar_resnet(sd, module) -> _Plan:
    keys = list(sd)
    n = len(_indices(keys, r"layer1\.(\d+)\."))
    depth = 6 * n + 2
    for i in (2, 3):
        if f"layer{i}.0.conv1.weight" in sd and f"layer{i}.0.shortcut.0.weight" not in sd:
            raise ValueError(
                f"layer{i}.0 has no projection shortcut (layer{i}.0.shortcut.0.weight): this looks "
                "like an option-A (zero-padding identity) CIFAR ResNet, which the zoo's "
                "CifarResNet does not implement; only option-B (1x1 conv + BatchNorm) shortcuts "
                "are supported"
            )
    widths = tuple(_shape(sd, f"layer{i}.0.conv1.weight")[0] for i in (1, 2, 3))
    num_classes, in_channels = _shape(sd, "linear.weight")[0], _shape(sd, "conv1.weight")[1]

    def build(mean, std):
        return models.CifarResNet(depth, num_classes, in_channels=in_channels, widths=widths,
                                  mean=mean, std=std, rngs=nnx.Rngs(0))

    return _Plan(f"resnet{depth}", build, in_channels)


def _plan_mobilenet_v2(sd, module) -> _Plan:
    num_classes = _shape(sd, "classifier.1.weight")[0]
    in_channels = _shape(sd, "features.0.0.weight")[1]
    first = _shape(sd, "features.0.0.weight")[0]
    last_idx = max(_indices(list(sd), r"features\.(\d+)\."))
    last = _shape(sd, f"features.{last_idx}.0.weight")[0]
    for width in _MOBILENET_WIDTHS:
        md = _mobilenet_v2.make_divisible
        if md(32 * width, 8) == first and md(1280 * max(1.0, width), 8) == last:
            break
    else:
        raise ValueError(
            f"unsupported MobileNetV2 widths: stem {first}, last {last} channels match no width "
            f"multiplier in {_MOBILENET_WIDTHS}"
        )

    def build(mean, std):
        return models.MobileNetV2(num_classes, in_channels=in_channels, width_mult=width,
                                  mean=mean, std=std, rngs=nnx.Rngs(0))

    return _Plan("mobilenet_v2", build, in_channels)


def _plan_vgg(sd, module) -> _Plan:
    keys = list(sd)
    convs = [i for i in _indices(keys, r"features\.(\d+)\.weight")
             if len(sd[f"features.{i}.weight"].shape) == 4]
    if not convs:
        raise ValueError("no convolution under features.* in the VGG state_dict")
    batch_norm = f"features.{convs[0] + 1}.running_mean" in sd
    step = 3 if batch_norm else 2  # conv, [bn,] relu
    # Rebuild torchvision's cfg ("M" = max pool) from the gaps between convolutions.
    cfg: list[int | str] = []
    for j, i in enumerate(convs):
        if j and i - convs[j - 1] == step + 1:
            cfg.append("M")
        elif j and i - convs[j - 1] != step:
            raise ValueError(f"unexpected VGG layout: features.{convs[j - 1]} -> features.{i}")
        cfg += [sd[f"features.{i}.weight"].shape[0]]
    cfg.append("M")
    depth = next((d for d, c in _vgg.CONFIGS.items() if tuple(cfg) == c), None)
    if depth is None:
        raise ValueError(f"unsupported VGG configuration {cfg}; supported: VGG-11, VGG-13, VGG-16")
    if module is not None:
        expected = []
        for v in cfg:
            expected += ["MaxPool2d"] if v == "M" else (
                ["Conv2d", "BatchNorm2d", "ReLU"] if batch_norm else ["Conv2d", "ReLU"])
        got = [type(m).__name__ for m in getattr(module, "features", [])]
        if got != expected:
            raise ValueError(f"unexpected VGG features layers {got}; expected {expected}")
        head = [type(m).__name__ for m in getattr(module, "classifier", [])]
        if head != ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]:
            raise ValueError(f"unexpected VGG classifier layers {head}")
    c_last = cfg[-2]
    hidden, fan_in = _shape(sd, "classifier.0.weight")
    pool = math.isqrt(fan_in // c_last)
    if pool * pool * c_last != fan_in:
        raise ValueError(
            f"classifier.0.weight takes {fan_in} features, not {c_last} x p x p for a square pool"
        )
    avgpool = getattr(module, "avgpool", None)
    if avgpool is not None:
        size = avgpool.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size != (pool, pool):
            raise ValueError(
                f"avgpool output size {size} does not match classifier.0 ({pool}x{pool})")
    num_classes = _shape(sd, "classifier.6.weight")[0]
    in_channels = _shape(sd, "features.0.weight")[1]

    # torchvision's features indices -> the zoo's (which always has BN after each conv).
    prefix_map, drop = {}, []
    t = z = 0
    for v in cfg:
        if v == "M":
            t, z = t + 1, z + 1
            continue
        prefix_map[f"features.{t}"] = ("features", z)
        if batch_norm:
            prefix_map[f"features.{t + 1}"] = ("features", z + 1)
        else:
            drop.append(("features", z + 1))
        t, z = t + step, z + 3

    def build(mean, std):
        return models.VGG(depth, num_classes, in_channels=in_channels, pool_size=pool,
                          hidden=hidden, mean=mean, std=std, rngs=nnx.Rngs(0))

    return _Plan(f"vgg{depth}" + ("_bn" if batch_norm else ""), build, in_channels, prefix_map,
                 tuple(drop))


def _plan_cnn(sd, module) -> _Plan:
    keys = list(sd)
    stages = _indices(keys, r"stages\.(\d+)\.")
    per_stage = [len(_indices(keys, rf"stages\.{s}\.(\d+)\.")) for s in stages]
    if len(set(per_stage)) != 1:
        raise ValueError(f"cnn stages must hold the same number of blocks, got {per_stage}")
    widths = tuple(_shape(sd, f"stages.{s}.0.conv.weight")[0] for s in stages)
    num_classes, in_channels = _shape(sd, "head.weight")[0], _shape(sd, "stages.0.0.conv.weight")[1]

    def build(mean, std):
        return models.CNN(num_classes, in_channels=in_channels, widths=widths,
                          convs_per_stage=per_stage[0], mean=mean, std=std, rngs=nnx.Rngs(0))

    return _Plan("cnn", build, in_channels)


_PLANNERS = {
    "resnet": _plan_resnet,
    "cifar_resnet": _plan_cifar_resnet,
    "mobilenet_v2": _plan_mobilenet_v2,
    "vgg": _plan_vgg,
    "cnn": _plan_cnn,
}


def _state_dict(module: Any) -> tuple[dict[str, np.ndarray], Any]:
    """The module's state_dict as host numpy arrays, and the module (None for a mapping)."""
    import torch

    if isinstance(module, torch.nn.Module):
        source, mod = module.state_dict(), module
    elif isinstance(module, Mapping):
        source, mod = module, None
    else:
        raise TypeError(
            "from_torch needs a torch.nn.Module or a state_dict mapping, got "
            f"{type(module).__name__}"
        )
    sd = {}
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        sd[key] = (value.float() if value.is_floating_point() else value).numpy()
    return sd, mod


def _check_torch_leaves(module: Any) -> None:
    for name, sub in module.named_modules():
        if not any(True for _ in sub.children()) and type(sub).__name__ not in _ALLOWED_LEAVES:
            raise TypeError(
                f"unsupported module {type(sub).__name__} at {name or '<root>'!r} in "
                f"{type(module).__name__}; convertible layers: {', '.join(sorted(_ALLOWED_LEAVES))}"
            )


def _check_conv(key: str, tmod: Any, zmod: nnx.Conv) -> None:
    got = {
        "stride": tuple(tmod.stride), "padding": tmod.padding, "groups": tmod.groups,
        "dilation": tuple(tmod.dilation), "padding_mode": tmod.padding_mode,
    }
    pad = tuple(p[0] for p in zmod.padding) if not isinstance(zmod.padding, str) else zmod.padding
    want = {
        "stride": tuple(zmod.strides), "padding": pad, "groups": zmod.feature_group_count,
        "dilation": (1, 1), "padding_mode": "zeros",
    }
    if isinstance(got["padding"], str) or tuple(got["padding"]) != want["padding"] or any(
        got[k] != want[k] for k in ("stride", "groups", "dilation", "padding_mode")
    ):
        raise ValueError(f"convolution {key!r} has {got}; the zoo model has {want}")


def _to_zoo(kind: type, leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "weight" and kind is nnx.Conv:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if leaf == "weight" and kind is nnx.Linear:
        return np.ascontiguousarray(value.T)
    return value


def _torch_shape(kind: type, zleaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if zleaf == "kernel" and kind is nnx.Conv:
        return (shape[3], shape[2], shape[0], shape[1])
    if zleaf == "kernel" and kind is nnx.Linear:
        return shape[::-1]
    return shape


def _kind(zmod: Any) -> type | None:
    return next((k for k in _LEAVES if isinstance(zmod, k)), None)


def nnx_from_torch(
    module: Any,
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    arch: str | None = None,
) -> nnx.Module:
    """Builds the zoo's Flax NNX model holding a PyTorch model's weights.

    Args:
        module: a ``torch.nn.Module`` of a supported architecture (see the module docstring), or
            its ``state_dict`` (then BatchNorm eps/momentum take torch's defaults and layer types
            are not checked).
        mean: per-channel mean the torch model's inputs were normalised with (e.g.
            ``ipguard_jax.models.IMAGENET_MEAN`` for torchvision's pretrained weights);
            ``None``: no normalisation (the NNX model takes what the torch model takes).
        std: per-channel std, like ``mean``.
        arch: one of :data:`SUPPORTED_ARCHS` to name the architecture instead of detecting it; it
            must agree with the weights.

    Returns:
        The NNX model in train mode (NNX's default), e.g. for fine-tuning; call ``.eval()`` for
        inference. Dropout layers get a fixed RNG key (0).

    Raises:
        TypeError: ``module`` is neither a torch module nor a state_dict, its architecture is not
            supported, or it contains an unsupported layer (the message names its class).
        ValueError: unexpected, missing or wrongly shaped state_dict entries (named in the
            message), convolution settings that differ from the zoo's, an unknown ``arch`` or one
            the weights contradict.

    Example:
        >>> import torchvision
        >>> model = nnx_from_torch(torchvision.models.resnet18(num_classes=10))
        >>> type(model).__name__
        'ResNet'
    """
    sd, mod = _state_dict(module)
    family = _family(list(sd))
    if arch is not None:
        wanted = _arch_family(arch)
        if family is not None and family != wanted:
            raise ValueError(f"arch={arch!r} but the state_dict has the layout of a {family}")
        family = wanted
    if family is None:
        what = type(mod).__name__ if mod is not None else "state_dict"
        raise TypeError(
            f"unsupported model {what}: its state_dict matches none of the supported layouts "
            f"({', '.join(SUPPORTED_ARCHS)})"
        )
    plan = _PLANNERS[family](sd, mod)
    if mod is not None:  # after planning, whose layout errors explain more
        _check_torch_leaves(mod)
    if arch is not None and arch not in ("cifar_resnet", plan.arch):
        raise ValueError(f"arch={arch!r} but the weights are those of a {plan.arch}")
    mean_t, std_t = models.normalization_stats(
        0.0 if mean is None else mean, 1.0 if std is None else std, plan.in_channels
    )

    # Abstract init: no random weights are drawn, every array comes from the state_dict.
    model = nnx.eval_shape(lambda: plan.build(mean_t, std_t))
    for name in {path[0] for path in plan.drop}:
        # A fresh list: nnx.List keeps its node/static split when an item changes type.
        dropped = {path[1] for path in plan.drop if path[0] == name}
        layers = getattr(model, name)
        setattr(model, name, type(layers)(
            [_identity if i in dropped else layer for i, layer in enumerate(layers)]))
    modules = dict(nnx.iter_modules(model))
    variables = {p: v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}
    inverse = {v: k for k, v in plan.prefix_map.items()}

    unexpected, mismatched, filled, checked = [], [], set(), set()
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        zprefix = plan.prefix_map.get(prefix, _path(prefix))
        zmod = modules.get(zprefix)
        kind = _kind(zmod)
        if kind is None or leaf not in _LEAVES[kind]:
            unexpected.append(key)
            continue
        if mod is not None and prefix not in checked:
            checked.add(prefix)
            tmod = mod.get_submodule(prefix)
            if kind is nnx.Conv:
                _check_conv(prefix, tmod, zmod)
            elif kind is nnx.BatchNorm:
                if type(tmod).__name__ != "BatchNorm2d":
                    raise TypeError(f"{prefix!r} is a {type(tmod).__name__}, expected BatchNorm2d")
                zmod.epsilon = float(tmod.eps)
                if tmod.momentum is not None:  # torch's momentum weighs the batch, flax's the past
                    zmod.momentum = 1.0 - float(tmod.momentum)
            elif type(tmod).__name__ != "Linear":
                raise TypeError(f"{prefix!r} is a {type(tmod).__name__}, expected Linear")
        zleaf = _LEAVES[kind][leaf]
        if zleaf is None:
            continue
        var = variables[zprefix + (zleaf,)]
        array = _to_zoo(kind, leaf, value)
        if tuple(array.shape) != tuple(var.shape):
            mismatched.append(
                f"{key!r} has shape {tuple(value.shape)}, the zoo's {plan.arch} expects "
                f"{_torch_shape(kind, zleaf, tuple(var.shape))}"
            )
            continue
        var.set_value(jnp.asarray(array, dtype=var.get_value().dtype))
        filled.add(zprefix + (zleaf,))

    torch_leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean",
                  "var": "running_var", "bias": "bias"}
    missing = []
    for path, var in variables.items():
        if isinstance(var, (nnx.Param, nnx.BatchStat)) and path not in filled:
            prefix = inverse.get(path[:-1], ".".join(map(str, path[:-1])))
            name = f"{prefix}.{torch_leaf.get(path[-1], path[-1])}"
            if name not in sd:  # a mismatched key is reported as such
                missing.append(name)
        elif isinstance(var, nnx.RngKey):
            var.set_value(jax.random.key(0))
        elif isinstance(var, nnx.RngCount):
            var.set_value(jnp.zeros((), jnp.uint32))
    if unexpected or missing or mismatched:
        problems = []
        if unexpected:
            hint = (" (pruning reparametrisation: call torch.nn.utils.prune.remove first)"
                    if any(k.endswith("_orig") or k.endswith("_mask") for k in unexpected) else "")
            problems.append(f"unexpected keys {unexpected}{hint}")
        if missing:
            problems.append(f"missing keys {missing}")
        if mismatched:
            problems.append("shape mismatch: " + "; ".join(mismatched))
        raise ValueError(f"state_dict does not fit the zoo's {plan.arch}: " + "; ".join(problems))
    return model


def _identity(x: jax.Array) -> jax.Array:
    return x


def from_torch(
    module: Any,
    input_shape: Sequence[int],
    bounds: tuple[float, float] = (0.0, 1.0),
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    arch: str | None = None,
) -> Classifier:
    """Converts a PyTorch classifier into an :class:`~ipguard_jax.Classifier` (NHWC input).

    The weights are mapped into the zoo model of the same architecture (see
    :func:`nnx_from_torch` and the module docstring for what is supported), so the result is a
    pure JAX function usable by :func:`ipguard_jax.generate`; its logits match torch's within
    float32 rounding.

    Input normalisation: torchvision models expect normalised input. Pass the normalisation the
    torch model was trained with as ``mean``/``std``: the converted model applies it inside and
    takes raw images in ``bounds``, which is where fingerprints are searched. Leave them ``None``
    when the torch model takes raw ``[0, 1]`` images (or normalises inside, which
    is not supported: such a layer has no counterpart in the zoo).

    Args:
        module: a ``torch.nn.Module`` (or its ``state_dict``).
        input_shape: one example's shape, NHWC: ``(H, W, C)``.
        bounds: ``(lo, hi)`` of valid raw inputs.
        mean: per-channel mean of the torch model's input normalisation, or ``None``.
        std: per-channel std of the torch model's input normalisation, or ``None``.
        arch: name the architecture (one of :data:`SUPPORTED_ARCHS`) instead of detecting it.

    Returns:
        A :class:`~ipguard_jax.Classifier` in evaluation mode.

    Raises:
        TypeError: unsupported model or layer (named in the message), or a non-torch argument.
        ValueError: unexpected, missing or wrongly shaped state_dict entries (named), or an
            ``input_shape`` whose channels differ from the model's.

    Example:
        >>> import torchvision
        >>> from ipguard_jax.models import IMAGENET_MEAN, IMAGENET_STD
        >>> net = torchvision.models.resnet18(num_classes=10).eval()
        >>> clf = from_torch(net, input_shape=(64, 64, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD)
        >>> clf.num_classes
        10
    """
    shape = tuple(int(d) for d in input_shape)
    model = nnx_from_torch(module, mean=mean, std=std, arch=arch)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {shape}")
    channels = len(model.mean)
    if shape[-1] != channels:
        raise ValueError(
            f"input_shape {shape} has {shape[-1]} channels, the model takes {channels} "
            "(input_shape is NHWC: (H, W, C))"
        )
    return Classifier.from_nnx(model, input_shape=shape, bounds=bounds)


class TorchSuspect:
    """A local PyTorch model as a label-only suspect for :func:`ipguard_jax.matching_rate`.

    Called with a numpy batch ``(N, H, W, C)`` of images in ``[0, 1]`` (the fingerprints'
    layout), it converts to NCHW tensors, optionally normalises, runs the model in evaluation
    mode under ``torch.no_grad`` in batches, and returns the predicted labels ``(N,)`` as int64.
    Only labels leave the wrapper, as from a remote API. The module's train/eval mode is restored
    after each call.

    Args:
        module: a ``torch.nn.Module`` taking NCHW float tensors and returning logits ``(N, C)``.
        batch_size: images per forward pass.
        device: torch device to run on (``"cpu"``, ``"cuda"``...); the module is moved there.
        mean: per-channel mean to normalise with before the module, or ``None``.
        std: per-channel std to normalise with, or ``None``.

    Raises:
        ImportError: torch is not installed.
        TypeError: ``module`` is not a ``torch.nn.Module``.
        ValueError: ``batch_size < 1``.

    Example:
        >>> import numpy as np, torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> suspect = TorchSuspect(net)
        >>> suspect(np.zeros((3, 8, 8, 1), np.float32)).shape
        (3,)
    """

    def __init__(self, module: Any, batch_size: int = 256, device: str = "cpu", *,
                 mean: float | Sequence[float] | None = None,
                 std: float | Sequence[float] | None = None):
        import torch

        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"TorchSuspect needs a torch.nn.Module, got {type(module).__name__}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.batch_size = int(batch_size)
        self._mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self._std = None if std is None else torch.as_tensor(std, dtype=torch.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Labels ``(N,)`` int64 for a batch ``x`` of shape ``(N, H, W, C)``.

        Args:
            x: NHWC floating images (the fingerprints' layout), converted to NCHW float
                tensors in the module's dtype.

        Returns:
            The argmax labels, int64; empty for an empty batch.

        Raises:
            ValueError: ``x`` is not 4-D.
            TypeError: ``x`` is not floating.
        """
        import torch

        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"TorchSuspect takes NHWC batches (N, H, W, C), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"TorchSuspect takes floating images in [0, 1], got dtype {x.dtype}")
        param = next(self.module.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        was_training = self.module.training
        self.module.eval()
        labels = []
        try:
            with torch.no_grad():
                for start in range(0, len(x), self.batch_size):
                    # A copy: fingerprint arrays may be read-only, which torch warns about.
                    chunk = np.array(x[start:start + self.batch_size], dtype=np.float32)
                    batch = torch.from_numpy(chunk).permute(0, 3, 1, 2)
                    if self._mean is not None:
                        batch = batch - self._mean.view(1, -1, 1, 1)
                    if self._std is not None:
                        batch = batch / self._std.view(1, -1, 1, 1)
                    out = self.module(batch.to(self.device, dtype))
                    labels.append(out.argmax(dim=-1).cpu().numpy())
        finally:
            self.module.train(was_training)
        if not labels:
            return np.zeros((0,), np.int64)
        return np.concatenate(labels).astype(np.int64)

    def __repr__(self) -> str:
        return f"TorchSuspect({type(self.module).__name__}, device={self.device})"


__all__ = ["SUPPORTED_ARCHS", "TorchSuspect", "from_torch", "nnx_from_torch"]
