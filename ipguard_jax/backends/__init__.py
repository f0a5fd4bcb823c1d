"""What the library does differently on each XLA backend: the defaults of ``generate`` and the
convolution.

The same programs run on every backend; a few forms are rewritten or scheduled differently
where one backend was measured to run them much slower. ``docs/backends.md`` has the whole
choice in one table, with the measurements behind each row; in short:

+---------------------------+-----------------------------+------------------+------------------+
|                           | CPU                         | GPU              | TPU              |
+===========================+=============================+==================+==================+
| Zoo convolutions          | the rewrite in :mod:`.cpu`: | XLA's own,       | XLA's own,       |
| (``models._common.conv``) | output maps of at most 16   | unchanged        | unchanged        |
|                           | pixels as im2col @ kernel;  |                  |                  |
|                           | larger maps: XLA's forward  |                  |                  |
|                           | pass and input gradient,    |                  |                  |
|                           | the kernel gradient as one  |                  |                  |
|                           | matrix product per tap      |                  |                  |
+---------------------------+-----------------------------+------------------+------------------+
| ``generate``'s step loop  | ``"host"``: compiled blocks | ``"device"``:    | ``"device"``     |
| with ``loop="auto"``      | of ``block_steps`` unrolled | a ``while_loop`` | (as GPU)         |
| (``FingerprintConfig``)   | steps driven from Python    | in one compiled  |                  |
|                           |                             | call             |                  |
+---------------------------+-----------------------------+------------------+------------------+
| Compaction with           | off: whole chunks           | on, inside the   | on, inside the   |
| ``compact="auto"``        |                             | compiled loop    | compiled loop    |
|                           |                             | (device queue)   | (as GPU)         |
+---------------------------+-----------------------------+------------------+------------------+

Notes on the table:

* Convolutions: the rewrite gives XLA's results up to float rounding; its forward pass and
  input gradient are XLA's, bit for bit, except for kernels larger than 1x1 on output maps of
  at most 16 pixels (:data:`.cpu.SMALL_OUTPUT_PIXELS`). XLA:CPU convolved such tiny maps with
  many channels about 20x slower than im2col + matmul, and its kernel gradients made a
  ResNet-20 training gradient 1.5-1.7x slower (``benchmarks/results/conv_grad.md``). Nothing
  was measured on GPU or TPU, so there the zoo keeps XLA's convolution. How the backend is
  told apart, and how to override it, is below.
* The loop and compaction: only ``"auto"`` depends on the backend; ``loop="host"`` or
  ``"device"`` and ``compact=True`` or ``False`` given explicitly are used on every backend.
  :func:`ipguard_jax.generate` resolves ``"auto"`` with :func:`resolve_loop` and
  :func:`resolve_compact` for the platform of the devices the run uses
  (:func:`generation_platform`: the mesh's devices, else the default device) and records the
  resolved values in ``metadata["loop"]``, ``metadata["compact"]`` and
  ``metadata["backend"]``. With ``loop="host"`` compaction is driven by the host after every
  block; with ``loop="device"`` the refills happen inside the compiled loop
  (:mod:`ipguard_jax.runners.device_compacted`), which returns to the host only at the end,
  for a checkpoint, or to shrink the batch. Both start the same candidates and give the same
  fingerprints (bit for bit on the MLP, tested on 1 and 8 devices). Not with the
  Carlini-Wagner baseline, which never compacts.
* Not in the table: :func:`ipguard_jax.train.malloc_hint` suggests preloading tcmalloc on
  the CPU backend only; JAX's persistent compilation cache
  (:mod:`ipguard_jax.compile_cache`) is on by default on every backend.

Which backend a convolution is for
----------------------------------

:func:`conv_general_dilated` decides when it is traced (there is no run-time switch in the
compiled program, so each backend compiles only its own form): the CPU rewrite is used when
:func:`trace_platform` says ``"cpu"``, else ``jax.lax.conv_general_dilated`` unchanged.
:func:`trace_platform` takes the first answer of

1. the mesh in the operands' types (``jax.typeof(x).sharding.mesh``): arrays placed with a
   ``NamedSharding``, as :class:`ipguard_jax.sharding.Placement` does on several devices,
   carry their mesh's platform into a ``jit`` trace;
2. the mesh of the context (``with jax.set_mesh(mesh):``);
3. the ``jax.default_device`` setting (context manager or ``JAX_DEFAULT_DEVICE``);
4. ``jax.default_backend()``.

The first three are part of ``jax.jit``'s cache key and the fourth is fixed for the process,
so a compiled function is not reused for another answer. Limits: a computation can run
somewhere none of these names. Arrays committed to one device of another platform without a
mesh (``jax.device_put(x, gpu_device)`` while the default is the CPU, or the reverse),
``jax.jit(..., device=/backend=)``, or one program lowered for several platforms
(``jax.export`` with ``platforms=``, or ``.lower(lowering_platforms=...)``) get the choice of
the tracing context. A wrong choice costs speed, not correctness: both forms compute the same
convolution up to float rounding. ``jax.lax.platform_dependent``, which chooses when lowering,
would be exact but puts both forms (and both sets of autodiff residuals) into every traced
program; it was not used.

Overriding
----------

* ``with cpu_conv(True):`` / ``with cpu_conv(False):`` forces the CPU rewrite on or off for
  convolutions traced inside the block, in this thread; ``cpu_conv(None)`` defers to the
  environment variable and the detection. The previous setting is restored on exit, even on an
  exception, and blocks nest. The setting is part of ``jax.jit``'s cache key: a jitted function
  is traced and compiled once for each setting it is called under.
* The environment variable ``IPGUARD_CPU_CONV``: ``"1"`` forces the rewrite on, ``"0"`` off,
  ``"auto"`` or unset detects; any other value raises ``ValueError`` when a convolution is
  traced. It is read at each trace but is not part of ``jax.jit``'s cache key: set it before
  the process starts (functions already compiled keep their form). :func:`cpu_conv` wins over
  it.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ipguard_jax import backends
    >>> with backends.cpu_conv(False):
    ...     backends.cpu_conv_enabled()
    False
    >>> x, w = jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 2))
    >>> args = (x, w, (1, 1), ((1, 1), (1, 1)))
    >>> dims = {"dimension_numbers": ("NHWC", "HWIO", "NHWC")}
    >>> with backends.cpu_conv(True):
    ...     y = backends.conv_general_dilated(*args, **dims)
    >>> bool(jnp.allclose(y, jax.lax.conv_general_dilated(*args, **dims)))
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax

from ipguard_jax.backends import cpu

__all__ = ["ENV_VAR", "conv_general_dilated", "cpu", "cpu_conv", "cpu_conv_enabled",
           "generation_platform", "resolve_compact", "resolve_loop", "trace_platform"]

#: The environment variable that forces the CPU convolution rewrite on (``"1"``) or off
#: (``"0"``); ``"auto"`` or unset detects the backend.
ENV_VAR = "IPGUARD_CPU_CONV"

# A jax.jit cache-sensitive, thread-local setting: None (no override), True or False.
_FORCED = jax.make_user_context(None)


def _env_setting() -> bool | None:
    raw = os.environ.get(ENV_VAR)
    value = "" if raw is None else raw.strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("0", "1"):
        return value == "1"
    raise ValueError(f'{ENV_VAR} must be "0", "1" or "auto", got {raw!r}')


def _mesh_platform(mesh: Any) -> str | None:
    device = getattr(mesh, "abstract_device", None)
    return getattr(device, "platform", None)


def trace_platform(*arrays: Any) -> str:
    """The platform (``"cpu"``, ``"gpu"``, ``"tpu"``...) a computation on ``arrays`` is traced for.

    The first of: the mesh in the arrays' types, the context's mesh, ``jax.default_device``,
    ``jax.default_backend()`` (see the module docstring for the order and its limits).

    Args:
        *arrays: operands (arrays or tracers) of the computation; may be empty.

    Returns:
        The platform name.

    Example:
        >>> import jax
        >>> with jax.default_device(jax.devices("cpu")[0]):
        ...     trace_platform()
        'cpu'
    """
    for x in arrays:
        platform = _mesh_platform(getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None))
        if platform is not None:
            return platform
    platform = _mesh_platform(jax.sharding.get_abstract_mesh())
    if platform is not None:
        return platform
    default = jax.config.jax_default_device
    if default is not None:
        platform = default if isinstance(default, str) else getattr(default, "platform", None)
        if platform is not None:
            return platform
    return jax.default_backend()


def cpu_conv_enabled(*arrays: Any) -> bool:
    """Whether a convolution of ``arrays`` traced now uses the CPU rewrite.

    :func:`cpu_conv` if set in this thread, else ``IPGUARD_CPU_CONV`` if set, else whether
    :func:`trace_platform` is ``"cpu"``.

    Args:
        *arrays: the convolution's operands (for :func:`trace_platform`); may be empty.

    Raises:
        ValueError: ``IPGUARD_CPU_CONV`` is set to something other than ``"0"``, ``"1"`` or
            ``"auto"`` (and no :func:`cpu_conv` block decides).

    Example:
        >>> with cpu_conv(True):
        ...     cpu_conv_enabled()
        True
    """
    forced = _FORCED.value
    if forced is None:
        forced = _env_setting()
    if forced is not None:
        return forced
    return trace_platform(*arrays) == "cpu"


@contextlib.contextmanager
def cpu_conv(enabled: bool | None) -> Iterator[None]:
    """Forces the CPU convolution rewrite on or off for convolutions traced in the block.

    Thread-local, nestable, restored on exit; part of ``jax.jit``'s cache key, so jitted
    functions are traced again for it. It takes precedence over ``IPGUARD_CPU_CONV``.

    Args:
        enabled: ``True`` (the rewrite on any backend), ``False`` (XLA's convolution on any
            backend) or ``None`` (no override: ``IPGUARD_CPU_CONV``, else the backend).

    Raises:
        TypeError: ``enabled`` is not a bool or ``None``.

    Example:
        >>> with cpu_conv(False):
        ...     with cpu_conv(True):
        ...         inner = cpu_conv_enabled()
        ...     outer = cpu_conv_enabled()
        >>> inner, outer
        (True, False)
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    with _FORCED(enabled):
        yield


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """``jax.lax.conv_general_dilated``, through the CPU rewrite where it is in effect.

    Same arguments and result as ``jax.lax.conv_general_dilated``. When
    :func:`cpu_conv_enabled` (for ``lhs`` and ``rhs``) is true at trace time, the call goes to
    :func:`ipguard_jax.backends.cpu.conv_general_dilated`, which equals it up to float rounding
    and itself falls back to ``lax`` for grouped, dilated, string-padded or non-NHWC
    convolutions; otherwise to ``jax.lax.conv_general_dilated`` unchanged.
    """
    impl = cpu.conv_general_dilated if cpu_conv_enabled(lhs, rhs) else jax.lax.conv_general_dilated
    return impl(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                feature_group_count=feature_group_count, precision=precision, **kwargs)


