"""Robustness and uniqueness of IPGuard fingerprints (ARUC): the evaluation pipeline.

An owner is trained on one part of the training set; pirated copies are post-processings of
it on a disjoint part (FTLL, FTAL, RTLL, RTAL, pruning at several rates with and without
fine-tuning, distillation into the same and another architecture, int8 quantisation);
independent models are trained from scratch with other seeds, other architectures and other
data subsets. For every fingerprint configuration (k x init x target) the owner is
fingerprinted, every model is queried, and the report gives ARUC both as ROC-AUC and as the
integral of min(R, U), TPR at 1% FPR, the convergence rate and the generation time.

Models are cached by recipe (:class:`ipguard_jax.evaluation.ModelCache`, under
``$IPGUARD_JAX_CACHE/models`` or ``~/.cache/ipguard_jax/models``): a re-run with other
fingerprint settings only fingerprints and queries.

Entry points: ``ipguard evaluate`` (the command line, writing into a directory) and
``benchmarks/aruc_cifar10.py`` in the repository (writing into ``benchmarks/results``); both
parse the options of :func:`add_arguments` and call :func:`run`.

Example:
    The quick run on digits takes a few minutes on 2 cores:

    >>> from ipguard_jax.evaluation import benchmark
    >>> args = benchmark.parse_args(["--quick", "--ks", "3", "--inits", "data"])
    >>> result = benchmark.run(benchmark.make_setting(args), seed=args.seed,
    ...                        out="results/aruc_digits_quick",
    ...                        command="ipguard evaluate --quick")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

#: Output file names (without extension) of the quick (digits) and the full run.
QUICK_NAME = "aruc_digits_quick"
FULL_NAME = "aruc_cifar10"


#: Independent models of one architecture: ``name -> (data, init seed)``; ``data`` is the
#: independent split, the owner's split or a disjoint half of the independent split.
VARIANTS = {"seed1": ("independent", 1), "seed2": ("independent", 2),
            "seed3-ownerdata": ("owner split", 3), "halfA": ("indep half A", 4),
            "halfB": ("indep half B", 5)}

#: ``--preset`` choices for image data (``--quick`` has its own digits setting).
PRESETS = ("cpu", "wide")


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
        >>> setting = make_setting(parse_args(["--quick", "--ks", "1,3"]))
        >>> setting.data, setting.ks, setting.baselines
        ('digits', [1.0, 3.0], ['random', 'fgsm', 'pgd', 'cw'])
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


def add_arguments(parser: argparse.ArgumentParser, *,
                  data_default: str = "the CIFAR-10 archive next to the repository",
                  ) -> argparse.ArgumentParser:
    """Adds the evaluation options (all but ``--out``, whose meaning differs by entry point).

    Args:
        parser: the parser to extend.
        data_default: what ``--data`` defaults to, for its help text.

    Returns:
        The same parser.

    Example:
        >>> parser = add_arguments(argparse.ArgumentParser())
        >>> parser.parse_args(["--quick"]).ks
        '1,3,10,30'
    """
    p = parser
    p.add_argument("--quick", action="store_true",
                   help="digits data, MLP owner, few epochs: a few minutes on 2 cores")
    p.add_argument("--data", default=None,
                   help="image-folder directory or tar archive (train/ and test/ splits), or "
                        f"tfds:NAME; default {data_default}")
    p.add_argument("--owner", default=None, help="owner architecture (registry name)")
    p.add_argument("--epochs", type=int, default=None, help="owner/independent epochs")
    p.add_argument("--pirate-epochs", type=int, default=None)
    p.add_argument("--num", type=int, default=100, help="fingerprints per configuration")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps per point")
    p.add_argument("--ks", default="1,3,10,30")
    p.add_argument("--inits", default="data,noise")
    p.add_argument("--targets", default="random,least_likely")
    p.add_argument("--baselines", default="random,fgsm,pgd,cw",
                   help="baseline fingerprints to compare on the same models (comma-separated "
                        "from random, fgsm, pgd, cw; 'none' for none)")
    p.add_argument("--eps", type=float, default=None,
                   help="L-inf radius of the FGSM/PGD baselines (default 0.1 on digits, 8/255 "
                        "on images)")
    p.add_argument("--subset", type=int, default=None,
                   help="use only this many training (and test) images, for smoke runs")
    p.add_argument("--cache-dir", default=None, help="model cache (default: ModelCache())")
    p.add_argument("--zoo", default=None, metavar="DIR",
                   help="a model zoo (ModelZoo) to keep across machines: models it holds are "
                        "not trained, models trained are added to it (float16, compressed, "
                        "with recipe, test accuracy and training time)")
    p.add_argument("--from-zoo", action="store_true",
                   help="train nothing: every model comes from the cache or the zoo (an "
                        "absent one is an error)")
    p.add_argument("--conferrable-ks", default=None,
                   help="margins k of the conferrable fingerprints (comma-separated; default "
                        "3,10; 'none' trains no surrogates or references and runs none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=PRESETS, default="cpu",
                   help="image data: 'cpu' (default) sizes the model zoo for hours, not days, "
                        "of training on a 2-core CPU (20 epochs; 10 independent models: the "
                        "owner's architecture 4 times, CNNs and an MLP); 'wide' trains 14 "
                        "independent models of 7 architectures for 30 epochs (about a day on "
                        "such a CPU; see --plan)")
    p.add_argument("--plan", action="store_true",
                   help="only list the models the run would train, which are cached, and an "
                        "estimate of the training time (from a short probe), then stop")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parses the options of ``benchmarks/aruc_cifar10.py`` (``--out``: a path prefix).

    Args:
        argv: the arguments; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The parsed arguments.

    Example:
        >>> parse_args(["--quick", "--out", "/tmp/q"]).out
        '/tmp/q'
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--out", default=None, help="output path prefix (no extension)")
    return p.parse_args(argv)


def make_setting(args: argparse.Namespace, default_data: str | os.PathLike | None = None
                 ) -> Setting:
    """The run's :class:`Setting` from parsed arguments.

    Args:
        args: arguments parsed by a parser built with :func:`add_arguments`.
        default_data: the data used without ``--quick`` when ``--data`` is not given.

    Returns:
        The setting: digits with an MLP owner for ``--quick``, else image data (CIFAR-10 by
        default) with a ResNet-20 owner.

    Raises:
        ValueError: neither ``--quick``, ``--data`` nor ``default_data`` is given, or a list
            option is malformed.

    Example:
        >>> make_setting(parse_args(["--quick"])).owner
        'mlp'
    """
    try:
        floats = [float(k) for k in args.ks.split(",")]
    except ValueError:
        raise ValueError(f"--ks must be comma-separated numbers, got {args.ks!r}") from None
    inits, targets = args.inits.split(","), args.targets.split(",")
    names = [] if args.baselines in ("", "none") else args.baselines.split(",")
    unknown = sorted(set(names) - {"random", "fgsm", "pgd", "cw"})
    if unknown:
        raise ValueError(f"--baselines: unknown {unknown}; choose from random, fgsm, pgd, cw")
    if args.eps is not None and not args.eps > 0:
        raise ValueError(f"--eps must be > 0, got {args.eps}")
    text = getattr(args, "conferrable_ks", None) or "3,10"
    try:
        conferrable_ks = [] if text == "none" else [float(k) for k in text.split(",")]
    except ValueError:
        raise ValueError(f"--conferrable-ks must be comma-separated numbers or 'none', got "
                         f"{text!r}") from None
    if args.quick:
        return Setting(
            data="digits", owner=args.owner or "mlp",
            owner_kwargs={"in_features": 64, "in_channels": 1} if (args.owner or "mlp") == "mlp"
            else {"in_channels": 1},
            epochs=args.epochs or 30, train_optimizer="adam", train_lr=3e-3, batch_size=64,
            augment=False, pirate_epochs=args.pirate_epochs or 15, pirate_lr=1e-3,
            num=args.num, steps=args.steps, ks=floats, inits=inits, targets=targets,
            subset=args.subset, baselines=names, eps=args.eps or 0.1,
            independent_archs=[("mlp128", "mlp", {"in_features": 64, "in_channels": 1,
                                                  "hidden": [128]}),
                               ("cnn", "cnn", {"in_channels": 1})],
            distill_student=("cnn", {"in_channels": 1}) if (args.owner or "mlp") == "mlp"
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
    data = args.data or (None if default_data is None else str(default_data))
    if data is None:
        raise ValueError("give the data to evaluate on with --data (an image folder or archive "
                         "with train/ and test/ splits, or tfds:NAME), or run --quick on digits")
    owner = args.owner or "resnet20"
    common = dict(data=data, owner=owner, owner_kwargs={},
                  train_optimizer="sgd", train_lr=0.1, batch_size=128, augment=True,
                  pirate_lr=1e-3, num=args.num, steps=args.steps, ks=floats, inits=inits,
                  targets=targets, subset=args.subset, baselines=names, eps=args.eps or 8 / 255,
                  heldout_student=("vgg11", {}), conferrable_ks=conferrable_ks,
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
    if getattr(args, "preset", "cpu") == "wide":
        return Setting(
            **common, epochs=args.epochs or 30, pirate_epochs=args.pirate_epochs or 10,
            independent_archs=[(a, a, {}) for a in ("resnet32", "vgg11", "cnn", "mobilenet_v2",
                                                     "wrn16_4", "mlp")],
            distill_student=("vgg11", {}))
    # Sized for a 2-core CPU: the owner's architecture on other data and on its own data with
    # another seed (the hard cases for uniqueness), then cheap architectures.
    return Setting(
        **common, epochs=args.epochs or 20, pirate_epochs=args.pirate_epochs or 5,
        independent_archs=[("cnn", "cnn", {}), ("cnn-narrow", "cnn", {"widths": [16, 32, 64]}),
                           ("mlp", "mlp", {})],
        distill_student=("cnn", {}),
        owner_variants=["seed1", "seed3-ownerdata", "halfA", "halfB"])


def load_data(setting: Setting, seed: int):
    """The owner, pirate, independent and test splits of the setting's data.

    Args:
        setting: the run's setting (``setting.data``: ``"digits"``, ``"tfds:NAME"`` or an image
            folder or archive with ``train`` and ``test`` splits).
        seed: seed of the shuffles and splits.

    Returns:
        ``(owner, pirate, independent, test)`` :class:`~ipguard_jax.data.Dataset` objects.

    Example:
        >>> owner, pirate, independent, test = load_data(make_setting(parse_args(["--quick"])), 0)
        >>> len(owner), len(pirate), len(independent), len(test)
        (718, 359, 449, 271)
    """
    from ipguard_jax import data

    if setting.data == "digits":
        ds = data.load_digits()
        owner, pirate, indep, test = ds.split([0.4, 0.2, 0.25, 0.15], seed=seed)
        return owner, pirate, indep, test
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
    return owner, pirate, indep, test


def _train_config(setting: Setting, seed: int, n: int):
    """How the owner and the independent models train (``n`` training images)."""
    from ipguard_jax import train

    return train.TrainConfig(
        epochs=setting.epochs, batch_size=min(setting.batch_size, n),
        optimizer=setting.train_optimizer, lr=setting.train_lr,
        weight_decay=5e-4 if setting.train_optimizer == "sgd" else 0.0,
        random_crop=setting.augment, horizontal_flip=setting.augment, seed=seed)


def _trained_recipe(arch: str, kwargs: dict[str, Any], num_classes: int, ds, data_name: str,
                    seed: int, config) -> dict[str, Any]:
    """The cache key of a model trained from scratch."""
    from ipguard_jax import evaluation as ev
    from ipguard_jax.evaluation import factories

    return factories.reference_recipe(arch, kwargs, num_classes, ev.array_digest(ds.x, ds.y),
                                      data_name, seed, config)


def train_cached(cache, recipe: dict[str, Any], build, ds, config, *,
                 on_epoch_end=None):
    """A model trained from scratch, taken from the cache when it is there; resumable.

    While it trains, :func:`ipguard_jax.train.fit` checkpoints every epoch under
    ``<cache root>/training/<recipe key>``, so a run stopped part-way (a killed job, the end of
    a session) resumes at its last finished epoch and ends with the same parameters. The
    checkpoints are removed once the model is in the cache.

    Args:
        cache: the :class:`~ipguard_jax.evaluation.ModelCache`.
        recipe: the model's cache key (see ``_trained_recipe``).
        build: makes the freshly initialised model.
        ds: the training data (a :class:`~ipguard_jax.data.Dataset`).
        config: the :class:`~ipguard_jax.train.TrainConfig` (its checkpoint fields are set here).
        on_epoch_end: passed to :func:`~ipguard_jax.train.fit`.

    Returns:
        The trained model.
    """
    from ipguard_jax import train

    def make(partial: Path):
        model = build()
        train.fit(model, ds.x, ds.y,
                  dataclasses.replace(config, checkpoint_dir=partial, checkpoint_every=1),
                  progress=False, on_epoch_end=on_epoch_end)
        return model

    return _cached_resumable(cache, recipe, make, build)


def _cached_resumable(cache, recipe: dict[str, Any], make, like):
    from ipguard_jax.evaluation import factories

    return factories.cached_resumable(cache, recipe, make, like)


def _training_dir(cache, recipe: dict[str, Any]) -> Path:
    """Where the model of ``recipe`` checkpoints while it trains (removed once it is cached)."""
    from ipguard_jax.evaluation import factories

    return factories.training_dir(cache, recipe)


def _epoch_reporter(name: str, epochs: int):
    """An ``on_epoch_end`` that prints one line per finished epoch of model ``name``."""
    def report(epoch: int, metrics: dict[str, float]) -> None:
        print(f"  {name} epoch {epoch}/{epochs}: loss {metrics['loss']:.3f}, "
              f"train accuracy {metrics['accuracy']:.3f}, {metrics['seconds']:.0f} s",
              flush=True)
    return report


def _pirate_recipe(owner_hash: str, kind: str, params: dict[str, Any], data_hash: str,
                   config) -> dict[str, Any]:
    """The cache key of a pirated copy of the owner."""
    return {"role": "pirated", "owner_hash": owner_hash, "kind": kind, "params": params,
            "data_hash": data_hash, "config": config.to_dict()}


def _pirate_config(setting: Setting, seed: int):
    """How the pirates fine-tune, retrain and distil."""
    from ipguard_jax.evaluation import postprocess as pp

    return pp.PirateConfig(epochs=setting.pirate_epochs, lr=setting.pirate_lr, seed=seed,
                           random_crop=setting.augment, horizontal_flip=setting.augment)


def pirate_specs(setting: Setting) -> list[tuple[str, str, dict[str, Any]]]:
    """The pirated copies of a run: ``(name, post-processing kind, its parameters)``.

    Example:
        >>> [name for name, _, _ in pirate_specs(make_setting(parse_args(["--quick"])))][:6]
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
    ]
    if setting.conferrable_ks:
        # What conferrable points must survive: extraction through a label-only API, and
        # distillation into an architecture none of the surrogates has.
        specs.append(("extract-same", "extract", {}))
        if setting.heldout_student is not None:
            arch, kwargs = setting.heldout_student
            specs.append((f"distill-{arch}", "distill",
                          {"temperature": 4.0, "label_copies": 2, "student": arch,
                           "student_kwargs": kwargs}))
    return specs


