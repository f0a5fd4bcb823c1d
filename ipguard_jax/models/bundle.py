"""Self-describing model files: a zoo model's weights (orbax) plus a JSON spec, checksummed.

A model file is a directory::

    path/model.json   format, architecture name and constructor arguments, number of classes,
                      input shape and bounds, free-form metadata, the sha256 of the model state
                      and of every weight file
    path/weights/     the model state (parameters and statistics), an orbax checkpoint

It holds everything needed to rebuild the classifier (``ipguard fingerprint owner_model ...``
needs no other argument): :func:`load_model` builds the zoo model named in the spec, restores
the weights into it and checks both the weight files and the restored state against their
recorded sha256, so a modified or corrupt file fails loudly instead of yielding another model.
:func:`save_model` writes the directory under a hidden temporary name and renames it into
place once complete, so a crash never leaves a half-written model file. Nothing is pickled.

A model file may come from someone else, so :func:`load_model` checks it before it builds or
allocates anything: every field of ``model.json`` (``num_classes`` an int >= 2, positive
``input_shape`` entries, finite bounds with ``lo < hi``, positive layer sizes...), only regular
files under ``weights/`` (no symbolic link, FIFO or device), and the shapes of the model the
spec describes (computed abstractly, without allocating) against the shapes the stored weights
declare and against the size of the weight files. A spec whose model would not fit its
weights, e.g. one that asks for more logits or far wider layers than the weights have, is
refused naming the field.

Example:
    >>> import os, tempfile
    >>> from flax import nnx
    >>> from ipguard_jax import models, params_hash
    >>> kwargs = {"in_features": 64, "in_channels": 1}
    >>> net = models.create("mlp", num_classes=10, rngs=nnx.Rngs(0), **kwargs)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = models.save_model(os.path.join(tmp, "owner_model"), net, arch="mlp",
    ...                              num_classes=10, input_shape=(8, 8, 1), model_kwargs=kwargs)
    ...     net2, spec = models.load_model(path)
    >>> spec.arch, spec.input_shape, spec.state_sha256 == params_hash(nnx.state(net))
    ('mlp', (8, 8, 1), True)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from ipguard_jax._version import __version__
from ipguard_jax.classifier import Classifier, check_bounds, check_shape, params_hash
from ipguard_jax.models import registry
from ipguard_jax.storage.digest import (flatten_state, is_prng_key, leaf_name, sha256_regular,
                                        unflatten_state)
from ipguard_jax.storage.files import (UnsafeFileError, array_nbytes, check_expansion, check_tree,
                                       orbax_array_specs, read_regular, rename_new, write_atomic)

FORMAT = "ipguard_jax.model"
FORMAT_VERSION = 1
SPEC_FILE = "model.json"
_WEIGHTS = "weights"
_MAX_SPEC_BYTES = 16 << 20
# Most elements of one input example a spec may declare (a 4096 x 4096 RGBA image).
_MAX_INPUT_ELEMENTS = 4096 * 4096 * 4
# Constructor arguments of the zoo models that are sizes or counts: positive ints (or lists of
# them), at most _MAX_SIZE each.
_SIZE_KWARGS = ("in_features", "in_channels", "hidden", "widths", "convs_per_stage",
                "pool_size", "widen_factor")
_MAX_SIZE = 1 << 24


class ModelFileError(ValueError):
    """A model file is missing a part, corrupt, modified, or of an unknown format."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a model file says about its model.

    Attributes:
        arch: the zoo architecture name (see :func:`ipguard_jax.models.available`).
        num_classes: number of output logits.
        input_shape: one example's shape, e.g. ``(32, 32, 3)``.
        bounds: ``(lo, hi)`` of valid inputs.
        model_kwargs: further constructor arguments of the zoo model (``in_channels``...).
        metadata: free-form JSON metadata given when saving.
        state_sha256: :func:`ipguard_jax.params_hash` of the model state; equal to the
            ``params_sha256`` that fingerprints of this model record for their owner.
        library: library, JAX and Flax versions that wrote the file.
        created: UTC creation time, ISO 8601.

    Example:
        >>> spec = ModelSpec("mlp", 10, (8, 8, 1), (0.0, 1.0), {"in_features": 64}, {}, "ab",
        ...                  {}, "2024-01-01T00:00:00+00:00")
        >>> spec.to_dict()["input_shape"]
        [8, 8, 1]
    """

    arch: str
    num_classes: int
    input_shape: tuple[int, ...]
    bounds: tuple[float, float]
    model_kwargs: dict[str, Any]
    metadata: dict[str, Any]
    state_sha256: str
    library: dict[str, Any]
    created: str

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-able values.

        Returns:
            The fields by name, ``input_shape`` and ``bounds`` as lists.
        """
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["bounds"] = list(self.bounds)
        return out

    def classifier(self, module: nnx.Module) -> Classifier:
        """Wraps the loaded module as a :class:`~ipguard_jax.Classifier` with this input spec.

        Args:
            module: the module returned by :func:`load_model` with this spec.

        Returns:
            The classifier, in evaluation mode.

        Example:
            >>> net, spec = load_model("owner_model")  # doctest: +SKIP
            >>> owner = spec.classifier(net)  # doctest: +SKIP
            >>> owner.input_shape == spec.input_shape  # doctest: +SKIP
            True
        """
        return Classifier.from_nnx(module, input_shape=self.input_shape, bounds=self.bounds)


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a model file (a directory holding ``model.json``).

    Args:
        path: any path.

    Returns:
        True for a directory with a ``model.json``; no content is checked.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     is_model_file(tmp)  # a directory without model.json
        False
    """
    return (Path(path) / SPEC_FILE).is_file()


def _flatten(state: Any) -> tuple[list[str], dict[str, np.ndarray]]:
    """Leaf paths and arrays (keyed by position, see :func:`flatten_state`) of a state; PRNG keys
    as their key data."""
    paths = [jax.tree_util.keystr(path)
             for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    arrays = {name: np.asarray(leaf) for name, leaf in flatten_state(state).items()}
    return paths, arrays


def _leaf_specs(state: Any) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """Path, dtype and shape of each array :func:`_flatten` saves, for concrete or abstract
    (``jax.ShapeDtypeStruct``) states alike."""
    specs = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if is_prng_key(leaf):
            leaf = jax.eval_shape(jax.random.key_data, leaf)
        specs.append((jax.tree_util.keystr(path), np.dtype(leaf.dtype), tuple(leaf.shape)))
    return specs


def _build(arch: str, num_classes: int, model_kwargs: Mapping[str, Any]) -> nnx.Module:
    return registry.create(arch, num_classes, rngs=nnx.Rngs(0), **dict(model_kwargs))


def _abstract_state(arch: str, num_classes: int, model_kwargs: Mapping[str, Any]) -> Any:
    """The state :func:`_build` would give, as shapes and dtypes only: nothing is allocated."""
    return nnx.state(nnx.eval_shape(lambda: _build(arch, num_classes, model_kwargs)))


def _file_digests(root: Path) -> dict[str, str]:
    return {file.relative_to(root).as_posix(): sha256_regular(file)
            for file in sorted(p for p in root.rglob("*") if p.is_file())}


def _json_value(value: Any, name: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be JSON-serialisable: {e}") from None


def save_model(path: str | os.PathLike, model: nnx.Module, *, arch: str, num_classes: int,
               input_shape: tuple[int, ...], bounds: tuple[float, float] = (0.0, 1.0),
               model_kwargs: Mapping[str, Any] | None = None,
               metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Saves a zoo model as a self-describing model file (a directory).

    The model must be what ``models.create(arch, num_classes, **model_kwargs)`` builds (checked:
    same state structure, shapes and dtypes), so that :func:`load_model` can rebuild it.

    Args:
        path: the directory to write (its parent must exist).
        model: the trained NNX model.
        arch: its zoo architecture name, e.g. ``"resnet20"``.
        num_classes: its number of output logits.
        input_shape: one example's shape, e.g. ``(32, 32, 3)``.
        bounds: ``(lo, hi)`` of valid inputs.
        model_kwargs: the other constructor arguments it was built with (``in_channels``,
            ``in_features``, ``hidden``...); JSON-able.
        metadata: free-form JSON-able metadata (training data, accuracy, owner...).
        overwrite: replace an existing model file at ``path``.

    Returns:
        The absolute path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False, or another process created
            it while this one was writing.
        ModelFileError: ``path`` exists but is not a model file (never overwritten).
        ValueError: the model does not match ``arch``/``num_classes``/``model_kwargs``/
            ``input_shape``, or an argument is not JSON-able.
        TypeError: ``model`` is not an ``nnx.Module``.

    Example:
        >>> import os, tempfile
        >>> from ipguard_jax import models
        >>> net = models.create("mlp", 10, in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_model(os.path.join(tmp, "owner_model"), net, arch="mlp", num_classes=10,
        ...                input_shape=(8, 8, 1), model_kwargs={"in_features": 64,
        ...                                                     "in_channels": 1})
        PosixPath('/.../owner_model')
    """
    import orbax.checkpoint as ocp

    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}")
    model_kwargs = _json_value(dict(model_kwargs or {}), "model_kwargs")
    metadata = _json_value(dict(metadata or {}), "metadata")
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool)
            and num_classes >= 2):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    state = nnx.state(model)
    try:
        template = _abstract_state(arch, num_classes, model_kwargs)
    except TypeError as e:
        raise ValueError(f"cannot build {arch!r} with model_kwargs {model_kwargs}: {e}") from None
    ours, theirs = _leaf_specs(state), _leaf_specs(template)
    if ours != theirs:
        diff = next((f"{a} vs {b}" for a, b in zip(ours, theirs) if a != b),
                    f"{len(ours)} arrays vs {len(theirs)}")
        raise ValueError(
            f"the model is not what models.create({arch!r}, {num_classes}, **{model_kwargs}) "
            f"builds (model vs rebuilt: {diff}); pass the arch and model_kwargs it was built with"
        )
    clf = Classifier.from_nnx(model, input_shape=input_shape, bounds=bounds)
    if clf.num_classes != num_classes:
        raise ValueError(f"the model returns {clf.num_classes} logits, num_classes is "
                         f"{num_classes}")

    path = Path(path).absolute()
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the parent directory of {path} does not exist")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if not is_model_file(path):
            raise ModelFileError(f"{path} exists and is not a model file; refusing to overwrite it")
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    try:
        staging.mkdir()
        paths, arrays = _flatten(state)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / _WEIGHTS, arrays)
        spec = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": arch,
            "num_classes": num_classes,
            "input_shape": list(clf.input_shape),
            "bounds": list(clf.bounds),
            "model_kwargs": model_kwargs,
            "metadata": metadata,
            "state_sha256": params_hash(state),
            "state_paths": paths,
            "files": _file_digests(staging / _WEIGHTS),
            "library": {"name": "ipguard_jax", "version": __version__, "jax": jax.__version__,
                        "flax": _flax_version()},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_atomic(staging / SPEC_FILE, json.dumps(spec, indent=1, sort_keys=True))
        if path.exists():
            os.rename(path, old)
        rename_new(staging, path, "model file")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def _flax_version() -> str:
    import flax

    return flax.__version__


