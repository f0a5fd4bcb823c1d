"""Keras 3 models (JAX backend) as a :class:`~ipguard_jax.Classifier`.

With ``KERAS_BACKEND=jax``, ``model.stateless_call(trainable, non_trainable, x, training=False)``
is a pure JAX function of the variable values and the input, so it jits, differentiates with
respect to ``x`` and vmaps like any Flax model. This module wraps it; Keras is imported only
when a Keras model is wrapped.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from ipguard_jax.classifier import Classifier

_BACKEND_HELP = (
    "set the environment variable KERAS_BACKEND=jax before keras is first imported, e.g. "
    "`export KERAS_BACKEND=jax` in the shell, or `os.environ['KERAS_BACKEND'] = 'jax'` at the top "
    "of your script before `import keras` (or set \"backend\": \"jax\" in ~/.keras/keras.json)"
)


class SoftmaxOutputWarning(UserWarning):
    """The Keras model ends in a softmax: labels are right, but gradients may be weak."""


def _import_keras() -> Any:
    try:
        import keras
    except ImportError as e:
        raise ImportError(
            "classifier_from_keras needs Keras 3: `pip install 'ipguard-jax[keras]'` "
            "(or `pip install keras`), with KERAS_BACKEND=jax"
        ) from e
    if not keras.__version__.startswith("3."):
        raise ImportError(f"classifier_from_keras needs Keras 3, found keras {keras.__version__}")
    return keras


def _keras_apply(model: Any, params: Any, x: jax.Array) -> jax.Array:
    trainable, non_trainable = params
    # training=False: BatchNorm uses its moving statistics, Dropout is off; the updated
    # non-trainable values that stateless_call returns are unchanged in inference and dropped.
    out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
    return out


def _is_softmax(keras: Any, fn: Any) -> bool:
    return fn is keras.activations.softmax or getattr(fn, "__name__", None) == "softmax"


def _softmax_output_layer(keras: Any, model: Any) -> Any | None:
    """The layer whose softmax makes the model's output, or ``None`` if it ends otherwise."""
    layers = getattr(model, "layers", None)
    if not layers:  # a bare layer, or a subclassed model without tracked layers
        return None
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return last
    if _is_softmax(keras, getattr(last, "activation", None)):
        return last
    return None


def _strip_softmax(keras: Any, model: Any, softmax_layer: Any) -> Any:
    """A copy of ``model`` whose final softmax is the identity, with the same weights."""
    def clone_layer(layer: Any) -> Any:
        if layer is not softmax_layer:
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.Softmax):
            return keras.layers.Identity(name=layer.name)
        config = dict(layer.get_config(), activation="linear")
        return layer.__class__.from_config(config)

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer)
    except Exception as e:  # subclassed models cannot be cloned layer by layer
        raise ValueError(
            "strip_softmax=True needs a Sequential or functional Keras model; for a subclassed "
            f"model ({type(model).__name__}) remove the final softmax in its call() instead "
            f"({type(e).__name__}: {e})"
        ) from e
    clone.set_weights(model.get_weights())
    return clone


def _model_input_shape(model: Any) -> tuple[int, ...]:
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        shape = None
    if shape is None:
        raise ValueError(
            f"input_shape is required: the Keras model {model.name!r} has no defined input shape "
            "(give input_shape=(H, W, C), or build the model with keras.Input)"
        )
    if isinstance(shape, list) or (shape and isinstance(shape[0], (tuple, list))):
        raise ValueError(
            f"the Keras model {model.name!r} takes several inputs {shape}; a classifier takes one"
        )
    example = tuple(shape[1:])
    if any(d is None for d in example):
        raise ValueError(
            f"the Keras model {model.name!r} has a variable input shape {tuple(shape)}: give "
            "input_shape explicitly (one example's shape)"
        )
    return tuple(int(d) for d in example)


