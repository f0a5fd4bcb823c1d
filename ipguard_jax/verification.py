"""Verification: query a suspect on the fingerprints, matching rate, verdict and exact p-value.

A suspect is a :class:`~ipguard_jax.Classifier` or any callable from a NumPy batch to logits or
labels (a local model, :class:`~ipguard_jax.HTTPSuspect`, a PyTorch
:class:`~ipguard_jax.convert.TorchSuspect`). :func:`verify` gives a :class:`Verdict` with the
matching rate and, given a null, an exact p-value: binomial against a ``null_rate`` you give,
or beta-binomial against the null calibrated on reference models and stored in the set
(:mod:`ipguard_jax.calibration`). :func:`ipguard_jax.verify_sequential`
(:mod:`ipguard_jax.sequential`) stops querying as soon as the answers decide.

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> import ipguard_jax as ipg
    >>> owner = ipg.Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
    >>> fp = ipg.generate(owner, ipg.FingerprintConfig(num=8, k=0.2, init="noise"),
    ...                   progress=False)
    >>> ipg.verify(fp, owner).is_copy
    True
    >>> label_only = lambda x: (owner.predict(x) + 1) % 3  # a black box that is always wrong
    >>> ipg.verify(fp, label_only).num_matches
    0
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import secrets
from typing import Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from ipguard_jax.classifier import Classifier, labels_from_logits
from ipguard_jax.fingerprints import Fingerprints, content_digest
from ipguard_jax.sharding import Placement, resolve_mesh

Suspect = Classifier | Callable[[np.ndarray], Any]


@runtime_checkable
class RemoteSuspect(Protocol):
    """A suspect behind a prediction endpoint, such as :class:`~ipguard_jax.HTTPSuspect`:
    what the query functions and :func:`~ipguard_jax.calibrate` rely on beyond a callable.

    A suspect that offers these (checked with ``isinstance``, by their presence) is treated
    like an :class:`~ipguard_jax.HTTPSuspect`: it is bound to each run before it is queried,
    requests mixing decoys are cut to its ``batch_size``, and a calibration records it by its
    URL (redacted). Any other callable is only called.

    Attributes:
        url: the endpoint (it may hold credentials: only its redacted form is recorded).
        batch_size: the most points it sends in one request.

    Example:
        >>> from ipguard_jax import HTTPSuspect
        >>> isinstance(HTTPSuspect("http://127.0.0.1:8000/predict"), RemoteSuspect)
        True
        >>> isinstance(lambda x: x.argmax(axis=1), RemoteSuspect)
        False
    """

    url: str
    batch_size: int

    def __call__(self, x: np.ndarray) -> Any:
        """The labels ``(n,)`` or logits ``(n, C)`` of a batch ``(n, *input_shape)``."""

    def bind(self, context: Mapping[str, Any], *, num_classes: int | None = None) -> None:
        """Ties the suspect's state (a resume file, say) to one run, named by ``context``
        (see :meth:`ipguard_jax.HTTPSuspect.bind`); called before the run's first query."""


