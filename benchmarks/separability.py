"""How far apart can a label-only test put distilled copies and independent models? An oracle.

A fingerprint is a set of points and the owner's labels there; a suspect is scored by how many
labels it repeats. Whatever method picks the points, it picks them from some pool of candidate
inputs. This script asks the question every method is bounded by: *within a pool, which points
would an oracle that knows the scored models pick, and how well would those separate them?* It
builds candidate pools (the start data, mixtures of two of the owner's images, noisy data,
uniform noise, and IPGuard points at several margins), asks every scored model of the ARUC
benchmark for its labels there, and, per pool, keeps the ``--num`` points with the largest
difference between the distilled/extracted copies' mean agreement with the owner and the
independent models' mean agreement. Selecting with the scored models themselves is exactly
what an honest method must not do: the rows are an **upper bound** on what any selection from
that pool can reach (in-sample, so optimistic), not a method and not a result to compare
methods with. A pool whose oracle leaves a distilled copy below an independent model cannot
give a fingerprint that separates them, however the points are chosen from it.

    python benchmarks/separability.py --quick --cache-dir /work/runs/quick_cache   # digits
    python benchmarks/separability.py --from-zoo       # CIFAR-10, from benchmarks/zoo/cifar10

Results: ``benchmarks/results/separability_<data>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402
import aruc_cifar10 as aruc  # noqa: E402

#: Pirated copies that learn the owner only through its answers.
DERIVED_BY_ANSWERS = ("distill", "extract")


def _is_answer_copy(name: str) -> bool:
    return any(word in name for word in DERIVED_BY_ANSWERS)


def pools(splits, owner_clf, *, size: int, ks: list[float], seed: int) -> dict[str, np.ndarray]:
    """The candidate pools: name -> ``(n, *input_shape)`` float32 points inside the bounds."""
    import ipguard_jax as ipg

    owner_ds, _, _, test_ds = splits
    rng = np.random.default_rng(seed)
    lo, hi = owner_clf.bounds
    x = np.asarray(test_ds.x, np.float32)
    own = np.asarray(owner_ds.x, np.float32)
    a, b = rng.integers(0, len(own), size), rng.integers(0, len(own), size)
    lam = rng.uniform(0.3, 0.7, (size,) + (1,) * (own.ndim - 1)).astype(np.float32)
    out = {
        "start data": x,
        "mixtures of two owner images": lam * own[a] + (1 - lam) * own[b],
        "start data + noise (0.3 of the range)": np.clip(
            x[rng.integers(0, len(x), size)]
            + rng.normal(0, 0.3 * (hi - lo), (size,) + x.shape[1:]), lo, hi),
        "uniform noise": rng.uniform(lo, hi, (size,) + x.shape[1:]),
    }
    for k in ks:
        config = ipg.FingerprintConfig(num=min(250, len(x)), k=k, init="data",
                                       target="random", keep="all")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ipg.ConvergenceWarning)
            fp = ipg.generate(owner_clf, config, key=seed, data=x, progress=False)
        out[f"IPGuard k={k:g} (all candidates)"] = np.asarray(fp.x)
    return {name: np.asarray(p, np.float32) for name, p in out.items()}


def oracle_row(agree: dict[str, np.ndarray], pirated: list[str], independent: list[str],
               num: int, score: np.ndarray | None = None) -> dict[str, Any]:
    """The oracle's pick of ``num`` points in one pool and the rates it gives every model.

    Args:
        agree: model name -> ``(n,)`` bool, the model repeats the owner's label there.
        pirated: names of the pirated copies.
        independent: names of the independent models.
        num: how many points to keep.
        score: per point, what to rank by instead of the oracle's difference (for a selection
            made with other models, such as the defender's surrogates and references).

    Returns:
        The kept points' matching rate per model, the ROC-AUC of pirated against independent
        rates, and the summary numbers.

    Example:
        >>> agree = {"distill-a": np.array([1, 1, 0, 0], bool), "FT": np.ones(4, bool),
        ...          "ind": np.array([0, 1, 0, 1], bool)}
        >>> row = oracle_row(agree, ["distill-a", "FT"], ["ind"], 2)
        >>> row["rates"]["distill-a"], row["rates"]["ind"], row["roc_auc"]
        (1.0, 0.5, 1.0)
    """
    answers = [n for n in pirated if _is_answer_copy(n)]
    if score is None:
        score = (np.mean([agree[n] for n in answers], axis=0)
                 - np.mean([agree[n] for n in independent], axis=0))
    keep = np.argsort(-score, kind="stable")[:num]
    rates = {n: float(agree[n][keep].mean()) for n in (*pirated, *independent)}
    p = np.array([rates[n] for n in pirated])
    i = np.array([rates[n] for n in independent])
    auc = float(((p[:, None] > i[None]).sum() + 0.5 * (p[:, None] == i[None]).sum())
                / (p.size * i.size))
    closest = max(independent, key=lambda n: rates[n])
    return {"kept": int(len(keep)), "rates": rates, "roc_auc": auc,
            "answer_copies_min": min(rates[n] for n in answers),
            "answer_copies_mean": float(np.mean([rates[n] for n in answers])),
            "independent_max": rates[closest], "closest_independent": closest,
            "independent_mean": float(i.mean()), "pirated_min": float(p.min())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the digits setting")
    p.add_argument("--cache-dir", default=None, help="the ARUC benchmark's model cache")
    p.add_argument("--from-zoo", action="store_true",
                   help="CIFAR-10 models from benchmarks/zoo/cifar10 only (trains nothing)")
    p.add_argument("--pool-size", type=int, default=4000)
    p.add_argument("--num", type=int, default=100, help="points the oracle keeps per pool")
    p.add_argument("--ks", default="1,3,10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick and args.from_zoo:
        p.error("--from-zoo is for the CIFAR-10 setting; --quick trains digits models")
    t_start = time.perf_counter()

    import ipguard_jax as ipg
    from ipguard_jax.evaluation import modelset, postprocess as pp, protocol

    bench_argv = ["--quick"] if args.quick else []
    bench_args = aruc.parse_args(bench_argv + (["--from-zoo"] if args.from_zoo else []))
    setting = aruc.make_setting(bench_args)
    zoo = aruc.default_zoo(setting, bench_args)
    splits = protocol.load_data(setting, args.seed)
    cache = protocol.model_cache(args.cache_dir, zoo, args.from_zoo)
    models = modelset.build_models(setting, splits, seed=args.seed, cache=cache)
    shape = tuple(splits[0].x.shape[1:])
    owner_clf = ipg.Classifier.from_nnx(models.owner, input_shape=shape)
    candidates = pools(splits, owner_clf, size=args.pool_size,
                       ks=[float(k) for k in args.ks.split(",")], seed=args.seed)
    candidates["all pools together"] = np.concatenate(list(candidates.values()))

    def labels(model, x):
        return pp.apply_batched(model, x).argmax(-1)

    scored = {**models.pirated, **models.independent}
    rows = {}
    for name, x in candidates.items():
        owner_y = labels(models.owner, x)
        agree = {n: labels(m, x) == owner_y for n, m in scored.items()}
        selections = {"oracle (scored models)": None}
        if models.surrogates and models.references:
            # The honest counterpart: rank by the defender's own surrogates and references.
            selections["surrogates - references"] = (
                np.mean([labels(m, x) == owner_y for m in models.surrogates.values()], axis=0)
                - np.mean([labels(m, x) == owner_y for m in models.references.values()],
                          axis=0))
        for how, score in selections.items():
            r = rows[f"{name} | {how}"] = {
                "pool": int(len(x)), "pool_name": name, "selection": how,
                **oracle_row(agree, list(models.pirated), list(models.independent), args.num,
                             score)}
            print(f"{name} | {how}: {r['pool']} candidates, {r['kept']} kept: "
                  f"distilled/extracted min {r['answer_copies_min']:.2f}, independent max "
                  f"{r['independent_max']:.2f} ({r['closest_independent']}), ROC-AUC "
                  f"{r['roc_auc']:.3f}", flush=True)

    data = "digits" if args.quick else Path(setting.data).name.split(".")[0].split("-")[0]
    out = Path(args.out) if args.out else harness.RESULTS / f"separability_{data}"
    result = {"command": harness.command(__file__, argv), "environment": harness.environment(),
              "setting": {"data": setting.data, "owner": setting.owner,
                          "pool_size": args.pool_size, "num": args.num, "seed": args.seed},
              "pirated": list(models.pirated), "independent": list(models.independent),
              "accuracy": models.accuracy, "rows": rows,
              "total_s": time.perf_counter() - t_start}
    answers = [n for n in models.pirated if _is_answer_copy(n)]
    lines = [f"# Oracle separability of distilled copies and independent models ({data})", "",
             f"Command: `{result['command']}`", "", harness.describe(result["environment"]), "",
             "Per pool of candidate inputs, the points an oracle that knows the **scored** "
             f"models would keep ({args.num}: largest mean agreement of the copies that learnt "
             "from the owner's answers minus mean agreement of the independent models). This is "
             "an in-sample upper bound on any selection from the pool, not a method: no "
             "fingerprint method may choose points with the models it is scored on. Where the "
             "setting has the conferrable rows' surrogates and references, the row below each "
             "oracle row ranks the same pool by their agreement instead (mean over surrogates "
             "minus mean over references): the honest selection a defender can make, scored on "
             "models it never saw.", "",
             f"Copies that learnt from the owner's answers: {', '.join(answers)}. Independent "
             f"models: {', '.join(models.independent)}.", "",
             *harness.table(
                 ["pool", "selection", "candidates", "distilled/extracted min", "mean", "independent max",
                  "closest independent", "independent mean", "all pirated min",
                  "ROC-AUC (all pirated)"],
                 [[r["pool_name"], r["selection"], r["pool"], f"{r['answer_copies_min']:.2f}",
                   f"{r['answer_copies_mean']:.2f}", f"{r['independent_max']:.2f}",
                   r["closest_independent"], f"{r['independent_mean']:.2f}",
                   f"{r['pirated_min']:.2f}", f"{r['roc_auc']:.3f}"]
                  for n, r in rows.items()]),
             "", "Matching rate per model on the kept points:", "",
             *harness.table(["model", *[n.replace(" | ", ", ") for n in rows]],
                            [[m, *[f"{rows[n]['rates'][m]:.2f}" for n in rows]]
                             for m in (*models.pirated, *models.independent)])]
    harness.write_results(out, result, "\n".join(lines))
    print(f"wrote {out}.{{json,md}} in {result['total_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
