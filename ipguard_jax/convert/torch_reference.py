"""Re-exports of :mod:`ipguard_jax.adapters.torch_reference`, kept for code that imports them
from here."""

from ipguard_jax.adapters.torch_reference import CifarBlock as CifarBlock
from ipguard_jax.adapters.torch_reference import CifarResNet as CifarResNet
from ipguard_jax.adapters.torch_reference import ConvBNReLU as ConvBNReLU
from ipguard_jax.adapters.torch_reference import PadShortcut as PadShortcut
from ipguard_jax.adapters.torch_reference import TorchCNN as TorchCNN

__all__ = ["CifarBlock", "CifarResNet", "ConvBNReLU", "PadShortcut", "TorchCNN"]
