"""A disk cache of trained models keyed by their recipe, so evaluations re-run cheaply.

Pirated and independent models take most of an evaluation's time; the fingerprints and the
queries take little. :class:`ModelCache` trains a model once per *recipe* (a JSON-able dict:
architecture, data description or hash, training config, post-processing and its parameters,
owner parameter hash...) and stores its state with orbax under
``<root>/<sha256 of the recipe>/``, written to a temporary directory and renamed, so a crash
never leaves a half-written entry. Nothing is pickled.

The root is ``$IPGUARD_JAX_CACHE/models`` if that variable is set (the data loaders use the
same variable for datasets), else ``~/.cache/ipguard_jax/models``.

A cache is lost with its machine. :class:`ModelZoo` keeps models as small files meant to be
committed with the results they produced (float16 weights in a compressed ``.npz``, next to a
JSON record of the recipe, test accuracy, training time and sha256s); a :class:`ModelCache`
given a zoo loads from it before it trains anything. With ``precision="float16"`` the cache
rounds every model to float16 as it is made, so the model a run evaluates is bit for bit the
one the zoo holds, and results reproduce from a fresh clone.

Example:
    >>> from ipguard_jax.evaluation import ModelCache, array_digest
    >>> cache = ModelCache()
    >>> recipe = {"arch": "mlp", "data": array_digest(x, y),
    ...           "train": config.trajectory_dict()}  # doctest: +SKIP
    >>> model = cache.get_or_create(recipe, make=lambda: train_it(),
    ...                             like=lambda: build_it())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ipguard_jax.classifier import params_hash
from ipguard_jax.data import CACHE_ENV_VAR
from ipguard_jax.storage.digest import (array_digest, flatten_state, sha256_file, sha256_hex,
                                        unflatten_state)
from ipguard_jax.storage.files import atomic_path, write_atomic

__all__ = ["ModelCache", "ModelZoo", "default_model_dir", "recipe_key", "array_digest",
           "model_hash", "round_model"]

_FORMAT = "ipguard_jax.evaluation.zoo/1"
_ZOO_FORMAT = "ipguard_jax.evaluation.zoo/files-1"
#: Storage precisions a cache can round its models to (``ModelCache(precision=...)``).
PRECISIONS = ("float16",)
_MAX_RECORD_BYTES = 1 << 20


def default_model_dir() -> Path:
    """``$IPGUARD_JAX_CACHE/models`` if that is set, else ``~/.cache/ipguard_jax/models``.

    Returns:
        The default root of :class:`ModelCache`.

    Example:
        >>> default_model_dir().name
        'models'
    """
    env = os.environ.get(CACHE_ENV_VAR)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "ipguard_jax"
    return root / "models"


def model_hash(model: nnx.Module) -> str:
    """sha256 of an NNX model's whole state (parameters and statistics).

    Args:
        model: an NNX model.

    Returns:
        :func:`ipguard_jax.params_hash` of ``nnx.state(model)``: 64 lowercase hex digits.

    Example:
        >>> from ipguard_jax import models
        >>> net = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> model_hash(net) == model_hash(nnx.clone(net))
        True
    """
    return params_hash(nnx.state(model))


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """The cache key of a recipe: sha256 of its canonical JSON (sorted keys).

    Values JSON cannot hold are written as their ``str``.

    Args:
        recipe: a JSON-able description of a model.

    Returns:
        64 lowercase hex digits, the entry's directory name.

    Example:
        >>> recipe_key({"arch": "mlp", "seed": 1}) == recipe_key({"seed": 1, "arch": "mlp"})
        True
    """
    text = json.dumps({"format": _FORMAT, "recipe": recipe}, sort_keys=True, default=str)
    return sha256_hex(text.encode())


def _flatten(state: Any) -> dict[str, np.ndarray]:
    """A state's leaves as NumPy arrays by position (see :func:`flatten_state`)."""
    return {name: np.asarray(leaf) for name, leaf in flatten_state(state).items()}


def _check_cached(k: int, ref: Any, value: jax.Array) -> None:
    if value.shape != ref.shape or value.dtype != ref.dtype:
        raise ValueError(f"cached array {k} is {value.dtype}{value.shape}, the template "
                         f"expects {ref.dtype}{ref.shape}")


