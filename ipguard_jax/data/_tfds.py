"""TensorFlow Datasets (TFDS) splits as NumPy arrays, with or without TensorFlow.

Example:
    >>> from ipguard_jax.data import load_tfds
    >>> test = load_tfds("mnist", "test")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import numpy as np

from ipguard_jax.data._dataset import Dataset, from_arrays

_BATCH = 1024


def load_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
              method: Literal["auto", "data_source", "tf"] = "auto",
              image_key: str | None = None, label_key: str | None = None) -> Dataset:
    """Loads a prepared TFDS image-classification split; never downloads.

    ``method="data_source"`` reads through ``tfds.data_source`` (random access to array_record
    files; images are decoded by Pillow) and needs no TensorFlow. ``method="tf"`` uses
    ``tfds.load`` and needs TensorFlow, but also reads data prepared in the TFRecord format.
    ``"auto"`` tries the data source first and falls back to ``tfds.load`` when the data is
    TFRecord and TensorFlow is installed.

    To prepare a data set for the data source without TensorFlow, e.g.
    ``tfds build mnist --file_format=array_record`` (or
    ``tfds.builder("mnist").download_and_prepare(file_format="array_record")``).

    Args:
        name: TFDS name, e.g. ``"mnist"`` or ``"cifar10"``, optionally with config and version.
        split: TFDS split, e.g. ``"train"``, ``"test"`` or ``"train[:10%]"``.
        data_dir: TFDS data directory; defaults to TFDS's (``~/tensorflow_datasets`` or
            ``$TFDS_DATA_DIR``).
        method: ``"auto"``, ``"data_source"`` or ``"tf"``, see above.
        image_key: feature holding the images; defaults to the data set's supervised keys, else
            ``"image"``.
        label_key: feature holding the labels; defaults to the data set's supervised keys, else
            ``"label"``.

    Returns:
        A ``Dataset`` named ``"tfds:<name>/<split>"``: uint8 images scaled by ``1/255`` to
        float32, channels last; class names from the label's ``ClassLabel`` feature.

    Raises:
        ImportError: tensorflow_datasets is not installed (or TensorFlow, for
            ``method="tf"``).
        FileNotFoundError: the data set is not prepared in ``data_dir``.
        ValueError: an unknown ``method``; the data is TFRecord but TensorFlow is missing; a
            key is missing; images differ in shape; the split is empty.

    Example:
        >>> test = load_tfds("mnist", "test")  # doctest: +SKIP
        >>> test.x.shape  # doctest: +SKIP
        (10000, 28, 28, 1)
    """
    if method not in ("auto", "data_source", "tf"):
        raise ValueError(f"method must be 'auto', 'data_source' or 'tf'; got {method!r}")
    tfds = _import_tfds()
    data_dir = None if data_dir is None else os.fspath(data_dir)
    if method == "tf":
        return _load_with_tf(tfds, name, split, data_dir, image_key, label_key)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except NotImplementedError as e:
        # TFDS raises this both when nothing is prepared and for TFRecord-only data.
        prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
        if prepared and method == "auto" and _has_tensorflow():
            return _load_with_tf(tfds, name, split, data_dir, image_key, label_key)
        raise _not_readable_error(name, data_dir, prepared) from e

    info = source.dataset_info
    image_key, label_key = _keys(info, image_key, label_key)
    n = len(source)
    if n == 0:
        raise ValueError(f"TFDS split {name}/{split} is empty")
    images = labels = None
    batched = True
    for start in range(0, n, _BATCH):
        indices = list(range(start, min(n, start + _BATCH)))
        examples = None
        if batched:
            try:
                examples = source.__getitems__(indices)
            except TypeError:
                # Some sources (TFDS's own test mocks among them) lack a working batch read.
                batched = False
        if examples is None:
            examples = [source[i] for i in indices]
        for i, example in zip(indices, examples):
            if i == 0:
                _check_keys(example, image_key, label_key, name)
                first = np.asarray(example[image_key])
                images = np.empty((n, *first.shape), first.dtype)
                labels = np.empty(n, np.int64)
            image = np.asarray(example[image_key])
            if image.shape != images.shape[1:]:
                raise ValueError(f"images in {name}/{split} differ in shape: example 0 is "
                                 f"{images.shape[1:]}, example {i} is {image.shape}; this "
                                 "loader needs fixed-size images")
            images[i] = image
            labels[i] = example[label_key]
    return from_arrays(images, labels, _class_names(tfds, info, label_key),
                       name=f"tfds:{name}/{split}")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("load_tfds needs tensorflow_datasets and Pillow: "
                          "pip install 'ipguard-jax[data]'") from e
    return tfds


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _not_readable_error(name: str, data_dir: str | None, prepared: bool) -> Exception:
    where = data_dir or "the default TFDS data directory"
    if prepared:
        return ValueError(
            f"TFDS data set {name!r} in {where} is stored as TFRecord, which only TensorFlow "
            f"reads: install TensorFlow and pass method='tf', or prepare it again with "
            f"`tfds build {name} --file_format=array_record`")
    return FileNotFoundError(
        f"TFDS data set {name!r} is not prepared in {where}, and load_tfds does not download. "
        f"Prepare it first: `tfds build {name} --file_format=array_record` (add "
        f"--data_dir=DIR to choose where)")


def _keys(info, image_key: str | None, label_key: str | None) -> tuple[str, str]:
    supervised = info.supervised_keys
    if (isinstance(supervised, tuple) and len(supervised) == 2
            and all(isinstance(k, str) for k in supervised)):
        default_image, default_label = supervised
    else:
        default_image, default_label = "image", "label"
    return image_key or default_image, label_key or default_label


def _check_keys(example, image_key: str, label_key: str, name: str) -> None:
    for key, arg in ((image_key, "image_key"), (label_key, "label_key")):
        if key not in example:
            raise ValueError(f"{name} examples have no feature {key!r}; available: "
                             f"{sorted(example)}; pass {arg}=")


def _class_names(tfds, info, label_key: str) -> tuple[str, ...] | None:
    try:
        feature = info.features[label_key]
    except (KeyError, TypeError):
        return None
    if isinstance(feature, tfds.features.ClassLabel):
        return tuple(str(c) for c in feature.names)
    return None


def _load_with_tf(tfds, name: str, split: str, data_dir: str | None,
                  image_key: str | None, label_key: str | None) -> Dataset:
    if not _has_tensorflow():
        raise ImportError("method='tf' needs TensorFlow (pip install tensorflow-cpu); "
                          "method='data_source' reads array_record data without it")
    try:
        ds, info = tfds.load(name, split=split, data_dir=data_dir, download=False,
                             with_info=True)
    except AssertionError as e:  # tfds.load's way of saying the data is not there
        raise _not_readable_error(name, data_dir, prepared=False) from e
    image_key, label_key = _keys(info, image_key, label_key)
    images, labels = [], []
    # Batches, not batch_size=-1: the latter crashed inside tfds.testing.mock_data.
    for batch in tfds.as_numpy(ds.batch(_BATCH)):
        _check_keys(batch, image_key, label_key, name)
        images.append(batch[image_key])
        labels.append(batch[label_key])
    if not images:
        raise ValueError(f"TFDS split {name}/{split} is empty")
    return from_arrays(np.concatenate(images), np.concatenate(labels),
                       _class_names(tfds, info, label_key), name=f"tfds:{name}/{split}")
