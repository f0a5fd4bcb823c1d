"""The models a defender makes itself: surrogates derived from its owner model, and reference
models trained independently, for :class:`~ipguard_jax.conferrable.Conferrable` fingerprints.

With only an owner model and its data, a user gets the whole pipeline::

    surrogates = make_surrogates(owner, x_owner, y_owner, default_surrogate_specs("cnn"))
    references = make_references(x_owner, y_owner, specs, num_classes=10, config=...)
    method = conferrable_method(owner, surrogates, references, input_shape=(32, 32, 3))
    fp = ipg.generate(ipg.Classifier.from_nnx(owner, ...), config, method=method)

Every model can go through a :class:`~ipguard_jax.evaluation.ModelCache` (and so a
:class:`~ipguard_jax.evaluation.ModelZoo`): keyed by its recipe, trained once, resumed at its
last finished epoch when a run stops part-way.

Surrogates use the post-processings of :mod:`~ipguard_jax.evaluation.postprocess` (the same
code that makes the pirated copies an evaluation scores): distillation into the owner's and
other architectures, extraction from hard labels only, fine-tuning, pruning with fine-tuning.
References train from scratch with :func:`ipguard_jax.train.fit` (other seeds, architectures
and data; include the owner's architecture on the owner's own data: the hardest innocent model).

Example:
    >>> from ipguard_jax.evaluation.factories import default_surrogate_specs
    >>> [name for name, _, _ in default_surrogate_specs("cnn", {"in_channels": 1})]
    ['sur-distill-same', 'sur-distill-cnn', 'sur-extract-cnn', 'sur-FTAL', 'sur-prune50+FT']
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from ipguard_jax.evaluation import postprocess as pp
from ipguard_jax.evaluation.zoo import ModelCache, array_digest, model_hash

__all__ = ["default_surrogate_specs", "make_surrogates", "make_references", "train_model",
           "cached_resumable", "training_dir", "conferrable_method", "surrogate_recipe", "reference_recipe"]

#: ``(name, post-processing kind, its parameters)``.
SurrogateSpec = tuple[str, str, dict[str, Any]]
#: ``(name, architecture, its constructor arguments, init seed)``.
ReferenceSpec = tuple[str, str, dict[str, Any], int]


def default_surrogate_specs(other_arch: str, other_kwargs: dict[str, Any] | None = None
                            ) -> list[SurrogateSpec]:
    """Five surrogates: distilled into the owner's and another architecture, extracted from
    hard labels only (the other architecture), fine-tuned, and pruned by half and fine-tuned.

    Distillation samples one label per image from the owner's tempered softmax
    (``label_copies=1``: a fifth of the default's training time, a noisier student).

    Args:
        other_arch: a :func:`~ipguard_jax.evaluation.build_model` name other than the owner's.
        other_kwargs: its constructor arguments (e.g. ``{"in_channels": 1}``).

    Returns:
        The specs, for :func:`make_surrogates`.
    """
    kw = dict(other_kwargs or {})
    return [
        ("sur-distill-same", "distill", {"temperature": 4.0, "label_copies": 1}),
        (f"sur-distill-{other_arch}", "distill",
         {"temperature": 4.0, "label_copies": 1, "student": other_arch, "student_kwargs": kw}),
        (f"sur-extract-{other_arch}", "extract", {"student": other_arch, "student_kwargs": kw}),
        ("sur-FTAL", "ftal", {}),
        ("sur-prune50+FT", "prune_ft", {"rate": 0.5}),
    ]


def surrogate_recipe(owner_hash: str, kind: str, params: Mapping[str, Any], data_hash: str,
                     config: pp.PirateConfig) -> dict[str, Any]:
    """The cache key of a surrogate (like a pirated copy's, with its own role).

    Example:
        >>> surrogate_recipe("ab", "ftal", {}, "cd", pp.PirateConfig(epochs=2))["role"]
        'surrogate'
    """
    return {"role": "surrogate", "owner_hash": owner_hash, "kind": kind, "params": dict(params),
            "data_hash": data_hash, "config": config.to_dict()}


def reference_recipe(arch: str, kwargs: Mapping[str, Any], num_classes: int, data_hash: str,
                     data_name: str, seed: int, config: Any) -> dict[str, Any]:
    """The cache key of a model trained from scratch (the same key whatever its role).

    Example:
        >>> from ipguard_jax.train import TrainConfig
        >>> reference_recipe("mlp", {}, 10, "ab", "owner split", 11,
        ...                  TrainConfig(epochs=1))["init_seed"]
        11
    """
    return {"role": "trained", "arch": arch, "kwargs": dict(kwargs), "num_classes": num_classes,
            "data": data_name, "data_hash": data_hash, "train": config.trajectory_dict(),
            "init_seed": seed}


def training_dir(cache: ModelCache, recipe: Mapping[str, Any]) -> Path:
    """Where the model of ``recipe`` checkpoints while it trains (removed once it is cached).

    Args:
        cache: the model cache.
        recipe: the model's cache key.

    Returns:
        ``<cache root>/training/<the recipe's cache entry name>``.
    """
    return cache.root / "training" / cache.path(recipe).name


def cached_resumable(cache: ModelCache | None, recipe: Mapping[str, Any],
                     make: Callable[[Path | None], nnx.Module],
                     like: Callable[[], nnx.Module]) -> nnx.Module:
    """``cache.get_or_create`` for a model that trains with epoch checkpoints.

    ``make(partial)`` trains it, checkpointing every epoch in ``partial`` (under
    ``<cache root>/training/``), so a call stopped part-way resumes there. The cache records the
    time of all its epochs, also those of stopped calls (``train_s``), and the checkpoints go
    once the model is cached. Without a cache, ``make(None)`` trains without checkpoints.

    Args:
        cache: the model cache, or ``None``.
        recipe: the model's cache key.
        make: ``make(partial_dir_or_None) -> model``.
        like: builds an untrained model of the same structure (to load into).

    Returns:
        The model.
    """
    from ipguard_jax import train

    if cache is None:
        return make(None)
    partial = training_dir(cache, recipe)

    def meta():
        history = train.checkpoint_history(partial)
        return {"train_s": round(sum(history["seconds"]), 3)} if history else {}

    model = cache.get_or_create(recipe, lambda: make(partial), like, meta)
    shutil.rmtree(partial, ignore_errors=True)
    return model


def _check_names(specs: Sequence[Any], what: str) -> None:
    names = [spec[0] for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names repeat: {sorted({n for n in names if names.count(n) > 1})}")


def make_surrogates(owner: nnx.Module, x: Any, y: Any, specs: Sequence[SurrogateSpec], *,
                    config: pp.PirateConfig = pp.PirateConfig(),
                    cache: ModelCache | None = None,
                    on_model: Callable[[str, Mapping[str, Any], nnx.Module], None] | None = None,
                    reporter: Callable[[str], Callable[..., Any]] | None = None,
                    ) -> dict[str, nnx.Module]:
    """Copies derived from the owner by the defender: the surrogates of a conferrable set.

    Args:
        owner: the owner's NNX model (not modified).
        x: the defender's images ``(N, *input_shape)`` (its own training data will do).
        y: their labels (used by fine-tuning; distillation and extraction use the owner's).
        specs: ``(name, kind, params)`` per surrogate, ``kind`` a
            :data:`~ipguard_jax.evaluation.postprocess.POSTPROCESSINGS` key (see
            :func:`default_surrogate_specs`).
        config: training settings; surrogate ``n`` trains with seed ``config.seed + n``.
        cache: a model cache: made once per recipe, resumable.
        on_model: called as ``on_model(name, recipe, model)`` for each surrogate (e.g. to
            record it in a zoo).
        reporter: ``reporter(name)`` gives the ``on_epoch_end`` of that surrogate's training
            (progress lines).

    Returns:
        Name -> model, in ``specs`` order.

    Raises:
        ValueError: names that repeat, an unknown kind, or the post-processing's own errors.

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import models
        >>> owner = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> x = np.random.default_rng(0).uniform(size=(40, 8, 8, 1)).astype(np.float32)
        >>> y = np.arange(40) % 10
        >>> made = make_surrogates(owner, x, y, [("half", "prune", {"rate": 0.5})])
        >>> list(made)
        ['half']
    """
    _check_names(specs, "surrogate")
    owner_hash = model_hash(owner)
    data_hash = array_digest(np.asarray(x), np.asarray(y))
    num_classes = int(pp.apply_batched(owner, np.asarray(x)[:1]).shape[-1])
    made = {}
    for n, (name, kind, params) in enumerate(specs):
        if kind not in pp.POSTPROCESSINGS:
            raise ValueError(f"surrogate {name!r}: unknown kind {kind!r}; known: "
                             f"{', '.join(pp.POSTPROCESSINGS)}")
        cfg = dataclasses.replace(config, seed=config.seed + n)
        if reporter is not None:
            cfg = dataclasses.replace(cfg, on_epoch_end=reporter(name))
        recipe = surrogate_recipe(owner_hash, kind, params, data_hash, cfg)

        def like(p=params):
            if "student" in p and isinstance(p["student"], str):
                return pp.build_model(p["student"], num_classes, 0, **p.get("student_kwargs", {}))
            return nnx.clone(owner)

        def make(partial, k=kind, p=params, c=cfg):
            c = dataclasses.replace(c, checkpoint_dir=partial)
            return pp.make_pirate(k, owner, x, y, c, **p)

        made[name] = cached_resumable(cache, recipe, make, like)
        if on_model is not None:
            on_model(name, recipe, made[name])
    return made


def train_model(arch: str, kwargs: Mapping[str, Any], x: Any, y: Any, *, num_classes: int,
                config: Any, data_name: str = "data", cache: ModelCache | None = None,
                on_epoch_end: Callable[..., Any] | None = None) -> tuple[nnx.Module, dict]:
    """A model trained from scratch (seed ``config.seed``), through the cache when given.

    Args:
        arch: a :func:`~ipguard_jax.evaluation.build_model` name.
        kwargs: its constructor arguments.
        x: training images.
        y: their labels.
        num_classes: the number of classes.
        config: the :class:`~ipguard_jax.train.TrainConfig` (its seed also seeds the init).
        data_name: a description of the data, recorded in the recipe.
        cache: a model cache: trained once per recipe, resumable.
        on_epoch_end: passed to :func:`~ipguard_jax.train.fit`.

    Returns:
        ``(model, recipe)``.
    """
    from ipguard_jax import train

    x, y = np.asarray(x), np.asarray(y)
    recipe = reference_recipe(arch, kwargs, num_classes, array_digest(x, y), data_name,
                              config.seed, config)

    def build():
        return pp.build_model(arch, num_classes, config.seed, **kwargs)

    def make(partial):
        model = build()
        cfg = config if partial is None else dataclasses.replace(
            config, checkpoint_dir=partial, checkpoint_every=1)
        train.fit(model, x, y, cfg, progress=False, on_epoch_end=on_epoch_end)
        return model

    return cached_resumable(cache, recipe, make, build), recipe


def make_references(x: Any, y: Any, specs: Sequence[ReferenceSpec], *, num_classes: int,
                    config: Any, data_name: str = "data", cache: ModelCache | None = None,
                    on_model: Callable[[str, Mapping[str, Any], nnx.Module], None] | None = None,
                    reporter: Callable[[str], Callable[..., Any]] | None = None,
                    ) -> dict[str, nnx.Module]:
    """Models trained independently of the owner: the references of a conferrable set.

    Args:
        x: training images (the owner's own data makes the hardest references).
        y: their labels.
        specs: ``(name, arch, kwargs, seed)`` per reference.
        num_classes: the number of classes.
        config: the :class:`~ipguard_jax.train.TrainConfig`; each reference replaces its seed.
        data_name: a description of the data, recorded in the recipes.
        cache: a model cache: trained once per recipe, resumable.
        on_model: called as ``on_model(name, recipe, model)`` for each reference.
        reporter: ``reporter(name)`` gives the ``on_epoch_end`` of that reference's training.

    Returns:
        Name -> model, in ``specs`` order.

    Raises:
        ValueError: names that repeat.

    Example:
        >>> import numpy as np
        >>> from ipguard_jax.train import TrainConfig
        >>> x = np.random.default_rng(0).uniform(size=(40, 8, 8, 1)).astype(np.float32)
        >>> refs = make_references(x, np.arange(40) % 10,
        ...                        [("ref", "mlp", {"in_features": 64, "in_channels": 1}, 11)],
        ...                        num_classes=10, config=TrainConfig(epochs=1, batch_size=20))
        >>> list(refs)
        ['ref']
    """
    _check_names(specs, "reference")
    made = {}
    for name, arch, kwargs, seed in specs:
        made[name], recipe = train_model(arch, kwargs, x, y, num_classes=num_classes,
                                         config=dataclasses.replace(config, seed=seed),
                                         data_name=data_name, cache=cache,
                                         on_epoch_end=None if reporter is None
                                         else reporter(name))
        if on_model is not None:
            on_model(name, recipe, made[name])
    return made


def conferrable_method(surrogates: Mapping[str, nnx.Module],
                       references: Mapping[str, nnx.Module], *, input_shape: tuple[int, ...],
                       **method_kwargs: Any):
    """A :class:`~ipguard_jax.conferrable.Conferrable` method from NNX members.

    Args:
        surrogates: name -> NNX surrogate.
        references: name -> NNX reference.
        input_shape: one example's shape.
        **method_kwargs: the method's margins, weights and shares.

    Returns:
        The method, for ``generate(..., method=...)``.
    """
    from ipguard_jax.classifier import Classifier
    from ipguard_jax.conferrable import Conferrable

    def wrap(models):
        return {name: Classifier.from_nnx(m, input_shape=input_shape)
                for name, m in models.items()}

    return Conferrable(surrogates=wrap(surrogates), references=wrap(references),
                       **method_kwargs)
