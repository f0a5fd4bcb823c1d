"""Robustness and uniqueness of fingerprints: pirated copies, a model cache, ARUC reports.

- :mod:`~ipguard_jax.evaluation.postprocess`: pirated copies of an NNX owner (FTLL, FTAL, RTLL,
  RTAL, pruning with and without fine-tuning, distillation, int8 quantisation).
- :mod:`~ipguard_jax.evaluation.zoo`: trained models cached on disk by recipe hash (orbax).
- :mod:`~ipguard_jax.evaluation.factories`: the defender's surrogates and references for
  conferrable fingerprints.
- :mod:`~ipguard_jax.evaluation.report`: matching rates -> robustness, uniqueness, ARUC (as
  ROC-AUC and as the integral of min(R, U)), TPR at 1% FPR, p-values, bootstrap confidence
  intervals over models; JSON, Markdown, PNG, and the report of a whole run.

The whole evaluation (``ipguard evaluate``): :mod:`~ipguard_jax.evaluation.protocol` (the
settings, data splits, model specs and recipes), :mod:`~ipguard_jax.evaluation.modelset` (the
models, trained or loaded), :mod:`~ipguard_jax.evaluation.scoring` (fingerprint configurations
scored on them) and :mod:`~ipguard_jax.evaluation.pipeline` (all of it, and the training plan).

Example:
    From matching rates already measured (:func:`evaluate` queries the models itself):

    >>> from ipguard_jax import evaluation
    >>> rep = evaluation.summarize({"ftal": 0.95, "prune50": 0.9}, {"seed1": 0.4, "vgg": 0.5},
    ...                            num_points=100)
    >>> rep.aruc_roc, rep.tpr_at_1pct_fpr
    (1.0, 1.0)
    >>> rep = evaluation.evaluate(fp, owner, {"ftal": ftal_clf},
    ...                           {"seed1": other_clf})  # doctest: +SKIP
"""

from ipguard_jax.evaluation import postprocess as postprocess
from ipguard_jax.evaluation.postprocess import PirateConfig as PirateConfig
from ipguard_jax.evaluation.postprocess import build_model as build_model
from ipguard_jax.evaluation.postprocess import distill as distill
from ipguard_jax.evaluation.postprocess import find_head as find_head
from ipguard_jax.evaluation.postprocess import fine_tune_all_layers as fine_tune_all_layers
from ipguard_jax.evaluation.postprocess import fine_tune_last_layer as fine_tune_last_layer
from ipguard_jax.evaluation.postprocess import make_pirate as make_pirate
from ipguard_jax.evaluation.postprocess import prune as prune
from ipguard_jax.evaluation.postprocess import prune_and_fine_tune as prune_and_fine_tune
from ipguard_jax.evaluation.postprocess import quantize_int8 as quantize_int8
from ipguard_jax.evaluation.postprocess import retrain_all_layers as retrain_all_layers
from ipguard_jax.evaluation.postprocess import retrain_last_layer as retrain_last_layer
from ipguard_jax.evaluation.report import EvaluationReport as EvaluationReport
from ipguard_jax.evaluation.report import bootstrap_intervals as bootstrap_intervals
from ipguard_jax.evaluation.report import evaluate as evaluate
from ipguard_jax.evaluation.report import min_integral as min_integral
from ipguard_jax.evaluation.report import roc_auc as roc_auc
from ipguard_jax.evaluation.report import summarize as summarize
from ipguard_jax.evaluation.zoo import ModelCache as ModelCache
from ipguard_jax.evaluation.zoo import ModelZoo as ModelZoo
from ipguard_jax.evaluation.zoo import round_model as round_model
from ipguard_jax.evaluation.zoo import array_digest as array_digest
from ipguard_jax.evaluation.zoo import default_model_dir as default_model_dir
from ipguard_jax.evaluation.zoo import model_hash as model_hash
from ipguard_jax.evaluation.zoo import recipe_key as recipe_key


def __getattr__(name: str):
    # The deprecated module (imported on first use only: importing it warns).
    if name == "benchmark":
        import importlib

        return importlib.import_module("ipguard_jax.evaluation.benchmark")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
