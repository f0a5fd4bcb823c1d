"""Flax NNX image classifiers and a registry to build them by name.

Every model maps ``(B, H, W, C)`` float32 images in [0, 1] to ``(B,
num_classes)`` logits, normalising inside (per-channel ``mean``/``std``
constructor arguments), and honours ``model.train()`` / ``model.eval()``
for BatchNorm and Dropout.

:func:`save_model` and :func:`load_model` store a trained model with the spec needed to
rebuild it (see :mod:`ipguard_jax.models.bundle`).

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from ipguard_jax import models
  >>> model = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
  >>> model.eval()
  >>> model(jnp.zeros((4, 8, 8, 1))).shape
  (4, 10)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flax import nnx

from ipguard_jax.models.bundle import ModelFileError as ModelFileError
from ipguard_jax.models.bundle import ModelSpec as ModelSpec
from ipguard_jax.models.bundle import load_model as load_model
from ipguard_jax.models.bundle import save_model as save_model
from ipguard_jax.models.cifar_resnet import CifarResNet as CifarResNet
from ipguard_jax.models.cnn import CNN as CNN
from ipguard_jax.models.mlp import MLP as MLP
from ipguard_jax.models.mobilenet_v2 import MobileNetV2 as MobileNetV2
from ipguard_jax.models.resnet import ResNet as ResNet
from ipguard_jax.models.vgg import VGG as VGG
from ipguard_jax.models.wide_resnet import WideResNet as WideResNet

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


__all__ = [
    "CNN",
    "MLP",
    "CifarResNet",
    "ModelFileError",
    "ModelSpec",
    "MobileNetV2",
    "ResNet",
    "VGG",
    "WideResNet",
    "available",
    "create",
    "load_model",
    "save_model",
]
