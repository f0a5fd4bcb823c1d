"""Calibrating the null: how often do independent models match the fingerprints?

A verdict is only as good as its null: the chance that an *innocent* model, trained
independently of the owner, matches as many fingerprints as the suspect did. Independent
models differ from each other far more than a single binomial rate allows (on CIFAR-10 at
k=10 they match anywhere from 6% to 72% of the same fingerprints), so :func:`calibrate`
queries reference models that the owner trained independently, measures each one's matching
rate, and fits the spread across models as a **beta-binomial**: a model's rate is drawn from
``Beta(alpha, beta)``, and its matches on ``n`` fingerprints are binomial given that rate.

The fit is by maximum likelihood over ``(mean, log precision)``: for a fixed precision the
log-likelihood is strictly concave in the mean (a safeguarded Newton solves it), and the
profile over the precision is searched on a grid, then refined by golden section. All sums
are exact finite sums of logarithms (no special functions, no SciPy).

Few references: the spread of a handful of models is poorly known, and its maximum-likelihood
estimate is biased low (with 5 models it is often exactly "no over-dispersion"). Two
corrections make the null conservative rather than optimistic, both recorded in
:attr:`Calibration.method`:

1. a **floor on the over-dispersion** ``rho = 1 / (alpha + beta + 1)`` (the correlation
   between two answers of one model): ``rho >= min_dispersion`` (default 0.01, which for
   100 fingerprints means at least twice the binomial variance);
2. a **predictive widening** for the uncertainty of the mean: the variance of a new model's
   rate is inflated by ``1 + 1/M`` for ``M`` references (the beta-binomial's ``rho`` is raised
   to match), like a prediction interval's ``sqrt(1 + 1/M)``.

With many references both corrections vanish into the fit. Fewer than ``min_references``
(default 5) are refused: below that no spread can be estimated at all.

Example:
    >>> import numpy as np
    >>> from ipguard_jax import Fingerprints
    >>> from ipguard_jax.calibration import calibrate
    >>> fp = Fingerprints(x=np.zeros((50, 2), np.float32), labels=np.zeros(50, np.int32),
    ...                   i=np.ones(50, np.int32), j=np.zeros(50, np.int32),
    ...                   loss=np.zeros(50), converged=np.ones(50, bool),
    ...                   steps=np.ones(50, np.int32), source=np.arange(50))
    >>> rng = np.random.default_rng(0)
    >>> labels = [(rng.random(50) > r).astype(int) for r in (0.1, 0.2, 0.15, 0.3, 0.12, 0.25)]
    >>> cal = calibrate(fp, labels)  # precomputed labels of 6 independent models
    >>> cal.num_references, round(cal.mean, 2)
    (6, 0.17)
    >>> cal.threshold(fpr=0.01)  # matches out of 50 needed for a 1% false-positive rate
    19
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ipguard_jax.classifier import Classifier
from ipguard_jax.fingerprints import Fingerprints, content_digest
from ipguard_jax.adapters.http import redact_url
from ipguard_jax.verification import (RemoteSuspect, check_fingerprints, check_fpr, is_real,
                                      query_labels)

__all__ = ["Calibration", "calibrate", "with_calibration", "calibration_of",
           "betabinom_logpmf", "betabinom_sf", "points_sha256", "FORMAT_VERSION"]

#: Version of the layout of :meth:`Calibration.to_dict`.
FORMAT_VERSION = 1
#: The key of a fingerprint set's metadata holding its calibration.
METADATA_KEY = "calibration"
#: Largest over-dispersion ``rho`` a fit may reach (``alpha + beta`` stays above 0.001).
_MAX_RHO = 0.999
#: The precision grid of the profile search (``alpha + beta``, log-spaced).
_TAU_GRID = np.logspace(-2, 7, 121)


# -- beta-binomial arithmetic --------------------------------------------------------------------

def log_rising(a: float, m: int) -> np.ndarray:
    """``log Gamma(a + k) - log Gamma(a)`` for ``k = 0..m``: cumulative sums of ``log(a + j)``.

    The logarithms of the rising factorials ``a (a + 1) ... (a + k - 1)``, from which the
    beta-binomial's probabilities (and its predictive law, :mod:`ipguard_jax.sequential`)
    are sums.

    Example:
        >>> np.exp(log_rising(2.0, 3)).round(9).tolist()  # 1, 2, 2*3, 2*3*4
        [1.0, 2.0, 6.0, 24.0]
    """
    out = np.zeros(m + 1)
    out[1:] = np.cumsum(np.log(a + np.arange(m, dtype=np.float64)))
    return out


def _check_ab(alpha: Any, beta: Any) -> tuple[float, float]:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (is_real(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(alpha), float(beta)


def _check_count(name: str, value: Any, least: int) -> int:
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            and value >= least):
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return int(value)


def betabinom_logpmf(n: int, alpha: float, beta: float) -> np.ndarray:
    """``log P[X = k]`` for ``k = 0..n`` and ``X ~ BetaBinomial(n, alpha, beta)``.

    Computed from exact sums of logarithms: ``log C(n, k) + log B(k + alpha, n - k + beta) -
    log B(alpha, beta)``, each Beta-function ratio a sum of ``log(alpha + j)`` terms.

    Args:
        n: the number of trials (fingerprints), ``>= 0``.
        alpha: the Beta distribution's first shape, ``> 0``.
        beta: its second shape, ``> 0``.

    Returns:
        ``(n + 1,)`` float64 log-probabilities.

    Raises:
        ValueError: a negative ``n`` or a shape that is not a finite number ``> 0``.

    Example:
        >>> import numpy as np
        >>> np.exp(betabinom_logpmf(2, 1.0, 1.0)).round(6).tolist()  # uniform rate: uniform
        [0.333333, 0.333333, 0.333333]
    """
    n = _check_count("n", n, 0)
    alpha, beta = _check_ab(alpha, beta)
    k = np.arange(n + 1)
    log_fact = log_rising(1.0, n)
    la, lb, lab = log_rising(alpha, n), log_rising(beta, n), log_rising(alpha + beta, n)
    return log_fact[n] - log_fact[k] - log_fact[n - k] + la[k] + lb[n - k] - lab[n]


def _log_upper_tails(logpmf: np.ndarray) -> np.ndarray:
    """``log P[X >= m]`` for ``m = 0..n`` from log-probabilities, summed from the top."""
    return np.logaddexp.accumulate(logpmf[::-1])[::-1]


def betabinom_sf(matches: int, n: int, alpha: float, beta: float) -> float:
    """Exact ``P[X >= matches]`` for ``X ~ BetaBinomial(n, alpha, beta)``, summed in log space.

    Args:
        matches: the observed count.
        n: the number of trials.
        alpha: the Beta distribution's first shape, ``> 0``.
        beta: its second shape, ``> 0``.

    Returns:
        The one-sided p-value in ``[0, 1]`` (1 for ``matches <= 0``, 0 above ``n``).

    Example:
        >>> round(betabinom_sf(8, 10, 2.0, 8.0), 6)
        0.004492
    """
    n = _check_count("n", n, 0)
    if not (isinstance(matches, (int, np.integer)) and not isinstance(matches, (bool, np.bool_))):
        raise ValueError(f"matches must be an int, got {matches!r}")
    if matches <= 0:
        return 1.0
    if matches > n:
        return 0.0
    logpmf = betabinom_logpmf(n, alpha, beta)[matches:]
    top = logpmf.max()
    return float(min(1.0, math.exp(top) * math.fsum(np.exp(logpmf - top))))


# -- the fit -------------------------------------------------------------------------------------

def _loglik(hist_up: np.ndarray, hist_down: np.ndarray, n: int, m: int, mu: float,
            tau: float) -> float:
    """The beta-binomial log-likelihood, without its constant, of ``m`` models' counts.

    ``hist_up[j]`` counts the models with more than ``j`` matches, ``hist_down[j]`` those with
    more than ``j`` misses, so that ``sum_i sum_{j < k_i} f(j) = hist_up @ f``.
    """
    a, b = mu * tau, (1.0 - mu) * tau
    j = np.arange(n, dtype=np.float64)
    return float(hist_up @ np.log(a + j) + hist_down @ np.log(b + j)
                 - m * np.sum(np.log(tau + j)))


def _best_mean(hist_up: np.ndarray, hist_down: np.ndarray, n: int, tau: float,
               lo: float, hi: float, start: float) -> float:
    """The mean maximising the likelihood at precision ``tau``, in ``[lo, hi]``.

    The log-likelihood is strictly concave in the mean (a sum of logarithms of affine
    functions of it), so its derivative decreases: a Newton step safeguarded by bisection
    on the bracket where the derivative changes sign.
    """
    j = np.arange(n, dtype=np.float64)

    def derivatives(mu: float) -> tuple[float, float]:
        ua, ub = 1.0 / (mu * tau + j), 1.0 / ((1.0 - mu) * tau + j)
        return (tau * (hist_up @ ua - hist_down @ ub),
                -tau * tau * (hist_up @ (ua * ua) + hist_down @ (ub * ub)))

    if derivatives(lo)[0] <= 0.0:
        return lo
    if derivatives(hi)[0] >= 0.0:
        return hi
    mu = min(max(start, lo), hi)
    for _ in range(100):
        g, h = derivatives(mu)
        if g > 0:
            lo = mu
        else:
            hi = mu
        step = mu - g / h if h < 0 else math.nan
        nxt = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(nxt - mu) <= 1e-13 * max(mu, 1e-300) or hi - lo <= 1e-15:
            return nxt
        mu = nxt
    return mu


def _fit_beta_binomial(matches: np.ndarray, n: int) -> tuple[float, float]:
    """Maximum-likelihood ``(mean, precision)`` of a beta-binomial for the counts ``matches``.

    The precision ``alpha + beta`` is ``inf`` when the likelihood keeps growing towards the
    binomial (no over-dispersion: the counts vary no more than binomial noise). A mean of 0
    or 1 (every reference matched nothing, or everything) is moved half a match inside.
    """
    m = len(matches)
    hist = np.bincount(matches, minlength=n + 1)
    hist_up = (m - np.cumsum(hist))[:n].astype(np.float64)  # models with > j matches
    hist_down = (m - np.cumsum(hist[::-1]))[:n].astype(np.float64)  # models with > j misses
    eps = 0.5 / (m * n)
    start = float(np.clip(matches.mean() / n, eps, 1 - eps))

    def profile(tau: float) -> tuple[float, float]:
        mu = _best_mean(hist_up, hist_down, n, tau, eps, 1.0 - eps, start)
        return _loglik(hist_up, hist_down, n, m, mu, tau), mu

    values = [profile(tau)[0] for tau in _TAU_GRID]
    best = int(np.argmax(values))
    if best == len(_TAU_GRID) - 1:  # still rising at the binomial end: the pooled mean
        return float(np.clip(matches.sum() / (m * n), eps, 1 - eps)), math.inf
    lo = math.log(_TAU_GRID[max(best - 1, 0)])
    hi = math.log(_TAU_GRID[min(best + 1, len(_TAU_GRID) - 1)])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = profile(math.exp(c))[0], profile(math.exp(d))[0]
    while hi - lo > 1e-9:
        if fc >= fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = profile(math.exp(c))[0]
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = profile(math.exp(d))[0]
    tau = math.exp(0.5 * (lo + hi))
    return profile(tau)[1], tau


def _widen(rho: float, n: int, m: int) -> float:
    """``rho`` raised so that the beta-binomial's rate variance grows by ``1 + 1/m``.

    The variance of a model's rate on ``n`` points is ``mu (1 - mu) g`` with
    ``g = rho (1 - 1/n) + 1/n``; a new model, measured against a mean estimated from ``m``
    models, deviates from it with variance ``(1 + 1/m)`` times that.
    """
    g = (rho * (1.0 - 1.0 / n) + 1.0 / n) * (1.0 + 1.0 / m)
    return min((g - 1.0 / n) / (1.0 - 1.0 / n), _MAX_RHO)


# -- the record ----------------------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")


def points_sha256(fingerprints: Fingerprints) -> str:
    """sha256 of a set's points and owner labels: what a calibration is bound to.

    Not salted, like :meth:`~ipguard_jax.Fingerprints.digest`: do not publish it.

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints
        >>> fp = Fingerprints(x=np.zeros((2, 3), np.float32), labels=[0, 1], i=[1, 0],
        ...                   j=[0, 1], loss=[0, 0], converged=[1, 1], steps=[1, 1],
        ...                   source=[0, 1])
        >>> points_sha256(fp) == points_sha256(fp[::-1])
        False
    """
    return content_digest({"x": fingerprints.x, "labels": fingerprints.labels}, {})


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A beta-binomial null measured on reference models: what innocent models match.

    Build it with :func:`calibrate`; store it in a fingerprint set with
    :func:`with_calibration` (it then travels inside the set's file, sealed when the set is).

    Attributes:
        alpha: the null's first Beta shape (after the corrections for few references).
        beta: its second shape.
        n_points: fingerprints each reference answered.
        rates: each reference's matching rate (``matches / n_points``).
        names: each reference's name.
        descriptions: what each reference was (a model file, parameters hash, a callable...).
        ml_alpha: the maximum-likelihood ``alpha`` before the corrections (``None``: the
            likelihood peaked at the binomial, no over-dispersion was detected).
        ml_beta: the maximum-likelihood ``beta`` (``None`` likewise).
        min_dispersion: the floor put on the over-dispersion ``rho``.
        method: the fit and its corrections, in words.
        points_sha256: :func:`points_sha256` of the set calibrated.

    Example:
        >>> cal = Calibration(alpha=2.0, beta=8.0, n_points=100, rates=(0.2,) * 5,
        ...                   names=tuple("abcde"), descriptions=("labels",) * 5,
        ...                   ml_alpha=None, ml_beta=None, min_dispersion=0.01,
        ...                   method="by hand", points_sha256="0" * 64)
        >>> cal.mean, round(cal.dispersion, 4), cal.threshold(0.01)
        (0.2, 0.0909, 57)
        >>> Calibration.from_dict(cal.to_dict()) == cal
        True
    """

    alpha: float
    beta: float
    n_points: int
    rates: tuple[float, ...]
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    ml_alpha: float | None
    ml_beta: float | None
    min_dispersion: float
    method: str
    points_sha256: str

    def __post_init__(self):
        _check_ab(self.alpha, self.beta)
        _check_count("n_points", self.n_points, 2)
        for name in ("rates", "names", "descriptions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.rates:
            raise ValueError("a calibration needs at least one reference rate")
        if not len(self.rates) == len(self.names) == len(self.descriptions):
            raise ValueError(
                f"rates, names and descriptions must have one entry per reference, got "
                f"{len(self.rates)}, {len(self.names)} and {len(self.descriptions)}")
        for index, rate in enumerate(self.rates):
            if not (is_real(rate) and 0.0 <= rate <= 1.0):
                raise ValueError(f"rates[{index}] must be a number in [0, 1], got {rate!r}")
            if abs(rate * self.n_points - round(rate * self.n_points)) > 1e-6:
                raise ValueError(f"rates[{index}] = {rate!r} is not a count of matches out of "
                                 f"n_points={self.n_points}")
        for what in ("names", "descriptions"):
            for index, text in enumerate(getattr(self, what)):
                if not isinstance(text, str):
                    raise ValueError(f"{what}[{index}] must be a string, got "
                                     f"{type(text).__name__}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"names must be unique, got {list(self.names)}")
        if (self.ml_alpha is None) != (self.ml_beta is None):
            raise ValueError("ml_alpha and ml_beta must both be numbers or both be None")
        if self.ml_alpha is not None:
            _check_ab(self.ml_alpha, self.ml_beta)
        if not (is_real(self.min_dispersion) and 0.0 <= self.min_dispersion < 1.0):
            raise ValueError(f"min_dispersion must be a number in [0, 1), got "
                             f"{self.min_dispersion!r}")
        if not isinstance(self.method, str):
            raise ValueError(f"method must be a string, got {type(self.method).__name__}")
        if not (isinstance(self.points_sha256, str) and _SHA256.fullmatch(self.points_sha256)):
            raise ValueError("points_sha256 must be 64 lowercase hex digits")

    @property
    def num_references(self) -> int:
        """The number of reference models."""
        return len(self.rates)

    @property
    def mean(self) -> float:
        """The null's mean matching rate, ``alpha / (alpha + beta)``."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def dispersion(self) -> float:
        """The over-dispersion ``rho = 1 / (alpha + beta + 1)`` (0: binomial)."""
        return 1.0 / (self.alpha + self.beta + 1.0)

    @property
    def source(self) -> str:
        """Where a verdict's null came from, in words: ``"calibrated on N models"``."""
        return f"calibrated on {self.num_references} models"

    def p_value(self, matches: int, n: int | None = None) -> float:
        """The chance that an independent model matches at least ``matches`` of ``n``.

        Args:
            matches: the suspect's matches.
            n: fingerprints queried (default :attr:`n_points`). A random subset of the
                calibrated set has the same null on fewer points: the beta-binomial's shapes
                do not depend on ``n``.

        Returns:
            The exact beta-binomial upper tail ``P[X >= matches]``.

        Example:
            >>> cal = Calibration(2.0, 8.0, 100, (0.2,) * 5, tuple("abcde"), ("",) * 5,
            ...                   None, None, 0.01, "by hand", "0" * 64)
            >>> f"{cal.p_value(60):.2e}", cal.p_value(0)
            ('5.79e-03', 1.0)
        """
        n = self.n_points if n is None else _check_count("n", n, 1)
        matches = _check_count("matches", matches, 0)
        if matches > n:
            raise ValueError(f"matches={matches} is more than n={n}")
        return betabinom_sf(matches, n, self.alpha, self.beta)

    def threshold(self, fpr: float = 0.01, n: int | None = None) -> int:
        """The fewest matches out of ``n`` whose p-value is at most ``fpr``.

        Args:
            fpr: the false-positive rate to allow, in ``(0, 1)``.
            n: fingerprints queried (default :attr:`n_points`).

        Returns:
            The smallest ``m`` with ``p_value(m, n) <= fpr``; ``n + 1`` when even ``n``
            matches are not that unlikely for an independent model.

        Example:
            >>> cal = Calibration(2.0, 8.0, 100, (0.2,) * 5, tuple("abcde"), ("",) * 5,
            ...                   None, None, 0.01, "by hand", "0" * 64)
            >>> m = cal.threshold(0.01)
            >>> m, cal.p_value(m) <= 0.01 < cal.p_value(m - 1)
            (57, True)
        """
        check_fpr(fpr)
        n = self.n_points if n is None else _check_count("n", n, 1)
        tails = _log_upper_tails(betabinom_logpmf(n, self.alpha, self.beta))
        below = np.flatnonzero(tails <= math.log(fpr))
        return int(below[0]) if len(below) else n + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what :func:`with_calibration` stores in the metadata).

        Example:
            >>> cal = Calibration(2.0, 8.0, 10, (0.2,) * 5, tuple("abcde"), ("",) * 5,
            ...                   None, None, 0.01, "by hand", "0" * 64)
            >>> cal.to_dict()["format_version"], cal.to_dict()["rates"][:2]
            (1, [0.2, 0.2])
        """
        d = dataclasses.asdict(self)
        for name in ("rates", "names", "descriptions"):
            d[name] = list(d[name])
        return {"format_version": FORMAT_VERSION, "distribution": "beta-binomial", **d}

    @classmethod
    def from_dict(cls, d: Any) -> "Calibration":
        """The calibration in a dict from :meth:`to_dict`, validated.

        Raises:
            ValueError: not a mapping, another format version, missing or unknown fields,
                shapes that are not finite and positive, rates outside ``[0, 1]``...

        Example:
            >>> Calibration.from_dict({"format_version": 1, "alpha": -1.0})
            Traceback (most recent call last):
            ...
            ValueError: calibration: missing fields beta, descriptions, distribution, method, ...
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"calibration must be a mapping, got {type(d).__name__}")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"calibration has format version {d.get('format_version')!r}, "
                             f"this version of ipguard_jax reads version {FORMAT_VERSION}")
        fields = {f.name for f in dataclasses.fields(cls)}
        known = fields | {"format_version", "distribution"}
        missing = sorted(known - set(d))
        if missing:
            raise ValueError(f"calibration: missing fields {', '.join(missing)}")
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise ValueError(f"calibration: unknown fields {', '.join(unknown)}")
        if d["distribution"] != "beta-binomial":
            raise ValueError(f"calibration: distribution {d['distribution']!r} is not "
                             "'beta-binomial'")
        for name in ("rates", "names", "descriptions"):
            if not isinstance(d[name], (list, tuple)):
                raise ValueError(f"calibration: {name} must be a list, got "
                                 f"{type(d[name]).__name__}")
        try:
            return cls(**{name: d[name] for name in fields})
        except ValueError as e:
            raise ValueError(f"calibration: {e}") from None

    def __str__(self) -> str:
        lo, hi = min(self.rates), max(self.rates)
        return (f"beta-binomial null {self.source}: mean {self.mean:.1%}, dispersion "
                f"{self.dispersion:.3g} (reference rates {lo:.1%}-{hi:.1%} on "
                f"{self.n_points} fingerprints)")


