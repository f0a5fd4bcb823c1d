"""``generate``: batched IPGuard fingerprint generation with chunking, refills and provenance.

:func:`generate` turns an owner :class:`~ipguard_jax.Classifier` and a
:class:`~ipguard_jax.FingerprintConfig` into :class:`~ipguard_jax.Fingerprints`;
:func:`suggest_k` scales the margin ``k`` to a model's logits. The examples are in their
docstrings.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import secrets
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ipguard_jax import backends, compile_cache, core, methods
from ipguard_jax.runners import programs
from ipguard_jax.runners.checkpoint import Checkpoint
from ipguard_jax.runners.chunked import run_chunked
from ipguard_jax.runners.collector import Collector
from ipguard_jax.runners.compacted import run_compacted
from ipguard_jax.runners.device_compacted import run_device_compacted
from ipguard_jax.runners.run import Run
from ipguard_jax._version import __version__
from ipguard_jax.classifier import Classifier, labels_from_logits
from ipguard_jax.config import FingerprintConfig
from ipguard_jax.fingerprints import Fingerprints
from ipguard_jax.sharding import Placement, resolve_mesh


class ConvergenceWarning(RuntimeWarning):
    """Fewer points converged than asked for within the candidate budget."""


def as_key(key: Any) -> jax.Array:
    """Accepts an int seed, a typed PRNG key or a raw ``uint32[2]`` key; returns a typed key.

    An int seed ``s`` in ``[0, 2**64)`` becomes the default (threefry) key whose data is the
    two 32-bit halves of ``s``: ``jax.random.key(s)`` for ``s < 2**32``, and all 64 bits
    count above that (``jax.random.key`` alone keeps only the low 32 bits without x64).

    Args:
        key: an int seed in ``[0, 2**64)``, a scalar typed key (``jax.random.key``) or a raw
            ``uint32[2]`` key (``jax.random.PRNGKey``).

    Returns:
        A scalar typed PRNG key.

    Raises:
        ValueError: a typed key array with more than one key, or an int seed outside
            ``[0, 2**64)``.
        TypeError: anything else.

    Example:
        >>> import jax
        >>> from ipguard_jax.generation import as_key
        >>> jax.random.key_data(as_key(0)).tolist()
        [0, 0]
        >>> jax.random.key_data(as_key(2**32 + 5)).tolist()
        [1, 5]
        >>> as_key(jax.random.PRNGKey(0)).shape
        ()
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = int(key)
        if not 0 <= seed < 2**64:
            raise ValueError(f"an int key (seed) must be in [0, 2**64), got {seed}")
        return jax.random.wrap_key_data(np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32),
                                        impl="threefry2x32")
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    raw = np.asarray(key)
    if raw.dtype == np.uint32 and raw.shape == (2,):
        return jax.random.wrap_key_data(raw)
    raise TypeError(f"key must be an int seed or a jax.random.key, got {type(key).__name__}")


def secret_key() -> jax.Array:
    """A fresh PRNG key of 64 bits drawn from the operating system (:mod:`secrets`).

    What :func:`generate` uses when no key is given: a set made from a public seed (``0``,
    the default of many tools) can be regenerated bit for bit by whoever holds the stolen
    weights and the start data. The key drawn is recorded in the set's metadata (inside the
    sealed file when sealed), so the set stays reproducible by its owner.

    Returns:
        A scalar typed (threefry) key.

    Example:
        >>> import jax
        >>> from ipguard_jax.generation import secret_key
        >>> bool((jax.random.key_data(secret_key()) != jax.random.key_data(secret_key())).any())
        True
    """
    return as_key(secrets.randbits(64))


def _key_record(key: jax.Array) -> dict[str, Any]:
    return {"impl": str(jax.random.key_impl(key)),
            "data": np.asarray(jax.random.key_data(key)).tolist()}


