"""Convolutions rewritten for XLA's CPU backend.

:func:`conv_general_dilated` has the signature of ``jax.lax.conv_general_dilated`` and
computes the same convolution, up to float rounding, in a form that XLA:CPU runs faster (see
its docstring and ``benchmarks/results/conv_grad.md``). It is correct on every backend, but
only measured faster on CPU: the zoo's models reach it through the dispatcher
:func:`ipguard_jax.backends.conv_general_dilated`, which uses it only when the computation is
traced for the CPU backend.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ipguard_jax.backends import cpu
    >>> x, w = jnp.ones((1, 2, 2, 3)), jnp.ones((3, 3, 3, 4))
    >>> args = (x, w, (1, 1), ((1, 1), (1, 1)))
    >>> dims = {"dimension_numbers": ("NHWC", "HWIO", "NHWC")}
    >>> y = cpu.conv_general_dilated(*args, **dims)  # a 2x2 output map: patches @ kernel
    >>> bool(jnp.allclose(y, jax.lax.conv_general_dilated(*args, **dims)))
    True
    >>> y[0, :, :, 0].tolist()
    [[12.0, 12.0], [12.0, 12.0]]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["SMALL_OUTPUT_PIXELS", "WGRAD_ROW_BLOCKS", "conv_general_dilated"]


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
    else goes to ``lax`` unchanged. Results equal the native convolution up to float rounding,
    on any backend; the speed-ups below were measured on XLA:CPU only, which is why the zoo
    calls this through :func:`ipguard_jax.backends.conv_general_dilated` (CPU only, by default).

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
