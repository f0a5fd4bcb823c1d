"""``ipguard calibrate FINGERPRINTS REF... -o OUT``: the null, measured on independent models."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import ipguard_jax as ipg
from ipguard_jax.adapters.sources import URL_PREFIXES
from ipguard_jax.calibration import calibrate, with_calibration
from ipguard_jax.cli._common import (
    UsageError,
    add_common,
    add_model_options,
    add_passphrase_options,
    checked_output,
    help_text,
    load_fingerprints,
    load_model_source,
    open_rate,
    positive_int,
    print_warnings,
    unit_interval,
)
from ipguard_jax.storage.sealed import is_sealed_file


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds the ``calibrate`` sub-parser to ``commands`` (``add_subparsers``' result)."""
    p = commands.add_parser(
        "calibrate", help="measure the null on independent reference models",
        **help_text(
            """
            Query reference models trained independently of the owner (other seeds, data or
            architectures: never copies of it) on the fingerprints, fit how often such
            models match as a beta-binomial across models, and write the fingerprint set
            with this calibration to --out (inside the sealed file with a passphrase; a
            sealed FINGERPRINTS needs one). 'ipguard verify' then reports p-values under
            this null and decides at a false-positive rate you choose.

            At least --min-references models are needed (default 5); with few, the fit is
            widened to stay conservative (see ipguard_jax.calibration).
            """,
            ["ipguard calibrate owner_fp indep1 indep2 indep3 indep4 indep5 -o owner_fp_cal",
             "ipguard calibrate owner.sealed m1 m2 m3 m4 m5 m6 -o owner_cal.sealed "
             "--passphrase-env FP_PASS"]))
    p.add_argument("fingerprints", metavar="FINGERPRINTS", help="the owner's fingerprint file")
    p.add_argument("references", metavar="REF", nargs="+",
                   help="independently trained reference models (model, PyTorch or Keras "
                        "files)")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="fingerprint file to write, with the calibration")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing fingerprint file at --out")
    p.add_argument("--min-references", type=positive_int, default=5,
                   help="fewest reference models accepted (default %(default)s, at least 2)")
    p.add_argument("--min-dispersion", type=unit_interval, default=0.01,
                   help="floor on the fitted over-dispersion (default %(default)s)")
    p.add_argument("--fpr", type=open_rate, default=0.01,
                   help="false-positive rate whose threshold is shown (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="points per query (default %(default)s)")
    add_model_options(p, "reference")
    add_passphrase_options(p, "reads a sealed FINGERPRINTS; with a passphrase, --out is "
                               "written as one sealed file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Runs ``ipguard calibrate`` with the parsed ``args``; returns the exit status."""
    out, passphrase = checked_output(args)  # a refusal must not cost a run
    if args.min_references < 2:
        raise UsageError(f"--min-references must be at least 2, got {args.min_references}")
    if len(args.references) < args.min_references:
        raise UsageError(f"calibrate needs at least {args.min_references} reference models, "
                         f"got {len(args.references)} (--min-references lowers the minimum; "
                         f"fewer cannot estimate how much independent models differ)")
    if len(set(args.references)) != len(args.references):
        raise UsageError("a reference model is given twice")
    source = Path(args.fingerprints).expanduser()
    sealed_in = source.is_file() and is_sealed_file(source)
    reading = args if sealed_in else argparse.Namespace(
        **{**vars(args), "passphrase_env": None, "passphrase_file": None})
    fingerprints = load_fingerprints(args.fingerprints, reading)
    if len(fingerprints) < 2:
        raise UsageError(f"{args.fingerprints} holds {len(fingerprints)} fingerprints; "
                         "calibration needs at least 2")
    owner_hash = fingerprints.metadata.get("classifier", {}).get("params_sha256")
    models, descriptions = [], []
    for ref in args.references:
        if ref.startswith(URL_PREFIXES):
            raise UsageError(f"{ref}: references must be model files here (for an endpoint, "
                             "call ipguard_jax.calibrate with an HTTPSuspect)")
        model, about = load_model_source(ref, args, input_shape=fingerprints.input_shape)
        if owner_hash is not None and about.get("params_sha256") == owner_hash:
            raise UsageError(f"{ref} is the owner itself (its parameters sha256 is the "
                             "fingerprints' owner's): references must be independent models")
        models.append(model)
        descriptions.append(", ".join(f"{k}={v}" for k, v in about.items()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibration = calibrate(fingerprints, models, names=list(args.references),
                                descriptions=descriptions, min_references=args.min_references,
                                min_dispersion=args.min_dispersion, batch_size=args.batch_size)
    print_warnings(caught)
    path = ipg.save(with_calibration(fingerprints, calibration), out, overwrite=args.overwrite,
                    passphrase=passphrase)
    n = len(fingerprints)
    count = calibration.threshold(args.fpr)
    if args.json:
        print(json.dumps({"path": str(path), "sealed": passphrase is not None,
                          "num_points": n, "fpr": args.fpr, "threshold_matches": count,
                          "calibration": calibration.to_dict()}, indent=1))
        return 0
    print(f"wrote {args.fingerprints} with its calibration to {path}"
          + (" (sealed)" if passphrase is not None else ""))
    print(f"null        {calibration}")
    width = max(len(name) for name in calibration.names)
    for name, rate in zip(calibration.names, calibration.rates):
        print(f"  {name:<{width}}  {rate:.1%}")
    print(f"fit         {calibration.method}")
    reach = (f"{count} of {n} matches ({count / n:.1%})" if count <= n
             else f"more than all {n} fingerprints (no verdict possible at this rate)")
    print(f"threshold   at a false-positive rate of {args.fpr:g} a copy needs {reach}")
    return 0
