"""Building blocks shared by the model families.

Models take NHWC float32 images in [0, 1] and normalise them inside, so a
fingerprint's input box is always [0, 1] whatever the training recipe was.
Layers mirror PyTorch defaults (symmetric explicit padding, BatchNorm epsilon
1e-5 and momentum 0.1 in torch's convention) so that state_dict keys and
numerics map one-to-one onto these modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The zoo's convolution: the CPU rewrite on the CPU backend, XLA's elsewhere (see
# ipguard_jax.backends). Looked up when a layer is built, so patching this name (as
# benchmarks/conv_grad.py does) changes the layers built afterwards.
from ipguard_jax.backends import conv_general_dilated as conv_general_dilated

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torch.nn.BatchNorm2d: running = (1 - 0.1) * running + 0.1 * batch.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torch's kaiming_normal_(mode="fan_out", nonlinearity="relu"), used by
# torchvision ResNet/VGG/MobileNetV2 and Wide-ResNet for convolutions.
kaiming_normal_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's kaiming_normal_(w) with defaults (fan_in, gain sqrt(2)), used by the
# CIFAR ResNets of akamaster/pytorch_resnet_cifar10.
kaiming_normal_fan_in = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def normalization_stats(
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
    in_channels: int,
    default_mean: Sequence[float] = CIFAR10_MEAN,
    default_std: Sequence[float] = CIFAR10_STD,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Resolves per-channel normalisation constants.

    Args:
      mean: per-channel mean, a scalar (used for every channel) or ``None``
        for the default.
      std: per-channel standard deviation, like ``mean``.
      in_channels: number of input channels.
      default_mean: default when ``mean`` is ``None`` and ``in_channels`` is 3.
      default_std: default when ``std`` is ``None`` and ``in_channels`` is 3.

    Returns:
      ``(mean, std)`` as tuples of ``in_channels`` Python floats. Without a
      3-channel default, channels get mean 0.5 and std 0.5 (maps [0, 1] to
      [-1, 1]).

    Raises:
      ValueError: on a length mismatch or a non-positive std.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")

    def resolve(value, default, name):
        if value is None:
            value = default if in_channels == len(default) else 0.5
        if isinstance(value, (int, float)):
            value = (float(value),) * in_channels
        value = tuple(float(v) for v in value)
        if len(value) != in_channels:
            raise ValueError(
                f"{name} has {len(value)} entries but in_channels is {in_channels}"
            )
        return value

    mean_t = resolve(mean, default_mean, "mean")
    std_t = resolve(std, default_std, "std")
    if min(std_t) <= 0:
        raise ValueError(f"std must be positive, got {std_t}")
    return mean_t, std_t


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """``(x - mean) / std`` over the last (channel) axis."""
    mean_a = jnp.asarray(mean, dtype=x.dtype)
    inv_std = 1.0 / jnp.asarray(std, dtype=x.dtype)
    return (x - mean_a) * inv_std


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    *,
    groups: int = 1,
    use_bias: bool = False,
    kernel_init=kaiming_normal_fan_out,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A 2-D convolution with torch's symmetric explicit padding.

    ``padding=p`` pads ``p`` pixels on every side, like ``torch.nn.Conv2d``;
    flax's ``'SAME'`` would pad asymmetrically for stride 2. The layer convolves with
    :func:`ipguard_jax.backends.conv_general_dilated`: the CPU rewrite of
    :mod:`ipguard_jax.backends.cpu` when traced for the CPU backend, XLA's own elsewhere.
    """
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=kernel_init,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with torch's defaults (epsilon 1e-5, momentum 0.1)."""
    return nnx.BatchNorm(
        num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs
    )


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 (``torch.nn.MaxPool2d(2, 2)``).

    A reshape and max: its backward pass is much faster than
    ``reduce_window``'s on CPU. Odd trailing rows/columns are dropped, as in
    torch (floor mode).

    Args:
      x: ``(B, H, W, C)`` with ``H, W >= 2``.

    Returns:
      ``(B, H // 2, W // 2, C)``.
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """Max pooling with ``-inf`` padding (``torch.nn.MaxPool2d``, floor mode)."""
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        window_dimensions=(1, window, window, 1),
        window_strides=(1, stride, stride, 1),
        padding=((0, 0), (padding, padding), (padding, padding), (0, 0)),
    )


def _adaptive_matrix(size_in: int, size_out: int) -> np.ndarray:
    # torch's adaptive pooling bins: [floor(i*n/m), ceil((i+1)*n/m)).
    mat = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
    """``torch.nn.AdaptiveAvgPool2d(output_size)`` on NHWC input.

    Args:
      x: ``(B, H, W, C)``.
      output_size: side of the square output.

    Returns:
      ``(B, output_size, output_size, C)``.
    """
    _, h, w, _ = x.shape
    if output_size == 1:
        return x.mean(axis=(1, 2), keepdims=True)
    if h == output_size and w == output_size:
        return x
    mh = jnp.asarray(_adaptive_matrix(h, output_size), x.dtype)
    mw = jnp.asarray(_adaptive_matrix(w, output_size), x.dtype)
    return jnp.einsum("ih,jw,bhwc->bijc", mh, mw, x)


def flatten_chw(x: jax.Array) -> jax.Array:
    """Flattens ``(B, H, W, C)`` in torch's ``(C, H, W)`` order.

    Keeps the first Linear layer's weight a plain transpose of torch's.
    """
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def torch_linear(
    in_features: int, out_features: int, *, rngs: nnx.Rngs
) -> nnx.Linear:
    """``nnx.Linear`` with torch's default init: U(-1/sqrt(fan_in), +...)."""
    bound = 1.0 / np.sqrt(in_features)

    def uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(
        in_features, out_features, kernel_init=uniform, bias_init=uniform, rngs=rngs
    )


class Sequential(nnx.List):
    """A list of layers applied in order, like ``torch.nn.Sequential``.

    Unlike ``nnx.Sequential`` (whose state lives under ``.layers``), the
    state path of element ``i`` is ``name/i``, exactly torch's ``name.i``, so
    converted state_dict keys need no renaming beyond the leaf names. Plain
    functions (activations, pooling) may sit between modules to keep torch's
    indices.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self:
            x = layer(x)
        return x
