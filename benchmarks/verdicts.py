"""Verdicts that hold up in a dispute: calibrated thresholds, p-values and queries per verdict.

On the models of the ARUC benchmark (the same cache, so a zoo already built trains nothing)
and the same fingerprint sets (same configs, same key), this measures:

1. the false-positive rate of the calibrated threshold under leave-one-model-out over the
   independent models: each independent model is judged against a null calibrated on the
   others, at ``--fpr`` (default 1%); the count of false positives is compared with ``fpr``
   and its sampling error (and an exact binomial tail: how likely that many or more are if
   the true rate is ``fpr``);
2. the p-values of the pirated copies under the null calibrated on all independent models;
3. queries per verdict with sequential verification (:func:`ipguard_jax.verify_sequential`,
   batches of ``--batch-size``, ``--orders`` secret orders per model) against the fixed test
   on all fingerprints, for pirated and independent models (independents against their
   leave-one-out null), and how often the sequential verdict differs from the fixed one.

Every model is queried once per fingerprint set; the sequential runs replay its recorded
answers in each order (the verdicts are those a live suspect answering the same would get).

    # digits, the quick zoo (minutes; trains what the model cache lacks)
    python benchmarks/verdicts.py --quick
    # CIFAR-10 from the repository's zoo (benchmarks/zoo/cifar10), trains nothing
    python benchmarks/verdicts.py --from-zoo

Results: ``benchmarks/results/verdicts_digits_quick.{json,md}`` and
``benchmarks/results/verdicts_cifar10.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ipguard_jax.cli.evaluate import add_arguments, setting_from_args
from ipguard_jax.evaluation import protocol

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
RESULTS = REPO / "benchmarks" / "results"
ZOO = REPO / "benchmarks" / "zoo" / "cifar10"


# -- the analysis: pure functions of the recorded answers ------------------------------------------

def recorded(fingerprints, labels: np.ndarray):
    """A label-only suspect that answers each fingerprint with its recorded label."""
    table = {row.tobytes(): int(label) for row, label in zip(fingerprints.x, labels)}

    def answer(x: np.ndarray) -> np.ndarray:
        return np.array([table[row.tobytes()] for row in np.asarray(x)], np.int64)

    return answer


def _sequential_runs(calibrated, labels: np.ndarray, *, fpr: float, fnr: float,
                     pirate_rate: float, orders: int, batch_size: int,
                     seed: int) -> dict[str, Any]:
    import ipguard_jax as ipg

    fixed = ipg.verify(calibrated, recorded(calibrated, labels), fpr=fpr)
    fixed_row = {"fixed_is_copy": bool(fixed.is_copy), "fixed_p_value": fixed.p_value,
                 "fixed_queries": fixed.num_points}
    try:
        runs = [ipg.verify_sequential(calibrated, recorded(calibrated, labels), fpr=fpr,
                                      fnr=fnr, pirate_rate=pirate_rate, batch_size=batch_size,
                                      key=seed + r) for r in range(orders)]
    except ValueError as e:  # no test can tell copies at pirate_rate from this null
        if "pirate_rate must be" not in str(e):
            raise
        return {**fixed_row, "no_design": str(e)}
    queried = np.array([v.num_queried for v in runs])
    used = np.array([v.num_points for v in runs])
    copies = np.array([v.is_copy for v in runs])
    return {**fixed_row,
            "median_queries": float(np.median(queried)), "max_queries": int(queried.max()),
            "median_answers_used": float(np.median(used)),
            "copy_rate": float(copies.mean()),
            "disagree_with_fixed": float(np.mean(copies != fixed.is_copy)),
            "stopped_by": {kind: int(sum(v.stopped_by == kind for v in runs))
                           for kind in ("copy boundary", "innocent boundary", "final test")},
            "design_fpr": runs[0].fpr_exact, "design_fnr": runs[0].fnr_exact}


def analyse(fingerprints, pirated: dict[str, np.ndarray], independent: dict[str, np.ndarray], *,
            fpr: float = 0.01, fnr: float = 0.05, pirate_rate: float = 0.8, orders: int = 20,
            batch_size: int = 10, seed: int = 0) -> dict[str, Any]:
    """The measurements of the module docs, from each model's labels on the fingerprints.

    Args:
        fingerprints: the fingerprint set.
        pirated: name -> the labels a pirated copy gave on the fingerprints.
        independent: name -> the labels an independent model gave (at least 3 models).
        fpr: the false-positive rate of the calibrated thresholds and the sequential test.
        fnr: the sequential test's false-negative rate at ``pirate_rate``.
        pirate_rate: the sequential test's alternative.
        orders: secret orders per model for the sequential runs.
        batch_size: fingerprints per sequential batch.
        seed: first key of the orders.

    Returns:
        ``{"leave_one_out": ..., "pirated": ..., "sequential": ..., "summary": ...}``.
    """
    from ipguard_jax.calibration import calibrate, with_calibration
    from ipguard_jax.verification import binomial_sf

    n = len(fingerprints)
    names = list(independent)
    if len(names) < 3:
        raise ValueError(f"leave-one-out calibration needs at least 3 independent models, got "
                         f"{len(names)}")
    matches = {name: int(np.sum(np.asarray(labels) == fingerprints.labels))
               for name, labels in {**pirated, **independent}.items()}
    min_refs = min(5, len(names) - 1)

    loo, loo_sets = {}, {}
    for name in names:
        others = [other for other in names if other != name]
        cal = calibrate(fingerprints, [independent[o] for o in others], names=others,
                        min_references=min_refs)
        threshold = cal.threshold(fpr)
        loo[name] = {"matches": matches[name], "rate": matches[name] / n,
                     "threshold_matches": threshold, "p_value": cal.p_value(matches[name]),
                     "false_positive": matches[name] >= threshold, "null_mean": cal.mean,
                     "null_dispersion": cal.dispersion}
        loo_sets[name] = with_calibration(fingerprints, cal)
    false_positives = sum(row["false_positive"] for row in loo.values())
    m = len(names)

    full = calibrate(fingerprints, [independent[o] for o in names], names=names,
                     min_references=min_refs)
    full_set = with_calibration(fingerprints, full)
    pirate_rows = {name: {"matches": matches[name], "rate": matches[name] / n,
                          "p_value": full.p_value(matches[name]),
                          "detected": full.p_value(matches[name]) <= fpr}
                   for name in pirated}

    options = dict(fpr=fpr, fnr=fnr, pirate_rate=pirate_rate, orders=orders,
                   batch_size=batch_size, seed=seed)
    sequential = {
        "pirated": {name: _sequential_runs(full_set, labels, **options)
                    for name, labels in pirated.items()},
        "independent": {name: _sequential_runs(loo_sets[name], independent[name], **options)
                        for name in names},
    }
    per_model = [row for group in sequential.values() for row in group.values()
                 if "no_design" not in row]

    def median_of(rows, key="median_queries"):
        values = [r[key] for r in rows if "no_design" not in r]
        return float(np.median(values)) if values else None

    summary = {
        "num_points": n, "num_pirated": len(pirated), "num_independent": m, "fpr": fpr,
        "loo_false_positives": false_positives, "loo_fpr": false_positives / m,
        "loo_sampling_error": math.sqrt(fpr * (1 - fpr) / m),
        "loo_tail_probability": binomial_sf(false_positives, m, fpr),
        "pirated_detected": sum(row["detected"] for row in pirate_rows.values()),
        "models_without_sequential_design": len(
            [r for group in sequential.values() for r in group.values() if "no_design" in r]),
        "median_queries_sequential": median_of(per_model),
        "worst_queries_sequential": max((r["max_queries"] for r in per_model), default=None),
        "queries_fixed": n,
        "median_queries_pirated": median_of(sequential["pirated"].values()),
        "median_queries_independent": median_of(sequential["independent"].values()),
        "disagreement_with_fixed": float(np.mean([r["disagree_with_fixed"] for r in per_model]))
        if per_model else None,
    }
    return {"leave_one_out": loo, "null_all": full.to_dict(), "pirated": pirate_rows,
            "sequential": sequential, "summary": summary}


# -- the models: the ARUC benchmark's, through its model cache -------------------------------------

def load_models(setting, *, seed: int, cache_dir=None, zoo=None, from_zoo: bool = False):
    """The owner, pirated and independent classifiers of the ARUC benchmark's run.

    :func:`ipguard_jax.evaluation.modelset.build_models` with the run's cache (or zoo), so the
    models are those of :func:`ipguard_jax.evaluation.pipeline.run`; what is missing is
    trained (unless ``from_zoo``). The surrogates and references are not made.

    Returns:
        ``(owner, pirated, independent, test_ds)``: classifiers by name and the test split.
    """
    import ipguard_jax as ipg
    from ipguard_jax.evaluation import modelset

    splits = protocol.load_data(setting, seed)
    models = modelset.build_models(setting, splits, seed=seed, defender=False,
                                   cache=protocol.model_cache(cache_dir, zoo, from_zoo))
    input_shape = tuple(splits.owner.x.shape[1:])

    def clf(model):
        return ipg.Classifier.from_nnx(model, input_shape=input_shape)

    return (clf(models.owner), {n: clf(m) for n, m in models.pirated.items()},
            {n: clf(m) for n, m in models.independent.items()}, splits.test)


def run(setting, *, seed: int, cache_dir=None, zoo=None, from_zoo: bool = False,
        **options: Any) -> dict[str, Any]:
    """Fingerprints the owner in every IPGuard config of ``setting`` and analyses each set."""
    import ipguard_jax as ipg

    t0 = time.perf_counter()
    owner, pirated, independent, test_ds = load_models(setting, seed=seed, cache_dir=cache_dir,
                                                       zoo=zoo, from_zoo=from_zoo)
    configs = {}
    for k in setting.ks:
        for init in setting.inits:
            for target in setting.targets:
                label = f"k={k:g} init={init} target={target}"
                config = ipg.FingerprintConfig(num=setting.num, k=k, steps=setting.steps,
                                               init=init, target=target)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ipg.ConvergenceWarning)
                    fp = ipg.generate(owner, config, key=seed,  # the ARUC run's sets
                                      data=test_ds.x if init == "data" else None,
                                      progress=False)
                if len(fp) < 2:
                    configs[label] = {"num_fingerprints": len(fp), "skipped": "too few points"}
                    continue
                labels = {group: {name: ipg.query_labels(fp, model)
                                  for name, model in models.items()}
                          for group, models in (("pirated", pirated),
                                                ("independent", independent))}
                configs[label] = {"num_fingerprints": len(fp),
                                  **analyse(fp, labels["pirated"], labels["independent"],
                                            seed=seed, **options)}
                s = configs[label]["summary"]
                print(f"{label}: LOO false positives {s['loo_false_positives']}/"
                      f"{s['num_independent']}, pirated detected {s['pirated_detected']}/"
                      f"{s['num_pirated']}, sequential median {s['median_queries_sequential']} "
                      f"(worst {s['worst_queries_sequential']}; no design for "
                      f"{s['models_without_sequential_design']} models) vs "
                      f"{s['queries_fixed']} queries", flush=True)
    import jax

    return {"setting": dataclasses.asdict(setting), "options": options,
            "platform": {"python": platform.python_version(), "jax": jax.__version__,
                         "cpus": os.cpu_count()},
            "version": ipg.__version__, "seconds": time.perf_counter() - t0,
            "configs": configs}


def markdown(result: dict[str, Any], command: str) -> str:
    """The results as a Markdown table per config."""
    o = result["options"]
    lines = [f"# Calibrated verdicts and sequential queries ({result['setting']['data']})", "",
             f"Command: `{command}`", "",
             f"False-positive rate {o['fpr']}, sequential false-negative rate {o['fnr']} at a "
             f"pirate rate of {o['pirate_rate']}, batches of {o['batch_size']}, "
             f"{o['orders']} secret orders per model. Leave-one-out: each independent model "
             "against a null calibrated on the others.", "",
             "| config | n | LOO false positives | sampling error | P(>= that many) | "
             "pirated detected | sequential median (worst) queries | pirated | independent | "
             "differs from fixed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in result["configs"].items():
        if "summary" not in row:
            lines.append(f"| {label} | {row['num_fingerprints']} | - | - | - | - | - | - | - | "
                         f"- |")
            continue
        s = row["summary"]

        def num(value, fmt="g"):
            return "-" if value is None else format(value, fmt)

        no_design = s.get("models_without_sequential_design", 0)
        lines.append(
            f"| {label} | {s['num_points']} | {s['loo_false_positives']}/{s['num_independent']} "
            f"| {s['loo_sampling_error']:.3f} | {s['loo_tail_probability']:.3g} | "
            f"{s['pirated_detected']}/{s['num_pirated']} | "
            f"{num(s['median_queries_sequential'])} ({num(s['worst_queries_sequential'])})"
            + (f", no design for {no_design} models" if no_design else "") + " | "
            f"{num(s['median_queries_pirated'])} | {num(s['median_queries_independent'])} | "
            f"{num(s['disagreement_with_fixed'], '.3f')} |")
    lines += ["", "## p-values of the pirated copies (null calibrated on all independents)", ""]
    for label, row in result["configs"].items():
        if "pirated" in row:
            values = ", ".join(f"{name} {r['p_value']:.2g}" for name, r in row["pirated"].items())
            lines.append(f"- {label}: {values}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--fnr", type=float, default=0.05)
    parser.add_argument("--pirate-rate", type=float, default=0.8)
    parser.add_argument("--orders", type=int, default=20,
                        help="secret orders per model for the sequential runs")
    parser.add_argument("--batch-size", type=int, default=10,
                        help="fingerprints per sequential batch")
    parser.add_argument("--out", default=None, help="output path prefix (no extension)")
    args = parser.parse_args(argv)
    setting = setting_from_args(args, DEFAULT_CIFAR)
    zoo = args.zoo or (ZOO if args.from_zoo and not args.quick else None)
    out = Path(args.out) if args.out else RESULTS / (
        "verdicts_digits_quick" if args.quick else "verdicts_cifar10")
    command = " ".join(["python", "benchmarks/verdicts.py",
                        *(sys.argv[1:] if argv is None else argv)])
    result = run(setting, seed=args.seed, cache_dir=args.cache_dir, zoo=zoo,
                 from_zoo=args.from_zoo, fpr=args.fpr, fnr=args.fnr,
                 pirate_rate=args.pirate_rate, orders=args.orders, batch_size=args.batch_size)
    result["command"] = command
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(result, command))
    print(f"wrote {out}.{{json,md}}")
    return result


if __name__ == "__main__":
    main()
