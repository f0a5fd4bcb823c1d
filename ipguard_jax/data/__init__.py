"""Labelled image data sets as NumPy arrays, ready for a classifier and for fingerprinting.

Every loader returns a :class:`Dataset`: ``x`` float32 ``(N, H, W, C)`` in ``[0, 1]``, ``y``
int32 labels, ``class_names``. Sources:

- :func:`load_digits`: scikit-learn's bundled 8x8 digits; works offline, the default.
- :func:`from_arrays`: your own arrays, checked and converted.
- :func:`load_image_folder`: ``root/[split/]class/*.jpg`` directories or tar archives of them.
- :func:`load_tfds`: TensorFlow Datasets splits, with or without TensorFlow.

:data:`DEFAULT_MAX_ARCHIVE_BYTES` and :data:`DEFAULT_MAX_IMAGE_PIXELS` are
:func:`load_image_folder`'s default limits on what an archive or an image may unpack to.

Example:
    >>> from ipguard_jax import data
    >>> ds = data.load_digits()
    >>> owner, pirate, independent = ds.split([0.4, 0.3, 0.3], seed=0)
    >>> len(owner), owner.x.shape[1:]
    (718, (8, 8, 1))
"""

from ipguard_jax.data._dataset import Dataset as Dataset
from ipguard_jax.data._dataset import from_arrays as from_arrays
from ipguard_jax.data._digits import load_digits as load_digits
from ipguard_jax.data._folder import CACHE_ENV_VAR as CACHE_ENV_VAR
from ipguard_jax.data._folder import DEFAULT_MAX_ARCHIVE_BYTES as DEFAULT_MAX_ARCHIVE_BYTES
from ipguard_jax.data._folder import DEFAULT_MAX_IMAGE_PIXELS as DEFAULT_MAX_IMAGE_PIXELS
from ipguard_jax.data._folder import default_cache_dir as default_cache_dir
from ipguard_jax.data._folder import load_image_folder as load_image_folder
from ipguard_jax.data._tfds import load_tfds as load_tfds
