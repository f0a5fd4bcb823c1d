"""The models of an evaluation run: the owner, its pirated copies, the independent models and
the defender's surrogates and references, each trained once and then loaded by its recipe.

:func:`build_models` makes (or loads from the :class:`~ipguard_jax.evaluation.ModelCache` and
its :class:`~ipguard_jax.evaluation.ModelZoo`) every model of a
:class:`~ipguard_jax.evaluation.protocol.Setting`, in the order the protocol lists them, and
records what each cost when it was built and its test accuracy. A model that trains
checkpoints every epoch, so a run stopped part-way resumes where it stopped; each model the
run obtains is added to the zoo (when there is one) with its accuracy and training time.

Progress goes to stdout, one line per model made and per finished epoch (long runs are
watched through their logs).

Example:
    >>> from ipguard_jax.evaluation import protocol
    >>> setting = protocol.make_setting(quick=True, epochs=1, pirate_epochs=1)
    >>> models = build_models(setting, protocol.load_data(setting, 0), seed=0,
    ...                       cache=protocol.model_cache("/tmp/cache"))  # doctest: +SKIP
    >>> sorted(models.pirated)[:3]  # doctest: +SKIP
    ['FTAL', 'FTLL', 'RTAL']
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from typing import Any

from ipguard_jax.evaluation import protocol
from ipguard_jax.evaluation.report import data_label

__all__ = ["ModelSet", "build_models"]


@dataclasses.dataclass
class ModelSet:
    """The NNX models of a run and what they cost.

    Attributes:
        owner: the owner.
        pirated: name -> pirated copy (scored).
        independent: name -> independent model (scored).
        surrogates: name -> surrogate of the conferrable rows (never scored).
        references: name -> reference model of the conferrable rows (never scored).
        accuracy: name -> test accuracy (``"owner"`` for the owner).
        build_s: name -> seconds it took to build when it was made (as the cache recorded it;
            ``None`` for entries of older versions).
        timings: seconds this call spent on each group: ``owner_s``, ``pirated_s``,
            ``independent_s`` and, with conferrable rows, ``surrogates_s`` and
            ``references_s``.
        specs: the protocol's specs the models were made from: ``"pirated"``,
            ``"independent"``, ``"surrogates"`` and ``"references"`` (see
            :mod:`~ipguard_jax.evaluation.protocol`).
    """

    owner: Any
    pirated: dict[str, Any]
    independent: dict[str, Any]
    surrogates: dict[str, Any]
    references: dict[str, Any]
    accuracy: dict[str, float]
    build_s: dict[str, float | None]
    timings: dict[str, float]
    specs: dict[str, list[tuple]]


def _epoch_reporter(name: str, epochs: int) -> Callable[[int, dict[str, float]], None]:
    """An ``on_epoch_end`` that prints one line per finished epoch of model ``name``."""
    def report(epoch: int, metrics: dict[str, float]) -> None:
        print(f"  {name} epoch {epoch}/{epochs}: loss {metrics['loss']:.3f}, "
              f"train accuracy {metrics['accuracy']:.3f}, {metrics['seconds']:.0f} s",
              flush=True)
    return report


class _Builder:
    """Makes the models of one run through its cache, recording costs and accuracies."""

    def __init__(self, setting: protocol.Setting, splits: protocol.Splits, cache):
        self.setting, self.splits, self.cache = setting, splits, cache
        self.num_classes = splits.owner.num_classes
        self.build_s: dict[str, float | None] = {}
        self.accuracy: dict[str, float] = {}

    def note_cost(self, name: str, recipe: dict[str, Any]) -> None:
        # The wall time of the build; for a training run resumed across calls, the time of
        # all its epochs if that is more (the wall time then covers the last call only).
        info = self.cache.info(recipe) or {}
        known = [info[k] for k in ("build_s", "train_s") if info.get(k) is not None]
        self.build_s[name] = max(known) if known else None

    def keep(self, name: str, recipe: dict[str, Any], model, arch: str) -> None:
        """Records the test accuracy, and adds the model to the zoo if it is not there yet."""
        from ipguard_jax import train

        test = self.splits.test
        self.accuracy[name] = train.evaluate(model, test.x, test.y)
        zoo = self.cache.zoo
        if zoo is not None and recipe not in zoo:
            path = zoo.add(name, recipe, model, {
                "arch": arch, "test_accuracy": self.accuracy[name], "train_s": self.build_s[name],
                "data": data_label(self.setting.data), "machine": f"{os.cpu_count()} CPUs, "
                f"{platform.machine()}", "malloc": train.malloc_in_use()})
            print(f"  added {name} to the zoo: {path.name}", flush=True)

    def member(self, arch_of: Callable[[str], str]):
        """An ``on_model`` for :mod:`~ipguard_jax.evaluation.factories`: cost, accuracy, zoo."""
        def on_model(name, recipe, model):
            self.note_cost(name, recipe)
            self.keep(name, recipe, model, arch_of(name))
        return on_model

    def trained(self, name: str, arch: str, kwargs: dict[str, Any], ds, data_name: str,
                seed: int):
        """A model trained from scratch (the owner, an independent model)."""
        from ipguard_jax.evaluation import postprocess as pp

        config = protocol.train_config(self.setting, seed, len(ds))
        recipe = protocol.trained_recipe(arch, kwargs, self.num_classes, ds, data_name, seed,
                                         config)
        if recipe not in self.cache:
            print(f"training {name} ({arch}, {len(ds)} images of the {data_name}, "
                  f"{config.epochs} epochs)", flush=True)
        model = protocol.train_cached(
            self.cache, recipe,
            lambda: pp.build_model(arch, self.num_classes, seed, **kwargs), ds, config,
            on_epoch_end=_epoch_reporter(name, config.epochs))
        self.note_cost(name, recipe)
        self.keep(name, recipe, model, arch)
        return model

    def pirated(self, owner, owner_hash: str, data_hash: str, name: str, kind: str,
                params: dict[str, Any], config):
        """A pirated copy of the owner; one that trains checkpoints every epoch, so a stopped
        run resumes it."""
        from ipguard_jax.evaluation import factories
        from ipguard_jax.evaluation import postprocess as pp

        setting, num_classes, pirate_ds = self.setting, self.num_classes, self.splits.pirate
        recipe = protocol.pirate_recipe(owner_hash, kind, params, data_hash, config)
        if kind == "distill" and "student" in params:
            def like(a=params["student"], kw=params["student_kwargs"]):
                return pp.build_model(a, num_classes, 0, **kw)
        else:
            def like():
                return pp.build_model(setting.owner, num_classes, 0, **setting.owner_kwargs)
        if recipe not in self.cache:
            print(f"making the pirated copy {name} ({kind})", flush=True)

        def make(partial, report=_epoch_reporter(name, config.epochs)):
            cfg = dataclasses.replace(config, checkpoint_dir=partial, on_epoch_end=report)
            return pp.make_pirate(kind, owner, pirate_ds.x, pirate_ds.y, cfg, **params)

        model = factories.cached_resumable(self.cache, recipe, make, like)
        self.note_cost(name, recipe)
        self.keep(name, recipe, model, params["student"] if "student" in params
                  else setting.owner)
        return model


def build_models(setting: protocol.Setting, splits: protocol.Splits, *, seed: int,
                 cache, defender: bool = True) -> ModelSet:
    """Makes or loads every model of a run: the owner first, then its pirated copies, the
    independent models and (with conferrable rows) the surrogates and references.

    Args:
        setting: what to build (see :func:`~ipguard_jax.evaluation.protocol.make_setting`).
        splits: its data (:func:`~ipguard_jax.evaluation.protocol.load_data`).
        seed: the run's seed (of the owner and the pirates).
        cache: the :class:`~ipguard_jax.evaluation.ModelCache`
            (:func:`~ipguard_jax.evaluation.protocol.model_cache`); its zoo, if any, receives
            every model it does not hold yet.
        defender: also make the surrogates and references of the conferrable rows (when
            the setting has any); ``False`` makes only the owner and the scored models (the
            pirated copies are the same either way), and leaves ``surrogates`` and
            ``references`` empty.

    Returns:
        The :class:`ModelSet`.

    Raises:
        ValueError: model names that repeat (an independent architecture label that clashes
            with another model's).
        RuntimeError: a surrogate or reference that is also a scored model.
        LookupError: a cache that builds nothing and a model it does not hold.
    """
    from ipguard_jax import evaluation as ev
    from ipguard_jax.evaluation import factories

    owner_ds, pirate_ds, indep_ds, _ = splits
    pirates = protocol.pirate_specs(setting)
    indep_specs = protocol.independent_specs(setting, owner_ds, indep_ds, seed)
    sur_specs = protocol.surrogate_specs(setting) if defender else []
    ref_specs = protocol.reference_specs(setting) if defender else []
    names = [spec[0] for spec in indep_specs] + [spec[0] for spec in pirates] + [
        spec[0] for spec in sur_specs] + [spec[0] for spec in ref_specs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names repeat: {sorted(n for n in names if names.count(n) > 1)}")

    builder = _Builder(setting, splits, cache)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    owner = builder.trained("owner", setting.owner, setting.owner_kwargs, owner_ds,
                            "owner split", seed)
    timings["owner_s"] = time.perf_counter() - t0
    owner_hash = ev.model_hash(owner)

    pirate_config = protocol.pirate_config(setting, seed)
    pirate_hash = ev.array_digest(pirate_ds.x, pirate_ds.y)
    t0 = time.perf_counter()
    pirated = {name: builder.pirated(owner, owner_hash, pirate_hash, name, kind, params,
                                     pirate_config)
               for name, kind, params in pirates}
    timings["pirated_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    independent = {name: builder.trained(name, arch, kwargs, ds, data_name, model_seed)
                   for name, arch, kwargs, ds, data_name, model_seed in indep_specs}
    timings["independent_s"] = time.perf_counter() - t0

    # The defender's own models for the conferrable rows, made from the owner and its split
    # only; never scored (the scored models above are checked to be none of them).
    surrogates, references = {}, {}
    if sur_specs or ref_specs:
        sur_arch = {n: p.get("student", setting.owner) for n, _, p in sur_specs}
        t0 = time.perf_counter()
        surrogates = factories.make_surrogates(
            owner, owner_ds.x, owner_ds.y, sur_specs,
            config=dataclasses.replace(pirate_config, seed=seed + 100), cache=cache,
            on_model=builder.member(sur_arch.get),
            reporter=lambda n: _epoch_reporter(n, pirate_config.epochs))
        timings["surrogates_s"] = time.perf_counter() - t0
        ref_arch = {n: a for n, a, _, _ in ref_specs}
        t0 = time.perf_counter()
        references = factories.make_references(
            owner_ds.x, owner_ds.y, ref_specs, num_classes=builder.num_classes,
            config=protocol.train_config(setting, seed, len(owner_ds)),
            data_name="owner split", cache=cache, on_model=builder.member(ref_arch.get),
            reporter=lambda n: _epoch_reporter(n, setting.epochs))
        timings["references_s"] = time.perf_counter() - t0
        scored = {ev.model_hash(m) for m in (*pirated.values(), *independent.values())}
        shared = [n for n, m in (*surrogates.items(), *references.items())
                  if ev.model_hash(m) in scored]
        if shared:
            raise RuntimeError(f"surrogates or references {shared} are also scored models")
    return ModelSet(owner=owner, pirated=pirated, independent=independent,
                    surrogates=surrogates, references=references, accuracy=builder.accuracy,
                    build_s=builder.build_s, timings=timings,
                    specs={"pirated": pirates, "independent": indep_specs,
                           "surrogates": sur_specs, "references": ref_specs})
