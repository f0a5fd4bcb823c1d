"""Reading files that someone else may have written: bounded, regular files only.

The helpers live in :mod:`ipguard_jax.storage.files` (and :func:`sha256_regular` in
:mod:`ipguard_jax.storage.digest`); this module re-exports them under their old names.

Example:
    >>> from ipguard_jax.storage import files
    >>> read_regular is files.read_regular, issubclass(UnsafeFileError, ValueError)
    (True, True)
"""

from __future__ import annotations

from ipguard_jax.storage.digest import sha256_regular  # noqa: F401
from ipguard_jax.storage.files import (  # noqa: F401
    MAX_EXPANSION, SMALL_ARRAYS_BYTES, UnsafeFileError, array_nbytes, check_expansion,
    check_tree, open_regular, orbax_array_specs, read_regular, rename_new)
