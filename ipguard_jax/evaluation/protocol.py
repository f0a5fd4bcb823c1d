"""The ARUC protocol: which models an evaluation trains, on which data, and how.

An owner is trained on one part of the training set; pirated copies are post-processings of
it on a disjoint part (FTLL, FTAL, RTLL, RTAL, pruning at several rates with and without
fine-tuning, distillation into the same and another architecture, int8 quantisation);
independent models are trained from scratch with other seeds, other architectures and other
data subsets. For the conferrable rows the defender also derives surrogates from its owner and
trains reference models on the owner's split (:mod:`~ipguard_jax.evaluation.factories`).

A :class:`Setting` holds everything a run depends on (:func:`make_setting` gives the digits
setting and the image presets); :func:`load_data` cuts its data into the four splits; the
``*_specs`` functions list its models and the ``*_recipe`` functions give each model's key in
the :class:`~ipguard_jax.evaluation.ModelCache` (and :class:`~ipguard_jax.evaluation.ModelZoo`).
A recipe names everything that determines a model: a model trained once under a recipe is
loaded, not retrained, by every later run, on any machine that shares the cache or the zoo.

:mod:`~ipguard_jax.evaluation.pipeline` runs the whole evaluation on a setting (``ipguard
evaluate``).

Example:
    >>> setting = make_setting(quick=True)
    >>> setting.owner, [name for name, _, _ in pirate_specs(setting)][:4]
    ('mlp', ['FTLL', 'FTAL', 'RTLL', 'RTAL'])
    >>> recipe = trained_recipe("mlp", {}, 10, load_data(setting, 0).owner, "owner split", 0,
    ...                         train_config(setting, 0, 718))
    >>> recipe["role"], recipe["train"]["epochs"]
    ('trained', 30)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["VARIANTS", "PRESETS", "BASELINES", "PRECISION", "Setting", "Splits",
           "make_setting", "load_data", "train_config", "trained_recipe", "pirate_config",
           "pirate_recipe", "pirate_specs", "surrogate_specs", "independent_specs",
           "reference_specs", "model_cache", "train_cached"]

#: Independent models of one architecture: ``name -> (data, init seed)``; ``data`` is the
#: independent split, the owner's split or a disjoint half of the independent split.
VARIANTS = {"seed1": ("independent", 1), "seed2": ("independent", 2),
            "seed3-ownerdata": ("owner split", 3), "halfA": ("indep half A", 4),
            "halfB": ("indep half B", 5)}

#: Presets for image data (the digits setting has its own).
PRESETS = ("cpu", "wide")

#: The baseline fingerprints an evaluation can compare with IPGuard's.
BASELINES = ("random", "fgsm", "pgd", "cw", "mistakes")

#: Every model of a run is rounded to this precision as it is made (or loaded), so the models a
#: run evaluates are exactly those a :class:`~ipguard_jax.evaluation.ModelZoo` keeps.
PRECISION = "float16"


@dataclasses.dataclass
class Setting:
    """Everything the run depends on; recorded in the results.

    Build it with :func:`make_setting`. The fields: the data (``"digits"``, ``"tfds:NAME"`` or
    an image folder or archive), the owner architecture and its constructor arguments, the
    training and pirate-training settings, the fingerprint grid (``num``, ``steps``, ``ks``,
    ``inits``, ``targets``), the baselines and their ``eps``, the independent architectures
    as ``(label, arch, kwargs)``, the distillation student as ``(arch, kwargs)``, which
    :data:`VARIANTS` of the owner's own architecture train as independent models, and the
    conferrable fingerprints' parts: a distillation student of an architecture no surrogate
    has (``heldout_student``, a scored pirate), surrogates beyond the five of
    :func:`~ipguard_jax.evaluation.factories.default_surrogate_specs` (``extra_surrogates``),
    the reference models ``(name, arch, kwargs, seed)`` the defender trains on the owner's
    split, and the margins ``k`` to run them at (none: no conferrable rows, no surrogates or
    references trained).

    Example:
        >>> setting = make_setting(quick=True, ks=[1, 3])
        >>> setting.data, setting.ks, setting.baselines
        ('digits', [1.0, 3.0], ['random', 'fgsm', 'pgd', 'cw', 'mistakes'])
    """

    data: str
    owner: str
    owner_kwargs: dict[str, Any]
    epochs: int
    train_optimizer: str
    train_lr: float
    batch_size: int
    augment: bool
    pirate_epochs: int
    pirate_lr: float
    num: int
    steps: int
    ks: list[float]
    inits: list[str]
    targets: list[str]
    subset: int | None
    baselines: list[str]
    eps: float
    independent_archs: list[tuple[str, str, dict[str, Any]]]
    distill_student: tuple[str, dict[str, Any]]
    owner_variants: list[str] = dataclasses.field(default_factory=lambda: list(VARIANTS))
    heldout_student: tuple[str, dict[str, Any]] | None = None
    extra_surrogates: list[tuple[str, str, dict[str, Any]]] = dataclasses.field(
        default_factory=list)
    references: list[tuple[str, str, dict[str, Any], int]] = dataclasses.field(
        default_factory=list)
    conferrable_ks: list[float] = dataclasses.field(default_factory=list)


def make_setting(*, quick: bool = False, data: str | os.PathLike | None = None,
                 owner: str | None = None, epochs: int | None = None,
                 pirate_epochs: int | None = None, num: int = 100, steps: int = 1000,
                 ks: Sequence[float] = (1, 3, 10, 30), inits: Sequence[str] = ("data", "noise"),
                 targets: Sequence[str] = ("random", "least_likely"),
                 baselines: Sequence[str] = BASELINES, eps: float | None = None,
                 subset: int | None = None, conferrable_ks: Sequence[float] = (3, 10),
                 preset: str = "cpu") -> Setting:
    """A run's :class:`Setting`: digits with an MLP owner (``quick``), or image data with a
    ResNet-20 owner sized by ``preset``.

    The defaults are those of ``ipguard evaluate``; an option left ``None`` takes the
    setting's own value.

    Args:
        quick: the digits setting (MLP owner, few epochs: a few minutes on 2 cores).
        data: without ``quick``: an image folder or archive with ``train`` and ``test`` splits,
            or ``"tfds:NAME"``.
        owner: the owner architecture (registry name); default ``mlp`` (digits) or
            ``resnet20``.
        epochs: epochs of the owner and the independent models (default 30 on digits, 20 for
            the ``cpu`` preset, 30 for ``wide``).
        pirate_epochs: epochs of the pirates (default 15 on digits, 5 and 10 for the presets).
        num: fingerprints per configuration.
        steps: optimisation steps per point.
        ks: the margins ``k`` of the IPGuard grid.
        inits: the initialisations of the grid (``data``, ``noise``).
        targets: the target choices of the grid (``random``, ``least_likely``).
        baselines: baseline fingerprints to compare (from :data:`BASELINES`).
        eps: L-inf radius of the FGSM/PGD baselines (default 0.1 on digits, 8/255 on images).
        subset: use only this many training (and test) images of image data, for smoke runs.
        conferrable_ks: margins of the conferrable fingerprints (empty: no conferrable rows,
            no surrogates or references).
        preset: image data: ``"cpu"`` sizes the model zoo for hours, not days, of training on
            a 2-core CPU (10 independent models: the owner's architecture 4 times, CNNs and an
            MLP); ``"wide"`` trains 14 independent models of 7 architectures for 30 epochs.

    Returns:
        The setting.

    Raises:
        ValueError: no ``data`` without ``quick``, an unknown baseline or preset, or
            ``eps <= 0``.

    Example:
        >>> make_setting(quick=True).owner
        'mlp'
        >>> s = make_setting(data="cifar10-jpeg.tar.gz", preset="wide")
        >>> s.owner, s.epochs, [label for label, _, _ in s.independent_archs][:2]
        ('resnet20', 30, ['resnet32', 'vgg11'])
    """
    ks, inits, targets = [float(k) for k in ks], list(inits), list(targets)
    names = list(baselines)
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"baselines: unknown {unknown}; choose from {', '.join(BASELINES)}")
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    conferrable_ks = [float(k) for k in conferrable_ks]
    if quick:
        return Setting(
            data="digits", owner=owner or "mlp",
            owner_kwargs={"in_features": 64, "in_channels": 1} if (owner or "mlp") == "mlp"
            else {"in_channels": 1},
            epochs=epochs or 30, train_optimizer="adam", train_lr=3e-3, batch_size=64,
            augment=False, pirate_epochs=pirate_epochs or 15, pirate_lr=1e-3,
            num=num, steps=steps, ks=ks, inits=inits, targets=targets,
            subset=subset, baselines=names, eps=eps or 0.1,
            independent_archs=[("mlp128", "mlp", {"in_features": 64, "in_channels": 1,
                                                  "hidden": [128]}),
                               ("cnn", "cnn", {"in_channels": 1})],
            distill_student=("cnn", {"in_channels": 1}) if (owner or "mlp") == "mlp"
            else ("mlp", {"in_features": 64, "in_channels": 1}),
            heldout_student=("resnet20", {"in_channels": 1}),
            extra_surrogates=[
                ("sur2-distill-same", "distill", {"temperature": 4.0, "label_copies": 1}),
                ("sur2-distill-cnn", "distill", {"temperature": 4.0, "label_copies": 1,
                                                 "student": "cnn",
                                                 "student_kwargs": {"in_channels": 1}}),
                ("sur2-extract-same", "extract", {}),
                ("sur2-extract-mlp128", "extract", {"student": "mlp", "student_kwargs": {
                    "in_features": 64, "in_channels": 1, "hidden": [128]}}),
                ("sur2-FTAL", "ftal", {})],
            references=[("ref-mlp-s11", "mlp", {"in_features": 64, "in_channels": 1}, 11),
                        ("ref-mlp128-s12", "mlp", {"in_features": 64, "in_channels": 1,
                                                   "hidden": [128]}, 12),
                        ("ref-cnn-s13", "cnn", {"in_channels": 1}, 13),
                        ("ref-mlp-s14", "mlp", {"in_features": 64, "in_channels": 1}, 14),
                        ("ref2-mlp-s21", "mlp", {"in_features": 64, "in_channels": 1}, 21),
                        ("ref2-cnn-s22", "cnn", {"in_channels": 1}, 22),
                        ("ref2-mlp128-s23", "mlp", {"in_features": 64, "in_channels": 1,
                                                    "hidden": [128]}, 23),
                        ("ref2-mlp-s24", "mlp", {"in_features": 64, "in_channels": 1}, 24)],
            conferrable_ks=conferrable_ks,
        )
    if data is None:
        raise ValueError("give the data to evaluate on (an image folder or archive with train/ "
                         "and test/ splits, or tfds:NAME), or use the digits setting (quick)")
    data = str(data)
    owner = owner or "resnet20"
    # The held-out student is a pre-activation wide ResNet, a family no surrogate has (VGG-11,
    # tried first, did not learn in the pirates' epochs at their learning rate: train accuracy
    # 0.17 after 5 epochs).
    common = dict(data=data, owner=owner, owner_kwargs={},
                  train_optimizer="sgd", train_lr=0.1, batch_size=128, augment=True,
                  pirate_lr=1e-3, num=num, steps=steps, ks=ks, inits=inits,
                  targets=targets, subset=subset, baselines=names, eps=eps or 8 / 255,
                  heldout_student=("wrn16_1", {}), conferrable_ks=conferrable_ks,
                  extra_surrogates=[
                      ("sur2-distill-cnn", "distill", {"temperature": 4.0, "label_copies": 1,
                                                       "student": "cnn", "student_kwargs": {}}),
                      ("sur2-extract-cnn-narrow", "extract", {
                          "student": "cnn", "student_kwargs": {"widths": [16, 32, 64]}}),
                      ("sur2-FTAL", "ftal", {})],
                  references=[(f"ref-{owner}-s11", owner, {}, 11), ("ref-cnn-s12", "cnn", {}, 12),
                              ("ref-cnn-narrow-s13", "cnn", {"widths": [16, 32, 64]}, 13),
                              ("ref-mlp-s14", "mlp", {}, 14), ("ref2-cnn-s22", "cnn", {}, 22),
                              ("ref2-cnn-narrow-s23", "cnn", {"widths": [16, 32, 64]}, 23),
                              ("ref2-mlp-s24", "mlp", {}, 24)])
    if preset == "wide":
        return Setting(
            **common, epochs=epochs or 30, pirate_epochs=pirate_epochs or 10,
            independent_archs=[(a, a, {}) for a in ("resnet32", "vgg11", "cnn", "mobilenet_v2",
                                                     "wrn16_4", "mlp")],
            distill_student=("vgg11", {}))
    # Sized for a 2-core CPU: the owner's architecture on other data and on its own data with
    # another seed (the hard cases for uniqueness), then cheap architectures.
    return Setting(
        **common, epochs=epochs or 20, pirate_epochs=pirate_epochs or 5,
        independent_archs=[("cnn", "cnn", {}), ("cnn-narrow", "cnn", {"widths": [16, 32, 64]}),
                           ("mlp", "mlp", {})],
        distill_student=("cnn", {}),
        owner_variants=["seed1", "seed3-ownerdata", "halfA", "halfB"])


class Splits(NamedTuple):
    """The four disjoint parts of a setting's data (:func:`load_data`)."""

    owner: Any
    pirate: Any
    independent: Any
    test: Any


