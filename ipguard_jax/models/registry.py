"""The model zoo's registry: every architecture by name, and :func:`create` to build one.

Its names are re-exported by :mod:`ipguard_jax.models` (``models.create``,
``models.available``); :mod:`ipguard_jax.models.bundle` rebuilds saved models through it.

Example:
  >>> "resnet20" in available(), create.__module__
  (True, 'ipguard_jax.models.registry')
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flax import nnx

from ipguard_jax.models.cifar_resnet import CifarResNet
from ipguard_jax.models.cnn import CNN
from ipguard_jax.models.mlp import MLP
from ipguard_jax.models.mobilenet_v2 import MobileNetV2
from ipguard_jax.models.resnet import ResNet
from ipguard_jax.models.vgg import VGG
from ipguard_jax.models.wide_resnet import WideResNet

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet20": functools.partial(CifarResNet, 20),
    "resnet32": functools.partial(CifarResNet, 32),
    "resnet56": functools.partial(CifarResNet, 56),
    "resnet18": functools.partial(ResNet, 18),
    "resnet34": functools.partial(ResNet, 34),
    "resnet50": functools.partial(ResNet, 50),
    "vgg11": functools.partial(VGG, 11),
    "vgg13": functools.partial(VGG, 13),
    "vgg16": functools.partial(VGG, 16),
    "wrn16_1": functools.partial(WideResNet, 16, 1),
    "wrn16_4": functools.partial(WideResNet, 16, 4),
    "wrn28_10": functools.partial(WideResNet, 28, 10),
    "mobilenet_v2": MobileNetV2,
}


def available() -> list[str]:
    """Names accepted by :func:`create`, in registry order.

    Returns:
      A new list of the registry names.

    Example:
      >>> from ipguard_jax import models
      >>> models.available()[:4]
      ['mlp', 'cnn', 'resnet20', 'resnet32']
    """
    return list(_REGISTRY)


def create(name: str, num_classes: int = 10, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """Builds a classifier by name.

    Args:
      name: one of :func:`available` (``"resnet20"``, ``"vgg16"``, ...).
      num_classes: number of output logits.
      rngs: random streams for parameter init (and dropout, if any).
      **kwargs: passed to the model class (``in_channels``, ``mean``,
        ``std``, ``dropout``, ``in_features`` for ``"mlp"``, ...).

    Returns:
      The model, in train mode (NNX's default); call ``model.eval()`` for
      inference.

    Raises:
      ValueError: if ``name`` is unknown; the message lists the valid names.

    Example:
      >>> from flax import nnx
      >>> from ipguard_jax import models
      >>> net = models.create("mlp", 10, in_features=64, in_channels=1, rngs=nnx.Rngs(0))
      >>> type(net).__name__, net.head.out_features
      ('MLP', 10)
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(_REGISTRY)}"
        ) from None
    return factory(num_classes=num_classes, rngs=rngs, **kwargs)
