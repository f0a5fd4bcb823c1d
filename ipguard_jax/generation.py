"""``generate``: batched IPGuard fingerprint generation with chunking, refills and provenance.

:func:`generate` turns an owner :class:`~ipguard_jax.Classifier` and a
:class:`~ipguard_jax.FingerprintConfig` into :class:`~ipguard_jax.Fingerprints`;
:func:`suggest_k` scales the margin ``k`` to a model's logits. The examples are in their
docstrings.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import secrets
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from tqdm.auto import tqdm

from ipguard_jax import core, methods
from ipguard_jax._version import __version__
from ipguard_jax.classifier import Classifier, labels_from_logits
from ipguard_jax.config import FingerprintConfig
from ipguard_jax.fingerprints import Fingerprints
from ipguard_jax.sharding import Placement, resolve_mesh


class ConvergenceWarning(RuntimeWarning):
    """Fewer points converged than asked for within the candidate budget."""


def as_key(key: Any) -> jax.Array:
    """Accepts an int seed, a typed PRNG key or a raw ``uint32[2]`` key; returns a typed key.

    An int seed ``s`` in ``[0, 2**64)`` becomes the default (threefry) key whose data is the
    two 32-bit halves of ``s``: ``jax.random.key(s)`` for ``s < 2**32``, and all 64 bits
    count above that (``jax.random.key`` alone keeps only the low 32 bits without x64).

    Args:
        key: an int seed in ``[0, 2**64)``, a scalar typed key (``jax.random.key``) or a raw
            ``uint32[2]`` key (``jax.random.PRNGKey``).

    Returns:
        A scalar typed PRNG key.

    Raises:
        ValueError: a typed key array with more than one key, or an int seed outside
            ``[0, 2**64)``.
        TypeError: anything else.

    Example:
        >>> import jax
        >>> from ipguard_jax.generation import as_key
        >>> jax.random.key_data(as_key(0)).tolist()
        [0, 0]
        >>> jax.random.key_data(as_key(2**32 + 5)).tolist()
        [1, 5]
        >>> as_key(jax.random.PRNGKey(0)).shape
        ()
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = int(key)
        if not 0 <= seed < 2**64:
            raise ValueError(f"an int key (seed) must be in [0, 2**64), got {seed}")
        return jax.random.wrap_key_data(np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32),
                                        impl="threefry2x32")
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    raw = np.asarray(key)
    if raw.dtype == np.uint32 and raw.shape == (2,):
        return jax.random.wrap_key_data(raw)
    raise TypeError(f"key must be an int seed or a jax.random.key, got {type(key).__name__}")


def secret_key() -> jax.Array:
    """A fresh PRNG key of 64 bits drawn from the operating system (:mod:`secrets`).

    What :func:`generate` uses when no key is given: a set made from a public seed (``0``,
    the default of many tools) can be regenerated bit for bit by whoever holds the stolen
    weights and the start data. The key drawn is recorded in the set's metadata (inside the
    sealed file when sealed), so the set stays reproducible by its owner.

    Returns:
        A scalar typed (threefry) key.

    Example:
        >>> import jax
        >>> from ipguard_jax.generation import secret_key
        >>> bool((jax.random.key_data(secret_key()) != jax.random.key_data(secret_key())).any())
        True
    """
    return as_key(secrets.randbits(64))


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
    i, j = core.choose_targets(start_logits, target_keys, target)
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
    result = core.optimize_points(apply_fn, params, x0, i, j,
                                    optimizer=methods.make_optimizer(plan, lr), steps=steps,
                                    active=valid,
                                    **_engine_args(plan, extra, k, tol, lo, hi, hyper))
    return _outputs(result, i, j, start_finite)


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan", "target"))
def _start_chunk(apply_fn, plan, target, params, x0, key, ids, valid, lr, lo, hi, hyper,
                 extra_in):
    i, j, start_finite, extra, x0 = _prepare(apply_fn, plan, target, params, x0, key, ids, lo,
                                             hi, hyper, extra_in)
    v0 = core.encode_points(plan.objective, x0, (lo, hi))
    state = core.init_points(methods.make_optimizer(plan, lr), v0, valid, plan.objective)
    return i, j, start_finite, extra, state


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan", "num_steps"))
def _advance_chunk(apply_fn, plan, num_steps, params, state, i, j, extra, k, lr, tol, lo, hi,
                   hyper, max_steps):
    state = core.run_steps(apply_fn, params, state, i, j,
                             optimizer=methods.make_optimizer(plan, lr), num_steps=num_steps,
                             max_steps=max_steps,
                             **_engine_args(plan, extra, k, tol, lo, hi, hyper))
    return state, jnp.all(state.done)


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan"))
def _finish_chunk(apply_fn, plan, params, state, i, j, extra, start_finite, k, tol, lo, hi,
                  hyper):
    result = core.finish_points(apply_fn, params, state, i, j,
                                  **_engine_args(plan, extra, k, tol, lo, hi, hyper))
    return _outputs(result, i, j, start_finite)


