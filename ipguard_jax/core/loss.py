"""The IPGuard loss and the choice of each point's runner-up and target (pure, jittable).

For an owner classifier with logits ``Z``, a point ``x``, runner-up label ``i`` and target ``j``::

    L(x) = ReLU(Z_i(x) - Z_j(x) + k) + ReLU(max_{t != i, j} Z_t(x) - Z_i(x))

``L(x) == 0`` means the classifier predicts ``j`` with a logit margin of at least ``k`` over ``i``,
and ``i`` beats every other class: ``x`` lies just across the ``i``/``j`` boundary.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["ipguard_loss", "batched_ipguard_loss", "choose_targets", "Target"]

Target = Literal["random", "least_likely"]


def ipguard_loss(
    logits: jax.Array, i: ArrayLike, j: ArrayLike, k: ArrayLike
) -> jax.Array:
    """IPGuard loss of one example.

    The maximum over the other classes masks ``i`` and ``j`` with ``-inf`` (zeroing them instead,
    as some implementations do, is wrong when all other logits are negative). For a 2-class model
    there is no other class and the second term is 0.

    Args:
        logits: ``(C,)`` logits of one example, ``C >= 2``.
        i: the runner-up label (the owner's prediction at the start point).
        j: the target label, ``j != i``.
        k: the margin, in logit units, by which ``j`` must beat ``i``.

    Returns:
        A float32 (or wider) scalar, 0 exactly when the boundary conditions hold.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax.core import ipguard_loss
        >>> float(ipguard_loss(jnp.array([2.0, 1.0, 0.0]), i=0, j=1, k=0.5))  # 2 - 1 + 0.5
        1.5
        >>> float(ipguard_loss(jnp.array([2.0, 3.0, 0.0]), i=0, j=1, k=0.5))  # j leads by 1
        0.0
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    z_i, z_j = logits[i], logits[j]
    boundary = jax.nn.relu(z_i - z_j + k)
    num_classes = logits.shape[-1]
    if num_classes == 2:
        return boundary
    classes = jnp.arange(num_classes)
    others = jnp.where((classes == i) | (classes == j), -jnp.inf, logits)
    return boundary + jax.nn.relu(jnp.max(others) - z_i)


#: :func:`ipguard_loss` over a batch: ``(B, C), (B,), (B,), () -> (B,)``.
batched_ipguard_loss = jax.vmap(ipguard_loss, in_axes=(0, 0, 0, None))


def choose_targets(
    logits: jax.Array, key: jax.Array, target: Target = "random"
) -> tuple[jax.Array, jax.Array]:
    """Picks the runner-up ``i`` (the current prediction) and a target ``j != i`` per point.

    Args:
        logits: ``(B, C)`` logits at the start points.
        key: a PRNG key (used by ``target="random"``), either one key or ``(B,)`` keys, one per
            point; per-point keys make each point's draw independent of the batch it runs in.
        target: ``"random"`` draws ``j`` uniformly from the ``C - 1`` classes other than ``i``;
            ``"least_likely"`` takes the class with the lowest logit (the next class if that is
            ``i``, which happens only when all logits tie).

    Returns:
        ``(i, j)``, each ``(B,)`` int32.

    Raises:
        ValueError: ``target`` is neither ``"random"`` nor ``"least_likely"``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ipguard_jax.core import choose_targets
        >>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> i, j = choose_targets(logits, jax.random.key(0), target="least_likely")
        >>> i.tolist(), j.tolist()
        ([0, 2], [2, 0])
        >>> i, j = choose_targets(logits, jax.random.key(0))  # random j != i
        >>> bool((j != i).all())
        True
    """
    num_points, num_classes = logits.shape
    i = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if target == "random":
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        one_key = key.ndim == (0 if typed else 1)
        keys = jax.random.split(key, num_points) if one_key else key
        offset = jax.vmap(lambda kk: jax.random.randint(kk, (), 1, num_classes))(keys)
        j = (i + offset.astype(jnp.int32)) % num_classes
    elif target == "least_likely":
        j = jnp.argmin(logits, axis=-1).astype(jnp.int32)
        j = jnp.where(j == i, (i + 1) % num_classes, j)
    else:
        raise ValueError(f"target must be 'random' or 'least_likely', got {target!r}")
    return i, j
