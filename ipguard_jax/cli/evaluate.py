"""``ipguard evaluate --quick --out DIR``: the robustness/uniqueness (ARUC) benchmark.

The options (:func:`add_arguments`) and their reading into a
:class:`~ipguard_jax.evaluation.protocol.Setting` (:func:`setting_from_args`) are shared with
the repository's ``benchmarks/aruc_cifar10.py``; the work is
:mod:`ipguard_jax.evaluation.pipeline`'s.

Example:
    >>> import argparse
    >>> args = add_arguments(argparse.ArgumentParser()).parse_args(["--quick", "--ks", "1,3"])
    >>> setting_from_args(args).ks
    [1.0, 3.0]
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipguard_jax.cli._common import PROG, UsageError, add_common, help_text
from ipguard_jax.evaluation import pipeline, protocol


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds the ``evaluate`` sub-parser to ``commands`` (``add_subparsers``' result)."""
    p = commands.add_parser(
        "evaluate", help="robustness/uniqueness (ARUC) benchmark",
        **help_text(
            """
            Train an owner, pirated copies (fine-tuning, retraining, pruning, distillation,
            int8) and independent models, fingerprint the owner under several configurations
            and report ARUC (as ROC-AUC and as the integral of min(R, U)), TPR at 1% FPR and
            the convergence rate. Writes aruc_digits_quick.{json,md,png} (--quick) or
            aruc_cifar10.{json,md,png} into --out. Trained models are cached, so a rerun
            only fingerprints and queries.
            """,
            ["ipguard evaluate --quick --out results",
             "ipguard evaluate --data cifar10.tar.gz --ks 3,10 --inits data --out results"]))
    add_arguments(p, data_default="none: give --data, or --quick")
    p.add_argument("--out", default=".", metavar="DIR",
                   help="directory for the reports (created; default the current directory)")
    add_common(p)
    return p


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
    p.add_argument("--baselines", default="random,fgsm,pgd,cw,mistakes",
                   help="baseline fingerprints to compare on the same models (comma-separated "
                        "from random, fgsm, pgd, cw, mistakes; 'none' for none). 'mistakes': "
                        "the test images the owner labels wrongly, as they are and as "
                        "IPGuard's start points at the smallest k")
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
    p.add_argument("--preset", choices=protocol.PRESETS, default="cpu",
                   help="image data: 'cpu' (default) sizes the model zoo for hours, not days, "
                        "of training on a 2-core CPU (20 epochs; 10 independent models: the "
                        "owner's architecture 4 times, CNNs and an MLP); 'wide' trains 14 "
                        "independent models of 7 architectures for 30 epochs (about a day on "
                        "such a CPU; see --plan)")
    p.add_argument("--plan", action="store_true",
                   help="only list the models the run would train, which are cached, and an "
                        "estimate of the training time (from a short probe), then stop")
    return p


def setting_from_args(args: argparse.Namespace,
                      default_data: str | os.PathLike | None = None) -> protocol.Setting:
    """The run's :class:`~ipguard_jax.evaluation.protocol.Setting` from the options of
    :func:`add_arguments` (:func:`~ipguard_jax.evaluation.protocol.make_setting`).

    Args:
        args: the parsed options.
        default_data: the data used without ``--quick`` when ``--data`` is not given.

    Returns:
        The setting: digits with an MLP owner for ``--quick``, else image data (CIFAR-10 by
        default) with a ResNet-20 owner.

    Raises:
        ValueError: neither ``--quick``, ``--data`` nor ``default_data`` is given, or a list
            option is malformed.

    Example:
        >>> setting_from_args(add_arguments(argparse.ArgumentParser()).parse_args(
        ...     ["--quick"])).owner
        'mlp'
    """
    try:
        ks = [float(k) for k in args.ks.split(",")]
    except ValueError:
        raise ValueError(f"--ks must be comma-separated numbers, got {args.ks!r}") from None
    names = [] if args.baselines in ("", "none") else args.baselines.split(",")
    unknown = sorted(set(names) - set(protocol.BASELINES))
    if unknown:
        raise ValueError(f"--baselines: unknown {unknown}; choose from "
                         f"{', '.join(protocol.BASELINES)}")
    if args.eps is not None and not args.eps > 0:
        raise ValueError(f"--eps must be > 0, got {args.eps}")
    text = getattr(args, "conferrable_ks", None) or "3,10"
    try:
        conferrable_ks = [] if text == "none" else [float(k) for k in text.split(",")]
    except ValueError:
        raise ValueError(f"--conferrable-ks must be comma-separated numbers or 'none', got "
                         f"{text!r}") from None
    data = args.data or (None if default_data is None else str(default_data))
    if not args.quick and data is None:
        raise ValueError("give the data to evaluate on with --data (an image folder or archive "
                         "with train/ and test/ splits, or tfds:NAME), or run --quick on digits")
    return protocol.make_setting(
        quick=args.quick, data=data, owner=args.owner, epochs=args.epochs,
        pirate_epochs=args.pirate_epochs, num=args.num, steps=args.steps, ks=ks,
        inits=args.inits.split(","), targets=args.targets.split(","), baselines=names,
        eps=args.eps, subset=args.subset, conferrable_ks=conferrable_ks,
        preset=getattr(args, "preset", "cpu"))


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Runs ``ipguard evaluate`` with the parsed ``args``; ``argv`` is the whole command line,
    recorded in the reports. Returns the exit status."""
    setting = setting_from_args(args)
    if args.from_zoo and args.zoo is None:
        raise UsageError("--from-zoo needs --zoo DIR")
    if args.plan:
        print(pipeline.format_plan(pipeline.plan(setting, seed=args.seed,
                                                 cache_dir=args.cache_dir, zoo=args.zoo)))
        return 0
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / (pipeline.QUICK_NAME if args.quick else pipeline.FULL_NAME)
    pipeline.run(setting, out=prefix, command=shlex.join([PROG, *argv]), seed=args.seed,
                 cache_dir=args.cache_dir, zoo=args.zoo, from_zoo=args.from_zoo)
    return 0