def _run_chunk_host_loop(apply_fn, plan, target, block, params, x0, key, ids, valid, k, lr,
                         steps, tol, lo, hi, hyper, extra_in):
    """One chunk, the step loop driven from the host in unrolled blocks of ``block`` steps.

    Same steps, same results as :func:`_run_chunk`; XLA's CPU backend runs convolutions inside
    a loop body several times slower (see :func:`ipguard_jax.core.run_steps`).
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
    """``"auto"`` -> ``"host"`` on the CPU backend, ``"device"`` elsewhere.

    Args:
        loop: ``"auto"``, ``"host"`` or ``"device"`` (see :class:`~ipguard_jax.FingerprintConfig`).

    Returns:
        ``"host"`` or ``"device"``; other values are returned as they are.

    Example:
        >>> from ipguard_jax.generation import resolve_loop
        >>> resolve_loop("device")
        'device'
    """
    if loop == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return loop


def _check_data(classifier: Classifier, data: Any, config: FingerprintConfig) -> np.ndarray:
    if data is None:
        raise ValueError('init="data" needs start images: pass data=... (or use init="noise")')
    x = np.asarray(classifier.check_input(np.asarray(data), name="data"))
    # Compare in the data's own precision: a bound that rounds in float32 is still the bound.
    lo, hi = (np.asarray(b, x.dtype) for b in classifier.bounds)
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

    def merged(self) -> dict[str, np.ndarray]:
        """Everything collected so far, in the order collected (with ``id`` and ``source``)."""
        return {name: np.concatenate([p[name] for p in self.parts]) for name in self.parts[0]}

    def restore(self, merged: dict[str, np.ndarray]) -> None:
        """Takes back what a checkpoint saved from :meth:`merged`."""
        self.parts = [dict(merged)]
        self.drawn = len(merged["id"])
        self.converged = int(merged["converged"].sum())
        self.converged_ids = [merged["id"][merged["converged"]]]
        self.bar.update(min(self.converged, self.want) if self.config.keep == "converged"
                        else self.drawn)

    def arrays(self) -> dict[str, np.ndarray]:
        merged = self.merged()
        order = np.argsort(merged.pop("id"), kind="stable")  # candidate order
        return {name: a[order] for name, a in merged.items()}


class _Checkpoint:
    """The progress of one ``generate`` run in an orbax directory, so a killed run resumes.

    Every ``every`` chunks (or refills, with compaction) the finished candidates' results and
    the position in the candidate sequence are written with orbax (to a temporary directory,
    renamed when complete; the previous checkpoint stays until then). Each candidate's path
    depends only on its index and the key, so a resumed run skips what is saved, restarts the
    candidates that were in flight and yields the same fingerprints as an uninterrupted one.

    A checkpoint is bound to its run (config, method, key, owner parameter hash, input spec,
    data digest, budget): another run's is refused. What it restores is checked against the
    run (fields, shapes, dtypes, ids, finite values in the bounds) before it is used, and the
    final points are labelled again by the owner (see :func:`generate`), so an edited file
    cannot put labels into a set that its owner does not give.
    """

    _ARRAYS = ("x", "labels", "i", "j", "loss", "converged", "steps", "source", "id")

    def __init__(self, directory: str | os.PathLike, every: int):
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"checkpoint must be a directory, but {self.directory} is a file")
        self.every = every
        self.identity: dict[str, Any] = {}
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=2, enable_async_checkpointing=False, cleanup_tmp_directories=True))
        self.step = 0
        self.resume: tuple[list[int], int] | None = None

    def _meta(self, step: int) -> dict[str, Any]:
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # orbax raises many types for a damaged directory
            raise ValueError(f"checkpoint directory {self.directory} cannot be read "
                             f"({type(e).__name__}); delete it to start afresh") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("identity"), dict):
            raise ValueError(f"checkpoint directory {self.directory} is not a generation "
                             f"checkpoint; pass another directory or delete it")
        return meta

    def saved_key(self) -> dict[str, Any] | None:
        """The key record of the run saved here, or ``None`` when nothing is saved."""
        step = self.manager.latest_step()
        return None if step is None else self._meta(step)["identity"].get("key")

    def load(self, collector: _Collector, identity: dict[str, Any], budget: int,
             expect: dict[str, tuple[tuple[int, ...], np.dtype]], bounds: tuple[Any, Any]
             ) -> None:
        """Binds the checkpoint to this run's ``identity`` and restores its latest state, if
        there is one, into ``collector`` after checking it (``expect``: per-point shape and
        dtype of each array)."""
        self.identity = identity
        step = self.manager.latest_step()
        if step is None:
            return
        meta = self._meta(step)
        if meta["identity"] != identity:
            saved = meta["identity"]
            differ = sorted(name for name in set(saved) | set(identity)
                            if saved.get(name) != identity.get(name))
            raise ValueError(
                f"checkpoint directory {self.directory} holds another generation run "
                f"(different {', '.join(differ) or 'format'}); pass another directory or "
                f"delete it to start afresh")
        try:
            arrays = self.manager.restore(step, args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore())).arrays
        except Exception as e:
            raise ValueError(f"checkpoint directory {self.directory}: its arrays cannot be "
                             f"read ({type(e).__name__}); delete it to start afresh") from None
        arrays = {name: np.asarray(v) for name, v in dict(arrays).items()}
        self._check(arrays, meta, budget, expect, bounds)
        collector.restore(arrays)
        self.step = step
        self.resume = ([int(p) for p in meta["pending"]], int(meta["next_id"]))

    def _check(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], budget: int,
               expect: dict[str, tuple[tuple[int, ...], np.dtype]],
               bounds: tuple[Any, Any]) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"checkpoint directory {self.directory} is invalid: {what}; "
                              f"delete it to start afresh")

        if sorted(arrays) != sorted(self._ARRAYS):
            raise bad(f"arrays {sorted(arrays)}, expected {sorted(self._ARRAYS)}")
        n = len(arrays["id"])
        for name, (shape, dtype) in expect.items():
            a = arrays[name]
            if a.shape != (n, *shape) or a.dtype != dtype:
                raise bad(f"{name} has shape {a.shape} and dtype {a.dtype}, expected "
                          f"{(n, *shape)} and {np.dtype(dtype)}")
        ids = arrays["id"]
        if n and (ids.min() < 0 or ids.max() >= budget or len(np.unique(ids)) != n):
            raise bad(f"candidate ids must be distinct and in [0, {budget})")
        if not np.isfinite(arrays["x"]).all():
            raise bad("x holds NaN or inf")
        lo, hi = (np.asarray(b, arrays["x"].dtype) for b in bounds)
        if n and ((arrays["x"] < lo).any() or (arrays["x"] > hi).any()):
            raise bad("x has values outside the owner's bounds")
        next_id, pending = meta.get("next_id"), meta.get("pending")
        if not (isinstance(next_id, int) and not isinstance(next_id, bool)
                and 0 <= next_id <= budget):
            raise bad(f"next_id must be an int in [0, {budget}]")
        if not (isinstance(pending, list) and all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p < next_id
                for p in pending)):
            raise bad(f"pending must be a list of candidate ids below next_id")

    def resume_point(self) -> tuple[list[int], int] | None:
        """``(pending ids, next id)`` saved by the restored checkpoint, or ``None``."""
        return self.resume

    def maybe_save(self, collector: _Collector, *, next_id: int, pending: Any,
                   chunks: int) -> None:
        """Saves after every ``every``-th chunk (``chunks`` counts them in this process)."""
        if chunks % self.every or not collector.parts:
            return
        self.step += 1
        meta = {"identity": self.identity, "next_id": int(next_id),
                "pending": [int(p) for p in pending], "drawn": collector.drawn,
                "converged": collector.converged}
        self.manager.save(self.step, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(collector.merged()), meta=ocp.args.JsonSave(meta)),
            force=True)
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def remove(self) -> None:
        """Deletes every saved step, then the directory if nothing else is left in it."""
        for step in self.manager.all_steps():
            self.manager.delete(step)
        self.manager.close()
        try:
            os.rmdir(self.directory)
        except OSError:  # something else lives there: leave it
            pass


def _data_digest(data: np.ndarray | None) -> str | None:
    if data is None:
        return None
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    digest.update(np.ascontiguousarray(data).data)
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _low_precision(apply_fn: Callable, dtype: str) -> Callable:
    """``apply_fn`` computing in ``dtype`` on inputs cast to it, returning float32 logits
    (one wrapper per function and dtype, so compiled code is reused)."""
    def apply(params, x):
        return apply_fn(params, x.astype(dtype)).astype(jnp.float32)

    return apply


def _cast_floats(tree: Any, dtype: str) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a),
                                                                     jnp.floating) else a, tree)


@dataclasses.dataclass
class _Run:
    """Everything one ``generate`` call's runners share."""
    classifier: Classifier
    apply_fn: Callable
    params: Any
    config: FingerprintConfig
    method: methods.Method
    plan: methods.Plan
    loop: str
    key: jax.Array
    scalars: dict[str, Any]
    place: Placement
    starts: Callable[[np.ndarray], tuple[jax.Array, np.ndarray]]
    budget: int
    batch: int
    collector: _Collector
    checkpoint: _Checkpoint | None


