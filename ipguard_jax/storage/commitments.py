"""Commitments: a salted sha256 of a fingerprint set, published before a dispute.

:func:`commit` binds the points, the owner's labels, the generation config and the owner's
parameter hash without revealing them; :func:`verify_commitment` checks a revealed set (and its
nonce) against a published commitment. The byte layout is in :func:`commit`'s docs; published
commitments depend on it, so it never changes within a version of :data:`COMMITMENT_DOMAIN`.

Example:
    >>> import numpy as np
    >>> from ipguard_jax import Fingerprints
    >>> fp = Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0], j=[0, 1],
    ...                   loss=[0.0, 0.0], converged=[True, True], steps=[5, 7], source=[0, 1])
    >>> nonce = new_nonce()
    >>> verify_commitment(fp, commit(fp, nonce), nonce)
    True
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from typing import TYPE_CHECKING

import numpy as np

from ipguard_jax.storage.canonical import canonical_json

if TYPE_CHECKING:
    from ipguard_jax.fingerprints import Fingerprints

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
        TypeError: ``fingerprints`` is not :class:`~ipguard_jax.Fingerprints`, or a bad
            ``nonce`` type.
        ValueError: a nonce that is not hex or is shorter than 16 bytes.

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints
        >>> fp = Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0], j=[0, 1],
        ...                   loss=[0.0, 0.0], converged=[True, True], steps=[5, 7],
        ...                   source=[0, 1])
        >>> nonce = new_nonce()
        >>> c = commit(fp, nonce)
        >>> verify_commitment(fp, c, nonce), verify_commitment(fp, c)
        (True, False)
    """
    from ipguard_jax.fingerprints import Fingerprints  # it imports this module

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
        digest.update(_field(b"config", canonical_json(meta.get("config"), allow_nan=False)))
        digest.update(_field(b"owner", canonical_json(owner, allow_nan=False)))
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
        >>> from ipguard_jax import Fingerprints
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
