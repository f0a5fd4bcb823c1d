"""Re-exports of :mod:`ipguard_jax.adapters.torch`, kept for code that imports them from here."""

from ipguard_jax.adapters.torch import SUPPORTED_ARCHS as SUPPORTED_ARCHS
from ipguard_jax.adapters.torch import TorchSuspect as TorchSuspect
from ipguard_jax.adapters.torch import from_torch as from_torch
from ipguard_jax.adapters.torch import nnx_from_torch as nnx_from_torch

__all__ = ["SUPPORTED_ARCHS", "TorchSuspect", "from_torch", "nnx_from_torch"]