def _run_candidates(run: _Run, x0, ids, valid, extra_in):
    """Runs one chunk of candidates to the end of their step budget; numpy outputs."""
    place, apply_fn, config = run.place, run.apply_fn, run.config
    args = (run.params, x0, run.key, place.put(ids), place.put(valid))
    extra_in = {name: place.put(v) for name, v in extra_in.items()}
    if run.loop == "device":
        out = _run_chunk(apply_fn, run.plan, config.target, *args, **run.scalars,
                         extra_in=extra_in)
    else:
        out = _run_chunk_host_loop(apply_fn, run.plan, config.target, config.block_steps,
                                   *args, **run.scalars, extra_in=extra_in)
    return place.fetch(out)


def _run_search(run: _Run, x0, ids, valid):
    """Carlini-Wagner's binary search over ``c``: ``search_steps`` runs of the chunk, each from
    the same start, keeping every point's least-distorted success."""
    method, num = run.method, len(ids)
    c = np.full(num, method.initial_c, np.float32)
    lower, upper = np.zeros(num, np.float32), np.full(num, np.inf, np.float32)
    lo, hi = run.scalars["lo"], run.scalars["hi"]
    origin = np.clip(run.place.fetch(x0), np.asarray(lo), np.asarray(hi))
    best, best_dist, total_steps = None, np.full(num, np.inf), np.zeros(num, np.int64)
    for _ in range(method.search_steps):
        out = _run_candidates(run, x0, ids, valid, {"c": c})
        total_steps += out["steps"]
        dist = ((out["x"] - origin).reshape(num, -1).astype(np.float64) ** 2).sum(axis=1)
        dist = np.where(out["converged"], dist, np.inf)
        if best is None:
            best = out
        better = dist < best_dist
        best = {name: np.where(better.reshape((num,) + (1,) * (v.ndim - 1)), v, best[name])
                for name, v in out.items()}
        best_dist = np.minimum(best_dist, dist)
        c, lower, upper = methods.cw_search_update(c, lower, upper, out["converged"])
        c = c.astype(np.float32)
    best["steps"] = total_steps.astype(np.int32)
    return best


