"""Choosing the conferrable method's defaults on development models, never on scored ones.

The ARUC benchmark scores fingerprints on pirated copies and independent models
(``benchmarks/aruc_cifar10.py``). Tuning the method's margins, weights and member counts on
those would flatter it, so this script builds its own *development* models on the digits data,
with recipes the benchmark never uses (other seeds): distilled, extracted, fine-tuned and
pruned copies on the pirate split, and independent models on the independent and owner splits.
The surrogates and references are the benchmark's (``--quick`` setting, same cache), plus, for
the "more members" variants, extra ones with other seeds.

Each variant generates ``--num`` fingerprints at each ``k`` and reports ROC-AUC, the worst
pirated and best independent matching rates, and the distilled copies' mean, on the
development models only.

    python benchmarks/tune_conferrable.py --cache-dir /work/runs/quick_cache

Results: ``benchmarks/results/conferrable_tuning_digits.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

DEV_PIRATES = [  # (name, kind, params, seed): the pirate split, seeds no scored model has
    ("dev-distill-same", "distill", {"temperature": 4.0}, 201),
    ("dev-distill-cnn", "distill", {"temperature": 4.0, "student": "cnn",
                                    "student_kwargs": {"in_channels": 1}}, 202),
    ("dev-extract-same", "extract", {}, 203),
    ("dev-extract-cnn", "extract", {"student": "cnn", "student_kwargs": {"in_channels": 1}},
     204),
    ("dev-FTAL", "ftal", {}, 205),
    ("dev-prune70+FT", "prune_ft", {"rate": 0.7}, 206),
]
MLP = {"in_features": 64, "in_channels": 1}
DEV_INDEPENDENTS = [  # (name, arch, kwargs, split, seed)
    ("dev-mlp-s301", "mlp", MLP, "independent", 301),
    ("dev-mlp-s302-ownerdata", "mlp", MLP, "owner split", 302),
    ("dev-mlp128-s303", "mlp", {**MLP, "hidden": [128]}, "independent", 303),
    ("dev-cnn-s304", "cnn", {"in_channels": 1}, "independent", 304),
    ("dev-cnn-s305-ownerdata", "cnn", {"in_channels": 1}, "owner split", 305),
    ("dev-mlp-s306-ownerdata", "mlp", MLP, "owner split", 306),
]
EXTRA_SURROGATES = [
    ("sur2-distill-same", "distill", {"temperature": 4.0, "label_copies": 1}),
    ("sur2-distill-cnn", "distill", {"temperature": 4.0, "label_copies": 1, "student": "cnn",
                                     "student_kwargs": {"in_channels": 1}}),
    ("sur2-extract-same", "extract", {}),
    ("sur2-extract-mlp128", "extract", {"student": "mlp",
                                        "student_kwargs": {**MLP, "hidden": [128]}}),
    ("sur2-FTAL", "ftal", {}),
]
EXTRA_REFERENCES = [
    ("ref2-mlp-s21", "mlp", MLP, 21), ("ref2-cnn-s22", "cnn", {"in_channels": 1}, 22),
    ("ref2-mlp128-s23", "mlp", {**MLP, "hidden": [128]}, 23), ("ref2-mlp-s24", "mlp", MLP, 24),
]
VARIANTS = {  # name -> (Conferrable keyword arguments, use the extra members)
    "m1/1": ({}, False),
    "m3/1": ({"surrogate_margin": 3.0}, False),
    "m1/3": ({"reference_margin": 3.0}, False),
    "m3/3": ({"surrogate_margin": 3.0, "reference_margin": 3.0}, False),
    "m1/5": ({"reference_margin": 5.0}, False),
    "m1/1 more": ({}, True),
    "m3/3 more": ({"surrogate_margin": 3.0, "reference_margin": 3.0}, True),
    "m1/3 more": ({"reference_margin": 3.0}, True),
    "m1/3 more s0.8": ({"reference_margin": 3.0, "min_surrogates": 0.8,
                        "min_references": 0.8}, True),
    "m2/3 more s0.8": ({"surrogate_margin": 2.0, "reference_margin": 3.0,
                        "min_surrogates": 0.8, "min_references": 0.8}, True),
}


def main(argv=None) -> dict:
    import ipguard_jax as ipg
    from ipguard_jax import evaluation as ev
    from ipguard_jax.conferrable import Conferrable
    from ipguard_jax.evaluation import protocol
    from ipguard_jax.evaluation import factories
    from ipguard_jax.evaluation import postprocess as pp

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--ks", default="3,10")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=str(RESULTS / "conferrable_tuning_digits"))
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    setting = protocol.make_setting(quick=True)  # the ARUC benchmark's --quick
    owner_ds, pirate_ds, indep_ds, test_ds = protocol.load_data(setting, 0)
    cache = protocol.model_cache(args.cache_dir, None, False)
    n_classes = owner_ds.num_classes
    data = {"independent": indep_ds, "owner split": owner_ds}

    def trained(arch, kwargs, ds, name, seed):
        return factories.train_model(arch, kwargs, ds.x, ds.y, num_classes=n_classes,
                                     config=protocol.train_config(setting, seed, len(ds)),
                                     data_name=name, cache=cache)[0]

    owner = trained(setting.owner, setting.owner_kwargs, owner_ds, "owner split", 0)
    pirate_config = protocol.pirate_config(setting, 0)
    dev_pirates = {}
    for name, kind, params, seed in DEV_PIRATES:
        dev_pirates.update(factories.make_surrogates(
            owner, pirate_ds.x, pirate_ds.y, [(name, kind, params)],
            config=dataclasses.replace(pirate_config, seed=seed), cache=cache))
    dev_indep = {name: trained(arch, kw, data[split], split, seed)
                 for name, arch, kw, split, seed in DEV_INDEPENDENTS}
    surrogates = factories.make_surrogates(
        owner, owner_ds.x, owner_ds.y, protocol.surrogate_specs(setting),
        config=dataclasses.replace(pirate_config, seed=100), cache=cache)
    references = factories.make_references(
        owner_ds.x, owner_ds.y, setting.references, num_classes=n_classes,
        config=protocol.train_config(setting, 0, len(owner_ds)), data_name="owner split",
        cache=cache)
    extra_s = factories.make_surrogates(
        owner, owner_ds.x, owner_ds.y, EXTRA_SURROGATES,
        config=dataclasses.replace(pirate_config, seed=150), cache=cache)
    extra_r = factories.make_references(
        owner_ds.x, owner_ds.y, EXTRA_REFERENCES, num_classes=n_classes,
        config=protocol.train_config(setting, 0, len(owner_ds)), data_name="owner split",
        cache=cache)

    def clf(m):
        return ipg.Classifier.from_nnx(m, input_shape=tuple(owner_ds.x.shape[1:]))

    owner_clf = clf(owner)
    pirated = {n: clf(m) for n, m in dev_pirates.items()}
    independent = {n: clf(m) for n, m in dev_indep.items()}
    accuracy = {n: float(np.mean(pp.apply_batched(m, test_ds.x).argmax(-1) == test_ds.y))
                for n, m in {**dev_pirates, **dev_indep}.items()}
    rows = []
    methods = {"ipguard": "ipguard"}
    for v in args.variants.split(","):
        kwargs, more = VARIANTS[v]
        s = {**surrogates, **(extra_s if more else {})}
        r = {**references, **(extra_r if more else {})}
        methods[f"conferrable {v}"] = Conferrable(
            surrogates={n: clf(m) for n, m in s.items()},
            references={n: clf(m) for n, m in r.items()}, **kwargs)
    for k in [float(k) for k in args.ks.split(",")]:
        config = ipg.FingerprintConfig(num=args.num, k=k, init="data", target="random")
        for label, method in methods.items():
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ipg.ConvergenceWarning)
                fp = ipg.generate(owner_clf, config, key=0, data=test_ds.x, method=method,
                                  progress=False)
            gen_s = time.perf_counter() - t0
            if len(fp) == 0:
                rows.append({"k": k, "method": label, "fingerprints": 0,
                             "screening": fp.metadata.get("screening"), "generation_s": gen_s})
                print(f"k={k:g} {label}: no point converged ({gen_s:.0f} s)", flush=True)
                continue
            rep = ev.evaluate(fp, owner_clf, pirated, independent)
            distilled = [rep.pirated[n] for n in pirated if "distill" in n or "extract" in n]
            rows.append({"k": k, "method": label, "fingerprints": len(fp),
                         "roc_auc": rep.aruc_roc, "aruc_min": rep.aruc_min,
                         "worst_pirated": min(rep.pirated.values()),
                         "best_independent": max(rep.independent.values()),
                         "distilled_mean": float(np.mean(distilled)),
                         "pirated": rep.pirated, "independent": rep.independent,
                         "screening": fp.metadata.get("screening"), "generation_s": gen_s})
            print(f"k={k:g} {label}: ROC-AUC {rep.aruc_roc:.3f} distilled/extracted mean "
                  f"{np.mean(distilled):.2f} best independent "
                  f"{max(rep.independent.values()):.2f} ({len(fp)} points, {gen_s:.0f} s)",
                  flush=True)
    result = {"command": "python benchmarks/tune_conferrable.py " + " ".join(argv or sys.argv[1:]),
              "dev_pirates": [s[0] for s in DEV_PIRATES],
              "dev_independents": [s[0] for s in DEV_INDEPENDENTS],
              "accuracy": accuracy, "rows": rows,
              "total_s": time.perf_counter() - t_start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = ["# Conferrable method: development models (digits), not the scored zoo", "",
             f"Command: `{result['command']}`", "",
             "Development pirated copies: " + ", ".join(result["dev_pirates"]) + ". "
             "Development independents: " + ", ".join(result["dev_independents"]) + ". "
             "None is a model the ARUC benchmark scores, a surrogate or a reference.", "",
             "| k | method | points | ROC-AUC | ARUC (min) | worst pirated | distilled/extracted "
             "mean | best independent |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["fingerprints"]:
            lines.append(f"| {r['k']:g} | {r['method']} | 0 | - | - | - | - | - |")
            continue
        lines.append(f"| {r['k']:g} | {r['method']} | {r['fingerprints']} | {r['roc_auc']:.3f} | "
                     f"{r['aruc_min']:.3f} | {r['worst_pirated']:.2f} | "
                     f"{r['distilled_mean']:.2f} | {r['best_independent']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.{{json,md}} in {result['total_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
