"""Wide residual networks (Zagoruyko & Komodakis 2016): WRN-16-4, WRN-28-10.

Pre-activation blocks (BN-ReLU-conv), layout and attribute names of the
widely used xternalz/WideResNet-pytorch port of the authors' code:
``conv1``, ``block1..3.layer`` (lists of ``BasicBlock`` with ``bn1``,
``conv1``, ``bn2``, ``conv2``, ``convShortcut``), ``bn1``, ``fc``. Where the
width changes, the shortcut is a 1x1 conv (no BN) applied to the block's
pre-activated input, as in the original code.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ipguard_jax.models import _common


class BasicBlock(nnx.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int,
        dropout: float = 0.0,
        *,
        rngs: nnx.Rngs,
    ):
        self.bn1 = _common.batch_norm(in_planes, rngs=rngs)
        self.conv1 = _common.conv(in_planes, out_planes, 3, stride, 1, rngs=rngs)
        self.bn2 = _common.batch_norm(out_planes, rngs=rngs)
        self.conv2 = _common.conv(out_planes, out_planes, 3, 1, 1, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (  # noqa: N815 - the PyTorch attribute name
            None
            if self.equal_in_out
            else _common.conv(in_planes, out_planes, 1, stride, 0, rngs=rngs)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        pre = nnx.relu(self.bn1(x))
        out = nnx.relu(self.bn2(self.conv1(pre)))
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.conv2(out)
        # The original adds the raw input on identity paths and projects the
        # pre-activated input where the width changes.
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nnx.Module):
    """A stage: ``n`` BasicBlocks, the first one with the stage's stride."""

    def __init__(
        self,
        n: int,
        in_planes: int,
        out_planes: int,
        stride: int,
        dropout: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.layer = _common.Sequential(
            [
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout,
                    rngs=rngs,
                )
                for i in range(n)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer(x)


class WideResNet(nnx.Module):
    """WRN-depth-k: 3x3 stem, 3 stages (16k/32k/64k), BN-ReLU, GAP, Linear.

    Parameters with 10 classes: WRN-16-1 175,066, WRN-16-4 2,748,890, WRN-28-10 36,479,194.

    Input: ``(B, H, W, C)`` float32 in [0, 1]; designed for 32x32, any
    ``H, W >= 1`` works (two stride-2 stages, then global average pooling,
    which equals the original's 8x8 average pool at 32x32). Output: ``(B,
    num_classes)`` logits.

    Args:
      depth: 6n + 4 (16, 22, 28, 40, ...).
      widen_factor: width multiplier k.
      num_classes: number of output logits.
      in_channels: channels of the input image.
      dropout: dropout rate between the convolutions of each block (the
        paper uses 0.3 for some runs; 0 disables it).
      mean: per-channel mean (default CIFAR-10's for 3 channels, else 0.5).
      std: per-channel std (default CIFAR-10's for 3 channels, else 0.5).
      rngs: random streams for init and dropout.

    Example:
      >>> WideResNet(16, 4, rngs=nnx.Rngs(0))(jax.numpy.zeros((2, 32, 32, 3))).shape
      (2, 10)
    """

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 4,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        dropout: float = 0.0,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.mean, self.std = _common.normalization_stats(mean, std, in_channels)
        self.conv1 = _common.conv(in_channels, widths[0], 3, 1, 1, rngs=rngs)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout, rngs=rngs)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout, rngs=rngs)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout, rngs=rngs)
        self.bn1 = _common.batch_norm(widths[3], rngs=rngs)
        self.fc = _common.torch_linear(widths[3], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, H, W, C)`` in [0, 1]."""
        x = _common.normalize(x, self.mean, self.std)
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = nnx.relu(self.bn1(x))
        return self.fc(x.mean(axis=(1, 2)))
