"""The pure functional core: the IPGuard loss, one optimisation step, and a batched optimiser.

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
    >>> from ipguard_jax import engine
    >>> w = jnp.eye(4)                                   # logits = x @ w, 4 classes
    >>> apply_fn = lambda params, x: x @ params
    >>> x0 = jnp.array([[0.9, 0.5, 0.1, 0.0]])
    >>> result = engine.optimize_points(
    ...     apply_fn, w, x0, i=jnp.array([0]), j=jnp.array([1]), k=0.2,
    ...     optimizer=optax.adam(0.01), steps=500)
    >>> bool(result.converged[0]), int(result.logits[0].argmax())
    (True, 1)
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

ApplyFn = Callable[[Any, jax.Array], jax.Array]
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
        >>> from ipguard_jax.engine import ipguard_loss
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
        >>> from ipguard_jax import engine
        >>> def to_target(logits, x, point, hyper):
        ...     return -jax.nn.log_softmax(logits)[point["j"]]
        >>> objective = engine.Objective(loss=to_target, stop_on_success=False)
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
        >>> from ipguard_jax.engine import choose_targets
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


def _select_points(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """Per point: ``new`` where ``mask`` else ``old`` (mask ``(B,)``, leaves ``(B, ...)``)."""
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
        >>> from ipguard_jax import engine
        >>> engine.encode_points(engine.IPGUARD, jnp.array([[1.5, -0.2, 0.5]])).tolist()
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
        >>> from ipguard_jax import engine
        >>> state = engine.init_points(optax.adam(0.01), jnp.zeros((2, 3)),
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
        >>> from ipguard_jax import engine
        >>> loss, grad, logits = engine.loss_and_grad(
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
        >>> from ipguard_jax import engine
        >>> sgd = optax.sgd(0.25)
        >>> state = engine.init_points(sgd, jnp.array([[0.75, 0.25, 0.0]]))
        >>> state = engine.step_points(lambda p, x: x @ p, jnp.eye(3), state, jnp.array([0]),
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
        best_x = _select_points(better, x, best_x)
        best_score = jnp.where(better, score.astype(best_score.dtype), best_score)
    return PointState(
        x=_select_points(active, new_v.astype(state.x.dtype), state.x),
        opt_state=jax.tree.map(lambda new, old: _select_points(active, new, old),
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
        >>> from ipguard_jax import engine
        >>> result = engine.optimize_points(
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
        >>> from ipguard_jax import engine
        >>> sgd = optax.sgd(0.25)
        >>> state = engine.init_points(sgd, jnp.array([[0.75, 0.25, 0.0]]))
        >>> state = engine.run_steps(lambda p, x: x @ p, jnp.eye(3), state, jnp.array([0]),
        ...                          jnp.array([1]), k=0.5, optimizer=sgd, num_steps=4,
        ...                          max_steps=100)
        >>> state.done.tolist(), state.steps.tolist()  # done after 2 steps; the rest wait
        ([True], [2])
    """
    for _ in range(num_steps):
        enabled = True if max_steps is None else state.steps < max_steps
        state = step_points(apply_fn, params, state, i, j, k=k, optimizer=optimizer, tol=tol,
                            bounds=bounds, enabled=enabled, objective=objective, extra=extra,
                            hyper=hyper)
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
        >>> from ipguard_jax import engine
        >>> sgd = optax.sgd(0.25)
        >>> state = engine.init_points(sgd, jnp.array([[0.25, 0.75, 0.0]]))
        >>> result = engine.finish_points(lambda p, x: x @ p, jnp.eye(3), state, jnp.array([0]),
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
        x = _select_points(use_best, state.best_x, x)
        losses, logits, ok = _evaluate(objective, apply_fn, params, x, point, hyper)
    return OptimizeResult(x=x, loss=losses, converged=ok, steps=state.steps, logits=logits)
