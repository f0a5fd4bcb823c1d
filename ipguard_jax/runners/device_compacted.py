"""Compaction inside the compiled loop: the accelerator path's refills without host round-trips.

The host-driven compaction (:mod:`~ipguard_jax.runners.compacted`) looks at the working batch
after every block of steps and, once a quarter of its slots have stopped, refills them with
programs over the whole batch. Here one compiled ``lax.while_loop`` does the refills on the
device, and a refill costs what the slots it refills cost, not what the batch costs: after every
block of steps, while at least ``rows`` slots have stopped (``rows``: a fixed sub-batch, by
default a sixteenth of the working batch and at least 2 rows per device), it gathers the first
``rows`` stopped slots, measures them, writes their results into an output buffer indexed by
candidate id, starts the next ``rows`` candidates of a device-resident queue (their start
points gathered from the data, or drawn from their keys) and scatters them into those slots,
all with gathers, scatters and masks over ``rows`` rows. So a slot waits at most until
``rows - 1`` others have stopped too, and refilling often costs little. It returns to the host
only when the host has work to do:

* the run is over (the first ``num`` converged candidates are known, or every candidate ran);
* a checkpoint is due (every ``checkpoint_every`` working batches' worth of finished
  candidates, when the run has a checkpoint);
* the queue is empty and the running points fit in half the batch: the host shrinks the batch
  by half (one compiled program per size, ``log2(batch)`` at most) and goes on.

Every candidate follows the same path as in the host-driven compaction and in whole chunks (its
own step budget, targets, optimiser state; the block length and the stopping rule are the
same), and candidates start in the same order, so the fingerprints are the same for the same
key (bit for bit on the MLP of the tests, where a row's result does not depend on the batch it
is computed in). Only the count of candidates drawn with ``keep="converged"`` may differ, since
the refills come at other times. :func:`refill_policy` changes the sub-batch (for measurements).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ipguard_jax.runners import programs
from ipguard_jax.runners.compacted import MIN_ROWS_PER_DEVICE, Queue, shrunk_size
from ipguard_jax.runners.run import Run

__all__ = ["RefillPolicy", "Source", "Working", "refill_policy", "refill_rows",
           "run_device_compacted"]

_STOP, _CHECKPOINT, _SHRINK = 1, 2, 3
_OUTPUTS = ("x", "labels", "i", "j", "loss", "converged", "steps", "finite")


@dataclasses.dataclass(frozen=True)
class RefillPolicy:
    """When the compiled loop refills stopped slots, and how many at a time.

    Attributes:
        divisor: a refill is due once ``width // divisor`` slots of a working batch of
            ``width`` have stopped (at least :data:`MIN_ROWS_PER_DEVICE` per device).
        whole_batch: refill every stopped slot at once with programs over the whole batch
            (what the host-driven compaction does, with ``divisor=4``), instead of sub-batches
            of ``width // divisor`` rows.

    Example:
        >>> RefillPolicy().divisor, RefillPolicy(4, whole_batch=True).whole_batch
        (16, True)
    """
    divisor: int = 16
    whole_batch: bool = False

    def __post_init__(self):
        if isinstance(self.divisor, bool) or not isinstance(self.divisor, int) \
                or self.divisor < 1:
            raise ValueError(f"divisor must be an int >= 1, got {self.divisor!r}")


_policy = RefillPolicy()


@contextlib.contextmanager
def refill_policy(policy: RefillPolicy) -> Iterator[RefillPolicy]:
    """Runs the device-side compaction started in the block with ``policy`` (default
    ``RefillPolicy()``: sub-batches of a sixteenth of the working batch); for measurements.

    Example:
        >>> with refill_policy(RefillPolicy(8)) as policy:
        ...     policy.divisor
        8
    """
    global _policy
    if not isinstance(policy, RefillPolicy):
        raise TypeError(f"policy must be a RefillPolicy, got {type(policy).__name__}")
    previous, _policy = _policy, policy
    try:
        yield policy
    finally:
        _policy = previous


def refill_rows(width: int, devices: int, policy: RefillPolicy | None = None
                ) -> tuple[int, int]:
    """``(threshold, rows)``: a refill is due once ``threshold`` slots of a working batch of
    ``width`` have stopped, and refills ``rows`` of them at a time.

    ``rows`` is a multiple of ``devices`` with at least :data:`MIN_ROWS_PER_DEVICE` rows per
    device (fewer only when the batch itself is smaller), and at most ``width``.

    Example:
        >>> refill_rows(128, 1), refill_rows(16, 1), refill_rows(16, 8)
        ((8, 8), (2, 2), (16, 16))
        >>> refill_rows(128, 1, RefillPolicy(4, whole_batch=True))
        (32, 128)
    """
    policy = _policy if policy is None else policy
    if policy.whole_batch:
        return max(1, width // policy.divisor), width
    rows = max(width // policy.divisor, MIN_ROWS_PER_DEVICE * devices)
    rows = min(-(-rows // devices) * devices, width)
    return rows, rows


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
    written: jax.Array      # () results written since the last return to the host
    refills: jax.Array      # () sub-batch refills run
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


def _finished(work: Working, sc) -> jax.Array:
    """Slots holding a candidate that stopped (converged, or out of steps)."""
    stopped = work.state.done | (work.state.steps >= sc["steps"])
    return (work.slot_id >= 0) & stopped


def _refill(spec, source: Source, rows: int, params, sc, key, data, order,
            work: Working) -> Working:
    """Writes out the first ``rows`` stopped slots (in slot order) and starts the next
    candidates of the queue in them; slots left without a candidate stop for good. Every
    program here runs on ``rows`` rows."""
    width = work.slot_id.shape[0]
    budget = work.out["filled"].shape[0]
    length = work.queue.shape[0]
    slots = jnp.nonzero(_finished(work, sc), size=rows, fill_value=width)[0]
    valid = slots < width  # a prefix: the fill comes last
    at = jnp.minimum(slots, width - 1)
    points, state = jax.tree.map(lambda a: a[at], (work.points, work.state))
    result = programs.finish(spec, params, sc, points, state)
    index = jnp.where(valid, work.slot_id[at], budget)  # out of range: dropped
    out = {name: work.out[name].at[index].set(result[name], mode="drop") for name in _OUTPUTS}
    out["filled"] = work.out["filled"].at[index].set(True, mode="drop")
    # The next candidates, in queue order, take the slots in slot order.
    rank = jnp.arange(rows)
    fresh = valid & (rank < length - work.qpos)
    new_ids = jnp.where(fresh, work.queue[jnp.minimum(work.qpos + rank, length - 1)], -1)
    ids = jnp.maximum(new_ids, 0)
    x0 = _starts(source, sc, key, data, order, ids)
    new_points, new_state = programs.start(spec, params, sc, x0, key, ids, fresh, {})
    into = jnp.where(valid, slots, width)  # out of range: dropped
    put = lambda old, new: old.at[into].set(new, mode="drop")
    return work._replace(points=jax.tree.map(put, work.points, new_points),
                         state=jax.tree.map(put, work.state, new_state),
                         slot_id=work.slot_id.at[into].set(new_ids, mode="drop"),
                         qpos=work.qpos + fresh.sum(), out=out,
                         written=work.written + valid.sum(), refills=work.refills + 1)


@functools.partial(jax.jit, static_argnames=("spec", "source", "block", "want", "threshold",
                                             "rows", "devices"))
def _segment(spec, source: Source, block: int, want: int, threshold: int, rows: int,
             devices: int, params, sc, key, data, order, checkpoint_rows, work: Working):
    """Runs blocks, writes out and refills on the device until the host is needed; returns
    the working state and why it stopped."""
    width = work.slot_id.shape[0]
    floor = MIN_ROWS_PER_DEVICE * devices
    can_halve = (width // 2 >= floor) and (width // 2) % devices == 0
    big = jnp.iinfo(jnp.int32).max
    length = work.queue.shape[0]

    def more(work):
        finished = _finished(work, sc).sum()
        running = (work.slot_id >= 0).sum() > finished
        return (finished >= threshold) | ((finished > 0) & ~running)

    def drain(work):
        work = jax.lax.while_loop(
            more, lambda w: _refill(spec, source, rows, params, sc, key, data, order, w), work)
        live = work.slot_id >= 0
        exhausted = work.qpos >= length
        lowest_open = jnp.minimum(
            jnp.min(jnp.where(live, work.slot_id, big)),
            jnp.where(exhausted, big, work.queue[jnp.minimum(work.qpos, length - 1)]))
        over = _settled(work.out, want, lowest_open) if want else jnp.bool_(False)
        over = over | (~live.any() & exhausted)
        shrink = exhausted & (2 * live.sum() <= width) & can_halve
        # After a stop the host reads only the outputs and the counters, so the refilled
        # slots need not be undone.
        event = jnp.where(over, _STOP, jnp.where(
            shrink, _SHRINK, jnp.where(work.written >= checkpoint_rows, _CHECKPOINT, 0)))
        return work, event.astype(jnp.int32)

    def skip(work):
        return work, jnp.int32(0)

    def body(carry):
        work, _ = carry
        state, _ = programs.advance(spec, block, params, sc, work.points, work.state)
        work = work._replace(state=state, blocks=work.blocks + 1,
                             point_steps=work.point_steps + block * width)
        finished = _finished(work, sc).sum()
        running = (work.slot_id >= 0).sum() > finished
        return jax.lax.cond((finished >= threshold) | ~running, drain, skip, work)

    return jax.lax.while_loop(lambda carry: carry[1] == 0, body, (work, jnp.int32(0)))


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
    zero = jnp.int32(0)
    work = Working(points=points, state=state, slot_id=place.put(slot_id),
                   queue=place.replicate(ids), qpos=jnp.int32(len(first)), out=out,
                   written=zero, refills=zero, blocks=zero, point_steps=zero)
    want = config.num if config.keep == "converged" else 0
    source = Source(config.init, tuple(run.input_shape), str(np.dtype(run.dtype)))
    if run.data is None:
        data = order = place.replicate(np.zeros(1, np.int32))
    else:
        data, order = (place.replicate(np.asarray(a)) for a in run.data)
    policy = _policy
    seen = None
    while True:
        width = len(slot_id)
        threshold, rows = refill_rows(width, place.size, policy)
        # A checkpoint every `checkpoint_every` working batches' worth of finished candidates.
        every = (run.checkpoint.every * run.batch if run.checkpoint is not None
                 else np.iinfo(np.int32).max)
        work, event = _segment(spec, source, config.block_steps, want, threshold, rows,
                               place.size, params, sc, run.key, data, order,
                               jnp.int32(min(every, np.iinfo(np.int32).max)), work)
        event = int(event)
        stats["programs"] += 1
        stats["syncs"] += 1
        work = work._replace(written=jnp.int32(0))
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
            slot_id = slot_ids[keep]
            work = work._replace(points=points, state=state, slot_id=place.put(slot_id))
            stats["programs"] += 1
    stats["blocks"] += int(work.blocks)
    stats["point_steps"] += int(work.point_steps)
    stats["refills"] = stats.get("refills", 0) + int(work.refills)
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
