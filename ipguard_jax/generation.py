"""``generate``: batched IPGuard fingerprint generation with chunking, refills and provenance."""

from __future__ import annotations

import datetime
import functools
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ipguard_jax import baselines, engine
from ipguard_jax._version import __version__
from ipguard_jax.classifier import Classifier
from ipguard_jax.config import FingerprintConfig
from ipguard_jax.fingerprints import Fingerprints


class ConvergenceWarning(RuntimeWarning):
    """Fewer points converged than asked for within the candidate budget."""


def as_key(key: Any) -> jax.Array:
    """Accepts an int seed, a typed PRNG key or a raw ``uint32[2]`` key; returns a typed key."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    raw = np.asarray(key)
    if raw.dtype == np.uint32 and raw.shape == (2,):
        return jax.random.wrap_key_data(raw)
    raise TypeError(f"key must be an int seed or a jax.random.key, got {type(key).__name__}")


def _key_record(key: jax.Array) -> dict[str, Any]:
    return {"impl": str(jax.random.key_impl(key)),
            "data": np.asarray(jax.random.key_data(key)).tolist()}


def _candidate_keys(key: jax.Array, ids: jax.Array) -> jax.Array:
    # One key per candidate, by its global index: a candidate's draws do not depend on the
    # batch it happens to run in.
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, ids)


@functools.partial(jax.jit, static_argnames=("input_shape", "dtype"))
def _noise_points(key, ids, lo, hi, *, input_shape, dtype):
    keys = _candidate_keys(key, ids)
    draw = lambda kk: jax.random.uniform(jax.random.fold_in(kk, 0), input_shape, dtype, lo, hi)
    return jax.vmap(draw)(keys)


def _targets(apply_fn, target, params, x0, key, ids):
    start_logits = apply_fn(params, x0)
    target_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(_candidate_keys(key, ids))
    i, j = engine.choose_targets(start_logits, target_keys, target)
    return i, j, jnp.all(jnp.isfinite(start_logits), axis=-1)


def _outputs(result, i, j, start_finite):
    finite = start_finite & jnp.all(jnp.isfinite(result.logits), axis=-1)
    return dict(x=result.x, labels=jnp.argmax(result.logits, -1).astype(jnp.int32), i=i, j=j,
                loss=result.loss, converged=result.converged, steps=result.steps, finite=finite)


def _prepare(apply_fn, plan, target, params, x0, key, ids, lo, hi, hyper, extra_in):
    """Targets, the objective's per-point values and the (randomly perturbed) start points."""
    i, j, start_finite = _targets(apply_fn, target, params, x0, key, ids)
    x0 = optax.projections.projection_box(x0, lo, hi)
    extra = dict(extra_in)
    if plan.uses_origin:
        extra["origin"] = x0
    if plan.perturb is not None:
        keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 2))(_candidate_keys(key, ids))
        x0 = jax.vmap(plan.perturb, in_axes=(0, 0, None))(keys, x0, hyper)
        if plan.objective.constrain is not None:
            x0 = jax.vmap(plan.objective.constrain, in_axes=(0, 0, None))(x0, extra, hyper)
        x0 = optax.projections.projection_box(x0, lo, hi)
    return i, j, start_finite, extra, x0


def _engine_args(plan, extra, k, tol, lo, hi, hyper):
    return dict(k=k, tol=tol, bounds=(lo, hi), objective=plan.objective, extra=extra,
                hyper=hyper)


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan", "target"))
def _run_chunk(apply_fn, plan, target, params, x0, key, ids, valid, k, lr, steps, tol, lo, hi,
               hyper, extra_in):
    """One chunk, the whole optimisation loop on device (``lax.while_loop``)."""
    i, j, start_finite, extra, x0 = _prepare(apply_fn, plan, target, params, x0, key, ids, lo,
                                             hi, hyper, extra_in)
    result = engine.optimize_points(apply_fn, params, x0, i, j,
                                    optimizer=baselines.make_optimizer(plan, lr), steps=steps,
                                    active=valid,
                                    **_engine_args(plan, extra, k, tol, lo, hi, hyper))
    return _outputs(result, i, j, start_finite)


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan", "target"))
def _start_chunk(apply_fn, plan, target, params, x0, key, ids, valid, lr, lo, hi, hyper,
                 extra_in):
    i, j, start_finite, extra, x0 = _prepare(apply_fn, plan, target, params, x0, key, ids, lo,
                                             hi, hyper, extra_in)
    v0 = engine.encode_points(plan.objective, x0, (lo, hi))
    state = engine.init_points(baselines.make_optimizer(plan, lr), v0, valid, plan.objective)
    return i, j, start_finite, extra, state


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan", "num_steps"))
def _advance_chunk(apply_fn, plan, num_steps, params, state, i, j, extra, k, lr, tol, lo, hi,
                   hyper, max_steps):
    state = engine.run_steps(apply_fn, params, state, i, j,
                             optimizer=baselines.make_optimizer(plan, lr), num_steps=num_steps,
                             max_steps=max_steps,
                             **_engine_args(plan, extra, k, tol, lo, hi, hyper))
    return state, jnp.all(state.done)


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan"))
def _finish_chunk(apply_fn, plan, params, state, i, j, extra, start_finite, k, tol, lo, hi,
                  hyper):
    result = engine.finish_points(apply_fn, params, state, i, j,
                                  **_engine_args(plan, extra, k, tol, lo, hi, hyper))
    return _outputs(result, i, j, start_finite)


