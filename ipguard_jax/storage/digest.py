"""sha256 digests, and the flat form of PRNG-key-holding pytrees that checkpoints store.

Every checksum, cache key and provenance hash of the library is computed here, each with a
fixed byte layout that files on disk and published values depend on (none of them may change):

- :func:`sha256_hex` of bytes, :func:`sha256_file` of a file's content (:func:`sha256_regular`
  refuses links and special files);
- :func:`update_digest` feeds one labelled array (dtype, shape, little-endian bytes) to a hash:
  :func:`content_digest` (named arrays and canonical JSON metadata, the checksum of fingerprint
  files) and :func:`pytree_sha256` (a parameter pytree by leaf path, PRNG keys by their key
  data, :func:`ipguard_jax.params_hash`) are built on it;
- :func:`array_digest`: arrays' dtypes, shapes and bytes as they are in memory (data
  descriptions in model-cache recipes).

Checkpoints of train and model states store a pytree as its flat list of leaves, typed PRNG keys
as their raw key data: :func:`flatten_state` and :func:`unflatten_state` convert both ways.

Example:
    >>> import jax, jax.numpy as jnp
    >>> state = {"w": jnp.ones(2), "rng": jax.random.key(0)}
    >>> flat = flatten_state(state)
    >>> sorted(flat), flat["000000"].dtype
    (['000000', '000001'], dtype('uint32'))
    >>> pytree_sha256(unflatten_state(state, flat)) == pytree_sha256(state)
    True
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from ipguard_jax.storage.canonical import canonical_json
from ipguard_jax.storage.files import open_regular

_BLOCK = 1 << 20


# -- bytes and files ----------------------------------------------------------------------------

def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as 64 lowercase hex digits.

    Example:
        >>> sha256_hex(b"abc")[:16]
        'ba7816bf8f01cfea'
    """
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, *, regular_only: bool = False) -> str:
    """The sha256 (hex) of a file's content, read in 1 MiB blocks.

    Args:
        path: the file.
        regular_only: refuse symbolic links, FIFOs, devices and other special files without
            reading (or waiting on) them, as :func:`ipguard_jax.storage.files.open_regular`.

    Raises:
        UnsafeFileError: with ``regular_only``, ``path`` is not a regular file.
        OSError: it cannot be read.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with open(os.path.join(tmp, "f"), "wb") as f:
        ...         _ = f.write(b"abc")
        ...     sha256_file(os.path.join(tmp, "f")) == sha256_hex(b"abc")
        True
    """
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") if regular_only else open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_regular(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a regular file, refusing links and special files (see
    :func:`sha256_file` with ``regular_only``).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     sha256_regular(tmp)
        Traceback (most recent call last):
        ...
        ipguard_jax.storage.files.UnsafeFileError: /... is a directory, not a regular file
    """
    return sha256_file(path, regular_only=True)


# -- arrays -------------------------------------------------------------------------------------

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
    with sorted keys and compact separators (:func:`~ipguard_jax.storage.canonical.
    canonical_json`, NaN allowed).

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
    digest.update(canonical_json(metadata, allow_nan=True))
    return digest.hexdigest()


def array_digest(*arrays: Any) -> str:
    """sha256 of arrays' dtypes, shapes and bytes: a data description for a recipe.

    Unlike :func:`update_digest` the bytes are hashed in the arrays' own byte order, with no
    label: ``dtype.str`` and the shape tuple, then the C-order bytes, for each array in turn.

    Args:
        *arrays: the arrays, in order (e.g. images and labels).

    Returns:
        64 lowercase hex digits.

    Example:
        >>> import numpy as np
        >>> array_digest(np.zeros(3)) == array_digest(np.zeros(3, np.float32))
        False
    """
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


# -- pytrees ------------------------------------------------------------------------------------

def is_prng_key(leaf: Any) -> bool:
    """Whether an array (concrete or abstract) holds typed PRNG keys (``jax.random.key``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> is_prng_key(jax.random.key(0)), is_prng_key(jax.random.PRNGKey(0))
        (True, False)
    """
    import jax

    return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def pytree_sha256(tree: Any) -> str:
    """A stable sha256 of a pytree: its leaf paths, dtypes, shapes and bytes.

    Each leaf is fed with :func:`update_digest` under its path (``jax.tree_util.keystr``), in
    flattening order; typed PRNG-key leaves through their key data. Independent of the device
    and of the process. This is :func:`ipguard_jax.params_hash`.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> pytree_sha256({"w": jnp.zeros(3)}) == pytree_sha256({"w": np.zeros(3, np.float32)})
        True
    """
    import jax

    digest = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in leaves:
        if isinstance(leaf, jax.Array) and is_prng_key(leaf):
            leaf = jax.random.key_data(leaf)
        update_digest(digest, jax.tree_util.keystr(path), leaf)
    return digest.hexdigest()


def leaf_name(index: int) -> str:
    """The name of the ``index``-th leaf in a flat state (:func:`flatten_state`): 6 digits.

    Example:
        >>> leaf_name(12)
        '000012'
    """
    return f"{index:06d}"


def flatten_state(tree: Any) -> dict[str, Any]:
    """A pytree's leaves by position (:func:`leaf_name`), typed PRNG keys as their key data.

    The leaves are returned as they are (JAX arrays stay JAX arrays); the tree structure is not
    kept: :func:`unflatten_state` takes it from a template, so custom pytree nodes
    (``nnx.State``, optax states) need no support from the array store.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> flat = flatten_state({"b": jnp.zeros(2), "a": jax.random.key(1)})
        >>> {name: leaf.tolist() for name, leaf in flat.items()}
        {'000000': [0, 1], '000001': [0.0, 0.0]}
    """
    import jax

    out = {}
    for index, leaf in enumerate(jax.tree.leaves(tree)):
        if is_prng_key(leaf):
            leaf = jax.random.key_data(leaf)
        out[leaf_name(index)] = leaf
    return out


def unflatten_state(template: Any, flat: Mapping[str, Any], *,
                    check: Callable[[int, Any, Any], None] | None = None) -> Any:
    """The pytree of :func:`flatten_state`: ``template``'s structure with ``flat``'s leaves.

    Each leaf becomes a JAX array; where the template's leaf is a typed PRNG key, the stored
    key data is wrapped back into a key of the same implementation. Entries of ``flat`` beyond
    the template's leaves are ignored.

    Args:
        template: a pytree of the same structure (e.g. a freshly initialised state).
        flat: ``{leaf_name(i): array}``.
        check: called as ``check(index, template_leaf, value)`` for each leaf that is not a
            PRNG key, in order; it raises to refuse the value.

    Raises:
        KeyError: ``flat`` lacks a leaf of the template.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> template = {"w": jnp.zeros(2), "rng": jax.random.key(0)}
        >>> flat = {"000000": np.array([0, 7], np.uint32), "000001": np.array([1.0, 2.0])}
        >>> restored = unflatten_state(template, flat)
        >>> jax.random.key_data(restored["rng"]).tolist(), restored["w"].tolist()
        ([0, 7], [1.0, 2.0])
    """
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(template)
    restored = []
    for index, ref in enumerate(leaves):
        value = jnp.asarray(flat[leaf_name(index)])
        if is_prng_key(ref):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(ref))
        elif check is not None:
            check(index, ref, value)
        restored.append(value)
    return jax.tree.unflatten(treedef, restored)
