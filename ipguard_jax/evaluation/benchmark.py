"""Deprecated: the former home of the ARUC evaluation, kept for one release.

Importing it warns (:class:`DeprecationWarning`). Its names now live where they belong:

- :mod:`ipguard_jax.evaluation.protocol`: :class:`Setting`, the settings
  (:func:`~ipguard_jax.evaluation.protocol.make_setting`, from keywords), :func:`load_data`,
  :func:`pirate_specs`, :func:`independent_specs`, :func:`surrogate_specs`, the recipes and
  :func:`train_cached`;
- :mod:`ipguard_jax.evaluation.pipeline`: :func:`run`, :func:`plan`, :func:`format_plan`;
- :mod:`ipguard_jax.cli.evaluate`: the command-line options (:func:`add_arguments`) and their
  reading into a setting (``setting_from_args``, formerly ``make_setting(args)``);
- the repository's ``benchmarks/aruc_cifar10.py``: the benchmark's own command line
  (``parse_args``, ``main``) and its defaults (results directory, CIFAR-10 archive, zoo).
"""

from __future__ import annotations

import warnings
from typing import Any

from ipguard_jax.evaluation.pipeline import FULL_NAME as FULL_NAME
from ipguard_jax.evaluation.pipeline import QUICK_NAME as QUICK_NAME
from ipguard_jax.evaluation.pipeline import format_plan as format_plan
from ipguard_jax.evaluation.pipeline import plan as plan
from ipguard_jax.evaluation.pipeline import run as run
from ipguard_jax.evaluation.protocol import PRECISION as PRECISION
from ipguard_jax.evaluation.protocol import PRESETS as PRESETS
from ipguard_jax.evaluation.protocol import VARIANTS as VARIANTS
from ipguard_jax.evaluation.protocol import Setting as Setting
from ipguard_jax.evaluation.protocol import independent_specs as independent_specs
from ipguard_jax.evaluation.protocol import load_data as load_data
from ipguard_jax.evaluation.protocol import pirate_specs as pirate_specs
from ipguard_jax.evaluation.protocol import surrogate_specs as surrogate_specs
from ipguard_jax.evaluation.protocol import train_cached as train_cached

warnings.warn("ipguard_jax.evaluation.benchmark is deprecated and will be removed in the next "
              "release: use ipguard_jax.evaluation.pipeline (run, plan, format_plan), "
              "ipguard_jax.evaluation.protocol (Setting, make_setting, load_data, the specs) "
              "and ipguard_jax.cli.evaluate (add_arguments, setting_from_args)",
              DeprecationWarning, stacklevel=2)


def add_arguments(parser, *, data_default: str = "the CIFAR-10 archive next to the repository"):
    """Deprecated: :func:`ipguard_jax.cli.evaluate.add_arguments`."""
    from ipguard_jax.cli import evaluate

    return evaluate.add_arguments(parser, data_default=data_default)


def make_setting(args: Any, default_data: Any = None) -> Setting:
    """Deprecated: :func:`ipguard_jax.cli.evaluate.setting_from_args` (parsed options), or
    :func:`ipguard_jax.evaluation.protocol.make_setting` (keywords)."""
    from ipguard_jax.cli import evaluate

    return evaluate.setting_from_args(args, default_data)
