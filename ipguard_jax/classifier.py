"""A classifier as a pure function of its parameters, with the spec of the inputs it takes.

:class:`Classifier` is what :func:`ipguard_jax.generate` fingerprints and what
:func:`ipguard_jax.verify` queries: ``apply_fn(params, x) -> logits`` plus one example's shape,
the input bounds and dtype. It wraps plain JAX functions, Flax NNX and Linen modules and Keras 3
models (JAX backend); :func:`params_hash` identifies the parameters in provenance records.

Example:
    >>> import jax.numpy as jnp
    >>> from ipguard_jax import Classifier
    >>> clf = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
    >>> clf.predict(jnp.array([[0.1, 0.7, 0.2]])).tolist()
    [1]
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ipguard_jax.storage.digest import pytree_sha256

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def check_bounds(bounds: Any) -> tuple[float, float]:
    """Checks an input box ``(lo, hi)``: two finite numbers with ``lo < hi``.

    Args:
        bounds: the pair to check (any iterable of two numbers; not strings or bools).

    Returns:
        ``(lo, hi)`` as Python floats.

    Raises:
        TypeError: not a pair of numbers.
        ValueError: a bound that is not finite, or ``lo >= hi``.

    Example:
        >>> check_bounds([0, 255])
        (0.0, 255.0)
    """
    try:
        if isinstance(bounds, (str, bytes)):
            raise TypeError
        items = tuple(bounds)
        if any(isinstance(b, (str, bytes, bool, np.bool_)) for b in items):
            raise TypeError
        lo, hi = (float(b) for b in items)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"bounds must be a pair of numbers (lo, hi), got {bounds!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"bounds must be finite, got {(lo, hi)}")
    if lo >= hi:
        raise ValueError(f"bounds must have lo < hi, got lo={lo} >= hi={hi}")
    return lo, hi


def check_shape(input_shape: Any) -> tuple[int, ...]:
    """Checks one example's shape: a non-empty tuple of positive ints.

    Args:
        input_shape: the shape to check (any iterable of ints; not strings, bools or floats).

    Returns:
        The shape as a tuple of Python ints.

    Raises:
        TypeError: not a sequence of ints.
        ValueError: empty, or a size that is not positive.

    Example:
        >>> check_shape([32, 32, 3])
        (32, 32, 3)
    """
    try:
        if isinstance(input_shape, (str, bytes)):
            raise TypeError
        items = tuple(input_shape)
        if any(isinstance(d, (bool, np.bool_)) for d in items):
            raise TypeError
        shape = tuple(operator.index(d) for d in items)  # ints only: 3.5 is no size
    except (TypeError, ValueError):
        raise TypeError(
            f"input_shape must be a tuple of ints (one example's shape), got {input_shape!r}"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape}")
    return shape


def labels_from_logits(logits: Any, offset: int = 0, who: str = "the classifier") -> np.ndarray:
    """Argmax labels of a batch of logits, refusing inputs whose label is undefined.

    The label of an input is undefined where its logits hold a NaN, or where none of them is
    finite (all ``+inf``/``-inf``): ``argmax`` would still give a label there, an arbitrary
    one (the first NaN or the first of the tied infinities).

    Args:
        logits: ``(N, num_classes)`` logits.
        offset: index of the first row in the whole batch, for the error message.
        who: what returned the logits, for the error message.

    Returns:
        A NumPy int32 array ``(N,)`` of labels.

    Raises:
        ValueError: some input's label is undefined (the first such input is named by index).

    Example:
        >>> import numpy as np
        >>> labels_from_logits(np.array([[0.0, 2.0], [np.inf, 0.0]])).tolist()
        [1, 0]
        >>> labels_from_logits(np.array([[0.0, 2.0], [np.nan, 1.0]]))
        Traceback (most recent call last):
        ...
        ValueError: the classifier returned NaN logits, or no finite logit, for 1 of 2 inputs ...
    """
    logits = np.asarray(logits)
    undefined = np.isnan(logits).any(axis=-1) | ~np.isfinite(logits).any(axis=-1)
    if undefined.any():
        rows = np.flatnonzero(undefined)
        raise ValueError(
            f"{who} returned NaN logits, or no finite logit, for {len(rows)} of "
            f"{len(logits)} inputs (the first is input {offset + int(rows[0])}): their labels "
            f"are undefined"
        )
    return logits.argmax(axis=-1).astype(np.int32)


def params_hash(params: Any) -> str:
    """A stable sha256 of a parameter pytree: its structure, leaf paths, dtypes, shapes and bytes.

    Independent of the device and of the process: the same parameters give the same hash on any
    machine and at any later time, which makes it usable as provenance for a fingerprint set.

    Args:
        params: any pytree of arrays (PRNG-key leaves are hashed through their key data).

    Returns:
        A hex digest string.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ipguard_jax import params_hash
        >>> len(params_hash({"w": jnp.zeros(3)}))
        64
        >>> params_hash({"w": jnp.zeros(3)}) == params_hash({"w": np.zeros(3, np.float32)})
        True
    """
    return pytree_sha256(params)


def _nnx_apply(graphdef: Any, state: Any, x: jax.Array) -> jax.Array:
    from flax import nnx

    return nnx.merge(graphdef, state)(x)


def _linen_apply(module: Any, kwargs: tuple[tuple[str, Any], ...], variables: Any,
                 x: jax.Array) -> jax.Array:
    return module.apply(variables, x, **dict(kwargs))


@dataclasses.dataclass(frozen=True, eq=False)
class Classifier:
    """An owner or suspect classifier: ``apply_fn(params, x) -> logits`` plus its input spec.

    ``apply_fn`` must be a pure JAX function batched over the leading axis of ``x``; input
    normalisation belongs inside it, so that ``bounds`` is the range of the raw input (pixels in
    ``[0, 1]`` by default). Keep one ``Classifier`` object per model and reuse it: compiled code is
    cached per ``apply_fn``.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` with ``x`` of shape ``(N, *input_shape)`` and
            logits of shape ``(N, num_classes)``.
        params: the parameter pytree passed to ``apply_fn``.
        input_shape: one example's shape, e.g. ``(32, 32, 3)`` for NHWC images.
        bounds: ``(lo, hi)``, the box valid inputs live in.
        dtype: the floating dtype inputs are given in.

    Attributes:
        num_classes: the number of logits, found by tracing ``apply_fn`` on a probe batch.

    Raises:
        TypeError: ``apply_fn`` is not callable, a malformed ``input_shape`` or ``bounds``, a
            non-floating ``dtype``, or non-floating logits.
        ValueError: an empty or non-positive ``input_shape``, bounds that are not finite with
            ``lo < hi``, ``apply_fn`` failing on a probe batch, or logits that are not
            ``(N, num_classes)`` with at least 2 classes.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import Classifier
        >>> w = jnp.ones((4, 3)) * jnp.arange(3.0)
        >>> clf = Classifier(lambda p, x: x @ p, w, input_shape=(4,))
        >>> clf.num_classes, clf.predict(jnp.ones((2, 4))).tolist()
        (3, [2, 2])
    """

    apply_fn: ApplyFn
    params: Any
    input_shape: tuple[int, ...]
    bounds: tuple[float, float] = (0.0, 1.0)
    dtype: Any = jnp.float32
    num_classes: int = dataclasses.field(init=False)

    def __post_init__(self):
        if not callable(self.apply_fn):
            raise TypeError(f"apply_fn must be callable, got {type(self.apply_fn).__name__}")
        object.__setattr__(self, "input_shape", check_shape(self.input_shape))
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        try:
            dtype = jnp.dtype(self.dtype)
        except (TypeError, ValueError):
            raise TypeError(f"dtype must be a floating dtype, got {self.dtype!r}") from None
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        object.__setattr__(self, "dtype", dtype)
        probe = jax.ShapeDtypeStruct((2, *self.input_shape), dtype)
        try:
            out = jax.eval_shape(self.apply_fn, self.params, probe)
        except Exception as e:  # the message of the model's own failure is the useful part
            raise ValueError(
                f"apply_fn fails on a batch of shape {probe.shape} (input_shape "
                f"{self.input_shape}): {type(e).__name__}: {e}"
            ) from e
        if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 2:
            raise ValueError(
                "apply_fn must return logits of shape (N, num_classes); for a batch of shape "
                f"{probe.shape} it returned {getattr(out, 'shape', type(out).__name__)}"
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise TypeError(f"apply_fn must return floating logits, got dtype {out.dtype}")
        if out.shape[1] < 2:
            raise ValueError(
                f"a classifier needs at least 2 classes, apply_fn returns {out.shape[1]}"
            )
        object.__setattr__(self, "num_classes", int(out.shape[1]))

    @classmethod
    def from_nnx(cls, module: Any, input_shape: tuple[int, ...] | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0), dtype: Any = jnp.float32,
                 ) -> "Classifier":
        """Wraps a Flax NNX module, in evaluation mode, as a pure function.

        The module is cloned, switched to evaluation mode (BatchNorm uses its running
        statistics, Dropout is off) and split once into a graph definition and a state; the
        original module is left as it was. Hot loops then run plain ``jax.jit`` over the state.

        Args:
            module: an ``nnx.Module`` mapping ``(N, *input_shape)`` inputs to logits.
            input_shape: one example's shape; defaults to ``module.input_shape`` if it has one.
            bounds: ``(lo, hi)`` of valid inputs.
            dtype: input dtype.

        Returns:
            A :class:`Classifier` whose ``params`` is the module's ``nnx.State``.

        Raises:
            TypeError: ``module`` is not an ``nnx.Module``.
            ValueError: no ``input_shape`` given and the module has none.

        Example:
            >>> from flax import nnx
            >>> from ipguard_jax import Classifier
            >>> clf = Classifier.from_nnx(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), input_shape=(4,))
            >>> clf.num_classes
            3
        """
        from flax import nnx

        if not isinstance(module, nnx.Module):
            raise TypeError(f"from_nnx needs an nnx.Module, got {type(module).__name__}")
        if input_shape is None:
            input_shape = getattr(module, "input_shape", None)
            if input_shape is None:
                raise ValueError(
                    f"input_shape is required: {type(module).__name__} has no input_shape attribute"
                )
        module = nnx.clone(module)
        module.eval()
        graphdef, state = nnx.split(module)
        return cls(functools.partial(_nnx_apply, graphdef), state, input_shape, bounds, dtype)

    @classmethod
    def from_linen(cls, module: Any, variables: Any, input_shape: tuple[int, ...],
                   bounds: tuple[float, float] = (0.0, 1.0), dtype: Any = jnp.float32,
                   **apply_kwargs: Any) -> "Classifier":
        """Wraps a Flax Linen module and its variables.

        Args:
            module: a ``flax.linen.Module``.
            variables: its variables (``{"params": ..., "batch_stats": ...}``).
            input_shape: one example's shape.
            bounds: ``(lo, hi)`` of valid inputs.
            dtype: input dtype.
            **apply_kwargs: passed to every ``module.apply`` call, e.g. ``train=False`` so that
                BatchNorm uses its running statistics.

        Returns:
            A :class:`Classifier` with ``params = variables``.

        Raises:
            TypeError: ``module`` has no ``apply`` method.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> import flax.linen as nn
            >>> from ipguard_jax import Classifier
            >>> dense = nn.Dense(3)
            >>> variables = dense.init(jax.random.key(0), jnp.ones((1, 4)))
            >>> Classifier.from_linen(dense, variables, input_shape=(4,)).num_classes
            3
        """
        if not hasattr(module, "apply"):
            raise TypeError(f"from_linen needs a flax.linen.Module, got {type(module).__name__}")
        apply_fn = functools.partial(_linen_apply, module, tuple(sorted(apply_kwargs.items())))
        return cls(apply_fn, variables, input_shape, bounds, dtype)

    @functools.cached_property
    def jit_apply(self) -> Callable[[Any, jax.Array], jax.Array]:
        """``apply_fn`` compiled with :func:`jax.jit`, made once per classifier object.

        It takes the parameters as an argument, so it also runs on a copy of them placed
        elsewhere (e.g. replicated over a mesh); the input is not checked (see
        :meth:`check_input`).

        Example:
            >>> import jax.numpy as jnp
            >>> from ipguard_jax import Classifier
            >>> clf = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
            >>> clf.jit_apply(2 * clf.params, jnp.ones((1, 3))).tolist()
            [[2.0, 2.0, 2.0]]
        """
        return jax.jit(self.apply_fn)

    @functools.cached_property
    def params_hash(self) -> str:
        """sha256 of the parameters (see :func:`params_hash`), for provenance.

        Example:
            >>> import jax.numpy as jnp
            >>> from ipguard_jax import Classifier, params_hash
            >>> clf = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
            >>> clf.params_hash == params_hash(jnp.eye(3))
            True
        """
        return params_hash(self.params)

    @property
    def input_spec(self) -> dict[str, Any]:
        """The input spec as plain JSON-able values.

        Example:
            >>> import jax.numpy as jnp
            >>> from ipguard_jax import Classifier
            >>> Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,)).input_spec
            {'input_shape': [3], 'dtype': 'float32', 'bounds': [0.0, 1.0], 'num_classes': 3}
        """
        return {"input_shape": list(self.input_shape), "dtype": self.dtype.name,
                "bounds": list(self.bounds), "num_classes": self.num_classes}

    def check_input(self, x: Any, name: str = "x") -> np.ndarray | jax.Array:
        """Checks that ``x`` is a batch ``(N, *input_shape)`` of finite floats; returns it cast.

        The bounds are not checked: a classifier may be queried outside them.

        Args:
            x: the batch (a NumPy or JAX array, or anything ``np.asarray`` takes).
            name: the argument's name in error messages.

        Returns:
            ``x`` cast to the classifier's dtype (NumPy stays NumPy, JAX stays JAX).

        Raises:
            TypeError: ``x`` is not a floating array (e.g. uint8 images not yet scaled).
            ValueError: wrong shape, empty, or non-finite values.

        Example:
            >>> import jax.numpy as jnp, numpy as np
            >>> from ipguard_jax import Classifier
            >>> clf = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
            >>> clf.check_input(np.zeros((2, 3), np.float64)).dtype
            dtype('float32')
        """
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = np.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{name} must be a floating array with values in {self.bounds}, got dtype "
                f"{x.dtype}"
                + (" (scale uint8 images, e.g. x / 255)" if x.dtype == np.uint8 else "")
            )
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{name} must have shape (N, {', '.join(map(str, self.input_shape))}) to match "
                f"the classifier's input_shape {self.input_shape}, got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty")
        xp = np if isinstance(x, np.ndarray) else jnp  # host data is checked on the host
        if not bool(xp.all(xp.isfinite(x))):
            raise ValueError(f"{name} contains NaN or inf")
        return x.astype(self.dtype)

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Logits ``(N, num_classes)`` for a batch ``x`` of shape ``(N, *input_shape)``.

        Args:
            x: the batch, checked by :meth:`check_input`.

        Returns:
            The logits, a JAX array (one compiled call for the whole batch).

        Raises:
            TypeError: ``x`` is not a floating array.
            ValueError: wrong shape, empty, or non-finite values.

        Example:
            >>> import jax.numpy as jnp
            >>> from ipguard_jax import Classifier
            >>> clf = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
            >>> clf(jnp.array([[0.1, 0.7, 0.2]])).shape
            (1, 3)
        """
        return self.jit_apply(self.params, self.check_input(x))

    def predict(self, x: jax.typing.ArrayLike, batch_size: int = 1024) -> np.ndarray:
        """Predicted labels ``(N,)`` (int32) for a batch, computed in batches of ``batch_size``.

        Args:
            x: the batch ``(N, *input_shape)``, checked by :meth:`check_input`.
            batch_size: examples per compiled call.

        Returns:
            A NumPy int32 array of the argmax labels.

        Raises:
            ValueError: ``batch_size`` is not an int > 0, a bad ``x``, or logits that leave
                some label undefined: a NaN logit, or no finite one (see
                :func:`labels_from_logits`).
            TypeError: ``x`` is not a floating array.

        Example:
            >>> import jax.numpy as jnp
            >>> from ipguard_jax import Classifier
            >>> clf = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
            >>> clf.predict(jnp.eye(3)[::-1], batch_size=2).tolist()
            [2, 1, 0]
        """
        if not (isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
                and batch_size > 0):
            raise ValueError(f"batch_size must be an int > 0, got {batch_size!r}")
        batch_size = int(batch_size)
        x = self.check_input(x)
        labels = [labels_from_logits(self.jit_apply(self.params, x[s:s + batch_size]), s)
                  for s in range(0, x.shape[0], batch_size)]
        return np.concatenate(labels)

    def __repr__(self) -> str:
        return (f"Classifier(input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"bounds={self.bounds}, params_hash={self.params_hash[:12]}…)")

    @classmethod
    def from_keras(cls, model: Any, input_shape: tuple[int, ...] | None = None,
                   bounds: tuple[float, float] = (0.0, 1.0), **options: Any) -> "Classifier":
        """Wraps a Keras 3 model (``KERAS_BACKEND=jax``) in inference mode.

        The model's ``stateless_call`` with ``training=False`` becomes ``apply_fn``; its
        variable values are the ``params``. A model ending in a softmax triggers a warning
        unless ``strip_softmax=True`` (IPGuard's margin is in logit units). Details in
        :func:`ipguard_jax.adapters.keras.classifier_from_keras`.

        Args:
            model: a built ``keras.Model`` mapping ``(N, *input_shape)`` to ``(N, C)``.
            input_shape: one example's shape; defaults to ``model.input_shape`` without the
                batch axis.
            bounds: ``(lo, hi)`` of valid raw inputs.
            **options: ``strip_softmax=True`` wraps a copy without the final softmax.

        Returns:
            A :class:`Classifier`.

        Raises:
            RuntimeError: Keras runs on another backend than JAX.
            TypeError: ``model`` is not a Keras model or layer.
            ValueError: no usable input shape, or an output that is not ``(N, C)``, ``C >= 2``.

        Example:
            With ``KERAS_BACKEND=jax`` in the environment before Keras is imported:

            >>> import keras  # doctest: +SKIP
            >>> layers = [keras.Input((4,)), keras.layers.Dense(3)]  # doctest: +SKIP
            >>> Classifier.from_keras(keras.Sequential(layers)).num_classes  # doctest: +SKIP
            3
        """
        from ipguard_jax.adapters.keras import classifier_from_keras

        return classifier_from_keras(model, input_shape, bounds, **options)
