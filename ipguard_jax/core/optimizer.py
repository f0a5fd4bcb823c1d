"""The batched point optimiser: one step, a loop of steps, and the final measurement.

Everything here is a pure, jittable function of arrays and static callables: no Python side
effects, no host round-trips, no global state. Call it inside your own ``jax.jit``, ``vmap``,
``shard_map`` or training loop (say, to fingerprint every checkpoint). :func:`ipguard_jax.generate`
is the convenience layer on top (chunking, refills, progress, provenance).

For an owner classifier with logits ``Z``, a point ``x``, runner-up label ``i`` and target ``j``::

    L(x) = ReLU(Z_i(x) - Z_j(x) + k) + ReLU(max_{t != i, j} Z_t(x) - Z_i(x))

``L(x) == 0`` means the classifier predicts ``j`` with a logit margin of at least ``k`` over ``i``,
and ``i`` beats every other class: ``x`` lies just across the ``i``/``j`` boundary.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from ipguard_jax import core
    >>> w = jnp.eye(4)                                   # logits = x @ w, 4 classes
    >>> apply_fn = lambda params, x: x @ params
    >>> x0 = jnp.array([[0.9, 0.5, 0.1, 0.0]])
    >>> result = core.optimize_points(
    ...     apply_fn, w, x0, i=jnp.array([0]), j=jnp.array([1]), k=0.2,
    ...     optimizer=optax.adam(0.01), steps=500)
    >>> bool(result.converged[0]), int(result.logits[0].argmax())
    (True, 1)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from ipguard_jax.core.objectives import IPGUARD, Objective

ApplyFn = Callable[[Any, jax.Array], jax.Array]


class PointState(NamedTuple):
    """State of a batch of points under optimisation (a pytree; every leaf has a leading B axis).

    Attributes:
        x: ``(B, *input_shape)`` the optimisation variable of each point: the point itself, or
            its encoding when the objective has a ``decode`` (then the input is ``decode(x)``).
        opt_state: the optimiser state of each point (``vmap`` of ``optimizer.init``).
        loss: ``(B,)`` loss measured at the start of the last step (``inf`` before the first).
        done: ``(B,)`` bool; a done point no longer moves and its state is frozen.
        steps: ``(B,)`` int32 number of updates applied to each point.
        best_x: ``(B, *input_shape)`` the best successful input seen, for objectives with a
            ``score``; ``None`` otherwise.
        best_score: ``(B,)`` its score (``inf`` while none succeeded); ``None`` without a score.
    """
    x: jax.Array
    opt_state: Any
    loss: jax.Array
    done: jax.Array
    steps: jax.Array
    best_x: jax.Array | None = None
    best_score: jax.Array | None = None


class OptimizeResult(NamedTuple):
    """Outcome of :func:`optimize_points`; every field has a leading ``B`` axis.

    Attributes:
        x: ``(B, *input_shape)`` final points (inputs, decoded), inside the bounds.
        loss: ``(B,)`` loss at the final points.
        converged: ``(B,)`` bool: the objective's success test at the final points (for IPGuard
            ``loss <= tol``).
        steps: ``(B,)`` int32 number of updates applied.
        logits: ``(B, C)`` the classifier's logits at the final points.
    """
    x: jax.Array
    loss: jax.Array
    converged: jax.Array
    steps: jax.Array
    logits: jax.Array


def select_points(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """Per point: ``new`` where ``mask`` else ``old`` (mask ``(B,)``, leaves ``(B, ...)``).

    Example:
        >>> import jax.numpy as jnp
        >>> select_points(jnp.array([True, False]), jnp.ones((2, 2)), jnp.zeros((2, 2))).tolist()
        [[1.0, 1.0], [0.0, 0.0]]
    """
    mask = mask.reshape(mask.shape + (1,) * (new.ndim - mask.ndim))
    return jnp.where(mask, new, old)


def _context(i, j, extra, k, tol, hyper):
    point = {"i": i, "j": j, **(extra or {})}
    return point, {"k": k, "tol": tol, **(hyper or {})}


def _decode(objective: Objective, v: jax.Array, bounds) -> jax.Array:
    return v if objective.decode is None else objective.decode(v, *bounds)


def encode_points(objective: Objective, x: jax.Array,
                  bounds: tuple[ArrayLike, ArrayLike] = (0.0, 1.0)) -> jax.Array:
    """The optimisation variable that starts at inputs ``x`` (``x`` itself without a decode).

    Args:
        objective: the objective; its ``encode`` (if any) maps inputs to variables.
        x: ``(B, *input_shape)`` start inputs; they are projected onto ``bounds`` first.
        bounds: ``(lo, hi)`` of the input box.

    Returns:
        ``(B, *input_shape)`` start variables for :func:`init_points`, in the dtype of ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import core
        >>> core.encode_points(core.IPGUARD, jnp.array([[1.5, -0.2, 0.5]])).tolist()
        [[1.0, 0.0, 0.5]]
    """
    x = optax.projections.projection_box(x, *bounds)
    return x if objective.encode is None else objective.encode(x, *bounds).astype(x.dtype)


def init_points(optimizer: optax.GradientTransformation, x0: jax.Array,
                active: jax.Array | None = None, objective: Objective = IPGUARD) -> PointState:
    """Starts the optimisation of a batch of points at ``x0``: one optimiser state per point.

    Args:
        optimizer: the optax transformation; each point gets its own state.
        x0: ``(B, *input_shape)`` start variables (see :func:`encode_points` for objectives
            with a change of variables).
        active: ``(B,)`` bool, default all: the points to optimise; the others start done and
            never move (e.g. padding that fills up the last batch).
        objective: the objective; one with a ``score`` also gets best-iterate tracking.

    Returns:
        The initial :class:`PointState`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ipguard_jax import core
        >>> state = core.init_points(optax.adam(0.01), jnp.zeros((2, 3)),
        ...                            active=jnp.array([True, False]))
        >>> state.done.tolist(), state.steps.tolist(), state.loss.tolist()
        ([False, True], [0, 0], [inf, inf])
    """
    num_points = x0.shape[0]
    done = jnp.zeros((num_points,), bool) if active is None else ~active.astype(bool)
    tracked = objective.score is not None
    return PointState(
        x=x0,
        opt_state=jax.vmap(optimizer.init)(x0),
        loss=jnp.full((num_points,), jnp.inf, jnp.float32),
        done=done,
        steps=jnp.zeros((num_points,), jnp.int32),
        best_x=jnp.zeros_like(x0) if tracked else None,
        best_score=jnp.full((num_points,), jnp.inf, jnp.float32) if tracked else None,
    )


def _per_point(fn, *args):
    """``fn`` of one point, over a batch: every argument batched but the last (``hyper``)."""
    return jax.vmap(fn, in_axes=(0,) * (len(args) - 1) + (None,))(*args)


def _succeeded(objective, losses, logits, x, point, hyper):
    if objective.succeeded is None:
        return losses <= hyper["tol"]
    return _per_point(objective.succeeded, losses, logits, x, point, hyper)


def _evaluate(objective, apply_fn, params, x, point, hyper):
    """Per-point losses, logits and success flags at inputs ``x``."""
    logits = apply_fn(params, x)
    losses = _per_point(objective.loss, logits, x, point, hyper)
    return losses, logits, _succeeded(objective, losses, logits, x, point, hyper)


def _measure(objective, apply_fn, params, v, point, hyper, bounds):
    """Per-point losses, success flags, logits and inputs at variables ``v``, and the
    gradient of the losses w.r.t. ``v``."""
    def total(v):
        x = _decode(objective, v, bounds)
        logits = apply_fn(params, x)
        losses = _per_point(objective.loss, logits, x, point, hyper)
        return losses.sum(), (losses, logits, x)

    (_, (losses, logits, x)), grad = jax.value_and_grad(total, has_aux=True)(v)
    return losses, grad, logits, x, _succeeded(objective, losses, logits, x, point, hyper)


def loss_and_grad(
    apply_fn: ApplyFn, params: Any, x: jax.Array, i: jax.Array, j: jax.Array, k: ArrayLike,
    *, objective: Objective = IPGUARD, extra: dict[str, jax.Array] | None = None,
    hyper: dict[str, ArrayLike] | None = None, tol: ArrayLike = 0.0,
    bounds: tuple[ArrayLike, ArrayLike] = (0.0, 1.0),
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-point losses, their gradients w.r.t. the points, and the logits, in one pass.

    The batch runs through ``apply_fn`` as one batch; since examples do not interact in an
    evaluation-mode classifier, the gradient of the summed loss is each point's own gradient.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``, batched over the leading axis.
        params: the classifier's parameters (a pytree).
        x: ``(B, *input_shape)`` the optimisation variables (inputs, unless the objective has
            a ``decode``).
        i: ``(B,)`` runner-up labels.
        j: ``(B,)`` target labels.
        k: margin.
        objective: what to measure (default :data:`IPGUARD`).
        extra: more per-point values for the objective (leading ``B`` axis).
        hyper: more batch-wide scalars for the objective.
        tol: success tolerance, passed to the objective as ``hyper["tol"]``.
        bounds: ``(lo, hi)`` of the input box (used by a ``decode``).

    Returns:
        ``(loss (B,), grad (B, *input_shape), logits (B, C))``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import core
        >>> loss, grad, logits = core.loss_and_grad(
        ...     lambda p, x: x @ p, jnp.eye(3), jnp.array([[0.75, 0.25, 0.0]]),
        ...     jnp.array([0]), jnp.array([1]), k=0.5)
        >>> loss.tolist(), grad.tolist()
        ([1.0], [[1.0, -1.0, 0.0]])
    """
    point, hyper = _context(i, j, extra, k, tol, hyper)
    losses, grad, logits, _, _ = _measure(objective, apply_fn, params, x, point, hyper, bounds)
    return losses, grad, logits


