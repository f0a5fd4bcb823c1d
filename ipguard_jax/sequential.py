"""Sequential verification: query a few fingerprints at a time, stop as soon as it is decided.

A paid API charges per query, and most suspects are obvious after a handful of fingerprints:
a copy matches nearly all of them, an innocent model misses most. :func:`verify_sequential`
queries the fingerprints in a random order fixed by a secret key, in small batches, and
after every answer runs Wald's sequential probability ratio test (SPRT) of

* **H0, innocent**: the suspect is an independent model. With a calibrated set
  (:mod:`ipguard_jax.calibration`) its answers follow the beta-binomial null's *predictive*
  law (a Polya urn: after ``s`` matches in ``t`` answers the next one matches with
  probability ``(alpha + s) / (alpha + beta + t)``); with a given ``null_rate`` they are
  independent matches at that rate;
* **H1, copy**: the suspect matches each fingerprint independently at ``pirate_rate``
  (default 0.8: post-processed copies match 0.9 to 1.0 in our zoos, so 0.8 leaves room).

Why the predictive likelihood, not a single null rate: independent models differ from each
other much more than binomial noise, and the test must hold for a model drawn from that
population, not for the average model. The predictive law is exactly the law of a
beta-binomial model's answers in a random order (the order is random, so the answers are
exchangeable), which makes the null a single, simple hypothesis and keeps Wald's bounds exact.
The guarantee is therefore the same as the calibrated fixed-sample p-value's: over innocent
models like the references. Testing a single upper quantile of the null instead would
guarantee nothing for the models above that quantile.

The design (:func:`sequential_design`):

* stop as a copy when the likelihood ratio ``L1/L0 >= 1/fpr``, as innocent when it is
  ``<= fnr`` (Ville's inequality: the first happens to an innocent model with probability
  at most ``fpr``, the second to a copy at ``pirate_rate`` with probability at most ``fnr``,
  whatever the stopping time). The stopping sets are kept to matches at or above (below) a
  count at every step, so that copies that match more often stop as copies at least as often;
* when all fingerprints are answered without a decision, fall back to the fixed-sample test
  on all of them (:func:`~ipguard_jax.verify`'s threshold for ``fpr``), made stricter only
  if the sequential looks left less than that test needs: the exact false-positive rate of
  the whole design stays ``<= fpr``;
* the design's exact error rates (:attr:`SequentialDesign.fpr_exact`,
  :attr:`SequentialDesign.fnr_exact`) and the verdict's p-value come from exact dynamic
  programming over ``(answers, matches)``, not from Wald's approximations. The p-value orders
  outcomes stage-wise (earlier copy stops are more extreme), so it is valid for the
  sequential design, which the fixed-sample p-value of the answers seen is not.

The decision is taken after each answer in the order sent; answers that arrive in the same
batch after the decision are not used (the verdict counts them as queried).

Example:
    A calibrated null (mean 15%) and two label-only suspects:

    >>> import numpy as np
    >>> from ipguard_jax.calibration import Calibration
    >>> from ipguard_jax.sequential import sequential_design
    >>> null = Calibration(3.0, 17.0, 100, (0.15,) * 5, tuple("abcde"), ("",) * 5,
    ...                    None, None, 0.01, "by hand", "0" * 64)
    >>> design = sequential_design(100, calibration=null)
    >>> design.fpr_exact <= 0.01, design.fnr_exact <= 0.05
    (True, True)
    >>> int(design.upper[8]), int(design.lower[4])  # after 8 answers: a copy at >= 6 matches
    (6, 0)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from ipguard_jax.calibration import Calibration, log_rising
from ipguard_jax.fingerprints import Fingerprints
from ipguard_jax.verification import (USER_NULL, Suspect, Verdict, binomial_threshold,
                                      check_fingerprints, check_fpr, is_real, query_batches,
                                      resolve_null)

__all__ = ["SequentialDesign", "SequentialVerdict", "sequential_design", "verify_sequential"]

#: How a sequential verdict was reached (:attr:`SequentialVerdict.stopped_by`).
COPY_BOUNDARY, INNOCENT_BOUNDARY, FINAL_TEST = "copy boundary", "innocent boundary", "final test"


class _Null:
    """The null's law of a sequence of answers: beta-binomial predictive or binomial."""

    def __init__(self, n: int, calibration: Calibration | None, rate: float | None):
        self.calibration, self.rate = calibration, rate
        if calibration is not None:
            a, b = calibration.alpha, calibration.beta
            self._la, self._lb = log_rising(a, n), log_rising(b, n)
            self._lab = log_rising(a + b, n)
            self.mean = calibration.mean
        else:
            self.mean = float(rate)

    def log_sequence(self, t: int, s: np.ndarray) -> np.ndarray:
        """log-probability of one particular order of ``s`` matches in ``t`` answers."""
        if self.calibration is not None:
            return self._la[s] + self._lb[t - s] - self._lab[t]
        return s * math.log(self.rate) + (t - s) * math.log1p(-self.rate)

    def p_next(self, t: int, s: np.ndarray) -> np.ndarray:
        """P(the next answer matches | ``s`` matches in ``t``)."""
        if self.calibration is not None:
            return (self.calibration.alpha + s) / (self.calibration.alpha
                                                   + self.calibration.beta + t)
        return np.full(len(s), self.rate)


