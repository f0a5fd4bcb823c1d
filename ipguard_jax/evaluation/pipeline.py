"""Robustness and uniqueness of IPGuard fingerprints (ARUC): the whole evaluation of a setting.

:func:`run` makes (or loads) every model of a :class:`~ipguard_jax.evaluation.protocol.Setting`
(:mod:`~ipguard_jax.evaluation.modelset`), fingerprints the owner under every configuration and
scores each set on the pirated and independent models (:mod:`~ipguard_jax.evaluation.scoring`),
then writes the results: ARUC both as ROC-AUC and as the integral of min(R, U), TPR at 1% FPR,
the convergence rate and the generation time (:func:`~ipguard_jax.evaluation.report.write_run`).
:func:`plan` says what a run would train before it does, and how long that would take.

Models are cached by recipe (:class:`ipguard_jax.evaluation.ModelCache`, under
``$IPGUARD_JAX_CACHE/models`` or ``~/.cache/ipguard_jax/models``): a re-run with other
fingerprint settings only fingerprints and queries.

Entry points: ``ipguard evaluate`` (writing into a directory) and, in the repository,
``benchmarks/aruc_cifar10.py`` (writing into ``benchmarks/results``).

Example:
    The quick run on digits takes a few minutes on 2 cores:

    >>> from ipguard_jax.evaluation import pipeline, protocol
    >>> setting = protocol.make_setting(quick=True, ks=[3], inits=["data"])
    >>> result = pipeline.run(setting, out="results/aruc_digits_quick",
    ...                       command="ipguard evaluate --quick")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipguard_jax.evaluation import protocol
from ipguard_jax.evaluation.modelset import build_models
from ipguard_jax.evaluation.report import write_run
from ipguard_jax.evaluation.scoring import RowStore, configurations, score_all

__all__ = ["QUICK_NAME", "FULL_NAME", "run", "plan", "format_plan"]

#: Output file names (without extension) of the quick (digits) and the full run.
QUICK_NAME = "aruc_digits_quick"
FULL_NAME = "aruc_cifar10"

#: Post-processings that only edit the owner's weights: they train nothing.
_NO_TRAINING = ("prune", "int8")


def run(setting: protocol.Setting, *, out: str | os.PathLike, command: str, seed: int = 0,
        cache_dir: str | os.PathLike | None = None, zoo: str | os.PathLike | None = None,
        from_zoo: bool = False) -> dict[str, Any]:
    """Trains (or loads) the models, fingerprints, verifies and writes the reports.

    Everything is resumable: a model stopped part-way resumes from its epoch checkpoints, and
    each finished row (configuration) is kept in ``<cache_dir>/rows`` (a
    :class:`~ipguard_jax.evaluation.scoring.RowStore`), so a run stopped part-way and started
    again with the same arguments makes only the rows it had not finished, and a row stopped
    part-way resumes its generation from its checkpoint.

    Args:
        setting: what to run (see :func:`~ipguard_jax.evaluation.protocol.make_setting`).
        out: output path prefix: ``<out>.json``, ``<out>.md`` and ``<out>.png`` are written
            (its parent directory is created).
        command: the command line to record in the results.
        seed: seed of the data splits, the owner, the pirates and the fingerprints.
        cache_dir: model cache directory (default
            :func:`~ipguard_jax.evaluation.default_model_dir`).
        zoo: a :class:`~ipguard_jax.evaluation.ModelZoo` directory: models found there are
            loaded instead of trained, and each model the run obtains otherwise is added to
            it with its test accuracy and training time.
        from_zoo: train nothing (every model must be in the cache or the zoo).

    Returns:
        The results, as written to ``<out>.json`` (NaN as null there).

    Raises:
        ValueError: model names that repeat (an independent architecture label that clashes
            with another model's), or errors of the data loaders.
        LookupError: ``from_zoo`` and a model the zoo does not hold.

    Example:
        >>> result = run(protocol.make_setting(quick=True), out="/tmp/aruc",
        ...              command="ipguard evaluate --quick")  # doctest: +SKIP
        >>> sorted(result["configs"][0])[:3]  # doctest: +SKIP
        ['aruc_min', 'aruc_roc', 'best_threshold']
    """
    out = Path(out)
    t_start = time.perf_counter()

    import platform

    import jax

    import ipguard_jax as ipg
    from ipguard_jax import train

    if (hint := train.malloc_hint()) is not None:
        print(f"note: {hint}", flush=True)
    splits = protocol.load_data(setting, seed)
    cache = protocol.model_cache(cache_dir, zoo, from_zoo)
    models = build_models(setting, splits, seed=seed, cache=cache)
    timings = dict(models.timings)
    input_shape = tuple(splits.owner.x.shape[1:])

    def clf(model):
        return ipg.Classifier.from_nnx(model, input_shape=input_shape)

    owner = clf(models.owner)
    pirated = {n: clf(m) for n, m in models.pirated.items()}
    independent = {n: clf(m) for n, m in models.independent.items()}
    conferrable, members_s = None, 0.0
    if setting.conferrable_ks:
        from ipguard_jax.conferrable import Conferrable

        conferrable = Conferrable(
            surrogates={n: clf(m) for n, m in models.surrogates.items()},
            references={n: clf(m) for n, m in models.references.items()})
        members_s = sum(models.build_s.get(n) or 0.0
                        for n in (*models.surrogates, *models.references))

    t0 = time.perf_counter()
    rows, reports = score_all(
        configurations(setting, conferrable=conferrable, members_build_s=members_s),
        owner, pirated, independent, key=seed, data=splits.test.x, labels=splits.test.y,
        store=RowStore(cache.root / "rows"))
    timings["fingerprint_and_verify_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    specs = models.specs
    result = {
        "command": command,
        "setting": dataclasses.asdict(setting),
        "platform": {"python": platform.python_version(), "jax": jax.__version__,
                     "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(),
                     "malloc": train.malloc_in_use()},
        "version": ipg.__version__,
        "data_sizes": {"owner": len(splits.owner), "pirate": len(splits.pirate),
                       "independent": len(splits.independent), "test": len(splits.test)},
        "cache": {"root": str(cache.root), "hits": cache.hits, "misses": cache.misses,
                  "zoo": None if cache.zoo is None else str(zoo), "zoo_hits": cache.zoo_hits,
                  "precision": protocol.PRECISION},
        "timings_s": timings,
        "model_build_s": models.build_s,
        "accuracy": models.accuracy,
        "pirated": {n: {"kind": k, "params": {a: b for a, b in p.items()
                                              if a != "student_kwargs"}}
                    for n, k, p in specs["pirated"]},
        "independent": {n: {"arch": a, "data": d, "seed": s}
                        for n, a, _, _, d, s in specs["independent"]},
        "surrogates": {n: {"kind": k, "params": {a: b for a, b in p.items()
                                                  if a != "student_kwargs"}}
                       for n, k, p in specs["surrogates"]},
        "references": {n: {"arch": a, "data": "owner split", "seed": sd}
                       for n, a, _, sd in specs["references"]},
        "configs": rows,
        "reports": {label: rep.to_dict() for label, rep in reports.items()},
    }
    write_run(out, result, reports)
    print(f"wrote {out}.{{json,md,png}} in {timings['total_s']:.0f} s")
    return result


def plan(setting: protocol.Setting, *, seed: int = 0,
         cache_dir: str | os.PathLike | None = None, probe_batches: int = 2,
         zoo: str | os.PathLike | None = None,
         load_monitor: Callable[[], Callable[[], float | None]] | None = None
         ) -> dict[str, Any]:
    """What a run would train, what the model cache already holds, and how long the rest takes.

    Nothing is trained or written. A model stopped part-way (its epoch checkpoints are in the
    cache's ``training`` directory) counts only the epochs it has left. The time estimate comes
    from a short probe of each architecture that still has to train (``probe_batches`` batches,
    timed on a second, compiled epoch of :func:`ipguard_jax.train.fit`); a pirate counts as
    training its model for the pirate epochs (fine-tuning the last layer costs less, so that is
    an upper bound).
    Fingerprinting and queries come on top.

    Args:
        setting: the run's setting (see :func:`~ipguard_jax.evaluation.protocol.make_setting`).
        seed: the run's seed (the splits and the cache keys depend on it).
        cache_dir: the model cache (default :func:`~ipguard_jax.evaluation.default_model_dir`).
        probe_batches: batches per probe epoch.
        zoo: a :class:`~ipguard_jax.evaluation.ModelZoo` directory; its models count as cached.
        load_monitor: measures what other processes take of the machine while the probes run
            (a busy machine makes the probes slow and the estimate pessimistic): called as
            the probes start, it returns a function that, called when they end, gives how
            many cores other processes kept busy meanwhile, or ``None`` where that cannot be
            told. Without one the plan does not say.

    Returns:
        ``{"models": [...], "train_images_per_s": {...}, "compile_s": {...},
        "estimated_s": ..., "estimated_uncached_s": ...}``; each model row has ``role``,
        ``name``, ``arch``, ``kwargs``, ``train_images``, ``epochs``, ``epochs_done`` (those
        checkpointed by a run that stopped), ``cached`` and ``estimated_s`` (the remaining
        training plus one compilation; 0 for cached models). ``other_cores_while_probing`` is
        what ``load_monitor`` measured (``None`` without a monitor or a probe).

    Example:
        >>> p = plan(protocol.make_setting(quick=True),
        ...          cache_dir="/tmp/empty_cache")  # doctest: +SKIP
        >>> print(format_plan(p))  # doctest: +SKIP
    """
    from ipguard_jax import evaluation as ev
    from ipguard_jax import train
    from ipguard_jax.evaluation import factories
    from ipguard_jax.evaluation import postprocess as pp

    owner_ds, pirate_ds, indep_ds, _ = protocol.load_data(setting, seed)
    num_classes = owner_ds.num_classes
    cache = protocol.model_cache(cache_dir, zoo, False)
    rows = []

    def epochs_done(recipe, cached: bool) -> int:
        history = None if cached else train.checkpoint_history(
            factories.training_dir(cache, recipe))
        return len(history["epoch"]) if history else 0

    def trained_row(role, name, arch, kwargs, ds, data_name, model_seed):
        config = protocol.train_config(setting, model_seed, len(ds))
        recipe = protocol.trained_recipe(arch, kwargs, num_classes, ds, data_name, model_seed,
                                         config)
        cached = recipe in cache
        rows.append({"role": role, "name": name, "arch": arch, "kwargs": kwargs,
                     "train_images": len(ds), "epochs": setting.epochs,
                     "epochs_done": epochs_done(recipe, cached), "cached": cached})
        return recipe

    owner_recipe = trained_row("owner", "owner", setting.owner, setting.owner_kwargs, owner_ds,
                               "owner split", seed)
    owner_hash = None
    if rows[0]["cached"]:
        def absent():
            raise RuntimeError("the cached owner vanished while planning")

        owner_hash = ev.model_hash(cache.get_or_create(
            owner_recipe, absent,
            lambda: pp.build_model(setting.owner, num_classes, 0, **setting.owner_kwargs)))
    pirate_config = protocol.pirate_config(setting, seed)
    pirate_hash = ev.array_digest(pirate_ds.x, pirate_ds.y)
    for name, kind, params in protocol.pirate_specs(setting):
        recipe = protocol.pirate_recipe(owner_hash or "", kind, params, pirate_hash,
                                        pirate_config)
        student = "student" in params
        cached = owner_hash is not None and recipe in cache
        rows.append({"role": "pirated", "name": name,
                     "arch": params["student"] if student else setting.owner,
                     "kwargs": params["student_kwargs"] if student else setting.owner_kwargs,
                     "train_images": len(pirate_ds),
                     "epochs": 0 if kind in _NO_TRAINING else setting.pirate_epochs,
                     "epochs_done": epochs_done(recipe, cached or owner_hash is None),
                     "cached": cached})
    for name, arch, kwargs, ds, data_name, model_seed in protocol.independent_specs(
            setting, owner_ds, indep_ds, seed):
        trained_row("independent", name, arch, kwargs, ds, data_name, model_seed)

    owner_data = ev.array_digest(owner_ds.x, owner_ds.y)
    for n, (name, kind, params) in enumerate(protocol.surrogate_specs(setting)):
        config = dataclasses.replace(pirate_config, seed=seed + 100 + n)
        recipe = factories.surrogate_recipe(owner_hash or "", kind, params, owner_data, config)
        cached = owner_hash is not None and recipe in cache
        rows.append({"role": "surrogate", "name": name,
                     "arch": params.get("student", setting.owner),
                     "kwargs": params.get("student_kwargs", setting.owner_kwargs),
                     "train_images": len(owner_ds),
                     "epochs": 0 if kind in _NO_TRAINING else setting.pirate_epochs,
                     "epochs_done": epochs_done(recipe, cached or owner_hash is None),
                     "cached": cached})
    for name, arch, kwargs, model_seed in protocol.reference_specs(setting):
        trained_row("reference", name, arch, kwargs, owner_ds, "owner split", model_seed)

    rates: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    n = min(len(owner_ds), setting.batch_size * probe_batches)
    other_cores = load_monitor() if load_monitor is not None else None
    for row in rows:
        label = row["arch"] + (json.dumps(row["kwargs"], sort_keys=True) if row["kwargs"] else "")
        row["estimated_s"] = 0.0
        if row["cached"] or row["epochs"] <= row["epochs_done"]:
            continue
        if label not in rates:
            model = pp.build_model(row["arch"], num_classes, 0, **row["kwargs"])
            config = dataclasses.replace(protocol.train_config(setting, 0, n), epochs=2)
            seconds = train.fit(model, owner_ds.x[:n], owner_ds.y[:n], config,
                                progress=False).history["seconds"]
            rates[label] = n // config.batch_size * config.batch_size / seconds[-1]
            compile_s[label] = max(0.0, seconds[0] - seconds[-1])
        left = row["epochs"] - row["epochs_done"]
        row["estimated_s"] = row["train_images"] * left / rates[label] + compile_s[label]
    return {"setting": dataclasses.asdict(setting), "seed": seed,
            "train_images_per_s": rates, "compile_s": compile_s,
            "other_cores_while_probing": other_cores() if rates and other_cores else None,
            "cpu_count": os.cpu_count(),
            "estimated_s": sum(r["estimated_s"] for r in rows),
            "estimated_uncached_s": sum(r["estimated_s"] for r in rows if not r["cached"]),
            "models": rows}


def format_plan(p: dict[str, Any]) -> str:
    """A Markdown table of :func:`plan`'s result, with the totals.

    Example:
        >>> print(format_plan({"models": [{"role": "owner", "name": "owner", "arch": "mlp",
        ...     "train_images": 700, "epochs": 30, "epochs_done": 10, "cached": False,
        ...     "estimated_s": 90.0}],
        ...     "estimated_uncached_s": 90.0, "train_images_per_s": {"mlp": 233.3}}))
        | role | model | arch | images | epochs | cached | est. training |
        |---|---|---|---|---|---|---|
        | owner | owner | mlp | 700 | 30 | no, 10/30 epochs done | 1.5 min |
        <BLANKLINE>
        To train: 1 of 1 models, about 1.5 min on this machine, plus fingerprinting.
    """
    def duration(seconds: float) -> str:
        if seconds < 60:
            return f"{seconds:.0f} s"
        return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"

    lines = ["| role | model | arch | images | epochs | cached | est. training |",
             "|---|---|---|---|---|---|---|"]
    for r in p["models"]:
        est = "-" if r["cached"] or not r["estimated_s"] else duration(r["estimated_s"])
        done = r.get("epochs_done", 0)
        cached = ("yes" if r["cached"] else f"no, {done}/{r['epochs']} epochs done" if done
                  else "no")
        lines.append(f"| {r['role']} | {r['name']} | {r['arch']} | {r['train_images']} | "
                     f"{r['epochs']} | {cached} | {est} |")
    todo = [r for r in p["models"] if not r["cached"]]
    lines += ["", f"To train: {len(todo)} of {len(p['models'])} models, about "
                  f"{duration(p['estimated_uncached_s'])} on this machine, plus fingerprinting."]
    other = p.get("other_cores_while_probing")
    if other is not None and other >= 0.25:
        lines.append(f"Other processes kept {other:.1f} of {p.get('cpu_count') or '?'} cores "
                     f"busy while the throughput was probed: the estimate is pessimistic if "
                     f"the run gets the machine to itself.")
    return "\n".join(lines)