def step_points(
    apply_fn: ApplyFn,
    params: Any,
    state: PointState,
    i: jax.Array,
    j: jax.Array,
    *,
    k: ArrayLike,
    optimizer: optax.GradientTransformation,
    tol: ArrayLike = 0.0,
    bounds: tuple[ArrayLike, ArrayLike] = (0.0, 1.0),
    enabled: ArrayLike = True,
    objective: Objective = IPGUARD,
    extra: dict[str, jax.Array] | None = None,
    hyper: dict[str, ArrayLike] | None = None,
) -> PointState:
    """One optimisation step of a batch of points.

    Measures each point's loss; a point that has succeeded (for IPGuard: loss ``<= tol``)
    becomes done and keeps its ``x`` and optimiser state from then on (unless the objective
    runs points to the end of their budget). Every other point takes one optimiser step (its
    own state, ``vmap`` over points, so transformations that look at the whole update, such as
    gradient clipping or sign steps, act per point), is projected by the objective's
    ``constrain`` and then back onto the input box ``bounds``.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``, batched over the leading axis.
        params: the classifier's parameters (a pytree).
        state: the points' state, from :func:`init_points` or a previous step.
        i: ``(B,)`` runner-up labels (the owner's labels at the start points).
        j: ``(B,)`` target labels.
        k: margin.
        optimizer: any optax ``GradientTransformation``.
        tol: with the IPGuard objective, a point with loss ``<= tol`` stops.
        bounds: ``(lo, hi)`` of the input box (scalars or arrays broadcastable to a point).
        enabled: a (traced) bool, scalar or ``(B,)``; where False the step moves no point (it
            still measures the loss), which lets a fixed block of unrolled steps end at any
            step budget.
        objective: what to minimise (default :data:`IPGUARD`).
        extra: more per-point values for the objective (leading ``B`` axis), e.g. ``origin``.
        hyper: more batch-wide scalars for the objective, e.g. ``eps``.

    Returns:
        The next :class:`PointState`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ipguard_jax import core
        >>> sgd = optax.sgd(0.25)
        >>> state = core.init_points(sgd, jnp.array([[0.75, 0.25, 0.0]]))
        >>> state = core.step_points(lambda p, x: x @ p, jnp.eye(3), state, jnp.array([0]),
        ...                            jnp.array([1]), k=0.5, optimizer=sgd)
        >>> state.x.tolist(), state.loss.tolist(), state.steps.tolist()
        ([[0.5, 0.5, 0.0]], [1.0], [1])
    """
    point, hyper = _context(i, j, extra, k, tol, hyper)
    losses, grads, logits, x, ok = _measure(objective, apply_fn, params, state.x, point, hyper,
                                            bounds)
    done = (state.done | ok) if objective.stop_on_success else state.done
    active = ~done & enabled
    updates, new_opt_state = jax.vmap(optimizer.update)(grads, state.opt_state, state.x)
    new_v = optax.apply_updates(state.x, updates)
    if objective.constrain is not None:
        new_v = _per_point(objective.constrain, new_v, point, hyper)
    if objective.decode is None:
        new_v = optax.projections.projection_box(new_v, *bounds)
    best_x, best_score = state.best_x, state.best_score
    if objective.score is not None:
        score = _per_point(objective.score, losses, logits, x, point, hyper)
        better = ~state.done & ok & (score < best_score)
        best_x = select_points(better, x, best_x)
        best_score = jnp.where(better, score.astype(best_score.dtype), best_score)
    return PointState(
        x=select_points(active, new_v.astype(state.x.dtype), state.x),
        opt_state=jax.tree.map(lambda new, old: select_points(active, new, old),
                               new_opt_state, state.opt_state),
        loss=losses,
        done=done,
        steps=state.steps + active.astype(jnp.int32),
        best_x=best_x,
        best_score=best_score,
    )


