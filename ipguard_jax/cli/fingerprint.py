"""``ipguard fingerprint MODEL -o FINGERPRINTS``: model + data -> fingerprint file."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from typing import Any

import numpy as np

import ipguard_jax as ipg
from ipguard_jax import methods
from ipguard_jax.cli._common import (
    PROG,
    UsageError,
    add_common,
    add_data_limits,
    add_model_options,
    add_passphrase_options,
    checked_output,
    data_limits,
    describe_key,
    finite_float,
    help_text,
    load_data_source,
    load_model_source,
    model_kind,
    positive_int,
    print_warnings,
    seed_int,
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds the ``fingerprint`` sub-parser to ``commands`` (``add_subparsers``' result)."""
    defaults = ipg.FingerprintConfig()
    p = commands.add_parser(
        "fingerprint", help="fingerprint an owner model: model + data -> fingerprint file",
        **help_text(
            """
            Generate IPGuard fingerprints of an owner model and write them to a fingerprint
            file (a directory, checksummed, written atomically).

            MODEL is a model file (ipguard_jax.models.save_model), a PyTorch state dict file
            (with --arch if its architecture is not detected) or a Keras .keras file. Start
            points come from --data (the embedded digits by default, an image folder or
            .tar.gz archive, or an .npz file with an array x) or from uniform noise
            (--init noise). A progress bar runs on stderr unless --quiet.
            """,
            ["ipguard fingerprint owner_model -o owner_fp --data digits --num 100 --k 3",
             "ipguard fingerprint resnet20.pt --arch resnet20 --data cifar10.tar.gz --split test "
             "--mean 0.49,0.48,0.45 --std 0.25,0.24,0.26 -o owner_fp"]))
    p.add_argument("model", metavar="MODEL", help="the owner model")
    p.add_argument("-o", "--out", required=True, metavar="FINGERPRINTS",
                   help="fingerprint file to write (a directory; its parent must exist)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing fingerprint file at --out")
    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="SOURCE",
                      help="start images: 'digits' (default), an image folder or tar archive, "
                           "an .npz file with an array x (and optionally y), or tfds:NAME (a "
                           "prepared TensorFlow Datasets dataset)")
    data.add_argument("--split", help="split directory inside an image folder, e.g. test, or "
                                      "the TFDS split (default test)")
    gen = p.add_argument_group("generation (ipguard_jax.FingerprintConfig)")
    gen.add_argument("--num", type=positive_int, default=defaults.num,
                     help="fingerprints to generate (default %(default)s)")
    gen.add_argument("--k", type=finite_float, default=defaults.k,
                     help="margin in logit units (default %(default)s)")
    gen.add_argument("--steps", type=positive_int, default=defaults.steps,
                     help="most optimisation steps per point (default %(default)s)")
    gen.add_argument("--lr", type=finite_float, default=defaults.lr,
                     help="Adam learning rate (default %(default)s)")
    gen.add_argument("--tol", type=finite_float, default=defaults.tol,
                     help="a point with loss <= tol has converged (default %(default)s)")
    gen.add_argument("--init", choices=("data", "noise"), default=defaults.init,
                     help="start points (default %(default)s)")
    gen.add_argument("--target", choices=("random", "least_likely"), default=defaults.target,
                     help="target class (default %(default)s)")
    gen.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                     help="candidates optimised together (default %(default)s)")
    gen.add_argument("--keep", choices=("converged", "all"), default=defaults.keep,
                     help="keep converged points only, drawing more candidates, or all "
                          "(default %(default)s)")
    gen.add_argument("--max-candidates", type=positive_int, default=None,
                     help="candidate budget for --keep converged (default 4 x --num)")
    gen.add_argument("--compact", choices=["auto", "on", "off"], default="auto", nargs="?",
                     const="on", metavar="{auto,on,off}",
                     help="swap finished points out of the working batch for fresh "
                          "candidates: auto (default) is on for GPU/TPU and off on CPU "
                          "(docs/backends.md); --compact alone means on")
    gen.add_argument("--seed", type=seed_int, default=None,
                     help="PRNG seed in [0, 2**64) (default: 64 bits drawn from the OS, so "
                          "nobody, not even a thief holding the weights, can regenerate the "
                          "set; a seed you give makes it reproducible by anyone who knows it)")
    gen.add_argument("--method", choices=("ipguard", "random", "fgsm", "pgd", "cw"),
                     default="ipguard",
                     help="ipguard (default), or a baseline on the same engine: random start "
                          "points, FGSM, PGD (L-inf) or Carlini-Wagner L2 "
                          "(ipguard_jax.baselines; their own defaults but --eps)")
    gen.add_argument("--eps", type=finite_float, default=None,
                     help="L-inf radius of --method fgsm/pgd (default 0.03)")
    gen.add_argument("--checkpoint", metavar="DIR", default=None,
                     help="save progress to DIR after every chunk; run the same command "
                          "again after an interruption to resume (DIR holds every candidate "
                          "point in plaintext and is deleted after success)")
    gen.add_argument("--keep-checkpoint", action="store_true",
                     help="keep --checkpoint DIR after success")
    add_model_options(p, "owner")
    add_data_limits(p)
    add_passphrase_options(p, "with a passphrase, --out is written as one sealed file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Runs ``ipguard fingerprint`` with the parsed ``args``; returns the exit status."""
    out, passphrase = checked_output(args)  # a refusal must not cost a run
    config = ipg.FingerprintConfig(
        num=args.num, k=args.k, steps=args.steps, lr=args.lr, tol=args.tol, init=args.init,
        target=args.target, batch_size=args.batch_size, keep=args.keep,
        max_candidates=args.max_candidates, compact={"auto": "auto", "on": True, "off": False}[args.compact])
    if args.init == "noise" and (args.data is not None or args.split is not None):
        raise UsageError("--data and --split are for --init data; noise starts need no data")
    if args.keep_checkpoint and args.checkpoint is None:
        raise UsageError("--keep-checkpoint needs --checkpoint DIR")

    kind = model_kind(args.model)
    dataset = None
    if args.init == "data" and kind == "torch":  # its input shape may come from the data
        channels = args.input_shape[-1] if args.input_shape else None
        dataset = load_data_source(args.data, args.split, channels, **data_limits(args))
        owner, about = load_model_source(args.model, args,
                                         input_shape=tuple(dataset.x.shape[1:]))
    else:
        owner, about = load_model_source(args.model, args)
        if args.init == "data":
            dataset = load_data_source(args.data, args.split, owner.input_shape[-1],
                                       **data_limits(args))
    if dataset is not None and tuple(dataset.x.shape[1:]) != owner.input_shape:
        raise UsageError(f"--data {args.data or 'digits'} holds images of shape "
                         f"{tuple(dataset.x.shape[1:])}, the model takes {owner.input_shape}")

    if args.eps is not None and args.method not in ("fgsm", "pgd"):
        raise UsageError("--eps is for --method fgsm or pgd")
    method = {"fgsm": methods.FGSM, "pgd": methods.PGD}.get(args.method)
    method = (method(eps=args.eps) if args.eps is not None else method()) if method \
        else args.method
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fingerprints = ipg.generate(owner, config, key=args.seed,
                                    data=None if dataset is None else dataset.x,
                                    method=method, checkpoint=args.checkpoint,
                                    keep_checkpoint=args.keep_checkpoint,
                                    progress=not args.quiet)
    print_warnings(caught)
    if args.keep_checkpoint and passphrase is not None:
        print(f"{PROG}: warning: --checkpoint {args.checkpoint} is kept and holds every "
              "candidate point and label in plaintext beside the sealed file; delete it once "
              "you no longer need to resume", file=sys.stderr)
    if len(fingerprints) == 0:
        raise UsageError("no candidate point converged, nothing written; raise --steps or "
                         "--max-candidates, lower --k, or pass --keep all")
    origin: dict[str, Any] = {"tool": f"{PROG} fingerprint", "model": about}
    if dataset is not None:
        x = np.ascontiguousarray(dataset.x)
        origin["data"] = {"name": dataset.name or (args.data or "digits"),
                          "num_images": int(len(x)),
                          "sha256": hashlib.sha256(x.tobytes()).hexdigest()}
    fingerprints = ipg.Fingerprints(**fingerprints.arrays(),
                                    metadata={**fingerprints.metadata, "origin": origin})
    path = ipg.save(fingerprints, out, overwrite=args.overwrite, passphrase=passphrase)
    meta = fingerprints.metadata
    summary = {
        "path": str(path),
        "num_fingerprints": len(fingerprints),
        "num_candidates": meta["num_candidates"],
        "num_converged": meta["num_converged"],
        "convergence_rate": meta["convergence_rate"],
        "owner_params_sha256": meta["classifier"]["params_sha256"],
        "sha256": fingerprints.digest(),
        "sealed": passphrase is not None,
        "key_source": meta["key"]["source"],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {summary['num_fingerprints']} fingerprints to {path}"
              + (" (sealed)" if passphrase is not None else ""))
        print(f"  owner        {about['kind']} {about.get('file', '')}, parameters sha256 "
              f"{summary['owner_params_sha256']}")
        if "data" in origin:
            print(f"  start points {origin['data']['name']} ({origin['data']['num_images']} "
                  "images)")
        else:
            print("  start points uniform noise")
        print(f"  converged    {meta['num_converged']} of {meta['num_candidates']} candidates "
              f"({meta['convergence_rate']:.1%}), k={config.k:g}, at most {config.steps} steps")
        print(f"  key          {describe_key(meta['key'])}")
        print(f"  content      sha256 {summary['sha256']}")
    return 0
