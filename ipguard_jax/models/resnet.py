"""ImageNet-style ResNets as in torchvision (ResNet-18/34/50, v1.5).

Attribute names follow ``torchvision.models.resnet``: ``conv1``, ``bn1``,
``layer1..4`` (lists of ``BasicBlock`` / ``Bottleneck`` with ``conv1``,
``bn1``, ``conv2``, ``bn2``[, ``conv3``, ``bn3``], ``downsample.0`` (1x1
conv) and ``downsample.1`` (BN)), ``fc``. As in torchvision (v1.5), a Bottleneck's
stride sits on its 3x3 conv, and every conv pads symmetrically.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ipguard_jax.models import _common


def _downsample(in_planes: int, out_planes: int, stride: int, rngs: nnx.Rngs):
    return _common.Sequential(
        [
            _common.conv(in_planes, out_planes, 1, stride, 0, rngs=rngs),
            _common.batch_norm(out_planes, rngs=rngs),
        ]
    )


class BasicBlock(nnx.Module):
    """torchvision BasicBlock: 3x3 (stride) - 3x3, residual, ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = _common.conv(inplanes, planes, 3, stride, 1, rngs=rngs)
        self.bn1 = _common.batch_norm(planes, rngs=rngs)
        self.conv2 = _common.conv(planes, planes, 3, 1, 1, rngs=rngs)
        self.bn2 = _common.batch_norm(planes, rngs=rngs)
        out = planes * self.expansion
        self.downsample = (
            _downsample(inplanes, out, stride, rngs) if stride != 1 or inplanes != out else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return nnx.relu(out + identity)


class Bottleneck(nnx.Module):
    """torchvision Bottleneck (v1.5): 1x1 - 3x3 (stride) - 1x1 (x4), residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        out = planes * self.expansion
        self.conv1 = _common.conv(inplanes, planes, 1, 1, 0, rngs=rngs)
        self.bn1 = _common.batch_norm(planes, rngs=rngs)
        self.conv2 = _common.conv(planes, planes, 3, stride, 1, rngs=rngs)
        self.bn2 = _common.batch_norm(planes, rngs=rngs)
        self.conv3 = _common.conv(planes, out, 1, 1, 0, rngs=rngs)
        self.bn3 = _common.batch_norm(out, rngs=rngs)
        self.downsample = (
            _downsample(inplanes, out, stride, rngs) if stride != 1 or inplanes != out else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return nnx.relu(out + identity)


_CONFIGS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nnx.Module):
    """torchvision ResNet: 7x7/2 stem, 3x3/2 max pool, 4 stages, GAP, ``fc``.

    Parameters with 10 classes: ResNet-18 11,181,642, ResNet-34 21,289,802,
    ResNet-50 23,528,522 (torchvision's 1000-class counts minus the head
    difference).

    Input: ``(B, H, W, C)`` float32 in [0, 1]; designed for 224x224, works
    for any ``H, W >= 1`` (the feature map is 1/32 of the input, then global
    average pooling; 32x32 gives 1x1 before pooling). Output: ``(B,
    num_classes)`` logits.

    Args:
      depth: 18, 34, 50, 101 or 152.
      num_classes: number of output logits.
      in_channels: channels of the input image.
      zero_init_residual: zero the last BN scale of each block (torchvision
        option, off by default there too).
      mean: per-channel mean (default ImageNet's for 3 channels, else 0.5).
      std: per-channel std (default ImageNet's for 3 channels, else 0.5).
      rngs: random streams for init.

    Example:
      >>> ResNet(depth=18, rngs=nnx.Rngs(0))(jax.numpy.zeros((1, 224, 224, 3))).shape
      (1, 10)
    """

    def __init__(
        self,
        depth: int = 18,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        if depth not in _CONFIGS:
            raise ValueError(f"depth must be one of {sorted(_CONFIGS)}, got {depth}")
        block, layers = _CONFIGS[depth]
        self.mean, self.std = _common.normalization_stats(
            mean, std, in_channels, _common.IMAGENET_MEAN, _common.IMAGENET_STD
        )
        self.conv1 = _common.conv(in_channels, 64, 7, 2, 3, rngs=rngs)
        self.bn1 = _common.batch_norm(64, rngs=rngs)
        inplanes = 64
        stages = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = []
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                stage.append(block(inplanes, planes, stride, rngs=rngs))
                inplanes = planes * block.expansion
            stages.append(nnx.List(stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = _common.torch_linear(inplanes, num_classes, rngs=rngs)
        if zero_init_residual:
            for stage in stages:
                for blk in stage:
                    last_bn = blk.bn3 if isinstance(blk, Bottleneck) else blk.bn2
                    last_bn.scale[...] = 0.0

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, H, W, C)`` in [0, 1]."""
        x = _common.normalize(x, self.mean, self.std)
        x = nnx.relu(self.bn1(self.conv1(x)))
        # Real max pool with -inf padding: torch's MaxPool2d(3, 2, 1).
        x = _common.max_pool(x, 3, 2, 1)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        return self.fc(x.mean(axis=(1, 2)))
