"""Robustness/uniqueness evaluation of a fingerprint set: ARUC, TPR at 1% FPR, p-values.

Definitions (a suspect is called a copy when its matching rate is ``>= t``):

* robustness ``R(t)``: share of pirated models with rate ``>= t`` (true-positive rate);
* uniqueness ``U(t)``: share of independent models with rate ``< t`` (1 - false-positive rate);
* ``aruc_roc``: the ROC-AUC of pirated vs independent rates, ``P(rate_p > rate_i)`` with ties
  counted half; equals the area under the uniqueness-vs-robustness curve;
* ``aruc_min``: the integral over ``t`` in [0, 1] of ``min(R(t), U(t))`` (IPGuard's ARUC, the
  area where both curves lie), computed exactly on the step functions;
* ``tpr_at_1pct_fpr``: ``R(t)`` at the smallest ``t`` whose false-positive rate is <= 1% (with
  fewer than 100 independent models, that means above every independent rate);
* ``best_threshold``: a ``t`` maximising ``R(t) + U(t) - 1``, the midpoint of the widest
  maximising interval;
* ``intervals``: percentile bootstrap confidence intervals over *models* for ``aruc_roc``,
  ``aruc_min`` and ``tpr_at_1pct_fpr`` (:func:`bootstrap_intervals`): the pirated and the
  independent models are resampled with replacement, each group on its own, 1000 times with
  a fixed seed. With a dozen models per group they are wide, and say so; they do not cover
  the randomness of the fingerprints themselves (one set per report).

Example:
    >>> rep = summarize({"ftal": 0.9, "prune": 0.8}, {"seed1": 0.3, "vgg": 0.5}, num_points=100)
    >>> rep.aruc_roc, round(rep.aruc_min, 2), rep.best_threshold
    (1.0, 0.45, 0.65)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ipguard_jax.classifier import Classifier
from ipguard_jax.fingerprints import Fingerprints
from ipguard_jax.verification import binomial_sf, query_labels

__all__ = ["EvaluationReport", "evaluate", "summarize", "roc_auc", "min_integral",
           "bootstrap_intervals", "data_label", "run_markdown", "write_run"]

#: The metrics :func:`bootstrap_intervals` gives intervals for.
INTERVAL_METRICS = ("aruc_roc", "aruc_min", "tpr_at_1pct_fpr")


def _step_intervals(pirated: np.ndarray, independent: np.ndarray):
    """Intervals (a, b] of [0, 1] on which R and U are constant, with R and U there."""
    points = np.unique(np.clip(np.concatenate([[0.0, 1.0], pirated, independent]), 0.0, 1.0))
    a, b = points[:-1], points[1:]
    # On (a, b] no rate lies strictly inside, so R(t) = R(b) and U(t) = U(b).
    r = (pirated[None, :] >= b[:, None]).mean(axis=1)
    u = (independent[None, :] < b[:, None]).mean(axis=1)
    return a, b, r, u


def robustness(pirated: Any, t: Any) -> np.ndarray:
    """Share of pirated rates ``>= t``, for each threshold in ``t``.

    Args:
        pirated: the pirated models' matching rates.
        t: one threshold or an array of them.

    Returns:
        ``R(t)``, one value per threshold.

    Example:
        >>> robustness([0.9, 0.6], [0.5, 0.7]).tolist()
        [1.0, 0.5]
    """
    return (np.asarray(pirated)[None, :] >= np.atleast_1d(t)[:, None]).mean(axis=1)


def uniqueness(independent: Any, t: Any) -> np.ndarray:
    """Share of independent rates ``< t``, for each threshold in ``t``.

    Args:
        independent: the independent models' matching rates.
        t: one threshold or an array of them.

    Returns:
        ``U(t)``, one value per threshold.

    Example:
        >>> uniqueness([0.3, 0.6], [0.5, 0.7]).tolist()
        [0.5, 1.0]
    """
    return (np.asarray(independent)[None, :] < np.atleast_1d(t)[:, None]).mean(axis=1)


def roc_auc(pirated: Any, independent: Any) -> float:
    """``P(pirated rate > independent rate)``, ties counted half (the Mann-Whitney AUC).

    Args:
        pirated: the pirated models' matching rates.
        independent: the independent models' matching rates.

    Returns:
        The AUC in ``[0, 1]``: 1 when every pirated model matches more often than every
        independent one.

    Example:
        >>> roc_auc([0.9, 0.6], [0.3, 0.6])  # one tie out of four pairs
        0.875
    """
    p, i = np.asarray(pirated, float)[:, None], np.asarray(independent, float)[None, :]
    return float(np.mean((p > i) + 0.5 * (p == i)))


def min_integral(pirated: Any, independent: Any) -> float:
    """Exact ``integral_0^1 min(R(t), U(t)) dt`` of the robustness and uniqueness step curves.

    Args:
        pirated: the pirated models' matching rates.
        independent: the independent models' matching rates.

    Returns:
        The area in ``[0, 1]`` under both curves (IPGuard's ARUC).

    Example:
        >>> round(min_integral([0.9, 0.8], [0.3, 0.5]), 4)
        0.45
    """
    a, b, r, u = _step_intervals(np.asarray(pirated, float), np.asarray(independent, float))
    return float(np.sum((b - a) * np.minimum(r, u)))


def _tpr_at_fpr(pirated: np.ndarray, independent: np.ndarray, max_fpr: float):
    candidates = np.unique(np.concatenate([pirated, independent, [np.inf]]))
    for t in candidates:  # smallest threshold whose FPR is within budget
        if np.mean(independent >= t) <= max_fpr:
            return float(np.mean(pirated >= t)), float(t)
    return 0.0, math.inf  # pragma: no cover - t = inf always qualifies


def _best_threshold(pirated: np.ndarray, independent: np.ndarray) -> tuple[float, float]:
    a, b, r, u = _step_intervals(pirated, independent)
    j = r + u - 1.0
    best = j.max()
    # Merge adjacent maximising intervals, then take the midpoint of the widest run.
    runs, start = [], None
    for k, on in enumerate(np.isclose(j, best)):
        if on and start is None:
            start = k
        if start is not None and (not on or k == len(j) - 1):
            end = k if on else k - 1
            runs.append((a[start], b[end]))
            start = None
    lo, hi = max(runs, key=lambda run: run[1] - run[0])
    return float((lo + hi) / 2), float(best)


def _resamples(num_pirated: int, num_independent: int, draws: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap indices ``(draws, P)`` and ``(draws, I)``: each group resampled on its own."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, num_pirated, (draws, num_pirated)),
            rng.integers(0, num_independent, (draws, num_independent)))


def bootstrap_intervals(pirated: Any, independent: Any, *, draws: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap confidence intervals over models for the report's metrics.

    Each draw resamples the pirated rates and the independent rates with replacement (each
    group keeps its size) and recomputes ``aruc_roc``, ``aruc_min`` and ``tpr_at_1pct_fpr``;
    the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the draws.

    Args:
        pirated: the pirated models' matching rates.
        independent: the independent models' matching rates.
        draws: bootstrap draws (>= 1).
        seed: seed of the draws (fixed: a report is reproducible).
        level: the intervals' confidence level in ``(0, 1)``.

    Returns:
        ``{"level", "draws", "seed", "method", "aruc_roc": [lo, hi], "aruc_min": [lo, hi],
        "tpr_at_1pct_fpr": [lo, hi]}``.

    Raises:
        ValueError: no rates in a group, ``draws < 1`` or ``level`` outside ``(0, 1)``.

    Example:
        >>> ci = bootstrap_intervals([0.9, 0.8, 0.95], [0.3, 0.5, 0.85])
        >>> ci["aruc_roc"], ci["level"]
        ([0.5555555555555556, 1.0], 0.95)
    """
    p, i = np.asarray(pirated, float), np.asarray(independent, float)
    if p.ndim != 1 or i.ndim != 1 or not len(p) or not len(i):
        raise ValueError("bootstrap_intervals needs at least one pirated and one independent "
                         "rate")
    if not (isinstance(draws, (int, np.integer)) and draws >= 1):
        raise ValueError(f"draws must be an int >= 1, got {draws!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    ip, ii = _resamples(len(p), len(i), int(draws), seed)
    ps, qs = p[ip], i[ii]
    values = {
        "aruc_roc": np.mean((ps[:, :, None] > qs[:, None, :])
                            + 0.5 * (ps[:, :, None] == qs[:, None, :]), axis=(1, 2)),
        "aruc_min": np.array([min_integral(a, b) for a, b in zip(ps, qs)]),
        "tpr_at_1pct_fpr": np.array([_tpr_at_fpr(a, b, 0.01)[0] for a, b in zip(ps, qs)]),
    }
    q = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    return {"level": float(level), "draws": int(draws), "seed": int(seed),
            "method": "percentile bootstrap over models: pirated and independent models "
                      "resampled with replacement, each group on its own",
            **{name: [float(v) for v in np.quantile(values[name], q)] for name in values}}


def _curve_bands(pirated: np.ndarray, independent: np.ndarray, thresholds: np.ndarray,
                 intervals: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise bootstrap bands ``(2, T)`` of ``R(t)`` and ``U(t)``, with the draws and seed
    of ``intervals``."""
    ip, ii = _resamples(len(pirated), len(independent), intervals["draws"], intervals["seed"])
    t = np.asarray(thresholds)[None, None, :]
    r = (pirated[ip][:, :, None] >= t).mean(axis=1)
    u = (independent[ii][:, :, None] < t).mean(axis=1)
    level = intervals["level"]
    q = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    return np.quantile(r, q, axis=0), np.quantile(u, q, axis=0)


@dataclasses.dataclass
class EvaluationReport:
    """Matching rates of pirated and independent models and the metrics derived from them.

    Attributes:
        pirated: model name -> matching rate.
        independent: model name -> matching rate.
        num_points: fingerprints queried per model.
        owner_rate: the owner's own rate (1.0 for a sound fingerprint set); ``None`` if no owner.
        thresholds: the grid where ``robustness`` and ``uniqueness`` are tabulated.
        robustness: ``R(t)`` on ``thresholds``.
        uniqueness: ``U(t)`` on ``thresholds``.
        aruc_roc: ROC-AUC of pirated vs independent rates (ties half).
        aruc_min: exact integral of ``min(R, U)`` over ``t`` in [0, 1].
        tpr_at_1pct_fpr: robustness at the smallest threshold with <= 1% false positives.
        threshold_at_1pct_fpr: that threshold.
        best_threshold: midpoint of the widest interval maximising ``R + U - 1``.
        best_youden: that maximum of ``R + U - 1``.
        null_rate: the binomial null (agreement rate of an independent model).
        null_rate_source: ``"given"`` or ``"mean independent rate"`` (in-sample: the
            independent models' own p-values are then optimistic about the null).
        p_values: model name -> exact one-sided binomial p-value of its matches vs ``null_rate``.
        meta: free-form JSON-able context (fingerprint config, convergence, timings...).
        intervals: bootstrap confidence intervals over models (:func:`bootstrap_intervals`;
            empty when the report was made without them).

    Example:
        >>> rep = summarize({"ftal": 0.9}, {"seed1": 0.3}, num_points=100)
        >>> rep.aruc_roc, rep.null_rate_source, f"{rep.p_values['ftal']:.1e}"
        (1.0, 'mean independent rate', '4.5e-36')
    """

    pirated: dict[str, float]
    independent: dict[str, float]
    num_points: int
    owner_rate: float | None
    thresholds: list[float]
    robustness: list[float]
    uniqueness: list[float]
    aruc_roc: float
    aruc_min: float
    tpr_at_1pct_fpr: float
    threshold_at_1pct_fpr: float
    best_threshold: float
    best_youden: float
    null_rate: float
    null_rate_source: str
    p_values: dict[str, float]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    intervals: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (``inf`` written as ``None``).

        Returns:
            Every field by name, plus ``"metric_notes"`` explaining the two ARUC values.

        Example:
            >>> rep = summarize({"ftal": 0.9}, {"seed1": 0.3}, num_points=100)
            >>> EvaluationReport.from_dict(rep.to_dict()) == rep
            True
        """
        d = dataclasses.asdict(self)
        if not math.isfinite(d["threshold_at_1pct_fpr"]):
            d["threshold_at_1pct_fpr"] = None
        d["metric_notes"] = {
            "aruc_roc": "ROC-AUC of pirated vs independent matching rates, ties counted half "
                        "(= area under uniqueness-vs-robustness)",
            "aruc_min": "integral over t in [0,1] of min(robustness(t), uniqueness(t))",
        }
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EvaluationReport":
        """Inverse of :meth:`to_dict`.

        Args:
            d: a dict from :meth:`to_dict` (unknown keys such as ``"metric_notes"`` are
                ignored).

        Returns:
            The report.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        if kwargs.get("threshold_at_1pct_fpr") is None:
            kwargs["threshold_at_1pct_fpr"] = math.inf
        return cls(**kwargs)

    def to_json(self, path: str | os.PathLike) -> None:
        """Writes :meth:`to_dict` as indented JSON.

        Args:
            path: the file to write (replaced if it exists).

        Example:
            >>> import os, tempfile
            >>> rep = summarize({"ftal": 0.9}, {"seed1": 0.3}, num_points=100)
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     rep.to_json(os.path.join(tmp, "report.json"))
            ...     EvaluationReport.from_json(os.path.join(tmp, "report.json")) == rep
            True
        """
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, allow_nan=True)
            f.write("\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "EvaluationReport":
        """Reads a report written by :meth:`to_json`.

        Args:
            path: the JSON file.

        Returns:
            The report.
        """
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_markdown(self, title: str | None = None) -> str:
        """A Markdown summary: the metrics, then one row per model.

        Args:
            title: an optional ``###`` heading.

        Returns:
            The Markdown text (ends with a newline).

        Example:
            >>> rep = summarize({"ftal": 0.9, "prune": 0.7}, {"seed1": 0.3, "vgg": 0.8},
            ...                 num_points=100)
            >>> print(rep.to_markdown().splitlines()[2])
            | ARUC as ROC-AUC (pirated vs independent, ties half) | 0.7500 | 0.0000-1.0000 |
        """
        lines = [f"### {title}", ""] if title else []
        ci = self.intervals

        def interval(name: str) -> str:
            return f"{ci[name][0]:.4f}-{ci[name][1]:.4f}" if name in ci else "-"

        level = f"{ci['level']:.0%} CI (bootstrap over models)" if ci else "CI"
        lines += [
            f"| metric | value | {level} |",
            "|---|---|---|",
            f"| ARUC as ROC-AUC (pirated vs independent, ties half) | {self.aruc_roc:.4f} | "
            f"{interval('aruc_roc')} |",
            f"| ARUC as integral of min(R(t), U(t)) dt | {self.aruc_min:.4f} | "
            f"{interval('aruc_min')} |",
            f"| TPR at 1% FPR | {self.tpr_at_1pct_fpr:.4f} | {interval('tpr_at_1pct_fpr')} |",
            f"| best threshold (max R+U-1 = {self.best_youden:.3f}) | {self.best_threshold:.4f} "
            f"| |",
            f"| null rate ({self.null_rate_source}) | {self.null_rate:.4f} | |",
            f"| fingerprints per model | {self.num_points} | |",
        ]
        if self.owner_rate is not None:
            lines.append(f"| owner's own matching rate | {self.owner_rate:.4f} | |")
        lines += ["", "| model | kind | matching rate | p-value |", "|---|---|---|---|"]
        for kind, rates in (("pirated", self.pirated), ("independent", self.independent)):
            for name, rate in rates.items():
                lines.append(f"| {name} | {kind} | {rate:.4f} | {self.p_values[name]:.3g} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike, title: str | None = None) -> None:
        """Saves a PNG: rate distributions, robustness/uniqueness curves, metric intervals.

        With :attr:`intervals`, the curves carry pointwise bootstrap bands (the same draws)
        and a third panel shows each metric with its confidence interval as an error bar.

        Needs matplotlib (the ``plot`` extra); selects its ``Agg`` backend unless one is set.

        Args:
            path: the PNG file to write.
            title: an optional figure title.

        Example:
            >>> rep.plot("report.png", title="digits, k=3")  # doctest: +SKIP
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        ci = self.intervals
        fig, axes = plt.subplots(1, 3 if ci else 2, figsize=(15 if ci else 10, 4))
        ax1, ax2 = axes[0], axes[1]
        bins = np.linspace(0, 1, 21)
        ax1.hist(list(self.pirated.values()), bins=bins, alpha=0.6, label="pirated")
        ax1.hist(list(self.independent.values()), bins=bins, alpha=0.6, label="independent")
        ax1.set_xlabel("matching rate")
        ax1.set_ylabel("models")
        ax1.legend()
        ax2.step(self.thresholds, self.robustness, where="pre", label="robustness R(t)")
        ax2.step(self.thresholds, self.uniqueness, where="pre", label="uniqueness U(t)")
        if ci:
            r_band, u_band = _curve_bands(np.array(list(self.pirated.values())),
                                          np.array(list(self.independent.values())),
                                          np.asarray(self.thresholds), ci)
            for band, color in ((r_band, "C0"), (u_band, "C1")):
                ax2.fill_between(self.thresholds, band[0], band[1], step="pre", color=color,
                                 alpha=0.2, linewidth=0)
        ax2.axvline(self.best_threshold, color="gray", ls=":", label="best threshold")
        ax2.set_xlabel("threshold t")
        ax2.set_title(f"ARUC roc={self.aruc_roc:.3f}  min-integral={self.aruc_min:.3f}",
                      fontsize=9)
        ax2.legend(fontsize=8)
        if ci:
            ax3 = axes[2]
            names = [name for name in INTERVAL_METRICS if name in ci]
            values = [getattr(self, name) for name in names]
            low = [v - ci[name][0] for v, name in zip(values, names)]
            high = [ci[name][1] - v for v, name in zip(values, names)]
            ax3.errorbar(range(len(names)), values, yerr=[low, high], fmt="o", capsize=6)
            ax3.set_xticks(range(len(names)), ["ARUC (roc)", "ARUC (min)", "TPR@1%FPR"][
                :len(names)])
            ax3.set_xlim(-0.5, len(names) - 0.5)
            ax3.set_ylim(-0.02, 1.02)
            ax3.set_title(f"{ci['level']:.0%} bootstrap intervals over models "
                          f"({ci['draws']} draws)", fontsize=9)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _check_rates(rates: Mapping[str, float], what: str) -> dict[str, float]:
    if not isinstance(rates, Mapping) or not rates:
        raise ValueError(f"{what} must be a non-empty dict of model name -> model or rate")
    out = {}
    for name, rate in rates.items():
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{what} model {name!r} has matching rate {rate}, not in [0, 1]")
        out[str(name)] = rate
    return out


def summarize(pirated: Mapping[str, float], independent: Mapping[str, float], *,
              num_points: int, thresholds: Any = None, null_rate: float | None = None,
              owner_rate: float | None = None, meta: Mapping[str, Any] | None = None,
              bootstrap: int = 1000, seed: int = 0) -> EvaluationReport:
    """Builds a report from matching rates already measured.

    Args:
        pirated: name -> matching rate of each pirated model.
        independent: name -> matching rate of each independent model.
        num_points: fingerprints behind each rate (for the binomial p-values).
        thresholds: grid for the tabulated curves; default 0..1 step 0.01 plus every rate.
        null_rate: binomial null; default the mean independent rate.
        owner_rate: the owner's own rate, recorded as a sanity check.
        meta: extra JSON-able context stored in the report.
        bootstrap: draws for the 95% confidence intervals over models
            (:func:`bootstrap_intervals`); 0 for none.
        seed: seed of the bootstrap draws.

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        ValueError: empty inputs, rates outside [0, 1], a name used twice, bad ``num_points``,
            a ``null_rate`` outside [0, 1], a negative ``bootstrap``.

    Example:
        >>> rep = summarize({"ftal": 0.9, "prune": 0.8}, {"seed1": 0.3}, num_points=100,
        ...                 null_rate=0.5)
        >>> rep.tpr_at_1pct_fpr, rep.threshold_at_1pct_fpr, round(rep.p_values["seed1"], 4)
        (1.0, 0.8, 1.0)
    """
    pirated = _check_rates(pirated, "pirated")
    independent = _check_rates(independent, "independent")
    both = sorted(set(pirated) & set(independent))
    if both:
        raise ValueError(f"model names used for both pirated and independent models: {both}")
    if not (isinstance(num_points, (int, np.integer)) and num_points > 0):
        raise ValueError(f"num_points must be a positive int, got {num_points!r}")
    p = np.array(list(pirated.values()))
    i = np.array(list(independent.values()))
    if thresholds is None:
        thresholds = np.unique(np.concatenate([np.round(np.linspace(0, 1, 101), 10), p, i]))
    thresholds = np.sort(np.asarray(thresholds, float))
    source = "given"
    if null_rate is None:
        null_rate, source = float(i.mean()), "mean independent rate"
    if not 0.0 <= null_rate <= 1.0:
        raise ValueError(f"null_rate must be in [0, 1], got {null_rate}")
    if not (isinstance(bootstrap, (int, np.integer)) and bootstrap >= 0):
        raise ValueError(f"bootstrap must be an int >= 0, got {bootstrap!r}")
    tpr, t_fpr = _tpr_at_fpr(p, i, 0.01)
    best_t, best_j = _best_threshold(p, i)
    p_values = {name: binomial_sf(int(round(rate * num_points)), int(num_points), null_rate)
                for name, rate in {**pirated, **independent}.items()}
    return EvaluationReport(
        pirated=pirated, independent=independent, num_points=int(num_points),
        owner_rate=None if owner_rate is None else float(owner_rate),
        thresholds=thresholds.tolist(), robustness=robustness(p, thresholds).tolist(),
        uniqueness=uniqueness(i, thresholds).tolist(), aruc_roc=roc_auc(p, i),
        aruc_min=min_integral(p, i), tpr_at_1pct_fpr=tpr, threshold_at_1pct_fpr=t_fpr,
        best_threshold=best_t, best_youden=best_j, null_rate=float(null_rate),
        null_rate_source=source, p_values=p_values, meta=dict(meta or {}),
        intervals={} if bootstrap == 0 else bootstrap_intervals(p, i, draws=bootstrap,
                                                                 seed=seed),
    )


def _rate(fingerprints: Fingerprints, model: Any, name: str, what: str) -> float:
    if isinstance(model, Classifier):
        if model.input_shape != fingerprints.input_shape:
            raise ValueError(
                f"{what} model {name!r} takes inputs of shape {model.input_shape}, the "
                f"fingerprints have shape {fingerprints.input_shape}")
        if fingerprints.num_classes is not None and model.num_classes != fingerprints.num_classes:
            raise ValueError(
                f"{what} model {name!r} has {model.num_classes} classes, the fingerprints' "
                f"owner has {fingerprints.num_classes}")
    elif not callable(model):
        raise TypeError(f"{what} model {name!r} must be a Classifier or a callable, got "
                        f"{type(model).__name__}")
    try:
        labels = query_labels(fingerprints, model)
    except ValueError as e:
        raise ValueError(f"{what} model {name!r}: {e}".replace("the owner model 'owner'",
                                                              "the owner model")) from e
    return float(np.mean(labels == fingerprints.labels))


def evaluate(fingerprints: Fingerprints, owner: Any, pirated: Mapping[str, Any],
             independent: Mapping[str, Any], *, thresholds: Any = None,
             null_rate: float | None = None,
             meta: Mapping[str, Any] | None = None) -> EvaluationReport:
    """Queries every model on the fingerprints and summarises robustness and uniqueness.

    Args:
        fingerprints: the owner's fingerprint set.
        owner: the owner (a :class:`Classifier` or callable; ``None`` to skip its sanity rate).
        pirated: name -> :class:`Classifier` or callable (logits or labels) of each pirated copy.
        independent: name -> model, for independently trained models.
        thresholds: grid for the tabulated curves (see :func:`summarize`).
        null_rate: binomial null; default the mean independent rate (recorded as such).
        meta: extra JSON-able context stored in the report.

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        TypeError: ``fingerprints`` is not :class:`~ipguard_jax.Fingerprints`, or a model is
            neither a :class:`Classifier` nor a callable.
        ValueError: empty dicts, a name in both dicts, an empty fingerprint set, or a model
            whose classes or input shape do not match the fingerprints (the message names the
            model).

    Example:
        Three boundary points of the owner ``argmax(x)`` (``j`` just ahead of ``i``), a
        "pirate" that scales the owner's logits and an "independent" model that answers the
        runner-up class:

        >>> import numpy as np
        >>> x = np.array([[0.6, 0.4, 0.0], [0.0, 0.6, 0.4], [0.4, 0.0, 0.6]], np.float32)
        >>> fp = Fingerprints(x=x, labels=[0, 1, 2], i=[1, 2, 0], j=[0, 1, 2],
        ...                   loss=[0.0] * 3, converged=[True] * 3, steps=[1] * 3,
        ...                   source=[0, 1, 2])
        >>> owner = lambda x: x.argmax(axis=1)
        >>> pirate = lambda x: 2.0 * x  # logits
        >>> runner_up = lambda x: np.argsort(x, axis=1)[:, 1]
        >>> rep = evaluate(fp, owner, {"scaled": pirate}, {"runner-up": runner_up})
        >>> rep.owner_rate, rep.pirated, rep.independent, rep.aruc_roc
        (1.0, {'scaled': 1.0}, {'runner-up': 0.0}, 1.0)
    """
    if not isinstance(fingerprints, Fingerprints):
        raise TypeError(f"fingerprints must be Fingerprints, got {type(fingerprints).__name__}")
    for what, models_ in (("pirated", pirated), ("independent", independent)):
        if not isinstance(models_, Mapping) or not models_:
            raise ValueError(f"{what} must be a non-empty dict of model name -> model")
    both = sorted(set(pirated) & set(independent))
    if both:
        raise ValueError(f"model names used for both pirated and independent models: {both}")
    if len(fingerprints) == 0:
        raise ValueError("the fingerprint set is empty (no point converged?): nothing to query")
    owner_rate = None if owner is None else _rate(fingerprints, owner, "owner", "the owner")
    p = {name: _rate(fingerprints, m, name, "pirated") for name, m in pirated.items()}
    i = {name: _rate(fingerprints, m, name, "independent") for name, m in independent.items()}
    return summarize(p, i, num_points=len(fingerprints), thresholds=thresholds,
                     null_rate=null_rate, owner_rate=owner_rate, meta=meta)


# --- the report of a whole evaluation run -------------------------------------------------------


def data_label(data: str) -> str:
    """The data as report titles name it: an archive or folder without the path it had.

    Example:
        >>> data_label("/home/me/datasets/cifar10-jpeg.tar.gz")
        'cifar10-jpeg.tar.gz'
        >>> data_label("tfds:imagenette/160px")
        'tfds:imagenette/160px'
    """
    if data.startswith("tfds:"):  # a TFDS name may hold a "/" before its config
        return data
    return Path(data).name


def _strict_json(value: Any) -> Any:
    """NaN/inf (metrics of configs without fingerprints) as null, so any JSON reader copes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _cold_cost(result: Mapping[str, Any]) -> str:
    """What the run costs with the model cache empty, from the times the cache recorded."""
    costs = result["model_build_s"]
    known = [v for v in costs.values() if v is not None]
    t = result["timings_s"]
    fingerprint_s = t["fingerprint_and_verify_s"]
    other_s = t["total_s"] - fingerprint_s - t["owner_s"] - t["pirated_s"] - t["independent_s"]
    text = (f"With the model cache empty this run needs about "
            f"{(sum(known) + fingerprint_s + other_s) / 3600:.2f} h: building the {len(known)} "
            f"models took {sum(known) / 3600:.2f} h (the times the cache recorded when each was "
            f"built; a training run that stopped and resumed counts all its epochs), "
            f"fingerprinting and verification {fingerprint_s / 60:.1f} min and the rest "
            f"(loading data, test accuracies) {other_s / 60:.1f} min in this call.")
    missing = sorted(n for n, v in costs.items() if v is None)
    if missing:
        text += f" No time recorded for {', '.join(missing)} (cached by an older version)."
    return text


def _conferrable_lines(result: Mapping[str, Any]) -> list[str]:
    """The conferrable rows' members, screening counts and full cost, as Markdown lines."""
    rows = [r for r in result["configs"] if r.get("method") == "conferrable"]
    if not rows:
        return []
    built = result["model_build_s"]
    members = [*result.get("surrogates", {}), *result.get("references", {})]
    known = [built[n] for n in members if built.get(n) is not None]
    lines = ["", "## Conferrable rows: members, screening and cost", "",
             f"Surrogates ({len(result.get('surrogates', {}))}): "
             f"{', '.join(result.get('surrogates', {}))}. References "
             f"({len(result.get('references', {}))}): {', '.join(result.get('references', {}))}. "
             "Made from the owner and its own split only; none of them is a scored model "
             f"(checked). Training them took {sum(known) / 60:.1f} min"
             + (f" ({len(members) - len(known)} without a recorded time)"
                if len(known) < len(members) else "") + ", on top of each row's generation.",
             "", "| config | candidates | owner converged | surrogates agree | references clear "
             "| kept | gen. s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        sc = r.get("screening") or {}
        lines.append(f"| {r['config']} | {sc.get('candidates', '-')} | "
                     f"{sc.get('owner_converged', '-')} | {sc.get('surrogates_agree', '-')} | "
                     f"{sc.get('references_clear', '-')} | {sc.get('kept', '-')} | "
                     f"{r['generation_s']:.1f} |")
    return lines


def run_markdown(result: Mapping[str, Any], reports: Mapping[str, EvaluationReport]) -> str:
    """The Markdown report of an evaluation run (what ``ipguard evaluate`` writes as ``.md``).

    A title naming the data and the owner, the command, the models and cache hits, what the
    run costs with the cache empty, one table row per configuration (ARUC both ways with
    bootstrap intervals, TPR at 1% FPR, the best threshold, convergence, fingerprints,
    generation time), the conferrable rows' members and screening counts, then the matching
    rate of every model under every configuration and the owner's test accuracy.

    Args:
        result: the run's results, as :func:`ipguard_jax.evaluation.pipeline.run` returns
            them (``setting``, ``command``, ``pirated``, ``independent``, ``cache``,
            ``timings_s``, ``model_build_s``, ``accuracy``, ``configs``, and ``surrogates`` and
            ``references`` with conferrable rows).
        reports: label -> report of each configuration that has fingerprints.

    Returns:
        The Markdown text.

    Example:
        >>> timings = {"total_s": 10.0, "fingerprint_and_verify_s": 4.0, "owner_s": 1.0,
        ...            "pirated_s": 1.0, "independent_s": 1.0}
        >>> result = {"setting": {"data": "/data/cifar10.tar.gz", "owner": "resnet20"},
        ...           "command": "ipguard evaluate", "pirated": {}, "independent": {},
        ...           "cache": {"hits": 0, "misses": 1}, "timings_s": timings,
        ...           "model_build_s": {"owner": 60.0}, "configs": [],
        ...           "accuracy": {"owner": 0.8}}
        >>> print(run_markdown(result, {}).splitlines()[0])
        # ARUC of IPGuard fingerprints (cifar10.tar.gz, owner resnet20)
    """
    lines = [
        f"# ARUC of IPGuard fingerprints ({data_label(result['setting']['data'])}, owner "
        f"{result['setting']['owner']})", "",
        f"Command: `{result['command']}`", "",
        f"Models: {len(result['pirated'])} pirated, {len(result['independent'])} independent; "
        f"cache hits {result['cache']['hits']}, zoo hits {result['cache'].get('zoo_hits', 0)}, "
        f"misses {result['cache']['misses']}"
        + (f" (weights rounded to {result['cache']['precision']})"
           if result["cache"].get("precision") else "")
        + f"; total {result['timings_s']['total_s']:.0f} s.", "",
        _cold_cost(result), "",
        "ARUC (roc) = ROC-AUC of pirated vs independent matching rates, ties half. "
        "ARUC (min) = integral over t of min(robustness(t), uniqueness(t)). "
        "TPR@1%FPR = share of pirated models above every independent model's rate "
        "when fewer than 100 independent models exist. Brackets: 95% percentile bootstrap "
        "intervals over models (pirated and independent models resampled with "
        "replacement).", "",
        "| config | ARUC (roc) | ARUC (min) | TPR@1%FPR | best t | converged | "
        "fingerprints | gen. s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["configs"]:
        if r["num_fingerprints"] == 0:
            lines.append(f"| {r['config']} | - | - | - | - | {r['convergence_rate']:.2f} | 0 | "
                         f"{r['generation_s']:.1f} |")
            continue
        ci = r.get("intervals") or {}

        def cell(name: str, digits: int) -> str:
            value = f"{r[name]:.{digits}f}"
            return value + (f" [{ci[name][0]:.{digits}f}, {ci[name][1]:.{digits}f}]"
                            if name in ci else "")

        lines.append(f"| {r['config']} | {cell('aruc_roc', 3)} | {cell('aruc_min', 3)} | "
                     f"{cell('tpr_at_1pct_fpr', 2)} | {r['best_threshold']:.3f} | "
                     f"{r['convergence_rate']:.2f} | {r['num_fingerprints']} | "
                     f"{r['generation_s']:.1f} |")
    lines += _conferrable_lines(result)
    owner_s = result["model_build_s"].get("owner")
    trained_in = f", trained in {owner_s / 60:.1f} min" if owner_s is not None else ""
    owner_line = f"Owner test accuracy: {result['accuracy']['owner']:.3f}{trained_in}."
    labels = list(reports)
    if not labels:
        return "\n".join([*lines, "", owner_line, ""])
    lines += ["", "## Matching rate per model and configuration", "",
              "| model | kind | test acc. | " + " | ".join(labels) + " |",
              "|---|---|---|" + "---|" * len(labels)]
    first = reports[labels[0]]
    for kind, names in (("pirated", first.pirated), ("independent", first.independent)):
        for n in names:
            rates = " | ".join(f"{getattr(reports[lb], kind)[n]:.2f}" for lb in labels)
            lines.append(f"| {n} | {kind} | {result['accuracy'][n]:.3f} | {rates} |")
    lines += ["", owner_line, ""]
    return "\n".join(lines)


def write_run(out: str | os.PathLike, result: Mapping[str, Any],
              reports: Mapping[str, EvaluationReport]) -> None:
    """Writes an evaluation run's ``<out>.json`` (NaN as null), ``<out>.md``
    (:func:`run_markdown`) and, when a configuration has a report, ``<out>.png``: the plot of
    the best configuration (by ARUC as ROC-AUC, then as min-integral).

    Args:
        out: the path prefix; its parent directory is created.
        result: the run's results (see :func:`run_markdown`).
        reports: label -> report of each configuration that has fingerprints.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".json"), "w") as f:
        json.dump(_strict_json(result), f, indent=2, default=str)
    out.with_suffix(".md").write_text(run_markdown(result, reports))
    if reports:
        best = max(reports, key=lambda lb: (reports[lb].aruc_roc, reports[lb].aruc_min))
        reports[best].plot(out.with_suffix(".png"),
                           title=f"{data_label(result['setting']['data'])}: best config, {best}")
