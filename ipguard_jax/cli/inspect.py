"""``ipguard inspect FINGERPRINTS``: provenance of a fingerprint file (never the points)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ipguard_jax.calibration import calibration_of
from ipguard_jax.cli._common import (
    add_commitment_options,
    add_common,
    add_passphrase_options,
    check_commitment,
    describe_key,
    help_text,
    load_fingerprints,
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds the ``inspect`` sub-parser to ``commands`` (``add_subparsers``' result)."""
    p = commands.add_parser(
        "inspect", help="show a fingerprint file's provenance (never its points)",
        **help_text(
            """
            Check a fingerprint file's integrity (its sha256: catches damage, not deliberate
            edits; a sealed file is also authenticated) and show its provenance: the
            generation config, where its key came from, the owner's parameter hash and input
            spec, library versions, creation time, counts and convergence rate. The points,
            labels and key are never shown. With --commitment, also check the set against a
            commitment published earlier (ipguard_jax.commit), the evidence that it was not
            edited since.
            """,
            ["ipguard inspect owner_fp", "ipguard inspect owner_fp --json",
             "ipguard inspect owner_fp --commitment commitment.txt --nonce-env FP_NONCE"]))
    p.add_argument("fingerprints", metavar="FINGERPRINTS", help="a fingerprint file")
    add_passphrase_options(p, "to read a sealed FINGERPRINTS")
    add_commitment_options(p)
    p.add_argument("--json", action="store_true", help="print as JSON")
    add_common(p)
    return p


def _format_config(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def run(args: argparse.Namespace) -> int:
    fingerprints = load_fingerprints(args.fingerprints, args)  # the integrity check
    commitment = check_commitment(fingerprints, args)
    sealed = Path(args.fingerprints).expanduser().is_file()
    meta = dict(fingerprints.metadata)
    if isinstance(meta.get("key"), Mapping) and "data" in meta["key"]:
        # with the owner's weights the key regenerates every point: shown no more than they are
        meta["key"] = {**meta["key"], "data": "(hidden)"}
    digest = fingerprints.digest()
    converged = int(fingerprints.converged.sum())
    if args.json:
        # The sha256 catches accidental damage; whoever can edit a plain directory can also
        # rewrite it. Evidence against deliberate edits is the sealed file's authentication
        # tag, or a match with a commitment published earlier.
        print(json.dumps({"path": str(Path(args.fingerprints).absolute()), "sha256": digest,
                          "integrity_checked": True, "sealed": sealed,
                          "authenticated": sealed, "commitment": commitment,
                          "key_source": describe_key(meta.get("key")),
                          "num_points": len(fingerprints),
                          "num_converged": converged, "metadata": meta},
                         indent=1, sort_keys=True, default=str))
        return 0
    clf = meta.get("classifier", {})
    library = meta.get("library", {})
    rows = [
        ("fingerprint file", str(Path(args.fingerprints).absolute())
         + (" (sealed: AES-256-GCM, authenticated)" if sealed else "")),
        ("content sha256", f"{digest} (integrity check passed: catches damage, not "
                           "deliberate edits" + ("; the seal authenticates the file)"
                                                 if sealed else ")")),
        ("points", f"{len(fingerprints)} ({converged} converged), input shape "
                   f"{fingerprints.input_shape}, {fingerprints.x.dtype}"),
        ("owner", f"parameters sha256 {clf.get('params_sha256', '?')}"),
        ("owner input", f"{clf.get('num_classes', '?')} classes, shape "
                        f"{tuple(clf.get('input_shape', ()))}, {clf.get('dtype', '?')} in "
                        f"{clf.get('bounds', '?')}"),
        ("config", _format_config(meta.get("config", {}))),
        ("key", describe_key(meta.get("key"))),
        ("candidates", f"{meta.get('num_candidates', '?')} drawn, "
                       f"{meta.get('num_converged', '?')} converged (rate "
                       f"{fingerprints.convergence_rate:.1%})"),
        ("generation", f"loop={meta.get('loop', '?')} compact={meta.get('compact', '?')}, "
                       f"{meta.get('wall_time_s', '?')} s"),
        ("created", str(meta.get("created", "?"))),
        ("library", f"{library.get('name', '?')} {library.get('version', '?')}, jax "
                    f"{library.get('jax', '?')}"),
    ]
    origin = meta.get("origin")
    if isinstance(origin, Mapping):
        if isinstance(origin.get("model"), Mapping):
            rows.append(("owner model", ", ".join(f"{k}={v}"
                                                  for k, v in origin["model"].items())))
        if isinstance(origin.get("data"), Mapping):
            rows.append(("start data", ", ".join(f"{k}={v}" for k, v in origin["data"].items())))
    if meta.get("calibration") is not None:
        try:
            calibration = calibration_of(fingerprints)
            rows.append(("null", f"{calibration}; at 1% false positives a copy matches >= "
                                 f"{calibration.threshold(0.01)} of {len(fingerprints)}"))
        except ValueError as e:
            rows.append(("null", f"INVALID calibration: {e}"))
    known = {"format_version", "library", "created", "config", "loop", "compact", "key",
             "classifier", "num_candidates", "num_converged", "convergence_rate", "wall_time_s",
             "origin", "calibration"}
    for key in sorted(set(meta) - known):
        rows.append((key, json.dumps(meta[key], default=str)[:500]))
    if commitment is not None:
        rows.insert(2, ("commitment", f"matches {commitment}"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