def _run_chunked(run: _Run) -> None:
    """Candidates in consecutive chunks of ``batch``; each chunk runs until all its points stop."""
    collector, budget = run.collector, run.budget
    drawn = collector.drawn  # > 0 when resumed from a checkpoint
    chunks = 0
    while drawn < budget and not collector.settled(lowest_open=np.inf):
        ids = np.arange(drawn, drawn + run.batch)
        valid = ids < budget
        x0, source = run.starts(ids)
        if isinstance(run.method, methods.CW):
            out = _run_search(run, x0, ids, valid)
        else:
            out = _run_candidates(run, x0, ids, valid, {})
        collector.add({name: v[valid] for name, v in out.items()}, ids[valid], source[valid])
        drawn += int(valid.sum())
        chunks += 1
        if run.checkpoint is not None:
            run.checkpoint.maybe_save(collector, next_id=drawn, pending=(), chunks=chunks)


@functools.partial(jax.jit, static_argnames=("apply_fn", "plan", "target"))
def _refill_chunk(apply_fn, plan, target, params, state, i, j, extra, start_finite, x0, key,
                  ids, refill, retire, lr, lo, hi, hyper):
    """Puts fresh candidates into the ``refill`` slots; ``retire`` slots stop for good."""
    new_i, new_j, new_finite, new_extra, new_state = _start_chunk(
        apply_fn, plan, target, params, x0, key, ids, refill, lr, lo, hi, hyper, {})
    pick = lambda new, old: core.select_points(refill, new, old)
    state = jax.tree.map(pick, new_state, state)
    state = state._replace(done=state.done | retire)
    return (pick(new_i, i), pick(new_j, j), jax.tree.map(pick, new_extra, extra),
            pick(new_finite, start_finite), state)


#: A shrinking working batch keeps at least this many rows per device: XLA:CPU computes a
#: single row with other kernels than a batch, so rows would no longer match across sizes.
MIN_ROWS_PER_DEVICE = 2


