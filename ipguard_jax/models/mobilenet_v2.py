"""MobileNetV2 (Sandler et al. 2018), torchvision layout.

``features`` is a sequence with torchvision's indices: ``features.0`` the
stride-2 stem (conv, BN, ReLU6 at ``.0/.1/.2``), ``features.1..17`` the
``InvertedResidual`` blocks (their ``conv`` sequence: optional 1x1 expansion
``conv.0`` (conv, BN, ReLU6), depthwise 3x3 (conv, BN, ReLU6), 1x1
projection conv, BN), ``features.18`` the 1x1 conv to 1280 channels;
``classifier`` is (Dropout, Linear) at ``.0/.1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ipguard_jax.models import _common

# (expand ratio t, channels c, repeats n, first stride s), torchvision's.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int) -> int:
    """torchvision's rounding of a channel count: the nearest multiple of ``divisor`` (at
    least ``divisor``), never more than 10% below ``v``.

    Example:
      >>> make_divisible(32 * 0.75, 8), make_divisible(1280 * 1.4, 8)
      (24, 1792)
    """
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    *,
    rngs: nnx.Rngs,
) -> _common.Sequential:
    """torchvision's Conv2dNormActivation(..., activation_layer=ReLU6)."""
    return _common.Sequential(
        [
            _common.conv(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                (kernel_size - 1) // 2,
                groups=groups,
                rngs=rngs,
            ),
            _common.batch_norm(out_channels, rngs=rngs),
            jax.nn.relu6,
        ]
    )


class InvertedResidual(nnx.Module):
    """1x1 expansion, 3x3 depthwise (stride), linear 1x1 projection, residual."""

    def __init__(
        self, inp: int, oup: int, stride: int, expand_ratio: int, *, rngs: nnx.Rngs
    ):
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, 1, rngs=rngs))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden, rngs=rngs),
            _common.conv(hidden, oup, 1, 1, 0, rngs=rngs),
            _common.batch_norm(oup, rngs=rngs),
        ]
        self.conv = _common.Sequential(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nnx.Module):
    """MobileNetV2: stride-2 stem, 17 inverted residual blocks, 1x1 conv, GAP, head.

    Parameters with 10 classes (width 1.0): 2,236,682.

    Input: ``(B, H, W, C)`` float32 in [0, 1]; designed for 224x224, any
    ``H, W >= 1`` works (overall stride 32, then global average pooling;
    32x32 gives a 1x1 map). Output: ``(B, num_classes)`` logits.

    Args:
      num_classes: number of output logits.
      in_channels: channels of the input image.
      width_mult: channel multiplier (torchvision's, rounded to multiples
        of 8).
      dropout: dropout rate before the Linear head (torchvision: 0.2).
      mean: per-channel mean (default ImageNet's for 3 channels, else 0.5).
      std: per-channel std (default ImageNet's for 3 channels, else 0.5).
      rngs: random streams for init and dropout.

    Example:
      >>> MobileNetV2(rngs=nnx.Rngs(0))(jax.numpy.zeros((2, 32, 32, 3))).shape
      (2, 10)
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        self.mean, self.std = _common.normalization_stats(
            mean, std, in_channels, _common.IMAGENET_MEAN, _common.IMAGENET_STD
        )
        c_in = make_divisible(32 * width_mult, 8)
        last = make_divisible(1280 * max(1.0, width_mult), 8)
        features = [_conv_bn_relu6(in_channels, c_in, 3, 2, rngs=rngs)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            c_out = make_divisible(c * width_mult, 8)
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t, rngs=rngs))
                c_in = c_out
        features.append(_conv_bn_relu6(c_in, last, 1, rngs=rngs))
        self.features = _common.Sequential(features)
        self.classifier = _common.Sequential(
            [
                nnx.Dropout(dropout, rngs=rngs),
                nnx.Linear(
                    last,
                    num_classes,
                    kernel_init=jax.nn.initializers.normal(0.01),
                    rngs=rngs,
                ),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, H, W, C)`` in [0, 1]."""
        x = _common.normalize(x, self.mean, self.std)
        x = self.features(x)
        return self.classifier(x.mean(axis=(1, 2)))
