"""Sealed fingerprint files: one file, encrypted and authenticated (scrypt, AES-256-GCM).

``save(..., passphrase=...)`` writes one (see :mod:`ipguard_jax.storage.fingerprint_files`), for
fingerprints kept on shared storage or sent to a court or an escrow agent; :func:`seal` and
:func:`unseal` convert a set to and from the bytes of one. Layout::

    b"IPGJSEAL"                      magic, 8 bytes
    u32be(len(header)) || header     canonical JSON: format, format_version, kdf ("scrypt" with
                                     n, r, p and a random 16-byte salt), cipher ("AES-256-GCM"),
                                     a random 12-byte nonce, and a passphrase check value
    ciphertext || tag                AES-256-GCM of the payload; the magic, length and header
                                     are its associated data, so they cannot be changed either

scrypt derives 64 bytes from the passphrase (UTF-8, NFC) and the salt: the first 32 are the
AES key, the last 32 key an HMAC-SHA256 of a fixed label, the check value, which tells a wrong
passphrase from a modified file. The payload is ``u32be(len(manifest)) || manifest || arrays``:
the manifest is JSON as in a directory (format, sha256, metadata) with each array's dtype,
shape and byte offset; the arrays follow as little-endian C-order bytes. A sealed file is
written to a temporary file and renamed into place. The cryptography comes from the
``cryptography`` package (``pip install ipguard-jax[seal]``).

Example:
    A round trip is in :func:`seal`'s example (scrypt takes about a second). Every sealed file
    starts with the magic, and the default scrypt cost is recorded in its header:

    >>> SEALED_MAGIC, (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    (b'IPGJSEAL', (131072, 8, 1))
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from ipguard_jax.fingerprints import ARRAY_FIELDS, Fingerprints
from ipguard_jax.storage.canonical import canonical_json
from ipguard_jax.storage.files import UnsafeFileError, fsync_path, open_regular, write_atomic
from ipguard_jax.storage.manifest import (FORMAT, FORMAT_VERSION, FingerprintFileError,
                                          build_fingerprints, check_manifest, check_save_args,
                                          spec_nbytes)

#: First bytes of a sealed fingerprint file.
SEALED_MAGIC = b"IPGJSEAL"
SEALED_FORMAT = "ipguard_jax.sealed-fingerprints"
SEALED_FORMAT_VERSION = 1
#: scrypt cost of new sealed files: n = 2**17, r = 8, p = 1 (128 MiB; ~0.7 s on one core).
SCRYPT_N = 2 ** 17
SCRYPT_R = 8
SCRYPT_P = 1
# What a sealed file may ask of the KDF before it is authenticated (bounds the memory and time
# a crafted header can make load spend): 128 * n * r bytes <= 1 GiB.
_SCRYPT_MAX_MEMORY = 2 ** 30
_CHECK_LABEL = b"ipguard_jax/sealed/v1 passphrase check"
_SEAL_HINT = "sealed fingerprint files need the cryptography package: pip install ipguard-jax[seal]"


def is_sealed_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sealed fingerprint file: a regular file (or a link to one) that
    starts with :data:`SEALED_MAGIC`.

    A FIFO or device is no sealed file, and is neither waited on nor read; a missing or
    unreadable file is none either.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "owner.sealed")
        ...     with open(path, "wb") as f:
        ...         _ = f.write(SEALED_MAGIC + b"...")
        ...     is_sealed_file(path), is_sealed_file(tmp), is_sealed_file(path + ".missing")
        (True, False, False)
    """
    try:
        with os.fdopen(open_regular(path, follow_symlinks=True), "rb") as f:
            return f.read(len(SEALED_MAGIC)) == SEALED_MAGIC
    except (OSError, UnsafeFileError):  # a FIFO or device is no sealed file (and is not read)
        return False


