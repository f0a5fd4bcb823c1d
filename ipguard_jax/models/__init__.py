"""Flax NNX image classifiers and a registry to build them by name.

Every model maps ``(B, H, W, C)`` float32 images in [0, 1] to ``(B,
num_classes)`` logits, normalising inside (per-channel ``mean``/``std``
constructor arguments), and honours ``model.train()`` / ``model.eval()``
for BatchNorm and Dropout.

:func:`normalization_stats` resolves a model's per-channel ``mean``/``std`` arguments
(:data:`IMAGENET_MEAN` and :data:`IMAGENET_STD` are torchvision's pretrained weights' values).
:func:`create` and :func:`available` come from :mod:`ipguard_jax.models.registry`;
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

from ipguard_jax.models.bundle import ModelFileError as ModelFileError
from ipguard_jax.models.bundle import ModelSpec as ModelSpec
from ipguard_jax.models.bundle import load_model as load_model
from ipguard_jax.models.bundle import save_model as save_model
from ipguard_jax.models._common import IMAGENET_MEAN as IMAGENET_MEAN
from ipguard_jax.models._common import IMAGENET_STD as IMAGENET_STD
from ipguard_jax.models._common import normalization_stats as normalization_stats
from ipguard_jax.models.cifar_resnet import CifarResNet as CifarResNet
from ipguard_jax.models.cnn import CNN as CNN
from ipguard_jax.models.mlp import MLP as MLP
from ipguard_jax.models.mobilenet_v2 import MobileNetV2 as MobileNetV2
from ipguard_jax.models.registry import available as available
from ipguard_jax.models.registry import create as create
from ipguard_jax.models.resnet import ResNet as ResNet
from ipguard_jax.models.vgg import VGG as VGG
from ipguard_jax.models.wide_resnet import WideResNet as WideResNet

__all__ = [
    "CNN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
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
    "normalization_stats",
    "save_model",
]
