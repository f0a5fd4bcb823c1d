"""Fingerprints: the points, the owner's labels, per-point diagnostics and provenance.

:class:`Fingerprints` is what :func:`ipguard_jax.generate` returns and :func:`ipguard_jax.save`
stores; :func:`commit` and :func:`verify_commitment` publish and check a salted hash of a set
before a dispute, without revealing its points.

Example:
    >>> import numpy as np
    >>> from ipguard_jax.fingerprints import Fingerprints, commit, new_nonce, verify_commitment
    >>> fp = Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0], j=[0, 1],
    ...                   loss=[0.0, 0.0], converged=[True, True], steps=[5, 7], source=[0, 1])
    >>> fp
    Fingerprints(n=2, input_shape=(3,), converged=2/2, k=None, owner=?…)
    >>> nonce = new_nonce()
    >>> verify_commitment(fp, commit(fp, nonce), nonce)
    True
"""

from __future__ import annotations

import dataclasses
import hmac  # noqa: F401 -- ipguard_jax.fingerprints.hmac stays reachable (tests patch it)
import numbers
from typing import Any, Mapping

import numpy as np

# Hashing and commitments live in ipguard_jax.storage; their names stay importable from here.
from ipguard_jax.storage.commitments import (  # noqa: F401
    COMMITMENT_DOMAIN, MIN_NONCE_BYTES, NONCE_BYTES, commit, new_nonce, verify_commitment)