def optimize_points(
    apply_fn: ApplyFn,
    params: Any,
    x0: jax.Array,
    i: jax.Array,
    j: jax.Array,
    *,
    k: ArrayLike,
    optimizer: optax.GradientTransformation,
    steps: ArrayLike,
    tol: ArrayLike = 0.0,
    bounds: tuple[ArrayLike, ArrayLike] = (0.0, 1.0),
    active: jax.Array | None = None,
    objective: Objective = IPGUARD,
    extra: dict[str, jax.Array] | None = None,
    hyper: dict[str, ArrayLike] | None = None,
) -> OptimizeResult:
    """Optimises a batch of points towards the ``i``/``j`` boundaries, all inside one loop.

    A ``lax.while_loop`` runs at most ``steps`` steps of :func:`step_points` and stops early once
    every point is done, so a batch that converges fast costs only the steps it needs. ``steps``,
    ``k``, ``tol`` and ``bounds`` may be traced values: sweeping them does not recompile.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``, batched over the leading axis.
        params: the classifier's parameters (a pytree).
        x0: ``(B, *input_shape)`` start points (projected onto the bounds first).
        i: ``(B,)`` runner-up labels.
        j: ``(B,)`` target labels, ``j != i``.
        k: margin.
        optimizer: any optax ``GradientTransformation``; each point gets its own state.
        steps: the most optimisation steps per point.
        tol: a point with loss ``<= tol`` stops and counts as converged.
        bounds: ``(lo, hi)`` of the input box.
        active: ``(B,)`` bool, the points to optimise (default all); inactive points (padding)
            never move and do not keep the loop running.
        objective: what to minimise (default :data:`IPGUARD`); see :class:`Objective`.
        extra: more per-point values for the objective (leading ``B`` axis).
        hyper: more batch-wide scalars for the objective.

    Returns:
        An :class:`OptimizeResult` with the final points, losses, convergence flags, steps taken
        and the logits at the final points.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ipguard_jax import core
        >>> result = core.optimize_points(
        ...     lambda p, x: x @ p, jnp.eye(3), jnp.array([[0.75, 0.25, 0.0]]),
        ...     jnp.array([0]), jnp.array([1]), k=0.5, optimizer=optax.sgd(0.25), steps=100)
        >>> result.x.tolist(), result.converged.tolist(), result.steps.tolist()
        ([[0.25, 0.75, 0.0]], [True], [2])
    """
    state = init_points(optimizer, encode_points(objective, x0, bounds), active, objective)
    common = dict(k=k, tol=tol, bounds=bounds, objective=objective, extra=extra, hyper=hyper)

    def cond(carry):
        t, state = carry
        return (t < steps) & ~jnp.all(state.done)

    def body(carry):
        t, state = carry
        return t + 1, step_points(apply_fn, params, state, i, j, optimizer=optimizer, **common)

    _, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))
    return finish_points(apply_fn, params, state, i, j, **common)