def _read_sealed_file(path: Path, passphrase: Any) -> bytes:
    """The bytes of the sealed file ``path`` (not a directory); a regular file only."""
    try:
        fd = open_regular(path, follow_symlinks=True)
    except UnsafeFileError as e:
        raise FingerprintFileError(f"{e}: not a fingerprint file; refusing to read it") from None
    except OSError as e:
        raise FingerprintFileError(f"{path}: cannot read the sealed file ({e.strerror})"
                                   ) from None
    with os.fdopen(fd, "rb") as f:
        try:
            magic = f.read(len(SEALED_MAGIC))
            if magic != SEALED_MAGIC:
                raise FingerprintFileError(f"{path} is a file, not a fingerprint directory")
            if passphrase is None:
                raise FingerprintFileError(
                    f"{path} is a sealed fingerprint file: pass passphrase=... to load it"
                )
            return magic + f.read()
        except OSError as e:
            raise FingerprintFileError(f"{path}: cannot read the sealed file ({e.strerror})"
                                       ) from None


def _aead_backend() -> tuple[Any, Any, Any]:
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    except ImportError as e:
        raise ImportError(_SEAL_HINT) from e
    return AESGCM, Scrypt, InvalidTag


def _passphrase_bytes(passphrase: Any) -> bytes:
    if isinstance(passphrase, str):
        raw = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, (bytes, bytearray, memoryview)):
        raw = bytes(passphrase)
    else:
        raise TypeError(f"passphrase must be a str or bytes, got {type(passphrase).__name__}")
    if not raw:
        raise ValueError("passphrase must not be empty")
    return raw


def _derive(scrypt: Any, passphrase: bytes, salt: bytes, n: int, r: int, p: int
            ) -> tuple[bytes, str]:
    """The AES key and the passphrase check value (hex)."""
    keys = scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase)
    check = hmac.new(keys[32:], _CHECK_LABEL, hashlib.sha256).hexdigest()
    return keys[:32], check


def _payload(fingerprints: Fingerprints) -> bytes:
    specs, chunks, offset = {}, [], 0
    for name, array in fingerprints.arrays().items():
        array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
        data = array.tobytes()
        specs[name] = {"dtype": array.dtype.name, "shape": list(array.shape), "offset": offset,
                       "nbytes": len(data)}
        chunks.append(data)
        offset += len(data)
    manifest = canonical_json({"format": FORMAT, "format_version": FORMAT_VERSION,
                               "sha256": fingerprints.digest(), "arrays": specs,
                               "metadata": fingerprints.metadata}, allow_nan=True)
    return struct.pack(">I", len(manifest)) + manifest + b"".join(chunks)


