"""Compaction: one working batch whose finished points are swapped for fresh candidates."""

from __future__ import annotations

import numpy as np

from ipguard_jax.runners import programs
from ipguard_jax.runners.run import Run

__all__ = ["MIN_ROWS_PER_DEVICE", "shrunk_size", "Queue", "run_compacted"]


#: A shrinking working batch keeps at least this many rows per device: XLA:CPU computes a
#: single row with other kernels than a batch, so rows would no longer match across sizes.
MIN_ROWS_PER_DEVICE = 2


def shrunk_size(batch: int, running: int, devices: int) -> int:
    """The working batch once ``running`` points are left: ``batch`` halved while they fit.

    Halving (not the exact count) bounds the number of compiled batch shapes to
    ``log2(batch)``; a size stays a multiple of ``devices`` with at least
    :data:`MIN_ROWS_PER_DEVICE` rows on each.

    Example:
        >>> shrunk_size(16, 5, 1), shrunk_size(16, 9, 1), shrunk_size(16, 0, 1)
        (8, 16, 2)
        >>> shrunk_size(64, 3, 8)
        16
    """
    floor = MIN_ROWS_PER_DEVICE * devices
    size = batch
    while size // 2 >= max(running, floor) and (size // 2) % devices == 0:
        size //= 2
    return size


class Queue:
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


def run_compacted(run: Run) -> None:
    """One working batch whose finished points are swapped for fresh candidates as it runs.

    Every ``block_steps`` steps the host looks at which slots stopped (converged, or out of
    steps); once a quarter of the batch has, their results are taken out and the slots refilled
    with the next candidates, so the steps go to unfinished points instead of waiting for the
    slowest one. Each candidate keeps its own step budget, targets and optimiser state, so it
    follows the same path as in the chunked run.

    Once no candidate is left to start, the batch shrinks by halves (see :func:`shrunk_size`)
    to the points still running, so the slowest ones (at k=10 a few percent run to the step
    limit) do not drag a mostly empty batch along.
    """
    spec, params, sc = run.spec, run.params, run.sc
    place, batch, collector, stats = run.place, run.batch, run.collector, run.stats
    resume = run.checkpoint.resume_point() if run.checkpoint is not None else None
    queue = Queue(*(resume or ((), 0)), run.budget)
    first = queue.take(batch)
    slot_id = np.full(batch, -1)  # -1: empty slot
    slot_id[:len(first)] = first
    x0, slot_source = run.starts(np.maximum(slot_id, 0))
    points, state = programs.start(spec, params, sc, x0, run.key,
                                   place.put(np.maximum(slot_id, 0)), place.put(slot_id >= 0),
                                   {})
    stats["programs"] += 1
    threshold = max(1, batch // 4)
    budget_steps = int(sc["steps"])
    refills = 0
    while True:
        state, _ = programs.advance(spec, run.config.block_steps, params, sc, points, state)
        done, steps = place.fetch((state.done, state.steps))
        stats["programs"] += 1
        stats["syncs"] += 1
        stats["blocks"] += 1
        stats["point_steps"] += run.config.block_steps * batch
        stopped = done | (steps >= budget_steps)
        finished = (slot_id >= 0) & stopped
        running = (slot_id >= 0) & ~stopped
        if finished.sum() < threshold and running.any():
            continue
        out = place.fetch(programs.finish(spec, params, sc, points, state))
        stats["programs"] += 1
        stats["syncs"] += 1
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
            points, state = programs.refill(spec, params, sc, points, state, x0, run.key,
                                            place.put(np.maximum(new_ids, 0)),
                                            place.put(refill), place.put(finished & ~refill))
            stats["programs"] += 1
        else:  # nothing left to start: the finished slots only stop (no owner pass to prepare)
            state = state._replace(done=state.done | place.put(finished))
        slot_id = new_ids
        alive = np.flatnonzero(slot_id >= 0)
        size = batch if queue.lowest() < np.inf else shrunk_size(batch, len(alive), place.size)
        if size < batch:
            spare = np.flatnonzero(slot_id < 0)[:size - len(alive)]
            keep = np.concatenate([alive, spare])
            points, state = programs.take(points, state, place.put(keep),
                                          place.put(np.arange(size) < len(alive)))
            stats["programs"] += 1
            slot_id, slot_source = slot_id[keep], slot_source[keep]
            batch, threshold = size, max(1, size // 4)
