"""Compaction inside the compiled loop: the accelerator path's refills without host round-trips.

The host-driven compaction (:mod:`~ipguard_jax.runners.compacted`) looks at the working batch
after every block of steps and, once a quarter of its slots have stopped, refills them with
programs over the whole batch. Here one compiled ``lax.while_loop`` does the refills on the
device, and a refill costs what the slots it refills cost, not what the batch costs: after every
block of steps, while at least ``rows`` slots have stopped (``rows``: a fixed sub-batch, by
default a sixteenth of the slots and at least 2), it gathers the first ``rows`` stopped slots,
measures them, writes their results into an output buffer, starts the next ``rows`` candidates
of a device-resident queue (their start points gathered from the data, or drawn from their
keys) and scatters them into those slots, all with gathers, scatters and masks over ``rows``
rows. So a slot waits at most until ``rows - 1`` others have stopped too, and refilling often
costs little.

**Each device compacts its own slots.** Over a mesh the loop is a ``jax.shard_map``: every
device holds ``W / D`` slots of the working batch, its own queue (the candidates dealt out in
turn, so the queues run out together) and its own output buffer, and refills on its own
schedule. The devices exchange only a few scalars per block (all-reduces: how many are
running, whether the queues are empty, the lowest candidate still open, how many converged
below it), to agree on when the loop stops; no point, candidate or result crosses devices
until the host reads the results (``tests/test_scale.py`` checks the compiled program).

The loop returns to the host only when the host has work to do:

* the run is over (the first ``num`` converged candidates are known, or every candidate ran);
* a checkpoint is due (every ``checkpoint_every`` working batches' worth of finished
  candidates, when the run has a checkpoint);
* every queue is empty and the running points fit in half the batch: the host hands over the
  results so far, shrinks the batch by half (one compiled program per size, ``log2(batch)`` at
  most), deals the running points out over the devices again, and goes on.

Every candidate follows the same path as in the host-driven compaction and in whole chunks (its
own step budget, targets, optimiser state; the block length and the stopping rule are the
same), so the fingerprints are the same for the same key (bit for bit on the MLP of the tests,
where a row's result does not depend on the batch it is computed in), on one device or many.
On one device candidates start in the same order as in the host-driven compaction. Only the
count of candidates drawn with ``keep="converged"`` may differ, since the refills come at other
times. :func:`refill_policy` changes the sub-batch (for measurements).
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
from jax.sharding import PartitionSpec

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
        divisor: a refill is due once ``width // divisor`` of a device's ``width`` slots
            have stopped (at least :data:`MIN_ROWS_PER_DEVICE`).
        whole_batch: refill every stopped slot at once with programs over all the device's
            slots (what the host-driven compaction does, with ``divisor=4``), instead of
            sub-batches of ``width // divisor`` rows.

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
    ``width`` have stopped, and refills ``rows`` of them at a time (the loop calls it with a
    device's slots and ``devices=1``).

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
    """The device-side state of a run (a pytree). Every leaf is split over the devices along
    its leading axis: ``W`` slots, ``D`` devices, ``w = W // D`` slots, a queue of ``L`` and
    an output buffer of ``O`` candidates on each."""
    points: programs.Points
    state: Any
    slot_id: jax.Array      # (W,) candidate id per slot, -1 for an empty slot
    slot_out: jax.Array     # (W,) the slot's row in its device's output buffer
    queue: jax.Array        # (D * L,) each device's candidate ids still to start, in order
    qlen: jax.Array         # (D,) how many entries of a device's queue are real
    qpos: jax.Array         # (D,) how many of them have started
    out: dict[str, jax.Array]  # (D * O, ...) results, and "filled"
    written: jax.Array      # (D,) results written since the last return to the host
    refills: jax.Array      # (D,) sub-batch refills run
    blocks: jax.Array       # (D,) step blocks run
    point_steps: jax.Array  # (D,) steps times slots of those blocks


def _starts(source: Source, sc, key, data, order, ids):
    if source.kind == "data":
        return data[order[ids % data.shape[0]]]
    return programs.noise_points(key, ids, sc["lo"], sc["hi"], input_shape=source.input_shape,
                                 dtype=jnp.dtype(source.dtype))


def _finished(work: Working, sc) -> jax.Array:
    """Slots holding a candidate that stopped (converged, or out of steps)."""
    stopped = work.state.done | (work.state.steps >= sc["steps"])
    return (work.slot_id >= 0) & stopped


def _refill(spec, source: Source, rows: int, params, sc, key, data, order,
            work: Working) -> Working:
    """Writes out the first ``rows`` stopped slots (in slot order) and starts the next
    candidates of the queue in them; slots left without a candidate stop for good. Every
    program here runs on ``rows`` rows. ``work`` is one device's part."""
    width = work.slot_id.shape[0]
    capacity = work.out["filled"].shape[0]
    length = work.queue.shape[0]
    qpos, qlen = work.qpos[0], work.qlen[0]
    slots = jnp.nonzero(_finished(work, sc), size=rows, fill_value=width)[0]
    valid = slots < width  # a prefix: the fill comes last
    at = jnp.minimum(slots, width - 1)
    points, state = jax.tree.map(lambda a: a[at], (work.points, work.state))
    result = programs.finish(spec, params, sc, points, state)
    index = jnp.where(valid, work.slot_out[at], capacity)  # out of range: dropped
    out = {name: work.out[name].at[index].set(result[name], mode="drop") for name in _OUTPUTS}
    out["filled"] = work.out["filled"].at[index].set(True, mode="drop")
    # The next candidates, in queue order, take the slots in slot order; a candidate's row in
    # the output buffer follows the slots' first candidates (width rows) in queue order.
    rank = jnp.arange(rows)
    fresh = valid & (rank < qlen - qpos)
    position = jnp.minimum(qpos + rank, length - 1)
    new_ids = jnp.where(fresh, work.queue[position], -1)
    ids = jnp.maximum(new_ids, 0)
    x0 = _starts(source, sc, key, data, order, ids)
    new_points, new_state = programs.start(spec, params, sc, x0, key, ids, fresh, {})
    into = jnp.where(valid, slots, width)  # out of range: dropped
    put = lambda old, new: old.at[into].set(new, mode="drop")
    return work._replace(points=jax.tree.map(put, work.points, new_points),
                         state=jax.tree.map(put, work.state, new_state),
                         slot_id=work.slot_id.at[into].set(new_ids, mode="drop"),
                         slot_out=work.slot_out.at[into].set(width + position, mode="drop"),
                         qpos=work.qpos + fresh.sum(), out=out,
                         written=work.written + valid.sum(), refills=work.refills + 1)


