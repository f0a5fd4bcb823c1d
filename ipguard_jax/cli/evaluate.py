"""``ipguard evaluate --quick --out DIR``: the robustness/uniqueness (ARUC) benchmark."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipguard_jax.cli._common import PROG, UsageError, add_common, help_text
from ipguard_jax.evaluation import benchmark


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
    benchmark.add_arguments(p, data_default="none: give --data, or --quick")
    p.add_argument("--out", default=".", metavar="DIR",
                   help="directory for the reports (created; default the current directory)")
    add_common(p)
    return p


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Runs ``ipguard evaluate`` with the parsed ``args``; ``argv`` is the whole command line,
    recorded in the reports. Returns the exit status."""
    setting = benchmark.make_setting(args)
    if args.from_zoo and args.zoo is None:
        raise UsageError("--from-zoo needs --zoo DIR")
    if args.plan:
        print(benchmark.format_plan(benchmark.plan(setting, seed=args.seed,
                                                   cache_dir=args.cache_dir, zoo=args.zoo)))
        return 0
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / (benchmark.QUICK_NAME if args.quick else benchmark.FULL_NAME)
    benchmark.run(setting, out=prefix, command=shlex.join([PROG, *argv]), seed=args.seed,
                  cache_dir=args.cache_dir, zoo=args.zoo, from_zoo=args.from_zoo)
    return 0
