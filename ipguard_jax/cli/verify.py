"""``ipguard verify FINGERPRINTS SUSPECT``: matching rate, p-value, verdict (``--sequential``:
stop after the fewest queries that decide)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import ipguard_jax as ipg
from ipguard_jax.calibration import calibration_of
from ipguard_jax.cli._common import (
    EXIT_COPY,
    EXIT_NOT_COPY,
    UsageError,
    add_commitment_options,
    add_common,
    add_data_limits,
    add_model_options,
    add_passphrase_options,
    check_commitment,
    closed_rate,
    finite_float,
    help_text,
    load_data_source,
    load_fingerprints,
    load_model_source,
    non_negative_int,
    open_rate,
    positive_int,
    print_warnings,
    seed_int,
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds the ``verify`` sub-parser to ``commands`` (``add_subparsers``' result)."""
    p = commands.add_parser(
        "verify", help="verify a suspect model against a fingerprint file",
        **help_text(
            """
            Query a suspect on the fingerprints and judge whether it is a copy of their owner:
            the matching rate (share of fingerprints where the suspect gives the owner's
            label) and, given a null, its p-value: the chance that an independently trained
            model matches as often. The null is --null-rate if given (an exact binomial
            test), else the calibration stored in FINGERPRINTS by 'ipguard calibrate' (a
            beta-binomial fitted on reference models); the output says which.

            With a calibrated null the suspect is a copy when its p-value is at most --fpr
            (default 1%); otherwise when its matching rate reaches --threshold (default 0.5).
            --sequential queries a few fingerprints at a time in a secret random order and
            stops as soon as a sequential test decides at --fpr and --fnr (for copies
            matching at least --pirate-rate): far fewer queries to a paid API.

            SUSPECT is a model file, a PyTorch state dict file, a Keras .keras file or an
            http(s):// endpoint answering {"inputs": [...]} with {"labels": [...]} or
            {"logits": [...]}.

            exit status: 0 not a copy, 1 a copy (pirated), 2 error.
            """,
            ["ipguard verify owner_fp suspect_model --null-rate 0.3",
             "ipguard verify owner_fp_cal suspect_model --fpr 0.001",
             "ipguard verify owner_fp_cal https://api.example.com/predict --sequential "
             "--order-seed $SECRET_SEED --query-budget 200 --resume resume.json",
             "ipguard verify owner_fp https://api.example.com/predict --query-budget 1000 "
             "--resume resume.json --json"]))
    p.add_argument("fingerprints", metavar="FINGERPRINTS", help="the owner's fingerprint file")
    p.add_argument("suspect", metavar="SUSPECT", help="the suspect model or endpoint")
    p.add_argument("--threshold", type=closed_rate, default=None,
                   help="a matching rate >= threshold means a copy (default: the calibrated "
                        "threshold for --fpr in a calibrated set, else 0.5)")
    p.add_argument("--null-rate", type=closed_rate, default=None,
                   help="matching rate of independent models, for a binomial p-value "
                        "(overrides the set's calibration)")
    p.add_argument("--fpr", type=open_rate, default=0.01,
                   help="false-positive rate to allow: sets the calibrated threshold and the "
                        "sequential test (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="points per query (default 64; 10 with --sequential)")
    seq = p.add_argument_group(
        "sequential verification (stop as soon as the answers decide; needs a null)")
    seq.add_argument("--sequential", action="store_true",
                     help="query in small batches, in a secret random order, and stop as "
                          "soon as a sequential test (SPRT) decides at --fpr and --fnr")
    seq.add_argument("--fnr", type=open_rate, default=None,
                     help="false-negative rate to aim for, for copies matching --pirate-rate "
                          "(default 0.05)")
    seq.add_argument("--pirate-rate", type=open_rate, default=None,
                     help="matching rate of the copies to catch (default 0.8)")
    seq.add_argument("--order-seed", type=seed_int, default=None,
                     help="seed of the secret query order (default: fresh OS randomness; fix "
                          "it, and keep it secret, to resume an endpoint run with --resume)")
    decoys = p.add_argument_group(
        "decoys (natural inputs mixed into every query, so a suspect cannot single out the "
        "fingerprints)")
    decoys.add_argument("--decoys", metavar="SOURCE",
                        help="'digits', an image folder or tar archive, an .npz with x, or "
                             "tfds:NAME")
    decoys.add_argument("--decoy-split", metavar="SPLIT",
                        help="split directory inside a decoy image folder")
    decoys.add_argument("--decoy-ratio", type=finite_float, default=None,
                        help="decoys per fingerprint (default 1 with --decoys)")
    decoys.add_argument("--decoy-seed", type=seed_int, default=None,
                        help="seed of the decoys' draw and order (default: fresh randomness; "
                             "fix it to resume an endpoint run with --resume)")
    add_data_limits(p)
    add_model_options(p, "suspect")
    add_passphrase_options(p, "to read a sealed FINGERPRINTS")
    add_commitment_options(p)
    http = p.add_argument_group("endpoint options (http(s):// suspects only)")
    http.add_argument("--timeout", type=finite_float, default=10.0,
                      help="seconds per request (default %(default)s)")
    http.add_argument("--retries", type=non_negative_int, default=5,
                      help="retries per batch on errors, 5xx and 429 (default %(default)s)")
    http.add_argument("--query-budget", type=non_negative_int, default=None,
                      help="most points ever sent (counting earlier runs on --resume)")
    http.add_argument("--query-log", metavar="FILE",
                      help="JSON-lines log of the requests (hashes, never the points)")
    http.add_argument("--resume", metavar="FILE",
                      help="answers kept here; a rerun does not query them again")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    add_common(p)
    return p


def _describe_null(verdict: Any, calibration: Any) -> str:
    """The verdict's null in words, for the ``null`` line of ``verify``."""
    if calibration is not None:
        return (f"{verdict.null_source} (beta-binomial, mean rate {calibration.mean:.1%}, "
                f"over-dispersion {calibration.dispersion:.3g})")
    if verdict.null_rate is not None:
        return f"{verdict.null_source}: {verdict.null_rate:.1%} (binomial)"
    return "none (give --null-rate, or calibrate the set: ipguard calibrate)"


def _verify_options(args: argparse.Namespace, calibration: Any) -> Any:
    """Checks the options that depend on each other; returns the query key (a seed or None)."""
    if args.sequential:
        if args.threshold is not None:
            raise UsageError("--threshold does not apply to --sequential: the sequential test "
                             "decides at --fpr and --fnr")
        if args.null_rate is None and calibration is None:
            raise UsageError("--sequential needs a null: give --null-rate, or calibrate the "
                             "set with 'ipguard calibrate'")
        if args.null_rate is not None and not 0.0 < args.null_rate < 1.0:
            raise UsageError("--sequential needs a --null-rate strictly between 0 and 1")
    else:
        given = [name for name, value in (("--fnr", args.fnr),
                                          ("--pirate-rate", args.pirate_rate),
                                          ("--order-seed", args.order_seed))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} "
                             f"--sequential")
    if args.decoys is None and (args.decoy_ratio is not None or args.decoy_seed is not None):
        raise UsageError("--decoy-ratio and --decoy-seed need --decoys")
    if args.decoy_seed is not None and args.order_seed is not None:
        raise UsageError("give --decoy-seed or --order-seed, not both: one key orders the "
                         "queries and draws the decoys")
    if args.batch_size is None:
        args.batch_size = 10 if args.sequential else 64
    return args.decoy_seed if args.decoy_seed is not None else args.order_seed


