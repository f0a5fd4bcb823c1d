"""What the batched optimiser minimises: :class:`Objective` records and the step rules.

One engine runs IPGuard and every baseline: each is an :class:`Objective` (a per-point loss, a
success test, optional projection, change of variables and best-iterate score) plus an optax
step rule. All callables here are module-level, so objectives hash as static arguments of
compiled functions.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ipguard_jax.core.loss import ipguard_loss

__all__ = ["Objective", "IPGUARD", "RANDOM_OBJECTIVE", "UNTARGETED_LINF", "UNTARGETED_L2",
           "TARGETED_LINF", "TARGETED_L2", "CW_OBJECTIVE", "sign_step", "normalized_step", "random_start_linf",
           "random_start_l2"]


class Objective(NamedTuple):
    """What the batched optimiser minimises per point, and when a point has succeeded.

    The optimiser below is one engine for several objectives: IPGuard's boundary loss (the
    default, :data:`IPGUARD`) and the adversarial baselines in :mod:`ipguard_jax.baselines`
    (FGSM, PGD, Carlini-Wagner). Every callable acts on **one point** (the engine ``vmap``-s it)
    and must be a module-level function or otherwise hashable, since objectives are static
    arguments of compiled functions.

    ``point`` is a dict of that point's own values (``"i"``, ``"j"`` and whatever ``extra`` the
    caller passes, e.g. ``"origin"``, the start point); ``hyper`` a dict of scalars shared by the
    batch (``"k"``, ``"tol"`` and the caller's ``hyper``); both may be traced.

    Attributes:
        loss: ``loss(logits (C,), x (*input_shape), point, hyper) -> scalar`` to minimise.
        succeeded: ``(loss, logits, x, point, hyper) -> bool``; ``None`` means
            ``loss <= hyper["tol"]``. It is the ``converged`` flag of the result.
        stop_on_success: a point that has succeeded stops moving (IPGuard); otherwise it runs
            its whole step budget (PGD, CW).
        constrain: ``(x, point, hyper) -> x``, a projection applied after each update and
            before the projection onto the input box (e.g. onto an eps-ball around
            ``point["origin"]``); ``None`` for none.
        decode: ``(v, lo, hi) -> x``, a change of variables: the optimiser moves ``v`` and the
            classifier sees ``decode(v)`` (CW's tanh box); ``None`` means ``v`` is the input.
        encode: the inverse of ``decode``, used to start from given points.
        score: ``(loss, logits, x, point, hyper) -> scalar``; when given, the engine keeps for
            each point the successful iterate of lowest score seen (CW keeps its least
            distorted success) and returns it instead of the last iterate.

    Example:
        An objective that pushes each point towards class ``j`` by cross-entropy:

        >>> import jax
        >>> from ipguard_jax import core
        >>> def to_target(logits, x, point, hyper):
        ...     return -jax.nn.log_softmax(logits)[point["j"]]
        >>> objective = core.Objective(loss=to_target, stop_on_success=False)
        >>> objective.succeeded is None, objective.stop_on_success
        (True, False)
    """
    loss: Callable[..., jax.Array]
    succeeded: Callable[..., jax.Array] | None = None
    stop_on_success: bool = True
    constrain: Callable[..., jax.Array] | None = None
    decode: Callable[..., jax.Array] | None = None
    encode: Callable[..., jax.Array] | None = None
    score: Callable[..., jax.Array] | None = None


def _ipguard_objective_loss(logits, x, point, hyper):
    del x
    return ipguard_loss(logits, point["i"], point["j"], hyper["k"])


#: The IPGuard objective: :func:`ipguard_loss`, success at ``loss <= tol``, stop on success.
IPGUARD = Objective(loss=_ipguard_objective_loss)


# --- step rules --------------------------------------------------------------------------------

def sign_step(step_size: Any) -> optax.GradientTransformation:
    """Gradient descent on the sign of the gradient: ``update = -step_size * sign(g)``.

    The L-inf steepest-descent step of FGSM and PGD. Stateless; ``step_size`` may be traced.

    Args:
        step_size: the size of every coordinate's step (a number or a traced scalar).

    Returns:
        An optax ``GradientTransformation`` with an empty state.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax.methods import sign_step
        >>> opt = sign_step(0.5)
        >>> updates, _ = opt.update(jnp.array([0.1, -3.0]), opt.init(None))
        >>> updates.tolist()
        [-0.5, 0.5]
    """
    def update(grads, state, params=None):
        del params
        return jax.tree.map(lambda g: -step_size * jnp.sign(g), grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def normalized_step(step_size: Any) -> optax.GradientTransformation:
    """Gradient descent along the unit L2 direction: ``update = -step_size * g / ||g||_2``.

    The L2 steepest-descent step of PGD-L2; the norm is over the whole update (per point when
    the engine ``vmap``-s it). A zero gradient gives a zero step.

    Args:
        step_size: the L2 length of every step (a number or a traced scalar).

    Returns:
        An optax ``GradientTransformation`` with an empty state.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax.methods import normalized_step
        >>> opt = normalized_step(5.0)
        >>> updates, _ = opt.update(jnp.array([3.0, 4.0]), opt.init(None))
        >>> updates.tolist()
        [-3.0, -4.0]
    """
    def update(grads, state, params=None):
        del params
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        scale = jnp.where(norm > 0, step_size / jnp.where(norm > 0, norm, 1.0), 0.0)
        return jax.tree.map(lambda g: -scale * g, grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# --- objectives (per point; module-level so they hash as static arguments) ---------------------

def _zero_loss(logits, x, point, hyper):
    del x, point, hyper
    return jnp.zeros((), jnp.promote_types(logits.dtype, jnp.float32))


def _always(loss, logits, x, point, hyper):
    del loss, logits, x, point, hyper
    return jnp.ones((), bool)


def _log_probs(logits):
    return jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))


def _untargeted_loss(logits, x, point, hyper):
    del x, hyper
    return _log_probs(logits)[point["i"]]  # minimising it maximises the cross-entropy at i


def _untargeted_success(loss, logits, x, point, hyper):
    del loss, x, hyper
    return jnp.argmax(logits) != point["i"]


def _targeted_loss(logits, x, point, hyper):
    del x, hyper
    return -_log_probs(logits)[point["j"]]  # the cross-entropy at the target j


def _targeted_success(loss, logits, x, point, hyper):
    del loss, x, hyper
    return jnp.argmax(logits) == point["j"]


def _linf_ball(x, point, hyper):
    origin, eps = point["origin"], hyper["eps"]
    return jnp.clip(x, origin - eps, origin + eps)


def _l2_ball(x, point, hyper):
    delta = x - point["origin"]
    norm = jnp.sqrt(jnp.sum(jnp.square(delta)))
    factor = jnp.minimum(1.0, hyper["eps"] / jnp.maximum(norm, 1e-12))
    return point["origin"] + delta * factor.astype(x.dtype)


def _cw_margin(logits, point):
    """``Z_j - max_{t != j} Z_t``: how far the target leads."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    j = point["j"]
    others = jnp.where(jnp.arange(logits.shape[-1]) == j, -jnp.inf, logits)
    return logits[j] - jnp.max(others)


def _cw_distance(x, point):
    delta = (x - point["origin"]).astype(jnp.float32)
    return jnp.sum(jnp.square(delta))


def _cw_loss(logits, x, point, hyper):
    hinge = jax.nn.relu(hyper["kappa"] - _cw_margin(logits, point))
    return _cw_distance(x, point) + point["c"] * hinge


def _cw_success(loss, logits, x, point, hyper):
    del loss, x
    return (_cw_margin(logits, point) >= hyper["kappa"]) & (jnp.argmax(logits) == point["j"])


def _cw_score(loss, logits, x, point, hyper):
    del loss, logits, hyper
    return _cw_distance(x, point)


def _tanh_decode(v, lo, hi):
    return lo + (hi - lo) * (jnp.tanh(v) + 1) / 2


def _tanh_encode(x, lo, hi):
    unit = jnp.clip((x - lo) / jnp.where(hi > lo, hi - lo, 1.0) * 2 - 1, -1 + 1e-6, 1 - 1e-6)
    return jnp.arctanh(unit)


def random_start_linf(key, x, hyper):
    """A uniform random start in the L-inf ball of radius ``hyper["eps"]`` around ``x``."""
    return x + jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * hyper["eps"]


def random_start_l2(key, x, hyper):
    """A uniform random start in the L2 ball of radius ``hyper["eps"]`` around ``x``."""
    direction_key, radius_key = jax.random.split(key)
    direction = jax.random.normal(direction_key, x.shape, x.dtype)
    direction = direction / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(direction))), 1e-12)
    radius = hyper["eps"] * jax.random.uniform(radius_key, (), x.dtype) ** (1.0 / x.size)
    return x + radius * direction


RANDOM_OBJECTIVE = Objective(loss=_zero_loss, succeeded=_always)
UNTARGETED_LINF = Objective(_untargeted_loss, _untargeted_success, False, _linf_ball)
UNTARGETED_L2 = Objective(_untargeted_loss, _untargeted_success, False, _l2_ball)
TARGETED_LINF = Objective(_targeted_loss, _targeted_success, False, _linf_ball)
TARGETED_L2 = Objective(_targeted_loss, _targeted_success, False, _l2_ball)
CW_OBJECTIVE = Objective(loss=_cw_loss, succeeded=_cw_success, stop_on_success=False,
                         decode=_tanh_decode, encode=_tanh_encode, score=_cw_score)
