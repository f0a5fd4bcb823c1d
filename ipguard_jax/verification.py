"""Verification: query a suspect on the fingerprints, matching rate, verdict and exact p-value."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from ipguard_jax.classifier import Classifier
from ipguard_jax.fingerprints import Fingerprints

Suspect = Classifier | Callable[[np.ndarray], Any]


def _labels_from_output(out: Any, batch_len: int, num_classes: int | None) -> np.ndarray:
    out = np.asarray(out)
    if out.ndim == 2:  # logits or probabilities
        if out.shape[0] != batch_len:
            raise ValueError(f"the suspect returned {out.shape[0]} rows for {batch_len} queries")
        if num_classes is not None and out.shape[1] != num_classes:
            raise ValueError(
                f"the suspect returns {out.shape[1]} classes, the fingerprints' owner has "
                f"{num_classes}"
            )
        return out.argmax(axis=-1).astype(np.int64)
    if out.ndim == 1:  # labels
        if out.shape[0] != batch_len:
            raise ValueError(f"the suspect returned {out.shape[0]} labels for {batch_len} queries")
        if not np.issubdtype(out.dtype, np.integer):
            raise TypeError(
                f"a suspect returning 1-D output must return integer labels, got dtype {out.dtype}"
            )
        if num_classes is not None and ((out < 0).any() or (out >= num_classes).any()):
            raise ValueError(
                f"the suspect returned labels outside [0, {num_classes}): "
                f"{sorted(set(out[(out < 0) | (out >= num_classes)].tolist()))[:5]}"
            )
        return out.astype(np.int64)
    raise ValueError(
        "a suspect must return labels (N,) or logits/probabilities (N, C), got shape "
        f"{out.shape}"
    )


def query_labels(fingerprints: Fingerprints, suspect: Suspect, batch_size: int = 256) -> np.ndarray:
    """The suspect's labels on the fingerprint points, queried in batches.

    Args:
        fingerprints: the fingerprint set.
        suspect: a :class:`Classifier`, or any callable mapping a numpy batch
            ``(n, *input_shape)`` to logits/probabilities ``(n, C)`` or to integer labels ``(n,)``
            (a label-only black box, such as a model behind an API).
        batch_size: queries per call.

    Returns:
        ``(N,)`` int64 labels.
    """
    if not isinstance(fingerprints, Fingerprints):
        raise TypeError(f"fingerprints must be Fingerprints, got {type(fingerprints).__name__}")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be an int > 0, got {batch_size!r}")
    num_classes = fingerprints.num_classes
    if isinstance(suspect, Classifier):
        if suspect.input_shape != fingerprints.input_shape:
            raise ValueError(
                f"the suspect takes inputs of shape {suspect.input_shape}, the fingerprints "
                f"have shape {fingerprints.input_shape}"
            )
        if num_classes is not None and suspect.num_classes != num_classes:
            raise ValueError(
                f"the suspect has {suspect.num_classes} classes, the fingerprints' owner has "
                f"{num_classes}"
            )
        return suspect.predict(fingerprints.x, batch_size=batch_size).astype(np.int64)
    if not callable(suspect):
        raise TypeError(f"suspect must be a Classifier or a callable, got {type(suspect).__name__}")
    labels = []
    for start in range(0, len(fingerprints), batch_size):
        batch = fingerprints.x[start:start + batch_size]
        labels.append(_labels_from_output(suspect(batch), len(batch), num_classes))
    return np.concatenate(labels)


def matching_rate(fingerprints: Fingerprints, suspect: Suspect, batch_size: int = 256) -> float:
    """Share of fingerprints on which the suspect predicts the owner's label.

    Args:
        fingerprints: the fingerprint set.
        suspect: a :class:`Classifier` or a callable (see :func:`query_labels`).
        batch_size: queries per call.

    Returns:
        The matching rate in ``[0, 1]``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import Classifier, FingerprintConfig, generate, matching_rate
        >>> w = jnp.array([[1.0, -1.0, 0.5], [-0.5, 1.0, 0.2], [0.3, 0.1, -1.0]])
        >>> owner = Classifier(lambda p, x: x @ p, w, input_shape=(3,))
        >>> fp = generate(owner, FingerprintConfig(num=8, k=0.1, init="noise"), progress=False)
        >>> matching_rate(fp, owner)
        1.0
    """
    return float(np.mean(query_labels(fingerprints, suspect, batch_size) == fingerprints.labels))


def binomial_sf(successes: int, trials: int, p: float) -> float:
    """Exact ``P[X >= successes]`` for ``X ~ Binomial(trials, p)``, summed in log space."""
    if successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(trials + 1) - math.lgamma(x + 1) - math.lgamma(trials - x + 1)
             + x * log_p + (trials - x) * log_q for x in range(successes, trials + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of verifying a suspect against a fingerprint set.

    Attributes:
        matching_rate: share of fingerprints where the suspect gave the owner's label.
        threshold: the rate at or above which the suspect is judged a copy.
        is_copy: ``matching_rate >= threshold``.
        num_points: fingerprints queried.
        num_matches: fingerprints matched.
        null_rate: the agreement rate expected of an independent model (``None``: not given).
        p_value: exact one-sided binomial test of ``num_matches`` against ``null_rate``: the
            chance that an independent model matches at least this often (``None`` without a
            ``null_rate``).
    """

    matching_rate: float
    threshold: float
    is_copy: bool
    num_points: int
    num_matches: int
    null_rate: float | None = None
    p_value: float | None = None

    def __str__(self) -> str:
        verdict = "COPY" if self.is_copy else "not a copy"
        text = (f"{verdict}: matched {self.num_matches}/{self.num_points} fingerprints "
                f"({self.matching_rate:.1%}, threshold {self.threshold:.1%})")
        if self.p_value is not None:
            text += f", p = {self.p_value:.3g} against an independent-model rate of {self.null_rate:.1%}"
        return text


def verify(fingerprints: Fingerprints, suspect: Suspect, threshold: float = 0.5,
           null_rate: float | None = None, batch_size: int = 256) -> Verdict:
    """Judges whether a suspect is a copy of the fingerprints' owner.

    Args:
        fingerprints: the owner's fingerprint set.
        suspect: a :class:`Classifier` or a callable (see :func:`query_labels`).
        threshold: the suspect is a copy when its matching rate is ``>= threshold``.
        null_rate: the rate at which independently trained models agree with the owner on these
            fingerprints (measure it on models you trained yourself); with it, the verdict
            carries the exact binomial p-value of the observed matches.
        batch_size: queries per call.

    Returns:
        A :class:`Verdict`.
    """
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if null_rate is not None and not (isinstance(null_rate, (int, float))
                                      and 0.0 <= null_rate <= 1.0):
        raise ValueError(f"null_rate must be a number in [0, 1] or None, got {null_rate!r}")
    matches = int(np.sum(query_labels(fingerprints, suspect, batch_size) == fingerprints.labels))
    n = len(fingerprints)
    rate = matches / n
    p_value = None if null_rate is None else binomial_sf(matches, n, float(null_rate))
    return Verdict(matching_rate=rate, threshold=float(threshold), is_copy=rate >= threshold,
                   num_points=n, num_matches=matches,
                   null_rate=None if null_rate is None else float(null_rate), p_value=p_value)
