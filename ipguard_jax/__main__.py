"""Command line: ``ipguard <command>`` or ``python -m ipguard_jax <command>``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": "train a small owner on the embedded digits, fingerprint it, verify "
                        "copies and independent models"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: ipguard <command> [options]\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:10s} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    from ipguard_jax import demo

    return demo.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
