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
import hashlib
import hmac
import json
import numbers
import secrets
import struct
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


def update_digest(digest: Any, label: str, array: Any) -> None:
    """Feeds one labelled array (label, dtype, shape, little-endian C-order bytes) to a hash.

    Args:
        digest: a ``hashlib`` hash object, updated in place.
        label: a name that separates this array from the others fed to the hash.
        array: any array-like.

    Example:
        >>> import hashlib, numpy as np
        >>> a, b = hashlib.sha256(), hashlib.sha256()
        >>> update_digest(a, "w", np.zeros(2, np.float32))
        >>> update_digest(b, "w", np.zeros(2, np.float64))  # another dtype, another hash
        >>> a.hexdigest() == b.hexdigest()
        False
    """
    array = np.asarray(array)
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    digest.update(f"{label}|{array.dtype.str}|{array.shape}\n".encode())
    digest.update(array.tobytes())


def content_digest(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> str:
    """sha256 over named arrays (name, dtype, shape, little-endian bytes) and JSON metadata.

    Arrays are fed in sorted name order with :func:`update_digest`, then the metadata as JSON
    with sorted keys and compact separators.

    Args:
        arrays: name -> array.
        metadata: JSON-able metadata.

    Returns:
        64 lowercase hex digits.

    Example:
        >>> import numpy as np
        >>> d = content_digest({"w": np.zeros(2)}, {"note": "a"})
        >>> d == content_digest({"w": np.zeros(2)}, {"note": "b"})
        False
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        update_digest(digest, name, arrays[name])
    digest.update(json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


# -- commitments -------------------------------------------------------------------------------

#: Domain-separation prefix of :func:`commit`; the trailing version changes with the layout.
COMMITMENT_DOMAIN = b"ipguard_jax/fingerprint-commitment/v1\n"
#: Bytes in a nonce from :func:`new_nonce`, and the fewest :func:`commit` accepts.
NONCE_BYTES = 32
MIN_NONCE_BYTES = 16


def new_nonce() -> str:
    """A fresh random nonce (32 bytes from the OS's CSPRNG, as 64 hex digits) for :func:`commit`.

    Returns:
        A hex string; keep it secret with the fingerprints until you open the commitment.

    Example:
        >>> len(new_nonce())
        64
    """
    return secrets.token_hex(NONCE_BYTES)


def _nonce_bytes(nonce: bytes | str | None) -> bytes:
    if nonce is None:
        return b""
    if isinstance(nonce, str):
        try:
            raw = bytes.fromhex(nonce)
        except ValueError:
            raise ValueError("nonce must be bytes or a hex string (see new_nonce())") from None
    elif isinstance(nonce, (bytes, bytearray, memoryview)):
        raw = bytes(nonce)
    else:
        raise TypeError(f"nonce must be bytes, a hex string or None, got {type(nonce).__name__}")
    if len(raw) < MIN_NONCE_BYTES:
        raise ValueError(
            f"nonce must hold at least {MIN_NONCE_BYTES} random bytes, got {len(raw)}; use "
            f"new_nonce()"
        )
    return raw


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _array_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    shape = ",".join(str(d) for d in array.shape)
    return f"{array.dtype.name}|{shape}\n".encode("ascii") + array.tobytes()


def _field(name: bytes, value: bytes) -> bytes:
    return struct.pack(">B", len(name)) + name + struct.pack(">Q", len(value)) + value


def commit(fingerprints: Fingerprints, nonce: bytes | str | None = None) -> str:
    """A hex sha256 commitment to a fingerprint set, to publish (or timestamp) before a dispute.

    The commitment binds the points, the owner's labels, the generation config and the owner's
    parameter hash; it ignores the rest of the metadata (creation time, wall time...) and the
    per-point diagnostics, and it does not depend on the order of keys in the metadata. Opening
    it later (revealing the fingerprints, and the nonce) shows that the fingerprints existed,
    unchanged, when it was published.

    Salt it. Without a nonce the commitment is a plain hash of the fingerprint set, and anyone
    who can regenerate candidate sets (a pirate holding a copy of the model, guessing small
    seeds and default configs) can test each guess against it, learning which points to answer
    falsely. With a secret random nonce (:func:`new_nonce`; at least 16 bytes) the published
    commitment reveals nothing about the points; keep the nonce with the fingerprints (a sealed
    file, see :func:`ipguard_jax.save`) and reveal both together.

    Byte layout (version 1): ``sha256(D || F("nonce", r) || F("x", A(x)) || F("labels",
    A(labels)) || F("config", J(metadata["config"])) || F("owner",
    J(metadata["classifier"]["params_sha256"])))`` where

    - ``D`` is :data:`COMMITMENT_DOMAIN`, ``b"ipguard_jax/fingerprint-commitment/v1\\n"``;
    - ``F(name, v) = u8(len(name)) || name || u64be(len(v)) || v`` (names in ASCII);
    - ``r`` is the nonce's bytes (empty without a nonce);
    - ``A(a) = ascii(dtype name + "|" + comma-separated shape + "\\n") || bytes(a)``, the bytes
      little-endian in C order (``x`` in its own dtype, e.g. ``float32``; labels ``int32``);
    - ``J(v)`` is canonical JSON: sorted keys, separators ``","`` and ``":"``, ASCII only, no
      NaN; ``null`` where the metadata has no such entry.

    Args:
        fingerprints: the set to commit to.
        nonce: ``None`` (unsalted), or a secret random salt as bytes or hex (e.g.
            :func:`new_nonce`).

    Returns:
        64 lowercase hex digits.

    Raises:
        TypeError: ``fingerprints`` is not :class:`Fingerprints`, or a bad ``nonce`` type.
        ValueError: a nonce that is not hex or is shorter than 16 bytes.

    Example:
        >>> import numpy as np
        >>> fp = Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0], j=[0, 1],
        ...                   loss=[0.0, 0.0], converged=[True, True], steps=[5, 7],
        ...                   source=[0, 1])
        >>> nonce = new_nonce()
        >>> c = commit(fp, nonce)
        >>> verify_commitment(fp, c, nonce), verify_commitment(fp, c)
        (True, False)
    """
    if not isinstance(fingerprints, Fingerprints):
        raise TypeError(f"fingerprints must be Fingerprints, got {type(fingerprints).__name__}")
    salt = _nonce_bytes(nonce)
    meta = fingerprints.metadata
    owner = (meta.get("classifier") or {}).get("params_sha256")
    digest = hashlib.sha256(COMMITMENT_DOMAIN)
    digest.update(_field(b"nonce", salt))
    digest.update(_field(b"x", _array_bytes(fingerprints.x)))
    digest.update(_field(b"labels", _array_bytes(fingerprints.labels)))
    try:
        digest.update(_field(b"config", _canonical_json(meta.get("config"))))
        digest.update(_field(b"owner", _canonical_json(owner)))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"fingerprints.metadata config and owner hash must be plain JSON values: {e}"
        ) from None
    return digest.hexdigest()


def verify_commitment(fingerprints: Fingerprints, commitment: str,
                      nonce: bytes | str | None = None) -> bool:
    """Whether ``commitment`` is :func:`commit` of these fingerprints and nonce.

    The comparison takes the same time wherever the digests differ
    (:func:`hmac.compare_digest`).

    Args:
        fingerprints: the revealed fingerprint set.
        commitment: the published commitment (64 hex digits, any case).
        nonce: the nonce it was made with (``None`` for an unsalted one).

    Returns:
        ``True`` when they match.

    Raises:
        TypeError: ``commitment`` is not a string.
        ValueError: ``commitment`` is not 64 hex digits, or a bad ``nonce``.

    Example:
        >>> import numpy as np
        >>> fp = Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
        ...                   loss=[0.0], converged=[True], steps=[3], source=[0])
        >>> nonce = new_nonce()
        >>> published = commit(fp, nonce)
        >>> verify_commitment(fp, published.upper(), nonce), verify_commitment(fp, published)
        (True, False)
    """
    if not isinstance(commitment, str):
        raise TypeError(f"commitment must be a hex string, got {type(commitment).__name__}")
    candidate = commitment.strip().lower()
    if len(candidate) != 64 or any(c not in "0123456789abcdef" for c in candidate):
        raise ValueError("commitment must be 64 hex digits (a sha256 from commit())")
    expected = commit(fingerprints, nonce)
    return hmac.compare_digest(expected.encode("ascii"), candidate.encode("ascii"))
