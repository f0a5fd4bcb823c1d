"""Candidates in consecutive chunks: each chunk runs until all its points stop."""

from __future__ import annotations

import numpy as np

from ipguard_jax import methods
from ipguard_jax.runners import programs
from ipguard_jax.runners.run import Run

__all__ = ["run_candidates", "run_search", "run_chunked"]


def run_candidates(run: Run, x0, ids, valid, extra_in):
    """Runs one chunk of candidates to the end of their step budget; numpy outputs."""
    place = run.place
    args = (run.params, run.sc, x0, run.key, place.put(ids), place.put(valid))
    extra_in = {name: place.put(v) for name, v in extra_in.items()}
    if run.loop == "device":
        out = programs.run_chunk(run.spec, *args, extra_in)
        run.stats["programs"] += 1
    else:
        out = programs.run_chunk_host_loop(run.spec, run.config.block_steps, *args, extra_in,
                                           stats=run.stats)
    run.stats["syncs"] += 1
    return place.fetch(out)


def run_search(run: Run, x0, ids, valid):
    """Carlini-Wagner's binary search over ``c``: ``search_steps`` runs of the chunk, each from
    the same start, keeping every point's least-distorted success."""
    method, num = run.method, len(ids)
    c = np.full(num, method.initial_c, np.float32)
    lower, upper = np.zeros(num, np.float32), np.full(num, np.inf, np.float32)
    lo, hi = run.sc["lo"], run.sc["hi"]
    origin = np.clip(run.place.fetch(x0), np.asarray(lo), np.asarray(hi))
    best, best_dist, total_steps = None, np.full(num, np.inf), np.zeros(num, np.int64)
    for _ in range(method.search_steps):
        out = run_candidates(run, x0, ids, valid, {"c": c})
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


def run_chunked(run: Run) -> None:
    """Candidates in consecutive chunks of ``batch``; each chunk runs until all its points stop."""
    collector, budget = run.collector, run.budget
    drawn = collector.drawn  # > 0 when resumed from a checkpoint
    chunks = 0
    while drawn < budget and not collector.settled(lowest_open=np.inf):
        ids = np.arange(drawn, drawn + run.batch)
        valid = ids < budget
        x0, source = run.starts(ids)
        if isinstance(run.method, methods.CW):
            out = run_search(run, x0, ids, valid)
        else:
            out = run_candidates(run, x0, ids, valid, {})
        collector.add({name: v[valid] for name, v in out.items()}, ids[valid], source[valid])
        drawn += int(valid.sum())
        chunks += 1
        if run.checkpoint is not None:
            run.checkpoint.maybe_save(collector, next_id=drawn, pending=(), chunks=chunks)
