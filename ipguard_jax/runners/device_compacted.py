"""Compaction inside the compiled loop: the accelerator path's refills without host round-trips.

The host-driven compaction (:mod:`~ipguard_jax.runners.compacted`) looks at the working batch
after every block of steps. Here one compiled ``lax.while_loop`` does the same on the device: it
runs a block of steps, and once a quarter of the slots have stopped it measures them, writes
their results into an output buffer indexed by candidate id, and refills the slots with the next
candidates of a device-resident queue (their start points gathered from the data, or drawn from
their keys), all with gathers, scatters and masks. It returns to the host only when the host
has work to do:

* the run is over (the first ``num`` converged candidates are known, or every candidate ran);
* a checkpoint is due (every ``checkpoint_every`` refills, when the run has a checkpoint);
* the queue is empty and the running points fit in half the batch: the host shrinks the batch
  by half (one compiled program per size, ``log2(batch)`` at most) and goes on.

It follows the host-driven compaction's rules exactly (the same block length, the same refill
threshold, the same stopping rule, the same shrinking), so it starts the same candidates and
each candidate follows the same path: the same fingerprints for the same key.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ipguard_jax.runners import programs
from ipguard_jax.runners.compacted import MIN_ROWS_PER_DEVICE, Queue, shrunk_size
from ipguard_jax.runners.run import Run

__all__ = ["Source", "Working", "run_device_compacted"]

_STOP, _CHECKPOINT, _SHRINK = 1, 2, 3
_OUTPUTS = ("x", "labels", "i", "j", "loss", "converged", "steps", "finite")


class Source(NamedTuple):
    """Where start points come from (static): ``"data"`` (rows of a device array, in a random
    order) or ``"noise"`` (uniform in the box, drawn from each candidate's key)."""
    kind: str
    input_shape: tuple[int, ...]
    dtype: str


class Working(NamedTuple):
    """The device-side state of a run (a pytree)."""
    points: programs.Points
    state: Any
    slot_id: jax.Array      # (W,) candidate id per slot, -1 for an empty slot
    queue: jax.Array        # (L,) candidate ids still to start, in order
    qpos: jax.Array         # () how many of them have started
    out: dict[str, jax.Array]  # (budget, ...) results by candidate id, and "filled"
    refills: jax.Array      # () refills since the last return to the host
    blocks: jax.Array       # () step blocks run
    point_steps: jax.Array  # () steps times slots of those blocks


def _starts(source: Source, sc, key, data, order, ids):
    if source.kind == "data":
        return data[order[ids % data.shape[0]]]
    return programs.noise_points(key, ids, sc["lo"], sc["hi"], input_shape=source.input_shape,
                                 dtype=jnp.dtype(source.dtype))


def _settled(out, want: int, lowest_open):
    """Whether the first ``want`` converged candidates (by id) are known."""
    converged = out["converged"] & out["filled"]
    count = jnp.cumsum(converged.astype(jnp.int32))
    enough = count[-1] >= want
    id_want = jnp.argmax(count >= want)
    return enough & (id_want < lowest_open)


@functools.partial(jax.jit, static_argnames=("spec", "source", "block", "want",
                                             "max_refills", "devices"))
def _segment(spec, source: Source, block: int, want: int, max_refills: int, devices: int,
             params, sc, key, data, order, work: Working):
    """Runs blocks, measures, writes out and refills on the device until the host is needed;
    returns the working state and why it stopped."""
    width = work.slot_id.shape[0]
    budget = work.out["filled"].shape[0]
    threshold = max(1, width // 4)
    floor = MIN_ROWS_PER_DEVICE * devices
    can_halve = (width // 2 >= floor) and (width // 2) % devices == 0
    big = jnp.iinfo(jnp.int32).max

    def body(carry):
        work, _ = carry
        state, _ = programs.advance(spec, block, params, sc, work.points, work.state)
        work = work._replace(state=state, blocks=work.blocks + 1,
                             point_steps=work.point_steps + block * width)
        stopped = state.done | (state.steps >= sc["steps"])
        live = work.slot_id >= 0
        finished, running = live & stopped, live & ~stopped
        exhausted = work.qpos >= work.queue.shape[0]

        def skip(work):
            return work, jnp.int32(0)

        def refill(work):
            result = programs.finish(spec, params, sc, work.points, work.state)
            index = jnp.where(finished, work.slot_id, budget)  # out of range: dropped
            out = {name: work.out[name].at[index].set(result[name], mode="drop")
                   for name in _OUTPUTS}
            out["filled"] = work.out["filled"].at[index].set(True, mode="drop")
            lowest_open = jnp.minimum(
                jnp.min(jnp.where(running, work.slot_id, big)),
                jnp.where(exhausted, big, work.queue[jnp.minimum(work.qpos,
                                                                 work.queue.shape[0] - 1)]))
            over = _settled(out, want, lowest_open) if want else jnp.bool_(False)
            over = over | (~running.any() & exhausted)
            # The next candidates take the finished slots, in slot order.
            rank = jnp.cumsum(finished.astype(jnp.int32)) - 1
            fresh = finished & (rank < work.queue.shape[0] - work.qpos)
            take = jnp.minimum(work.qpos + rank, work.queue.shape[0] - 1)
            new_ids = jnp.where(fresh, work.queue[take], jnp.where(finished, -1, work.slot_id))
            ids = jnp.maximum(new_ids, 0)
            x0 = _starts(source, sc, key, data, order, ids)
            points, state = programs.refill(spec, params, sc, work.points, work.state, x0, key,
                                            ids, fresh, finished & ~fresh)
            qpos = work.qpos + fresh.sum()
            alive = (new_ids >= 0).sum()
            shrink = (qpos >= work.queue.shape[0]) & (2 * alive <= width) & can_halve
            # After a stop the host reads only the outputs and the counters, so the refilled
            # slots need not be undone.
            work = work._replace(points=points, state=state, slot_id=new_ids, qpos=qpos,
                                 out=out, refills=work.refills + 1)
            event = jnp.where(over, _STOP, jnp.where(
                shrink, _SHRINK, jnp.where(work.refills >= max_refills, _CHECKPOINT, 0)))
            return work, event.astype(jnp.int32)

        due = (finished.sum() >= threshold) | ~running.any()
        return jax.lax.cond(due, refill, skip, work)

    def cond(carry):
        return carry[1] == 0

    return jax.lax.while_loop(cond, body, (work, jnp.int32(0)))


def _empty_outputs(run: Run, budget: int) -> dict[str, np.ndarray]:
    out = {"x": np.zeros((budget, *run.input_shape), run.dtype)}
    for name in ("labels", "i", "j", "steps"):
        out[name] = np.zeros(budget, np.int32)
    out["loss"] = np.zeros(budget, np.float32)
    for name in ("converged", "finite", "filled"):
        out[name] = np.zeros(budget, bool)
    return out


def run_device_compacted(run: Run) -> None:
    """Compaction with the refills inside the compiled loop (see the module notes)."""
    spec, params, sc, place = run.spec, run.params, run.sc, run.place
    collector, stats, config = run.collector, run.stats, run.config
    resume = run.checkpoint.resume_point() if run.checkpoint is not None else None
    pending, next_id = resume or ((), 0)
    host_queue = Queue(pending, next_id, run.budget)
    ids = np.asarray(host_queue.take(run.budget), np.int32)  # every candidate still to start
    if not len(ids):
        return
    batch = run.batch
    first = ids[:batch]
    slot_id = np.full(batch, -1, np.int32)
    slot_id[:len(first)] = first
    x0, _ = run.starts(np.maximum(slot_id, 0))
    points, state = programs.start(spec, params, sc, x0, run.key,
                                   place.put(np.maximum(slot_id, 0)), place.put(slot_id >= 0),
                                   {})
    stats["programs"] += 1
    out = {name: place.replicate(a) for name, a in _empty_outputs(run, run.budget).items()}
    work = Working(points=points, state=state, slot_id=place.put(slot_id),
                   queue=place.replicate(ids), qpos=jnp.int32(len(first)), out=out,
                   refills=jnp.int32(0), blocks=jnp.int32(0), point_steps=jnp.int32(0))
    want = config.num if config.keep == "converged" else 0
    every = run.checkpoint.every if run.checkpoint is not None else np.iinfo(np.int32).max
    source = Source(config.init, tuple(run.input_shape), str(np.dtype(run.dtype)))
    if run.data is None:
        data = order = place.replicate(np.zeros(1, np.int32))
    else:
        data, order = (place.replicate(np.asarray(a)) for a in run.data)
    seen = None
    while True:
        work, event = _segment(spec, source, config.block_steps, want, int(every), place.size,
                               params, sc, run.key, data, order, work)
        event = int(event)
        stats["programs"] += 1
        stats["syncs"] += 1
        work = work._replace(refills=jnp.int32(0))
        if event == _STOP:
            break
        if event == _CHECKPOINT and run.checkpoint is not None:
            seen = _collect(run, work, collector, seen)
            slot_ids = np.asarray(place.fetch(work.slot_id))
            qpos = int(work.qpos)
            left = [int(i) for i in ids[qpos:]]
            start_next = next(iter([i for i in left if i >= next_id]), run.budget) \
                if left else run.budget
            run.checkpoint.maybe_save(
                collector, next_id=start_next,
                pending=sorted([int(i) for i in slot_ids if i >= 0]
                               + [i for i in left if i < start_next]),
                chunks=run.checkpoint.every)
        if event == _SHRINK:
            slot_ids = np.asarray(place.fetch(work.slot_id))
            alive = np.flatnonzero(slot_ids >= 0)
            size = shrunk_size(len(slot_ids), len(alive), place.size)
            spare = np.flatnonzero(slot_ids < 0)[:size - len(alive)]
            keep = np.concatenate([alive, spare])
            points, state = programs.take(work.points, work.state, place.put(keep),
                                          place.put(np.arange(size) < len(alive)))
            work = work._replace(points=points, state=state,
                                 slot_id=place.put(slot_ids[keep]))
            stats["programs"] += 1
    stats["blocks"] += int(work.blocks)
    stats["point_steps"] += int(work.point_steps)
    _collect(run, work, collector, seen)


def _collect(run: Run, work: Working, collector, seen: np.ndarray | None) -> np.ndarray:
    """Hands the results written since the last call (``seen``: those already handed) to the
    collector; returns the new ``seen``."""
    out = run.place.fetch(work.out)
    if seen is None:
        seen = np.zeros(len(out["filled"]), bool)
    new = np.flatnonzero(out["filled"] & ~seen)
    if len(new):
        collector.add({name: out[name][new] for name in _OUTPUTS}, new, run.sources(new))
    return seen | out["filled"]