def _run_chunk_host_loop(apply_fn, plan, target, block, params, x0, key, ids, valid, k, lr,
                         steps, tol, lo, hi, hyper, extra_in):
    """One chunk, the step loop driven from the host in unrolled blocks of ``block`` steps.

    Same steps, same results as :func:`_run_chunk`; XLA's CPU backend runs convolutions inside
    a loop body several times slower (see :func:`ipguard_jax.engine.run_steps`).
    """
    i, j, start_finite, extra, state = _start_chunk(apply_fn, plan, target, params, x0, key,
                                                    ids, valid, lr, lo, hi, hyper, extra_in)
    for _ in range(0, int(steps), block):
        state, all_done = _advance_chunk(apply_fn, plan, block, params, state, i, j, extra, k,
                                         lr, tol, lo, hi, hyper, steps)
        if bool(all_done):
            break
    return _finish_chunk(apply_fn, plan, params, state, i, j, extra, start_finite, k, tol, lo,
                         hi, hyper)


def resolve_loop(loop: str) -> str:
    """``"auto"`` -> ``"host"`` on the CPU backend, ``"device"`` elsewhere."""
    if loop == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return loop


def _check_data(classifier: Classifier, data: Any, config: FingerprintConfig) -> np.ndarray:
    if data is None:
        raise ValueError('init="data" needs start images: pass data=... (or use init="noise")')
    x = np.asarray(classifier.check_input(np.asarray(data), name="data"))
    lo, hi = classifier.bounds
    if x.min() < lo or x.max() > hi:
        raise ValueError(
            f"data has values outside the classifier's bounds {classifier.bounds}: "
            f"min {float(x.min())}, max {float(x.max())}"
        )
    if x.shape[0] < config.num:
        raise ValueError(
            f'too few data points for init="data": num={config.num} fingerprints need at '
            f"least {config.num} start images, data has {x.shape[0]}"
        )
    return x


class _Collector:
    """Gathers finished candidates (in any order) and tracks the stopping rule."""

    def __init__(self, config: FingerprintConfig, want: int, progress: bool):
        self.config, self.want = config, want
        self.parts: list[dict[str, np.ndarray]] = []
        self.converged_ids: list[np.ndarray] = []
        self.drawn = self.converged = 0
        self.bar = tqdm(total=want, disable=not progress, unit="pt", desc="fingerprints",
                        leave=False, dynamic_ncols=True)

    def add(self, out: dict[str, np.ndarray], ids: np.ndarray, source: np.ndarray) -> None:
        if not out.pop("finite").all():
            raise ValueError(
                "the classifier produced non-finite logits (NaN or inf) during generation; "
                "check the model and its parameters"
            )
        out["source"], out["id"] = source, ids
        self.parts.append(out)
        self.drawn += len(ids)
        new = int(out["converged"].sum())
        self.converged += new
        self.converged_ids.append(ids[out["converged"]])
        self.bar.update(min(new, max(self.want - self.bar.n, 0)) if self.config.keep == "converged"
                        else len(ids))
        self.bar.set_postfix(converged=f"{self.converged}/{self.drawn}")

    def settled(self, lowest_open: float) -> bool:
        """Whether the first ``want`` converged candidates (by index) are known, given that no
        candidate below ``lowest_open`` is still running."""
        if self.config.keep != "converged" or self.converged < self.want:
            return False
        ids = np.sort(np.concatenate(self.converged_ids))
        return bool(ids[self.want - 1] < lowest_open)

    def arrays(self) -> dict[str, np.ndarray]:
        merged = {name: np.concatenate([p[name] for p in self.parts]) for name in self.parts[0]}
        order = np.argsort(merged.pop("id"), kind="stable")  # candidate order
        return {name: a[order] for name, a in merged.items()}


