"""The `Dataset` container and `from_arrays`, the checked way to build one from NumPy arrays.

Example:
    >>> import numpy as np
    >>> from ipguard_jax.data import from_arrays
    >>> ds = from_arrays(np.zeros((6, 4, 4), np.uint8), [0, 1, 2, 0, 1, 2])
    >>> ds
    Dataset(name='arrays', len=6, image_shape=(4, 4, 1), num_classes=3)
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Labelled images as NumPy arrays, channels last.

    Attributes:
        x: ``(N, H, W, C)`` float32 images with values in ``[0, 1]``.
        y: ``(N,)`` int32 labels in ``[0, len(class_names))``.
        class_names: one name per label; label ``c`` is ``class_names[c]``.
        name: where the data came from, e.g. ``"digits"`` or ``"cifar10-jpeg.tar.gz:train"``.

    The constructor checks shapes, dtypes and label range (cheap). Use :func:`from_arrays` to
    build one from arbitrary arrays: it also converts dtypes and checks that values are finite
    and in ``[0, 1]``.

    Raises:
        TypeError: ``x`` is not a 4-D float32 NumPy array, ``y`` not a 1-D int32 one, or
            ``class_names`` not a tuple of str.
        ValueError: ``x`` and ``y`` differ in length, or a label is outside
            ``[0, len(class_names))``.

    Example:
        >>> import numpy as np
        >>> ds = Dataset(np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1], np.int32),
        ...              ("a", "b"))
        >>> len(ds), ds.num_classes, ds.image_shape
        (4, 2, (2, 2, 1))
        >>> train, test = ds.split(0.5, seed=0)
        >>> len(train), len(test)
        (2, 2)
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.float32 or self.x.ndim != 4:
            raise TypeError(
                f"x must be a 4-D float32 NumPy array (N, H, W, C); got {_describe(self.x)}. "
                "Use from_arrays() to convert other arrays.")
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.int32 or self.y.ndim != 1:
            raise TypeError(f"y must be a 1-D int32 NumPy array; got {_describe(self.y)}. "
                            "Use from_arrays() to convert other arrays.")
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y must have the same length; got {len(self.x)} images and "
                             f"{len(self.y)} labels")
        if not isinstance(self.class_names, tuple) or not all(
                isinstance(c, str) for c in self.class_names):
            raise TypeError(f"class_names must be a tuple of str; got {self.class_names!r}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}) for "
                             f"{len(self.class_names)} class names; got labels in "
                             f"[{self.y.min()}, {self.y.max()}]")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        # The default dataclass repr would print the arrays.
        return (f"Dataset(name={self.name!r}, len={len(self)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(class_names)``.

        Example:
            >>> import numpy as np
            >>> from ipguard_jax.data import from_arrays
            >>> from_arrays(np.zeros((2, 4, 4), np.uint8), [0, 1], ["cat", "dog"]).num_classes
            2
        """
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(H, W, C)``.

        Example:
            >>> import numpy as np
            >>> from ipguard_jax.data import from_arrays
            >>> from_arrays(np.zeros((2, 4, 5, 3), np.uint8), [0, 1]).image_shape
            (4, 5, 3)
        """
        return tuple(int(d) for d in self.x.shape[1:])

    def class_counts(self) -> np.ndarray:
        """Number of examples per class, shape ``(num_classes,)``.

        Example:
            >>> import numpy as np
            >>> from ipguard_jax.data import from_arrays
            >>> ds = from_arrays(np.zeros((3, 2, 2), np.uint8), [0, 2, 2])
            >>> ds.class_counts().tolist()
            [1, 0, 2]
        """
        return np.bincount(self.y, minlength=self.num_classes)

    def subset(self, indices: ArrayLike, name: str | None = None) -> Dataset:
        """The examples at ``indices`` (integer indices or a boolean mask), in that order.

        Args:
            indices: integer indices into the dataset, or a boolean mask of length ``len(self)``.
            name: name of the result; defaults to this dataset's name.

        Returns:
            A new ``Dataset`` with copies of the selected examples and the same class names.

        Raises:
            ValueError: a boolean mask of the wrong length.
            TypeError: indices that are neither 1-D integers nor a boolean mask.

        Example:
            >>> import numpy as np
            >>> from ipguard_jax.data import from_arrays
            >>> ds = from_arrays(np.zeros((4, 2, 2), np.uint8), [0, 1, 0, 1])
            >>> ds.subset([3, 0]).y.tolist(), len(ds.subset(ds.y == 1, name="ones"))
            ([1, 0], 2)
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean mask for indices must have shape ({len(self)},); "
                                 f"got {idx.shape}")
        elif idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise TypeError(f"indices must be a 1-D array of integers or a boolean mask; "
                            f"got {_describe(idx)}")
        idx = idx.astype(np.intp) if idx.dtype != bool else idx
        return Dataset(self.x[idx], self.y[idx], self.class_names,
                       self.name if name is None else name)

    def shuffle(self, seed: int = 0) -> Dataset:
        """All examples in a random order fixed by ``seed``.

        Args:
            seed: seed for :func:`numpy.random.default_rng`.

        Returns:
            A new shuffled ``Dataset``.

        Example:
            >>> import numpy as np
            >>> from ipguard_jax.data import from_arrays
            >>> ds = from_arrays(np.zeros((4, 2, 2), np.uint8), [0, 1, 2, 3])
            >>> sorted(ds.shuffle(seed=1).y.tolist())
            [0, 1, 2, 3]
        """
        return self.subset(np.random.default_rng(seed).permutation(len(self)))

    def split(self, sizes: float | Sequence[int] | Sequence[float], *,
              seed: int = 0) -> tuple[Dataset, ...]:
        """Shuffles with a fixed seed, then cuts into disjoint parts.

        Shuffling first matters: image folders and many archives list examples grouped by
        class, so an unshuffled cut would hold only some classes.

        Args:
            sizes: one of
                - a float ``f`` in ``(0, 1)``: two parts, the first ``round(f * N)`` examples and
                  the rest;
                - a sequence of ints: parts of exactly these sizes; they may sum to less than
                  ``N`` (the remaining examples are left out), not more;
                - a sequence of floats summing to at most 1: fractions of ``N``, each rounded
                  down; if they sum to 1 the last part also takes the rounding remainder.
            seed: seed of the shuffle; the same seed gives the same parts.

        Returns:
            A tuple of ``Dataset`` parts, named ``"<name>[part i]"``.

        Raises:
            ValueError: a fraction outside ``(0, 1)``, negative sizes, sizes that sum to more
                than ``N`` (or fractions to more than 1).
            TypeError: ``sizes`` of another type, or mixing ints and floats.

        Example:
            >>> import numpy as np
            >>> from ipguard_jax.data import from_arrays
            >>> ds = from_arrays(np.zeros((10, 2, 2), np.uint8), np.arange(10) % 2)
            >>> owner, pirate, independent = ds.split([0.4, 0.3, 0.3], seed=0)
            >>> len(owner), len(pirate), len(independent), owner.name
            (4, 3, 3, 'arrays[part 0]')
            >>> [len(part) for part in ds.split([5, 2])]  # ints: exact sizes, 3 left out
            [5, 2]
        """
        counts = self._part_sizes(sizes)
        order = np.random.default_rng(seed).permutation(len(self))
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return tuple(self.subset(order[a:b], name=f"{self.name}[part {i}]")
                     for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])))

    def _part_sizes(self, sizes) -> list[int]:
        n = len(self)
        if isinstance(sizes, numbers.Real) and not isinstance(sizes, numbers.Integral):
            if not 0.0 < sizes < 1.0:
                raise ValueError(f"a single fraction for sizes must lie in (0, 1); got {sizes}")
            first = int(round(sizes * n))
            return [first, n - first]
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
            raise TypeError(f"sizes must be a float in (0, 1) or a non-empty sequence of ints or "
                            f"of floats; got {sizes!r}")
        if all(isinstance(s, numbers.Integral) for s in sizes):
            counts = [int(s) for s in sizes]
            if min(counts) < 0:
                raise ValueError(f"sizes must be non-negative; got {list(sizes)}")
            if sum(counts) > n:
                raise ValueError(f"sizes sum to {sum(counts)}, more than the {n} examples")
            return counts
        if all(isinstance(s, numbers.Real) and not isinstance(s, numbers.Integral)
               for s in sizes):
            fractions = [float(s) for s in sizes]
            total = sum(fractions)
            if min(fractions) < 0 or total > 1.0 + 1e-9:
                raise ValueError(f"fractions in sizes must be non-negative and sum to at most 1; "
                                 f"got {list(sizes)} (sum {total})")
            counts = [int(np.floor(f * n)) for f in fractions]
            if abs(total - 1.0) <= 1e-9:
                counts[-1] = n - sum(counts[:-1])
            return counts
        raise TypeError(f"sizes must hold only ints or only floats; got {sizes!r}")


