"""Storage infrastructure shared by the file formats of :mod:`ipguard_jax`.

- :mod:`~ipguard_jax.storage.files`: atomic writes (temporary sibling, fsync, rename), locks
  and cleanup of killed writes, and bounded reads of regular files from untrusted places.
- :mod:`~ipguard_jax.storage.digest`: sha256 of bytes, files, arrays and pytrees (PRNG keys
  included), and the flat form of PRNG-key-holding pytrees that checkpoints store.
- :mod:`~ipguard_jax.storage.canonical`: canonical JSON (sorted keys, compact, ASCII).
- :mod:`~ipguard_jax.storage.manifest`: the fingerprint manifest (format, version, checks and
  :class:`~ipguard_jax.storage.fingerprint_files.FingerprintFileError`) that fingerprint
  directories and sealed files share.
- :mod:`~ipguard_jax.storage.fingerprint_files`: the versioned fingerprint directory store,
  :func:`~ipguard_jax.storage.fingerprint_files.save` and
  :func:`~ipguard_jax.storage.fingerprint_files.load`.
- :mod:`~ipguard_jax.storage.sealed`: sealed (AES-256-GCM, scrypt) fingerprint files.
- :mod:`~ipguard_jax.storage.commitments`: salted sha256 commitments to fingerprint sets.

Nothing is imported here, so importing one submodule does not import the others (nor JAX).
"""