def _run_candidates(classifier, config, plan, loop, key, scalars, x0, ids, valid, extra_in):
    """Runs one chunk of candidates to the end of their step budget; numpy outputs."""
    args = (classifier.params, x0, key, jnp.asarray(ids), jnp.asarray(valid))
    if loop == "device":
        out = _run_chunk(classifier.apply_fn, plan, config.target, *args, **scalars,
                         extra_in=extra_in)
    else:
        out = _run_chunk_host_loop(classifier.apply_fn, plan, config.target, config.block_steps,
                                   *args, **scalars, extra_in=extra_in)
    return {name: np.asarray(v) for name, v in out.items()}


def _run_search(method, classifier, config, plan, loop, key, scalars, x0, ids, valid):
    """Carlini-Wagner's binary search over ``c``: ``search_steps`` runs of the chunk, each from
    the same start, keeping every point's least-distorted success."""
    num = len(ids)
    c = np.full(num, method.initial_c, np.float32)
    lower, upper = np.zeros(num, np.float32), np.full(num, np.inf, np.float32)
    origin = np.asarray(optax.projections.projection_box(x0, scalars["lo"], scalars["hi"]))
    best, best_dist, total_steps = None, np.full(num, np.inf), np.zeros(num, np.int64)
    for _ in range(method.search_steps):
        out = _run_candidates(classifier, config, plan, loop, key, scalars, x0, ids, valid,
                              {"c": jnp.asarray(c)})
        total_steps += out["steps"]
        dist = ((out["x"] - origin).reshape(num, -1).astype(np.float64) ** 2).sum(axis=1)
        dist = np.where(out["converged"], dist, np.inf)
        if best is None:
            best = out
        better = dist < best_dist
        best = {name: np.where(better.reshape((num,) + (1,) * (v.ndim - 1)), v, best[name])
                for name, v in out.items()}
        best_dist = np.minimum(best_dist, dist)
        c, lower, upper = baselines.cw_search_update(c, lower, upper, out["converged"])
        c = c.astype(np.float32)
    best["steps"] = total_steps.astype(np.int32)
    return best


def _run_chunked(method, classifier, config, plan, loop, key, starts, budget, batch, scalars,
                 collector):
    """Candidates in consecutive chunks of ``batch``; each chunk runs until all its points stop."""
    drawn = 0
    while drawn < budget and not collector.settled(lowest_open=np.inf):
        ids = np.arange(drawn, drawn + batch)
        valid = ids < budget
        x0, source = starts(ids)
        if isinstance(method, baselines.CW):
            out = _run_search(method, classifier, config, plan, loop, key, scalars, x0, ids,
                              valid)
        else:
            out = _run_candidates(classifier, config, plan, loop, key, scalars, x0, ids, valid,
                                  {})
        collector.add({name: v[valid] for name, v in out.items()}, ids[valid], source[valid])
        drawn += int(valid.sum())


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan", "target"))
def _refill_chunk(apply_fn, plan, target, params, state, i, j, extra, start_finite, x0, key,
                  ids, refill, retire, lr, lo, hi, hyper):
    """Puts fresh candidates into the ``refill`` slots; ``retire`` slots stop for good."""
    new_i, new_j, new_finite, new_extra, new_state = _start_chunk(
        apply_fn, plan, target, params, x0, key, ids, refill, lr, lo, hi, hyper, {})
    pick = lambda new, old: engine._select_points(refill, new, old)
    state = jax.tree.map(pick, new_state, state)
    state = state._replace(done=state.done | retire)
    return (pick(new_i, i), pick(new_j, j), jax.tree.map(pick, new_extra, extra),
            pick(new_finite, start_finite), state)


