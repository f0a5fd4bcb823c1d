"""Converters from other frameworks into ipguard_jax classifiers.

:func:`from_torch` maps a PyTorch model (torchvision ResNet/VGG/MobileNetV2, CIFAR ResNets, the
zoo's small CNN layout) onto the matching Flax NNX zoo model; :class:`TorchSuspect` queries a
local PyTorch model label-only. Both need the ``torch`` extra, imported only when called.
:mod:`ipguard_jax.convert.torch_reference` defines in PyTorch the layouts torchvision lacks (the
CIFAR ResNet, the small CNN), to train there and convert.

Example:
    >>> import torchvision
    >>> from ipguard_jax.convert import from_torch
    >>> clf = from_torch(torchvision.models.resnet18(num_classes=10), input_shape=(64, 64, 3))
    >>> clf.num_classes
    10
"""

from ipguard_jax.adapters.torch import SUPPORTED_ARCHS as SUPPORTED_ARCHS
from ipguard_jax.adapters.torch import TorchSuspect as TorchSuspect
from ipguard_jax.adapters.torch import from_torch as from_torch
from ipguard_jax.adapters.torch import nnx_from_torch as nnx_from_torch

__all__ = ["SUPPORTED_ARCHS", "TorchSuspect", "from_torch", "nnx_from_torch"]
