"""The examples in the docstrings run and give the output they show.

Examples that need data sets, training, the network or files outside a temporary directory
are marked ``# doctest: +SKIP`` in the docstrings. Left out here because their examples are
slow (eager initialisation of convolutional networks, or importing torch and converting a
ResNet-18, 5 to 30 s each): ``ipguard_jax.models.{cnn,cifar_resnet,resnet,vgg,mobilenet_v2,
wide_resnet}`` and ``ipguard_jax.convert``, ``ipguard_jax.adapters.torch``.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "ipguard_jax",
    "ipguard_jax._fileutil",
    "ipguard_jax.backends",
    "ipguard_jax.backends.cpu",
    "ipguard_jax.engine",
    "ipguard_jax.core",
    "ipguard_jax.core.loss",
    "ipguard_jax.core.objectives",
    "ipguard_jax.core.optimizer",
    "ipguard_jax.methods",
    "ipguard_jax.baselines",
    "ipguard_jax.conferrable",
    "ipguard_jax.seeds",
    "ipguard_jax.classifier",
    "ipguard_jax.config",
    "ipguard_jax.sharding",
    "ipguard_jax.fingerprints",
    "ipguard_jax.generation",
    "ipguard_jax.compile_cache",
    "ipguard_jax.runners",
    "ipguard_jax.runners.compacted",
    "ipguard_jax.verification",
    "ipguard_jax.calibration",
    "ipguard_jax.sequential",
    "ipguard_jax.io",
    "ipguard_jax.storage.canonical",
    "ipguard_jax.storage.commitments",
    "ipguard_jax.storage.digest",
    "ipguard_jax.storage.files",
    "ipguard_jax.storage.fingerprint_files",
    "ipguard_jax.storage.manifest",
    "ipguard_jax.storage.sealed",
    "ipguard_jax.adapters.http",
    "ipguard_jax.runners.device_compacted",
    "ipguard_jax.train",
    "ipguard_jax.data",
    "ipguard_jax.data._dataset",
    "ipguard_jax.data._digits",
    "ipguard_jax.data._folder",
    "ipguard_jax.data._tfds",
    "ipguard_jax.models",
    "ipguard_jax.models.bundle",
    "ipguard_jax.models.registry",
    "ipguard_jax.models.mlp",
    "ipguard_jax.evaluation",
    "ipguard_jax.evaluation.postprocess",
    "ipguard_jax.evaluation.report",
    "ipguard_jax.evaluation.zoo",
    "ipguard_jax.evaluation.protocol",
    "ipguard_jax.evaluation.modelset",
    "ipguard_jax.evaluation.scoring",
    "ipguard_jax.evaluation.pipeline",
    "ipguard_jax.evaluation.factories",
    "ipguard_jax.cli",
    "ipguard_jax.cli._common",
    "ipguard_jax.cli.evaluate",
    "ipguard_jax.adapters",
    "ipguard_jax.adapters.sources",
    "ipguard_jax.demo",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