# -- calibrate -----------------------------------------------------------------------------------

def _describe(reference: Any) -> str:
    if isinstance(reference, Classifier):
        return f"Classifier, parameters sha256 {reference.params_hash}"
    if isinstance(reference, RemoteSuspect):
        return f"HTTP endpoint {redact_url(reference.url)}"
    if callable(reference):
        name = getattr(reference, "__qualname__", None) or type(reference).__name__
        return f"callable {name}"
    return "precomputed labels"


def _reference_labels(fingerprints: Fingerprints, reference: Any, name: str, batch_size: int,
                      mesh: Any) -> np.ndarray:
    if isinstance(reference, Classifier) or callable(reference):
        try:
            return query_labels(fingerprints, reference, batch_size, mesh=mesh)
        except ValueError as e:
            raise ValueError(f"reference {name!r}: {e}") from e
    try:
        labels = np.asarray(reference)
    except (TypeError, ValueError):
        raise TypeError(f"reference {name!r} must be a model, a callable or an array of labels, "
                        f"got {type(reference).__name__}") from None
    if labels.dtype == object or not (labels.ndim == 1 and (
            np.issubdtype(labels.dtype, np.integer) or labels.size == 0)):
        raise TypeError(f"reference {name!r} must be a model, a callable or a 1-D array of "
                        f"integer labels, got {type(reference).__name__} of dtype "
                        f"{labels.dtype} and shape {labels.shape}")
    if labels.shape != (len(fingerprints),):
        raise ValueError(f"reference {name!r} has {labels.shape[0]} labels for "
                         f"{len(fingerprints)} fingerprints")
    classes = fingerprints.num_classes
    if (labels < 0).any() or (classes is not None and (labels >= classes).any()):
        raise ValueError(f"reference {name!r} has labels outside [0, "
                         f"{classes if classes is not None else 'num_classes'})")
    return labels.astype(np.int64)