def load_data(setting: Setting, seed: int) -> Splits:
    """The owner, pirate, independent and test splits of the setting's data.

    Args:
        setting: the run's setting (``setting.data``: ``"digits"``, ``"tfds:NAME"`` or an image
            folder or archive with ``train`` and ``test`` splits).
        seed: seed of the shuffles and splits.

    Returns:
        ``(owner, pirate, independent, test)`` :class:`~ipguard_jax.data.Dataset` objects (a
        :class:`Splits`).

    Example:
        >>> owner, pirate, independent, test = load_data(make_setting(quick=True), 0)
        >>> len(owner), len(pirate), len(independent), len(test)
        (718, 359, 449, 271)
    """
    from ipguard_jax import data

    if setting.data == "digits":
        ds = data.load_digits()
        owner, pirate, indep, test = ds.split([0.4, 0.2, 0.25, 0.15], seed=seed)
        return Splits(owner, pirate, indep, test)
    if setting.data.startswith("tfds:"):
        name = setting.data[len("tfds:"):]
        train, test = data.load_tfds(name, "train"), data.load_tfds(name, "test")
    else:
        train = data.load_image_folder(setting.data, "train")
        test = data.load_image_folder(setting.data, "test")
    # Folder order groups classes: shuffle before any cut.
    train, test = train.shuffle(seed), test.shuffle(seed)
    if setting.subset:
        train = train.subset(np.arange(min(setting.subset, len(train))))
        test = test.subset(np.arange(min(setting.subset, len(test))))
    owner, pirate, indep = train.split([0.4, 0.2, 0.4], seed=seed)
    return Splits(owner, pirate, indep, test)


