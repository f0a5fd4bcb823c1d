"""Fingerprint configurations scored on pirated and independent models.

:func:`configurations` lists what an evaluation fingerprints the owner with: the IPGuard grid
of a :class:`~ipguard_jax.evaluation.protocol.Setting` (every margin ``k`` x initialisation x
target choice), the baselines on the same owner (random points, FGSM, PGD, Carlini-Wagner),
and the conferrable rows when a :class:`~ipguard_jax.conferrable.Conferrable` method is given.
:func:`score` generates one configuration's fingerprint set and queries every model with it
(:func:`~ipguard_jax.evaluation.evaluate`); :func:`score_all` does so for each configuration.

Each configuration gives one result row: its label, method, ``k``, ``init``, ``target``, the
number of fingerprints, the convergence rate, the generation time and the metrics of its
:class:`~ipguard_jax.evaluation.EvaluationReport` (NaN where no point converged).

Example:
    >>> from ipguard_jax.evaluation import protocol
    >>> setting = protocol.make_setting(quick=True, ks=[3], inits=["data"], targets=["random"],
    ...                                 baselines=["fgsm"])
    >>> [c.label for c in configurations(setting)]
    ['k=3 init=data target=random', 'fgsm eps=0.1']
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ipguard_jax.evaluation import protocol

__all__ = ["Configuration", "RowStore", "configurations", "score", "score_all"]


class Configuration(NamedTuple):
    """One row of an evaluation: a fingerprint configuration and the method that makes it.

    Attributes:
        label: the row's name in the reports (``"k=3 init=data target=random"``).
        config: the :class:`~ipguard_jax.FingerprintConfig`.
        method: what :func:`~ipguard_jax.generate` runs (``"ipguard"`` or a method object).
        row: the row's fields besides the results: ``method``, ``k``, ``init``, ``target``
            (and, for conferrable rows, ``members_build_s``).
    """

    label: str
    config: Any
    method: Any
    row: dict[str, Any]


def configurations(setting: protocol.Setting, *, conferrable: Any = None,
                   members_build_s: float = 0.0) -> list[Configuration]:
    """The configurations an evaluation of ``setting`` scores, in the order of its report.

    Args:
        setting: the run's setting (its grid, ``num``, ``steps``, baselines, ``eps`` and
            ``conferrable_ks``).
        conferrable: the :class:`~ipguard_jax.conferrable.Conferrable` method of the
            conferrable rows (none: no conferrable rows).
        members_build_s: what its surrogates and references took to build, recorded in each
            conferrable row.

    Returns:
        The IPGuard grid (``k`` x ``init`` x ``target``), then the baselines (start images from
        the test split; adversarial ones keep only successful attacks, as IPGuard keeps
        converged points), then one conferrable row per ``setting.conferrable_ks``.
    """
    import ipguard_jax as ipg
    from ipguard_jax import methods

    rows = []
    for k in setting.ks:
        for init in setting.inits:
            for target in setting.targets:
                config = ipg.FingerprintConfig(num=setting.num, k=k, steps=setting.steps,
                                               init=init, target=target)
                rows.append(Configuration(f"k={k:g} init={init} target={target}", config,
                                          "ipguard", {"method": "ipguard", "k": k,
                                                      "init": init, "target": target}))
    eps = setting.eps
    baseline_methods = {
        "random": [("random init=data", methods.RandomPoints(), "data"),
                   ("random init=noise", methods.RandomPoints(), "noise")],
        "fgsm": [(f"fgsm eps={eps:.3g}", methods.FGSM(eps=eps), "data")],
        "pgd": [(f"pgd-linf eps={eps:.3g}", methods.PGD(eps=eps, steps=20), "data")],
        "cw": [("cw-l2 kappa=0 target=random", methods.CW(kappa=0.0), "data"),
               ("cw-l2 kappa=5 target=random", methods.CW(kappa=5.0), "data")],
    }
    for name in setting.baselines:
        if name == "mistakes":
            rows += _mistake_rows(setting)
            continue
        for label, method, init in baseline_methods[name]:
            config = ipg.FingerprintConfig(num=setting.num, init=init, target="random")
            rows.append(Configuration(label, config, method,
                                      {"method": name, "k": None, "init": init,
                                       "target": "random" if name == "cw" else None}))
    if conferrable is not None and setting.conferrable_ks:
        target = setting.targets[0]
        for k in setting.conferrable_ks:
            # Compaction: most candidates run every step (they meet the owner's margin but
            # not every member's), so a chunk would wait for its slowest; and a run stopped
            # part-way resumes from its last refill, not its last whole chunk.
            config = ipg.FingerprintConfig(num=setting.num, k=k, steps=setting.steps,
                                           init="data", target=target, compact=True)
            rows.append(Configuration(f"conferrable k={k:g} init=data target={target}",
                                      config, conferrable,
                                      {"method": "conferrable", "k": k, "init": "data",
                                       "target": target, "members_build_s": members_build_s}))
    return rows


def _mistake_rows(setting: protocol.Setting) -> list[Configuration]:
    """The rows started from the test images the owner labels wrongly
    (:func:`ipguard_jax.seeds.owner_mistakes`): the images themselves, labelled by the owner,
    and IPGuard's points from them at the grid's smallest ``k`` (closest to the images)."""
    import ipguard_jax as ipg
    from ipguard_jax import methods

    k = min(setting.ks) if setting.ks else 1.0
    target = setting.targets[0] if setting.targets else "random"
    seeds = {"init": "data", "seeds": "owner-mistakes"}
    return [
        Configuration("random seeds=owner-mistakes",
                      ipg.FingerprintConfig(num=setting.num, init="data"),
                      methods.RandomPoints(),
                      {"method": "mistakes", "k": None, "target": None, **seeds}),
        Configuration(f"k={k:g} seeds=owner-mistakes target={target}",
                      ipg.FingerprintConfig(num=setting.num, k=k, steps=setting.steps,
                                            init="data", target=target),
                      "ipguard", {"method": "ipguard", "k": k, "target": target, **seeds}),
    ]


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """sha256 over the package's ``.py`` files (their paths and bytes)."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class RowStore:
    """The finished rows of an evaluation, one file each, so that a run stopped part-way
    resumes at the rows it had not finished, and a row stopped part-way resumes its
    generation from a checkpoint.

    A row is known by a key over everything that decides it: the row's label, config and
    method (with its members' parameter digests), the owner's and every scored model's
    parameter digests, the generation key, the start data and their labels, and the
    library's source (a digest of its ``.py`` files: rows made by other code are made again). A file is used only if it is a regular file of at most 16 MiB holding a row for
    that key; anything else is ignored (and the row is made again).

    Args:
        root: the directory (made on the first write), e.g. ``<model cache>/rows``.

    Example:
        >>> import tempfile
        >>> store = RowStore(tempfile.mkdtemp())
        >>> store.load("0" * 64) is None
        True
    """

    FORMAT = "ipguard_jax.evaluation.row-1"
    MAX_BYTES = 16 * 2 ** 20

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"RowStore({str(self.root)!r})"

    @staticmethod
    def key(configuration: Configuration, owner: Any, pirated: Mapping[str, Any],
            independent: Mapping[str, Any], *, key: Any, data: Any = None,
            labels: Any = None) -> str | None:
        """The row's key (sha256 hex), or ``None`` when something that decides it has no
        digest (a suspect that is not a :class:`~ipguard_jax.Classifier`, a key that is not
        an int)."""
        import ipguard_jax as ipg
        from ipguard_jax.storage.canonical import canonical_json
        from ipguard_jax.storage.digest import array_digest, sha256_hex

        label, config, method, fields = configuration
        models = {"owner": owner, **{f"pirated/{n}": m for n, m in pirated.items()},
                  **{f"independent/{n}": m for n, m in independent.items()}}
        if isinstance(key, bool) or not isinstance(key, int) or not all(
                isinstance(m, ipg.Classifier) for m in models.values()):
            return None
        try:
            described = {
                "version": ipg.__version__, "source": _source_digest(), "label": label,
                "config": config.to_dict(),
                "method": method if isinstance(method, str) else method.to_dict(),
                "fields": {n: v for n, v in fields.items() if n != "members_build_s"},
                "models": {n: m.params_hash for n, m in models.items()}, "key": key,
                "data": None if data is None else array_digest(data),
                "labels": None if labels is None else array_digest(labels)}
            return sha256_hex(canonical_json(described, allow_nan=False))
        except (TypeError, ValueError):  # something without a canonical form: not kept
            return None

    def _path(self, key: str) -> Path:
        if not (isinstance(key, str) and len(key) == 64
                and all(c in "0123456789abcdef" for c in key)):
            raise ValueError(f"a row key is 64 hex digits, got {key!r}")
        return self.root / f"{key}.json"

    def checkpoint(self, key: str) -> Path:
        """Where the row's generation keeps its checkpoint while it runs."""
        return self.root / f"{key}.checkpoint"

    def load(self, key: str) -> tuple[dict[str, Any], Any] | None:
        """``(row, report)`` of a finished row, or ``None``."""
        from ipguard_jax.evaluation.report import EvaluationReport
        from ipguard_jax.storage.files import UnsafeFileError, read_regular

        path = self._path(key)
        try:
            record = json.loads(read_regular(path, max_bytes=self.MAX_BYTES))
        except (FileNotFoundError, UnsafeFileError, OSError, ValueError):
            return None
        if not (isinstance(record, dict) and record.get("format") == self.FORMAT
                and record.get("key") == key and isinstance(record.get("row"), dict)):
            return None
        report = record.get("report")
        if report is not None:
            try:
                report = EvaluationReport(**report)
            except TypeError:
                return None
        return record["row"], report

    def save(self, key: str, row: Mapping[str, Any], report: Any) -> None:
        """Keeps a finished row (written atomically)."""
        from ipguard_jax.storage.files import write_atomic

        def plain(value):
            if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
                return value.item()
            if hasattr(value, "tolist"):
                return value.tolist()
            raise TypeError(f"a row field of type {type(value).__name__} is not JSON-able")

        record = {"format": self.FORMAT, "key": key, "row": dict(row),
                  "report": None if report is None else dataclasses.asdict(report)}
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(key), json.dumps(record, default=plain))