def _shrunk_size(batch: int, running: int, devices: int) -> int:
    """The working batch once ``running`` points are left: ``batch`` halved while they fit.

    Halving (not the exact count) bounds the number of compiled batch shapes to
    ``log2(batch)``; a size stays a multiple of ``devices`` with at least
    :data:`MIN_ROWS_PER_DEVICE` rows on each.

    Example:
        >>> _shrunk_size(16, 5, 1), _shrunk_size(16, 9, 1), _shrunk_size(16, 0, 1)
        (8, 16, 2)
        >>> _shrunk_size(64, 3, 8)
        16
    """
    floor = MIN_ROWS_PER_DEVICE * devices
    size = batch
    while size // 2 >= max(running, floor) and (size // 2) % devices == 0:
        size //= 2
    return size


@jax.jit
def _take_points(tree, index, valid):
    """Rows ``index`` of every batch-leading leaf; rows where ``valid`` is False are done."""
    i, j, extra, start_finite, state = jax.tree.map(lambda a: a[index], tree)
    return i, j, extra, start_finite, state._replace(done=state.done | ~valid)


class _Queue:
    """Candidate ids still to start: ``pending`` ones first (in flight when a checkpoint was
    written), then ``next_id, next_id + 1, ...`` up to the budget."""

    def __init__(self, pending, next_id: int, budget: int):
        self.pending, self.next_id, self.budget = sorted(int(p) for p in pending), next_id, budget

    def lowest(self) -> float:
        return min(self.pending[0] if self.pending else np.inf,
                   self.next_id if self.next_id < self.budget else np.inf)

    def take(self, count: int) -> np.ndarray:
        taken = self.pending[:count]
        self.pending = self.pending[count:]
        more = max(0, min(count - len(taken), self.budget - self.next_id))
        taken += list(range(self.next_id, self.next_id + more))
        self.next_id += more
        return np.asarray(taken, np.int64)