def _run_compacted(method, classifier, config, plan, loop, key, starts, budget, batch, scalars,
                   collector):
    """One working batch whose finished points are swapped for fresh candidates as it runs.

    Every ``block_steps`` steps the host looks at which slots stopped (converged, or out of
    steps); once a quarter of the batch has, their results are taken out and the slots refilled
    with the next candidates, so the steps go to unfinished points instead of waiting for the
    slowest one. Each candidate keeps its own step budget, targets and optimiser state, so it
    follows the same path as in the chunked run.
    """
    del method
    apply_fn, params, target = classifier.apply_fn, classifier.params, config.target
    sc = scalars
    ids = np.arange(batch)
    slot_id = np.where(ids < budget, ids, -1)  # -1: empty slot
    x0, slot_source = starts(ids)
    i, j, start_finite, extra, state = _start_chunk(
        apply_fn, plan, target, params, x0, key, jnp.asarray(ids), jnp.asarray(slot_id >= 0),
        sc["lr"], sc["lo"], sc["hi"], sc["hyper"], {})
    next_id = min(batch, budget)
    threshold = max(1, batch // 4)
    budget_steps = int(sc["steps"])
    while True:
        state, _ = _advance_chunk(apply_fn, plan, config.block_steps, params, state, i, j, extra,
                                  sc["k"], sc["lr"], sc["tol"], sc["lo"], sc["hi"], sc["hyper"],
                                  sc["steps"])
        stopped = np.asarray(state.done) | (np.asarray(state.steps) >= budget_steps)
        finished = (slot_id >= 0) & stopped
        running = (slot_id >= 0) & ~stopped
        if finished.sum() < threshold and running.any():
            continue
        out = _finish_chunk(apply_fn, plan, params, state, i, j, extra, start_finite, sc["k"],
                            sc["tol"], sc["lo"], sc["hi"], sc["hyper"])
        collector.add({name: np.asarray(v)[finished] for name, v in out.items()},
                      slot_id[finished], slot_source[finished])
        lowest_open = min(slot_id[running].min() if running.any() else np.inf, next_id)
        if collector.settled(lowest_open) or (not running.any() and next_id >= budget):
            return
        # Refill the finished slots, in slot order, with the next candidates.
        slots = np.flatnonzero(finished)
        fresh = slots[:max(0, min(len(slots), budget - next_id))]
        refill = np.zeros(batch, bool)
        refill[fresh] = True
        new_ids = slot_id.copy()
        new_ids[fresh] = np.arange(next_id, next_id + len(fresh))
        new_ids[finished & ~refill] = -1
        next_id += len(fresh)
        x0, source = starts(np.maximum(new_ids, 0))
        slot_source = np.where(refill, source, slot_source)
        i, j, extra, start_finite, state = _refill_chunk(
            apply_fn, plan, target, params, state, i, j, extra, start_finite, x0, key,
            jnp.asarray(np.maximum(new_ids, 0)), jnp.asarray(refill),
            jnp.asarray(finished & ~refill), sc["lr"], sc["lo"], sc["hi"], sc["hyper"])
        slot_id = new_ids


def generate(
    classifier: Classifier,
    config: FingerprintConfig = FingerprintConfig(),
    key: Any = 0,
    data: Any = None,
    *,
    method: str | baselines.Method = "ipguard",
    progress: bool = True,
) -> Fingerprints:
    """Generates IPGuard fingerprints (or a baseline's) for an owner classifier.

    Candidates are optimised ``config.batch_size`` at a time, each chunk one compiled call
    (``vmap``-ed per-point optimiser states inside a ``lax.while_loop``), so device memory is
    O(batch_size) and later calls with the same shapes reuse the compiled code. With
    ``keep="converged"`` further chunks are drawn until ``num`` points converged or the candidate
    budget is spent; the result says how many converged (and warns if fewer than ``num``).

    Args:
        classifier: the owner model.
        config: how to generate (see :class:`FingerprintConfig`).
        key: an int seed or a ``jax.random.key``; the same key gives the same fingerprints.
        data: start images ``(N, *input_shape)`` in the bounds, for ``init="data"``; a random
            permutation of them (by ``key``) is used as candidates.
        method: ``"ipguard"`` (default), or a baseline on the same engine: ``"random"``,
            ``"fgsm"``, ``"pgd"``, ``"cw"``, or an instance of a class in
            :mod:`ipguard_jax.baselines` to set its parameters (baselines carry their own step
            budget and step size; ``config`` still sets ``num``, ``init``, ``target``,
            ``batch_size``, ``keep`` and the loop).
        progress: show a progress bar over the chunks.

    Returns:
        :class:`Fingerprints` with ``num`` points (fewer only if too few converged), in candidate
        order, and their provenance in ``metadata``.

    Raises:
        ValueError: bad data (shape, NaN/inf, outside the bounds, too few), non-finite logits.
        TypeError: a wrong type for an argument.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import Classifier, FingerprintConfig, generate
        >>> w = jnp.array([[1.0, -1.0, 0.5], [-0.5, 1.0, 0.2], [0.3, 0.1, -1.0]])
        >>> clf = Classifier(lambda p, x: x @ p, w, input_shape=(3,))
        >>> fp = generate(clf, FingerprintConfig(num=8, k=0.1, init="noise"), key=0,
        ...               progress=False)
        >>> len(fp), bool(fp.converged.all()), bool((fp.labels == fp.j).all())
        (8, True, True)
    """
    if not isinstance(classifier, Classifier):
        raise TypeError(f"classifier must be an ipguard_jax.Classifier, got "
                        f"{type(classifier).__name__}")
    if not isinstance(config, FingerprintConfig):
        raise TypeError(f"config must be a FingerprintConfig, got {type(config).__name__}")
    method = baselines.resolve_method(method)
    plan = method.plan(config)
    key = as_key(key)
    start_time = time.perf_counter()
    lo, hi = classifier.bounds

    # One stream for the data order, one for the per-candidate draws (keyed by candidate index).
    order_key, point_key = jax.random.split(key)
    budget = config.candidate_budget
    if config.init == "data":
        data = _check_data(classifier, data, config)
        budget = min(budget, data.shape[0])
        order = np.asarray(jax.random.permutation(order_key, data.shape[0]))
    elif data is not None:
        raise ValueError('data is only used with init="data"; drop it or set init="data"')
    batch = min(config.batch_size, budget)
    loop = resolve_loop(config.loop)
    want = config.num

    scalars = dict(k=jnp.float32(config.k), lr=jnp.float32(method.learning_rate(config)),
                   steps=jnp.int32(method.budget(config)), tol=jnp.float32(config.tol),
                   lo=jnp.asarray(lo, classifier.dtype), hi=jnp.asarray(hi, classifier.dtype),
                   hyper={name: jnp.float32(v) for name, v in method.hyper(config).items()})

    def starts(ids: np.ndarray) -> tuple[jax.Array, np.ndarray]:
        """Start points and their sources for candidate indices (past the budget: padding)."""
        if config.init == "data":
            source = order[ids % data.shape[0]]
            return jnp.asarray(data[source]), source
        return _noise_points(point_key, ids, scalars["lo"], scalars["hi"],
                             input_shape=classifier.input_shape, dtype=classifier.dtype), ids

    compact = config.compact and loop == "host" and not isinstance(method, baselines.CW)
    collector = _Collector(config, want, progress)
    try:
        run = _run_compacted if compact else _run_chunked
        run(method, classifier, config, plan, loop, point_key, starts, budget, batch, scalars,
            collector)
    finally:
        collector.bar.close()
    arrays, drawn, converged = collector.arrays(), collector.drawn, collector.converged

    if config.keep == "converged":
        keep = np.flatnonzero(arrays["converged"])[:want]
        if keep.size < want:
            warnings.warn(
                f"only {keep.size} of the {want} requested fingerprints converged "
                f"({converged} of {drawn} candidates, budget {budget}); raise steps or "
                f"max_candidates, lower k, or use keep='all'", ConvergenceWarning, stacklevel=2)
        arrays = {name: a[keep] for name, a in arrays.items()}
    metadata = {
        "format_version": 1,
        "library": {"name": "ipguard_jax", "version": __version__, "jax": jax.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "method": method.to_dict(),
        "loop": loop,
        "compact": compact,
        "key": _key_record(key),
        "classifier": {"params_sha256": classifier.params_hash, **classifier.input_spec},
        "num_candidates": drawn,
        "num_converged": converged,
        "convergence_rate": converged / drawn,
        "wall_time_s": round(time.perf_counter() - start_time, 3),
    }
    return Fingerprints(**arrays, metadata=metadata)


def suggest_k(classifier: Classifier, x: Any, fraction: float = 0.25,
              batch_size: int = 1024) -> float:
    """Scales the margin ``k`` to a model's logit spread (a heuristic starting point).

    Logit scales differ between models, so a fixed ``k`` means different things. This returns
    ``fraction`` times the median gap between the top two logits on natural inputs ``x``: the
    fingerprints then sit a fixed share of a typical decision margin past the boundary.

    Args:
        classifier: the owner model.
        x: natural inputs ``(N, *input_shape)`` (e.g. held-out images).
        fraction: share of the median top-2 logit gap.
        batch_size: evaluation batch size.

    Returns:
        A suggested ``k`` (float, > 0).
    """
    if not (isinstance(fraction, (int, float)) and fraction > 0):
        raise ValueError(f"fraction must be a number > 0, got {fraction!r}")
    x = classifier.check_input(x)
    gaps = []
    for s in range(0, x.shape[0], batch_size):
        top2 = jax.lax.top_k(classifier(x[s:s + batch_size]), 2)[0]
        gaps.append(np.asarray(top2[:, 0] - top2[:, 1]))
    return float(fraction * np.median(np.concatenate(gaps)))
