"""Open the models and data a user names (a path, a URL, ``digits``, ``tfds:NAME``).

:func:`load_model` turns a model reference into something to fingerprint or verify: a model
file written by :func:`ipguard_jax.models.save_model`, a PyTorch state dict file
(``torch.save(model.state_dict(), path)``; converted by :func:`ipguard_jax.convert.from_torch`),
a Keras ``.keras`` file, or (where allowed) an ``http(s)://`` prediction endpoint
(:class:`ipguard_jax.HTTPSuspect`). :func:`load_data` turns a data reference into a
:class:`ipguard_jax.data.Dataset`: the embedded digits, an image folder or tar archive, an
``.npz`` file of arrays, or a prepared TensorFlow Datasets dataset. :func:`model_kind` tells
which kind of model a reference names without loading it.

These are the loaders behind the ``ipguard`` command line, usable without it: every option is
an explicit keyword argument. A reference that cannot be opened raises :class:`SourceError`
with a one-line message; its wording names the command-line option that sets each argument
(``--arch`` for ``arch``, ``--input-shape`` for ``input_shape``, ``--max-input-bytes`` for
``max_input_bytes``...), so the command line reports it unchanged.

Example:
    >>> from ipguard_jax.adapters.sources import load_data, model_kind
    >>> load_data("digits").x.shape
    (1797, 8, 8, 1)
    >>> model_kind("https://api.example/v1/predict")
    'url'
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ipguard_jax import data
from ipguard_jax.classifier import Classifier
from ipguard_jax.models import bundle
from ipguard_jax.storage.sealed import is_sealed_file
from ipguard_jax.adapters.http import HTTPSuspect, redact_url

__all__ = ["URL_PREFIXES", "SourceError", "load_data", "load_model", "model_kind"]

#: The prefixes of a model reference that names a prediction endpoint.
URL_PREFIXES = ("http://", "https://")


class SourceError(ValueError):
    """A model or data reference that cannot be opened, or arguments that do not apply to it.

    Its message is one line, fit to show as it is.

    Example:
        >>> model_kind("/no/such/model")
        Traceback (most recent call last):
        ...
        ipguard_jax.adapters.sources.SourceError: /no/such/model: no such file or directory
    """


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_kind(source: str) -> str:
    """Which kind of model ``source`` names, without loading it.

    Args:
        source: a model reference: an ``http(s)://`` URL or a path (``~`` is expanded).

    Returns:
        ``"url"`` (a prediction endpoint), ``"bundle"`` (a model file written by
        :func:`ipguard_jax.models.save_model`), ``"keras"`` (a ``.keras`` file) or
        ``"torch"`` (any other file, read as a PyTorch state dict).

    Raises:
        SourceError: nothing at ``source``, a fingerprint file (plain or sealed), or a
            directory that is not a model file.

    Example:
        >>> model_kind("https://api.example/v1/predict")
        'url'
        >>> model_kind("owner_model")  # a directory written by save_model  # doctest: +SKIP
        'bundle'
    """
    if source.startswith(URL_PREFIXES):
        return "url"

    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{source}: no such file or directory")
    if path.is_dir():
        if bundle.is_model_file(path):
            return "bundle"
        if (path / "CURRENT").is_file():
            raise SourceError(f"{source} is a fingerprint file, not a model")
        raise SourceError(f"{source} is a directory but not a model file (no model.json); "
                          "save models with ipguard_jax.models.save_model")
    if path.suffix.lower() == ".keras":
        return "keras"
    if is_sealed_file(path):
        raise SourceError(f"{source} is a sealed fingerprint file, not a model")
    return "torch"


def _spec_options(**spec: Any) -> list[str]:
    """The command-line spellings of the spec arguments given (not ``None``), in order."""
    return [f"--{name.replace('_', '-')}" for name, value in spec.items() if value is not None]


def _load_torch(path: Path, *, input_shape: tuple[int, ...], arch: str | None,
                bounds: tuple[float, float] | None, mean: Any, std: Any):
    try:
        import torch
    except ImportError:
        raise SourceError("reading PyTorch files needs torch: pip install 'ipguard-jax[torch]'"
                          ) from None
    from ipguard_jax.adapters.torch import SUPPORTED_ARCHS, from_torch  # for torch files only

    if arch is not None and arch not in SUPPORTED_ARCHS:
        raise SourceError(f"--arch {arch!r} is not a supported PyTorch architecture; "
                          f"supported: {', '.join(SUPPORTED_ARCHS)}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a readable state dict"
        if "Weights only load failed" in str(e):
            reason = ("torch.load(weights_only=True) refused it: it is not a PyTorch file, or "
                      "it holds pickled objects besides tensors, such as a whole model")
        else:
            first = (str(e).strip().splitlines() or [""])[0]
            reason = f"{type(e).__name__}: {first[:200]}"
        raise SourceError(f"{path}: cannot read it as a PyTorch state dict ({reason}); save one "
                          "with torch.save(model.state_dict(), path)") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not (isinstance(loaded, Mapping) and loaded
            and all(isinstance(v, torch.Tensor) for v in loaded.values())):
        raise SourceError(f"{path} does not hold a PyTorch state dict (names -> tensors); save "
                          "one with torch.save(model.state_dict(), path)")
    clf = from_torch(dict(loaded), input_shape=input_shape, bounds=bounds or (0.0, 1.0),
                     mean=mean, std=std, arch=arch)
    return clf, {"kind": "pytorch state dict", "file": path.name,
                 "file_sha256": _sha256_file(path), "arch": arch or "detected",
                 "params_sha256": clf.params_hash}


def _load_keras(path: Path, *, input_shape: tuple[int, ...] | None,
                bounds: tuple[float, float] | None, arch: str | None, mean: Any, std: Any):
    if arch is not None or mean is not None or std is not None:
        raise SourceError("--arch, --mean and --std apply to PyTorch files only")
    os.environ.setdefault("KERAS_BACKEND", "jax")  # read by keras at its first import
    try:
        import keras
    except ImportError:
        raise SourceError("reading .keras files needs Keras 3: pip install 'ipguard-jax[keras]'"
                          ) from None
    if keras.backend.backend() != "jax":
        raise SourceError(f"keras runs on the {keras.backend.backend()!r} backend; set "
                          "KERAS_BACKEND=jax")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many kinds for unreadable files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SourceError(f"{path}: cannot load it as a Keras model ({type(e).__name__}: "
                          f"{first[:200]})") from None
    clf = Classifier.from_keras(model, input_shape=input_shape,
                                    bounds=bounds or (0.0, 1.0))
    return clf, {"kind": "keras file", "file": path.name, "file_sha256": _sha256_file(path),
                 "params_sha256": clf.params_hash}


def load_model(source: str, *, arch: str | None = None,
               input_shape: tuple[int, ...] | None = None,
               bounds: tuple[float, float] | None = None,
               mean: float | tuple[float, ...] | None = None,
               std: float | tuple[float, ...] | None = None,
               default_input_shape: tuple[int, ...] | None = None, allow_url: bool = False,
               batch_size: int = 64, timeout: float = 10.0, max_retries: int = 5,
               query_budget: int | None = None,
               log_path: str | os.PathLike | None = None,
               resume_path: str | os.PathLike | None = None):
    """Opens a model reference as a classifier (or, for a URL, a suspect to query).

    Not to be confused with :func:`ipguard_jax.models.load_model`, which reads model files
    only (and is what this calls for them).

    Args:
        source: a model file (a directory written by :func:`ipguard_jax.models.save_model`),
            a PyTorch state dict file, a ``.keras`` file, or an ``http(s)://`` URL.
        arch: the architecture of a PyTorch state dict (one of
            :data:`ipguard_jax.convert.SUPPORTED_ARCHS`; detected from its keys if ``None``).
            PyTorch files only.
        input_shape: one input's shape, e.g. ``(32, 32, 3)``. PyTorch and Keras files only (a
            model file carries its own spec).
        bounds: the range of valid raw inputs (default ``(0.0, 1.0)``). PyTorch and Keras
            files only.
        mean: the per-channel mean the PyTorch model's inputs were normalised with.
        std: the per-channel std the PyTorch model's inputs were normalised with.
        default_input_shape: the input shape for PyTorch and Keras files when ``input_shape``
            is ``None``, e.g. taken from the data or the fingerprints; unlike
            ``input_shape`` it is ignored for model files.
        allow_url: accept an ``http(s)://`` URL (suspects only: fingerprinting needs the
            weights).
        batch_size: points per request to an endpoint.
        timeout: seconds per request to an endpoint.
        max_retries: retries per batch on errors, 5xx and 429 answers from an endpoint.
        query_budget: most points ever sent to an endpoint (``None``: no limit).
        log_path: a JSON-lines log of the requests to an endpoint.
        resume_path: a file keeping an endpoint's answers, so that a rerun does not query them
            again.

    Returns:
        ``(model, description)``: a :class:`~ipguard_jax.Classifier` (or an
        :class:`~ipguard_jax.HTTPSuspect` for a URL) and a JSON-able description of it
        (``kind``, and ``file``, ``file_sha256``, ``arch``, ``params_sha256`` or a redacted
        ``url`` as they apply).

    Raises:
        SourceError: an unreadable or unsupported source, or arguments that do not apply to
            it.

    Example:
        >>> suspect, about = load_model("https://me:secret@api.example/v1?key=abc",
        ...                             allow_url=True, query_budget=1000)  # nothing sent
        >>> about
        {'kind': 'http endpoint', 'url': 'https://***@api.example/v1?***'}
        >>> clf, about = load_model("resnet20.pt", arch="resnet20", input_shape=(32, 32, 3),
        ...                         mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)
        ...                         )  # doctest: +SKIP
        >>> about["kind"], clf.num_classes  # doctest: +SKIP
        ('pytorch state dict', 10)
    """
    kind = model_kind(source)
    if kind == "url":
        if not allow_url:
            raise SourceError("fingerprinting needs the owner's weights, not an endpoint; give "
                              "a model file")
        suspect = HTTPSuspect(
            source, batch_size=batch_size, timeout=timeout, max_retries=max_retries,
            query_budget=query_budget, log_path=log_path, resume_path=resume_path)
        return suspect, {"kind": "http endpoint", "url": redact_url(source)}
    path = Path(source).expanduser()
    if kind == "bundle":
        if given := _spec_options(arch=arch, input_shape=input_shape, bounds=bounds, mean=mean,
                                  std=std):
            raise SourceError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} "
                              "to PyTorch and Keras files only; a model file carries its own "
                              "spec")
        module, spec = bundle.load_model(path)
        return spec.classifier(module), {"kind": "model file", "file": path.name,
                                         "arch": spec.arch, "params_sha256": spec.state_sha256}
    if kind == "keras":
        return _load_keras(path, input_shape=input_shape or default_input_shape, bounds=bounds,
                           arch=arch, mean=mean, std=std)
    shape = input_shape or default_input_shape
    if shape is None:
        raise SourceError("a PyTorch file needs --input-shape H,W,C (or data to take it from)")
    return _load_torch(path, input_shape=shape, arch=arch, bounds=bounds, mean=mean, std=std)


def load_data(source: str | None, *, split: str | None = None, channels: int | None = None,
              max_input_bytes: int | None = None, max_image_pixels: int | None = None,
              option: str = "--data"):
    """Loads images from a data reference.

    Args:
        source: ``None`` or ``"digits"`` (the embedded digits), an image folder or tar
            archive, an ``.npz`` file with an array ``x`` (and optionally ``y``; labels are
            zeros without it), or ``tfds:NAME`` for a TensorFlow Datasets dataset already
            prepared on this machine (in ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``;
            nothing is downloaded).
        split: the split directory inside an image folder, or the TFDS split (default
            ``"test"``).
        channels: the model's input channels: 1 loads image folders as grey, else RGB.
        max_input_bytes: most bytes an archive extracts to, or an ``.npz`` file's arrays
            unpack to (default: :func:`~ipguard_jax.data.load_image_folder`'s).
        max_image_pixels: most pixels of one image (default: ``load_image_folder``'s).
        option: what names the source in messages (the command line's option, e.g.
            ``"--decoys"``).

    Returns:
        A :class:`ipguard_jax.data.Dataset`.

    Raises:
        SourceError: a missing or unreadable source, or one beyond the limits.

    Example:
        >>> load_data("digits").x.shape
        (1797, 8, 8, 1)
        >>> load_data("cifar10.tar.gz", split="test").x.shape  # doctest: +SKIP
        (10000, 32, 32, 3)
    """
    max_bytes = data.DEFAULT_MAX_ARCHIVE_BYTES if max_input_bytes is None else max_input_bytes
    max_pixels = data.DEFAULT_MAX_IMAGE_PIXELS if max_image_pixels is None \
        else max_image_pixels
    if source is None or source == "digits":
        return data.load_digits()
    if source.startswith("tfds:"):
        name = source[len("tfds:"):]
        if not name:
            raise SourceError(f"{option} tfds: needs a dataset name, e.g. tfds:cifar10")
        try:
            return data.load_tfds(name, split or "test",
                                  data_dir=os.environ.get("TFDS_DATA_DIR") or None)
        except (ImportError, FileNotFoundError, ValueError) as e:
            raise SourceError(f"{option} {source}: {e}") from None
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{option} {source}: no such file or directory")
    if path.is_file() and path.suffix.lower() == ".npz":
        if split is not None:
            raise SourceError(f"{option}: a split applies to image folders only")
        try:
            with zipfile.ZipFile(path) as archive:  # sizes checked before anything inflates
                unpacked = sum(member.file_size for member in archive.infolist())
            if unpacked > max_bytes:
                raise SourceError(f"{option} {source} unpacks to {unpacked} bytes, more than "
                                  f"--max-input-bytes {max_bytes}")
            with np.load(path, allow_pickle=False) as arrays:
                names = list(arrays.files)
                if "x" not in names:
                    raise SourceError(f"{option} {source} has no array named x (it has "
                                      f"{', '.join(names) or 'none'})")
                x = arrays["x"]
                y = arrays["y"] if "y" in names else np.zeros(len(x), np.int32)
        except SourceError:
            raise
        except Exception as e:  # zip, format and pickle refusals
            raise SourceError(f"{option} {source}: cannot read it as an .npz file of arrays "
                              f"({type(e).__name__}: {e})") from None
        return data.from_arrays(x, y, name=path.name)
    return data.load_image_folder(path, split, mode="L" if channels == 1 else "RGB",
                                  max_archive_bytes=max_bytes, max_image_pixels=max_pixels)
