"""``ipguard demo``: train, fingerprint, calibrate and verify on the embedded digits; print the
ARUC, save its plot. The work and its options live in :mod:`ipguard_jax.demo`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ipguard_jax import demo as demo_app


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Lists ``demo`` in ``commands`` (``add_subparsers``' result), for the help only: the
    demo parses its own options (:func:`run`)."""
    return commands.add_parser("demo", add_help=False,
                               help="train, fingerprint, calibrate and verify on the embedded "
                                    "digits, print the ARUC (see 'ipguard demo --help')")


def run(argv: Sequence[str]) -> int:
    """Runs :func:`ipguard_jax.demo.main` on the arguments after ``demo`` (``--debug`` dropped)."""
    try:
        return demo_app.main([a for a in argv if a != "--debug"])
    except SystemExit as e:  # --help, or argparse's one-line error (status 2)
        return e.code if isinstance(e.code, int) else 0