def train_config(setting: Setting, seed: int, n: int):
    """How the owner, the independent models and the references train.

    Args:
        setting: the run's setting.
        seed: the model's seed (of its initialisation and its batches).
        n: its number of training images (the batch is no larger).

    Returns:
        The :class:`~ipguard_jax.train.TrainConfig`.

    Example:
        >>> config = train_config(make_setting(quick=True), 3, 40)
        >>> config.epochs, config.batch_size, config.optimizer, config.seed
        (30, 40, 'adam', 3)
    """
    from ipguard_jax import train

    return train.TrainConfig(
        epochs=setting.epochs, batch_size=min(setting.batch_size, n),
        optimizer=setting.train_optimizer, lr=setting.train_lr,
        weight_decay=5e-4 if setting.train_optimizer == "sgd" else 0.0,
        random_crop=setting.augment, horizontal_flip=setting.augment, seed=seed)


def trained_recipe(arch: str, kwargs: dict[str, Any], num_classes: int, ds, data_name: str,
                   seed: int, config) -> dict[str, Any]:
    """The cache key of a model trained from scratch (the owner, an independent model or a
    reference: the same key whatever its role).

    Args:
        arch: the architecture (registry name).
        kwargs: its constructor arguments.
        num_classes: the number of classes.
        ds: its training data (a :class:`~ipguard_jax.data.Dataset`; its digest goes into
            the key).
        data_name: which split that is (``"owner split"``, ``"independent"``...).
        seed: its initialisation seed.
        config: its :class:`~ipguard_jax.train.TrainConfig` (:func:`train_config`).

    Returns:
        The recipe, a JSON-able dict.
    """
    from ipguard_jax import evaluation as ev
    from ipguard_jax.evaluation import factories

    return factories.reference_recipe(arch, kwargs, num_classes, ev.array_digest(ds.x, ds.y),
                                      data_name, seed, config)