def resolve_loop(loop: str, platform: str | None = None) -> str:
    """``"auto"`` -> ``"host"`` on the CPU platform, ``"device"`` elsewhere.

    Args:
        loop: ``"auto"``, ``"host"`` or ``"device"`` (see :class:`~ipguard_jax.FingerprintConfig`).
        platform: the platform the run goes to; default that of the default device
            (:func:`ipguard_jax.backends.generation_platform`).

    Returns:
        ``"host"`` or ``"device"``; other values are returned as they are.

    Example:
        >>> from ipguard_jax.generation import resolve_loop
        >>> resolve_loop("device"), resolve_loop("auto", "gpu")
        ('device', 'device')
    """
    if platform is None:
        platform = backends.generation_platform()
    return backends.resolve_loop(loop, platform)


def _check_data(classifier: Classifier, data: Any, config: FingerprintConfig) -> np.ndarray:
    if data is None:
        raise ValueError('init="data" needs start images: pass data=... (or use init="noise")')
    x = np.asarray(classifier.check_input(np.asarray(data), name="data"))
    # Compare in the data's own precision: a bound that rounds in float32 is still the bound.
    lo, hi = (np.asarray(b, x.dtype) for b in classifier.bounds)
    if x.min() < lo or x.max() > hi:
        raise ValueError(
            f"data has values outside the classifier's bounds {classifier.bounds}: "
            f"min {float(x.min())}, max {float(x.max())}"
        )
    if x.shape[0] < config.num:
        raise ValueError(
            f'too few data points for init="data": num={config.num} fingerprints need at '
            f"least {config.num} start images, data has {x.shape[0]}"
        )
    return x


def _data_digest(data: np.ndarray | None) -> str | None:
    if data is None:
        return None
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    digest.update(np.ascontiguousarray(data).data)
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _low_precision(apply_fn: Callable, dtype: str) -> Callable:
    """``apply_fn`` computing in ``dtype`` on inputs cast to it, returning float32 logits
    (one wrapper per function and dtype, so compiled code is reused)."""
    def apply(params, x):
        return apply_fn(params, x.astype(dtype)).astype(jnp.float32)

    return apply


def _cast_floats(tree: Any, dtype: str) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a),
                                                                     jnp.floating) else a, tree)