def _run_compacted(run: _Run) -> None:
    """One working batch whose finished points are swapped for fresh candidates as it runs.

    Every ``block_steps`` steps the host looks at which slots stopped (converged, or out of
    steps); once a quarter of the batch has, their results are taken out and the slots refilled
    with the next candidates, so the steps go to unfinished points instead of waiting for the
    slowest one. Each candidate keeps its own step budget, targets and optimiser state, so it
    follows the same path as in the chunked run.

    Once no candidate is left to start, the batch shrinks by halves (see :func:`_shrunk_size`)
    to the points still running, so the slowest ones (at k=10 a few percent run to the step
    limit) do not drag a mostly empty batch along.
    """
    apply_fn, params, target, plan = (run.apply_fn, run.params, run.config.target,
                                      run.plan)
    sc, place, batch, collector = run.scalars, run.place, run.batch, run.collector
    resume = run.checkpoint.resume_point() if run.checkpoint is not None else None
    queue = _Queue(*(resume or ((), 0)), run.budget)
    first = queue.take(batch)
    slot_id = np.full(batch, -1)  # -1: empty slot
    slot_id[:len(first)] = first
    x0, slot_source = run.starts(np.maximum(slot_id, 0))
    i, j, start_finite, extra, state = _start_chunk(
        apply_fn, plan, target, params, x0, run.key, place.put(np.maximum(slot_id, 0)),
        place.put(slot_id >= 0), sc["lr"], sc["lo"], sc["hi"], sc["hyper"], {})
    threshold = max(1, batch // 4)
    budget_steps = int(sc["steps"])
    refills = 0
    while True:
        state, _ = _advance_chunk(apply_fn, plan, run.config.block_steps, params, state, i, j,
                                  extra, sc["k"], sc["lr"], sc["tol"], sc["lo"], sc["hi"],
                                  sc["hyper"], sc["steps"])
        done, steps = place.fetch((state.done, state.steps))
        stopped = done | (steps >= budget_steps)
        finished = (slot_id >= 0) & stopped
        running = (slot_id >= 0) & ~stopped
        if finished.sum() < threshold and running.any():
            continue
        out = place.fetch(_finish_chunk(apply_fn, plan, params, state, i, j, extra,
                                        start_finite, sc["k"], sc["tol"], sc["lo"], sc["hi"],
                                        sc["hyper"]))
        collector.add({name: v[finished] for name, v in out.items()}, slot_id[finished],
                      slot_source[finished])
        lowest_open = min(slot_id[running].min() if running.any() else np.inf, queue.lowest())
        if collector.settled(lowest_open) or (not running.any() and queue.lowest() == np.inf):
            return
        refills += 1
        if run.checkpoint is not None:
            # Candidates in flight restart from scratch after a resume: same path, same result.
            run.checkpoint.maybe_save(collector, next_id=queue.next_id,
                                      pending=sorted(queue.pending + list(slot_id[running])),
                                      chunks=refills)
        # Refill the finished slots, in slot order, with the next candidates.
        slots = np.flatnonzero(finished)
        fresh_ids = queue.take(len(slots))
        refill = np.zeros(batch, bool)
        refill[slots[:len(fresh_ids)]] = True
        new_ids = slot_id.copy()
        new_ids[refill] = fresh_ids
        new_ids[finished & ~refill] = -1
        if refill.any():
            x0, source = run.starts(np.maximum(new_ids, 0))
            slot_source = np.where(refill, source, slot_source)
            i, j, extra, start_finite, state = _refill_chunk(
                apply_fn, plan, target, params, state, i, j, extra, start_finite, x0, run.key,
                place.put(np.maximum(new_ids, 0)), place.put(refill),
                place.put(finished & ~refill), sc["lr"], sc["lo"], sc["hi"], sc["hyper"])
        else:  # nothing left to start: the finished slots only stop (no owner pass to prepare)
            state = state._replace(done=state.done | place.put(finished))
        slot_id = new_ids
        alive = np.flatnonzero(slot_id >= 0)
        size = batch if queue.lowest() < np.inf else _shrunk_size(batch, len(alive), place.size)
        if size < batch:
            spare = np.flatnonzero(slot_id < 0)[:size - len(alive)]
            keep = np.concatenate([alive, spare])
            i, j, extra, start_finite, state = _take_points(
                (i, j, extra, start_finite, state), place.put(keep),
                place.put(np.arange(size) < len(alive)))
            slot_id, slot_source = slot_id[keep], slot_source[keep]
            batch, threshold = size, max(1, size // 4)


def generate(
    classifier: Classifier,
    config: FingerprintConfig = FingerprintConfig(),
    key: Any = None,
    data: Any = None,
    *,
    method: str | methods.Method = "ipguard",
    mesh: Mesh | str | None = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    keep_checkpoint: bool = False,
    progress: bool = True,
) -> Fingerprints:
    """Generates IPGuard fingerprints (or a baseline's) for an owner classifier.

    Candidates are optimised ``config.batch_size`` at a time with ``vmap``-ed per-point
    optimiser states, each chunk one compiled ``lax.while_loop`` (or, on CPU, compiled blocks of
    unrolled steps driven from the host: see ``FingerprintConfig.loop``), so device memory is
    O(batch_size) and later calls with the same shapes reuse the compiled code. With
    ``keep="converged"`` further chunks are drawn until ``num`` points converged or the candidate
    budget is spent; the result says how many converged (and warns if fewer than ``num``).

    On several devices the candidate batch is sharded over a device mesh (each device
    optimises its share of the points; the parameters are replicated) and the results are
    the same as on one device for the same key. Under ``jax.distributed`` (several hosts)
    every process calls ``generate`` with the same arguments, each works on the points of its
    own devices, and every process gets the whole result.

    Args:
        classifier: the owner model.
        config: how to generate (see :class:`FingerprintConfig`).
        key: ``None`` (default): a fresh 64-bit key from the operating system
            (:func:`secret_key`), so that nobody holding the owner's weights can regenerate
            the set; it is recorded in ``metadata["key"]`` with ``"source": "os"`` (inside the
            sealed file when sealed). Or an int seed in ``[0, 2**64)`` or a
            ``jax.random.key``: the same key gives the same fingerprints (``"source":
            "explicit"``); anyone who learns it and holds the weights and the start data can
            regenerate the set too. A resumed ``checkpoint`` run without a key takes the
            key saved there.
        data: start images ``(N, *input_shape)`` in the bounds, for ``init="data"``; a random
            permutation of them (by ``key``) is used as candidates.
        method: ``"ipguard"`` (default), or a baseline on the same engine: ``"random"``,
            ``"fgsm"``, ``"pgd"``, ``"cw"``, or an instance of a class in
            :mod:`ipguard_jax.baselines` to set its parameters (baselines carry their own step
            budget and step size; ``config`` still sets ``num``, ``init``, ``target``,
            ``batch_size``, ``keep`` and the loop).
        mesh: ``"auto"`` (default) shards the batch over all devices when there are several
            and does nothing on one; ``None`` keeps everything on the default device; or a
            ``jax.sharding.Mesh`` (use ``AxisType.Auto`` axes), whose axes all split the batch.
            The chunk size is rounded up to a multiple of the device count; the padding is
            masked out.
        checkpoint: a directory where progress is saved (orbax) every ``checkpoint_every``
            chunks; a run killed part-way and started again with the same arguments resumes
            from it and returns the same fingerprints. A directory holding another run's
            checkpoint (another config, method, key, owner or data) is refused, and what is
            restored is checked first. The checkpoint holds the candidate points in
            plaintext: it is deleted when the run succeeds, unless ``keep_checkpoint``.
        checkpoint_every: chunks (or refills, with ``compact=True``) between checkpoints.
        keep_checkpoint: keep the checkpoint directory after a successful run.
        progress: show a progress bar (of converged points with ``keep="converged"``, of
            candidates with ``keep="all"``).

    Returns:
        :class:`Fingerprints` with ``num`` points (fewer only if too few converged), in candidate
        order, and their provenance in ``metadata``. Every label is the owner's prediction at
        the final point, computed again after the run (in float32).

    Raises:
        ValueError: bad data (shape, NaN/inf, outside the bounds, too few), ``data`` given
            without ``init="data"``, non-finite logits, ``checkpoint_every`` not an int > 0,
            ``precision="bfloat16"`` with a baseline, an unknown ``method`` name, a bad
            ``mesh`` string, an int key outside ``[0, 2**64)``, or a ``checkpoint``
            directory that holds another run or fails its checks.
        TypeError: a wrong type for an argument.

    Warns:
        ConvergenceWarning: with ``keep="converged"``, fewer than ``num`` points converged
            within the candidate budget.

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
    method = methods.resolve_method(method)
    method.check(classifier)
    plan = method.plan(config)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be an int > 0, got {checkpoint_every!r}")
    saver = None if checkpoint is None else _Checkpoint(checkpoint, checkpoint_every)
    key_source = "explicit"
    if key is None:
        saved = None if saver is None else saver.saved_key()
        key, key_source = (_key_from_record(saved, saver.directory), "checkpoint") \
            if saved is not None else (secret_key(), "os")
    key = as_key(key)
    place = Placement(resolve_mesh(mesh))
    if config.precision != "float32" and not isinstance(method, methods.IPGuard):
        raise ValueError(f"precision={config.precision!r} is for the ipguard method; the "
                         f"baselines run in float32")
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
    batch = place.padded(min(config.batch_size, budget))
    loop = resolve_loop(config.loop)
    want = config.num

    scalars = place.replicate(dict(
        k=np.float32(config.k), lr=np.float32(method.learning_rate(config)),
        steps=np.int32(method.budget(config)), tol=np.float32(config.tol),
        lo=np.asarray(lo, classifier.dtype), hi=np.asarray(hi, classifier.dtype),
        hyper={name: np.float32(v) if isinstance(v, (int, float)) else v
               for name, v in method.hyper(config).items()}))
    if place.mesh is None:
        scalars = jax.tree.map(jnp.asarray, scalars)
    run_key = jax.random.wrap_key_data(place.replicate(jax.random.key_data(point_key)),
                                       impl=jax.random.key_impl(point_key))

    def starts(ids: np.ndarray) -> tuple[jax.Array, np.ndarray]:
        """Start points and their sources for candidate indices (past the budget: padding)."""
        if config.init == "data":
            source = order[ids % data.shape[0]]
            return place.put(data[source]), source
        return _noise_points(run_key, place.put(ids), scalars["lo"], scalars["hi"],
                             input_shape=classifier.input_shape, dtype=classifier.dtype), ids

    compact = config.compact and loop == "host" and not isinstance(method, methods.CW)
    collector = _Collector(config, want, progress)
    if saver is not None:
        identity = {"config": config.to_dict(), "method": method.to_dict(),
                    "key": _key_record(key), "owner": classifier.params_hash,
                    "input": classifier.input_spec,
                    "data": _data_digest(data) if config.init == "data" else None,
                    "budget": budget, "batch": batch, "compact": compact}
        identity = json.loads(json.dumps(identity))
    apply_fn, params = classifier.apply_fn, classifier.params
    if config.precision != "float32":
        apply_fn = _low_precision(apply_fn, config.precision)
        params = _cast_floats(params, config.precision)
    run = _Run(classifier=classifier, apply_fn=apply_fn, params=place.replicate(params),
               config=config, method=method, plan=plan, loop=loop, key=run_key,
               scalars=scalars, place=place, starts=starts, budget=budget, batch=batch,
               collector=collector, checkpoint=saver)
    try:
        if saver is not None:
            saver.load(collector, identity, budget, _checkpoint_arrays(classifier), (lo, hi))
        (_run_compacted if compact else _run_chunked)(run)
    except BaseException:
        if saver is not None:
            saver.close()
        raise
    finally:
        collector.bar.close()
    arrays, drawn, converged = collector.arrays(), collector.drawn, collector.converged
    if config.precision != "float32":
        converged -= _recheck_in_float32(classifier, arrays, config)
    else:
        relabelled = _relabel(classifier, arrays)
        converged -= relabelled
        if relabelled and saver is not None and saver.resume is not None:
            warnings.warn(
                f"{relabelled} point(s) restored from the checkpoint {saver.directory} carried "
                f"a label the owner does not give there (an edited or damaged checkpoint): "
                f"they now carry the owner's label and count as not converged",
                RuntimeWarning, stacklevel=2)
    screened = method.screen(classifier, arrays, config)
    if screened is not None:
        passed, screening = screened
        converged -= int((arrays["converged"] & ~passed).sum())
        arrays["converged"] = arrays["converged"] & passed
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
        "devices": place.size,
        "processes": jax.process_count(),
        "key": {**_key_record(key), "source": key_source},
        "classifier": {"params_sha256": classifier.params_hash, **classifier.input_spec},
        "num_candidates": drawn,
        "num_converged": converged,
        "convergence_rate": converged / drawn,
        "wall_time_s": round(time.perf_counter() - start_time, 3),
    }
    if screened is not None:
        metadata["screening"] = screening
    fingerprints = Fingerprints(**arrays, metadata=metadata)
    if saver is not None:
        if keep_checkpoint:
            saver.close()
        else:
            saver.remove()
    return fingerprints


def _key_from_record(record: Any, where: str) -> jax.Array:
    """The typed key of a checkpoint's key record (``{"impl": ..., "data": [...]}``)."""
    data = record.get("data") if isinstance(record, dict) else None
    if not (isinstance(data, list) and data and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in data)):
        raise ValueError(f"checkpoint directory {where} is invalid: its key record is not a "
                         f"list of uint32 words; delete it to start afresh")
    try:
        return jax.random.wrap_key_data(np.asarray(data, np.uint32), impl=str(record["impl"]))
    except Exception:
        raise ValueError(f"checkpoint directory {where} is invalid: unknown key impl "
                         f"{str(record.get('impl'))[:40]!r}; delete it to start afresh") from None


def _checkpoint_arrays(classifier: Classifier) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-point shape and dtype of the arrays a generation checkpoint holds."""
    scalar = {name: ((), np.dtype(np.int32)) for name in ("labels", "i", "j", "steps")}
    return {"x": (classifier.input_shape, np.dtype(classifier.dtype)), **scalar,
            "loss": ((), np.dtype(np.float32)), "converged": ((), np.dtype(bool))}


def _relabel(classifier: Classifier, arrays: dict[str, np.ndarray],
             batch_size: int = 1024) -> int:
    """Sets every label to the owner's prediction at its point, and ``converged`` to false
    where that changed a converged point's label; returns how many converged points lost it."""
    if not len(arrays["x"]):
        return 0
    labels = classifier.predict(arrays["x"], batch_size)  # refuses undefined labels
    changed = labels != arrays["labels"]
    lost = int((changed & arrays["converged"]).sum())
    arrays["labels"] = labels
    arrays["converged"] = arrays["converged"] & ~changed
    return lost


def _recheck_in_float32(classifier: Classifier, arrays: dict[str, np.ndarray],
                        config: FingerprintConfig, batch_size: int = 1024) -> int:
    """Labels, losses and convergence of low-precision results under the float32 owner (the
    fingerprint is the owner's label, whatever precision found the point); returns how many
    points lost their convergence."""
    losses, labels = [], []
    for s in range(0, len(arrays["x"]), batch_size):
        logits = classifier(arrays["x"][s:s + batch_size])
        losses.append(np.asarray(core.batched_ipguard_loss(
            logits, jnp.asarray(arrays["i"][s:s + batch_size]),
            jnp.asarray(arrays["j"][s:s + batch_size]), jnp.float32(config.k))))
        labels.append(labels_from_logits(logits, s))
    before = int(arrays["converged"].sum())
    if labels:
        arrays["loss"] = np.concatenate(losses)
        arrays["labels"] = np.concatenate(labels)
        arrays["converged"] = arrays["loss"] <= config.tol
    return before - int(arrays["converged"].sum())


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
        A suggested ``k`` (a float; 0 when the median gap is 0, e.g. on tied logits).

    Raises:
        ValueError: ``fraction`` is not a number > 0, or a bad ``x`` (shape, NaN/inf, empty).
        TypeError: ``x`` is not a floating array.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ipguard_jax import Classifier, suggest_k
        >>> clf = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
        >>> x = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.0], [0.75, 0.25, 0.0]], np.float32)
        >>> suggest_k(clf, x)  # a quarter of the median top-2 gap, 0.5
        0.125
    """
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
            and 0 < fraction < float("inf")):
        raise ValueError(f"fraction must be a finite number > 0, got {fraction!r}")
    x = classifier.check_input(x)
    gaps = []
    for s in range(0, x.shape[0], batch_size):
        top2 = jax.lax.top_k(classifier(x[s:s + batch_size]), 2)[0]
        gaps.append(np.asarray(top2[:, 0] - top2[:, 1]))
    return float(fraction * np.median(np.concatenate(gaps)))