class _Reduce(NamedTuple):
    """Reductions over the devices of the mesh axes ``axis`` (none: one device)."""
    axis: tuple[str, ...] | None

    def sum(self, x):
        return x if self.axis is None else jax.lax.psum(x, self.axis)

    def min(self, x):
        return x if self.axis is None else jax.lax.pmin(x, self.axis)

    def max(self, x):
        return x if self.axis is None else jax.lax.pmax(x, self.axis)


def _segment_local(spec, source: Source, block: int, want: int, threshold: int, rows: int,
                   width: int, can_halve: bool, reduce: _Reduce, params, sc, key, data, order,
                   checkpoint_rows, out_id, work: Working):
    """One device's part of :func:`_segment`: it steps and refills its own slots alone; the
    devices agree only on why the loop stops (a few scalar reductions per block)."""
    big = jnp.iinfo(jnp.int32).max
    local = work.slot_id.shape[0]
    length = work.queue.shape[0]

    def more(work):
        finished = _finished(work, sc).sum()
        running = (work.slot_id >= 0).sum() > finished
        return (finished >= threshold) | ((finished > 0) & ~running)

    def drain(work):
        return jax.lax.while_loop(
            more, lambda w: _refill(spec, source, rows, params, sc, key, data, order, w), work)

    def event(work):
        """Why the host is needed, if it is (the same on every device)."""
        live = work.slot_id >= 0
        qpos, qlen = work.qpos[0], work.qlen[0]
        exhausted = qpos >= qlen
        lowest_open = reduce.min(jnp.minimum(
            jnp.min(jnp.where(live, work.slot_id, big)),
            jnp.where(exhausted, big, work.queue[jnp.minimum(qpos, length - 1)])))
        all_exhausted = reduce.min(exhausted.astype(jnp.int32)) > 0
        running = reduce.sum(live.sum())
        # Every candidate below the lowest one still open has its result written: the first
        # `want` converged candidates (by id) are known once that many are below it.
        if want:
            below = work.out["converged"] & work.out["filled"] & (out_id < lowest_open)
            over = reduce.sum(below.sum()) >= want
        else:
            over = jnp.bool_(False)
        over = over | ((running == 0) & all_exhausted)
        shrink = all_exhausted & (2 * running <= width) & can_halve
        # After a stop the host reads only the outputs and the counters, so the refilled
        # slots need not be undone.
        return jnp.where(over, _STOP, jnp.where(
            shrink, _SHRINK, jnp.where(reduce.sum(work.written[0]) >= checkpoint_rows,
                                       _CHECKPOINT, 0))).astype(jnp.int32)

    def body(carry):
        work, _ = carry
        state, _ = programs.advance(spec, block, params, sc, work.points, work.state)
        work = work._replace(state=state, blocks=work.blocks + 1,
                             point_steps=work.point_steps + block * local)
        finished = _finished(work, sc).sum()
        running = (work.slot_id >= 0).sum() > finished
        due = (finished >= threshold) | ~running
        work = jax.lax.cond(due, drain, lambda w: w, work)
        # The devices decide together, and only after a refill on one of them (nothing that
        # decides can change otherwise).
        drained = reduce.max(due.astype(jnp.int32)) > 0
        return work, jnp.where(drained, event(work), 0).astype(jnp.int32)

    return jax.lax.while_loop(lambda carry: carry[1] == 0, body, (work, jnp.int32(0)))


