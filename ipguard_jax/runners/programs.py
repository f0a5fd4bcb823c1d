"""The compiled programs every runner is made of: start a batch, advance it, finish it.

A run's static part, :class:`Spec` (the model function, the method's plan, the target rule),
keys the compiled code; its traced settings travel as one pytree ``sc`` (``k``, ``lr``,
``steps``, ``tol``, ``lo``, ``hi``, ``hyper``) and each batch's per-point values as one
:class:`Points`, so every program takes a handful of arguments.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ipguard_jax import core
from ipguard_jax.methods import Plan, make_optimizer

__all__ = ["Spec", "Points", "candidate_keys", "noise_points", "optimizer_for", "start",
           "advance", "finish", "run_chunk", "run_chunk_host_loop", "refill", "take"]


class Spec(NamedTuple):
    """The static part of a run (hashable: it keys the compiled programs).

    Attributes:
        apply_fn: the owner's ``apply_fn(params, x) -> logits`` (possibly low precision).
        plan: the method's :class:`~ipguard_jax.methods.Plan`.
        target: ``"random"`` or ``"least_likely"``.
    """
    apply_fn: Callable[[Any, jax.Array], jax.Array]
    plan: Plan
    target: str


class Points(NamedTuple):
    """Per-point values of a batch (a pytree; every leaf has a leading batch axis).

    Attributes:
        i: runner-up labels (the owner's label at the start point).
        j: target labels.
        extra: the objective's own per-point values (``"origin"``, CW's ``"c"``...).
        start_finite: whether the owner's logits at the start point were finite.
    """
    i: jax.Array
    j: jax.Array
    extra: dict[str, jax.Array]
    start_finite: jax.Array


def candidate_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
    """One key per candidate, by its global index: a candidate's draws do not depend on the
    batch it happens to run in."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, ids)


@functools.partial(jax.jit, static_argnames=("input_shape", "dtype"))
def noise_points(key, ids, lo, hi, *, input_shape, dtype):
    """Uniform start points in the box, one per candidate id (``init="noise"``)."""
    keys = candidate_keys(key, ids)
    draw = lambda kk: jax.random.uniform(jax.random.fold_in(kk, 0), input_shape, dtype, lo, hi)
    return jax.vmap(draw)(keys)


def optimizer_for(spec: Spec, sc: dict[str, Any]) -> core.PointOptimizer:
    """The run's :func:`~ipguard_jax.core.point_optimizer` (inside a trace: closes over ``sc``)."""
    return core.point_optimizer(spec.apply_fn, spec.plan.objective,
                                make_optimizer(spec.plan, sc["lr"]), k=sc["k"], tol=sc["tol"],
                                bounds=(sc["lo"], sc["hi"]), hyper=sc["hyper"])


def _targets(spec: Spec, params, x0, key, ids):
    start_logits = spec.apply_fn(params, x0)
    target_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(candidate_keys(key, ids))
    i, j = core.choose_targets(start_logits, target_keys, spec.target)
    return i, j, jnp.all(jnp.isfinite(start_logits), axis=-1)


def _outputs(result: core.OptimizeResult, points: Points) -> dict[str, jax.Array]:
    finite = points.start_finite & jnp.all(jnp.isfinite(result.logits), axis=-1)
    return dict(x=result.x, labels=jnp.argmax(result.logits, -1).astype(jnp.int32),
                i=points.i, j=points.j, loss=result.loss, converged=result.converged,
                steps=result.steps, finite=finite)


def _prepare(spec: Spec, params, sc, x0, key, ids, extra_in):
    """Targets, the objective's per-point values and the (randomly perturbed) start points."""
    plan, lo, hi, hyper = spec.plan, sc["lo"], sc["hi"], sc["hyper"]
    i, j, start_finite = _targets(spec, params, x0, key, ids)
    x0 = optax.projections.projection_box(x0, lo, hi)
    extra = dict(extra_in)
    if plan.uses_origin:
        extra["origin"] = x0
    if plan.perturb is not None:
        keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 2))(candidate_keys(key, ids))
        x0 = jax.vmap(plan.perturb, in_axes=(0, 0, None))(keys, x0, hyper)
        if plan.objective.constrain is not None:
            x0 = jax.vmap(plan.objective.constrain, in_axes=(0, 0, None))(x0, extra, hyper)
        x0 = optax.projections.projection_box(x0, lo, hi)
    return Points(i, j, extra, start_finite), x0