# --- generate's defaults ------------------------------------------------------------------------


def generation_platform(mesh: Any = None) -> str:
    """The platform (``"cpu"``, ``"gpu"``, ``"tpu"``...) a generation run's arrays live on.

    What :func:`ipguard_jax.generate` resolves its ``"auto"`` settings for: the platform of the
    mesh's devices when the run is sharded over a mesh, else that of the default device
    (:func:`trace_platform` without operands: the context's mesh, ``jax.default_device``,
    ``jax.default_backend()``).

    Args:
        mesh: the run's ``jax.sharding.Mesh``, or ``None`` (the default device).

    Returns:
        The platform name.

    Example:
        >>> import jax
        >>> from jax.sharding import Mesh
        >>> generation_platform(Mesh(jax.devices("cpu")[:1], ("batch",)))
        'cpu'
    """
    if mesh is not None:
        devices = getattr(mesh, "devices", None)
        if devices is not None and getattr(devices, "size", 0):
            return str(devices.flat[0].platform)
    return trace_platform()


def resolve_loop(loop: str, platform: str) -> str:
    """``loop="auto"`` -> ``"host"`` on ``"cpu"``, ``"device"`` on any other platform.

    Args:
        loop: ``"auto"``, ``"host"`` or ``"device"`` (see ``FingerprintConfig.loop``).
        platform: where the run goes (:func:`generation_platform`).

    Returns:
        ``"host"`` or ``"device"``; an explicit value as it is.

    Example:
        >>> resolve_loop("auto", "cpu"), resolve_loop("auto", "gpu"), resolve_loop("host", "tpu")
        ('host', 'device', 'host')
    """
    if loop == "auto":
        return "host" if platform == "cpu" else "device"
    return loop


def resolve_compact(compact: bool | str, platform: str) -> bool:
    """``compact="auto"`` -> off on ``"cpu"``, on elsewhere (inside the compiled loop, where
    ``loop="auto"`` puts the steps there).

    Args:
        compact: ``True``, ``False`` or ``"auto"`` (see ``FingerprintConfig.compact``).
        platform: where the run goes (:func:`generation_platform`).

    Returns:
        Whether to compact; an explicit bool as it is.

    Raises:
        ValueError: any other value.

    Example:
        >>> resolve_compact("auto", "cpu"), resolve_compact("auto", "tpu")
        (False, True)
        >>> resolve_compact(True, "cpu")
        True
    """
    if isinstance(compact, bool):
        return compact
    if compact == "auto":
        return platform != "cpu"
    raise ValueError(f'compact must be True, False or "auto", got {compact!r}')