def score(configuration: Configuration, owner: Any, pirated: Mapping[str, Any],
          independent: Mapping[str, Any], *, key: Any, data: Any = None, labels: Any = None,
          store: RowStore | None = None) -> tuple[dict[str, Any], Any]:
    """Fingerprints ``owner`` with one configuration and queries every model with the set.

    Prints one line with the row's metrics (or that no point converged).

    Args:
        configuration: what to generate (:func:`configurations`).
        owner: the owner's :class:`~ipguard_jax.Classifier`.
        pirated: name -> classifier of each pirated copy.
        independent: name -> classifier of each independent model.
        key: the generation key (the same for every row: the rows differ by configuration).
        data: start images of configurations with ``init="data"``.
        labels: their true labels; the rows seeded at the owner's mistakes
            (``row["seeds"] == "owner-mistakes"``) start from the images among ``data`` the
            owner labels wrongly, and need them. Such a row makes at most one fingerprint per
            mistake and records how many there were (``row["seed_images"]``).
        store: where finished rows are kept (:class:`RowStore`): a row found there is not
            made again, and a row's generation checkpoints there while it runs.

    Returns:
        ``(row, report)``: the result row, and the
        :class:`~ipguard_jax.evaluation.EvaluationReport` (``None`` when no point converged:
        nothing to verify, the row's metrics are NaN).
    """
    row_key = None if store is None else RowStore.key(
        configuration, owner, pirated, independent, key=key, data=data, labels=labels)
    if row_key is not None:
        done = store.load(row_key)
        if done is not None:
            print(f"{configuration.label}: finished earlier ({store})", flush=True)
            return done
    row, rep = _score(configuration, owner, pirated, independent, key=key, data=data,
                      labels=labels,
                      checkpoint=None if row_key is None else store.checkpoint(row_key))
    if row_key is not None:
        store.save(row_key, row, rep)
    return row, rep