def _labels_from_output(out: Any, batch_len: int, num_classes: int | None) -> np.ndarray:
    try:
        out = np.asarray(out)
    except (TypeError, ValueError):
        raise TypeError(
            f"the suspect must return an array of labels or logits, got {type(out).__name__}"
        ) from None
    if out.ndim == 2:  # logits or probabilities
        if out.shape[0] != batch_len:
            raise ValueError(f"the suspect returned {out.shape[0]} rows for {batch_len} queries")
        if num_classes is not None and out.shape[1] != num_classes:
            raise ValueError(
                f"the suspect returns {out.shape[1]} classes, the fingerprints' owner has "
                f"{num_classes}"
            )
        if out.shape[1] == 0:
            raise ValueError("the suspect returned logits with no classes (shape (N, 0))")
        if not (np.issubdtype(out.dtype, np.number) and not np.issubdtype(out.dtype,
                                                                           np.complexfloating)):
            raise TypeError(f"the suspect must return real logits, got dtype {out.dtype}")
        # refuses NaN or no finite logit: the label would be arbitrary
        return labels_from_logits(out, who="the suspect").astype(np.int64)
    if out.ndim == 1:  # labels
        if out.shape[0] != batch_len:
            raise ValueError(f"the suspect returned {out.shape[0]} labels for {batch_len} queries")
        if not np.issubdtype(out.dtype, np.integer):
            raise TypeError(
                f"a suspect returning 1-D output must return integer labels, got dtype {out.dtype}"
            )
        upper = np.inf if num_classes is None else num_classes
        if (out < 0).any() or (out >= upper).any():
            bad = (out < 0) | (out >= upper)
            raise ValueError(
                f"the suspect returned labels outside [0, {num_classes or 'num_classes'}): "
                f"{sorted(set(out[bad].tolist()))[:5]}"
            )
        return out.astype(np.int64)
    raise ValueError(
        "a suspect must return labels (N,) or logits/probabilities (N, C), got shape "
        f"{out.shape}"
    )


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number and not a bool: the type check of the rates,
    thresholds and probabilities that verification and calibration take.

    Example:
        >>> is_real(0.5), is_real(np.float32(1)), is_real(True), is_real("0.5")
        (True, True, False, False)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_fpr(fpr: Any) -> float:
    """Checks a false-positive rate: a number in ``(0, 1)``; returns it as a float.

    Raises:
        ValueError: anything else.

    Example:
        >>> check_fpr(0.01)
        0.01
    """
    if not (is_real(fpr) and 0.0 < fpr < 1.0):
        raise ValueError(f"fpr must be a number in (0, 1), got {fpr!r}")
    return float(fpr)


def check_fingerprints(fingerprints: Any) -> None:
    """Checks that ``fingerprints`` is a non-empty :class:`~ipguard_jax.Fingerprints`, as
    every query of a suspect (or of a reference model) needs.

    Raises:
        TypeError: not :class:`~ipguard_jax.Fingerprints`.
        ValueError: an empty set.
    """
    if not isinstance(fingerprints, Fingerprints):
        raise TypeError(f"fingerprints must be Fingerprints, got {type(fingerprints).__name__}")
    if len(fingerprints) == 0:
        raise ValueError("fingerprints is empty: there is nothing to query")


def _check_suspect(fingerprints: Fingerprints, suspect: Any) -> None:
    if isinstance(suspect, Classifier):
        if suspect.input_shape != fingerprints.input_shape:
            raise ValueError(
                f"the suspect takes inputs of shape {suspect.input_shape}, the fingerprints "
                f"have shape {fingerprints.input_shape}"
            )
        num_classes = fingerprints.num_classes
        if num_classes is not None and suspect.num_classes != num_classes:
            raise ValueError(
                f"the suspect has {suspect.num_classes} classes, the fingerprints' owner has "
                f"{num_classes}"
            )
    elif not callable(suspect):
        raise TypeError(f"suspect must be a Classifier or a callable, got {type(suspect).__name__}")