def pirate_config(setting: Setting, seed: int):
    """How the pirates fine-tune, retrain and distil.

    Example:
        >>> config = pirate_config(make_setting(quick=True), 0)
        >>> config.epochs, config.lr
        (15, 0.001)
    """
    from ipguard_jax.evaluation import postprocess as pp

    return pp.PirateConfig(epochs=setting.pirate_epochs, lr=setting.pirate_lr, seed=seed,
                           random_crop=setting.augment, horizontal_flip=setting.augment)


def pirate_recipe(owner_hash: str, kind: str, params: dict[str, Any], data_hash: str,
                  config) -> dict[str, Any]:
    """The cache key of a pirated copy of the owner.

    Args:
        owner_hash: :func:`~ipguard_jax.evaluation.model_hash` of the owner.
        kind: the post-processing (see :func:`pirate_specs`).
        params: its parameters.
        data_hash: :func:`~ipguard_jax.evaluation.array_digest` of the pirate's data.
        config: the :class:`~ipguard_jax.evaluation.PirateConfig` (:func:`pirate_config`).

    Returns:
        The recipe, a JSON-able dict.

    Example:
        >>> pirate_recipe("ab", "int8", {}, "cd", pirate_config(make_setting(quick=True), 0)
        ...               )["role"]
        'pirated'
    """
    return {"role": "pirated", "owner_hash": owner_hash, "kind": kind, "params": params,
            "data_hash": data_hash, "config": config.to_dict()}


