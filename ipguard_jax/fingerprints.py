"""Fingerprints: the points, the owner's labels, per-point diagnostics and provenance."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

import numpy as np

#: The arrays of a fingerprint set, in a fixed order, with the dtype each is stored in.
ARRAY_FIELDS: dict[str, Any] = {
    "x": None,  # the classifier's input dtype
    "labels": np.int32,
    "i": np.int32,
    "j": np.int32,
    "loss": np.float32,
    "converged": np.bool_,
    "steps": np.int32,
    "source": np.int64,
}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Fingerprints:
    """A set of IPGuard fingerprints: points near the owner's boundary and the owner's labels.

    The pair ``(x, labels)`` is the fingerprint; the other arrays say how each point was made.
    ``repr`` and ``str`` never show the points (a fingerprint set is a secret until a dispute).

    Attributes:
        x: ``(N, *input_shape)`` the points.
        labels: ``(N,)`` the owner's predictions at ``x`` (``j`` for a converged point).
        i: ``(N,)`` runner-up label (the owner's prediction at the start point).
        j: ``(N,)`` target label.
        loss: ``(N,)`` final IPGuard loss.
        converged: ``(N,)`` bool, ``loss <= tol``.
        steps: ``(N,)`` optimisation steps taken.
        source: ``(N,)`` index of the start image in the data for ``init="data"``, else the
            candidate's index among the noise draws.
        metadata: provenance: config, PRNG key, owner parameter hash, input spec, library and
            JAX versions, creation time, candidate and convergence counts.
    """

    x: np.ndarray
    labels: np.ndarray
    i: np.ndarray
    j: np.ndarray
    loss: np.ndarray
    converged: np.ndarray
    steps: np.ndarray
    source: np.ndarray
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = None
        for name, dtype in ARRAY_FIELDS.items():
            value = np.asarray(getattr(self, name))
            if dtype is not None:
                value = value.astype(dtype, copy=False)
            if name != "x" and value.ndim != 1:
                raise ValueError(f"Fingerprints.{name} must be 1-D, got shape {value.shape}")
            if n is None:
                n = value.shape[0] if value.ndim else -1
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(
                    f"Fingerprints arrays must share their length: x has {n}, {name} has "
                    f"{value.shape[:1]}"
                )
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int | None:
        """The owner's number of classes, from the metadata (``None`` if unknown)."""
        spec = self.metadata.get("classifier", {})
        return spec.get("num_classes")

    @property
    def convergence_rate(self) -> float:
        """Share of the candidates optimised that converged (not only the ones kept)."""
        drawn = self.metadata.get("num_candidates", len(self))
        return self.metadata.get("num_converged", int(self.converged.sum())) / max(drawn, 1)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name, in the stored order."""
        return {name: getattr(self, name) for name in ARRAY_FIELDS}

    def digest(self) -> str:
        """sha256 over every array (name, dtype, shape, bytes) and the canonical JSON metadata."""
        return content_digest(self.arrays(), self.metadata)

    def __getitem__(self, index: Any) -> "Fingerprints":
        """A subset (slice, index array or boolean mask) with the same metadata."""
        picked = {name: np.asarray(a)[index] for name, a in self.arrays().items()}
        if picked["labels"].ndim != 1:
            raise IndexError("index a Fingerprints set with a slice, an index array or a mask")
        return Fingerprints(**picked, metadata=self.metadata)

    def __repr__(self) -> str:
        k = self.metadata.get("config", {}).get("k")
        owner = self.metadata.get("classifier", {}).get("params_sha256", "?")[:12]
        return (f"Fingerprints(n={len(self)}, input_shape={self.input_shape}, "
                f"converged={int(self.converged.sum())}/{len(self)}, k={k}, owner={owner}…)")

    __str__ = __repr__


def update_digest(digest: Any, label: str, array: Any) -> None:
    """Feeds one labelled array (label, dtype, shape, little-endian C-order bytes) to a hash."""
    array = np.asarray(array)
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    digest.update(f"{label}|{array.dtype.str}|{array.shape}\n".encode())
    digest.update(array.tobytes())


def content_digest(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> str:
    """sha256 over named arrays (name, dtype, shape, little-endian bytes) and JSON metadata."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        update_digest(digest, name, arrays[name])
    digest.update(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()