def generate(
    classifier: Classifier,
    config: FingerprintConfig = FingerprintConfig(),
    key: Any = None,
    data: Any = None,
    *,
    method: str | methods.Method = "ipguard",
    mesh: Mesh | str | None = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    keep_checkpoint: bool = False,
    progress: bool = True,
) -> Fingerprints:
    """Generates IPGuard fingerprints (or a baseline's) for an owner classifier.

    The first call in a process turns on JAX's persistent compilation cache (in
    ``~/.cache/ipguard_jax/xla`` unless the process set its own, or ``IPGUARD_COMPILE_CACHE=0``:
    see :mod:`ipguard_jax.compile_cache`), so a later process loads the compiled programs.

    Candidates are optimised ``config.batch_size`` at a time with ``vmap``-ed per-point
    optimiser states, so device memory is O(batch_size) and later calls with the same shapes
    reuse the compiled code. By default (``loop="auto"``, ``compact="auto"``) the run follows
    its devices' platform (``docs/backends.md``): on GPU/TPU one compiled ``lax.while_loop``
    whose finished points are swapped for fresh candidates on the device; on CPU consecutive
    chunks, each run in compiled blocks of unrolled steps driven from the host. With
    ``keep="converged"`` further candidates are drawn until ``num`` points converged or the
    candidate budget is spent; the result says how many converged (and warns if fewer than
    ``num``).

    On several devices the candidate batch is sharded over a device mesh (each device
    optimises its share of the points; the parameters are replicated) and the results are
    the same as on one device for the same key. Under ``jax.distributed`` (several hosts)
    every process calls ``generate`` with the same arguments, each works on the points of its
    own devices, and every process gets the whole result.

    Args:
        classifier: the owner model.
        config: how to generate (see :class:`FingerprintConfig`).
        key: ``None`` (default): a fresh 64-bit key from the operating system
            (:func:`secret_key`), so that nobody holding the owner's weights can regenerate
            the set; it is recorded in ``metadata["key"]`` with ``"source": "os"`` (inside the
            sealed file when sealed). Or an int seed in ``[0, 2**64)`` or a
            ``jax.random.key``: the same key gives the same fingerprints (``"source":
            "explicit"``); anyone who learns it and holds the weights and the start data can
            regenerate the set too. A resumed ``checkpoint`` run without a key takes the
            key saved there.
        data: start images ``(N, *input_shape)`` in the bounds, for ``init="data"``; a random
            permutation of them (by ``key``) is used as candidates.
        method: ``"ipguard"`` (default), or a baseline on the same engine: ``"random"``,
            ``"fgsm"``, ``"pgd"``, ``"cw"``, or an instance of a class in
            :mod:`ipguard_jax.baselines` to set its parameters (baselines carry their own step
            budget and step size; ``config`` still sets ``num``, ``init``, ``target``,
            ``batch_size``, ``keep`` and the loop).
        mesh: ``"auto"`` (default) shards the batch over all devices when there are several
            and does nothing on one; ``None`` keeps everything on the default device; or a
            ``jax.sharding.Mesh`` (use ``AxisType.Auto`` axes), whose axes all split the batch.
            The chunk size is rounded up to a multiple of the device count; the padding is
            masked out.
        checkpoint: a directory where progress is saved (orbax) every ``checkpoint_every``
            chunks; a run killed part-way and started again with the same arguments resumes
            from it and returns the same fingerprints. A directory holding another run's
            checkpoint (another config, method, key, owner or data) is refused, and what is
            restored is checked first. The checkpoint holds the candidate points in
            plaintext: it is deleted when the run succeeds, unless ``keep_checkpoint``.
        checkpoint_every: chunks between checkpoints; with compaction, refills on the host
            loop, and working batches' worth of finished candidates in the device loop.
        keep_checkpoint: keep the checkpoint directory after a successful run.
        progress: show a progress bar (of converged points with ``keep="converged"``, of
            candidates with ``keep="all"``).

    Returns:
        :class:`Fingerprints` with ``num`` points (fewer only if too few converged), in candidate
        order, and their provenance in ``metadata``. Every label is the owner's prediction at
        the final point, computed again after the run (in float32).

    Raises:
        ValueError: bad data (shape, NaN/inf, outside the bounds, too few), ``data`` given
            without ``init="data"``, non-finite logits, ``checkpoint_every`` not an int > 0,
            ``precision="bfloat16"`` with a baseline, an unknown ``method`` name, a bad
            ``mesh`` string, an int key outside ``[0, 2**64)``, or a ``checkpoint``
            directory that holds another run or fails its checks.
        TypeError: a wrong type for an argument.

    Warns:
        ConvergenceWarning: with ``keep="converged"``, fewer than ``num`` points converged
            within the candidate budget.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import Classifier, FingerprintConfig, generate
        >>> w = jnp.array([[1.0, -1.0, 0.5], [-0.5, 1.0, 0.2], [0.3, 0.1, -1.0]])
        >>> clf = Classifier(lambda p, x: x @ p, w, input_shape=(3,))
        >>> fp = generate(clf, FingerprintConfig(num=8, k=0.1, init="noise"), key=0,
        ...               progress=False)
        >>> len(fp), bool(fp.converged.all()), bool((fp.labels == fp.j).all())
        (8, True, True)
    """
    method, config = _check_arguments(classifier, config, method, checkpoint_every)
    compile_cache.ensure_enabled()
    saver = None if checkpoint is None else Checkpoint(checkpoint, checkpoint_every)
    key, key_source = _resolve_key(key, saver)
    place = Placement(resolve_mesh(mesh))
    start_time = time.perf_counter()
    # One stream for the data order, one for the per-candidate draws (keyed by candidate index).
    order_key, point_key = jax.random.split(key)
    budget, data, order = _candidate_budget(classifier, config, data, order_key)
    batch = place.padded(min(config.batch_size, budget))
    # "auto" settings follow the platform of the devices this run uses (docs/backends.md).
    platform = backends.generation_platform(place.mesh)
    loop = backends.resolve_loop(config.loop, platform)
    scalars = _settings(classifier, config, method, place)
    run_key = jax.random.wrap_key_data(place.replicate(jax.random.key_data(point_key)),
                                       impl=jax.random.key_impl(point_key))

    def starts(ids: np.ndarray) -> tuple[jax.Array, np.ndarray]:
        """Start points and their sources for candidate indices (past the budget: padding)."""
        if config.init == "data":
            source = order[ids % data.shape[0]]
            return place.put(data[source]), source
        return programs.noise_points(run_key, place.put(ids), scalars["lo"], scalars["hi"],
                                     input_shape=classifier.input_shape,
                                     dtype=classifier.dtype), ids

    compact = (backends.resolve_compact(config.compact, platform)
               and not isinstance(method, methods.CW))
    collector = Collector(config, config.num, progress)
    apply_fn, params = classifier.apply_fn, classifier.params
    if config.precision != "float32":
        apply_fn = _low_precision(apply_fn, config.precision)
        params = _cast_floats(params, config.precision)
    run = Run(spec=programs.Spec(apply_fn, method.plan(config), config.target),
              params=place.replicate(params), sc=scalars, key=run_key, config=config,
              method=method, loop=loop, place=place, starts=starts, budget=budget, batch=batch,
              collector=collector, checkpoint=saver, input_shape=classifier.input_shape,
              dtype=classifier.dtype,
              sources=(lambda ids: order[ids % data.shape[0]]) if config.init == "data"
              else (lambda ids: ids),
              data=(data, order) if config.init == "data" else None)
    try:
        if saver is not None:
            identity = {"config": config.to_dict(), "method": method.to_dict(),
                        "key": _key_record(key), "owner": classifier.params_hash,
                        "input": classifier.input_spec,
                        "data": _data_digest(data) if config.init == "data" else None,
                        "budget": budget, "batch": batch, "compact": compact}
            saver.load(collector, json.loads(json.dumps(identity)), budget,
                       _checkpoint_arrays(classifier), classifier.bounds)
        if not compact:
            run_chunked(run)
        elif loop == "host":
            run_compacted(run)
        else:
            run_device_compacted(run)
    except BaseException:
        if saver is not None:
            saver.close()
        raise
    finally:
        collector.bar.close()
    arrays, converged, screening = _final_arrays(classifier, config, method, collector, saver,
                                                 budget)
    metadata = {
        "format_version": 1,
        "library": {"name": "ipguard_jax", "version": __version__, "jax": jax.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "method": method.to_dict(),
        "loop": loop,
        "compact": compact,
        "backend": platform,
        "devices": place.size,
        "processes": jax.process_count(),
        "key": {**_key_record(key), "source": key_source},
        "classifier": {"params_sha256": classifier.params_hash, **classifier.input_spec},
        "num_candidates": collector.drawn,
        "num_converged": converged,
        "convergence_rate": converged / collector.drawn,
        "wall_time_s": round(time.perf_counter() - start_time, 3),
        "runner": dict(run.stats),
    }
    if screening is not None:
        metadata["screening"] = screening
    fingerprints = Fingerprints(**arrays, metadata=metadata)
    if saver is not None:
        if keep_checkpoint:
            saver.close()
        else:
            saver.remove()
    return fingerprints


def _check_arguments(classifier: Any, config: Any, method: Any, checkpoint_every: Any
                     ) -> tuple[methods.Method, FingerprintConfig]:
    """The method and the config the run uses (the method's own settings in it), once the
    arguments of :func:`generate` fit together."""
    if not isinstance(classifier, Classifier):
        raise TypeError(f"classifier must be an ipguard_jax.Classifier, got "
                        f"{type(classifier).__name__}")
    if not isinstance(config, FingerprintConfig):
        raise TypeError(f"config must be a FingerprintConfig, got {type(config).__name__}")
    method = methods.resolve_method(method)
    if config.precision != "float32" and not isinstance(method, methods.IPGuard):
        raise ValueError(f"precision={config.precision!r} is for the ipguard method; the "
                         f"baselines run in float32")
    method.check(classifier)
    config = method.bind(config)
    method.check_config(config)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be an int > 0, got {checkpoint_every!r}")
    return method, config


def _resolve_key(key: Any, saver: Checkpoint | None) -> tuple[jax.Array, str]:
    """The run's key and where it came from: given, a checkpoint's, or the OS's."""
    if key is not None:
        return as_key(key), "explicit"
    saved = None if saver is None else saver.saved_key()
    if saved is not None:
        return _key_from_record(saved, saver.directory), "checkpoint"
    return secret_key(), "os"


def _candidate_budget(classifier: Classifier, config: FingerprintConfig, data: Any,
                      order_key: jax.Array) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """How many candidates the run may draw, the checked start data and its random order."""
    budget = config.candidate_budget
    if config.init == "data":
        data = _check_data(classifier, data, config)
        return (min(budget, data.shape[0]), data,
                np.asarray(jax.random.permutation(order_key, data.shape[0])))
    if data is not None:
        raise ValueError('data is only used with init="data"; drop it or set init="data"')
    return budget, None, None


def _settings(classifier: Classifier, config: FingerprintConfig, method: methods.Method,
              place: Placement) -> dict[str, Any]:
    """The traced settings of the compiled programs, replicated over the mesh."""
    lo, hi = classifier.bounds
    scalars = place.replicate(dict(
        k=np.float32(config.k), lr=np.float32(method.learning_rate(config)),
        steps=np.int32(method.budget(config)), tol=np.float32(config.tol),
        lo=np.asarray(lo, classifier.dtype), hi=np.asarray(hi, classifier.dtype),
        hyper={name: np.float32(v) if isinstance(v, (int, float)) else v
               for name, v in method.hyper(config).items()}))
    return jax.tree.map(jnp.asarray, scalars) if place.mesh is None else scalars


def _final_arrays(classifier: Classifier, config: FingerprintConfig, method: methods.Method,
                  collector: Collector, saver: Checkpoint | None, budget: int
                  ) -> tuple[dict[str, np.ndarray], int, dict[str, Any] | None]:
    """The kept points in candidate order, labelled again by the owner in float32 and
    screened by the method; how many converged; the screening record."""
    arrays, drawn, converged = collector.arrays(), collector.drawn, collector.converged
    if config.precision != "float32":
        converged -= _recheck_in_float32(classifier, arrays, config)
    else:
        relabelled = _relabel(classifier, arrays)
        converged -= relabelled
        if relabelled and saver is not None and saver.resume is not None:
            warnings.warn(
                f"{relabelled} point(s) restored from the checkpoint {saver.directory} carried "
                f"a label the owner does not give there (an edited or damaged checkpoint): "
                f"they now carry the owner's label and count as not converged",
                RuntimeWarning, stacklevel=3)
    screened = method.screen(classifier, arrays, config)
    screening = None
    if screened is not None:
        passed, screening = screened
        converged -= int((arrays["converged"] & ~passed).sum())
        arrays["converged"] = arrays["converged"] & passed
    if config.keep == "converged":
        want = config.num
        keep = np.flatnonzero(arrays["converged"])[:want]
        if keep.size < want:
            warnings.warn(
                f"only {keep.size} of the {want} requested fingerprints converged "
                f"({converged} of {drawn} candidates, budget {budget}); raise steps or "
                f"max_candidates, lower k, or use keep='all'", ConvergenceWarning, stacklevel=3)
        arrays = {name: a[keep] for name, a in arrays.items()}
    return arrays, converged, screening


def _key_from_record(record: Any, where: str) -> jax.Array:
    """The typed key of a checkpoint's key record (``{"impl": ..., "data": [...]}``)."""
    data = record.get("data") if isinstance(record, dict) else None
    if not (isinstance(data, list) and data and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in data)):
        raise ValueError(f"checkpoint directory {where} is invalid: its key record is not a "
                         f"list of uint32 words; delete it to start afresh")
    try:
        return jax.random.wrap_key_data(np.asarray(data, np.uint32), impl=str(record["impl"]))
    except Exception:
        raise ValueError(f"checkpoint directory {where} is invalid: unknown key impl "
                         f"{str(record.get('impl'))[:40]!r}; delete it to start afresh") from None