#: The most classes ``from_arrays`` names by itself ("0", "1", ...) when no class_names are given.
_MAX_DEFAULT_CLASSES = 1 << 20


def from_arrays(x: ArrayLike, y: ArrayLike, class_names: Sequence[str] | None = None, *,
                name: str = "arrays") -> Dataset:
    """Builds a checked :class:`Dataset` from image and label arrays.

    Args:
        x: images, channels last: ``(N, H, W, C)``, or ``(N, H, W)`` for grey images (a channel
            axis is added). Either floats in ``[0, 1]`` (any float dtype; stored as float32) or
            ``uint8`` in ``[0, 255]``, which is scaled by ``1/255``. Other integer dtypes are
            rejected, since their scale is ambiguous.
        y: ``(N,)`` integer labels in ``[0, num_classes)``.
        class_names: one name per class. Defaults to ``"0"``, ``"1"``, ... up to the largest
            label.
        name: name stored in the dataset.

    Returns:
        A ``Dataset`` with float32 ``x`` and int32 ``y``.

    Raises:
        TypeError: a dtype is not accepted (e.g. float labels, int64 images) or ``class_names``
            is not a sequence of str.
        ValueError: a shape, length or value is wrong (NaN/inf, values outside ``[0, 1]``,
            labels out of range, an empty dataset, duplicate class names...).

    Example:
        >>> import numpy as np
        >>> ds = from_arrays(np.full((2, 4, 4), 255, np.uint8), [0, 1], ["cat", "dog"])
        >>> ds.x.shape, float(ds.x.max()), ds.class_names
        ((2, 4, 4, 1), 1.0, ('cat', 'dog'))
    """
    x_arr = _as_array(x, "x")
    y_arr = _as_array(y, "y")

    if x_arr.dtype == np.uint8:
        x_float = None  # scaled below, after the shape checks
    elif np.issubdtype(x_arr.dtype, np.floating):
        x_float = x_arr
    else:
        raise TypeError(f"x must hold floats in [0, 1] or uint8 in [0, 255]; got dtype "
                        f"{x_arr.dtype}")
    if x_arr.ndim == 3:
        x_arr = x_arr[..., None]
    if x_arr.ndim != 4:
        raise ValueError(f"x must be 4-D (N, H, W, C), or 3-D (N, H, W) for grey images; got "
                         f"shape {x_arr.shape}")
    if x_arr.shape[0] == 0:
        raise ValueError("x is empty: it holds no images")
    if 0 in x_arr.shape[1:]:
        raise ValueError(f"x has an empty image axis: shape {x_arr.shape}")
    if x_arr.shape[1] in (1, 3) and x_arr.shape[3] not in (1, 2, 3, 4):
        raise ValueError(f"x looks channels-first (N, C, H, W) with shape {x_arr.shape}; "
                         "pass channels last, e.g. np.transpose(x, (0, 2, 3, 1))")

    if x_float is None:
        x_out = x_arr.astype(np.float32) / np.float32(255.0)
    else:
        finite = np.isfinite(x_arr)
        if not finite.all():
            bad = int(np.size(finite) - np.count_nonzero(finite))
            raise ValueError(f"x must be finite; it holds {bad} NaN or infinite values")
        with np.errstate(over="ignore"):  # beyond float32's range means outside [0, 1] anyway
            x_out = np.asarray(x_arr, dtype=np.float32)
        lo, hi = float(x_arr.min()), float(x_arr.max())
        if x_out.min() < 0.0 or x_out.max() > 1.0:
            hint = " (pixel values in 0..255? divide by 255 or pass uint8)" if hi > 1.0 else ""
            raise ValueError(f"x values must lie in [0, 1]; got values in [{lo:g}, {hi:g}]"
                             f"{hint}")

    if y_arr.dtype == bool or not np.issubdtype(y_arr.dtype, np.integer):
        raise TypeError(f"y must hold integer labels; got dtype {y_arr.dtype}")
    if y_arr.ndim != 1:
        hint = " (one-hot labels? pass y.argmax(-1))" if y_arr.ndim == 2 else ""
        raise ValueError(f"y must be 1-D (N,); got shape {y_arr.shape}{hint}")
    if len(y_arr) != len(x_out):
        raise ValueError(f"x and y must have the same length; got {len(x_out)} images and "
                         f"{len(y_arr)} labels")
    if y_arr.min() < 0:
        raise ValueError(f"y must be non-negative labels; got minimum {y_arr.min()}")

    if y_arr.max() >= np.iinfo(np.int32).max:
        raise ValueError(f"y holds label {y_arr.max()}, too large for int32")
    if class_names is None:
        if y_arr.max() >= _MAX_DEFAULT_CLASSES:
            raise ValueError(
                f"y holds label {y_arr.max()}: pass class_names to use more than "
                f"{_MAX_DEFAULT_CLASSES} classes (without them every label up to the largest "
                f"gets a name)")
        names = tuple(str(c) for c in range(int(y_arr.max()) + 1))
    else:
        if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
            raise TypeError(f"class_names must be a sequence of str; got {class_names!r}")
        names = tuple(class_names)
        if not all(isinstance(c, str) for c in names):
            raise TypeError(f"class_names must hold only str; got {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique; got {names!r}")
        if y_arr.max() >= len(names):
            raise ValueError(f"y holds label {y_arr.max()}, but class_names has only "
                             f"{len(names)} names, so labels must lie in [0, {len(names)})")
    return Dataset(x_out, y_arr.astype(np.int32), names, name)


def _as_array(value: ArrayLike, arg: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:  # e.g. ragged nested lists
        raise TypeError(f"{arg} must be array-like: {e}") from e
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(f"{arg} must be a numeric array; got dtype {arr.dtype}")
    return arr


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__