def _rng(key: Any) -> np.random.Generator:
    """A NumPy generator from ``key``: ``None`` (fresh OS entropy), an int seed, a
    ``jax.random.key`` or a ``numpy.random.Generator``."""
    if key is None:
        return np.random.default_rng()
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        if key < 0:
            raise ValueError(f"key must be an int >= 0, got {key}")
        return np.random.default_rng(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got a key array of shape {key.shape}")
        return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    raise TypeError(
        f"key must be None, an int seed, a jax.random.key or a numpy Generator, got "
        f"{type(key).__name__}"
    )


def _check_decoys(fingerprints: Fingerprints, decoys: Any) -> np.ndarray:
    try:
        decoys = np.asarray(decoys)
    except (TypeError, ValueError):
        raise TypeError(f"decoys must be an array, got {type(decoys).__name__}") from None
    if not jnp.issubdtype(decoys.dtype, jnp.floating):
        raise TypeError(f"decoys must be a floating array like the fingerprints' points, got "
                        f"dtype {decoys.dtype}")
    if decoys.ndim < 1 or tuple(decoys.shape[1:]) != fingerprints.input_shape:
        raise ValueError(
            f"decoys must have shape (M, {', '.join(map(str, fingerprints.input_shape))}) to "
            f"match the fingerprints, got {decoys.shape}"
        )
    if decoys.shape[0] == 0:
        raise ValueError("decoys is empty")
    if not np.isfinite(decoys).all():
        raise ValueError("decoys contains NaN or inf")
    decoys = decoys.astype(fingerprints.x.dtype)  # queries must not differ by dtype
    bounds = (fingerprints.metadata.get("classifier") or {}).get("bounds")
    if bounds is not None:
        lo, hi = (np.asarray(b, decoys.dtype) for b in bounds)
        if decoys.min() < lo or decoys.max() > hi:
            raise ValueError(f"decoys has values outside the owner's bounds {tuple(bounds)}")
    return decoys


def _interleave(n: int, num_decoy_pool: int, decoy_ratio: Any, batch_size: int,
                rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Query batches mixing ``n`` fingerprints with decoys, in a random order.

    Returns the batches as arrays of item indices (``< n``: a fingerprint; ``>= n``: decoy
    number ``index - n`` of ``picks``) and ``picks``, the decoys drawn from the pool. Every
    batch holds at least one decoy; the rest of the items are spread at random.
    """
    if not (is_real(decoy_ratio) and math.isfinite(decoy_ratio) and decoy_ratio > 0):
        raise ValueError(f"decoy_ratio must be a finite number > 0, got {decoy_ratio!r}")
    m = max(1, int(round(float(decoy_ratio) * n)))
    if m > num_decoy_pool:
        raise ValueError(
            f"decoy_ratio={decoy_ratio} needs {m} decoys for {n} fingerprints, decoys has "
            f"{num_decoy_pool}: pass more decoys or lower decoy_ratio"
        )
    total = n + m
    num_batches = -(-total // batch_size)
    if m < num_batches:
        raise ValueError(
            f"decoy_ratio={decoy_ratio} gives {m} decoys for {num_batches} batches of at most "
            f"batch_size={batch_size} queries; every batch needs at least one decoy: raise "
            f"decoy_ratio or batch_size"
        )
    picks = rng.choice(num_decoy_pool, size=m, replace=False)
    sizes = [total // num_batches + (b < total % num_batches) for b in range(num_batches)]
    sizes = rng.permutation(sizes)
    rest = rng.permutation(np.concatenate([np.arange(n), n + np.arange(num_batches, m)]))
    batches, offset = [], 0
    for b, size in enumerate(sizes):
        items = np.concatenate([[n + b], rest[offset:offset + size - 1]])
        offset += size - 1
        batches.append(rng.permutation(items))
    return batches, picks


def _rng_sha256(rng: np.random.Generator) -> str:
    """sha256 of a generator's state: the same for generators that will draw the same."""
    state = json.dumps(rng.bit_generator.state, sort_keys=True,
                       default=lambda value: np.asarray(value).tolist())
    return hashlib.sha256(state.encode()).hexdigest()


def _bind(suspect: Suspect, fingerprints: Fingerprints, num_classes: int | None,
          decoys: np.ndarray | None = None, ratio: float | None = None,
          order: str | None = None, shuffled: bool = False) -> None:
    """Ties a :class:`RemoteSuspect` (an :class:`~ipguard_jax.HTTPSuspect` and its resume
    file) to this run before it is queried: the fingerprints' points and labels and the decoy
    settings (the pool, the ratio and ``order``, the key's state; ``None`` for fresh
    randomness). A run that queries the fingerprints alone in a secret order (``shuffled``,
    see :func:`query_batches`) binds that order's ``order`` too. Other suspects are left
    alone."""
    if not isinstance(suspect, RemoteSuspect):
        return
    settings = None if decoys is None else {"sha256": content_digest({"decoys": decoys}, {}),
                                             "ratio": float(ratio), "key": order}
    points = content_digest({"x": fingerprints.x, "labels": fingerprints.labels}, {})
    context = {"fingerprints": points, "decoys": settings}
    if shuffled and decoys is None:
        context["order"] = order
    suspect.bind(context, num_classes=num_classes)


def _asker(suspect: Suspect, num_classes: int | None,
           mesh: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a numpy batch to the suspect's labels; a :class:`Classifier` suspect
    runs sharded over ``mesh`` (see :func:`query_labels`)."""
    place = Placement(resolve_mesh(mesh))
    if isinstance(suspect, Classifier) and place.mesh is not None:
        params = place.replicate(suspect.params)

        def ask_sharded(batch: np.ndarray) -> np.ndarray:
            rows = len(batch)
            batch = np.asarray(suspect.check_input(batch))
            fill = np.repeat(batch[-1:], place.padded(rows) - rows, axis=0)
            padded = np.concatenate([batch, fill])
            logits = place.fetch(suspect.jit_apply(params, place.put(padded)))[:rows]
            return _labels_from_output(logits, rows, num_classes)

        return ask_sharded

    def ask(batch: np.ndarray) -> np.ndarray:
        return _labels_from_output(suspect(batch), len(batch), num_classes)

    return ask


def query_labels(fingerprints: Fingerprints, suspect: Suspect, batch_size: int = 256, *,
                 decoys: Any = None, decoy_ratio: float | None = None,
                 key: Any = None, mesh: Any = "auto") -> np.ndarray:
    """The suspect's labels on the fingerprint points, queried in batches.

    A suspect that can recognise fingerprints (for instance because a whole request consists
    of odd-looking points) may answer them falsely and everything else honestly. With
    ``decoys`` (natural inputs the owner supplies, e.g. held-out images), every request mixes
    fingerprints with decoys in a random order: ``round(decoy_ratio * N)`` decoys are drawn
    without replacement, every batch holds at least one of them, and the order changes with
    ``key``. The suspect's answers on the decoys are discarded; the labels returned are the
    fingerprints' only. This hides fingerprints only as well as the decoys look like them: a
    suspect that can tell a single fingerprint from natural data is not fooled.

    Args:
        fingerprints: the fingerprint set.
        suspect: a :class:`Classifier`, or any callable mapping a numpy batch
            ``(n, *input_shape)`` to logits/probabilities ``(n, C)`` or to integer labels ``(n,)``
            (a label-only black box, such as a model behind an API).
        batch_size: queries per call (fingerprints and decoys together; with decoys, at most
            an :class:`~ipguard_jax.HTTPSuspect`'s own ``batch_size``, so that every request
            mixes).
        decoys: ``(M, *input_shape)`` natural inputs in the owner's bounds to interleave, or
            ``None`` to query the fingerprints alone, in order.
        decoy_ratio: decoys per fingerprint (default ``1.0`` with ``decoys``); it must give at
            least one decoy per batch.
        key: seeds the draw and the order of the decoys: ``None`` (fresh OS randomness, the
            safe choice against an adaptive suspect), an int seed, a ``jax.random.key`` or a
            ``numpy.random.Generator``. Use a fixed key to repeat the same queries (e.g. to
            resume an interrupted :class:`~ipguard_jax.HTTPSuspect` run: its resume file is
            bound, through :meth:`~ipguard_jax.HTTPSuspect.bind`, to these fingerprints and
            to the decoys, ``decoy_ratio`` and key).
        mesh: for a :class:`Classifier` suspect, where it runs: ``"auto"`` (default) shards
            each batch over all devices when there are several (parameters replicated;
            multi-host under ``jax.distributed``), ``None`` uses the default device, or a
            ``jax.sharding.Mesh``. Other suspects ignore it.

    Returns:
        ``(N,)`` int64 labels, in fingerprint order.

    Raises:
        TypeError: a wrong type for an argument.
        ValueError: no fingerprints, mismatched shapes or classes, too few decoys, a
            suspect answer of the wrong shape, or an :class:`~ipguard_jax.HTTPSuspect`
            resume file of another run (:class:`~ipguard_jax.adapters.http.ResumeFileError`).

    Example:
        A hand-made set of three points and a label-only suspect:

        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints, query_labels
        >>> fp = Fingerprints(x=np.eye(3, dtype=np.float32), labels=[0, 1, 2], i=[1, 2, 0],
        ...                   j=[0, 1, 2], loss=[0.0] * 3, converged=[True] * 3,
        ...                   steps=[1] * 3, source=[0, 1, 2])
        >>> suspect = lambda x: x.argmax(axis=1)  # numpy batch -> labels
        >>> natural = np.random.default_rng(0).uniform(0, 1, (20, 3)).astype(np.float32)
        >>> query_labels(fp, suspect, decoys=natural, key=1).tolist()  # 3 decoys mixed in
        [0, 1, 2]
    """
    return _query(fingerprints, suspect, batch_size, decoys, decoy_ratio, key, mesh)[0]


def _query(fingerprints: Fingerprints, suspect: Suspect, batch_size: Any, decoys: Any,
           decoy_ratio: Any, key: Any, mesh: Any) -> tuple[np.ndarray, int]:
    """:func:`query_labels`'s labels, and how many decoys were sent with them."""
    labels = np.full(len(fingerprints), -1, np.int64)
    num_decoys = 0
    for items, answers, sent in query_batches(fingerprints, suspect, batch_size, decoys,
                                              decoy_ratio, key, mesh):
        labels[items] = answers
        num_decoys += sent
    return labels, num_decoys


def query_batches(fingerprints: Fingerprints, suspect: Suspect, batch_size: Any, decoys: Any,
                  decoy_ratio: Any, key: Any, mesh: Any, *,
                  shuffle: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Checks the arguments, binds a :class:`RemoteSuspect`, and returns the query loop: what
    :func:`query_labels` and :func:`~ipguard_jax.verify_sequential` consume.

    The arguments are :func:`query_labels`'s (checked here, before anything is sent).

    The loop yields, batch by batch as the suspect answers, ``(items, labels, num_decoys)``:
    the indices of the fingerprints in the batch (in the order sent), the suspect's labels
    on them, and the decoys sent along. Nothing is sent before the first ``next``, and a
    caller that stops iterating (a sequential test that has decided) sends nothing more.

    Without decoys the fingerprints go in their stored order, or with ``shuffle`` in a random
    order drawn from ``key`` (``None``: 128 bits from the OS, :mod:`secrets`); with decoys
    the order is always :func:`_interleave`'s, drawn from ``key``.
    """
    check_fingerprints(fingerprints)
    if not (isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
            and batch_size > 0):
        raise ValueError(f"batch_size must be an int > 0, got {batch_size!r}")
    batch_size = int(batch_size)
    _check_suspect(fingerprints, suspect)
    num_classes = fingerprints.num_classes
    if isinstance(suspect, Classifier):
        num_classes = suspect.num_classes
    ask = _asker(suspect, num_classes, mesh)

    n = len(fingerprints)
    if decoys is None:
        if decoy_ratio is not None:
            raise ValueError("decoy_ratio needs decoys: pass decoys=... (natural inputs)")
        if not shuffle:
            _bind(suspect, fingerprints, num_classes)
            return ((np.arange(s, min(s + batch_size, n)), ask(fingerprints.x[s:s + batch_size]),
                     0) for s in range(0, n, batch_size))
        rng = np.random.default_rng(secrets.randbits(128)) if key is None else _rng(key)
        order = None if key is None else _rng_sha256(rng)
        permutation = rng.permutation(n)
        _bind(suspect, fingerprints, num_classes, order=order, shuffled=True)
        return ((items, ask(fingerprints.x[items]), 0)
                for items in (permutation[s:s + batch_size] for s in range(0, n, batch_size)))
    decoys = _check_decoys(fingerprints, decoys)
    if isinstance(suspect, RemoteSuspect):  # it cuts batches into requests: each must mix too
        batch_size = min(batch_size, suspect.batch_size)
    rng = _rng(key)
    # the key's state names the draw; key=None draws afresh every run and binds as None
    order = None if key is None else _rng_sha256(rng)
    ratio = 1.0 if decoy_ratio is None else decoy_ratio
    batches, picks = _interleave(n, decoys.shape[0], ratio, batch_size, rng)
    _bind(suspect, fingerprints, num_classes, decoys, ratio, order)
    pool = decoys[picks]

    def mixed() -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        for items in batches:
            is_fp = items < n
            batch = np.empty((len(items), *fingerprints.input_shape), fingerprints.x.dtype)
            batch[is_fp] = fingerprints.x[items[is_fp]]
            batch[~is_fp] = pool[items[~is_fp] - n]
            yield items[is_fp], ask(batch)[is_fp], int((~is_fp).sum())

    return mixed()


def matching_rate(fingerprints: Fingerprints, suspect: Suspect, batch_size: int = 256, *,
                  decoys: Any = None, decoy_ratio: float | None = None,
                  key: Any = None, mesh: Any = "auto") -> float:
    """Share of fingerprints on which the suspect predicts the owner's label.

    Args:
        fingerprints: the fingerprint set.
        suspect: a :class:`Classifier` or a callable (see :func:`query_labels`).
        batch_size: queries per call.
        decoys: natural inputs to interleave with the fingerprints (see :func:`query_labels`).
        decoy_ratio: decoys per fingerprint (default ``1.0`` with ``decoys``).
        key: seed of the decoys' draw and order.
        mesh: devices for a :class:`Classifier` suspect (see :func:`query_labels`).

    Returns:
        The matching rate in ``[0, 1]``, over the fingerprints only.

    Raises:
        TypeError: a wrong type for an argument.
        ValueError: no fingerprints, mismatched shapes or classes, too few decoys, or a
            suspect answer of the wrong shape (see :func:`query_labels`).

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ipguard_jax import Classifier, Fingerprints, matching_rate
        >>> fp = Fingerprints(x=np.eye(3, dtype=np.float32), labels=[0, 1, 2], i=[1, 2, 0],
        ...                   j=[0, 1, 2], loss=[0.0] * 3, converged=[True] * 3,
        ...                   steps=[1] * 3, source=[0, 1, 2])
        >>> owner = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
        >>> matching_rate(fp, owner), matching_rate(fp, lambda x: np.zeros(len(x), int))
        (1.0, 0.3333333333333333)
    """
    labels, num_decoys = _query(fingerprints, suspect, batch_size, decoys, decoy_ratio, key,
                                mesh)
    return float(np.mean(labels == fingerprints.labels))


def binomial_sf(successes: int, trials: int, p: float) -> float:
    """Exact ``P[X >= successes]`` for ``X ~ Binomial(trials, p)``, summed in log space.

    Args:
        successes: the observed count (matches).
        trials: the number of trials (fingerprints queried).
        p: the success probability under the null (an independent model's agreement rate).

    Returns:
        The one-sided p-value in ``[0, 1]`` (1 for ``successes <= 0``, 0 above ``trials``).

    Example:
        >>> from ipguard_jax.verification import binomial_sf
        >>> round(binomial_sf(8, 10, 0.5), 4)  # 8 or more heads in 10 fair tosses
        0.0547
    """
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


#: :attr:`Verdict.null_source` of a verdict given a ``null_rate``.
USER_NULL = "user-given rate"
#: :attr:`Verdict.null_source` of a verdict without a null (no p-value).
NO_NULL = "none"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of verifying a suspect against a fingerprint set.

    Attributes:
        matching_rate: share of fingerprints where the suspect gave the owner's label.
        threshold: the rate at or above which the suspect is judged a copy.
        is_copy: ``matching_rate >= threshold``.
        num_points: fingerprints queried.
        num_matches: fingerprints matched.
        null_rate: the agreement rate expected of an independent model (``None``: no null);
            for a calibrated null, its mean.
        p_value: the chance that an independent model matches at least this often: exact
            binomial against a given ``null_rate``, exact beta-binomial against a calibrated
            null (``None`` without a null).
        num_decoys: natural inputs sent along with the fingerprints (their answers are not
            counted), so the suspect received ``num_points + num_decoys`` queries.
        null_source: where the null came from: ``"calibrated on N models"`` (the set's
            :class:`~ipguard_jax.calibration.Calibration`), ``"user-given rate"`` or
            ``"none"``.
        fpr: the false-positive rate asked for (``None`` without a null).
        fpr_threshold: the matching rate at or above which the p-value is at most ``fpr``
            (above 1 when no count is that unlikely; ``None`` without a null).

    Example:
        >>> from ipguard_jax import Verdict
        >>> print(Verdict(matching_rate=0.9, threshold=0.5, is_copy=True, num_points=10,
        ...               num_matches=9, null_rate=0.3, p_value=0.000144))
        COPY: matched 9/10 fingerprints (90.0%, threshold 50.0%), p = 0.000144 against an
        independent-model rate of 30.0%
    """

    matching_rate: float
    threshold: float
    is_copy: bool
    num_points: int
    num_matches: int
    null_rate: float | None = None
    p_value: float | None = None
    num_decoys: int = 0
    null_source: str = NO_NULL
    fpr: float | None = None
    fpr_threshold: float | None = None

    def __str__(self) -> str:
        verdict = "COPY" if self.is_copy else "not a copy"
        text = (f"{verdict}: matched {self.num_matches}/{self.num_points} fingerprints "
                f"({self.matching_rate:.1%}, threshold {self.threshold:.1%})")
        if self.num_decoys:
            text += f" among {self.num_decoys} decoys"
        return text + self._null_text()

    def _null_text(self) -> str:
        if self.p_value is None:
            return ""
        if self.null_source.startswith("calibrated"):
            text = (f", p = {self.p_value:.3g} under the beta-binomial null {self.null_source} "
                    f"(mean rate {self.null_rate:.1%})")
        else:
            text = (f", p = {self.p_value:.3g} against an independent-model rate of "
                    f"{self.null_rate:.1%}")
        if self.fpr is not None and self.fpr_threshold is not None:
            text += (f"; at {self.fpr:.2%} false positives a copy matches >= "
                     f"{self.fpr_threshold:.1%}")
        return text


def resolve_null(fingerprints: Fingerprints, null_rate: Any):
    """``(source, calibration)`` of a verification's null, checked before any query.

    Args:
        fingerprints: the set verified (its calibration, if any, is read from its metadata).
        null_rate: the user's null rate, or ``None``.

    Returns:
        ``(USER_NULL, None)`` for a ``null_rate``, else the stored calibration's
        :attr:`~ipguard_jax.calibration.Calibration.source` and the calibration, else
        ``(NO_NULL, None)``.

    Raises:
        ValueError: a ``null_rate`` outside ``[0, 1]``, or an invalid stored calibration.
    """
    # A real import cycle: calibration queries its reference models through this module
    # (query_labels), and imports it at its top.
    from ipguard_jax.calibration import calibration_of

    if null_rate is not None:
        if not (is_real(null_rate) and 0.0 <= null_rate <= 1.0):
            raise ValueError(f"null_rate must be a number in [0, 1] or None, got {null_rate!r}")
        return USER_NULL, None
    calibration = calibration_of(fingerprints) if isinstance(fingerprints, Fingerprints) \
        else None
    return (NO_NULL, None) if calibration is None else (calibration.source, calibration)


def binomial_threshold(fpr: float, n: int, p: float) -> int:
    """The fewest matches out of ``n`` whose binomial p-value at ``p`` is at most ``fpr``
    (``n + 1`` when none is).

    Example:
        >>> binomial_threshold(0.05, 10, 0.5)  # 9 or more heads in 10 tosses: p = 0.011
        9
    """
    lo, hi = 0, n + 1  # binomial_sf decreases in the count: bisect
    while lo < hi:
        mid = (lo + hi) // 2
        if binomial_sf(mid, n, p) <= fpr:
            hi = mid
        else:
            lo = mid + 1
    return lo


def verify(fingerprints: Fingerprints, suspect: Suspect, threshold: float | None = None,
           null_rate: float | None = None, batch_size: int = 256, *, fpr: float = 0.01,
           decoys: Any = None, decoy_ratio: float | None = None, key: Any = None,
           mesh: Any = "auto") -> Verdict:
    """Judges whether a suspect is a copy of the fingerprints' owner.

    The null (how often an innocent, independently trained model matches) comes from, in
    this order: ``null_rate`` if given (an exact binomial test, as if every independent model
    matched at that one rate); else the set's calibration
    (:func:`~ipguard_jax.calibration.calibrate`, stored by
    :func:`~ipguard_jax.calibration.with_calibration`), a beta-binomial fitted across
    reference models; else there is none, and the verdict has no p-value.
    :attr:`Verdict.null_source` says which.

    The decision: with a calibrated null and no ``threshold``, the suspect is a copy when its
    beta-binomial p-value is at most ``fpr`` (its matches reach the calibrated threshold), so
    the verdict carries that false-positive rate. Otherwise it is a copy when its matching
    rate is ``>= threshold`` (default 0.5), as before calibration existed; the p-value and
    the threshold for ``fpr`` are reported alongside.

    Args:
        fingerprints: the owner's fingerprint set.
        suspect: a :class:`Classifier` or a callable (see :func:`query_labels`).
        threshold: the suspect is a copy when its matching rate is ``>= threshold``
            (``None``: the calibrated threshold for ``fpr`` with a calibrated null, else 0.5).
        null_rate: the rate at which independently trained models agree with the owner on these
            fingerprints (measure it on models you trained yourself); with it, the verdict
            carries the exact binomial p-value of the observed matches, and the set's
            calibration, if any, is not used.
        batch_size: queries per call (fingerprints and decoys together).
        fpr: the false-positive rate to allow, in ``(0, 1)``: it sets the calibrated
            threshold, and :attr:`Verdict.fpr_threshold` for either null.
        decoys: natural inputs interleaved with the fingerprints in a random order, so that a
            suspect cannot single out the fingerprint queries (see :func:`query_labels`); the
            matching rate counts the fingerprints only.
        decoy_ratio: decoys per fingerprint (default ``1.0`` with ``decoys``).
        key: seed of the decoys' draw and order (``None``: fresh OS randomness).
        mesh: devices for a :class:`Classifier` suspect (see :func:`query_labels`).

    Returns:
        A :class:`Verdict`.

    Raises:
        TypeError: a wrong type for an argument.
        ValueError: a threshold or null rate outside ``[0, 1]``, ``fpr`` outside ``(0, 1)``,
            no fingerprints, a stored calibration that is invalid or belongs to another set,
            or a bad suspect answer (see :func:`query_labels`).

    Example:
        >>> import numpy as np
        >>> import ipguard_jax as ipg
        >>> fp = ipg.Fingerprints(x=np.eye(3, dtype=np.float32), labels=[0, 1, 2],
        ...                       i=[1, 2, 0], j=[0, 1, 2], loss=[0.0] * 3,
        ...                       converged=[True] * 3, steps=[1] * 3, source=[0, 1, 2])
        >>> suspect = lambda x: x.argmax(axis=1)
        >>> held_out = np.random.default_rng(0).uniform(0, 1, (20, 3)).astype(np.float32)
        >>> verdict = ipg.verify(fp, suspect, null_rate=0.3, decoys=held_out, key=7)
        >>> verdict.is_copy, verdict.num_matches, round(verdict.p_value, 3)  # 0.3 ** 3
        (True, 3, 0.027)
        >>> verdict.num_decoys, verdict.null_source  # one decoy per fingerprint by default
        (3, 'user-given rate')
    """
    if threshold is not None and not (is_real(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1] or None, got {threshold!r}")
    check_fpr(fpr)
    source, calibration = resolve_null(fingerprints, null_rate)
    labels, num_decoys = _query(fingerprints, suspect, batch_size, decoys, decoy_ratio, key,
                                mesh)
    matches = int(np.sum(labels == fingerprints.labels))
    n = len(fingerprints)
    rate = matches / n
    p_value = count = None
    if calibration is not None:
        p_value = calibration.p_value(matches, n)
        count = calibration.threshold(float(fpr), n)
        null_rate = calibration.mean
        if threshold is None:
            threshold = count / n
    elif null_rate is not None:
        p_value = binomial_sf(matches, n, float(null_rate))
        count = binomial_threshold(float(fpr), n, float(null_rate))
    threshold = 0.5 if threshold is None else float(threshold)
    return Verdict(matching_rate=rate, threshold=threshold, is_copy=rate >= threshold,
                   num_points=n, num_matches=matches,
                   null_rate=None if null_rate is None else float(null_rate), p_value=p_value,
                   num_decoys=num_decoys, null_source=source,
                   fpr=None if count is None else float(fpr),
                   fpr_threshold=None if count is None else count / n)