def _checkpoint_arrays(classifier: Classifier) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-point shape and dtype of the arrays a generation checkpoint holds."""
    scalar = {name: ((), np.dtype(np.int32)) for name in ("labels", "i", "j", "steps")}
    return {"x": (classifier.input_shape, np.dtype(classifier.dtype)), **scalar,
            "loss": ((), np.dtype(np.float32)), "converged": ((), np.dtype(bool))}


def _relabel(classifier: Classifier, arrays: dict[str, np.ndarray],
             batch_size: int = 1024) -> int:
    """Sets every label to the owner's prediction at its point, and ``converged`` to false
    where that changed a converged point's label; returns how many converged points lost it."""
    if not len(arrays["x"]):
        return 0
    labels = classifier.predict(arrays["x"], batch_size)  # refuses undefined labels
    changed = labels != arrays["labels"]
    lost = int((changed & arrays["converged"]).sum())
    arrays["labels"] = labels
    arrays["converged"] = arrays["converged"] & ~changed
    return lost


def _recheck_in_float32(classifier: Classifier, arrays: dict[str, np.ndarray],
                        config: FingerprintConfig, batch_size: int = 1024) -> int:
    """Labels, losses and convergence of low-precision results under the float32 owner (the
    fingerprint is the owner's label, whatever precision found the point); returns how many
    points lost their convergence."""
    losses, labels = [], []
    for s in range(0, len(arrays["x"]), batch_size):
        logits = classifier(arrays["x"][s:s + batch_size])
        losses.append(np.asarray(core.batched_ipguard_loss(
            logits, jnp.asarray(arrays["i"][s:s + batch_size]),
            jnp.asarray(arrays["j"][s:s + batch_size]), jnp.float32(config.k))))
        labels.append(labels_from_logits(logits, s))
    before = int(arrays["converged"].sum())
    if labels:
        arrays["loss"] = np.concatenate(losses)
        arrays["labels"] = np.concatenate(labels)
        arrays["converged"] = arrays["loss"] <= config.tol
    return before - int(arrays["converged"].sum())


