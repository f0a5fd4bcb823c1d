"""VGG with BatchNorm (Simonyan & Zisserman 2015), torchvision layout.

``features`` and ``classifier`` are sequences whose indices equal
torchvision's ``vgg*_bn`` indices (``features.0.weight`` is
``features[0].kernel``, ``classifier.6`` is ``classifier[6]``).
As in torchvision, the convolutions keep their bias although BatchNorm
follows them, so every torch tensor has a counterpart.

Head: torchvision pools the features adaptively to 7x7 and uses a
25088-4096-4096-classes MLP (~120 M parameters), which is meant for 224x224
inputs. The defaults here are the usual CIFAR adaptation: adaptive average
pooling to 1x1 (32x32 inputs are 1x1 after the five max pools, so this is the
identity there) and 512-512-classes hidden layers. ``pool_size=7,
hidden=4096`` gives torchvision's head exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from ipguard_jax.models import _common

# torchvision's cfgs "A", "B", "D"; "M" is a 2x2/stride-2 max pool.
CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
        512, 512, 512, "M", 512, 512, 512, "M",
    ),
}

_linear_init = jax.nn.initializers.normal(0.01)


class VGG(nnx.Module):
    """VGG-BN: conv3x3-BN-ReLU stacks with 2x2 max pools, adaptive pool, MLP head.

    Parameters with 10 classes (default head: pool 1x1, hidden 512): VGG-11
    9,756,426, VGG-13 9,941,322, VGG-16 15,253,578.

    Input: ``(B, H, W, C)`` float32 in [0, 1] with ``H, W >= 32`` (five
    2x2 max pools). Output: ``(B, num_classes)`` logits.

    Args:
      depth: 11, 13 or 16.
      num_classes: number of output logits.
      in_channels: channels of the input image.
      pool_size: side of the adaptive average pool before the head (1 for
        CIFAR, 7 for torchvision's ImageNet head).
      hidden: width of the two hidden head layers (512; torchvision: 4096).
      dropout: dropout rate in the head (torchvision: 0.5).
      mean: per-channel mean (default CIFAR-10's for 3 channels, else 0.5).
      std: per-channel std (default CIFAR-10's for 3 channels, else 0.5).
      rngs: random streams for init and dropout.

    Example:
      >>> VGG(depth=11, rngs=nnx.Rngs(0))(jax.numpy.zeros((2, 32, 32, 3))).shape
      (2, 10)
    """

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        pool_size: int = 1,
        hidden: int = 512,
        dropout: float = 0.5,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        rngs: nnx.Rngs,
    ):
        if depth not in CONFIGS:
            raise ValueError(f"depth must be one of {sorted(CONFIGS)}, got {depth}")
        self.mean, self.std = _common.normalization_stats(mean, std, in_channels)
        self.pool_size = pool_size
        layers = []
        c_in = in_channels
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(_common.max_pool_2x2)
            else:
                layers += [
                    _common.conv(c_in, v, 3, 1, 1, use_bias=True, rngs=rngs),
                    _common.batch_norm(v, rngs=rngs),
                    nnx.relu,
                ]
                c_in = v
        self.features = _common.Sequential(layers)

        def linear(a, b):
            return nnx.Linear(a, b, kernel_init=_linear_init, rngs=rngs)

        self.classifier = _common.Sequential(
            [
                linear(c_in * pool_size * pool_size, hidden),
                nnx.relu,
                nnx.Dropout(dropout, rngs=rngs),
                linear(hidden, hidden),
                nnx.relu,
                nnx.Dropout(dropout, rngs=rngs),
                linear(hidden, num_classes),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(B, num_classes)`` of images ``(B, H, W, C)`` in [0, 1]."""
        x = _common.normalize(x, self.mean, self.std)
        x = self.features(x)
        x = _common.adaptive_avg_pool(x, self.pool_size)
        return self.classifier(_common.flatten_chw(x))
