"""benchmarks/separability.py: the oracle's selection and its argument checks."""

from __future__ import annotations

import numpy as np
import pytest


def test_oracle_keeps_the_points_that_separate_copies_from_independents(benchmark_script):
    module = benchmark_script("separability")
    agree = {"distill-a": np.array([1, 1, 0, 0], bool), "FT": np.ones(4, bool),
             "ind": np.array([0, 1, 0, 1], bool)}
    row = module.oracle_row(agree, ["distill-a", "FT"], ["ind"], 2)
    # Points 0 and 1 have the largest copy-minus-independent agreement.
    assert row["rates"] == {"distill-a": 1.0, "FT": 1.0, "ind": 0.5}
    assert row["roc_auc"] == 1.0 and row["closest_independent"] == "ind"
    # A score given by the caller (the defender's members) replaces the oracle's ranking.
    chosen = module.oracle_row(agree, ["distill-a", "FT"], ["ind"], 2,
                               score=np.array([0.0, 0.0, 1.0, 1.0]))
    assert chosen["rates"]["distill-a"] == 0.0 and chosen["answer_copies_min"] == 0.0


def test_from_zoo_with_quick_is_refused(benchmark_script, capsys):
    module = benchmark_script("separability")
    with pytest.raises(SystemExit):
        module.main(["--quick", "--from-zoo"])
    assert "--from-zoo is for the CIFAR-10 setting" in capsys.readouterr().err