def suggest_k(classifier: Classifier, x: Any, fraction: float = 0.25,
              batch_size: int = 1024) -> float:
    """Scales the margin ``k`` to a model's logit spread (a heuristic starting point).

    Logit scales differ between models, so a fixed ``k`` means different things. This returns
    ``fraction`` times the median gap between the top two logits on natural inputs ``x``: the
    fingerprints then sit a fixed share of a typical decision margin past the boundary.

    Args:
        classifier: the owner model.
        x: natural inputs ``(N, *input_shape)`` (e.g. held-out images).
        fraction: share of the median top-2 logit gap.
        batch_size: evaluation batch size.

    Returns:
        A suggested ``k`` (a float; 0 when the median gap is 0, e.g. on tied logits).

    Raises:
        ValueError: ``fraction`` is not a number > 0, or a bad ``x`` (shape, NaN/inf, empty).
        TypeError: ``x`` is not a floating array.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from ipguard_jax import Classifier, suggest_k
        >>> clf = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
        >>> x = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.0], [0.75, 0.25, 0.0]], np.float32)
        >>> suggest_k(clf, x)  # a quarter of the median top-2 gap, 0.5
        0.125
    """
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
            and 0 < fraction < float("inf")):
        raise ValueError(f"fraction must be a finite number > 0, got {fraction!r}")
    x = classifier.check_input(x)
    gaps = []
    for s in range(0, x.shape[0], batch_size):
        top2 = jax.lax.top_k(classifier(x[s:s + batch_size]), 2)[0]
        gaps.append(np.asarray(top2[:, 0] - top2[:, 1]))
    return float(fraction * np.median(np.concatenate(gaps)))