def _unflatten(template: Any, flat: Mapping[str, Any]) -> Any:
    leaves = jax.tree.leaves(template)
    if len(leaves) != len(flat):
        raise ValueError(f"cached model has {len(flat)} arrays, the template has {len(leaves)}")
    return unflatten_state(template, flat, check=_check_cached)


def round_model(model: nnx.Module, precision: str = "float16") -> nnx.Module:
    """Rounds every floating array of a model's state to ``precision`` (in place).

    The arrays keep their dtype (float32 stays float32) but hold float16-representable values,
    so storing them as float16 loses nothing. Rounding twice changes nothing.

    Args:
        model: an NNX model.
        precision: ``"float16"``.

    Returns:
        The same model.

    Raises:
        ValueError: an unknown precision, or a finite value too large for it (it would
            become infinite).

    Example:
        >>> from ipguard_jax import models
        >>> net = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> model_hash(round_model(nnx.clone(net))) == model_hash(round_model(round_model(net)))
        True
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    store = np.dtype(precision)
    state = nnx.state(model)

    def rounded(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        value = np.asarray(leaf)
        low = value.astype(store)
        if np.any(np.isinf(low) & np.isfinite(value)):
            raise ValueError(f"a parameter of magnitude {np.abs(value).max():.3g} does not fit "
                             f"in {precision}")
        return jnp.asarray(low.astype(value.dtype))

    nnx.update(model, jax.tree.map(rounded, state))
    return model


class ModelZoo:
    """Trained models kept as files: compressed float16 weights with a JSON record each.

    Each model is two files, ``<name>.<key>.npz`` (its state's arrays: floating ones as
    float16, others as they are) and ``<name>.<key>.json`` (format, name, the full recipe and
    its :func:`recipe_key`, the model's :func:`model_hash`, the ``.npz``'s sha256 and size,
    and what :meth:`add` was told: test accuracy, training seconds...). ``<key>`` is the first
    16 hex digits of the recipe key. A model is written once; adding the same recipe again
    is refused. Nothing is unpickled, and a file is trusted only as far as it is checked: the
    record's fields, the ``.npz``'s sha256, each array's name, dtype, shape and packed size
    against the model it restores into, and the restored model's hash.

    Args:
        root: the zoo's directory (created by the first :meth:`add`).

    Example:
        >>> import tempfile
        >>> from ipguard_jax import models
        >>> build = lambda: models.create("mlp", in_features=64, in_channels=1,
        ...                               rngs=nnx.Rngs(0))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     zoo = ModelZoo(tmp)
        ...     net = round_model(build())
        ...     _ = zoo.add("mlp", {"arch": "mlp"}, net, {"test_accuracy": 0.1})
        ...     again = zoo.load({"arch": "mlp"}, like=build)
        ...     zoo.info({"arch": "mlp"})["test_accuracy"], model_hash(again) == model_hash(net)
        (0.1, True)
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"ModelZoo({str(self.root)!r})"

    def _records(self) -> dict[str, Path]:
        if not self.root.is_dir():
            return {}
        found = {}
        for path in sorted(self.root.glob("*.json")):
            parts = path.name.split(".")
            if len(parts) == 3 and len(parts[1]) == 16:
                found.setdefault(parts[1], []).append(path)
        return found

    def _record_path(self, recipe: Mapping[str, Any]) -> Path | None:
        key = recipe_key(recipe)
        for path in self._records().get(key[:16], []):
            if self._read_record(path)["recipe_key"] == key:
                return path
        return None

    def _read_record(self, path: Path) -> dict[str, Any]:
        def bad(why: str) -> ValueError:
            return ValueError(f"model zoo record {path} is invalid: {why}")

        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise bad("not a regular file")
        if info.st_size > _MAX_RECORD_BYTES:
            raise bad(f"{info.st_size} bytes, more than a record holds")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise bad(f"not JSON ({type(e).__name__})") from None
        if not isinstance(record, dict) or record.get("format") != _ZOO_FORMAT:
            raise bad(f"not a {_ZOO_FORMAT} record")
        for field in ("recipe_key", "state_hash", "npz_sha256"):
            value = record.get(field)
            if not (isinstance(value, str) and len(value) == 64
                    and all(c in "0123456789abcdef" for c in value)):
                raise bad(f"{field} is not 64 lowercase hex digits")
        if not isinstance(record.get("recipe"), dict) \
                or recipe_key(record["recipe"]) != record["recipe_key"]:
            raise bad("its recipe does not hash to its recipe_key")
        if not path.name.startswith(f"{record.get('name')}.{record['recipe_key'][:16]}."):
            raise bad("its file name does not match its name and recipe key")
        return record

    def __contains__(self, recipe: Mapping[str, Any]) -> bool:
        return self._record_path(recipe) is not None

    def __len__(self) -> int:
        return sum(len(paths) for paths in self._records().values())

    def info(self, recipe: Mapping[str, Any]) -> dict[str, Any] | None:
        """The record of ``recipe``'s model (see the class), or ``None`` if it is not here.

        Example:
            >>> zoo.info(recipe)["test_accuracy"]  # doctest: +SKIP
            0.8123
        """
        path = self._record_path(recipe)
        return None if path is None else self._read_record(path)

    def records(self) -> list[dict[str, Any]]:
        """Every model's record, sorted by name.

        Example:
            >>> [r["name"] for r in ModelZoo("benchmarks/zoo/cifar10").records()][:1]
            ...  # doctest: +SKIP
            ['FTAL']
        """
        records = [self._read_record(p) for paths in self._records().values() for p in paths]
        return sorted(records, key=lambda r: (r["name"], r["recipe_key"]))

    def load(self, recipe: Mapping[str, Any], like: Callable[[], nnx.Module]) -> nnx.Module:
        """The model of ``recipe``, restored into ``like()`` (a model of the same structure).

        Raises:
            KeyError: the recipe is not in the zoo.
            ValueError: a file that fails a check (see the class), naming it.

        Example:
            >>> owner = zoo.load(recipe, like=lambda: build_owner())  # doctest: +SKIP
        """
        path = self._record_path(recipe)
        if path is None:
            raise KeyError(f"no model of this recipe in the zoo {self.root}")
        record = self._read_record(path)
        npz = path.with_name(path.name[:-len(".json")] + ".npz")

        def bad(why: str) -> ValueError:
            return ValueError(f"model zoo file {npz} is invalid: {why}")

        if not npz.is_file() or npz.is_symlink():
            raise bad("missing, or not a regular file")
        if sha256_file(npz) != record["npz_sha256"]:
            raise bad("its sha256 differs from the record's (modified or corrupt)")
        model = like()
        graphdef, state = nnx.split(model)
        template = _flatten(state)
        try:
            with zipfile.ZipFile(npz) as archive:  # sizes checked before anything is inflated
                members = {m.filename: m for m in archive.infolist()}
        except zipfile.BadZipFile:
            raise bad("not an .npz (zip) file") from None
        if set(members) != {f"{k}.npy" for k in template}:
            raise bad(f"holds {len(members)} arrays, the model has {len(template)}")
        flat = {}
        with np.load(npz, allow_pickle=False) as arrays:
            for k, ref in template.items():
                stored = np.dtype("float16") if np.issubdtype(ref.dtype, np.floating) \
                    else ref.dtype
                if members[f"{k}.npy"].file_size > ref.size * stored.itemsize + 1024:
                    raise bad(f"array {k} unpacks to more bytes than {ref.shape} {stored}")
                value = arrays[k]
                if value.shape != ref.shape or value.dtype != stored:
                    raise bad(f"array {k} is {value.dtype}{value.shape}, the model expects "
                              f"{stored}{ref.shape}")
                flat[k] = value.astype(ref.dtype)
        model = nnx.merge(graphdef, _unflatten(state, flat))
        model.eval()
        if model_hash(model) != record["state_hash"]:
            raise bad("the restored model's hash differs from the record's")
        return model

    def add(self, name: str, recipe: Mapping[str, Any], model: nnx.Module,
            info: Mapping[str, Any] | None = None) -> Path:
        """Writes a model (already rounded to float16: see :func:`round_model`) with its record.

        Args:
            name: a short file-name-safe name (letters, digits, ``-``, ``_``, ``+``).
            recipe: the JSON-able recipe it was made from.
            model: the model; every floating array must be float16-representable.
            info: JSON-able fields for the record (``test_accuracy``, ``train_s``...).

        Returns:
            The record's path.

        Raises:
            FileExistsError: the recipe is already in the zoo.
            ValueError: a bad name, or a model that is not float16-representable.

        Example:
            >>> zoo.add("owner", recipe, round_model(owner), {"test_accuracy": 0.81})
            ...  # doctest: +SKIP
        """
        if not name or not all(c.isalnum() or c in "-_+" for c in name):
            raise ValueError(f"zoo model name must be letters, digits, '-', '_' or '+', got "
                             f"{name!r}")
        if recipe in self:
            raise FileExistsError(f"the zoo {self.root} already holds this recipe")
        flat = _flatten(nnx.state(model))
        packed = {}
        for k, value in flat.items():
            if np.issubdtype(value.dtype, np.floating):
                low = value.astype(np.float16)
                if not np.array_equal(low.astype(value.dtype), value, equal_nan=True):
                    raise ValueError("the model is not float16-representable: round it first "
                                     "(round_model, or ModelCache(precision='float16'))")
                value = low
            packed[k] = value
        key = recipe_key(recipe)
        stem = f"{name}.{key[:16]}"
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{stem}.{uuid.uuid4().hex[:8]}.tmp.npz"
        with atomic_path(self.root / f"{stem}.npz", tmp=tmp):
            np.savez_compressed(tmp, **packed)
            record = {**(dict(info) if info else {}), "format": _ZOO_FORMAT, "name": name,
                      "recipe": recipe, "recipe_key": key, "state_hash": model_hash(model),
                      "npz_sha256": sha256_file(tmp), "npz_bytes": tmp.stat().st_size}
            text = json.dumps(record, indent=1, sort_keys=True, default=str)
        # the record last: it commits
        write_atomic(self.root / f"{stem}.json", text + "\n", tmp=tmp.with_suffix(".json"))
        return self.root / f"{stem}.json"


