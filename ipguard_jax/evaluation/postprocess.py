"""Pirated copies of an owner model: the post-processings IPGuard must survive.

Every function takes the owner (a Flax NNX model, never modified: it is cloned first), the
data the pirate holds (``x`` images ``(N, H, W, C)`` in [0, 1], ``y`` int labels; callers
normally pass data disjoint from the owner's training split) and a :class:`PirateConfig`, and
returns a new NNX model in eval mode. All training goes through :func:`ipguard_jax.train.fit`.

==========================  ==================================================================
function                    what the pirate does
==========================  ==================================================================
``fine_tune_last_layer``    FTLL: trains only the head (the final ``nnx.Linear``)
``fine_tune_all_layers``    FTAL: trains every parameter
``retrain_last_layer``      RTLL: re-initialises the head, trains only the head
``retrain_all_layers``      RTAL: re-initialises the head, trains every parameter
``prune``                   magnitude pruning of kernels (per layer or global), no training
``prune_and_fine_tune``     pruning, then FTAL with the pruned weights held at zero (a mask)
``distill``                 knowledge distillation from the owner's soft labels at temperature
                            ``T`` into the same or another architecture (built by name)
``extract``                 model extraction through a label-only API: a student trained on
                            the owner's top-1 answers
``quantize_int8``           symmetric per-output-channel int8 kernels, dequantised to float
==========================  ==================================================================

How freezing works without touching :func:`~ipguard_jax.train.fit`: head-only training
(FTLL, RTLL) computes the frozen body's features once (eval mode, so BatchNorm statistics and
every body weight stay exactly the owner's) and fits a one-layer model on them; fine-tuning a
pruned model wraps it so each forward pass multiplies kernels by their 0/1 masks, which makes
the gradient (and so every Adam/SGD/weight-decay update) of a pruned weight exactly zero.

Distillation: ``fit`` trains on integer labels only, so soft labels are approximated by
sampling: each pirate image appears ``label_copies`` times, each copy labelled with a class
drawn from the owner's tempered softmax, and the student's logits are divided by ``T`` during
training. The expected cross-entropy of the sampled labels equals the soft-label cross-entropy
(Hinton et al.'s KD loss up to a constant), so it is an unbiased but noisier estimate of it.

Example:
    >>> from ipguard_jax import models
    >>> owner = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
    >>> pruned = prune(owner, 0.5, scope="layer")  # no training: immediate
    >>> float((pruned.head.kernel[...] == 0).mean())
    0.5
    >>> pirate = fine_tune_all_layers(owner, x_pirate, y_pirate,
    ...                               PirateConfig(epochs=5))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ipguard_jax import models
from ipguard_jax.train import TrainConfig, fit

Path = tuple[Any, ...]

__all__ = [
    "PirateConfig",
    "POSTPROCESSINGS",
    "find_head",
    "kernel_paths",
    "fine_tune_last_layer",
    "fine_tune_all_layers",
    "retrain_last_layer",
    "retrain_all_layers",
    "prune",
    "prune_and_fine_tune",
    "distill",
    "extract",
    "quantize_int8",
    "make_pirate",
    "build_model",
    "apply_batched",
]


@dataclasses.dataclass(frozen=True)
class PirateConfig:
    """How a pirate trains (a thin, JSON-able front for :class:`~ipguard_jax.train.TrainConfig`).

    Attributes:
        epochs: passes over the pirate's data.
        lr: peak learning rate (cosine decay to 0).
        seed: seed of data order, augmentation, re-initialisation and label sampling.
        optimizer: ``"adam"`` or ``"sgd"``.
        batch_size: images per step (capped at the data size).
        weight_decay: decoupled (Adam) or L2 (SGD) decay of kernels.
        random_crop: pad-and-crop augmentation (whole-model training only).
        horizontal_flip: flip augmentation (whole-model training only).
        checkpoint_dir: where the pirate's training checkpoints every epoch; a later call with
            the same settings and data resumes there and ends with the same weights. Not part of
            the recipe (:meth:`to_dict`); ``None`` keeps no checkpoints.
        on_epoch_end: passed to :func:`~ipguard_jax.train.fit` (progress reports). Not part of
            the recipe either.

    Example:
        >>> PirateConfig(epochs=3, lr=1e-3).train_config(n=500).batch_size
        64
        >>> PirateConfig(batch_size=256).train_config(n=100).batch_size  # capped at n
        100
    """

    epochs: int = 10
    lr: float = 1e-3
    seed: int = 0
    optimizer: str = "adam"
    batch_size: int = 64
    weight_decay: float = 0.0
    random_crop: bool = False
    horizontal_flip: bool = False
    checkpoint_dir: str | os.PathLike | None = dataclasses.field(default=None, compare=False)
    on_epoch_end: Callable[[int, dict[str, float]], bool | None] | None = dataclasses.field(
        default=None, compare=False, repr=False)

    def train_config(self, n: int, *, augment: bool = True) -> TrainConfig:
        """The :class:`TrainConfig` for ``n`` training examples.

        Args:
            n: training-set size (the batch size is capped at it).
            augment: whether the augmentation flags apply (off for head-only training on
                features).

        Returns:
            A validated ``TrainConfig``.
        """
        return TrainConfig(
            epochs=self.epochs,
            batch_size=max(1, min(self.batch_size, n)),
            optimizer=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            random_crop=self.random_crop and augment,
            horizontal_flip=self.horizontal_flip and augment,
            seed=self.seed,
            checkpoint_dir=self.checkpoint_dir,
            checkpoint_every=1,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields that decide the pirate, as plain JSON values (a cache key).

        Example:
            >>> PirateConfig(epochs=3).to_dict()["epochs"]
            3
            >>> "checkpoint_dir" in PirateConfig(checkpoint_dir="/tmp/c").to_dict()
            False
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in _NOT_IN_RECIPE}

    def fit(self, model: nnx.Module, x: np.ndarray, y: np.ndarray, *,
            augment: bool = True) -> None:
        """Trains ``model`` in place on ``(x, y)`` with these settings (no progress bar).

        Args:
            model: the NNX module to train.
            x: training images.
            y: their labels.
            augment: see :meth:`train_config`.
        """
        fit(model, x, y, self.train_config(len(x), augment=augment), progress=False,
            on_epoch_end=self.on_epoch_end)


_NOT_IN_RECIPE = ("checkpoint_dir", "on_epoch_end")


# --- graph utilities ---------------------------------------------------------------------------


def _get(node: Any, path: Path) -> Any:
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def _set(root: Any, path: Path, value: Any) -> None:
    parent = _get(root, path[:-1])
    if isinstance(path[-1], int):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


def _num_classes(model: nnx.Module, x: np.ndarray) -> int:
    view = nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)
    out = nnx.eval_shape(lambda m, xb: m(xb), view, jax.ShapeDtypeStruct((2, *x.shape[1:]),
                                                                           jnp.float32))
    return int(out.shape[-1])


def find_head(model: nnx.Module, num_classes: int | None = None) -> Path:
    """The path of the model's final ``nnx.Linear`` (the classification head).

    The zoo names heads like torchvision (``head``, ``linear``, ``fc``, ``classifier.1``...),
    so the head is found by shape instead: the one ``nnx.Linear`` whose ``out_features``
    equals the number of logits.

    Args:
        model: an NNX classifier.
        num_classes: number of logits; with ``None`` the model must hold exactly one Linear.

    Returns:
        The attribute path, e.g. ``("head",)`` or ``("classifier", "layers", 1)``.

    Raises:
        ValueError: no Linear, several Linears and no ``num_classes``, or not exactly one
            Linear with ``num_classes`` outputs.

    Example:
        >>> from ipguard_jax import models
        >>> net = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> find_head(net, num_classes=10)
        ('head',)
    """
    linears = [(tuple(p), n) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nnx.Linear layer to use as the head")
    if num_classes is None:
        if len(linears) == 1:
            return linears[0][0]
        raise ValueError(
            f"{type(model).__name__} has {len(linears)} Linear layers; pass num_classes to "
            "pick the head"
        )
    found = [p for p, n in linears if n.out_features == num_classes]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one nnx.Linear with {num_classes} outputs in "
            f"{type(model).__name__}, found {len(found)}: {found}; pass head_path explicitly"
        )
    return found[0]


def kernel_paths(model: nnx.Module) -> list[Path]:
    """Paths of the modules holding a ``kernel`` parameter of rank >= 2 (Linear, Conv...).

    Args:
        model: an NNX model.

    Returns:
        Attribute paths (tuples of names and list indices), in graph traversal order.

    Example:
        >>> from ipguard_jax import models
        >>> net = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> kernel_paths(net)
        [('head',), ('layers', 0), ('layers', 1)]
    """
    out = []
    for path, node in nnx.iter_graph(model):
        kernel = getattr(node, "kernel", None) if isinstance(node, nnx.Module) else None
        if isinstance(kernel, nnx.Param) and kernel[...].ndim >= 2:
            out.append(tuple(path))
    return out


def _check_xy(x: Any, y: Any | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be images (N, H, W, C), got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("x is empty: the pirate needs some data")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (len(x),):
            raise ValueError(f"y must have shape ({len(x)},), got {y.shape}")
    return x, y


def _rngs(seed: int) -> nnx.Rngs:
    # The "rbg" generator compiles much faster than threefry on CPU.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def build_model(name: str, num_classes: int = 10, seed: int = 0, **kwargs: Any) -> nnx.Module:
    """A fresh zoo model, initialised in one compiled program (fast for conv nets on CPU).

    Args:
        name: a :func:`ipguard_jax.models.available` name.
        num_classes: number of logits.
        seed: init seed (``"rbg"`` PRNG).
        **kwargs: passed to :func:`ipguard_jax.models.create`.

    Returns:
        The model, in train mode (NNX's default).

    Raises:
        ValueError: an unknown ``name``.

    Example:
        >>> net = build_model("mlp", 10, seed=1, in_features=64, in_channels=1)
        >>> type(net).__name__
        'MLP'
    """
    return nnx.jit(lambda: models.create(name, num_classes, rngs=_rngs(seed), **kwargs))()


def apply_batched(model: nnx.Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """A model's logits on ``x``, in evaluation mode (the model itself is not switched).

    Args:
        model: an NNX model.
        x: inputs ``(N, *input_shape)``.
        batch_size: evaluation batch size.

    Returns:
        ``(N, num_classes)`` float32 logits.

    Example:
        >>> from ipguard_jax import models
        >>> mlp = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> apply_batched(mlp, np.zeros((3, 8, 8, 1), np.float32)).shape
        (3, 10)
    """
    model = nnx.clone(model)
    model.eval()
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, xb: nnx.merge(graphdef, s, copy=True)(xb))
    outs = [np.asarray(fn(state, jnp.asarray(x[i:i + batch_size], jnp.float32)))
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def _reinit_linear(head: nnx.Linear, seed: int) -> nnx.Linear:
    # torch's nn.Linear default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the zoo uses.
    bound = 1.0 / np.sqrt(head.in_features)
    init = jax.nn.initializers.uniform(2 * bound)
    shifted = lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) - bound  # noqa: E731
    return nnx.Linear(head.in_features, head.out_features, use_bias=head.use_bias,
                      kernel_init=shifted, bias_init=shifted, rngs=nnx.Rngs(seed))


# --- head-only and whole-model training -------------------------------------------------------


class _HeadOnly(nnx.Module):
    """A head applied to precomputed features stored as ``(N, 1, 1, D)`` images."""

    def __init__(self, head: nnx.Linear):
        self.head = head

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(x.reshape(x.shape[0], -1))


def _features(model: nnx.Module, head_path: Path, x: np.ndarray) -> np.ndarray:
    body = nnx.clone(model)
    _set(body, head_path, _Identity())
    return apply_batched(body, x)


class _Identity(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def _train_head(owner: nnx.Module, x: np.ndarray, y: np.ndarray, config: PirateConfig,
                reinit: bool, head_path: Path | None) -> nnx.Module:
    x, y = _check_xy(x, y)
    model = nnx.clone(owner)
    model.eval()
    path = head_path or find_head(model, _num_classes(model, x))
    feats = _features(model, path, x)
    head = nnx.clone(_get(model, path))
    if reinit:
        head = _reinit_linear(head, config.seed)
    wrapper = _HeadOnly(head)
    config.fit(wrapper, feats.reshape(len(feats), 1, 1, -1), y, augment=False)
    _set(model, path, wrapper.head)
    model.eval()
    return model


def fine_tune_last_layer(owner: nnx.Module, x: Any, y: Any, config: PirateConfig = PirateConfig(),
                         *, head_path: Path | None = None) -> nnx.Module:
    """FTLL: fine-tunes only the head; every other weight and BatchNorm statistic is the owner's.

    Args:
        owner: the owner's NNX model (not modified).
        x: pirate images ``(N, H, W, C)`` in [0, 1].
        y: their ``(N,)`` labels.
        config: training settings (augmentation does not apply: features are computed once).
        head_path: the head's attribute path; default :func:`find_head`.

    Returns:
        The pirated model, in eval mode.

    Raises:
        ValueError: malformed ``x``/``y`` or no unique head (see :func:`find_head`).

    Example:
        >>> ftll = fine_tune_last_layer(owner, x_pirate, y_pirate,
        ...                             PirateConfig(epochs=5))  # doctest: +SKIP
    """
    return _train_head(owner, x, y, config, reinit=False, head_path=head_path)


def retrain_last_layer(owner: nnx.Module, x: Any, y: Any, config: PirateConfig = PirateConfig(),
                       *, head_path: Path | None = None) -> nnx.Module:
    """RTLL: re-initialises the head (torch's Linear init, seed ``config.seed``), trains only it.

    Args:
        owner: the owner's NNX model (not modified).
        x: pirate images ``(N, H, W, C)`` in [0, 1].
        y: their ``(N,)`` labels.
        config: training settings.
        head_path: the head's attribute path; default :func:`find_head`.

    Returns:
        The pirated model, in eval mode.

    Raises:
        ValueError: malformed ``x``/``y`` or no unique head (see :func:`find_head`).

    Example:
        >>> rtll = retrain_last_layer(owner, x_pirate, y_pirate,
        ...                           PirateConfig(seed=1))  # doctest: +SKIP
    """
    return _train_head(owner, x, y, config, reinit=True, head_path=head_path)


def fine_tune_all_layers(owner: nnx.Module, x: Any, y: Any,
                         config: PirateConfig = PirateConfig()) -> nnx.Module:
    """FTAL: trains every parameter of a copy of the owner on the pirate's data.

    Args:
        owner: the owner's NNX model (not modified).
        x: pirate images ``(N, H, W, C)`` in [0, 1].
        y: their ``(N,)`` labels.
        config: training settings.

    Returns:
        The pirated model, in eval mode.

    Raises:
        ValueError: malformed ``x``/``y``.

    Example:
        >>> ftal = fine_tune_all_layers(owner, x_pirate, y_pirate,
        ...                             PirateConfig(epochs=5))  # doctest: +SKIP
    """
    x, y = _check_xy(x, y)
    model = nnx.clone(owner)
    config.fit(model, x, y)
    return model


def retrain_all_layers(owner: nnx.Module, x: Any, y: Any, config: PirateConfig = PirateConfig(),
                       *, head_path: Path | None = None) -> nnx.Module:
    """RTAL: re-initialises the head, then trains every parameter.

    Args:
        owner: the owner's NNX model (not modified).
        x: pirate images ``(N, H, W, C)`` in [0, 1].
        y: their ``(N,)`` labels.
        config: training settings.
        head_path: the head's attribute path; default :func:`find_head`.

    Returns:
        The pirated model, in eval mode.

    Raises:
        ValueError: malformed ``x``/``y`` or no unique head (see :func:`find_head`).

    Example:
        >>> rtal = retrain_all_layers(owner, x_pirate, y_pirate,
        ...                           PirateConfig(epochs=10))  # doctest: +SKIP
    """
    x, y = _check_xy(x, y)
    model = nnx.clone(owner)
    path = head_path or find_head(model, _num_classes(model, x))
    _set(model, path, _reinit_linear(_get(model, path), config.seed))
    config.fit(model, x, y)
    return model


# --- pruning ---------------------------------------------------------------------------------


def _prune_masks(model: nnx.Module, rate: float, scope: str) -> dict[Path, np.ndarray]:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    paths = kernel_paths(model)
    kernels = {p: np.abs(np.asarray(_get(model, p).kernel[...])) for p in paths}
    masks = {}
    if scope == "layer":
        for p, w in kernels.items():
            drop = int(round(rate * w.size))
            order = np.argsort(w.ravel(), kind="stable")  # exact count, ties broken by position
            m = np.ones(w.size, np.float32)
            m[order[:drop]] = 0.0
            masks[p] = m.reshape(w.shape)
    else:
        flat = np.concatenate([w.ravel() for w in kernels.values()])
        drop = int(round(rate * flat.size))
        m = np.ones(flat.size, np.float32)
        m[np.argsort(flat, kind="stable")[:drop]] = 0.0
        start = 0
        for p, w in kernels.items():
            masks[p] = m[start:start + w.size].reshape(w.shape)
            start += w.size
    return masks


def _apply_masks(model: nnx.Module, masks: dict[Path, np.ndarray]) -> None:
    for p, m in masks.items():
        kernel = _get(model, p).kernel
        kernel[...] = kernel[...] * jnp.asarray(m, kernel[...].dtype)


def prune(owner: nnx.Module, rate: float, *, scope: str = "layer") -> nnx.Module:
    """Magnitude pruning: zeroes the ``rate`` share of kernel weights smallest in magnitude.

    Only kernels (Linear and Conv weights) are pruned; biases, BatchNorm and the input
    normalisation are kept. Exactly ``round(rate * size)`` weights are zeroed.

    Args:
        owner: the owner's NNX model (not modified).
        rate: share of weights to zero, in ``[0, 1)``.
        scope: ``"layer"`` prunes each kernel at ``rate`` (the default: no layer is wiped out);
            ``"global"`` ranks all kernel weights together.

    Returns:
        The pruned model, in eval mode.

    Raises:
        ValueError: ``rate`` outside ``[0, 1)`` or an unknown ``scope``.

    Example:
        >>> from ipguard_jax import models
        >>> owner = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> pruned = prune(owner, 0.3, scope="global")
        >>> kernels = [pruned.layers[0].kernel, pruned.layers[1].kernel, pruned.head.kernel]
        >>> zeros = sum(int((k[...] == 0).sum()) for k in kernels)
        >>> round(zeros / sum(k[...].size for k in kernels), 2)  # over all kernels together
        0.3
    """
    model = nnx.clone(owner)
    _apply_masks(model, _prune_masks(model, rate, scope))
    model.eval()
    return model


class _Mask(nnx.Variable):
    """A 0/1 pruning mask: a Variable but not a Param, so ``fit`` never trains it."""


class _Masked(nnx.Module):
    """Runs ``model`` with each masked kernel multiplied by its mask (gradients too)."""

    def __init__(self, model: nnx.Module, masks: dict[Path, np.ndarray]):
        self.model = model
        self.paths = tuple(masks)
        self.masks = nnx.List([_Mask(jnp.asarray(m)) for m in masks.values()])

    def __call__(self, x: jax.Array) -> jax.Array:
        kernels = [_get(self.model, p).kernel for p in self.paths]
        originals = [k[...] for k in kernels]
        for k, w, m in zip(kernels, originals, self.masks):
            k[...] = w * m[...]
        try:
            return self.model(x)
        finally:
            # Put the unmasked values back, so the trained Param stays the optimiser's variable.
            for k, w in zip(kernels, originals):
                k[...] = w


def prune_and_fine_tune(owner: nnx.Module, x: Any, y: Any, rate: float,
                        config: PirateConfig = PirateConfig(), *,
                        scope: str = "layer") -> nnx.Module:
    """Prunes like :func:`prune`, then fine-tunes all layers with pruned weights held at zero.

    Args:
        owner: the owner's NNX model (not modified).
        x: pirate images ``(N, H, W, C)`` in [0, 1].
        y: their ``(N,)`` labels.
        rate: share of kernel weights to zero.
        config: training settings.
        scope: ``"layer"`` or ``"global"`` (see :func:`prune`).

    Returns:
        The pruned, fine-tuned model, in eval mode; pruned weights are exactly zero.

    Raises:
        ValueError: malformed ``x``/``y``, ``rate`` outside ``[0, 1)`` or an unknown
            ``scope``.

    Example:
        >>> pirate = prune_and_fine_tune(owner, x_pirate, y_pirate, 0.7,
        ...                              PirateConfig(epochs=5))  # doctest: +SKIP
    """
    x, y = _check_xy(x, y)
    model = nnx.clone(owner)
    masks = _prune_masks(model, rate, scope)
    _apply_masks(model, masks)
    wrapper = _Masked(model, masks)
    config.fit(wrapper, x, y)
    # Masked weights got zero gradients; multiplying again makes it hold by construction too.
    _apply_masks(wrapper.model, masks)
    wrapper.model.eval()
    return wrapper.model


# --- distillation ----------------------------------------------------------------------------


class _Tempered(nnx.Module):
    def __init__(self, model: nnx.Module, temperature: float):
        self.model = model
        self.temperature = float(temperature)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.model(x) / self.temperature


def distill(owner: nnx.Module, x: Any, config: PirateConfig = PirateConfig(), *,
            student: str | nnx.Module | None = None, temperature: float = 4.0,
            label_copies: int = 4, student_kwargs: dict[str, Any] | None = None) -> nnx.Module:
    """Knowledge distillation from the owner's soft labels (the pirate's true labels unused).

    Soft labels ``softmax(owner(x) / T)`` are approximated by ``label_copies`` sampled labels
    per image (see the module notes); the student is trained on ``student(x) / T``.

    Args:
        owner: the owner's NNX model (not modified).
        x: pirate images ``(N, H, W, C)`` in [0, 1] (unlabelled data suffices).
        config: training settings; ``config.seed`` seeds the student's init and the labels.
        student: ``None`` for a freshly initialised model of the owner's architecture, a
            registry name for another architecture (:func:`build_model`), or an untrained
            NNX model.
        temperature: the distillation temperature ``T > 0``.
        label_copies: sampled labels per image.
        student_kwargs: passed to :func:`build_model` with a registry name.

    Returns:
        The trained student, in eval mode.

    Raises:
        ValueError: malformed ``x``, ``temperature <= 0`` or ``label_copies < 1``.

    Example:
        >>> student = distill(owner, x_pirate, PirateConfig(epochs=10), student="cnn",
        ...                   student_kwargs={"in_channels": 1})  # doctest: +SKIP
    """
    x, _ = _check_xy(x, None)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if label_copies < 1:
        raise ValueError(f"label_copies must be >= 1, got {label_copies}")
    logits = apply_batched(owner, x)
    model = _student(owner, student, logits.shape[-1], config, student_kwargs)
    key = jax.random.key(config.seed)
    labels = np.asarray(jax.random.categorical(
        key, jnp.asarray(logits / temperature), axis=-1, shape=(label_copies, len(x))))
    xs = np.concatenate([x] * label_copies)
    ys = labels.reshape(-1).astype(np.int32)
    wrapper = _Tempered(model, temperature)
    config.fit(wrapper, xs, ys)
    wrapper.model.eval()
    return wrapper.model


def _student(owner: nnx.Module, student: str | nnx.Module | None, num_classes: int,
             config: PirateConfig, student_kwargs: dict[str, Any] | None) -> nnx.Module:
    if student is None:
        # Same architecture, new weights: re-draw every Param of a clone.
        model = nnx.clone(owner)
        _reinit_all(model, config.seed)
        return model
    if isinstance(student, str):
        return build_model(student, num_classes, config.seed + 1000, **(student_kwargs or {}))
    return nnx.clone(student)


def extract(owner: nnx.Module, x: Any, config: PirateConfig = PirateConfig(), *,
            student: str | nnx.Module | None = None,
            student_kwargs: dict[str, Any] | None = None) -> nnx.Module:
    """Model extraction through a label-only prediction API: a student trained on the owner's
    hard labels (its top-1 answers) on the pirate's unlabelled images.

    Args:
        owner: the owner's NNX model (not modified): the API answers with its top-1 label.
        x: pirate images ``(N, H, W, C)`` in [0, 1].
        config: training settings; ``config.seed`` seeds the student's init.
        student: ``None`` for a freshly initialised model of the owner's architecture, a
            registry name (:func:`build_model`), or an untrained NNX model.
        student_kwargs: passed to :func:`build_model` with a registry name.

    Returns:
        The trained student, in eval mode.

    Raises:
        ValueError: malformed ``x``.

    Example:
        >>> from ipguard_jax import models
        >>> owner = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> x = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype(np.float32)
        >>> student = extract(owner, x, PirateConfig(epochs=1))
        >>> student.head.kernel[...].shape == owner.head.kernel[...].shape
        True
    """
    x, _ = _check_xy(x, None)
    logits = apply_batched(owner, x)
    model = _student(owner, student, logits.shape[-1], config, student_kwargs)
    config.fit(model, x, np.argmax(logits, axis=-1).astype(np.int32))
    model.eval()
    return model


def _reinit_all(model: nnx.Module, seed: int) -> None:
    # Same shapes, new values: kernels He-uniform, biases zero, BatchNorm as freshly built.
    rng = np.random.default_rng(seed)
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        if isinstance(node, nnx.BatchNorm):
            for name, fill in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
                var = getattr(node, name, None)
                if var is not None:
                    var[...] = jnp.full_like(var[...], fill)
            continue
        kernel = getattr(node, "kernel", None)
        if isinstance(kernel, nnx.Param) and kernel[...].ndim >= 2:
            shape = kernel[...].shape
            # He-uniform over the fan-in (grouped convs already store in/groups channels).
            bound = np.sqrt(6.0 / np.prod(shape[:-1]))
            kernel[...] = jnp.asarray(rng.uniform(-bound, bound, shape), kernel[...].dtype)
            bias = getattr(node, "bias", None)
            if isinstance(bias, nnx.Param):
                bias[...] = jnp.zeros_like(bias[...])


# --- quantisation ----------------------------------------------------------------------------


def quantize_int8(owner: nnx.Module) -> nnx.Module:
    """Symmetric per-output-channel int8 kernels, dequantised back to float for inference.

    For each kernel and output channel (the last axis), ``scale = max|w| / 127``,
    ``q = clip(round(w / scale), -127, 127)`` and the weight becomes ``q * scale``: at most 255
    distinct values per channel. Biases and BatchNorm stay float.

    Args:
        owner: the owner's NNX model (not modified).

    Returns:
        The quantised model, in eval mode.

    Example:
        >>> import numpy as np
        >>> from ipguard_jax import models
        >>> owner = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> head = np.asarray(quantize_int8(owner).head.kernel[...])
        >>> all(len(np.unique(head[:, c])) <= 255 for c in range(head.shape[1]))
        True
    """
    model = nnx.clone(owner)
    for p in kernel_paths(model):
        kernel = _get(model, p).kernel
        w = kernel[...]
        scale = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True) / 127.0
        scale = jnp.where(scale > 0, scale, 1.0)  # an all-zero channel stays zero
        kernel[...] = (jnp.clip(jnp.round(w / scale), -127, 127) * scale).astype(w.dtype)
    model.eval()
    return model


# --- by name ---------------------------------------------------------------------------------


POSTPROCESSINGS: dict[str, Callable[..., nnx.Module]] = {
    "ftll": fine_tune_last_layer,
    "ftal": fine_tune_all_layers,
    "rtll": retrain_last_layer,
    "rtal": retrain_all_layers,
    "prune": prune,
    "prune_ft": prune_and_fine_tune,
    "distill": distill,
    "extract": extract,
    "int8": quantize_int8,
}


def make_pirate(kind: str, owner: nnx.Module, x: Any, y: Any,
                config: PirateConfig = PirateConfig(), **params: Any) -> nnx.Module:
    """Runs the post-processing ``kind`` (a :data:`POSTPROCESSINGS` key) with its parameters.

    Args:
        kind: ``"ftll"``, ``"ftal"``, ``"rtll"``, ``"rtal"``, ``"prune"`` (``rate``, ``scope``),
            ``"prune_ft"`` (``rate``, ``scope``), ``"distill"`` (``student``, ``temperature``,
            ...), ``"extract"`` (``student``, ``student_kwargs``) or ``"int8"``.
        owner: the owner's NNX model (not modified).
        x: pirate images.
        y: their labels (unused by ``prune``, ``int8``, ``distill`` and ``extract``).
        config: training settings (unused by ``prune`` and ``int8``).
        **params: the post-processing's own parameters.

    Returns:
        The pirated model.

    Raises:
        ValueError: an unknown ``kind``, or the post-processing's own errors.
        TypeError: parameters the post-processing does not take.

    Example:
        >>> from ipguard_jax import models
        >>> owner = models.create("mlp", in_features=64, in_channels=1, rngs=nnx.Rngs(0))
        >>> pruned = make_pirate("prune", owner, None, None, rate=0.5)  # no data needed
        >>> float((pruned.head.kernel[...] == 0).mean())
        0.5
        >>> ftal = make_pirate("ftal", owner, x_pirate, y_pirate,
        ...                    PirateConfig(epochs=5))  # doctest: +SKIP
    """
    if kind not in POSTPROCESSINGS:
        raise ValueError(f"unknown post-processing {kind!r}; known: {', '.join(POSTPROCESSINGS)}")
    if kind == "prune":
        return prune(owner, **params)
    if kind == "int8":
        return quantize_int8(owner, **params)
    if kind in ("distill", "extract"):
        return POSTPROCESSINGS[kind](owner, x, config, **params)
    if kind == "prune_ft":
        return prune_and_fine_tune(owner, x, y, config=config, **params)
    return POSTPROCESSINGS[kind](owner, x, y, config, **params)