def _read_spec(path: Path) -> dict[str, Any]:
    """The parsed ``model.json`` of the model file ``path``, every field checked."""
    if not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    if not path.is_dir():
        raise ModelFileError(f"{path} is a file, not a model file (a directory with {SPEC_FILE})")
    try:
        spec = json.loads(read_regular(path / SPEC_FILE, max_bytes=_MAX_SPEC_BYTES
                                       ).decode("utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path} is not a model file: {SPEC_FILE} is missing") from None
    except UnsafeFileError as e:
        raise ModelFileError(f"{path}: refusing to read {SPEC_FILE}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{path}: {SPEC_FILE} is corrupt ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ModelFileError(f"{path}: {SPEC_FILE} is not an {FORMAT} spec")
    version = spec.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {version!r}; this library reads up to "
                             f"version {FORMAT_VERSION}: upgrade ipguard_jax to read it")
    required = {"arch": str, "num_classes": int, "input_shape": list, "bounds": list,
                "model_kwargs": dict, "state_sha256": str, "files": dict}
    for key, kind in required.items():
        if not isinstance(spec.get(key), kind):
            raise ModelFileError(f"{path}: {SPEC_FILE} lacks a valid {key!r} entry")
    _check_spec_fields(path, spec)
    return spec


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_SIZE


def _check_spec_fields(path: Path, spec: dict[str, Any]) -> None:
    """Checks the values of the fields a model is built from; errors name the field."""
    def bad(field: str, why: str) -> ModelFileError:
        return ModelFileError(f"{path}: {SPEC_FILE} has an invalid {field!r}: {why}")

    if spec["arch"] not in registry.available():
        raise bad("arch", f"{spec['arch']!r} is not one of {', '.join(registry.available())}")
    num_classes = spec["num_classes"]
    if isinstance(num_classes, bool) or num_classes < 2:
        raise bad("num_classes", f"must be an int >= 2, got {num_classes!r}")
    try:
        shape = check_shape(spec["input_shape"])
    except (TypeError, ValueError) as e:
        raise bad("input_shape", str(e)) from None
    if int(np.prod(shape, dtype=object)) > _MAX_INPUT_ELEMENTS:
        raise bad("input_shape", f"{list(shape)} has more than {_MAX_INPUT_ELEMENTS:,} elements")
    try:
        check_bounds(spec["bounds"])
    except (TypeError, ValueError) as e:
        raise bad("bounds", str(e)) from None
    for key in _SIZE_KWARGS:
        value = spec["model_kwargs"].get(key)
        if value is None:
            continue
        sizes = value if isinstance(value, list) else [value]
        if not all(_is_size(v) for v in sizes):
            raise bad(f"model_kwargs.{key}",
                      f"sizes must be positive ints up to {_MAX_SIZE:,}, got {value!r}")
    paths = spec.get("state_paths")
    if paths is not None and not (isinstance(paths, list)
                                  and all(isinstance(p, str) for p in paths)):
        raise bad("state_paths", "must be a list of strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in spec["files"].items()):
        raise bad("files", "must map file names to sha256 strings")
    for key in ("metadata", "library"):
        if not isinstance(spec.get(key) or {}, dict):
            raise bad(key, "must be an object")


def _check_weights_fit(path: Path, spec: dict[str, Any],
                       expected: list[tuple[str, np.dtype, tuple[int, ...]]],
                       stored: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
    """Checks the arrays the weights declare against those of the model the spec describes.

    Run before the model is built, so a spec asking for a model far larger than its weights
    (more logits, wider layers) is refused without allocating it.
    """
    num_classes = spec["num_classes"]
    described = (f"the {spec['arch']!r} model {SPEC_FILE} describes (num_classes={num_classes}, "
                 f"model_kwargs={spec['model_kwargs']})")
    if sorted(stored) != [leaf_name(i) for i in range(len(expected))]:
        raise ModelFileError(f"{path}: the weights hold {len(stored)} arrays, {described} has "
                             f"{len(expected)}")
    for index, (leaf, dtype, shape) in enumerate(expected):
        stored_dtype, stored_shape = stored[leaf_name(index)]
        if (stored_dtype, stored_shape) == (dtype, shape):
            continue
        if (len(shape) == len(stored_shape) >= 1 and shape[:-1] == stored_shape[:-1]
                and shape[-1] == num_classes):
            raise ModelFileError(
                f"{path}: {SPEC_FILE} says num_classes={num_classes} but the weights have "
                f"{stored_shape[-1]} logits ({leaf} is {list(stored_shape)})")
        raise ModelFileError(
            f"{path}: the weights do not fit {described}: {leaf} is {stored_dtype}"
            f"{list(stored_shape)} in the weights, {dtype}{list(shape)} in the model")


def load_model(path: str | os.PathLike) -> tuple[nnx.Module, ModelSpec]:
    """Loads a model file written by :func:`save_model` and checks its sha256.

    Everything is checked before the model is built: the spec's fields, the weight files
    (regular files only, matching their sha256) and the shapes of the model the spec describes
    against those of the stored weights (see the module docs).

    Args:
        path: the model directory.

    Returns:
        ``(module, spec)``: the zoo NNX model in evaluation mode, bit-identical to the one saved,
        and its :class:`ModelSpec`.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ModelFileError: not a model file, a part missing or unreadable or not a regular file, an
            invalid field in ``model.json`` (named), a newer format version, a spec that does
            not fit its weights, or weights that do not match their sha256 (modified or
            corrupt).

    Example:
        >>> import os, tempfile
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import models
        >>> kwargs = {"in_features": 64, "in_channels": 1}
        >>> net = models.create("mlp", 10, rngs=nnx.Rngs(0), **kwargs)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model(os.path.join(tmp, "owner_model"), net, arch="mlp",
        ...                       num_classes=10, input_shape=(8, 8, 1), model_kwargs=kwargs)
        ...     net2, spec = load_model(path)
        >>> spec.classifier(net2).predict(jnp.zeros((2, 8, 8, 1))).shape
        (2,)
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    spec = _read_spec(path)
    weights = path / _WEIGHTS
    if not weights.is_dir():
        raise ModelFileError(f"{path}: the weights directory is missing")
    try:
        stored_bytes = check_tree(weights)  # no link, FIFO or device for orbax to open
        found = _file_digests(weights)
    except UnsafeFileError as e:
        raise ModelFileError(f"{path}: refusing to read the weights: {e}") from None
    for name, digest in spec["files"].items():
        if name not in found:
            raise ModelFileError(f"{path}: weight file {name} is missing")
        if found[name] != digest:
            raise ModelFileError(f"{path}: weight file {name} does not match its sha256: the "
                                 "model file was modified or is corrupt")
    try:
        expected = _leaf_specs(_abstract_state(spec["arch"], spec["num_classes"],
                                               spec["model_kwargs"]))
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: cannot build the model it describes: {e}") from None
    try:
        stored = orbax_array_specs(weights)
    except Exception as e:  # any failure of the array store means the same to the user
        raise _unreadable(path, e) from None
    _check_weights_fit(path, spec, expected, stored)
    paths = [leaf for leaf, _, _ in expected]
    if spec.get("state_paths", paths) != paths:
        raise ModelFileError(f"{path}: the saved state does not fit {spec['arch']!r} as built "
                             "by this library version")
    try:
        check_expansion(sum(array_nbytes(dtype, shape) for _, dtype, shape in expected),
                        stored_bytes, "the weights")
    except UnsafeFileError as e:
        raise ModelFileError(f"{path}: {e}") from None

    template = _build(spec["arch"], spec["num_classes"], spec["model_kwargs"])
    graphdef, state = nnx.split(template)
    _, flat = _flatten(state)
    try:
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(weights, target)
        state = unflatten_state(state, restored)
    except Exception as e:  # any failure of the array store means the same to the user
        raise _unreadable(path, e) from None
    if params_hash(state) != spec["state_sha256"]:
        raise ModelFileError(f"{path}: the weights do not match their sha256: the model file "
                             "was modified or is corrupt")
    module = nnx.merge(graphdef, state)
    module.eval()
    result = ModelSpec(
        arch=spec["arch"], num_classes=spec["num_classes"],
        input_shape=check_shape(spec["input_shape"]), bounds=check_bounds(spec["bounds"]),
        model_kwargs=spec["model_kwargs"], metadata=dict(spec.get("metadata") or {}),
        state_sha256=spec["state_sha256"], library=dict(spec.get("library") or {}),
        created=str(spec.get("created", "")))
    return module, result


def _unreadable(path: Path, error: Exception) -> ModelFileError:
    return ModelFileError(f"{path}: the weights cannot be read, the file is corrupt or "
                          f"incomplete ({type(error).__name__}: {str(error)[:200]})")
