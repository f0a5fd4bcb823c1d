"""Start points for fingerprints chosen by what the owner does with them.

A model trained on another model's answers (distillation, extraction through a prediction API)
learns that model's mistakes along with what it gets right, while a model trained on the true
labels makes mistakes of its own. So the examples the owner gets *wrong*, labelled with the
owner's wrong answers, are points where a student tends to agree with its teacher and an
independent model tends not to (the idea behind AKH and SAC-w among the label-only
fingerprints). They cost nothing to find: one pass of the owner over labelled data.

Use them as the start points of any method, or as fingerprints themselves
(``method="random"`` keeps the start points, labelled by the owner):

    >>> import jax.numpy as jnp, numpy as np
    >>> from ipguard_jax import Classifier, FingerprintConfig, generate
    >>> from ipguard_jax.seeds import owner_mistakes
    >>> owner = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
    >>> x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
    >>> y = np.array([0, 2, 2, 1, 1])          # the owner predicts 0, 1, 2, 0, 1
    >>> owner_mistakes(owner, x, y).tolist()
    [1, 3]
    >>> fp = generate(owner, FingerprintConfig(num=2, init="data"), key=0,
    ...               data=x[owner_mistakes(owner, x, y)], method="random", progress=False)
    >>> sorted(fp.labels.tolist())             # the owner's answers, not the true labels
    [0, 1]

Never pick the seeds with the models a set is scored on; the owner and its own labelled data
are all this needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ipguard_jax.classifier import Classifier

__all__ = ["owner_mistakes"]


def owner_mistakes(classifier: Classifier, x: Any, y: Any, *, batch_size: int = 1024
                   ) -> np.ndarray:
    """Indices of the examples the owner labels wrongly, in increasing order.

    Args:
        classifier: the owner.
        x: examples ``(N, *input_shape)`` with their true labels ``y``.
        y: ``(N,)`` integer labels in ``[0, num_classes)``.
        batch_size: examples per compiled call of the owner.

    Returns:
        An int64 array of the indices ``n`` with ``owner.predict(x)[n] != y[n]`` (empty when
        the owner makes no mistake on ``x``).

    Raises:
        TypeError: ``classifier`` is not a :class:`~ipguard_jax.Classifier`, or ``y`` is not
            an integer array.
        ValueError: ``y`` is not 1-D with one label per example, or holds a label outside
            the owner's classes; a bad ``x`` (see :meth:`~ipguard_jax.Classifier.predict`).
    """
    if not isinstance(classifier, Classifier):
        raise TypeError(f"classifier must be an ipguard_jax.Classifier, got "
                        f"{type(classifier).__name__}")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    n = len(x) if hasattr(x, "__len__") else None
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must be 1-D with one label per example of x ({n}), got shape "
                         f"{y.shape}")
    classes = classifier.num_classes
    outside = (y < 0) | (y >= classes)
    if outside.any():
        raise ValueError(f"y holds labels outside the owner's classes [0, {classes}): "
                         f"{sorted({int(v) for v in y[outside]})[:5]}")
    labels = classifier.predict(x, batch_size=batch_size)
    return np.flatnonzero(labels != y).astype(np.int64)

