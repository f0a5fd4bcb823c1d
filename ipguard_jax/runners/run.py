"""What one ``generate`` call's runners share."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from ipguard_jax.config import FingerprintConfig
from ipguard_jax.methods import Method
from ipguard_jax.runners.checkpoint import Checkpoint
from ipguard_jax.runners.collector import Collector
from ipguard_jax.runners.programs import Spec
from ipguard_jax.sharding import Placement

__all__ = ["Run"]


@dataclasses.dataclass
class Run:
    """Everything one ``generate`` call's runners share.

    Attributes:
        spec: the static part (model function, plan, target rule).
        params: the owner's parameters, replicated over the mesh.
        sc: the traced settings (``k``, ``lr``, ``steps``, ``tol``, ``lo``, ``hi``, ``hyper``).
        key: the per-candidate key stream.
        config: the run's :class:`~ipguard_jax.FingerprintConfig`.
        method: the method (CW runs its binary search over ``c``).
        loop: ``"device"`` or ``"host"``.
        place: where arrays live (the device mesh).
        starts: candidate ids -> (start points on the mesh, their sources).
        budget: candidates the run may draw.
        batch: the working batch (a multiple of the device count).
        collector: the finished candidates.
        checkpoint: the resume directory, or ``None``.
        input_shape: one example's shape.
        dtype: the input dtype.
        sources: candidate ids -> their sources (the data row, or the id for noise starts).
        data: ``(start data, its random order)`` for ``init="data"``, else ``None`` (the
            device-side compaction gathers start points from them).
        stats: counters of the host's work, recorded in ``metadata["runner"]``: ``programs``
            (compiled calls launched), ``syncs`` (times the host waited for device results),
            and on the host loop and with compaction ``blocks`` (step blocks run) and
            ``point_steps`` (steps times rows of those blocks, done rows and padding included:
            the work executed); with compaction inside the device loop also ``refills``
            (sub-batch refills run on the device).
    """
    spec: Spec
    params: Any
    sc: dict[str, Any]
    key: jax.Array
    config: FingerprintConfig
    method: Method
    loop: str
    place: Placement
    starts: Callable[[np.ndarray], tuple[jax.Array, np.ndarray]]
    budget: int
    batch: int
    collector: Collector
    checkpoint: Checkpoint | None
    input_shape: tuple[int, ...] = ()
    dtype: Any = np.float32
    sources: Callable[[np.ndarray], np.ndarray] = lambda ids: ids
    data: tuple[np.ndarray, np.ndarray] | None = None
    stats: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"programs": 0, "syncs": 0, "blocks": 0, "point_steps": 0})