def run_steps(
    apply_fn: ApplyFn,
    params: Any,
    state: PointState,
    i: jax.Array,
    j: jax.Array,
    *,
    k: ArrayLike,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    max_steps: ArrayLike | None = None,
    tol: ArrayLike = 0.0,
    bounds: tuple[ArrayLike, ArrayLike] = (0.0, 1.0),
    objective: Objective = IPGUARD,
    extra: dict[str, jax.Array] | None = None,
    hyper: dict[str, ArrayLike] | None = None,
) -> PointState:
    """``num_steps`` steps of :func:`step_points`, unrolled: no loop construct in the program.

    XLA's CPU backend runs convolutions inside a loop body several times slower than outside
    one (jax-ml/jax#12868; ResNet-20 input gradients measured here: ~65 vs ~300 images/s), so on
    CPU the step loop is better driven from the host in unrolled blocks.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``, batched over the leading axis.
        params: the classifier's parameters (a pytree).
        state: the points' state, from :func:`init_points` or a previous block.
        i: ``(B,)`` runner-up labels.
        j: ``(B,)`` target labels.
        k: margin.
        optimizer: any optax ``GradientTransformation``.
        num_steps: steps in the block (static: the program grows with it).
        max_steps: a point that has taken ``max_steps`` steps (its own count, ``state.steps``)
            moves no more (a traced value; default no cap). Points that start together reach
            it together, which makes blocks end exactly at a step budget; points refilled
            into a batch later keep their own budget.
        tol: with the IPGuard objective, a point with loss ``<= tol`` stops.
        bounds: ``(lo, hi)`` of the input box.
        objective: what to minimise (default :data:`IPGUARD`).
        extra: more per-point values for the objective (leading ``B`` axis).
        hyper: more batch-wide scalars for the objective.

    Returns:
        The :class:`PointState` after the block.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ipguard_jax import core
        >>> sgd = optax.sgd(0.25)
        >>> state = core.init_points(sgd, jnp.array([[0.75, 0.25, 0.0]]))
        >>> state = core.run_steps(lambda p, x: x @ p, jnp.eye(3), state, jnp.array([0]),
        ...                          jnp.array([1]), k=0.5, optimizer=sgd, num_steps=4,
        ...                          max_steps=100)
        >>> state.done.tolist(), state.steps.tolist()  # done after 2 steps; the rest wait
        ([True], [2])
    """
    def one(state, _):
        enabled = True if max_steps is None else state.steps < max_steps
        return step_points(apply_fn, params, state, i, j, k=k, optimizer=optimizer, tol=tol,
                           bounds=bounds, enabled=enabled, objective=objective, extra=extra,
                           hyper=hyper), None

    if num_steps == 0:
        return state
    # A scan unrolled in full: the step is traced once (a second process with the compiled
    # program in its cache only traces), and the program has no loop construct.
    state, _ = jax.lax.scan(one, state, None, length=num_steps, unroll=True)
    return state