@functools.partial(jax.jit, static_argnames=("spec",))
def run_chunk(spec: Spec, params, sc, x0, key, ids, valid, extra_in):
    """One chunk, the whole optimisation loop on device (``lax.while_loop``)."""
    points, x0 = _prepare(spec, params, sc, x0, key, ids, extra_in)
    result = optimizer_for(spec, sc).optimize(params, x0, points.i, points.j, sc["steps"],
                                              extra=points.extra, active=valid)
    return _outputs(result, points)


@functools.partial(jax.jit, static_argnames=("spec",))
def start(spec: Spec, params, sc, x0, key, ids, valid, extra_in):
    """A batch's per-point values and its initial optimiser state."""
    points, x0 = _prepare(spec, params, sc, x0, key, ids, extra_in)
    return points, optimizer_for(spec, sc).init(x0, valid)


@functools.partial(jax.jit, static_argnames=("spec", "num_steps"))
def advance(spec: Spec, num_steps: int, params, sc, points: Points, state):
    """``num_steps`` unrolled steps (each point stops at its own step budget); and whether
    every point is done."""
    state = optimizer_for(spec, sc).run(params, state, points.i, points.j, num_steps,
                                        extra=points.extra, max_steps=sc["steps"])
    return state, jnp.all(state.done)


@functools.partial(jax.jit, static_argnames=("spec",))
def finish(spec: Spec, params, sc, points: Points, state):
    """The batch's outputs: final points, owner labels, losses, convergence, steps."""
    result = optimizer_for(spec, sc).finish(params, state, points.i, points.j,
                                            extra=points.extra)
    return _outputs(result, points)


def run_chunk_host_loop(spec: Spec, block: int, params, sc, x0, key, ids, valid, extra_in,
                        stats: dict[str, int] | None = None):
    """One chunk, the step loop driven from the host in unrolled blocks of ``block`` steps.

    Same steps, same results as :func:`run_chunk`; XLA's CPU backend runs convolutions inside
    a loop body several times slower (see :func:`ipguard_jax.core.run_steps`). ``stats``, if
    given, counts the programs launched, the host's waits on the device, the step blocks and
    the point-steps they executed (every row of every block, done or not).
    """
    stats = {} if stats is None else stats
    count = lambda name, n=1: stats.__setitem__(name, stats.get(name, 0) + n)
    points, state = start(spec, params, sc, x0, key, ids, valid, extra_in)
    count("programs")
    for _ in range(0, int(sc["steps"]), block):
        state, all_done = advance(spec, block, params, sc, points, state)
        count("programs")
        count("syncs")
        count("blocks")
        count("point_steps", block * x0.shape[0])
        if bool(all_done):
            break
    count("programs")
    return finish(spec, params, sc, points, state)


@functools.partial(jax.jit, static_argnames=("spec",))
def refill(spec: Spec, params, sc, points: Points, state, x0, key, ids, fresh, retire):
    """Puts new candidates into the ``fresh`` slots; ``retire`` slots stop for good."""
    new_points, new_state = start(spec, params, sc, x0, key, ids, fresh, {})
    pick = lambda new, old: core.select_points(fresh, new, old)
    state = jax.tree.map(pick, new_state, state)
    state = state._replace(done=state.done | retire)
    return jax.tree.map(pick, new_points, points), state


@jax.jit
def take(points: Points, state, index, valid):
    """Rows ``index`` of every batch-leading leaf; rows where ``valid`` is False are done."""
    points, state = jax.tree.map(lambda a: a[index], (points, state))
    return points, state._replace(done=state.done | ~valid)
