"""Fingerprint files: :func:`save`, :func:`load`, :func:`seal` and :func:`unseal`.

The implementation lives in :mod:`ipguard_jax.storage`: the versioned fingerprint directories
(orbax arrays plus a checksummed JSON manifest, written atomically) in
:mod:`ipguard_jax.storage.fingerprint_files`, sealed files (scrypt and AES-256-GCM) in
:mod:`ipguard_jax.storage.sealed`; their formats are described there. This module re-exports
their names, so code written against ``ipguard_jax.io`` keeps working. Assigning one of those
names here (``io.SCRYPT_N = ...``, or ``monkeypatch.setattr(io, "_write_version", ...)`` in a
test) assigns it in the implementing module too, as it did when the code lived here.

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import ipguard_jax as ipg
    >>> fp = ipg.Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0],
    ...                       j=[0, 1], loss=[0.0, 0.0], converged=[True, True], steps=[5, 7],
    ...                       source=[0, 1])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = ipg.save(fp, os.path.join(tmp, "owner_fingerprints"))
    ...     sorted(os.listdir(path))[0], ipg.load(path).digest() == fp.digest()
    ('CURRENT', True)
"""

from __future__ import annotations

import sys as _sys
import types as _types
from typing import Any as _Any

from ipguard_jax.fingerprints import ARRAY_FIELDS, Fingerprints  # noqa: F401
from ipguard_jax.storage import fingerprint_files as _store_module
from ipguard_jax.storage import sealed as _sealed_module
from ipguard_jax.storage.digest import content_digest, sha256_regular  # noqa: F401
from ipguard_jax.storage.files import (  # noqa: F401
    UnsafeFileError, array_nbytes, check_expansion, check_tree, open_regular, orbax_array_specs,
    read_regular, rename_new)
from ipguard_jax.storage.fingerprint_files import (  # noqa: F401
    FORMAT, FORMAT_VERSION, FingerprintFileError, load, save)
# The only private names re-exported: tests replace them here (monkeypatch.setattr(io, ...)),
# and the assignment reaches the implementing module (see _ReExports).
from ipguard_jax.storage.fingerprint_files import (  # noqa: F401
    _write_text_atomic, _write_version)
from ipguard_jax.storage.sealed import (  # noqa: F401
    SCRYPT_N, SCRYPT_P, SCRYPT_R, SEALED_FORMAT, SEALED_FORMAT_VERSION, SEALED_MAGIC, seal,
    unseal)

_IMPLEMENTATIONS = (_store_module, _sealed_module)


class _ReExports(_types.ModuleType):
    """This module, with assignments forwarded to the modules whose names it re-exports."""

    def __setattr__(self, name: str, value: _Any) -> None:
        if name in self.__dict__:
            current = self.__dict__[name]
            for module in _IMPLEMENTATIONS:
                if name in vars(module) and vars(module)[name] is current:
                    setattr(module, name, value)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _ReExports