def run(args: argparse.Namespace) -> int:
    """Runs ``ipguard verify`` with the parsed ``args``; returns the exit status
    (:data:`~ipguard_jax.cli.EXIT_COPY` or :data:`~ipguard_jax.cli.EXIT_NOT_COPY`)."""
    fingerprints = load_fingerprints(args.fingerprints, args)
    if len(fingerprints) == 0:
        raise UsageError(f"{args.fingerprints} holds no fingerprints")
    commitment = check_commitment(fingerprints, args)  # before any query
    try:
        calibration = calibration_of(fingerprints)
    except ValueError as e:
        raise UsageError(f"{args.fingerprints}: {e}") from None
    key = _verify_options(args, calibration)
    if args.null_rate is not None:
        calibration = None  # --null-rate overrides the set's calibration
    decoys = None
    if args.decoys is not None:
        decoys = load_data_source(args.decoys, args.decoy_split, fingerprints.input_shape[-1],
                                  option="--decoys").x
    suspect, about = load_model_source(args.suspect, args, input_shape=fingerprints.input_shape,
                                       allow_url=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.sequential:
            verdict = ipg.verify_sequential(
                fingerprints, suspect, fpr=args.fpr,
                fnr=0.05 if args.fnr is None else args.fnr,
                pirate_rate=0.8 if args.pirate_rate is None else args.pirate_rate,
                null_rate=args.null_rate, batch_size=args.batch_size, decoys=decoys,
                decoy_ratio=args.decoy_ratio, key=key)
        else:
            verdict = ipg.verify(fingerprints, suspect, threshold=args.threshold,
                                 null_rate=args.null_rate, batch_size=args.batch_size,
                                 fpr=args.fpr, decoys=decoys, decoy_ratio=args.decoy_ratio,
                                 key=key)
    print_warnings(caught)
    owner_hash = fingerprints.metadata.get("classifier", {}).get("params_sha256")
    sequential = None
    if args.sequential:
        sequential = {"stopped_by": verdict.stopped_by, "answers_used": verdict.num_points,
                      "fingerprints_queried": verdict.num_queried,
                      "fingerprints_available": verdict.num_available, "fnr": verdict.fnr,
                      "pirate_rate": verdict.pirate_rate, "fpr_exact": verdict.fpr_exact,
                      "fnr_exact": verdict.fnr_exact}
    if args.json:
        print(json.dumps({
            "fingerprints": str(Path(args.fingerprints).absolute()),
            "owner_params_sha256": owner_hash,
            "suspect": about,
            "matching_rate": verdict.matching_rate,
            "num_matches": verdict.num_matches,
            "num_points": verdict.num_points,
            "threshold": verdict.threshold,
            "null_source": verdict.null_source,
            "null_rate": verdict.null_rate,
            "null": None if calibration is None else calibration.to_dict(),
            "p_value": verdict.p_value,
            "fpr": verdict.fpr,
            "fpr_threshold": verdict.fpr_threshold,
            "is_copy": verdict.is_copy,
            "verdict": "pirated" if verdict.is_copy else "not pirated",
            "sequential": sequential,
            "decoys": None if decoys is None else {"source": args.decoys,
                                                   "ratio": args.decoy_ratio or 1.0,
                                                   "sent": verdict.num_decoys},
            "commitment": commitment,
        }, indent=1))
    else:
        name = about.get("url") or about.get("file")
        print(f"fingerprints   {args.fingerprints} ({len(fingerprints)} points, owner "
              f"parameters sha256 {str(owner_hash)[:16]}...)")
        if commitment is not None:
            print(f"commitment     matches {commitment}")
        print(f"suspect        {name} ({about['kind']})")
        print(f"null           {_describe_null(verdict, calibration)}")
        print(f"matching rate  {verdict.matching_rate:.1%} ({verdict.num_matches} of "
              f"{verdict.num_points})")
        if sequential is not None:
            print(f"sequential     decided by the {verdict.stopped_by} after "
                  f"{verdict.num_points} answers; {verdict.num_queried} of "
                  f"{verdict.num_available} fingerprints queried")
            print(f"error rates    {verdict.fpr_exact:.3g} false positive (asked <= "
                  f"{verdict.fpr:g}), {verdict.fnr_exact:.3g} false negative for copies "
                  f"matching {verdict.pirate_rate:.0%} (asked {verdict.fnr:g})")
        if verdict.num_decoys:
            print(f"decoys         {verdict.num_decoys} natural inputs mixed into the queries "
                  f"(not counted)")
        if sequential is None:
            print(f"threshold      {verdict.threshold:.1%}")
        if verdict.p_value is None:
            print("p-value        n/a (give --null-rate, the matching rate of independent "
                  "models, or calibrate the set: ipguard calibrate)")
        elif calibration is not None:
            print(f"p-value        {verdict.p_value:.3g} (beta-binomial null "
                  f"{verdict.null_source}{', sequential design' if sequential else ''})")
        else:
            print(f"p-value        {verdict.p_value:.3g} (null rate {verdict.null_rate:.1%}"
                  f"{', sequential design' if sequential else ''})")
        if verdict.fpr_threshold is not None:
            count = round(verdict.fpr_threshold * len(fingerprints))
            print(f"fpr threshold  {verdict.fpr_threshold:.1%}: {count} of {len(fingerprints)} "
                  f"matches give p <= {verdict.fpr:g}")
        print("verdict        " + ("PIRATED: the suspect matches the owner's fingerprints"
                                   if verdict.is_copy else
                                   "NOT PIRATED: the suspect does not match enough "
                                   "fingerprints"))
    return EXIT_COPY if verdict.is_copy else EXIT_NOT_COPY