from ipguard_jax.storage.digest import content_digest, update_digest  # noqa: F401

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

    The arrays are stored read-only in their fixed dtypes (see ``ARRAY_FIELDS``); lists and
    other array-likes are converted.

    Raises:
        TypeError: an array of the wrong kind (e.g. non-floating ``x``, float labels) or
            metadata that is not a mapping.
        ValueError: arrays of different lengths, wrong ranks, NaN or inf in ``x``, negative
            indices, or values that contradict the metadata (input shape, bounds, classes).

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints
        >>> fp = Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0],
        ...                   j=[0, 1], loss=[0.0, 0.0], converged=[True, True], steps=[5, 7],
        ...                   source=[0, 1], metadata={"classifier": {"num_classes": 3}})
        >>> len(fp), fp.input_shape, fp.num_classes, fp.labels.dtype
        (2, (3,), 3, dtype('int32'))
        >>> fp[:1].labels.tolist()
        [0]
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
        if not isinstance(self.metadata, Mapping):
            raise TypeError(
                f"Fingerprints.metadata must be a mapping, got {type(self.metadata).__name__}"
            )
        n = None
        for name, dtype in ARRAY_FIELDS.items():
            raw = getattr(self, name)
            value = _checked_array(name, raw, dtype)
            if isinstance(raw, np.ndarray) and np.may_share_memory(value, raw):
                value = value.copy()  # the caller's array stays theirs, and writeable
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
        _check_values(self)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One point's shape, ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int | None:
        """The owner's number of classes, from the metadata (``None`` if unknown)."""
        return (self.metadata.get("classifier") or {}).get("num_classes")

    @property
    def convergence_rate(self) -> float:
        """Share of the candidates optimised that converged (not only the ones kept).

        Read from ``metadata["num_converged"] / metadata["num_candidates"]``; without them,
        the share of the kept points that converged.

        Example:
            >>> import numpy as np
            >>> fp = Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
            ...                   loss=[0.0], converged=[True], steps=[3], source=[0],
            ...                   metadata={"num_candidates": 4, "num_converged": 1})
            >>> fp.convergence_rate
            0.25
        """
        drawn = self.metadata.get("num_candidates", len(self))
        return self.metadata.get("num_converged", int(self.converged.sum())) / max(drawn, 1)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name, in the stored order.

        Returns:
            ``{"x": ..., "labels": ..., "i": ..., "j": ..., "loss": ..., "converged": ...,
            "steps": ..., "source": ...}`` (the read-only arrays themselves, not copies).

        Example:
            >>> import numpy as np
            >>> fp = Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
            ...                   loss=[0.0], converged=[True], steps=[3], source=[0])
            >>> list(fp.arrays())
            ['x', 'labels', 'i', 'j', 'loss', 'converged', 'steps', 'source']
        """
        return {name: getattr(self, name) for name in ARRAY_FIELDS}

    def digest(self) -> str:
        """sha256 over every array (name, dtype, shape, bytes) and the canonical JSON metadata.

        This is the checksum :func:`ipguard_jax.save` records and :func:`ipguard_jax.load`
        checks (see :func:`content_digest`). Unlike :func:`commit` it covers the diagnostics
        and the whole metadata, and it is not salted: do not publish it.

        Returns:
            64 lowercase hex digits.

        Example:
            >>> import numpy as np
            >>> fp = Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
            ...                   loss=[0.0], converged=[True], steps=[3], source=[0])
            >>> fp.digest() == fp[:].digest(), len(fp.digest())
            (True, 64)
        """
        return content_digest(self.arrays(), self.metadata)

    def commitment(self, nonce: bytes | str | None = None) -> str:
        """A hex sha256 commitment to the points, labels, config and owner hash.

        See :func:`commit` (this is ``commit(self, nonce)``).

        Args:
            nonce: ``None`` (unsalted), or a secret random salt as bytes or hex (e.g.
                :func:`new_nonce`).

        Returns:
            64 lowercase hex digits.

        Raises:
            TypeError: a bad ``nonce`` type.
            ValueError: a nonce that is not hex or is shorter than 16 bytes.

        Example:
            >>> import numpy as np
            >>> fp = Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
            ...                   loss=[0.0], converged=[True], steps=[3], source=[0])
            >>> nonce = new_nonce()
            >>> fp.commitment(nonce) == commit(fp, nonce)
            True
        """
        return commit(self, nonce)

    def __getitem__(self, index: Any) -> "Fingerprints":
        """A subset (slice, index array or boolean mask) with the same metadata.

        Raises:
            IndexError: an index that does not select a 1-D subset (e.g. a single integer).
        """
        picked = {name: np.asarray(a)[index] for name, a in self.arrays().items()}
        if picked["labels"].ndim != 1:
            raise IndexError("index a Fingerprints set with a slice, an index array or a mask")
        return Fingerprints(**picked, metadata=self.metadata)

    def __repr__(self) -> str:
        k = (self.metadata.get("config") or {}).get("k")
        owner = str((self.metadata.get("classifier") or {}).get("params_sha256", "?"))[:12]
        return (f"Fingerprints(n={len(self)}, input_shape={self.input_shape}, "
                f"converged={int(self.converged.sum())}/{len(self)}, k={k}, owner={owner}…)")

    __str__ = __repr__


_INDEX_FIELDS = ("labels", "i", "j", "steps", "source")


def _is_floating(dtype: np.dtype) -> bool:
    import jax.numpy as jnp  # knows bfloat16 and the other ml_dtypes floats

    return bool(jnp.issubdtype(dtype, jnp.floating))


def _checked_array(name: str, raw: Any, dtype: Any) -> np.ndarray:
    """One array of a fingerprint set, checked and cast to its stored dtype.

    Messages name the field and describe shapes and dtypes, never values: the points are
    secret.
    """
    try:
        value = np.asarray(raw)
    except (TypeError, ValueError):
        raise TypeError(
            f"Fingerprints.{name} must be an array, got {type(raw).__name__} that is not one"
        ) from None
    kind = value.dtype.kind
    if name == "x":
        if not _is_floating(value.dtype):
            raise TypeError(f"Fingerprints.x must be a floating array, got dtype {value.dtype}")
        if value.ndim < 2 or 0 in value.shape[1:]:
            raise ValueError(
                f"Fingerprints.x must have shape (N, *input_shape) with a non-empty input shape, "
                f"got shape {value.shape}"
            )
        return value
    if value.size == 0 and (kind in "biuf" or _is_floating(value.dtype)):
        return value.astype(dtype)  # nothing to lose (e.g. np.asarray([]) is float64)
    if name in _INDEX_FIELDS:
        if kind not in "iu":
            raise TypeError(f"Fingerprints.{name} must hold integers, got dtype {value.dtype}")
        info = np.iinfo(dtype)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise ValueError(f"Fingerprints.{name} has values outside the range of {info.dtype}")
        return value.astype(dtype)
    if name == "converged":
        if kind == "b":
            return value
        if kind in "iu" and bool(np.isin(value, (0, 1)).all()):
            return value.astype(np.bool_)
        raise TypeError(f"Fingerprints.converged must be a bool array, got dtype {value.dtype}")
    # loss: a diagnostic; any real number (inf or NaN included) is stored as float32
    if not (kind in "iu" or _is_floating(value.dtype)):
        raise TypeError(f"Fingerprints.{name} must hold real numbers, got dtype {value.dtype}")
    with np.errstate(over="ignore"):
        return value.astype(dtype)


def _check_values(fp: Fingerprints) -> None:
    """Value checks across fields and against the provenance (bounds, classes, input shape)."""
    meta = fp.metadata
    spec = meta.get("classifier")
    if spec is not None and not isinstance(spec, Mapping):
        raise ValueError("Fingerprints.metadata['classifier'] must be a mapping")
    spec = spec or {}
    if meta.get("config") is not None and not isinstance(meta["config"], Mapping):
        raise ValueError("Fingerprints.metadata['config'] must be a mapping")
    num_classes = spec.get("num_classes")
    if num_classes is not None and not (isinstance(num_classes, int)
                                        and not isinstance(num_classes, bool)
                                        and num_classes >= 2):
        raise ValueError(
            f"Fingerprints.metadata['classifier']['num_classes'] must be an int >= 2, got "
            f"{num_classes!r}"
        )
    shape = spec.get("input_shape")
    if shape is not None:
        if not (isinstance(shape, (list, tuple)) and all(
                isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise ValueError(
                f"Fingerprints.metadata['classifier']['input_shape'] must be a list of ints, "
                f"got {shape!r}"
            )
        if tuple(shape) != fp.input_shape:
            raise ValueError(
                f"Fingerprints.x has input shape {fp.input_shape}, its metadata says "
                f"{tuple(shape)}"
            )
    if not bool(np.isfinite(fp.x).all()):
        raise ValueError("Fingerprints.x contains NaN or inf")
    bounds = spec.get("bounds")
    if bounds is not None:
        try:
            if not (isinstance(bounds, (list, tuple)) and all(
                    isinstance(b, numbers.Real) and not isinstance(b, (bool, np.bool_))
                    for b in bounds)):
                raise TypeError
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"Fingerprints.metadata['classifier']['bounds'] must be a pair of numbers, got "
                f"{bounds!r}"
            ) from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(
                f"Fingerprints.metadata['classifier']['bounds'] must be finite with lo < hi, "
                f"got {bounds!r}"
            )
        if len(fp) and (fp.x.min() < np.asarray(lo, fp.x.dtype)
                        or fp.x.max() > np.asarray(hi, fp.x.dtype)):
            raise ValueError(
                f"Fingerprints.x has values outside the owner's bounds {(lo, hi)} (from its "
                f"metadata)"
            )
    for name in _INDEX_FIELDS:
        value = getattr(fp, name)
        if len(value) and value.min() < 0:
            raise ValueError(f"Fingerprints.{name} must be >= 0, got "
                             f"{int((value < 0).sum())} negative entries")
    if num_classes is not None:
        for name in ("labels", "i", "j"):
            value = getattr(fp, name)
            if len(value) and value.max() >= num_classes:
                raise ValueError(
                    f"Fingerprints.{name} must lie in [0, {num_classes}) for the owner's "
                    f"{num_classes} classes, got {int((value >= num_classes).sum())} entries "
                    f"outside"
                )