class ModelCache:
    """Trained NNX models on disk, one directory per recipe hash.

    Args:
        root: cache directory; default :func:`default_model_dir`.
        precision: ``None`` keeps models as made; ``"float16"`` rounds each model as it is
            made (before it is hashed, stored and returned) and as it is loaded, so what a
            run uses is exactly what a :class:`ModelZoo` stores.
        zoo: a :class:`ModelZoo` consulted on a cache miss before anything is built.
        build: ``False`` refuses to build: a model in neither the cache nor the zoo raises
            :class:`LookupError` (reproducing results from a zoo alone).

    Attributes:
        root: the cache directory (created on the first write).
        hits: models loaded from the cache directory by this object.
        zoo_hits: models loaded from the zoo by this object.
        misses: models built (trained) by this object.

    Example:
        >>> import tempfile
        >>> from ipguard_jax import models
        >>> build = lambda: models.create("mlp", in_features=64, in_channels=1,
        ...                               rngs=nnx.Rngs(0))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     cache = ModelCache(tmp)
        ...     first = cache.get_or_create({"arch": "mlp"}, make=build, like=build)
        ...     again = cache.get_or_create({"arch": "mlp"}, make=build, like=build)
        >>> cache.misses, cache.hits, model_hash(first) == model_hash(again)
        (1, 1, True)
    """

    def __init__(self, root: str | os.PathLike | None = None, *, precision: str | None = None,
                 zoo: ModelZoo | None = None, build: bool = True):
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be None or one of {PRECISIONS}, got "
                             f"{precision!r}")
        if zoo is not None and not isinstance(zoo, ModelZoo):
            raise TypeError(f"zoo must be a ModelZoo, got {type(zoo).__name__}")
        self.root = Path(root).expanduser() if root is not None else default_model_dir()
        self.precision = precision
        self.zoo = zoo
        self.build = bool(build)
        self.hits = 0
        self.zoo_hits = 0
        self.misses = 0

    def path(self, recipe: Mapping[str, Any]) -> Path:
        """Directory of a recipe's entry (it may not exist yet).

        Args:
            recipe: a JSON-able description of a model.

        Returns:
            ``root / recipe_key(recipe)``.

        Example:
            >>> path = ModelCache("/tmp/models").path({"arch": "mlp"})
            >>> path.parent, len(path.name)
            (PosixPath('/tmp/models'), 64)
        """
        return self.root / recipe_key(recipe)

    def __contains__(self, recipe: Mapping[str, Any]) -> bool:
        return (self.path(recipe) / "recipe.json").is_file() or (
            self.zoo is not None and recipe in self.zoo)

    def info(self, recipe: Mapping[str, Any]) -> dict[str, Any] | None:
        """What was recorded when the recipe's model was stored, or ``None`` if it is not cached.

        Args:
            recipe: a JSON-able description of a model.

        Returns:
            The entry's ``recipe.json``: ``recipe``, ``state_hash``, ``build_s`` (the seconds
            ``make`` took, on a miss) and whatever ``meta`` gave to :meth:`get_or_create`.
            Entries written by older versions may lack ``build_s``.

        Example:
            >>> cache.info(recipe)["build_s"]  # doctest: +SKIP
            412.7
        """
        path = self.path(recipe) / "recipe.json"
        if path.is_file():
            return json.loads(path.read_text())
        return self.zoo.info(recipe) if self.zoo is not None else None

    def get_or_create(self, recipe: Mapping[str, Any], make: Callable[[], nnx.Module],
                      like: Callable[[], nnx.Module],
                      meta: Callable[[], Mapping[str, Any]] | None = None) -> nnx.Module:
        """The model of ``recipe``: loaded if cached, else ``make()``-d and stored.

        Args:
            recipe: JSON-able description of everything that determines the model.
            make: builds and trains the model (called on a miss only).
            like: builds an untrained model of the same structure, restored into on a hit.
            meta: called after ``make`` on a miss; its JSON-able fields are stored with the
                entry (see :meth:`info`), e.g. the training time summed over resumed runs.

        Returns:
            The model, in eval mode (rounded to the cache's ``precision``).

        Raises:
            LookupError: the model is in neither the cache nor the zoo and ``build`` is off.

        Example:
            >>> model = cache.get_or_create(recipe, make=train_owner,
            ...                             like=untrained_owner)  # doctest: +SKIP
        """
        entry = self.path(recipe)
        if (entry / "recipe.json").is_file():
            model = like()
            graphdef, state = nnx.split(model)
            with ocp.StandardCheckpointer() as ckptr:
                target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                          for k, v in _flatten(state).items()}
                flat = ckptr.restore((entry / "state").absolute(), target)
            model = nnx.merge(graphdef, _unflatten(state, flat))
            model.eval()
            saved = json.loads((entry / "recipe.json").read_text()).get("state_hash")
            if saved != model_hash(model):
                raise ValueError(
                    f"cached model {entry} does not match the hash recorded when it was "
                    f"stored (modified or corrupt); delete that directory to rebuild it")
            self.hits += 1
            return self._rounded(model)
        if self.zoo is not None and recipe in self.zoo:
            model = self.zoo.load(recipe, like)
            self.zoo_hits += 1
            return self._rounded(model)
        if not self.build:
            where = f"the cache {self.root}" + (f" or the zoo {self.zoo.root}" if self.zoo
                                                 is not None else "")
            raise LookupError(f"model {recipe_key(recipe)[:16]} is not in {where}, and "
                              "building is off; build it (train) or point at a zoo that "
                              "holds it")
        start = time.perf_counter()
        model = make()
        extra = {"build_s": round(time.perf_counter() - start, 3),
                 **(dict(meta()) if meta is not None else {})}
        model.eval()
        self._rounded(model)
        self._write(entry, recipe, model, extra)
        self.misses += 1
        return model

    def _rounded(self, model: nnx.Module) -> nnx.Module:
        return model if self.precision is None else round_model(model, self.precision)

    def _write(self, entry: Path, recipe: Mapping[str, Any], model: nnx.Module,
               extra: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{entry.name[:16]}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save((tmp / "state").absolute(), _flatten(nnx.state(model)))
            meta = {**extra, "format": _FORMAT, "recipe": recipe,
                    "state_hash": model_hash(model)}
            (tmp / "recipe.json").write_text(json.dumps(meta, indent=2, sort_keys=True,
                                                         default=str))
            try:
                os.rename(tmp, entry)
            except OSError:
                if not (entry / "recipe.json").is_file():  # a concurrent writer won otherwise
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
