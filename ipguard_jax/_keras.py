"""Re-exports of :mod:`ipguard_jax.adapters.keras`, kept for code that imports them from here."""

from ipguard_jax.adapters.keras import SoftmaxOutputWarning as SoftmaxOutputWarning
from ipguard_jax.adapters.keras import classifier_from_keras as classifier_from_keras

__all__ = ["SoftmaxOutputWarning", "classifier_from_keras"]