def classifier_from_keras(model: Any, input_shape: tuple[int, ...] | None = None,
                          bounds: tuple[float, float] = (0.0, 1.0), *,
                          strip_softmax: bool = False) -> Classifier:
    """Wraps a Keras 3 model (JAX backend), in inference mode, as a :class:`Classifier`.

    The model's ``stateless_call`` becomes ``apply_fn``: ``params`` is the pair
    ``(trainable, non_trainable)`` of lists of its variable values as JAX arrays (in the
    model's variable order), and ``apply_fn(params, x)`` runs the model with ``training=False``
    (BatchNorm on its moving statistics, Dropout off). The model object is only read: later
    changes to its weights do not change the classifier.

    IPGuard optimises on logits. If the model ends in a softmax (a ``Softmax`` layer, or a last
    layer with ``activation="softmax"``), its output is probabilities: labels, and so
    verification, are unaffected, but gradients through a saturated softmax vanish and a margin
    ``k`` in probability units means something else. This function then warns
    (:class:`SoftmaxOutputWarning`) unless ``strip_softmax=True``, which wraps a copy of a
    Sequential or functional model with that softmax replaced by the identity (same weights).

    Args:
        model: a built ``keras.Model`` (or layer) mapping ``(N, *input_shape)`` to ``(N, C)``.
        input_shape: one example's shape; defaults to ``model.input_shape`` without the batch
            axis.
        bounds: ``(lo, hi)`` of valid raw inputs (preprocessing belongs inside the model).
        strip_softmax: wrap the model without its final softmax (see above).

    Returns:
        A :class:`Classifier`.

    Raises:
        RuntimeError: Keras runs on another backend than JAX.
        ValueError: the model has no usable input shape, or its output is not logits-shaped
            ``(N, C)`` with ``C >= 2``.

    Example:
        >>> import os; os.environ.setdefault("KERAS_BACKEND", "jax")  # before importing keras
        'jax'
        >>> import keras
        >>> from ipguard_jax import Classifier
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> clf = Classifier.from_keras(model)
        >>> clf.input_shape, clf.num_classes
        ((4,), 3)
    """
    keras = _import_keras()
    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            f"Keras is running on the {backend!r} backend (KERAS_BACKEND="
            f"{os.environ.get('KERAS_BACKEND')!r}); ipguard_jax needs the JAX backend: "
            + _BACKEND_HELP
        )
    if not isinstance(model, keras.Layer):
        raise TypeError(f"classifier_from_keras needs a keras.Model, got {type(model).__name__}")
    if input_shape is None:
        input_shape = _model_input_shape(model)
    input_shape = tuple(int(d) for d in input_shape)
    if not model.built:
        model.build((None, *input_shape))

    softmax_layer = _softmax_output_layer(keras, model)
    if softmax_layer is not None:
        if strip_softmax:
            model = _strip_softmax(keras, model, softmax_layer)
        else:
            warnings.warn(
                f"the Keras model {model.name!r} ends in a softmax (layer "
                f"{softmax_layer.name!r}): its outputs are probabilities, not logits. Labels and "
                "verification are unaffected, but gradients through a saturated softmax are weak "
                "and k is then in probability units; pass strip_softmax=True to fingerprint "
                "the logits", SoftmaxOutputWarning, stacklevel=3)
    elif strip_softmax:
        raise ValueError(f"strip_softmax=True, but the Keras model {model.name!r} does not end "
                         "in a softmax")

    # Copies, not the variables' own buffers: Keras' fit/predict donate those to XLA, which
    # would delete arrays held by the classifier.
    params = ([jnp.array(v.value, copy=True) for v in model.trainable_variables],
              [jnp.array(v.value, copy=True) for v in model.non_trainable_variables])
    apply_fn = functools.partial(_keras_apply, model)
    probe = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    try:
        out = jax.eval_shape(apply_fn, params, probe)
    except Exception as e:  # the model's own message is the useful part
        raise ValueError(
            f"the Keras model {model.name!r} fails on a batch of shape {probe.shape}: "
            f"{type(e).__name__}: {e}"
        ) from e
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != 2 or shape[1] < 2:
        got = shape if shape is not None else type(out).__name__
        raise ValueError(
            f"the Keras model {model.name!r} must output logits of shape (N, num_classes) with "
            f"num_classes >= 2; for a batch of shape {probe.shape} it returned {got}"
            + (" (a single sigmoid unit: output two logits [-z, z] instead)"
               if shape is not None and tuple(shape) == (2, 1) else "")
        )
    return Classifier(apply_fn, params, input_shape, bounds, jnp.float32)
