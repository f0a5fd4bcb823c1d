"""A small VGG-style convolutional network for quick experiments."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ipguard_jax.models import _common


class ConvBNReLU(nnx.Module):
    """3x3 conv (padding 1, no bias), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv = _common.conv(in_channels, out_channels, 3, 1, 1, rngs=rngs)
        self.bn = _common.batch_norm(out_channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


class CNN(nnx.Module):
    """Small CNN: stages of conv-BN-ReLU blocks and 2x2 max pooling, GAP, Linear.

    Parameters (defaults, 3 input channels, 10 classes): 94,762; with one
    input channel (8x8 digits): 94,186; ``convs_per_stage=2``: 288,746.

    Input: ``(B, H, W, C)`` float32 in [0, 1], any ``H, W >= 1`` (a stage
    skips its pooling once the feature map is 1 pixel wide; 32x32 CIFAR and
    8x8 digits both work). Output: ``(B, num_classes)`` logits.

    Each of the ``len(widths)`` stages holds ``convs_per_stage`` blocks and
    ends with a 2x2/stride-2 max pool; then global average pooling, dropout
    and a Linear head. The defaults (~9 M multiply-adds per 32x32 image, a
    quarter of ResNet-20's 38 M) aim at a CIFAR-10 model trained in minutes
    on CPU; ``convs_per_stage=2`` (~38 M) is slower and more accurate.

    Args:
      num_classes: number of output logits.
      in_channels: channels of the input image.
      widths: output channels of each stage.
      convs_per_stage: conv-BN-ReLU blocks per stage.
      dropout: dropout rate before the head (0 disables it).
      mean: per-channel mean (default CIFAR-10's for 3 channels, else 0.5).
      std: per-channel std (default CIFAR-10's for 3 channels, else 0.5).
      rngs: random streams for init and dropout.

    Example:
      >>> CNN(in_channels=1, rngs=nnx.Rngs(0))(jax.numpy.zeros((2, 8, 8, 1))).shape
      (2, 10)
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
        dropout: float = 0.0,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        self.mean, self.std = _common.normalization_stats(mean, std, in_channels)
        stages = []
        c_in = in_channels
        for width in widths:
            blocks = []
            for _ in range(convs_per_stage):
                blocks.append(ConvBNReLU(c_in, width, rngs=rngs))
                c_in = width
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.head = _common.torch_linear(c_in, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, H, W, C)`` in [0, 1]."""
        x = _common.normalize(x, self.mean, self.std)
        for stage in self.stages:
            for block in stage:
                x = block(x)
            if min(x.shape[1], x.shape[2]) >= 2:
                x = _common.max_pool_2x2(x)
        x = x.mean(axis=(1, 2))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.head(x)