def finish_points(apply_fn: ApplyFn, params: Any, state: PointState, i: jax.Array,
                  j: jax.Array, *, k: ArrayLike, tol: ArrayLike = 0.0,
                  bounds: tuple[ArrayLike, ArrayLike] = (0.0, 1.0),
                  objective: Objective = IPGUARD, extra: dict[str, jax.Array] | None = None,
                  hyper: dict[str, ArrayLike] | None = None) -> OptimizeResult:
    """Measures the final points once more (the last step's moves are not yet measured).

    With a ``score`` in the objective, a point's result is its best successful iterate when
    that beats the final one.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``, batched over the leading axis.
        params: the classifier's parameters (a pytree).
        state: the points' state after the last step (:func:`step_points`,
            :func:`run_steps`).
        i: ``(B,)`` runner-up labels.
        j: ``(B,)`` target labels.
        k: margin.
        tol: with the IPGuard objective, a point with loss ``<= tol`` has converged.
        bounds: ``(lo, hi)`` of the input box (used by a ``decode``).
        objective: the objective the points were optimised for (default :data:`IPGUARD`).
        extra: more per-point values for the objective (leading ``B`` axis).
        hyper: more batch-wide scalars for the objective.

    Returns:
        An :class:`OptimizeResult`, as from :func:`optimize_points`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ipguard_jax import core
        >>> sgd = optax.sgd(0.25)
        >>> state = core.init_points(sgd, jnp.array([[0.25, 0.75, 0.0]]))
        >>> result = core.finish_points(lambda p, x: x @ p, jnp.eye(3), state, jnp.array([0]),
        ...                               jnp.array([1]), k=0.5)
        >>> result.loss.tolist(), result.converged.tolist(), result.steps.tolist()
        ([0.0], [True], [0])
    """
    point, hyper = _context(i, j, extra, k, tol, hyper)
    x = _decode(objective, state.x, bounds)
    losses, logits, ok = _evaluate(objective, apply_fn, params, x, point, hyper)
    if objective.score is not None:
        score = _per_point(objective.score, losses, logits, x, point, hyper)
        use_best = state.best_score < jnp.where(ok, score, jnp.inf)
        x = select_points(use_best, state.best_x, x)
        losses, logits, ok = _evaluate(objective, apply_fn, params, x, point, hyper)
    return OptimizeResult(x=x, loss=losses, converged=ok, steps=state.steps, logits=logits)


