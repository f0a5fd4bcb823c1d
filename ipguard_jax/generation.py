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

from ipguard_jax import engine
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


def _optimizer(optimizer, lr):
    return optax.adam(lr) if optimizer is None else optimizer  # traced lr: no recompile


def _targets(apply_fn, target, params, x0, key, ids):
    start_logits = apply_fn(params, x0)
    target_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(_candidate_keys(key, ids))
    i, j = engine.choose_targets(start_logits, target_keys, target)
    return i, j, jnp.all(jnp.isfinite(start_logits), axis=-1)


def _outputs(result, i, j, start_finite):
    finite = start_finite & jnp.all(jnp.isfinite(result.logits), axis=-1)
    return dict(x=result.x, labels=jnp.argmax(result.logits, -1).astype(jnp.int32), i=i, j=j,
                loss=result.loss, converged=result.converged, steps=result.steps, finite=finite)


@functools.partial(jax.jit, static_argnames=("apply_fn", "optimizer", "target"))
def _run_chunk(apply_fn, optimizer, target, params, x0, key, ids, valid, k, lr, steps, tol, lo,
               hi):
    """One chunk, the whole optimisation loop on device (``lax.while_loop``)."""
    i, j, start_finite = _targets(apply_fn, target, params, x0, key, ids)
    result = engine.optimize_points(apply_fn, params, x0, i, j, k=k,
                                    optimizer=_optimizer(optimizer, lr), steps=steps, tol=tol,
                                    bounds=(lo, hi), active=valid)
    return _outputs(result, i, j, start_finite)


@functools.partial(jax.jit, static_argnames=("apply_fn", "optimizer", "target"))
def _start_chunk(apply_fn, optimizer, target, params, x0, key, ids, valid, lr, lo, hi):
    i, j, start_finite = _targets(apply_fn, target, params, x0, key, ids)
    x0 = optax.projections.projection_box(x0, lo, hi)
    return i, j, start_finite, engine.init_points(_optimizer(optimizer, lr), x0, valid)


@functools.partial(jax.jit, static_argnames=("apply_fn", "optimizer", "num_steps"))
def _advance_chunk(apply_fn, optimizer, num_steps, params, state, i, j, k, lr, tol, lo, hi,
                   max_steps):
    state = engine.run_steps(apply_fn, params, state, i, j, k=k,
                             optimizer=_optimizer(optimizer, lr), num_steps=num_steps,
                             max_steps=max_steps, tol=tol, bounds=(lo, hi))
    return state, jnp.all(state.done)


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _finish_chunk(apply_fn, params, state, i, j, start_finite, k, tol):
    return _outputs(engine.finish_points(apply_fn, params, state, i, j, k=k, tol=tol), i, j,
                    start_finite)


def _run_chunk_host_loop(apply_fn, optimizer, target, block, params, x0, key, ids, valid, k, lr,
                         steps, tol, lo, hi):
    """One chunk, the step loop driven from the host in unrolled blocks of ``block`` steps.

    Same steps, same results as :func:`_run_chunk`; XLA's CPU backend runs convolutions inside
    a loop body several times slower (see :func:`ipguard_jax.engine.run_steps`).
    """
    i, j, start_finite, state = _start_chunk(apply_fn, optimizer, target, params, x0, key, ids,
                                             valid, lr, lo, hi)
    for first in range(0, int(steps), block):
        state, all_done = _advance_chunk(apply_fn, optimizer, block, params, state, i, j, k, lr,
                                         tol, lo, hi, np.int32(int(steps) - first))
        if bool(all_done):
            break
    return _finish_chunk(apply_fn, params, state, i, j, start_finite, k, tol)


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


def generate(
    classifier: Classifier,
    config: FingerprintConfig = FingerprintConfig(),
    key: Any = 0,
    data: Any = None,
    *,
    progress: bool = True,
) -> Fingerprints:
    """Generates IPGuard fingerprints for an owner classifier.

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

    scalars = dict(k=jnp.float32(config.k), lr=jnp.float32(config.lr),
                   steps=jnp.int32(config.steps), tol=jnp.float32(config.tol),
                   lo=jnp.asarray(lo, classifier.dtype), hi=jnp.asarray(hi, classifier.dtype))
    chunks: list[dict[str, np.ndarray]] = []
    drawn = converged = 0
    bar = tqdm(total=want, disable=not progress, unit="pt", desc="fingerprints",
               leave=False, dynamic_ncols=True)
    try:
        while drawn < budget and not (config.keep == "converged" and converged >= want):
            ids = np.arange(drawn, drawn + batch)
            valid = ids < budget
            if config.init == "data":
                source = order[ids % data.shape[0]]  # past the budget: padding, masked out
                x0 = jnp.asarray(data[source])
            else:
                source = ids
                x0 = _noise_points(point_key, ids, scalars["lo"], scalars["hi"],
                                   input_shape=classifier.input_shape, dtype=classifier.dtype)
            args = (classifier.params, x0, point_key, jnp.asarray(ids), jnp.asarray(valid))
            if loop == "device":
                out = _run_chunk(classifier.apply_fn, config.optimizer, config.target, *args,
                                 **scalars)
            else:
                out = _run_chunk_host_loop(classifier.apply_fn, config.optimizer, config.target,
                                           config.block_steps, *args, **scalars)
            out = {name: np.asarray(value)[valid] for name, value in out.items()}
            if not out.pop("finite").all():
                raise ValueError(
                    "the classifier produced non-finite logits (NaN or inf) during generation; "
                    "check the model and its parameters"
                )
            out["source"] = source[valid]
            chunks.append(out)
            drawn += int(valid.sum())
            new = int(out["converged"].sum())
            converged += new
            bar.update(min(new, max(want - bar.n, 0)) if config.keep == "converged"
                       else int(valid.sum()))
            bar.set_postfix(converged=f"{converged}/{drawn}")
    finally:
        bar.close()

    arrays = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
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
        "loop": loop,
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
