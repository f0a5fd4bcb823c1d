"""Building blocks shared by the model families.

Models take NHWC float32 images in [0, 1] and normalise them inside, so a
fingerprint's input box is always [0, 1] whatever the training recipe was.
Layers mirror PyTorch defaults (symmetric explicit padding, BatchNorm epsilon
1e-5 and momentum 0.1 in torch's convention) so that state_dict keys and
numerics map one-to-one onto these modules.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


#: Output maps with at most this many pixels are convolved as patches @ kernel (see below).
SMALL_OUTPUT_PIXELS = 16


def _tap_slices(x: jax.Array, kh: int, kw: int, strides,
                padding) -> tuple[list[jax.Array], int, int]:
    """The ``kh * kw`` strided slices of the padded NHWC batch that each kernel tap sees.

    Returns:
      ``(slices, oh, ow)``: one ``(b, oh, ow, cin)`` slice per tap, taps in row-major order.
    """
    b, h, w, cin = x.shape
    sh, sw = strides
    (top, bottom), (left, right) = padding
    oh, ow = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    slices = [jax.lax.slice(padded, (0, i, j, 0),
                            (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, cin),
                            (1, sh, sw, 1))
              for i in range(kh) for j in range(kw)]
    return slices, oh, ow


def _patches(x: jax.Array, kh: int, kw: int, strides, padding) -> jax.Array:
    """im2col of an NHWC batch: ``(b * oh * ow, kh * kw * cin)``, taps major, channels minor."""
    cols, oh, ow = _tap_slices(x, kh, kw, strides, padding)
    cols = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return cols.reshape(x.shape[0] * oh * ow, kh * kw * x.shape[-1])


def _native_nhwc(x, w, strides, padding, precision):
    return jax.lax.conv_general_dilated(x, w, strides, padding, precision=precision,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


#: Row blocks of the kernel-gradient products (see ``_tap_products``).
WGRAD_ROW_BLOCKS = 2


def _tap_products(x: jax.Array, w_dot: jax.Array, strides, padding, precision,
                  out_dtype) -> jax.Array:
    """``conv(x, w_dot)`` as one matrix product per kernel tap, summed.

    Each tap multiplies a strided slice of the padded input, ``(rows, cin)``, by its
    ``(cin, cout)`` slice of ``w_dot``. The rows are split into :data:`WGRAD_ROW_BLOCKS` blocks
    and the kernel slice broadcast to each, so the transpose (the kernel gradient
    ``slice.T @ dy``) is a batched product over row blocks, summed: XLA:CPU runs a product with
    a tiny output and a long contraction on one thread, but the blocks of a batched product in
    parallel.
    """
    b, _, _, cin = x.shape
    kh, kw, _, cout = w_dot.shape
    taps, oh, ow = _tap_slices(x, kh, kw, strides, padding)
    rows = b * oh * ow
    blocks = WGRAD_ROW_BLOCKS if rows % WGRAD_ROW_BLOCKS == 0 else 1
    out = None
    for tap, w_tap in zip(taps, w_dot.reshape(kh * kw, cin, cout)):
        term = jax.lax.dot_general(
            tap.reshape(blocks, rows // blocks, cin), jnp.broadcast_to(w_tap, (blocks, cin, cout)),
            (((2,), (1,)), ((0,), (0,))), precision=precision, preferred_element_type=out_dtype)
        out = term if out is None else out + term
    return out.reshape(b, oh, ow, cout)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_wgrad(x, w, strides, padding, precision):
    """A native NHWC convolution whose kernel gradient is a few matrix products.

    XLA:CPU lowers the kernel gradient of a convolution to another convolution whose "kernel"
    is the whole output map; that ran at a fraction of the forward's speed here. The JVP
    below writes the kernel-tangent term ``conv(x, dw)`` as a sum of one matrix product per
    kernel tap (:func:`_tap_products`), so reverse mode transposes it into products
    ``tap.T @ dy`` (the taps sliced again in the backward pass, not stored). The forward pass
    and the input tangent and gradient stay native; when only the input gradient is asked for
    (fingerprint generation) the kernel term is a symbolic zero and never built. Forward mode
    (``jax.jvp``) works as usual.
    """
    return _native_nhwc(x, w, strides, padding, precision)


def _conv_matmul_wgrad_jvp(strides, padding, precision, primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    y = _native_nhwc(x, w, strides, padding, precision)
    out = None
    if not isinstance(x_dot, jax.custom_derivatives.SymbolicZero):
        out = _native_nhwc(x_dot, w, strides, padding, precision)
    if not isinstance(w_dot, jax.custom_derivatives.SymbolicZero):
        kernel_term = functools.partial(
            _tap_products, strides=strides, padding=padding, precision=precision,
            out_dtype=jnp.promote_types(w.dtype, jnp.float32))
        term = jax.checkpoint(kernel_term)(x, w_dot).astype(y.dtype)
        out = term if out is None else out + term
    return y, jnp.zeros_like(y) if out is None else out


_conv_matmul_wgrad.defjvp(_conv_matmul_wgrad_jvp, symbolic_zeros=True)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """``lax.conv_general_dilated`` with two CPU-friendly rewrites for plain NHWC convolutions.

    Both apply to ungrouped, undilated NHWC/HWIO convolutions with explicit padding; anything
    else goes to ``lax`` unchanged. Results equal the native convolution up to float rounding.

    * Small output maps go through one matrix product. XLA's CPU backend convolves tiny spatial
      maps with many channels very slowly (measured here, batch 16, forward + input gradient:
      a 3x3 convolution on a 2x2x256 map took 65 ms, against 3 ms as im2col + matmul; on 8x8
      and larger maps the native convolution is as fast or faster). ImageNet-style networks on
      32x32 inputs (ResNet-18/34/50, VGG) end on such maps. So a convolution whose output has
      at most :data:`SMALL_OUTPUT_PIXELS` pixels is computed as patches (strided slices of the
      padded input) times the flattened kernel.
    * Otherwise the kernel gradient is one product ``tap.T @ dy`` per kernel tap (see
      ``_conv_matmul_wgrad``): a ResNet-20 training gradient at batch 128 ran 1.5-1.7x faster
      than with XLA's own kernel gradient on 2 CPU cores, the small CNN's 1.4-1.5x
      (``benchmarks/results/conv_grad.md``). The forward pass and the input gradient are the
      native ones, bit for bit, and forward-mode autodiff works.
    """
    native = functools.partial(jax.lax.conv_general_dilated, lhs, rhs, window_strides, padding,
                               lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                               dimension_numbers=dimension_numbers,
                               feature_group_count=feature_group_count, precision=precision,
                               **kwargs)
    if (lhs.ndim != 4 or feature_group_count != 1 or isinstance(padding, str)
            or any(d != 1 for d in (lhs_dilation or (1, 1)))
            or any(d != 1 for d in (rhs_dilation or (1, 1)))
            or any(v is not None for v in kwargs.values())):
        return native()
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if dimension_numbers is not None and jax.lax.conv_dimension_numbers(
            lhs.shape, rhs.shape, dimension_numbers) != nhwc:
        return native()
    b, h, w, cin = lhs.shape
    kh, kw, _, cout = rhs.shape
    strides = tuple(int(s) for s in window_strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    (top, bottom), (left, right) = padding
    oh = (h + top + bottom - kh) // strides[0] + 1
    ow = (w + left + right - kw) // strides[1] + 1
    if oh * ow > SMALL_OUTPUT_PIXELS or kh * kw == 1:
        return _conv_matmul_wgrad(lhs, rhs, strides, padding, precision)
    out = jnp.dot(_patches(lhs, kh, kw, strides, padding), rhs.reshape(kh * kw * cin, cout),
                  precision=precision)
    return out.reshape(b, oh, ow, cout)


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
    flax's ``'SAME'`` would pad asymmetrically for stride 2.
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