#: The metrics of a row with no fingerprint to verify.
_NO_METRICS = {"aruc_roc": math.nan, "aruc_min": math.nan, "tpr_at_1pct_fpr": math.nan,
               "best_threshold": math.nan, "owner_rate": math.nan}


def _score(configuration, owner, pirated, independent, *, key, data, labels, checkpoint):
    import ipguard_jax as ipg
    from ipguard_jax import evaluation as ev

    label, config, method, fields = configuration
    if fields.get("seeds") == "owner-mistakes":
        from ipguard_jax.seeds import owner_mistakes

        if data is None or labels is None:
            raise ValueError(f"{label}: the owner-mistakes rows need the test images and "
                             f"their labels (data=..., labels=...)")
        data = data[owner_mistakes(owner, data, labels)]
        fields = {**fields, "seed_images": len(data)}
        if 0 < len(data) < config.num:  # as many fingerprints as there are mistakes
            config = dataclasses.replace(config, num=len(data))
        if not len(data):
            print(f"{label}: the owner labels every test image right", flush=True)
            return {"config": label, **fields, "num_fingerprints": 0,
                    "convergence_rate": math.nan, "generation_s": 0.0, **_NO_METRICS}, None
    tg = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ipg.ConvergenceWarning)
        fp = ipg.generate(owner, config, key=key,
                          data=data if config.init == "data" else None,
                          method=method, progress=False, checkpoint=checkpoint)
    gen_s = time.perf_counter() - tg
    row = {"config": label, **fields, "num_fingerprints": len(fp),
           "convergence_rate": fp.convergence_rate, "generation_s": gen_s}
    if "screening" in fp.metadata:
        row["screening"] = fp.metadata["screening"]
    if len(fp) == 0:  # no point reached the margin: nothing to verify
        print(f"{label}: no fingerprint converged", flush=True)
        return {**row, **_NO_METRICS}, None
    rep = ev.evaluate(fp, owner, pirated, independent, meta={
        "config": config.to_dict(), "method": fp.metadata["method"],
        "convergence_rate": fp.convergence_rate, "num_fingerprints": len(fp),
        "generation_s": gen_s})
    print(f"{label}: ARUC(roc)={rep.aruc_roc:.3f} ARUC(min)={rep.aruc_min:.3f} "
          f"TPR@1%FPR={rep.tpr_at_1pct_fpr:.2f} conv={fp.convergence_rate:.2f} "
          f"gen={gen_s:.1f}s", flush=True)
    return {**row, "aruc_roc": rep.aruc_roc, "aruc_min": rep.aruc_min,
            "tpr_at_1pct_fpr": rep.tpr_at_1pct_fpr, "best_threshold": rep.best_threshold,
            "owner_rate": rep.owner_rate, "intervals": rep.intervals}, rep


def score_all(configs: list[Configuration], owner: Any, pirated: Mapping[str, Any],
              independent: Mapping[str, Any], *, key: Any, data: Any = None,
              labels: Any = None, store: RowStore | None = None
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`score` for each configuration, in order.

    Returns:
        ``(rows, reports)``: one row per configuration, and label -> report for the rows that
        have one.
    """
    rows, reports = [], {}
    for configuration in configs:
        row, rep = score(configuration, owner, pirated, independent, key=key, data=data,
                         labels=labels, store=store)
        rows.append(row)
        if rep is not None:
            reports[configuration.label] = rep
    return rows, reports