def calibrate(fingerprints: Fingerprints, references: Any, *,
              names: Sequence[str] | None = None,
              descriptions: Sequence[str] | None = None, min_references: int = 5,
              min_dispersion: float = 0.01, batch_size: int = 256,
              mesh: Any = "auto") -> Calibration:
    """Measures independent reference models on the fingerprints and fits the null.

    Each reference is queried like a suspect (:func:`~ipguard_jax.query_labels`; no decoys:
    these are the owner's own models) or given as the labels it answered. Its matching rate
    is the share of fingerprints where it gives the owner's label; the rates are fitted as a
    beta-binomial by maximum likelihood, then made conservative for few references (the
    module docs explain how).

    The references must be models trained *independently* of the owner (other seeds, other
    data, other architectures), like the innocent models a verdict must not accuse; a
    pirated copy among them would inflate the null and hide real copies.

    Args:
        fingerprints: the owner's fingerprint set.
        references: the reference models: a sequence, or a mapping from name to reference;
            each a :class:`~ipguard_jax.Classifier`, a callable (see
            :func:`~ipguard_jax.query_labels`, e.g. an :class:`~ipguard_jax.HTTPSuspect`) or
            an ``(N,)`` integer array of the labels it gave on the fingerprints.
        names: a name per reference (default: the mapping's keys, or ``"reference 1"``...).
        descriptions: what each reference is, for the record (default: its type and, for a
            :class:`~ipguard_jax.Classifier`, its parameters' sha256).
        min_references: the fewest references accepted (at least 2).
        min_dispersion: the floor on the over-dispersion ``rho`` in ``[0, 1)``.
        batch_size: queries per call.
        mesh: devices for :class:`~ipguard_jax.Classifier` references (see
            :func:`~ipguard_jax.query_labels`).

    Returns:
        A :class:`Calibration`; store it in the set with :func:`with_calibration`.

    Raises:
        TypeError: ``fingerprints`` is not :class:`~ipguard_jax.Fingerprints`, or a reference
            is neither a model nor an array of integer labels.
        ValueError: fewer references than ``min_references``, fewer than 2 fingerprints,
            names or descriptions of the wrong length or repeated names, labels of the wrong
            length or outside the owner's classes, or a reference that answers badly (the
            message names it).

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints
        >>> fp = Fingerprints(x=np.eye(4, dtype=np.float32), labels=[0, 1, 2, 3],
        ...                   i=[1, 2, 3, 0], j=[0, 1, 2, 3], loss=[0] * 4, converged=[1] * 4,
        ...                   steps=[1] * 4, source=[0, 1, 2, 3])
        >>> calibrate(fp, [[0, 0, 0, 0]] * 3)
        Traceback (most recent call last):
        ...
        ValueError: calibrate needs at least 5 reference models, got 3: fewer cannot estimate ...
    """
    check_fingerprints(fingerprints)
    min_references = _check_count("min_references", min_references, 2)
    if not (is_real(min_dispersion) and 0.0 <= min_dispersion < 1.0):
        raise ValueError(f"min_dispersion must be a number in [0, 1), got {min_dispersion!r}")
    n = len(fingerprints)
    if n < 2:
        raise ValueError(f"calibration needs at least 2 fingerprints, the set has {n}")
    if isinstance(references, Mapping):
        if names is not None:
            raise ValueError("give names either as the keys of references or as names=, not "
                             "both")
        names = [str(k) for k in references]
        references = list(references.values())
    elif isinstance(references, (str, bytes)) or not isinstance(references, Sequence):
        raise TypeError(f"references must be a sequence or a mapping of reference models, got "
                        f"{type(references).__name__}")
    references = list(references)
    if len(references) < min_references:
        raise ValueError(
            f"calibrate needs at least {min_references} reference models, got "
            f"{len(references)}: fewer cannot estimate how much independent models differ "
            f"(min_references lowers the minimum)")
    names = [f"reference {i + 1}" for i in range(len(references))] if names is None \
        else list(names)
    for what, values in (("names", names), ("descriptions", descriptions)):
        if values is not None and len(values) != len(references):
            raise ValueError(f"{what} has {len(values)} entries for {len(references)} "
                             f"references")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique, got {names}")
    descriptions = [_describe(r) for r in references] if descriptions is None \
        else [str(d) for d in descriptions]

    matches = np.array([int(np.sum(_reference_labels(fingerprints, ref, str(name), batch_size,
                                                     mesh) == fingerprints.labels))
                        for ref, name in zip(references, names)])
    m = len(matches)
    mu, tau_ml = _fit_beta_binomial(matches, n)
    rho_ml = 0.0 if math.isinf(tau_ml) else 1.0 / (tau_ml + 1.0)
    rho = _widen(max(rho_ml, float(min_dispersion)), n, m)
    tau = 1.0 / rho - 1.0
    method = (f"beta-binomial maximum likelihood over {m} reference models"
              f" (ML over-dispersion {rho_ml:.4g}); over-dispersion floored at "
              f"{float(min_dispersion):g} and widened by 1 + 1/{m} for the uncertainty of "
              f"the mean, to {rho:.4g}")
    return Calibration(
        alpha=mu * tau, beta=(1.0 - mu) * tau, n_points=n,
        rates=tuple(float(k) / n for k in matches), names=tuple(str(s) for s in names),
        descriptions=tuple(descriptions),
        ml_alpha=None if math.isinf(tau_ml) else mu * tau_ml,
        ml_beta=None if math.isinf(tau_ml) else (1.0 - mu) * tau_ml,
        min_dispersion=float(min_dispersion), method=method,
        points_sha256=points_sha256(fingerprints))