def surrogate_specs(setting: Setting) -> list[tuple[str, str, dict[str, Any]]]:
    """The surrogates the defender derives from its owner for the conferrable rows.

    Example:
        >>> [n for n, _, _ in surrogate_specs(make_setting(parse_args(["--quick"])))][:2]
        ['sur-distill-same', 'sur-distill-cnn']
    """
    from ipguard_jax.evaluation import factories

    if not setting.conferrable_ks:
        return []
    return factories.default_surrogate_specs(*setting.distill_student) + list(
        setting.extra_surrogates)


def independent_specs(setting: Setting, owner_ds, indep_ds, seed: int) -> list[tuple]:
    """The independent models of a run: ``(name, arch, kwargs, data, data name, init seed)``.

    The owner's architecture in each of ``setting.owner_variants`` (other seeds, on the
    independent split, on the owner's own split or on disjoint halves of the independent
    split: see :data:`VARIANTS`); every other architecture once; one of them (the first for
    images, the last for digits) also with other seeds and data.

    Example:
        >>> setting = make_setting(parse_args(["--quick"]))
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


#: Every model of a run is rounded to this precision as it is made (or loaded), so the models a
#: run evaluates are exactly those a :class:`~ipguard_jax.evaluation.ModelZoo` keeps.
PRECISION = "float16"


def _model_cache(cache_dir, zoo, from_zoo: bool):
    from ipguard_jax import evaluation as ev

    if from_zoo and zoo is None:
        raise ValueError("from_zoo needs a zoo directory")
    return ev.ModelCache(cache_dir, precision=PRECISION,
                         zoo=None if zoo is None else ev.ModelZoo(zoo), build=not from_zoo)


def run(setting: Setting, *, out: str | os.PathLike, command: str, seed: int = 0,
        cache_dir: str | os.PathLike | None = None, zoo: str | os.PathLike | None = None,
        from_zoo: bool = False) -> dict[str, Any]:
    """Trains (or loads) the models, fingerprints, verifies and writes the reports.

    Args:
        setting: what to run (see :func:`make_setting`).
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
        >>> result = run(make_setting(parse_args(["--quick"])), out="/tmp/aruc",
        ...              command="ipguard evaluate --quick")  # doctest: +SKIP
        >>> sorted(result["configs"][0])[:3]  # doctest: +SKIP
        ['aruc_min', 'aruc_roc', 'best_threshold']
    """
    out = Path(out)
    t_start = time.perf_counter()

    import jax

    import ipguard_jax as ipg
    from ipguard_jax import methods
    from ipguard_jax import evaluation as ev
    from ipguard_jax import train
    from ipguard_jax.evaluation import postprocess as pp

    if (hint := train.malloc_hint()) is not None:
        print(f"note: {hint}", flush=True)
    owner_ds, pirate_ds, indep_ds, test_ds = load_data(setting, seed)
    num_classes = owner_ds.num_classes
    input_shape = tuple(owner_ds.x.shape[1:])
    cache = _model_cache(cache_dir, zoo, from_zoo)
    digests = {name: ev.array_digest(d.x, d.y) for name, d in
               (("owner", owner_ds), ("pirate", pirate_ds), ("independent", indep_ds))}

    build_s: dict[str, float | None] = {}  # what each model cost when it was built

    def note_cost(name: str, recipe: dict[str, Any]) -> None:
        # The wall time of the build; for a training run resumed across calls, the time of
        # all its epochs if that is more (the wall time then covers the last call only).
        info = cache.info(recipe) or {}
        known = [info[k] for k in ("build_s", "train_s") if info.get(k) is not None]
        build_s[name] = max(known) if known else None

    accuracy: dict[str, float] = {}

    def keep(name: str, recipe: dict[str, Any], model, arch: str) -> None:
        # The test accuracy, and the model into the zoo if it is not there yet.
        accuracy[name] = train.evaluate(model, test_ds.x, test_ds.y)
        if cache.zoo is not None and recipe not in cache.zoo:
            path = cache.zoo.add(name, recipe, model, {
                "arch": arch, "test_accuracy": accuracy[name], "train_s": build_s[name],
                "data": _data_label(setting.data), "machine": f"{os.cpu_count()} CPUs, "
                f"{platform.machine()}", "malloc": train.malloc_in_use()})
            print(f"  added {name} to the zoo: {path.name}", flush=True)

    def trained(name: str, arch: str, kwargs: dict[str, Any], ds, data_name: str, seed: int):
        config = _train_config(setting, seed, len(ds))
        recipe = _trained_recipe(arch, kwargs, num_classes, ds, data_name, seed, config)
        if recipe not in cache:
            print(f"training {name} ({arch}, {len(ds)} images of the {data_name}, "
                  f"{config.epochs} epochs)", flush=True)
        model = train_cached(cache, recipe, lambda: pp.build_model(arch, num_classes, seed,
                                                                   **kwargs), ds, config,
                             on_epoch_end=_epoch_reporter(name, config.epochs))
        note_cost(name, recipe)
        keep(name, recipe, model, arch)
        return model

    pirates = pirate_specs(setting)
    indep_specs = independent_specs(setting, owner_ds, indep_ds, seed)
    sur_specs = surrogate_specs(setting)
    ref_specs = setting.references if setting.conferrable_ks else []
    names = [spec[0] for spec in indep_specs] + [spec[0] for spec in pirates] + [
        spec[0] for spec in sur_specs] + [spec[0] for spec in ref_specs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names repeat: {sorted(n for n in names if names.count(n) > 1)}")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    owner = trained("owner", setting.owner, setting.owner_kwargs, owner_ds, "owner split",
                    seed)
    timings["owner_s"] = time.perf_counter() - t0
    owner_hash = ev.model_hash(owner)

    pirate_config = _pirate_config(setting, seed)

    def like_owner():
        return pp.build_model(setting.owner, num_classes, 0, **setting.owner_kwargs)

    pirated_models = {}
    t0 = time.perf_counter()
    for name, kind, params in pirates:
        recipe = _pirate_recipe(owner_hash, kind, params, digests["pirate"], pirate_config)
        if kind == "distill" and "student" in params:
            def like(a=params["student"], kw=params["student_kwargs"]):
                return pp.build_model(a, num_classes, 0, **kw)
        else:
            like = like_owner
        if recipe not in cache:
            print(f"making the pirated copy {name} ({kind})", flush=True)

        def make(partial, k=kind, p=params, report=_epoch_reporter(name, pirate_config.epochs)):
            config = dataclasses.replace(pirate_config, checkpoint_dir=partial,
                                         on_epoch_end=report)
            return pp.make_pirate(k, owner, pirate_ds.x, pirate_ds.y, config, **p)

        # A pirate that trains checkpoints every epoch, so a stopped run resumes it.
        pirated_models[name] = _cached_resumable(cache, recipe, make, like)
        note_cost(name, recipe)
        keep(name, recipe, pirated_models[name],
             params["student"] if "student" in params else setting.owner)
    timings["pirated_s"] = time.perf_counter() - t0

    independent_models = {}
    t0 = time.perf_counter()
    for name, arch, kwargs, ds, data_name, model_seed in indep_specs:
        independent_models[name] = trained(name, arch, kwargs, ds, data_name, model_seed)
    timings["independent_s"] = time.perf_counter() - t0

    # The defender's own models for the conferrable rows, made from the owner and its split
    # only; never scored (the scored models above are checked to be none of them).
    surrogate_models, reference_models = {}, {}
    if sur_specs or ref_specs:
        from ipguard_jax.evaluation import factories

        def member(arch_of):
            def on_model(name, recipe, model):
                note_cost(name, recipe)
                keep(name, recipe, model, arch_of(name))
            return on_model

        sur_arch = {n: p.get("student", setting.owner) for n, _, p in sur_specs}
        t0 = time.perf_counter()
        surrogate_models = factories.make_surrogates(
            owner, owner_ds.x, owner_ds.y, sur_specs,
            config=dataclasses.replace(pirate_config, seed=seed + 100), cache=cache,
            on_model=member(sur_arch.get),
            reporter=lambda n: _epoch_reporter(n, pirate_config.epochs))
        timings["surrogates_s"] = time.perf_counter() - t0
        ref_arch = {n: a for n, a, _, _ in ref_specs}
        t0 = time.perf_counter()
        reference_models = factories.make_references(
            owner_ds.x, owner_ds.y, ref_specs, num_classes=num_classes,
            config=_train_config(setting, seed, len(owner_ds)), data_name="owner split",
            cache=cache, on_model=member(ref_arch.get),
            reporter=lambda n: _epoch_reporter(n, setting.epochs))
        timings["references_s"] = time.perf_counter() - t0
        scored = {ev.model_hash(m) for m in (*pirated_models.values(),
                                              *independent_models.values())}
        shared = [n for n, m in (*surrogate_models.items(), *reference_models.items())
                  if ev.model_hash(m) in scored]
        if shared:
            raise RuntimeError(f"surrogates or references {shared} are also scored models")

    def clf(model):
        return ipg.Classifier.from_nnx(model, input_shape=input_shape)

    owner_clf = clf(owner)
    pirated = {n: clf(m) for n, m in pirated_models.items()}
    independent = {n: clf(m) for n, m in independent_models.items()}

    rows, reports = [], {}
    t0 = time.perf_counter()

    def fingerprint_and_evaluate(label, config, method, row):
        tg = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ipg.ConvergenceWarning)
            fp = ipg.generate(owner_clf, config, key=seed,
                              data=test_ds.x if config.init == "data" else None,
                              method=method, progress=False)
        gen_s = time.perf_counter() - tg
        row = {"config": label, **row, "num_fingerprints": len(fp),
               "convergence_rate": fp.convergence_rate, "generation_s": gen_s}
        if "screening" in fp.metadata:
            row["screening"] = fp.metadata["screening"]
        if len(fp) == 0:  # no point reached the margin: nothing to verify
            rows.append({**row, "aruc_roc": math.nan, "aruc_min": math.nan,
                         "tpr_at_1pct_fpr": math.nan, "best_threshold": math.nan,
                         "owner_rate": math.nan})
            print(f"{label}: no fingerprint converged", flush=True)
            return
        rep = ev.evaluate(fp, owner_clf, pirated, independent, meta={
            "config": config.to_dict(), "method": fp.metadata["method"],
            "convergence_rate": fp.convergence_rate, "num_fingerprints": len(fp),
            "generation_s": gen_s})
        reports[label] = rep
        rows.append({**row, "aruc_roc": rep.aruc_roc, "aruc_min": rep.aruc_min,
                     "tpr_at_1pct_fpr": rep.tpr_at_1pct_fpr,
                     "best_threshold": rep.best_threshold, "owner_rate": rep.owner_rate,
                     "intervals": rep.intervals})
        print(f"{label}: ARUC(roc)={rep.aruc_roc:.3f} ARUC(min)={rep.aruc_min:.3f} "
              f"TPR@1%FPR={rep.tpr_at_1pct_fpr:.2f} conv={fp.convergence_rate:.2f} "
              f"gen={gen_s:.1f}s", flush=True)

    for k in setting.ks:
        for init in setting.inits:
            for target in setting.targets:
                config = ipg.FingerprintConfig(num=setting.num, k=k, steps=setting.steps,
                                               init=init, target=target)
                fingerprint_and_evaluate(f"k={k:g} init={init} target={target}", config,
                                         "ipguard", {"method": "ipguard", "k": k, "init": init,
                                                     "target": target})
    # Baselines on the same owner, models and queries: start images from the test split,
    # adversarial ones keep only successful attacks (like IPGuard keeps converged points).
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
        for label, method, init in baseline_methods[name]:
            config = ipg.FingerprintConfig(num=setting.num, init=init, target="random")
            fingerprint_and_evaluate(label, config, method,
                                     {"method": name, "k": None, "init": init,
                                      "target": "random" if name == "cw" else None})
    if setting.conferrable_ks:
        from ipguard_jax.conferrable import Conferrable

        method = Conferrable(surrogates={n: clf(m) for n, m in surrogate_models.items()},
                             references={n: clf(m) for n, m in reference_models.items()})
        members_s = sum(build_s.get(n) or 0.0 for n in (*surrogate_models, *reference_models))
        target = setting.targets[0]
        for k in setting.conferrable_ks:
            config = ipg.FingerprintConfig(num=setting.num, k=k, steps=setting.steps,
                                           init="data", target=target)
            fingerprint_and_evaluate(f"conferrable k={k:g} init=data target={target}", config,
                                     method, {"method": "conferrable", "k": k, "init": "data",
                                              "target": target, "members_build_s": members_s})
    timings["fingerprint_and_verify_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "setting": dataclasses.asdict(setting),
        "platform": {"python": platform.python_version(), "jax": jax.__version__,
                     "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(),
                     "malloc": train.malloc_in_use()},
        "version": ipg.__version__,
        "data_sizes": {"owner": len(owner_ds), "pirate": len(pirate_ds),
                       "independent": len(indep_ds), "test": len(test_ds)},
        "cache": {"root": str(cache.root), "hits": cache.hits, "misses": cache.misses,
                  "zoo": None if cache.zoo is None else str(zoo), "zoo_hits": cache.zoo_hits,
                  "precision": PRECISION},
        "timings_s": timings,
        "model_build_s": build_s,
        "accuracy": accuracy,
        "pirated": {n: {"kind": k, "params": {a: b for a, b in p.items()
                                              if a != "student_kwargs"}}
                    for n, k, p in pirates},
        "independent": {n: {"arch": a, "data": d, "seed": s}
                        for n, a, _, _, d, s in indep_specs},
        "surrogates": {n: {"kind": k, "params": {a: b for a, b in p.items()
                                                  if a != "student_kwargs"}}
                       for n, k, p in sur_specs},
        "references": {n: {"arch": a, "data": "owner split", "seed": sd}
                       for n, a, _, sd in ref_specs},
        "configs": rows,
        "reports": {label: rep.to_dict() for label, rep in reports.items()},
    }
    with open(out.with_suffix(".json"), "w") as f:
        json.dump(_strict_json(result), f, indent=2, default=str)
    out.with_suffix(".md").write_text(_markdown(result, reports))
    if reports:
        best = max(reports, key=lambda lb: (reports[lb].aruc_roc, reports[lb].aruc_min))
        reports[best].plot(out.with_suffix(".png"),
                           title=f"{_data_label(setting.data)}: best config, {best}")
    print(f"wrote {out}.{{json,md,png}} in {timings['total_s']:.0f} s")
    return result


#: Post-processings that only edit the owner's weights: they train nothing.
_NO_TRAINING = ("prune", "int8")


def plan(setting: Setting, *, seed: int = 0, cache_dir: str | os.PathLike | None = None,
         probe_batches: int = 2, zoo: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a run would train, what the model cache already holds, and how long the rest takes.

    Nothing is trained or written. A model stopped part-way (its epoch checkpoints are in the
    cache's ``training`` directory) counts only the epochs it has left. The time estimate comes
    from a short probe of each architecture that still has to train (``probe_batches`` batches,
    timed on a second, compiled epoch of :func:`ipguard_jax.train.fit`); a pirate counts as
    training its model for the pirate epochs (fine-tuning the last layer costs less, so that is
    an upper bound).
    Fingerprinting and queries come on top.

    Args:
        setting: the run's setting (see :func:`make_setting`).
        seed: the run's seed (the splits and the cache keys depend on it).
        cache_dir: the model cache (default :func:`~ipguard_jax.evaluation.default_model_dir`).
        probe_batches: batches per probe epoch.
        zoo: a :class:`~ipguard_jax.evaluation.ModelZoo` directory; its models count as cached.

    Returns:
        ``{"models": [...], "train_images_per_s": {...}, "compile_s": {...},
        "estimated_s": ..., "estimated_uncached_s": ...}``; each model row has ``role``,
        ``name``, ``arch``, ``kwargs``, ``train_images``, ``epochs``, ``epochs_done`` (those
        checkpointed by a run that stopped), ``cached`` and ``estimated_s`` (the remaining
        training plus one compilation; 0 for cached models). ``other_cores_while_probing`` is
        how many cores other processes kept busy during the probes (``None`` where that cannot
        be read, as off Linux, or when the probes took less than a second).

    Example:
        >>> p = plan(make_setting(parse_args(["--quick"])),
        ...          cache_dir="/tmp/empty_cache")  # doctest: +SKIP
        >>> print(format_plan(p))  # doctest: +SKIP
    """
    from ipguard_jax import evaluation as ev
    from ipguard_jax import train
    from ipguard_jax.evaluation import postprocess as pp

    owner_ds, pirate_ds, indep_ds, _ = load_data(setting, seed)
    num_classes = owner_ds.num_classes
    cache = _model_cache(cache_dir, zoo, False)
    rows = []

    def epochs_done(recipe, cached: bool) -> int:
        history = None if cached else train.checkpoint_history(_training_dir(cache, recipe))
        return len(history["epoch"]) if history else 0

    def trained_row(role, name, arch, kwargs, ds, data_name, model_seed):
        config = _train_config(setting, model_seed, len(ds))
        recipe = _trained_recipe(arch, kwargs, num_classes, ds, data_name, model_seed, config)
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
    pirate_config = _pirate_config(setting, seed)
    pirate_hash = ev.array_digest(pirate_ds.x, pirate_ds.y)
    for name, kind, params in pirate_specs(setting):
        recipe = _pirate_recipe(owner_hash or "", kind, params, pirate_hash, pirate_config)
        student = "student" in params
        cached = owner_hash is not None and recipe in cache
        rows.append({"role": "pirated", "name": name,
                     "arch": params["student"] if student else setting.owner,
                     "kwargs": params["student_kwargs"] if student else setting.owner_kwargs,
                     "train_images": len(pirate_ds),
                     "epochs": 0 if kind in _NO_TRAINING else setting.pirate_epochs,
                     "epochs_done": epochs_done(recipe, cached or owner_hash is None),
                     "cached": cached})
    for name, arch, kwargs, ds, data_name, model_seed in independent_specs(
            setting, owner_ds, indep_ds, seed):
        trained_row("independent", name, arch, kwargs, ds, data_name, model_seed)
    from ipguard_jax.evaluation import factories

    owner_data = ev.array_digest(owner_ds.x, owner_ds.y)
    for n, (name, kind, params) in enumerate(surrogate_specs(setting)):
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
    for name, arch, kwargs, model_seed in (setting.references if setting.conferrable_ks else []):
        trained_row("reference", name, arch, kwargs, owner_ds, "owner split", model_seed)

    rates: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    n = min(len(owner_ds), setting.batch_size * probe_batches)
    wall0, busy0, own0 = time.perf_counter(), _system_busy_s(), _own_cpu_s()
    for row in rows:
        label = row["arch"] + (json.dumps(row["kwargs"], sort_keys=True) if row["kwargs"] else "")
        row["estimated_s"] = 0.0
        if row["cached"] or row["epochs"] <= row["epochs_done"]:
            continue
        if label not in rates:
            model = pp.build_model(row["arch"], num_classes, 0, **row["kwargs"])
            config = dataclasses.replace(_train_config(setting, 0, n), epochs=2)
            seconds = train.fit(model, owner_ds.x[:n], owner_ds.y[:n], config,
                                progress=False).history["seconds"]
            rates[label] = n // config.batch_size * config.batch_size / seconds[-1]
            compile_s[label] = max(0.0, seconds[0] - seconds[-1])
        left = row["epochs"] - row["epochs_done"]
        row["estimated_s"] = row["train_images"] * left / rates[label] + compile_s[label]
    # What other processes took of the machine while it was probed: a busy machine makes the
    # probe slow and the estimate pessimistic.
    wall, busy1 = time.perf_counter() - wall0, _system_busy_s()
    other_cores = None
    if rates and busy0 is not None and busy1 is not None and wall >= 1.0:
        other_cores = round(max(0.0, (busy1 - busy0) - (_own_cpu_s() - own0)) / wall, 2)
    return {"setting": dataclasses.asdict(setting), "seed": seed,
            "train_images_per_s": rates, "compile_s": compile_s,
            "other_cores_while_probing": other_cores, "cpu_count": os.cpu_count(),
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


def _system_busy_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds this process has used (user and system)."""
    times = os.times()
    return times.user + times.system


def main(argv: list[str] | None = None, *, results_dir: str | os.PathLike | None = None,
         default_data: str | os.PathLike | None = None,
         script: str = "benchmarks/aruc_cifar10.py",
         default_zoo: Callable[[Setting, argparse.Namespace], str | os.PathLike | None]
         | None = None) -> dict[str, Any]:
    """The ``benchmarks/aruc_cifar10.py`` command line: parse, run, write.

    Args:
        argv: the arguments; ``None`` reads ``sys.argv`` (and records it as the command).
        results_dir: where ``<name>.{json,md,png}`` go without ``--out`` (default: the current
            directory).
        default_data: the data used without ``--quick`` and ``--data``.
        script: the script name recorded in the command when ``argv`` is given.
        default_zoo: gives the model zoo used without ``--zoo`` for a setting and the parsed
            arguments (``None``, or returning ``None``: no zoo).

    Returns:
        The results (see :func:`run`).

    Raises:
        SystemExit: bad arguments or ``--help`` (argparse).
        ValueError: see :func:`make_setting` and :func:`run`.

    Example:
        >>> result = main(["--quick", "--ks", "3", "--out", "/tmp/aruc"])  # doctest: +SKIP
        >>> result["configs"][0]["k"]  # doctest: +SKIP
        3.0
    """
    args = parse_args(argv)
    setting = make_setting(args, default_data)
    zoo = args.zoo if args.zoo is not None else (
        default_zoo(setting, args) if default_zoo is not None else None)
    if args.from_zoo and zoo is None:
        raise ValueError("--from-zoo needs --zoo DIR")
    if args.plan:
        result = plan(setting, seed=args.seed, cache_dir=args.cache_dir, zoo=zoo)
        print(format_plan(result), flush=True)
        return result
    out = Path(args.out) if args.out else Path(results_dir or ".") / (
        QUICK_NAME if args.quick else FULL_NAME)
    command = " ".join(["python", *([sys.argv[0]] if argv is None else [script]),
                        *(sys.argv[1:] if argv is None else argv)])
    return run(setting, out=out, command=command, seed=args.seed, cache_dir=args.cache_dir,
               zoo=zoo, from_zoo=args.from_zoo)


def _strict_json(value: Any) -> Any:
    """NaN/inf (metrics of configs without fingerprints) as null, so any JSON reader copes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _cold_cost(result: dict[str, Any]) -> str:
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


def _data_label(data: str) -> str:
    """The data as report titles name it: an archive or folder without the path it had."""
    if data.startswith("tfds:"):  # a TFDS name may hold a "/" before its config
        return data
    return Path(data).name


def _conferrable_lines(result: dict[str, Any]) -> list[str]:
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


def _markdown(result: dict[str, Any], reports: dict[str, Any]) -> str:
    lines = [
        f"# ARUC of IPGuard fingerprints ({_data_label(result['setting']['data'])}, owner "
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