def pirate_specs(setting: Setting) -> list[tuple[str, str, dict[str, Any]]]:
    """The pirated copies of a run: ``(name, post-processing kind, its parameters)``.

    Example:
        >>> [name for name, _, _ in pirate_specs(make_setting(quick=True))][:6]
        ['FTLL', 'FTAL', 'RTLL', 'RTAL', 'prune30', 'prune50']
    """
    student_arch, student_kwargs = setting.distill_student
    specs = [
        ("FTLL", "ftll", {}), ("FTAL", "ftal", {}), ("RTLL", "rtll", {}), ("RTAL", "rtal", {}),
        *[(f"prune{int(r * 100)}", "prune", {"rate": r}) for r in (0.3, 0.5, 0.7)],
        *[(f"prune{int(r * 100)}+FT", "prune_ft", {"rate": r}) for r in (0.5, 0.7, 0.9)],
        ("distill-same", "distill", {"temperature": 4.0}),
        (f"distill-{student_arch}", "distill",
         {"temperature": 4.0, "student": student_arch, "student_kwargs": student_kwargs}),
        ("int8", "int8", {}),
        # Extraction through a label-only API: a student of the owner's hard labels.
        ("extract-same", "extract", {}),
    ]
    if setting.heldout_student is not None:
        # Distillation into an architecture none of the conferrable rows' surrogates has.
        arch, kwargs = setting.heldout_student
        specs.append((f"distill-{arch}", "distill",
                      {"temperature": 4.0, "label_copies": 2, "student": arch,
                       "student_kwargs": kwargs}))
    return specs


def surrogate_specs(setting: Setting) -> list[tuple[str, str, dict[str, Any]]]:
    """The surrogates the defender derives from its owner for the conferrable rows.

    Example:
        >>> [n for n, _, _ in surrogate_specs(make_setting(quick=True))][:2]
        ['sur-distill-same', 'sur-distill-cnn']
    """
    from ipguard_jax.evaluation import factories

    if not setting.conferrable_ks:
        return []
    return factories.default_surrogate_specs(*setting.distill_student) + list(
        setting.extra_surrogates)


def reference_specs(setting: Setting) -> list[tuple[str, str, dict[str, Any], int]]:
    """The reference models of the conferrable rows, ``(name, arch, kwargs, init seed)``,
    trained on the owner's split (none without conferrable rows).

    Example:
        >>> [n for n, _, _, _ in reference_specs(make_setting(quick=True))][:2]
        ['ref-mlp-s11', 'ref-mlp128-s12']
        >>> reference_specs(make_setting(quick=True, conferrable_ks=[]))
        []
    """
    return setting.references if setting.conferrable_ks else []