def with_calibration(fingerprints: Fingerprints, calibration: Calibration) -> Fingerprints:
    """A copy of the set with ``calibration`` in ``metadata["calibration"]``.

    Saved with :func:`~ipguard_jax.save`, the calibration is part of the file (inside the
    sealed file when sealed, and covered by its checksum); :func:`~ipguard_jax.verify` uses
    it when no ``null_rate`` is given.

    Args:
        fingerprints: the set calibrated.
        calibration: its :class:`Calibration`.

    Returns:
        A new :class:`~ipguard_jax.Fingerprints` (a calibration already there is replaced).

    Raises:
        TypeError: arguments of the wrong types.
        ValueError: a calibration measured on another set of points.

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints
        >>> fp = Fingerprints(x=np.eye(4, dtype=np.float32), labels=[0, 1, 2, 3],
        ...                   i=[1, 2, 3, 0], j=[0, 1, 2, 3], loss=[0] * 4, converged=[1] * 4,
        ...                   steps=[1] * 4, source=[0, 1, 2, 3])
        >>> cal = calibrate(fp, [[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 3],
        ...                      [3, 1, 0, 2]])
        >>> calibration_of(with_calibration(fp, cal)) == cal, calibration_of(fp)
        (True, None)
    """
    if not isinstance(fingerprints, Fingerprints):
        raise TypeError(f"fingerprints must be Fingerprints, got {type(fingerprints).__name__}")
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a Calibration, got {type(calibration).__name__}")
    _check_belongs(fingerprints, calibration)
    return Fingerprints(**fingerprints.arrays(), metadata={**fingerprints.metadata,
                                                           METADATA_KEY: calibration.to_dict()})


