"""CIFAR-style ResNets (He et al. 2016, section 4.2): ResNet-20/32/56.

Layout and attribute names follow akamaster/pytorch_resnet_cifar10
(``conv1``, ``bn1``, ``layer1..3`` of ``BasicBlock`` with ``conv1``, ``bn1``,
``conv2``, ``bn2``, ``shortcut``; ``linear``), except for the shortcut: where
the shape changes we use projection shortcuts (the paper's option B: 1x1 conv
with stride + BatchNorm, ``shortcut.0`` / ``shortcut.1`` as in torch), not
option A's zero-padded identity,
so every tensor of a PyTorch checkpoint with option B maps onto a parameter
here. Identity shortcuts elsewhere. A projection adds 2 x (conv + BN)
parameters: ResNet-20 has 272,474 parameters here vs 269,722 with option A.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ipguard_jax.models import _common


class BasicBlock(nnx.Module):
    """Two 3x3 conv-BN layers with a residual connection (stride on conv1)."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs
    ):
        init = _common.kaiming_normal_fan_in
        self.conv1 = _common.conv(in_planes, planes, 3, stride, 1, kernel_init=init, rngs=rngs)
        self.bn1 = _common.batch_norm(planes, rngs=rngs)
        self.conv2 = _common.conv(planes, planes, 3, 1, 1, kernel_init=init, rngs=rngs)
        self.bn2 = _common.batch_norm(planes, rngs=rngs)
        if stride != 1 or in_planes != planes:
            self.shortcut = _common.Sequential(
                [
                    _common.conv(in_planes, planes, 1, stride, 0, kernel_init=init, rngs=rngs),
                    _common.batch_norm(planes, rngs=rngs),
                ]
            )
        else:
            self.shortcut = None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(out + identity)


class CifarResNet(nnx.Module):
    """CIFAR ResNet: 3x3 stem, 3 stages of ``n`` basic blocks (16/32/64), GAP, Linear.

    Depth is ``6n + 2``. Parameters with 10 classes: ResNet-20 272,474,
    ResNet-32 466,906, ResNet-56 855,770 (option-B shortcuts, see the module
    docstring).

    Input: ``(B, H, W, C)`` float32 in [0, 1]; designed for 32x32 (CIFAR),
    any ``H, W >= 1`` works (two stride-2 stages, then global average
    pooling). Output: ``(B, num_classes)`` logits.

    Args:
      depth: 6n + 2 (20, 32, 44, 56, 110, ...).
      num_classes: number of output logits.
      in_channels: channels of the input image.
      widths: channels of the three stages.
      mean: per-channel mean (default CIFAR-10's for 3 channels, else 0.5).
      std: per-channel std (default CIFAR-10's for 3 channels, else 0.5).
      rngs: random streams for init.

    Example:
      >>> CifarResNet(depth=20, rngs=nnx.Rngs(0))(jax.numpy.zeros((2, 32, 32, 3))).shape
      (2, 10)
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
        if len(widths) != 3:
            raise ValueError(f"widths must have 3 entries, got {widths}")
        n = (depth - 2) // 6
        self.mean, self.std = _common.normalization_stats(mean, std, in_channels)
        init = _common.kaiming_normal_fan_in
        self.conv1 = _common.conv(in_channels, widths[0], 3, 1, 1, kernel_init=init, rngs=rngs)
        self.bn1 = _common.batch_norm(widths[0], rngs=rngs)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, rngs=rngs))
                in_planes = planes
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nnx.Linear(
            in_planes, num_classes, kernel_init=init, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, H, W, C)`` in [0, 1]."""
        x = _common.normalize(x, self.mean, self.std)
        x = nnx.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                x = block(x)
        return self.linear(x.mean(axis=(1, 2)))
