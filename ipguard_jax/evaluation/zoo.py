"""A disk cache of trained models keyed by their recipe, so evaluations re-run cheaply.

Pirated and independent models take most of an evaluation's time; the fingerprints and the
queries take little. :class:`ModelCache` trains a model once per *recipe* (a JSON-able dict:
architecture, data description or hash, training config, post-processing and its parameters,
owner parameter hash...) and stores its state with orbax under
``<root>/<sha256 of the recipe>/``, written to a temporary directory and renamed, so a crash
never leaves a half-written entry. Nothing is pickled.

The root is ``$IPGUARD_JAX_CACHE/models`` if that variable is set (the data loaders use the
same variable for datasets), else ``~/.cache/ipguard_jax/models``.

Example:
    >>> from ipguard_jax.evaluation import ModelCache, array_digest
    >>> cache = ModelCache()
    >>> recipe = {"arch": "mlp", "data": array_digest(x, y),
    ...           "train": config.trajectory_dict()}  # doctest: +SKIP
    >>> model = cache.get_or_create(recipe, make=lambda: train_it(),
    ...                             like=lambda: build_it())  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
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

__all__ = ["ModelCache", "default_model_dir", "recipe_key", "array_digest", "model_hash"]

_FORMAT = "ipguard_jax.evaluation.zoo/1"


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


def array_digest(*arrays: Any) -> str:
    """sha256 of arrays' dtypes, shapes and bytes: a data description for a recipe.

    Args:
        *arrays: the arrays, in order (e.g. images and labels).

    Returns:
        64 lowercase hex digits.

    Example:
        >>> import numpy as np
        >>> array_digest(np.zeros(3)) == array_digest(np.zeros(3, np.float32))
        False
    """
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


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
    return hashlib.sha256(text.encode()).hexdigest()


def _flatten(state: Any) -> dict[str, np.ndarray]:
    out = {}
    for k, leaf in enumerate(jax.tree.leaves(state)):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[f"{k:06d}"] = np.asarray(leaf)
    return out


def _unflatten(template: Any, flat: Mapping[str, Any]) -> Any:
    leaves, treedef = jax.tree.flatten(template)
    if len(leaves) != len(flat):
        raise ValueError(f"cached model has {len(flat)} arrays, the template has {len(leaves)}")
    restored = []
    for k, ref in enumerate(leaves):
        value = jnp.asarray(flat[f"{k:06d}"])
        if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(ref))
        elif value.shape != ref.shape or value.dtype != ref.dtype:
            raise ValueError(f"cached array {k} is {value.dtype}{value.shape}, the template "
                             f"expects {ref.dtype}{ref.shape}")
        restored.append(value)
    return jax.tree.unflatten(treedef, restored)


class ModelCache:
    """Trained NNX models on disk, one directory per recipe hash.

    Args:
        root: cache directory; default :func:`default_model_dir`.

    Attributes:
        root: the cache directory (created on the first write).
        hits: models loaded from disk by this object.
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

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_model_dir()
        self.hits = 0
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
        return (self.path(recipe) / "recipe.json").is_file()

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
        return json.loads(path.read_text()) if path.is_file() else None

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
            The model, in eval mode.

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
            return model
        start = time.perf_counter()
        model = make()
        extra = {"build_s": round(time.perf_counter() - start, 3),
                 **(dict(meta()) if meta is not None else {})}
        model.eval()
        self._write(entry, recipe, model, extra)
        self.misses += 1
        return model

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
