"""Robustness and uniqueness of IPGuard fingerprints (ARUC), the protocol of DESIGN.md section 2.

The pipeline lives in :mod:`ipguard_jax.evaluation.benchmark` (also run by ``ipguard
evaluate``); this script runs it with the repository's defaults: results under
``benchmarks/results/``, CIFAR-10 from the archive next to the repository.

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
    python benchmarks/aruc_cifar10.py --subset 600 --epochs 1 --pirate-epochs 1 --ks 3 \
        --inits data --targets random --num 20 --steps 50 --out /tmp/aruc_smoke
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ipguard_jax.evaluation import benchmark

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
RESULTS = REPO / "benchmarks" / "results"
#: The models of the default CIFAR-10 run, kept in the repository (see benchmarks/zoo/README.md).
ZOO = REPO / "benchmarks" / "zoo" / "cifar10"

Setting = benchmark.Setting
parse_args = benchmark.parse_args
load_data = benchmark.load_data


def make_setting(args) -> benchmark.Setting:
    """The run's setting, with CIFAR-10 next to the repository as the default data."""
    return benchmark.make_setting(args, DEFAULT_CIFAR)


def default_zoo(setting: benchmark.Setting, args) -> Path | None:
    """The repository's zoo for the default CIFAR-10 run (no other setting writes into it)."""
    default = (setting.data == str(DEFAULT_CIFAR) and setting.subset is None
               and args.preset == "cpu" and not args.quick)
    return ZOO if default else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; ``argv`` as on the command line (``None``: ``sys.argv[1:]``)."""
    return benchmark.main(argv, results_dir=RESULTS, default_data=DEFAULT_CIFAR,
                          script="benchmarks/aruc_cifar10.py", default_zoo=default_zoo)


if __name__ == "__main__":
    main()