def _propagate(v: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mass over matches after one more answer, from mass ``v`` and match probabilities."""
    w = np.zeros(len(v) + 1)
    w[:-1] += v * (1.0 - p)
    w[1:] += v * p
    return w


def _run(upper: np.ndarray, lower: np.ndarray, n: int, p_next, until: int | None = None):
    """Dynamic programming over ``(answers, matches)`` of the paths that have not stopped.

    Returns ``(copy, innocent, mass)``: the probability of stopping as a copy / innocent
    after ``t`` answers (``t < n``) and the mass over matches of the paths that reach ``n``
    undecided. With ``until``, returns the mass over matches after ``until`` answers,
    before the stops there.
    """
    copy, innocent = np.zeros(n + 1), np.zeros(n + 1)
    v = np.ones(1)
    for t in range(n):
        v = _propagate(v, p_next(t, np.arange(t + 1)))
        step = t + 1
        if step == until:
            return v
        if step < n:
            c, d = upper[step], lower[step]
            copy[step] = v[c:].sum()
            innocent[step] = v[:d + 1].sum() if d >= 0 else 0.0
            v[c:] = 0.0
            if d >= 0:
                v[:d + 1] = 0.0
    return copy, innocent, v


@dataclasses.dataclass(frozen=True, eq=False)
class SequentialDesign:
    """The boundaries of a sequential test and its exact operating characteristics.

    Attributes:
        num_points: fingerprints available (the most answers the test can use).
        fpr: the false-positive rate asked for.
        fnr: the false-negative rate asked for, at ``pirate_rate``.
        pirate_rate: the alternative: a copy's matching rate.
        null_mean: the null's mean matching rate.
        null_source: ``"calibrated on N models"`` or ``"user-given rate"``.
        upper: ``(num_points + 1,)``: after ``t`` answers, stop as a copy when the matches are
            ``>= upper[t]`` (``t + 1``: not possible at ``t``); ``upper[num_points]`` is the
            final test's threshold.
        lower: ``(num_points + 1,)``: stop as innocent when the matches are ``<= lower[t]``
            (``-1``: not possible at ``t``); ``lower[num_points] = upper[num_points] - 1``.
        fpr_exact: the probability that an independent model is judged a copy (``<= fpr``).
        fnr_exact: the probability that a copy at ``pirate_rate`` is judged innocent (at most
            ``fnr`` plus what the final test misses: too few fingerprints can exceed ``fnr``).
        expected_null: the expected number of answers used for an independent model.
        expected_pirate: the expected number of answers used for a copy at ``pirate_rate``.
    """

    num_points: int
    fpr: float
    fnr: float
    pirate_rate: float
    null_mean: float
    null_source: str
    upper: np.ndarray
    lower: np.ndarray
    fpr_exact: float
    fnr_exact: float
    expected_null: float
    expected_pirate: float
    _null: _Null = dataclasses.field(repr=False)
    _copy0: np.ndarray = dataclasses.field(repr=False)
    _innocent0: np.ndarray = dataclasses.field(repr=False)
    _final0: np.ndarray = dataclasses.field(repr=False)

    def p_value(self, answers: int, matches: int) -> float:
        """The exact stage-wise p-value of stopping after ``answers`` with ``matches``.

        Outcomes are ordered: copy stops (earlier first, then more matches), the final test
        (more matches first), innocent stops (later first, then more matches); the p-value is
        the null probability of an outcome at least as extreme. A copy decision has a p-value
        ``<= fpr_exact``.

        Raises:
            ValueError: ``(answers, matches)`` where the design does not stop.
        """
        n = self.num_points
        if not (1 <= answers <= n and 0 <= matches <= answers):
            raise ValueError(f"no stop after {answers} answers with {matches} matches")
        copy_total = self._copy0.sum()
        if answers == n:
            return float(min(1.0, copy_total + self._final0[matches:].sum()))
        c, d = int(self.upper[answers]), int(self.lower[answers])
        if not (matches >= c or matches <= d):
            raise ValueError(f"the design does not stop after {answers} answers with "
                             f"{matches} matches")
        v = _run(self.upper, self.lower, n, self._null.p_next, until=answers)
        if matches >= c:
            return float(min(1.0, self._copy0[:answers].sum() + v[matches:].sum()))
        later = self._innocent0[answers + 1:].sum()
        return float(min(1.0, copy_total + self._final0.sum() + later + v[matches:d + 1].sum()))


def _boundaries(n: int, null: _Null, fpr: float, fnr: float,
                pirate_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Wald's stopping counts with Ville's thresholds, kept to upper and lower sets."""
    upper = np.arange(n + 1) + 1  # t + 1: no copy stop
    lower = np.full(n + 1, -1)
    log_a, log_b = -math.log(fpr), math.log(fnr)
    lp, lq = math.log(pirate_rate), math.log1p(-pirate_rate)
    for t in range(1, n):
        s = np.arange(t + 1)
        llr = s * lp + (t - s) * lq - null.log_sequence(t, s)
        above = llr >= log_a
        if above[-1]:  # the run of True at the top
            upper[t] = t + 1 - int(np.argmin(above[::-1])) if not above.all() else 0
        below = llr <= log_b
        if below[0]:  # the run of True at the bottom
            lower[t] = int(np.argmin(below)) - 1 if not below.all() else t
    return upper, lower


def sequential_design(num_points: int, *, fpr: float = 0.01, fnr: float = 0.05,
                      pirate_rate: float = 0.8, calibration: Calibration | None = None,
                      null_rate: float | None = None) -> SequentialDesign:
    """The SPRT boundaries for ``num_points`` fingerprints and their exact error rates.

    Args:
        num_points: fingerprints available, ``>= 1``.
        fpr: the false-positive rate to guarantee, in ``(0, 1)``.
        fnr: the false-negative rate to aim for at ``pirate_rate``, in ``(0, 1)``.
        pirate_rate: a copy's matching rate, above the null's mean and below 1.
        calibration: a beta-binomial null (give this or ``null_rate``).
        null_rate: a binomial null rate in ``(0, 1)``.

    Returns:
        A :class:`SequentialDesign`.

    Raises:
        ValueError: rates out of range, no null or two, a ``pirate_rate`` not above the
            null's mean.

    Example:
        >>> design = sequential_design(100, null_rate=0.2)
        >>> round(design.expected_pirate, 1), round(design.expected_null, 1)
        (6.5, 5.0)
    """
    if not (isinstance(num_points, (int, np.integer)) and not isinstance(num_points, bool)
            and num_points >= 1):
        raise ValueError(f"num_points must be an int >= 1, got {num_points!r}")
    n = int(num_points)
    fpr = check_fpr(fpr)
    if not (is_real(fnr) and 0.0 < fnr < 1.0):
        raise ValueError(f"fnr must be a number in (0, 1), got {fnr!r}")
    if (calibration is None) == (null_rate is None):
        raise ValueError("give the null as calibration= or null_rate=, one of them")
    if null_rate is not None and not (is_real(null_rate) and 0.0 < null_rate < 1.0):
        raise ValueError(f"null_rate must be a number in (0, 1) for a sequential test, got "
                         f"{null_rate!r}")
    null = _Null(n, calibration, None if null_rate is None else float(null_rate))
    if not (is_real(pirate_rate) and null.mean < pirate_rate < 1.0):
        raise ValueError(f"pirate_rate must be a number between the null's mean rate "
                         f"({null.mean:.3g}) and 1, got {pirate_rate!r}")
    return _design(n, fpr, float(fnr), float(pirate_rate), calibration,
                   None if null_rate is None else float(null_rate))


@functools.lru_cache(maxsize=16)
def _design(n: int, fpr: float, fnr: float, pirate_rate: float,
            calibration: Calibration | None, null_rate: float | None) -> SequentialDesign:
    """:func:`sequential_design` on checked arguments, cached: a run of verifications with
    one set and one null computes its design once."""
    null = _Null(n, calibration, null_rate)
    upper, lower = _boundaries(n, null, fpr, fnr, pirate_rate)
    copy0, innocent0, final0 = _run(upper, lower, n, null.p_next)
    # The final test: the fixed-sample test on all n answers, made stricter if the early copy
    # stops spent so much of fpr that its threshold no longer fits in what is left.
    spent = copy0.sum()
    tails = np.concatenate([np.cumsum(final0[::-1])[::-1], [0.0]])
    fits = np.flatnonzero(spent + tails <= fpr)
    fixed = (calibration.threshold(fpr, n) if calibration is not None
             else binomial_threshold(fpr, n, float(null_rate)))
    upper[n] = max(fixed, int(fits[0]) if len(fits) else n + 1)
    lower[n] = upper[n] - 1
    upper.setflags(write=False)
    lower.setflags(write=False)
    copy1, innocent1, final1 = _run(upper, lower, n, lambda t, s: np.full(len(s), pirate_rate))
    steps = np.arange(n + 1)
    source = USER_NULL if calibration is None else calibration.source
    return SequentialDesign(
        num_points=n, fpr=fpr, fnr=fnr, pirate_rate=pirate_rate, null_mean=null.mean,
        null_source=source, upper=upper, lower=lower,
        fpr_exact=float(min(1.0, spent + final0[upper[n]:].sum())),
        fnr_exact=float(min(1.0, innocent1.sum() + final1[:upper[n]].sum())),
        expected_null=float(steps @ (copy0 + innocent0) + n * final0.sum()),
        expected_pirate=float(steps @ (copy1 + innocent1) + n * final1.sum()),
        _null=null, _copy0=copy0, _innocent0=innocent0, _final0=final0)


@dataclasses.dataclass(frozen=True)
class SequentialVerdict(Verdict):
    """A :class:`~ipguard_jax.Verdict` reached by :func:`verify_sequential`.

    The inherited fields describe the answers the decision used: ``num_points`` of them,
    ``num_matches`` matched; ``threshold`` is the copy boundary in effect at that point (as a
    rate; above 1 where no copy stop was possible), ``p_value`` the design's exact stage-wise
    p-value and ``fpr_threshold`` the final test's threshold over all fingerprints.

    Attributes:
        num_queried: fingerprints sent (the batch that decided may hold unused answers).
        num_available: fingerprints in the set.
        stopped_by: ``"copy boundary"``, ``"innocent boundary"`` or ``"final test"`` (every
            fingerprint answered without an earlier decision).
        fnr: the false-negative rate asked for.
        pirate_rate: the copy's matching rate the design assumed.
        fpr_exact: the design's exact false-positive rate under the null (``<= fpr``).
        fnr_exact: its exact false-negative rate for a copy at ``pirate_rate``.
    """

    num_queried: int = 0
    num_available: int = 0
    stopped_by: str = FINAL_TEST
    fnr: float = 0.05
    pirate_rate: float = 0.8
    fpr_exact: float = 0.0
    fnr_exact: float = 0.0

    def __str__(self) -> str:
        verdict = "COPY" if self.is_copy else "not a copy"
        text = (f"{verdict} ({self.stopped_by}, sequential): matched {self.num_matches}/"
                f"{self.num_points} fingerprints ({self.matching_rate:.1%}); "
                f"{self.num_queried} of {self.num_available} queried")
        if self.num_decoys:
            text += f" among {self.num_decoys} decoys"
        return (text + f", p = {self.p_value:.3g} under the null {self.null_source}; the design "
                f"errs with probability {self.fpr_exact:.3g} on an independent model and "
                f"{self.fnr_exact:.3g} on a copy matching {self.pirate_rate:.0%}")


def verify_sequential(fingerprints: Fingerprints, suspect: Suspect, *, fpr: float = 0.01,
                      fnr: float = 0.05, pirate_rate: float = 0.8,
                      null_rate: float | None = None, batch_size: int = 10,
                      decoys: Any = None, decoy_ratio: float | None = None, key: Any = None,
                      mesh: Any = "auto") -> SequentialVerdict:
    """Verifies a suspect with as few queries as the chosen error rates allow.

    The fingerprints are queried in a random order fixed by ``key``, ``batch_size`` at a
    time, and the SPRT of the module docs decides after each answer; the loop stops (sends
    nothing more) once it has decided. If every fingerprint is answered undecided, the fixed
    test on all of them decides, at the false-positive rate left. The verdict reports how
    many fingerprints were queried and the exact error rates of the design.

    The null is ``null_rate`` (binomial) if given, else the set's calibration
    (:func:`~ipguard_jax.calibration.calibrate`); one of them is required.

    Guarantees, under the null's model: an independent model is judged a copy with
    probability at most ``fpr`` (exactly :attr:`SequentialVerdict.fpr_exact`), and a copy
    whose answers match at ``pirate_rate`` (or more often) is judged innocent with
    probability at most :attr:`SequentialVerdict.fnr_exact` (``<= fnr`` unless the set is
    too small). Copies matching less than ``pirate_rate`` are missed more often: lower it if
    your copies do, at the cost of more queries.

    :class:`~ipguard_jax.HTTPSuspect`: its budget counts every point sent, decoys included;
    its resume file is bound to the set, the decoys and the order, so a run stopped by the
    budget resumes (without paying again for the answers kept) only with the same ``key``.
    The key orders the queries: keep it secret (a suspect that knows the order knows which
    queries are fingerprints) — the default ``None`` draws 128 bits from the OS, which makes
    a run impossible to resume.

    Args:
        fingerprints: the owner's fingerprint set.
        suspect: a :class:`~ipguard_jax.Classifier` or a callable (see
            :func:`~ipguard_jax.query_labels`), e.g. an :class:`~ipguard_jax.HTTPSuspect`.
        fpr: the false-positive rate to guarantee, in ``(0, 1)``.
        fnr: the false-negative rate to aim for at ``pirate_rate``, in ``(0, 1)``.
        pirate_rate: the matching rate of the copies to catch, between the null's mean and 1
            (default 0.8).
        null_rate: a binomial null rate in ``(0, 1)``, instead of the set's calibration.
        batch_size: queries per call (fingerprints and decoys together): the smaller, the
            fewer answers are wasted after a decision.
        decoys: natural inputs mixed into every batch (see :func:`~ipguard_jax.query_labels`).
        decoy_ratio: decoys per fingerprint (default ``1.0`` with ``decoys``).
        key: the secret order (and decoy draw): ``None`` (fresh OS randomness), an int
            seed, a ``jax.random.key`` or a ``numpy.random.Generator``.
        mesh: devices for a :class:`~ipguard_jax.Classifier` suspect.

    Returns:
        A :class:`SequentialVerdict`.

    Raises:
        TypeError: a wrong type for an argument.
        ValueError: no null (neither ``null_rate`` nor a calibration), rates out of range, a
            stored calibration of another set, or a bad suspect answer.
        ipguard_jax.QueryBudgetExceeded: an :class:`~ipguard_jax.HTTPSuspect`'s budget ran
            out before a decision.

    Example:
        A label-only suspect that always answers like the owner, against a null of 20%:

        >>> import numpy as np
        >>> import ipguard_jax as ipg
        >>> x = np.random.default_rng(0).uniform(0, 1, (100, 3)).astype(np.float32)
        >>> fp = ipg.Fingerprints(x=x, labels=x.argmax(1), i=np.zeros(100, int),
        ...                       j=x.argmax(1), loss=np.zeros(100), converged=[True] * 100,
        ...                       steps=np.ones(100, int), source=np.arange(100))
        >>> v = verify_sequential(fp, lambda b: b.argmax(axis=1), null_rate=0.2, key=1)
        >>> v.is_copy, v.stopped_by, v.num_points, v.num_queried
        (True, 'copy boundary', 4, 10)
    """
    check_fingerprints(fingerprints)
    source, calibration = resolve_null(fingerprints, null_rate)
    if calibration is None and null_rate is None:
        raise ValueError("sequential verification needs a null: calibrate the set "
                         "(ipguard_jax.calibration.calibrate, with_calibration) or pass "
                         "null_rate")
    n = len(fingerprints)
    design = sequential_design(n, fpr=fpr, fnr=fnr, pirate_rate=pirate_rate,
                               calibration=calibration,
                               null_rate=None if calibration is not None else null_rate)
    stream = query_batches(fingerprints, suspect, batch_size, decoys, decoy_ratio, key, mesh,
                      shuffle=True)
    t = s = queried = num_decoys = 0
    stopped_by = None
    try:
        for items, labels, sent in stream:
            queried += len(items)
            num_decoys += sent
            for hit in labels == fingerprints.labels[items]:
                t += 1
                s += int(hit)
                if t == n:
                    stopped_by = FINAL_TEST
                elif s >= design.upper[t]:
                    stopped_by = COPY_BOUNDARY
                elif s <= design.lower[t]:
                    stopped_by = INNOCENT_BOUNDARY
                if stopped_by is not None:
                    break
            if stopped_by is not None:
                break
    finally:
        stream.close()
    boundary = int(design.upper[t])
    return SequentialVerdict(
        matching_rate=s / t, threshold=boundary / t, is_copy=s >= boundary, num_points=t,
        num_matches=s, null_rate=design.null_mean, p_value=design.p_value(t, s),
        num_decoys=num_decoys, null_source=source, fpr=design.fpr,
        fpr_threshold=int(design.upper[n]) / n, num_queried=queried, num_available=n,
        stopped_by=stopped_by, fnr=design.fnr, pirate_rate=design.pirate_rate,
        fpr_exact=design.fpr_exact, fnr_exact=design.fnr_exact)