def independent_specs(setting: Setting, owner_ds, indep_ds, seed: int) -> list[tuple]:
    """The independent models of a run: ``(name, arch, kwargs, data, data name, init seed)``.

    The owner's architecture in each of ``setting.owner_variants`` (other seeds, on the
    independent split, on the owner's own split or on disjoint halves of the independent
    split: see :data:`VARIANTS`); every other architecture once; one of them (the first for
    images, the last for digits) also with other seeds and data.

    Raises:
        ValueError: an unknown name in ``setting.owner_variants``.

    Example:
        >>> setting = make_setting(quick=True)
        >>> owner, _, independent, _ = load_data(setting, 0)
        >>> [spec[0] for spec in independent_specs(setting, owner, independent, 0)][:3]
        ['mlp-seed1', 'mlp-seed2', 'mlp-seed3-ownerdata']
    """
    half_a, half_b = indep_ds.split([0.5, 0.5], seed=seed + 1)
    data = {"independent": indep_ds, "owner split": owner_ds, "indep half A": half_a,
            "indep half B": half_b}
    unknown = sorted(set(setting.owner_variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"owner_variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    owner, kwargs = setting.owner, setting.owner_kwargs
    specs = [(f"{owner}-{v}", owner, kwargs, data[VARIANTS[v][0]], VARIANTS[v][0],
              VARIANTS[v][1]) for v in setting.owner_variants]
    for label, arch, arch_kwargs in setting.independent_archs:
        specs.append((f"{label}-seed1", arch, arch_kwargs, indep_ds, "independent", 1))
    # One other architecture also with other seeds and data: the one most unlike the owner.
    label0, arch0, kwargs0 = setting.independent_archs[-1 if setting.data == "digits" else 0]
    specs.append((f"{label0}-seed2", arch0, kwargs0, indep_ds, "independent", 2))
    specs.append((f"{label0}-seed3-ownerdata", arch0, kwargs0, owner_ds, "owner split", 3))
    specs.append((f"{label0}-halfA", arch0, kwargs0, half_a, "indep half A", 6))
    return specs


def model_cache(cache_dir: str | os.PathLike | None = None, zoo: str | os.PathLike | None = None,
                from_zoo: bool = False):
    """The model cache of a run: models rounded to :data:`PRECISION`, backed by a zoo.

    Args:
        cache_dir: the cache directory (default
            :func:`~ipguard_jax.evaluation.default_model_dir`).
        zoo: a :class:`~ipguard_jax.evaluation.ModelZoo` directory consulted on a miss.
        from_zoo: build nothing (a model in neither the cache nor the zoo is an error).

    Returns:
        The :class:`~ipguard_jax.evaluation.ModelCache`.

    Raises:
        ValueError: ``from_zoo`` without a ``zoo``.
    """
    from ipguard_jax import evaluation as ev

    if from_zoo and zoo is None:
        raise ValueError("from_zoo needs a zoo directory")
    return ev.ModelCache(cache_dir, precision=PRECISION,
                         zoo=None if zoo is None else ev.ModelZoo(zoo), build=not from_zoo)


def train_cached(cache, recipe: dict[str, Any], build: Callable[[], Any], ds, config, *,
                 on_epoch_end=None):
    """A model trained from scratch, taken from the cache when it is there; resumable.

    While it trains, :func:`ipguard_jax.train.fit` checkpoints every epoch under
    ``<cache root>/training/<recipe key>``, so a run stopped part-way (a killed job, the end of
    a session) resumes at its last finished epoch and ends with the same parameters. The
    checkpoints are removed once the model is in the cache.

    Args:
        cache: the :class:`~ipguard_jax.evaluation.ModelCache`.
        recipe: the model's cache key (see :func:`trained_recipe`).
        build: makes the freshly initialised model.
        ds: the training data (a :class:`~ipguard_jax.data.Dataset`).
        config: the :class:`~ipguard_jax.train.TrainConfig` (its checkpoint fields are set here).
        on_epoch_end: passed to :func:`~ipguard_jax.train.fit`.

    Returns:
        The trained model.
    """
    from ipguard_jax import train
    from ipguard_jax.evaluation import factories

    def make(partial: Path):
        model = build()
        train.fit(model, ds.x, ds.y,
                  dataclasses.replace(config, checkpoint_dir=partial, checkpoint_every=1),
                  progress=False, on_epoch_end=on_epoch_end)
        return model

    return factories.cached_resumable(cache, recipe, make, build)
