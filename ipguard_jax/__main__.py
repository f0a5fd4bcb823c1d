"""Command line: ``ipguard <command>`` or ``python -m ipguard_jax <command>``.

See :mod:`ipguard_jax.cli` for the commands (fingerprint, verify, inspect, evaluate, demo).
"""

from __future__ import annotations

import sys

from ipguard_jax.cli import main as main

if __name__ == "__main__":
    sys.exit(main())