@functools.partial(jax.jit, static_argnames=("spec", "source", "block", "want", "threshold",
                                             "rows", "mesh"))
def _segment(spec, source: Source, block: int, want: int, threshold: int, rows: int, mesh,
             params, sc, key, data, order, checkpoint_rows, out_id, work: Working):
    """Runs blocks, writes out and refills on the devices until the host is needed; returns
    the working state and why it stopped. With a mesh each device compacts its own slots
    (``jax.shard_map``); ``threshold`` and ``rows`` are per device."""
    width = work.slot_id.shape[0]
    devices = 1 if mesh is None else mesh.size
    floor = MIN_ROWS_PER_DEVICE * devices
    can_halve = (width // 2 >= floor) and (width // 2) % devices == 0
    axis = None if mesh is None else tuple(mesh.axis_names)
    local = functools.partial(_segment_local, spec, source, block, want, threshold, rows,
                              width, can_halve, _Reduce(axis))
    if mesh is None:
        return local(params, sc, key, data, order, checkpoint_rows, out_id, work)
    split, whole = PartitionSpec(axis), PartitionSpec()
    return jax.shard_map(
        local, mesh=mesh, in_specs=(whole,) * 6 + (split, split), out_specs=(split, whole)
    )(params, sc, key, data, order, checkpoint_rows, out_id, work)


def _empty_outputs(run: Run, rows: int) -> dict[str, np.ndarray]:
    out = {"x": np.zeros((rows, *run.input_shape), run.dtype)}
    for name in ("labels", "i", "j", "steps"):
        out[name] = np.zeros(rows, np.int32)
    out["loss"] = np.zeros(rows, np.float32)
    for name in ("converged", "finite", "filled"):
        out[name] = np.zeros(rows, bool)
    return out


class _Layout(NamedTuple):
    """Which candidates each device runs, and where their results go (host arrays)."""
    slot_id: np.ndarray   # (W,) the slots' candidates, -1 for none
    slot_out: np.ndarray  # (W,) each slot's row in its device's output buffer
    queue: np.ndarray     # (D * L,) each device's queue, -1 past its end
    qlen: np.ndarray      # (D,)
    out_id: np.ndarray    # (D * O,) the candidate of each output row, -1 for none


def _layout(slot_id: np.ndarray, rest: np.ndarray, devices: int) -> _Layout:
    """Device ``d`` keeps the candidates of its slots and runs ``rest[d::devices]`` after them
    (the queue dealt out in turn, so the devices' queues run out at about the same time)."""
    width = len(slot_id)
    local = width // devices
    queues = [rest[d::devices] for d in range(devices)]
    length = max(1, max(len(q) for q in queues))
    queue = np.full((devices, length), -1, np.int32)
    out_id = np.full((devices, local + length), -1, np.int32)
    for d, q in enumerate(queues):
        queue[d, :len(q)] = q
        out_id[d, :local] = slot_id[d * local:(d + 1) * local]
        out_id[d, local:local + len(q)] = q
    return _Layout(slot_id.astype(np.int32), np.tile(np.arange(local, dtype=np.int32), devices),
                   queue.reshape(-1), np.asarray([len(q) for q in queues], np.int32),
                   out_id.reshape(-1))


def _working(run: Run, layout: _Layout, points, state) -> Working:
    place, devices = run.place, run.place.size
    zeros = place.put(np.zeros(devices, np.int32))
    out = {name: place.put(a)
           for name, a in _empty_outputs(run, len(layout.out_id)).items()}
    return Working(points=points, state=state, slot_id=place.put(layout.slot_id),
                   slot_out=place.put(layout.slot_out), queue=place.put(layout.queue),
                   qlen=place.put(layout.qlen), qpos=zeros, out=out, written=zeros,
                   refills=zeros, blocks=zeros, point_steps=zeros)


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
    layout = _layout(slot_id, ids[batch:], place.size)
    work = _working(run, layout, points, state)
    want = config.num if config.keep == "converged" else 0
    source = Source(config.init, tuple(run.input_shape), str(np.dtype(run.dtype)))
    if run.data is None:
        data = order = place.replicate(np.zeros(1, np.int32))
    else:
        data, order = (place.replicate(np.asarray(a)) for a in run.data)
    policy = _policy
    seen = None
    totals = {"blocks": 0, "point_steps": 0, "refills": 0}
    while True:
        width = len(layout.slot_id)
        threshold, rows = refill_rows(width // place.size, 1, policy)
        # A checkpoint every `checkpoint_every` working batches' worth of finished candidates.
        every = (run.checkpoint.every * run.batch if run.checkpoint is not None
                 else np.iinfo(np.int32).max)
        work, event = _segment(spec, source, config.block_steps, want, threshold, rows,
                               place.mesh, params, sc, run.key, data, order,
                               place.replicate(np.int32(min(every, np.iinfo(np.int32).max))),
                               place.put(layout.out_id), work)
        event = int(event)
        stats["programs"] += 1
        stats["syncs"] += 1
        work = work._replace(written=place.put(np.zeros(place.size, np.int32)))
        if event == _STOP:
            break
        if event == _CHECKPOINT and run.checkpoint is not None:
            seen = _collect(run, work, layout, collector, seen)
            slot_ids, qpos = place.fetch((work.slot_id, work.qpos))
            queue = layout.queue.reshape(place.size, -1)
            left = sorted(int(i) for d in range(place.size)
                          for i in queue[d, int(qpos[d]):int(layout.qlen[d])])
            start_next = next(iter([i for i in left if i >= next_id]), run.budget) \
                if left else run.budget
            run.checkpoint.maybe_save(
                collector, next_id=start_next,
                pending=sorted([int(i) for i in slot_ids if i >= 0]
                               + [i for i in left if i < start_next]),
                chunks=run.checkpoint.every)
        if event == _SHRINK:
            # Every queue is empty: hand over what is written, then lay the running points
            # out afresh over a batch half the size (or less), each device with its own.
            seen = _collect(run, work, layout, collector, seen)
            _count(place, work, totals)
            slot_ids = np.asarray(place.fetch(work.slot_id))
            alive = np.flatnonzero(slot_ids >= 0)
            size = shrunk_size(len(slot_ids), len(alive), place.size)
            spare = np.flatnonzero(slot_ids < 0)[:size - len(alive)]
            keep = np.concatenate([alive, spare])
            points, state = programs.take(work.points, work.state, place.put(keep),
                                          place.put(np.arange(size) < len(alive)))
            layout = _layout(slot_ids[keep], np.zeros(0, np.int32), place.size)
            work = _working(run, layout, points, state)
            seen = None
            stats["programs"] += 1
    _count(place, work, totals)
    for name, value in totals.items():
        stats[name] = stats.get(name, 0) + value
    _collect(run, work, layout, collector, seen)


def _count(place, work: Working, totals: dict[str, int]) -> None:
    """Adds a working state's counters (summed over the devices) to ``totals``."""
    blocks, point_steps, refills = place.fetch((work.blocks, work.point_steps, work.refills))
    totals["blocks"] += int(blocks[0])  # the devices run their blocks together
    totals["point_steps"] += int(point_steps.sum())
    totals["refills"] += int(refills.sum())


def _collect(run: Run, work: Working, layout: _Layout, collector,
             seen: np.ndarray | None) -> np.ndarray:
    """Hands the results written since the last call (``seen``: the output rows already
    handed) to the collector, by candidate id; returns the new ``seen``."""
    out = run.place.fetch(work.out)
    if seen is None:
        seen = np.zeros(len(out["filled"]), bool)
    new = np.flatnonzero(out["filled"] & ~seen)
    new = new[np.argsort(layout.out_id[new], kind="stable")]
    if len(new):
        ids = layout.out_id[new].astype(np.int64)
        collector.add({name: out[name][new] for name in _OUTPUTS}, ids, run.sources(ids))
    return seen | out["filled"]
