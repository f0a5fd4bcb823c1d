"""A multilayer perceptron over flattened images."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ipguard_jax.models import _common


class MLP(nnx.Module):
    """Fully connected classifier: normalise, flatten, [Linear, ReLU]*, Linear.

    Parameters (``in_features=3072``, ``hidden=(512, 256)``, 10 classes):
    1,707,274; with ``in_features=64, in_channels=1`` (8x8 digits): 167,178.

    Input: ``(B, H, W, C)`` float32 in [0, 1] with ``H * W * C ==
    in_features``. The image is flattened in torch's ``(C, H, W)`` order so
    a PyTorch MLP's first weight maps on by a transpose. Output: ``(B,
    num_classes)`` logits.

    Args:
      in_features: flattened input size ``H * W * C``.
      num_classes: number of output logits.
      hidden: widths of the hidden layers.
      in_channels: channels of the input, for per-channel normalisation.
      dropout: dropout rate after each hidden ReLU (0 disables it).
      mean: per-channel mean (default CIFAR-10's for 3 channels, else 0.5).
      std: per-channel std (default CIFAR-10's for 3 channels, else 0.5).
      rngs: random streams for init (``params``) and dropout.

    Example:
      >>> MLP(in_features=64, in_channels=1, rngs=nnx.Rngs(0))(jax.numpy.zeros((2, 8, 8, 1))).shape
      (2, 10)
    """

    def __init__(
        self,
        in_features: int = 3072,
        num_classes: int = 10,
        *,
        hidden: Sequence[int] = (512, 256),
        in_channels: int = 3,
        dropout: float = 0.0,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        if in_features % in_channels:
            raise ValueError(
                f"in_features={in_features} is not a multiple of in_channels={in_channels}"
            )
        self.in_features = in_features
        self.mean, self.std = _common.normalization_stats(mean, std, in_channels)
        widths = [in_features, *hidden]
        self.layers = nnx.List(
            [_common.torch_linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = _common.torch_linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, H, W, C)`` in [0, 1]."""
        x = _common.flatten_chw(_common.normalize(x, self.mean, self.std))
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input has {x.shape[-1]} features, the model expects {self.in_features}"
            )
        for layer in self.layers:
            x = nnx.relu(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.head(x)
