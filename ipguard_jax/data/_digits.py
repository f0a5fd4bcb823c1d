"""scikit-learn's bundled digits: a small image data set that needs no network."""

from __future__ import annotations

import numpy as np

from ipguard_jax.data._dataset import Dataset


def load_digits() -> Dataset:
    """Loads the 1,797 8x8 grey handwritten digits bundled with scikit-learn.

    Pixel values 0..16 are divided by 16, so ``x`` lies in ``[0, 1]``. Examples come in the
    order scikit-learn stores them; use :meth:`Dataset.split` for shuffled parts.

    Returns:
        A ``Dataset`` with ``x`` of shape ``(1797, 8, 8, 1)``, labels 0..9 and class names
        ``"0"`` .. ``"9"``.

    Example:
        >>> ds = load_digits()
        >>> ds.x.shape, ds.class_names[:3]
        ((1797, 8, 8, 1), ('0', '1', '2'))
    """
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]
    y = bunch.target.astype(np.int32)
    names = tuple(str(c) for c in bunch.target_names)
    return Dataset(x, y, names, "digits")
