"""Adapters at the library's edges: open what a user names, outside the core algorithms.

- :mod:`ipguard_jax.adapters.sources`: model references (model files, PyTorch state dicts,
  ``.keras`` files, ``http(s)://`` endpoints) and data references (``digits``, image folders
  and archives, ``.npz`` files, ``tfds:NAME``), with every option an explicit keyword
  argument. The ``ipguard`` command line is a thin layer over these.
- :mod:`ipguard_jax.adapters.torch`: PyTorch models converted onto the zoo's Flax models
  (``from_torch``), a local PyTorch suspect (``TorchSuspect``);
  :mod:`ipguard_jax.adapters.torch_reference` holds the PyTorch layouts torchvision lacks.
  Also importable as :mod:`ipguard_jax.convert`.
- :mod:`ipguard_jax.adapters.keras`: a Keras 3 model as a classifier (JAX backend).
- :mod:`ipguard_jax.adapters.http`: a suspect behind an HTTP endpoint (``HTTPSuspect``: query
  budget, resume file, redirects and secrets handled); also importable as
  :mod:`ipguard_jax.suspects`.

Each imports its framework only when used, so the core never needs torch or keras.

Example:
    >>> from ipguard_jax.adapters import load_data
    >>> load_data("digits").x.shape
    (1797, 8, 8, 1)
"""

from ipguard_jax.adapters.sources import URL_PREFIXES as URL_PREFIXES
from ipguard_jax.adapters.sources import SourceError as SourceError
from ipguard_jax.adapters.sources import load_data as load_data
from ipguard_jax.adapters.sources import load_model as load_model
from ipguard_jax.adapters.sources import model_kind as model_kind

__all__ = ["URL_PREFIXES", "SourceError", "load_data", "load_model", "model_kind"]