class PointOptimizer(NamedTuple):
    """The batched optimiser closed over one model, objective, step rule and settings.

    Built by :func:`point_optimizer`; each field is a pure function (jittable, no state of its
    own), so code that drives the optimisation passes one value instead of a dozen keywords.

    Attributes:
        init: ``init(x0, active=None) -> PointState``: start at inputs ``x0`` (projected onto
            the bounds, encoded when the objective has a change of variables).
        step: ``step(params, state, i, j, extra=None, enabled=True) -> PointState``: one step.
        run: ``run(params, state, i, j, num_steps, extra=None, max_steps=None) -> PointState``:
            ``num_steps`` unrolled steps (:func:`run_steps`).
        finish: ``finish(params, state, i, j, extra=None) -> OptimizeResult``: the final
            measurement (:func:`finish_points`).
        optimize: ``optimize(params, x0, i, j, steps, extra=None, active=None) ->
            OptimizeResult``: the whole loop on device (:func:`optimize_points`).
    """
    init: Callable[..., PointState]
    step: Callable[..., PointState]
    run: Callable[..., PointState]
    finish: Callable[..., OptimizeResult]
    optimize: Callable[..., OptimizeResult]


def point_optimizer(apply_fn: ApplyFn, objective: Objective = IPGUARD,
                    optimizer: optax.GradientTransformation | None = None, *, k: ArrayLike,
                    tol: ArrayLike = 0.0, bounds: tuple[ArrayLike, ArrayLike] = (0.0, 1.0),
                    hyper: dict[str, ArrayLike] | None = None) -> PointOptimizer:
    """The functions of this module with the model, objective, step rule and settings fixed.

    In the style of optax: a factory returns a tuple of pure functions. Call it inside a
    ``jax.jit`` when ``k``, ``tol``, ``bounds``, ``hyper`` or the step size of ``optimizer``
    are traced values; the functions then close over them.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``, batched over the leading axis.
        objective: what to minimise (default :data:`IPGUARD`).
        optimizer: the optax transformation (default ``optax.adam(0.01)``).
        k: margin.
        tol: success tolerance (``hyper["tol"]`` for the objective).
        bounds: ``(lo, hi)`` of the input box.
        hyper: more batch-wide values for the objective.

    Returns:
        A :class:`PointOptimizer`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> opt = point_optimizer(lambda p, x: x @ p, optimizer=optax.sgd(0.25), k=0.5)
        >>> state = opt.init(jnp.array([[0.75, 0.25, 0.0]]))
        >>> state = opt.run(jnp.eye(3), state, jnp.array([0]), jnp.array([1]), num_steps=4)
        >>> result = opt.finish(jnp.eye(3), state, jnp.array([0]), jnp.array([1]))
        >>> result.converged.tolist(), result.steps.tolist()
        ([True], [2])
    """
    if optimizer is None:
        optimizer = optax.adam(0.01)
    common = dict(k=k, tol=tol, bounds=bounds, objective=objective, hyper=hyper)

    def init(x0, active=None):
        return init_points(optimizer, encode_points(objective, x0, bounds), active, objective)

    def step(params, state, i, j, extra=None, enabled=True):
        return step_points(apply_fn, params, state, i, j, optimizer=optimizer, enabled=enabled,
                           extra=extra, **common)

    def run(params, state, i, j, num_steps, extra=None, max_steps=None):
        return run_steps(apply_fn, params, state, i, j, optimizer=optimizer,
                         num_steps=num_steps, max_steps=max_steps, extra=extra, **common)

    def finish(params, state, i, j, extra=None):
        return finish_points(apply_fn, params, state, i, j, extra=extra, **common)

    def optimize(params, x0, i, j, steps, extra=None, active=None):
        return optimize_points(apply_fn, params, x0, i, j, optimizer=optimizer, steps=steps,
                               active=active, extra=extra, **common)

    return PointOptimizer(init, step, run, finish, optimize)
