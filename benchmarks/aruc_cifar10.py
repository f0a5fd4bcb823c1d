"""Robustness and uniqueness of IPGuard fingerprints (ARUC), the protocol of DESIGN.md section 2.

The repository's ARUC runner: the evaluation of :mod:`ipguard_jax.evaluation.pipeline` (also
run by ``ipguard evaluate``, with the same options) with the repository's defaults: results
under ``benchmarks/results/``, CIFAR-10 from the archive next to the repository, and the
models of the default CIFAR-10 run kept in ``benchmarks/zoo/cifar10``. ``--out`` is a path
prefix here (``ipguard evaluate`` takes a directory), and ``--plan`` also says how busy other
processes kept the machine while it probed the training throughput.

    # what the full run would train, what is cached, how long it takes (trains nothing)
    python benchmarks/aruc_cifar10.py --plan
    # full CIFAR-10 run (hours on a 2-core CPU; a stopped run resumes from the model cache)
    python benchmarks/aruc_cifar10.py
    # the wider model zoo: 7 architectures, 30 epochs (about a day on a 2-core CPU)
    python benchmarks/aruc_cifar10.py --preset wide
    # the same pipeline on the embedded digits data, a few minutes
    python benchmarks/aruc_cifar10.py --quick
    # the CIFAR-10 tables from the models kept in the repository (benchmarks/zoo/cifar10):
    # trains nothing, minutes on a 2-core CPU
    python benchmarks/aruc_cifar10.py --from-zoo
    # a smoke run of the CIFAR-10 path
    python benchmarks/aruc_cifar10.py --subset 600 --epochs 1 --pirate-epochs 1 --ks 3 \\
        --inits data --targets random --num 20 --steps 50 --out /tmp/aruc_smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ipguard_jax.cli.evaluate import add_arguments, setting_from_args
from ipguard_jax.evaluation import pipeline, protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402

REPO = harness.ROOT
DEFAULT_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
RESULTS = harness.RESULTS
#: The models of the default CIFAR-10 run, kept in the repository (see benchmarks/zoo/README.md).
ZOO = REPO / "benchmarks" / "zoo" / "cifar10"

Setting = protocol.Setting
load_data = protocol.load_data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parses the options (those of ``ipguard evaluate``; ``--out``: a path prefix).

    Args:
        argv: the arguments; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The parsed arguments.

    Example:
        >>> parse_args(["--quick", "--out", "/tmp/q"]).out
        '/tmp/q'
    """
    p = argparse.ArgumentParser(
        description="Robustness and uniqueness of IPGuard fingerprints (ARUC): the evaluation "
                    "pipeline.")
    add_arguments(p)
    p.add_argument("--out", default=None, help="output path prefix (no extension)")
    return p.parse_args(argv)


def make_setting(args: argparse.Namespace) -> protocol.Setting:
    """The run's setting, with CIFAR-10 next to the repository as the default data."""
    return setting_from_args(args, DEFAULT_CIFAR)


def default_zoo(setting: protocol.Setting, args: argparse.Namespace) -> Path | None:
    """The repository's zoo for the default CIFAR-10 run (no other setting writes into it)."""
    default = (setting.data == str(DEFAULT_CIFAR) and setting.subset is None
               and args.preset == "cpu" and not args.quick)
    return ZOO if default else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; ``argv`` as on the command line (``None``: ``sys.argv[1:]``).

    Writes ``<out>.{json,md,png}`` (default ``benchmarks/results/aruc_digits_quick`` with
    ``--quick``, else ``benchmarks/results/aruc_cifar10``); with ``--plan`` prints the plan
    and writes nothing.

    Returns:
        The results (see :func:`ipguard_jax.evaluation.pipeline.run`), or the plan
        (:func:`ipguard_jax.evaluation.pipeline.plan`).

    Raises:
        SystemExit: bad arguments or ``--help`` (argparse).
        ValueError: see :func:`ipguard_jax.cli.evaluate.setting_from_args` and
            :func:`ipguard_jax.evaluation.pipeline.run`; ``--from-zoo`` without a zoo.
    """
    args = parse_args(argv)
    setting = make_setting(args)
    zoo = args.zoo if args.zoo is not None else default_zoo(setting, args)
    if args.from_zoo and zoo is None:
        raise ValueError("--from-zoo needs --zoo DIR")
    if args.plan:
        result = pipeline.plan(setting, seed=args.seed, cache_dir=args.cache_dir, zoo=zoo,
                               load_monitor=harness.other_load)
        print(pipeline.format_plan(result), flush=True)
        return result
    out = Path(args.out) if args.out else RESULTS / (
        pipeline.QUICK_NAME if args.quick else pipeline.FULL_NAME)
    return pipeline.run(setting, out=out, command=harness.command(__file__, argv),
                        seed=args.seed, cache_dir=args.cache_dir, zoo=zoo,
                        from_zoo=args.from_zoo)


if __name__ == "__main__":
    main()
