"""Resuming a killed ``generate`` run: its progress in an orbax directory, checked on load."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from ipguard_jax.runners.collector import Collector

__all__ = ["Checkpoint"]


class Checkpoint:
    """The progress of one ``generate`` run in an orbax directory, so a killed run resumes.

    Every ``every`` chunks (with compaction: refills on the host loop, working batches' worth
    of finished candidates in the device loop) the finished candidates' results and
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

    def load(self, collector: Collector, identity: dict[str, Any], budget: int,
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
            raise bad("pending must be a list of candidate ids below next_id")

    def resume_point(self) -> tuple[list[int], int] | None:
        """``(pending ids, next id)`` saved by the restored checkpoint, or ``None``."""
        return self.resume

    def maybe_save(self, collector: Collector, *, next_id: int, pending: Any,
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