def _parse_payload(payload: bytes, where: str) -> Fingerprints:
    import jax.numpy as jnp  # dtype names such as bfloat16

    try:
        (size,) = struct.unpack_from(">I", payload, 0)
        manifest = json.loads(payload[4:4 + size].decode("utf-8"))
        expected = check_manifest(Path(where), manifest)
        body = memoryview(payload)[4 + size:]
        arrays = {}
        for name in ARRAY_FIELDS:
            spec = expected[name]
            dtype = jnp.dtype(spec["dtype"]).newbyteorder("<")
            shape = tuple(spec["shape"])
            start, nbytes = int(spec["offset"]), int(spec["nbytes"])
            if start < 0 or start + nbytes > len(body) or nbytes != spec_nbytes(spec):
                raise ValueError(f"array {name!r} does not fit the payload")
            arrays[name] = np.frombuffer(body[start:start + nbytes], dtype).reshape(shape).copy()
    except FingerprintFileError:
        raise
    except (struct.error, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise FingerprintFileError(f"{where}: the sealed content is malformed ({e})") from None
    return build_fingerprints(Path(where), arrays, manifest)


def seal(fingerprints: Fingerprints, passphrase: str | bytes) -> bytes:
    """A fingerprint set as the bytes of a sealed file (see the module docs for the layout).

    Args:
        fingerprints: the set to seal.
        passphrase: str (UTF-8, NFC-normalised) or bytes, not empty.

    Returns:
        The sealed bytes: a fresh random salt and nonce every call.

    Raises:
        TypeError: ``fingerprints`` is not :class:`~ipguard_jax.Fingerprints`, or a passphrase
            that is neither str nor bytes.
        ValueError: an empty passphrase, or metadata that is not JSON-serialisable.
        ImportError: without the ``cryptography`` package (``pip install ipguard-jax[seal]``).

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints
        >>> fp = Fingerprints(x=np.zeros((1, 2), np.float32), labels=[1], i=[0], j=[1],
        ...                   loss=[0.0], converged=[True], steps=[3], source=[0])
        >>> blob = seal(fp, "correct horse battery")  # scrypt: about a second
        >>> blob[:8], unseal(blob, "correct horse battery").digest() == fp.digest()
        (b'IPGJSEAL', True)
    """
    check_save_args(fingerprints)
    secret = _passphrase_bytes(passphrase)
    aesgcm, scrypt, _ = _aead_backend()
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key, check = _derive(scrypt, secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    header = canonical_json({
        "format": SEALED_FORMAT, "format_version": SEALED_FORMAT_VERSION,
        "kdf": {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex()},
        "cipher": "AES-256-GCM", "nonce": nonce.hex(), "check": check,
    }, allow_nan=True)
    prefix = SEALED_MAGIC + struct.pack(">I", len(header)) + header
    return prefix + aesgcm(key).encrypt(nonce, _payload(fingerprints), prefix)


def _sealed_header(data: bytes, where: str) -> tuple[bytes, dict[str, Any]]:
    if data[:len(SEALED_MAGIC)] != SEALED_MAGIC:
        raise FingerprintFileError(f"{where} is not a sealed fingerprint file")
    try:
        (size,) = struct.unpack_from(">I", data, len(SEALED_MAGIC))
        end = len(SEALED_MAGIC) + 4 + size
        if end > len(data):
            raise ValueError("the header runs past the end of the file")
        header = json.loads(data[len(SEALED_MAGIC) + 4:end].decode("ascii"))
        if not isinstance(header, dict) or header.get("format") != SEALED_FORMAT:
            raise ValueError("not a sealed-fingerprints header")
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise FingerprintFileError(f"{where}: the sealed file's header is corrupt ({e})"
                                   ) from None
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FingerprintFileError(f"{where}: the sealed file's header has no valid version")
    if version > SEALED_FORMAT_VERSION:
        raise FingerprintFileError(
            f"{where} is a sealed file of format version {version}; this library reads up to "
            f"version {SEALED_FORMAT_VERSION}: upgrade ipguard_jax to read it"
        )
    return data[:end], header


def _kdf_params(header: dict[str, Any], where: str) -> tuple[bytes, int, int, int, bytes, str]:
    try:
        kdf = header["kdf"]
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        if kdf["name"] != "scrypt" or header["cipher"] != "AES-256-GCM":
            raise ValueError(f"unknown kdf {kdf['name']!r} or cipher {header['cipher']!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n, r, p)):
            raise ValueError("scrypt parameters must be positive ints")
        if n < 2 or n & (n - 1) or 128 * n * r > _SCRYPT_MAX_MEMORY or p > 16:
            raise ValueError(f"scrypt parameters n={n}, r={r}, p={p} are out of range")
        salt, nonce = bytes.fromhex(kdf["salt"]), bytes.fromhex(header["nonce"])
        check = header["check"]
        if len(nonce) != 12 or len(salt) < 16 or not isinstance(check, str):
            raise ValueError("bad salt, nonce or check value")
    except (KeyError, TypeError, ValueError) as e:
        raise FingerprintFileError(f"{where}: the sealed file's header is corrupt ({e})"
                                   ) from None
    return salt, n, r, p, nonce, check


def _unseal(data: bytes, passphrase: Any, where: str) -> Fingerprints:
    secret = _passphrase_bytes(passphrase)
    aesgcm, scrypt, invalid_tag = _aead_backend()
    prefix, header = _sealed_header(data, where)
    salt, n, r, p, nonce, check = _kdf_params(header, where)
    key, expected_check = _derive(scrypt, secret, salt, n, r, p)
    if not hmac.compare_digest(expected_check.encode("ascii"), check.encode("ascii", "replace")):
        raise FingerprintFileError(
            f"{where}: wrong passphrase (or the sealed file's header was modified)"
        )
    try:
        payload = aesgcm(key).decrypt(nonce, data[len(prefix):], prefix)
    except invalid_tag:
        raise FingerprintFileError(
            f"{where}: the sealed file was modified or is corrupt (authentication failed)"
        ) from None
    return _parse_payload(payload, where)


def unseal(data: bytes, passphrase: str | bytes) -> Fingerprints:
    """The fingerprint set in the bytes of a sealed file, authenticated and checked.

    Args:
        data: bytes from :func:`seal` (or a sealed file's content).
        passphrase: the passphrase it was sealed with.

    Returns:
        The :class:`Fingerprints`, bit-identical to the ones sealed.

    Raises:
        TypeError: ``data`` is not bytes, or a passphrase that is neither str nor bytes.
        ValueError: an empty passphrase.
        FingerprintFileError: not sealed fingerprints, a wrong passphrase, modified or corrupt
            bytes, or a newer format version.
        ImportError: without the ``cryptography`` package (``pip install ipguard-jax[seal]``).

    Example:
        A round trip is in :func:`seal`'s example; bytes that are not sealed are refused:

        >>> unseal(b"just some bytes", "correct horse battery")
        Traceback (most recent call last):
        ...
        ipguard_jax.storage.fingerprint_files.FingerprintFileError: sealed data is not a sealed ...

        The bytes of a sealed file: ``unseal(Path("owner.sealed").read_bytes(), passphrase)``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return _unseal(bytes(data), passphrase, "sealed data")


def load_sealed(path: Path, passphrase: Any) -> Fingerprints:
    """The fingerprint set in the sealed file ``path`` (not a directory), authenticated and
    checked: what :func:`ipguard_jax.load` does with a file.

    Args:
        path: the sealed file (a regular file, or a link to one).
        passphrase: its passphrase; ``None`` is refused with a message that asks for one.

    Returns:
        The :class:`~ipguard_jax.Fingerprints`.

    Raises:
        FingerprintFileError: not a regular file or not a sealed file, no passphrase, a wrong
            one, or a modified, corrupt or newer file.
        TypeError: a passphrase that is neither str nor bytes.
        ImportError: without the ``cryptography`` package.
    """
    return _unseal(_read_sealed_file(path, passphrase), passphrase, str(path))


def save_sealed(fingerprints: Fingerprints, path: Path, overwrite: bool,
                passphrase: Any) -> None:
    """Writes ``fingerprints`` as the sealed file ``path``, atomically: what
    :func:`ipguard_jax.save` does with a passphrase (after checking its arguments).

    Args:
        fingerprints: the set to seal.
        path: the absolute path of the file; its parent exists.
        overwrite: replace an existing sealed file there.
        passphrase: str or bytes, not empty.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FingerprintFileError: ``path`` is a directory, or a file that is not sealed.
        TypeError, ValueError: a bad passphrase.
        ImportError: without the ``cryptography`` package.
    """
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if path.is_dir():
            raise FingerprintFileError(
                f"{path} is a directory; a sealed file cannot replace it atomically: choose "
                f"another path or remove it first"
            )
        if not is_sealed_file(path):
            raise FingerprintFileError(
                f"{path} exists and is not a sealed fingerprint file; refusing to overwrite it"
            )
    data = seal(fingerprints, passphrase)
    write_atomic(path, data, claim=True)
    fsync_path(path.parent)
