"""The ``ipguard`` command line: fingerprint, verify, calibrate, inspect, evaluate.

Commands::

    ipguard fingerprint MODEL -o FINGERPRINTS   model + data -> fingerprint file
    ipguard verify FINGERPRINTS SUSPECT         matching rate, p-value, verdict (--sequential:
                                                stop after the fewest queries that decide)
    ipguard calibrate FINGERPRINTS REF... -o OUT
                                                the null, measured on independent models
    ipguard inspect FINGERPRINTS                provenance of a fingerprint file (never the points)
    ipguard evaluate --quick --out DIR          the robustness/uniqueness (ARUC) benchmark
    ipguard demo                                train, fingerprint, calibrate and verify on
                                                digits; print the ARUC, save its plot

A MODEL or SUSPECT is a model file written by :func:`ipguard_jax.models.save_model`, a PyTorch
state dict file (``torch.save(model.state_dict(), path)``; converted by
:func:`ipguard_jax.convert.from_torch`), a Keras ``.keras`` file, or (SUSPECT only) an
``http(s)://`` prediction endpoint (:class:`ipguard_jax.HTTPSuspect`).

The package holds one module per command (:mod:`~ipguard_jax.cli.fingerprint`,
:mod:`~ipguard_jax.cli.verify`, :mod:`~ipguard_jax.cli.calibrate`,
:mod:`~ipguard_jax.cli.inspect`, :mod:`~ipguard_jax.cli.evaluate`, :mod:`~ipguard_jax.cli.demo`),
each with its sub-parser (``add_parser``) and its runner (``run``), and
:mod:`~ipguard_jax.cli._common` for what they share. The commands only parse and report: models
and data are opened by :mod:`ipguard_jax.adapters.sources`, the work is done by the library.

Exit status: ``verify`` exits 0 when the suspect is not judged a copy and 1 when it is; every
command exits 2 on an error (bad arguments, missing or corrupt files, an unreachable endpoint),
printing one line ``ipguard: error: ...`` on stderr (``--debug`` shows the traceback instead).

Example:
    >>> from ipguard_jax.cli import main
    >>> main(["verify", "owner_fp", "suspect_model", "--null-rate", "0.3"])  # doctest: +SKIP
    1
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ipguard_jax.cli import calibrate, demo, evaluate, fingerprint, inspect, verify
from ipguard_jax.cli._common import EXIT_COPY as EXIT_COPY
from ipguard_jax.cli._common import EXIT_ERROR as EXIT_ERROR
from ipguard_jax.cli._common import EXIT_NOT_COPY as EXIT_NOT_COPY
from ipguard_jax.cli._common import PROG as PROG
from ipguard_jax.cli._common import UsageError as UsageError
from ipguard_jax.cli._common import Parser, error_line, help_text, quiet_library_logs
from ipguard_jax.cli._common import load_data_source as load_data_source
from ipguard_jax.cli._common import load_fingerprints as load_fingerprints
from ipguard_jax.cli._common import load_model_source as load_model_source

__all__ = ["EXIT_COPY", "EXIT_ERROR", "EXIT_NOT_COPY", "PROG", "UsageError", "build_parser",
           "load_data_source", "load_fingerprints", "load_model_source", "main"]

#: The commands, in the order of the help; each module has ``add_parser(commands)``.
_COMMANDS = (fingerprint, verify, calibrate, inspect, evaluate, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``ipguard`` argument parser, with one sub-parser per command.

    Returns:
        The parser; its errors raise :class:`UsageError` instead of exiting.

    Example:
        >>> args = build_parser().parse_args(["inspect", "owner_fp"])
        >>> args.command, args.fingerprints
        ('inspect', 'owner_fp')
    """
    parser = Parser(
        prog=PROG,
        **help_text(
            """
            IPGuard fingerprints of a classifier's decision boundary: fingerprint an owner
            model, verify whether a suspect model is a copy of it, inspect fingerprint files,
            evaluate robustness and uniqueness.

            verify exits 0 (not a copy) or 1 (a copy); every command exits 2 on an error.
            """,
            ["ipguard fingerprint owner_model -o owner_fp --num 100 --k 3",
             "ipguard verify owner_fp suspect_model --null-rate 0.3",
             "ipguard calibrate owner_fp indep1 indep2 indep3 indep4 indep5 -o owner_fp_cal",
             "ipguard verify owner_fp_cal https://api.example.com/predict --sequential",
             "ipguard inspect owner_fp",
             "ipguard evaluate --quick --out results",
             "ipguard demo"]))
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in _COMMANDS:  # the demo is dispatched before parsing; listed for the help
        command.add_parser(commands)
    return parser


def _first_command(argv: Sequence[str]) -> int | None:
    for index, arg in enumerate(argv):
        if not arg.startswith("-"):
            return index
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``ipguard`` command line.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 success (``verify``: not a copy), 1 ``verify``: a copy, 2 an error
        (reported as one line on stderr), 130 when interrupted (Ctrl-C). ``--help`` prints
        the help and returns 0.

    With ``--debug`` an error prints its traceback (and the libraries' logs stay on) instead
    of the one line; the exit status is 2 all the same.

    Example:
        >>> main(["inspect", "owner_fp"])  # doctest: +SKIP
        0
        >>> main(["inspect", "/no/such/fingerprints"])  # "ipguard: error: ..." on stderr
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    index = _first_command(argv)
    debug = "--debug" in argv
    try:
        if index is not None and argv[index] == "demo":  # the demo parses its own options
            return demo.run(argv[index + 1:])
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else 0
        if args.command is None:
            parser.print_help()
            return 0
        debug = args.debug
        commands = {"fingerprint": fingerprint.run, "verify": verify.run,
                    "calibrate": calibrate.run, "inspect": inspect.run}
        with quiet_library_logs(not debug):
            if args.command == "evaluate":
                return evaluate.run(args, argv)
            return commands[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure is reported as one line with exit status 2
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {error_line(e)}", file=sys.stderr)
        return EXIT_ERROR