def _check_belongs(fingerprints: Fingerprints, calibration: Calibration) -> None:
    if (calibration.n_points != len(fingerprints)
            or calibration.points_sha256 != points_sha256(fingerprints)):
        raise ValueError(
            f"the calibration was measured on another set of fingerprints ({calibration.n_points} "
            f"points with another sha256; this set has {len(fingerprints)}): calibrate this set")


def calibration_of(fingerprints: Fingerprints) -> Calibration | None:
    """The calibration stored in a set's metadata, validated, or ``None`` without one.

    Raises:
        ValueError: a stored calibration that is invalid, or that was measured on another set
            of points (e.g. a subset sliced from the calibrated set: calibrate the subset).

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import Fingerprints
        >>> fp = Fingerprints(x=np.eye(4, dtype=np.float32), labels=[0, 1, 2, 3],
        ...                   i=[1, 2, 3, 0], j=[0, 1, 2, 3], loss=[0] * 4, converged=[1] * 4,
        ...                   steps=[1] * 4, source=[0, 1, 2, 3])
        >>> cal = calibrate(fp, [[0, 0, 0, 0]] * 5)
        >>> calibration_of(with_calibration(fp, cal)[:2])
        Traceback (most recent call last):
        ...
        ValueError: the calibration was measured on another set of fingerprints (4 points ...
    """
    stored = fingerprints.metadata.get(METADATA_KEY)
    if stored is None:
        return None
    calibration = Calibration.from_dict(stored)
    _check_belongs(fingerprints, calibration)
    return calibration
