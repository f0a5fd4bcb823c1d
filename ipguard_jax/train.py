"""Training loop for the Flax NNX classifiers in :mod:`ipguard_jax.models`.

The model is split once (``nnx.split``) into a static graph definition and
state pytrees; each training step is a pure function of those pytrees,
compiled ahead of time with ``jax.jit`` (no per-step ``nnx.jit`` graph
traversal). The whole training set lives on the device once; a step gathers
its batch by index and augments it inside the compiled step.

:func:`fit` is a short composition of public pieces, each usable on its own
(as in flax's ``examples/mnist/train.py``): :func:`make_optimizer` (optimizer
and schedule), :class:`TrainState` (the model's arrays and optimizer state as
one flat list), :class:`TrainStep` (one compiled step; its ``lower`` lets a
benchmark time compilation apart), :func:`epoch_permutation` (an epoch's data
order and augmentation key), :func:`train_epoch` (one epoch of steps), and
:class:`Checkpointer` with :func:`run_metadata` (epoch checkpoints and what
makes one resumable).

Choices, each fixed and documented:

* schedule: cosine decay to 0 over all steps, with optional linear warmup
  from 0, stepped per batch;
* weight decay: SGD adds L2 to the gradient before momentum (PyTorch's
  ``SGD(weight_decay=...)``); Adam uses decoupled decay (AdamW). Only
  kernels (arrays with ndim >= 2) decay, not biases or BatchNorm scales;
* random crop: pad ``crop_padding`` pixels (zeros as torchvision's
  ``RandomCrop(padding=4)``, or reflect) and crop back at a random offset;
  horizontal flip with probability 1/2;
* an epoch drops its last partial batch (fixed shapes, one compilation).

Speed on a 2-core CPU (batch 128, 32x32x3): the default ``CNN`` trains at
~500-700 images/s, ResNet-20 at ~120-170 images/s; with tcmalloc preloaded
(``LD_PRELOAD=libtcmalloc_minimal.so.4``) ~1,000-1,150 and ~250-275 images/s, since
glibc's malloc serves XLA's large per-step buffers slowly (see
:func:`malloc_in_use` and ``benchmarks/results/allocator.md``). XLA:CPU's own convolution
kernel gradients were the largest cost (a ResNet-20 gradient ran 1.5-1.7x
slower with them); the zoo's convolutions compute them as matrix products
instead (see ``ipguard_jax.models._common.conv_general_dilated`` and
``benchmarks/results/conv_grad.md``).
Host overhead per step is ~0.3 ms (ResNet-20) to ~1 ms (ResNet-50).

Runs are deterministic given ``TrainConfig.seed`` (data order, augmentation)
and the model's own ``rngs`` (init, dropout). With ``checkpoint_dir`` set,
orbax checkpoints (written to a temporary directory and renamed, never
pickled) let an interrupted run resume and finish with the same parameters
as an uninterrupted one.

Example:
  Train a CNN on scikit-learn's digits (about a minute on 2 CPU cores):

  >>> from ipguard_jax import data, models
  >>> from ipguard_jax.train import TrainConfig, evaluate, fit
  >>> config = TrainConfig(epochs=5, optimizer="adam", random_crop=False,
  ...                      horizontal_flip=False)
  >>> digits = data.load_digits()  # doctest: +SKIP
  >>> model = models.create("cnn", in_channels=1, rngs=nnx.Rngs(0))  # doctest: +SKIP
  >>> result = fit(model, digits.x[:1000], digits.y[:1000], config,
  ...              x_val=digits.x[1000:], y_val=digits.y[1000:])  # doctest: +SKIP
  >>> evaluate(model, digits.x[1000:], digits.y[1000:])  # doctest: +SKIP
  0.9...
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from ipguard_jax.storage.digest import flatten_state, unflatten_state

_OPTIMIZERS = ("sgd", "adam")
_PAD_MODES = ("zeros", "reflect")
# Config fields that do not change the training trajectory: a checkpoint
# written under other values of these is still resumable.
_NON_TRAJECTORY_FIELDS = ("checkpoint_dir", "checkpoint_every")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`fit`. Invalid values raise ``ValueError``.

    Attributes:
      epochs: passes over the training set.
      batch_size: images per step (the last partial batch is dropped).
      optimizer: ``"sgd"`` (momentum) or ``"adam"``.
      lr: peak learning rate; ``None`` means 0.1 for SGD, 1e-3 for Adam.
      momentum: SGD momentum.
      nesterov: Nesterov momentum for SGD.
      weight_decay: L2 coefficient for SGD, decoupled decay for Adam (AdamW),
        applied to kernels only.
      label_smoothing: in [0, 1).
      warmup_epochs: linear warmup length (may be fractional).
      random_crop: pad-and-crop augmentation.
      crop_padding: pixels padded on each side before cropping.
      crop_pad_mode: ``"zeros"`` (torchvision's default) or ``"reflect"``.
      horizontal_flip: flip augmentation (turn off for digits, text, ...).
      seed: seed of data order and augmentation.
      checkpoint_dir: directory for orbax checkpoints; ``None`` disables
        checkpointing and resuming.
      checkpoint_every: checkpoint every this many epochs (and always after
        the last one).

    Raises:
      ValueError: a field of the wrong type or out of range (the message
        names the field and the rule).

    Example:
      >>> config = TrainConfig(epochs=5, optimizer="adam")
      >>> config.learning_rate, config.batch_size
      (0.001, 128)
    """

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    random_crop: bool = True
    crop_padding: int = 4
    crop_pad_mode: str = "zeros"
    horizontal_flip: bool = True
    seed: int = 0
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 1

    def __post_init__(self):
        def check(ok: bool, field: str, rule: str):
            if not ok:
                raise ValueError(
                    f"TrainConfig.{field} {rule}, got {getattr(self, field)!r}"
                )

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_real(v):
            return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)

        check(is_int(self.epochs) and self.epochs >= 1, "epochs", "must be an integer >= 1")
        check(
            is_int(self.batch_size) and self.batch_size >= 1,
            "batch_size",
            "must be an integer >= 1",
        )
        check(self.optimizer in _OPTIMIZERS, "optimizer", f"must be one of {_OPTIMIZERS}")
        check(
            self.lr is None or (is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0),
            "lr",
            "must be a finite number > 0 or None",
        )
        check(
            is_real(self.momentum) and 0 <= self.momentum < 1,
            "momentum",
            "must be in [0, 1)",
        )
        check(isinstance(self.nesterov, bool), "nesterov", "must be a bool")
        check(
            is_real(self.weight_decay)
            and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0,
            "weight_decay",
            "must be a finite number >= 0",
        )
        check(
            is_real(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            "label_smoothing",
            "must be in [0, 1)",
        )
        check(
            is_real(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
            "warmup_epochs",
            "must be in [0, epochs)",
        )
        check(isinstance(self.random_crop, bool), "random_crop", "must be a bool")
        check(
            is_int(self.crop_padding) and self.crop_padding >= 0,
            "crop_padding",
            "must be an integer >= 0",
        )
        check(self.crop_pad_mode in _PAD_MODES, "crop_pad_mode", f"must be one of {_PAD_MODES}")
        check(isinstance(self.horizontal_flip, bool), "horizontal_flip", "must be a bool")
        check(is_int(self.seed), "seed", "must be an integer")
        check(
            self.checkpoint_dir is None or isinstance(self.checkpoint_dir, (str, os.PathLike)),
            "checkpoint_dir",
            "must be a path or None",
        )
        check(
            is_int(self.checkpoint_every) and self.checkpoint_every >= 1,
            "checkpoint_every",
            "must be an integer >= 1",
        )

    @property
    def learning_rate(self) -> float:
        """The peak learning rate, with the optimizer's default for ``lr=None``.

        Example:
          >>> TrainConfig().learning_rate, TrainConfig(optimizer="adam", lr=3e-3).learning_rate
          (0.1, 0.003)
        """
        if self.lr is not None:
            return float(self.lr)
        return 0.1 if self.optimizer == "sgd" else 1e-3

    def trajectory_dict(self) -> dict[str, Any]:
        """The fields that determine the training trajectory, JSON-ready.

        Every field but ``checkpoint_dir`` and ``checkpoint_every``, with ``lr`` resolved
        to :attr:`learning_rate`; a checkpoint is resumable only under equal values.

        Returns:
          Field name -> plain Python value.

        Example:
          >>> d = TrainConfig(checkpoint_dir="ckpt").trajectory_dict()
          >>> d["lr"], "checkpoint_dir" in d
          (0.1, False)
        """
        d = dataclasses.asdict(self)
        for name in _NON_TRAJECTORY_FIELDS:
            d.pop(name)
        d["lr"] = self.learning_rate
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


@dataclasses.dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
      model: the trained model (the same object that was passed in), in eval
        mode.
      history: per-epoch lists over the whole run, including epochs restored
        from a checkpoint: ``epoch`` (1-based), ``loss`` and ``accuracy``
        (training batches, augmented, train mode), ``val_accuracy`` (``nan``
        without validation data), ``lr`` (at the epoch's last step),
        ``seconds`` (training time of the epoch).
      wall_time_s: wall-clock time of this call.
      compile_time_s: time spent compiling the training step in this call.
      images_per_s: training throughput of this call (excluding compilation,
        evaluation and checkpointing); ``nan`` if no epoch ran.
      start_epoch: epochs already done when this call started (> 0 after a
        resume).
      stopped_early: whether ``on_epoch_end`` stopped the run.

    Example:
      >>> result = fit(model, x, y, TrainConfig(epochs=3))  # doctest: +SKIP
      >>> len(result.history["loss"])  # doctest: +SKIP
      3
    """

    model: nnx.Module
    history: dict[str, list[float]]
    wall_time_s: float
    compile_time_s: float
    images_per_s: float
    start_epoch: int
    stopped_early: bool = False


def augment(
    x: jax.Array,
    key: jax.Array,
    *,
    random_crop: bool = True,
    crop_padding: int = 4,
    pad_mode: str = "zeros",
    horizontal_flip: bool = True,
) -> jax.Array:
    """Random pad-and-crop and horizontal flip of a batch, per image.

    Args:
      x: ``(B, H, W, C)`` images.
      key: PRNG key.
      random_crop: whether to pad by ``crop_padding`` and crop back to
        ``(H, W)`` at a uniform random offset.
      crop_padding: pixels padded on each side.
      pad_mode: ``"zeros"`` or ``"reflect"``.
      horizontal_flip: whether to mirror each image with probability 1/2.

    Returns:
      The augmented batch, same shape and dtype as ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> y = augment(x, jax.random.key(0), crop_padding=1)
      >>> y.shape, y.dtype
      ((1, 4, 4, 1), dtype('float32'))
    """
    b, h, w, c = x.shape
    key_crop, key_flip = jax.random.split(key)
    if random_crop and crop_padding > 0:
        p = crop_padding
        mode = "constant" if pad_mode == "zeros" else "reflect"
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
        offsets = jax.random.randint(key_crop, (b, 2), 0, 2 * p + 1)
        x = jax.vmap(
            lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
        )(padded, offsets)
    if horizontal_flip:
        flip = jax.random.bernoulli(key_flip, 0.5, (b,))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    return x


def _to_unit_float(x: jax.Array) -> jax.Array:
    # uint8 storage keeps big training sets 4x smaller on the device.
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) * (1.0 / 255.0)
    return x.astype(jnp.float32)


def _mode_view(model: nnx.Module, *, train: bool) -> nnx.Module:
    """A view of ``model`` in train or eval mode, leaving ``model`` unchanged."""
    return nnx.view(
        model,
        deterministic=not train,
        use_running_average=not train,
        raise_if_not_found=False,
    )


def _eval_correct(graphdef, params, rest, x, y, mask):
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits = model(_to_unit_float(x))
    return jnp.sum((jnp.argmax(logits, -1) == y) & mask)


# graphdef is hashable: one compilation per model structure and batch shape.
_eval_correct_jit = jax.jit(_eval_correct, static_argnums=0)


def evaluate(
    model: nnx.Module,
    x: jax.typing.ArrayLike,
    y: jax.typing.ArrayLike,
    batch_size: int = 1000,
) -> float:
    """Top-1 accuracy of ``model`` in eval mode (the model's mode is unchanged).

    Args:
      model: an NNX classifier returning logits.
      x: ``(N, H, W, C)`` images in [0, 1] (float) or [0, 255] (uint8).
      y: ``(N,)`` integer labels.
      batch_size: images per forward pass; the last batch is padded so every
        batch has the same shape.

    Returns:
      Accuracy in [0, 1].

    Raises:
      ValueError: ``x`` is not ``(N, H, W, C)``, ``y`` does not hold ``N``
        integer labels, or the data is empty.

    Example:
      >>> import numpy as np
      >>> from ipguard_jax import models
      >>> model = models.create("mlp", 3, in_features=4, in_channels=1, hidden=(),
      ...                       rngs=nnx.Rngs(0))
      >>> x, y = np.zeros((5, 2, 2, 1), np.float32), np.zeros(5, np.int32)
      >>> evaluate(model, x, y) in (0.0, 1.0)  # one prediction for five equal images
      True
    """
    x = np.asarray(x)
    y = np.asarray(y)
    _check_data(x, y, "x", "y")
    graphdef, params, rest = nnx.split(_mode_view(model, train=False), nnx.Param, ...)
    return _accuracy(graphdef, params, rest, x, y, batch_size)


def _accuracy(graphdef, params, rest, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    n = len(x)
    batch_size = min(batch_size, n)
    correct = jnp.zeros((), jnp.int32)
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        valid = len(xb)
        if valid < batch_size:
            pad = batch_size - valid
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
        mask = np.arange(batch_size) < valid
        correct = correct + _eval_correct_jit(graphdef, params, rest, xb, yb.astype(np.int32), mask)
    return float(correct) / n


def _check_data(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{xname} must be (N, H, W, C), got shape {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"{yname} must have shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{yname} must hold integer labels, got dtype {y.dtype}")
    if len(x) == 0:
        raise ValueError(f"{xname} is empty")


# --- the pieces fit is made of ---------------------------------------------
# fit composes them in this order (as flax's examples/mnist/train.py does):
# make_optimizer -> TrainState.create -> Checkpointer.restore -> TrainStep.compile
# -> train_epoch per epoch (data order and augmentation key from epoch_permutation)
# -> Checkpointer.save.


def make_optimizer(
    config: TrainConfig, total_steps: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and learning-rate schedule :func:`fit` trains with.

    The schedule decays the learning rate by a cosine to 0 over ``total_steps``, after a linear
    warmup from 0 over ``config.warmup_epochs * steps_per_epoch`` steps (rounded) if any. SGD
    adds L2 weight decay to the gradient before momentum; Adam decays decoupled (AdamW). Only
    kernels (arrays with ``ndim >= 2``) decay.

    Args:
      config: the hyper-parameters (``optimizer``, ``lr``, ``momentum``, ``nesterov``,
        ``weight_decay``, ``warmup_epochs``).
      total_steps: steps of the whole run (``epochs * steps_per_epoch``).
      steps_per_epoch: steps in one epoch (training-set size // batch size).

    Returns:
      ``(tx, schedule)``: the optax transformation and the schedule it steps per batch.

    Example:
      >>> tx, schedule = make_optimizer(TrainConfig(epochs=2, warmup_epochs=1),
      ...                               total_steps=20, steps_per_epoch=10)
      >>> [round(float(schedule(s)), 4) for s in (0, 5, 10, 20)]
      [0.0, 0.05, 0.1, 0.0]
    """
    lr = config.learning_rate
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if warmup > 0:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=warmup, decay_steps=total_steps, end_value=0.0
        )
    else:
        schedule = optax.cosine_decay_schedule(lr, total_steps)

    def kernels_only(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    if config.optimizer == "sgd":
        sgd = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
        if config.weight_decay == 0:
            return sgd, schedule
        # L2: decay is added to the gradient, then goes through momentum.
        decay = optax.add_decayed_weights(config.weight_decay, kernels_only)
        return optax.chain(decay, sgd), schedule
    return (
        optax.adamw(schedule, weight_decay=config.weight_decay, mask=kernels_only),
        schedule,
    )


def epoch_permutation(seed: int, epoch: int, n: int) -> tuple[jax.Array, jax.Array]:
    """The data order and augmentation key of one epoch of :func:`fit`: functions of ``(seed, epoch)``.

    A resumed run recomputes them, so it sees the same batches as an uninterrupted one.

    Args:
      seed: ``TrainConfig.seed``.
      epoch: 0-based epoch.
      n: training-set size.

    Returns:
      ``(perm, key)``: an ``int32`` permutation of ``range(n)`` (batch ``i`` is
      ``perm[i * batch_size:(i + 1) * batch_size]``) and the PRNG key that step ``i`` folds
      ``i`` into for its augmentation.

    Example:
      >>> perm, key = epoch_permutation(seed=0, epoch=1, n=5)
      >>> sorted(perm.tolist()), perm.dtype
      ([0, 1, 2, 3, 4], dtype('int32'))
      >>> bool((epoch_permutation(0, 1, 5)[0] == perm).all())
      True
    """
    key = jax.random.fold_in(jax.random.key(seed), epoch)
    key_perm, key_aug = jax.random.split(key)
    return jax.random.permutation(key_perm, n).astype(jnp.int32), key_aug


@dataclasses.dataclass(eq=False)
class TrainState:
    """What :func:`fit` trains: a model's parameters, optimizer state and other variables.

    The variables travel as one flat list of arrays: flattening nested ``nnx.State`` / optax
    pytrees on every step costs more host time than the step dispatch itself (~1.1 ms vs
    ~0.34 ms per step for ResNet-20, ~6 ms vs ~1 ms for ResNet-50, on a 2-core CPU).

    Attributes:
      graphdef: the model's static graph, in train mode (BatchNorm on batch statistics,
        dropout on).
      treedef: the structure of ``(params, opt_state, rest)``; ``rest`` holds the model's
        variables other than parameters (BatchNorm statistics, RNG counters).
      leaves: its arrays. A :class:`TrainStep` donates them: after a step, the previous
        list's arrays are deleted.

    Example:
      >>> import optax
      >>> from ipguard_jax import models
      >>> model = models.create("mlp", 3, in_features=4, in_channels=1, hidden=(),
      ...                       rngs=nnx.Rngs(0))
      >>> state = TrainState.create(model, optax.sgd(0.1))
      >>> params, opt_state, rest = state.tree
      >>> [leaf.shape for leaf in jax.tree.leaves(params)]
      [(3,), (4, 3)]
      >>> state.consumed
      False
    """

    graphdef: Any
    treedef: Any
    leaves: list[jax.Array]

    @classmethod
    def create(cls, model: nnx.Module, tx: optax.GradientTransformation) -> TrainState:
        """The state of ``model`` (viewed in train mode; ``model`` is unchanged) and a fresh ``tx``.

        Args:
          model: an NNX classifier.
          tx: the optimizer (:func:`make_optimizer`).

        Returns:
          A :class:`TrainState` holding ``model``'s own arrays (copy it with :meth:`copy`
          before a step donates them).
        """
        graphdef, params, rest = nnx.split(_mode_view(model, train=True), nnx.Param, ...)
        leaves, treedef = jax.tree.flatten((params, tx.init(params), rest))
        return cls(graphdef, treedef, leaves)

    @property
    def tree(self) -> tuple[Any, Any, Any]:
        """``(params, opt_state, rest)`` rebuilt from :attr:`leaves`."""
        return jax.tree.unflatten(self.treedef, self.leaves)

    def replace_tree(self, tree: tuple[Any, Any, Any]) -> TrainState:
        """A state of the same structure holding the leaves of ``tree`` (e.g. restored ones)."""
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.treedef:
            raise ValueError("the tree's structure differs from the train state's")
        return TrainState(self.graphdef, self.treedef, leaves)

    def copy(self) -> TrainState:
        """A state with copies of the arrays, which steps may donate without touching these."""
        return TrainState(self.graphdef, self.treedef, [jnp.copy(leaf) for leaf in self.leaves])

    @property
    def consumed(self) -> bool:
        """Whether a step has donated (deleted) these arrays."""
        return any(leaf.is_deleted() for leaf in self.leaves)

    def update_model(self, model: nnx.Module) -> None:
        """Writes the parameters and other variables into ``model`` (``nnx.update``)."""
        params, _, rest = self.tree
        nnx.update(model, params, rest)


def _zero_metrics() -> tuple[jax.Array, jax.Array]:
    """``(loss sum, correct count)`` at the start of an epoch."""
    return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)


class TrainStep:
    """One training step of :func:`fit`, compiled ahead of time for one model structure.

    A pure function of the flat train state (:class:`TrainState`): it gathers batch ``index``
    of ``perm`` from the training set on the device, scales uint8 images to [0, 1], augments
    them (key ``fold_in(epoch_key, index)``), takes a gradient step of cross-entropy (with
    label smoothing) in train mode and adds the batch's loss and correct count to the
    running metrics. It donates the state and metrics it is given.

    Call it as ``leaves, metrics = step(leaves, metrics, x_all, y_all, perm, index,
    epoch_key)`` (``index`` an ``np.int32``); :func:`train_epoch` runs an epoch of such calls.
    :meth:`lower` gives the lowering without compiling (to time compilation apart),
    :meth:`compile` compiles it for :func:`fit`'s arguments and makes calls use that program.

    Args:
      state: a :class:`TrainState` of the model to train (only its structure is used).
      tx: the optimizer the state was created with.
      config: the hyper-parameters (batch size, augmentation, label smoothing, seed).

    Attributes:
      config: the hyper-parameters.
      compiled: the program :meth:`compile` built, else ``None`` (calls then go through
        ``jax.jit``).
      compile_time_s: seconds :meth:`compile` took (0.0 before).

    Example:
      >>> import numpy as np, optax
      >>> from ipguard_jax import models
      >>> model = models.create("mlp", 3, in_features=4, in_channels=1, hidden=(),
      ...                       rngs=nnx.Rngs(0))
      >>> config = TrainConfig(batch_size=2, random_crop=False, horizontal_flip=False)
      >>> tx, _ = make_optimizer(config, total_steps=10, steps_per_epoch=2)
      >>> state = TrainState.create(model, tx).copy()
      >>> x_all, y_all = jnp.zeros((4, 2, 2, 1)), jnp.arange(4) % 3
      >>> step = TrainStep(state, tx, config)
      >>> lowered = step.lower(state, x_all, y_all)  # nothing compiled yet
      >>> _ = step.compile(state, x_all, y_all)
      >>> perm, key = epoch_permutation(config.seed, 0, 4)
      >>> metrics = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
      >>> leaves, (loss_sum, correct) = step(state.leaves, metrics, x_all, y_all, perm,
      ...                                    np.int32(0), key)
      >>> int(correct) <= 2, state.consumed  # of the batch's 2 images; the input was donated
      (True, True)
    """

    def __init__(self, state: TrainState, tx: optax.GradientTransformation, config: TrainConfig):
        self.config = config
        self.compiled: jax.stages.Compiled | None = None
        self.compile_time_s = 0.0
        self._jitted = jax.jit(
            _step_function(state.graphdef, state.treedef, tx, config), donate_argnums=(0, 1)
        )

    def lower(self, state: TrainState, x_all: jax.Array, y_all: jax.Array) -> jax.stages.Lowered:
        """The step lowered for ``state``'s arrays and this training set, not yet compiled.

        The data order, index, key and metrics enter as shapes only (those of
        :func:`epoch_permutation`'s results and scalar ``int32`` index): nothing runs.

        Args:
          state: the train state to be stepped (its arrays are not donated here).
          x_all: ``(N, H, W, C)`` training images on the device (or their
            ``jax.ShapeDtypeStruct``).
          y_all: ``(N,)`` int32 labels on the device (or their shape).

        Returns:
          A ``jax.stages.Lowered``; ``.compile()`` gives the program :meth:`compile` builds.
        """
        n = x_all.shape[0]
        perm, epoch_key = jax.eval_shape(lambda: epoch_permutation(self.config.seed, 0, n))
        metrics = jax.eval_shape(_zero_metrics)
        index = jax.ShapeDtypeStruct((), jnp.int32)
        return self._jitted.lower(state.leaves, metrics, x_all, y_all, perm, index, epoch_key)

    def compile(self, state: TrainState, x_all: jax.Array, y_all: jax.Array) -> jax.stages.Compiled:
        """Compiles the step (see :meth:`lower`), records the time, and runs later calls on it.

        Returns:
          The compiled program (also :attr:`compiled`).
        """
        t_compile = time.perf_counter()
        self.compiled = self.lower(state, x_all, y_all).compile()
        self.compile_time_s = time.perf_counter() - t_compile
        return self.compiled

    def __call__(self, leaves, metrics, x_all, y_all, perm, index, epoch_key):
        """One step: ``(leaves, metrics)`` after it; donates ``leaves`` and ``metrics``."""
        fn = self._jitted if self.compiled is None else self.compiled
        return fn(leaves, metrics, x_all, y_all, perm, index, epoch_key)


def _step_function(graphdef, treedef, tx, config: TrainConfig):
    """The pure training step, closed over the static graph, state structure and optimizer."""
    batch_size = config.batch_size

    def loss_fn(params, rest, x, y):
        # copy=True: fresh Variables at this trace level, so BatchNorm may
        # update its statistics inside value_and_grad.
        model = nnx.merge(graphdef, params, rest, copy=True)
        logits = model(x)
        labels = jax.nn.one_hot(y, logits.shape[-1])
        if config.label_smoothing > 0:
            labels = optax.smooth_labels(labels, config.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, labels).mean()
        # BatchNorm statistics and dropout RNG counters advanced in the call.
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return loss, (logits, new_rest)

    def step(leaves, metrics, x_all, y_all, perm, index, epoch_key):
        params, opt_state, rest = jax.tree.unflatten(treedef, leaves)
        idx = jax.lax.dynamic_slice(perm, (index * batch_size,), (batch_size,))
        x = _to_unit_float(x_all[idx])
        y = y_all[idx]
        x = augment(
            x,
            jax.random.fold_in(epoch_key, index),
            random_crop=config.random_crop,
            crop_padding=config.crop_padding,
            pad_mode=config.crop_pad_mode,
            horizontal_flip=config.horizontal_flip,
        )
        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rest, x, y
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        loss_sum, correct_sum = metrics
        leaves = jax.tree.leaves((params, opt_state, rest))
        return leaves, (loss_sum + loss, correct_sum + correct)

    return step


def train_epoch(
    step: TrainStep,
    state: TrainState,
    x_all: jax.Array,
    y_all: jax.Array,
    epoch: int,
    on_step: Callable[[int, tuple[jax.Array, jax.Array]], None] | None = None,
) -> tuple[float, float]:
    """One epoch of :func:`fit`: every full batch of the epoch's data order, in turn.

    ``state.leaves`` is replaced after every step, so an epoch cut short (an exception in
    ``on_step``, ``KeyboardInterrupt``) leaves the last completed step there, unless the
    interrupted step had already consumed it (:attr:`TrainState.consumed`).

    Args:
      step: the training step (:class:`TrainStep`, compiled or not).
      state: the train state, updated in place.
      x_all: ``(N, H, W, C)`` training images on the device.
      y_all: ``(N,)`` int32 labels on the device.
      epoch: 0-based epoch: with ``step.config.seed`` it fixes the data order and
        augmentation (:func:`epoch_permutation`).
      on_step: called as ``on_step(index, metrics)`` after each step, with the epoch's running
        ``(loss sum, correct count)`` on the device (reading them waits for the step).

    Returns:
      ``(loss, accuracy)``: mean loss per step and accuracy over the epoch's training batches
      (augmented, train mode).

    Example:
      >>> import optax
      >>> from ipguard_jax import models
      >>> model = models.create("mlp", 3, in_features=4, in_channels=1, hidden=(),
      ...                       rngs=nnx.Rngs(0))
      >>> config = TrainConfig(batch_size=2, random_crop=False, horizontal_flip=False)
      >>> tx, _ = make_optimizer(config, total_steps=10, steps_per_epoch=2)
      >>> state = TrainState.create(model, tx).copy()
      >>> x_all, y_all = jnp.ones((5, 2, 2, 1)), jnp.zeros(5, jnp.int32)
      >>> seen = []
      >>> loss, accuracy = train_epoch(TrainStep(state, tx, config), state, x_all, y_all,
      ...                              epoch=0, on_step=lambda i, m: seen.append(i))
      >>> seen, 0.0 <= accuracy <= 1.0  # 5 // 2 steps: the last partial batch is dropped
      ([0, 1], True)
    """
    batch_size = step.config.batch_size
    n = x_all.shape[0]
    steps = n // batch_size
    perm, epoch_key = epoch_permutation(step.config.seed, epoch, n)
    metrics = _zero_metrics()
    for index in range(steps):
        state.leaves, metrics = step(
            state.leaves, metrics, x_all, y_all, perm, np.int32(index), epoch_key
        )
        if on_step is not None:
            on_step(index, metrics)
    loss_sum, correct_sum = jax.device_get(metrics)
    return float(loss_sum) / steps, float(correct_sum) / (steps * batch_size)


# --- checkpoints -------------------------------------------------------------
# The train state is saved as its flat list of leaves (typed PRNG keys as raw
# key data) and rebuilt with the tree structure of a fresh state, so custom
# pytree nodes (nnx.State, optax states) need no orbax support.

_RUN_FORMAT = "ipguard_jax.train/1"
_RUN_KEYS = ("format", "config", "data", "state")


def _abstract_saved(template) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype)
        for k, v in flatten_state(template).items()
    }


def _structure_signature(tree) -> list[str]:
    return [
        f"{jax.tree_util.keystr(path)}:{leaf.dtype}{list(leaf.shape)}"
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    ]


def run_metadata(config: TrainConfig, x_train: np.ndarray, state: TrainState) -> dict[str, Any]:
    """What identifies a run of :func:`fit`: a checkpoint resumes only a run with equal metadata.

    Args:
      config: the hyper-parameters (only :meth:`TrainConfig.trajectory_dict` counts).
      x_train: the training images (their number, shape and dtype count).
      state: the initial train state (its structure, dtypes and shapes count).

    Returns:
      ``{"format", "config", "data", "state"}``, JSON-ready.

    Example:
      >>> import numpy as np, optax
      >>> from ipguard_jax import models
      >>> model = models.create("mlp", 3, in_features=4, in_channels=1, hidden=(),
      ...                       rngs=nnx.Rngs(0))
      >>> run = run_metadata(TrainConfig(), np.zeros((10, 2, 2, 1), np.uint8),
      ...                    TrainState.create(model, optax.sgd(0.1)))
      >>> run["data"], run["config"]["lr"]
      ({'n': 10, 'x_shape': [2, 2, 1], 'x_dtype': 'uint8'}, 0.1)
    """
    return {
        "format": _RUN_FORMAT,
        "config": config.trajectory_dict(),
        "data": {
            "n": len(x_train),
            "x_shape": list(x_train.shape[1:]),
            "x_dtype": str(x_train.dtype),
        },
        "state": _structure_signature(state.tree),
    }


class Checkpointer:
    """:func:`fit`'s epoch checkpoints in one directory: the train state plus JSON metadata.

    Written with orbax: each checkpoint goes to a temporary directory renamed once complete,
    the two latest are kept (the previous complete one survives while the next is written),
    and leftovers of writes cut short by a crash are removed on opening. Use it as a context
    manager or call :meth:`close`.

    Args:
      directory: the checkpoint directory (``TrainConfig.checkpoint_dir``); created if
        missing.

    Example:
      >>> import tempfile, numpy as np, optax
      >>> from ipguard_jax import models
      >>> model = models.create("mlp", 3, in_features=4, in_channels=1, hidden=(),
      ...                       rngs=nnx.Rngs(0))
      >>> state = TrainState.create(model, optax.sgd(0.1))
      >>> run = run_metadata(TrainConfig(), np.zeros((10, 2, 2, 1)), state)
      >>> with tempfile.TemporaryDirectory() as tmp, Checkpointer(tmp) as checkpointer:
      ...     checkpointer.save(3, state, run, {"epoch": [1, 2, 3]})
      ...     epoch, restored, history = checkpointer.restore(state, run)
      >>> epoch, history, all(bool((a == b).all()) for a, b in zip(restored.leaves, state.leaves))
      (3, {'epoch': [1, 2, 3]}, True)
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = directory
        self._manager = ocp.CheckpointManager(
            os.path.abspath(os.fspath(directory)),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=2,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            ),
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest(self) -> int | None:
        """The epoch of the latest checkpoint, ``None`` if there is none."""
        return self._manager.latest_step()

    def save(
        self, epoch: int, state: TrainState, run: dict[str, Any], history: dict[str, list[float]]
    ) -> None:
        """Writes the checkpoint of ``epoch`` (epochs done) and waits until it is complete.

        Args:
          epoch: epochs done.
          state: the train state after them.
          run: the run's :func:`run_metadata`.
          history: the per-epoch history so far (:attr:`TrainResult.history`).
        """
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flatten_state(state.leaves)),
                meta=ocp.args.JsonSave({**run, "history": history}),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(
        self, template: TrainState, run: dict[str, Any]
    ) -> tuple[int, TrainState, dict[str, list[float]]]:
        """The latest checkpoint of the run ``run``, to resume it.

        Args:
          template: a train state of the run (fresh): its structure rebuilds the saved one.
          run: the run's :func:`run_metadata`.

        Returns:
          ``(epoch, state, history)``: epochs done, the train state after them and the
          history up to them; ``(0, template, empty history)`` without a checkpoint.

        Raises:
          ValueError: the latest checkpoint belongs to another run.
        """
        epoch = self.latest()
        if epoch is None:
            return 0, template, _new_history()
        meta = self._manager.restore(
            epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta
        # JSON round trip so tuples/lists and floats compare alike.
        expected = json.loads(json.dumps(run))
        for key in _RUN_KEYS:
            if meta.get(key) != expected[key]:
                raise ValueError(
                    f"checkpoint_dir {os.fspath(self.directory)!r} holds a "
                    f"checkpoint of another run ({key} differs); use another "
                    "directory or delete it to start over"
                )
        tree = template.tree
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract_saved(tree))),
        ).state
        state = template.replace_tree(unflatten_state(tree, restored))
        return epoch, state, {k: list(v) for k, v in meta["history"].items()}

    def history(self) -> dict[str, list[float]] | None:
        """The history stored with the latest checkpoint, ``None`` if there is none."""
        epoch = self.latest()
        if epoch is None:
            return None
        meta = self._manager.restore(
            epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta
        return {k: list(v) for k, v in meta["history"].items()}

    def close(self) -> None:
        """Releases orbax's resources."""
        self._manager.close()


def checkpoint_history(directory: str | os.PathLike) -> dict[str, list[float]] | None:
    """The per-epoch history stored with the latest checkpoint :func:`fit` wrote in ``directory``.

    It covers every epoch up to that checkpoint, also those of calls that stopped and resumed
    (so ``sum(history["seconds"])`` is a run's whole training time).

    Args:
      directory: a ``TrainConfig.checkpoint_dir``.

    Returns:
      ``{"epoch": [...], "loss": [...], ..., "seconds": [...]}``, or ``None`` when the
      directory holds no checkpoint (or does not exist).

    Example:
      >>> checkpoint_history("/nonexistent/checkpoints") is None
      True
    """
    if not os.path.isdir(directory):
        return None
    with Checkpointer(directory) as checkpointer:
        return checkpointer.history()


def _new_history() -> dict[str, list[float]]:
    return {k: [] for k in ("epoch", "loss", "accuracy", "val_accuracy", "lr", "seconds")}


# --- fit ---------------------------------------------------------------------


def _steps_per_epoch(n: int, batch_size: int) -> int:
    if n // batch_size == 0:
        raise ValueError(
            f"TrainConfig.batch_size ({batch_size}) exceeds the training set size ({n})"
        )
    return n // batch_size


def _validator(model, x_val, y_val, batch_size: int) -> Callable[[TrainState], float] | None:
    """Accuracy of a train state on the validation data, in eval mode; ``None`` without data."""
    if x_val is None and y_val is None:
        return None
    if x_val is None or y_val is None:
        raise ValueError("x_val and y_val must be given together")
    x_val, y_val = np.asarray(x_val), np.asarray(y_val)
    _check_data(x_val, y_val, "x_val", "y_val")
    eval_graphdef = nnx.split(_mode_view(model, train=False), nnx.Param, ...)[0]

    def validate(state: TrainState) -> float:
        params, _, rest = state.tree
        return _accuracy(eval_graphdef, params, rest, x_val, y_val, batch_size)

    return validate


class _ProgressBar:
    """fit's tqdm bar: running loss and accuracy every second, epoch metrics after each."""

    def __init__(self, config: TrainConfig, steps: int, *, enabled: bool, show_val: bool):
        self._bar = tqdm(total=steps, disable=not enabled, unit="step", dynamic_ncols=True)
        self._config, self._enabled, self._show_val = config, enabled, show_val
        self._shown = time.perf_counter()

    def start_epoch(self, epoch: int) -> None:
        self._bar.set_description(f"epoch {epoch + 1}/{self._config.epochs}")
        self._shown = time.perf_counter()

    def step(self, index: int, metrics) -> None:
        self._bar.update(1)
        if self._enabled and time.perf_counter() - self._shown > 1.0:
            # Reading metrics waits for the device: do it rarely.
            self._bar.set_postfix(_running(metrics, index + 1, self._config.batch_size))
            self._shown = time.perf_counter()

    def end_epoch(self, record: dict[str, float]) -> None:
        shown = ("loss", "accuracy", "val_accuracy") if self._show_val else ("loss", "accuracy")
        self._bar.set_postfix({k: f"{record[k]:.4f}" for k in shown})

    def close(self) -> None:
        self._bar.close()


def _running(metrics, steps: int, batch_size: int) -> dict[str, str]:
    loss_sum, correct_sum = jax.device_get(metrics)
    return {
        "loss": f"{float(loss_sum) / steps:.4f}",
        "accuracy": f"{float(correct_sum) / (steps * batch_size):.4f}",
    }


def _epoch_record(step, state, x_all, y_all, epoch, schedule, validate, bar) -> dict[str, float]:
    """Trains one epoch (:func:`train_epoch`) and returns its entry of the history."""
    bar.start_epoch(epoch)
    t_epoch = time.perf_counter()
    loss, accuracy = train_epoch(step, state, x_all, y_all, epoch, on_step=bar.step)
    seconds = time.perf_counter() - t_epoch
    steps_per_epoch = x_all.shape[0] // step.config.batch_size
    record = {
        "epoch": epoch + 1,
        "loss": loss,
        "accuracy": accuracy,
        "val_accuracy": float("nan") if validate is None else validate(state),
        "lr": float(schedule((epoch + 1) * steps_per_epoch - 1)),
        "seconds": seconds,
    }
    bar.end_epoch(record)
    return record


def _checkpoint_due(config: TrainConfig, epochs_done: int) -> bool:
    return epochs_done % config.checkpoint_every == 0 or epochs_done == config.epochs


def _images_per_s(records: list[dict[str, float]], images_per_epoch: int) -> float:
    """Training throughput over the epochs of ``records``; ``nan`` if none ran."""
    seconds = sum(record["seconds"] for record in records)
    return len(records) * images_per_epoch / seconds if seconds > 0 else float("nan")


def fit(
    model: nnx.Module,
    x_train: jax.typing.ArrayLike,
    y_train: jax.typing.ArrayLike,
    config: TrainConfig = TrainConfig(),
    *,
    x_val: jax.typing.ArrayLike | None = None,
    y_val: jax.typing.ArrayLike | None = None,
    progress: bool = True,
    eval_batch_size: int = 1000,
    on_epoch_end: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> TrainResult:
    """Trains ``model`` in place with cross-entropy; resumes from checkpoints.

    BatchNorm layers use batch statistics and update their running averages
    (train mode) during training; validation and the returned model use the
    running averages (eval mode).

    If ``config.checkpoint_dir`` holds a checkpoint written under the same
    trajectory-relevant config (every field but ``checkpoint_dir`` and
    ``checkpoint_every``), for the same model structure and training-set
    shape, training continues after its epoch; the final parameters equal
    those of an uninterrupted run. A checkpoint of a different run raises
    ``ValueError`` rather than being overwritten.

    Args:
      model: an NNX classifier mapping ``(B, H, W, C)`` to logits; updated in
        place and left in eval mode.
      x_train: ``(N, H, W, C)`` float images in [0, 1], or uint8 in [0, 255].
      y_train: ``(N,)`` integer labels.
      config: hyper-parameters.
      x_val: optional validation images, evaluated after every epoch.
      y_val: labels of ``x_val``.
      progress: show a tqdm progress bar with loss and accuracy.
      eval_batch_size: batch size of validation passes.
      on_epoch_end: called as ``on_epoch_end(epoch, metrics)`` after each
        epoch (and its checkpoint); returning ``True`` stops training.

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: on malformed data, a batch size larger than the training
        set, or a checkpoint directory holding another run.

    Example:
      >>> from ipguard_jax import data, models
      >>> config = TrainConfig(epochs=10, optimizer="adam", random_crop=False,
      ...                      horizontal_flip=False)
      >>> digits = data.load_digits()  # doctest: +SKIP
      >>> model = models.create("mlp", in_features=64, in_channels=1,
      ...                       rngs=nnx.Rngs(0))  # doctest: +SKIP
      >>> result = fit(model, digits.x[:1000], digits.y[:1000], config,
      ...              progress=False)  # doctest: +SKIP
      >>> result.history["epoch"][-1], result.start_epoch  # doctest: +SKIP
      (10, 0)
    """
    t_start = time.perf_counter()
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    _check_data(x_train, y_train, "x_train", "y_train")
    validate = _validator(model, x_val, y_val, eval_batch_size)
    steps_per_epoch = _steps_per_epoch(len(x_train), config.batch_size)
    tx, schedule = make_optimizer(config, config.epochs * steps_per_epoch, steps_per_epoch)
    state = TrainState.create(model, tx)
    run = run_metadata(config, x_train, state)
    step = TrainStep(state, tx, config)
    start_epoch, history, records, stopped = 0, _new_history(), [], False
    with (
        Checkpointer(config.checkpoint_dir) if config.checkpoint_dir else contextlib.nullcontext()
    ) as checkpointer:
        if checkpointer is not None:
            start_epoch, state, history = checkpointer.restore(state, run)
        # Steps donate their input state; copy so the model's own arrays stay
        # valid if the run is interrupted before it finishes.
        state = state.copy()
        x_all, y_all = jax.device_put(x_train), jax.device_put(y_train.astype(np.int32))
        if start_epoch < config.epochs:
            step.compile(state, x_all, y_all)
        bar = _ProgressBar(config, (config.epochs - start_epoch) * steps_per_epoch,
                           enabled=progress, show_val=validate is not None)
        try:
            for epoch in range(start_epoch, config.epochs):
                record = _epoch_record(step, state, x_all, y_all, epoch, schedule, validate, bar)
                records.append(record)
                for k, v in record.items():
                    history[k].append(v)
                if checkpointer is not None and _checkpoint_due(config, epoch + 1):
                    checkpointer.save(epoch + 1, state, run, history)
                if on_epoch_end is not None and on_epoch_end(epoch + 1, record):
                    stopped = epoch + 1 < config.epochs
                    break
        finally:
            bar.close()
            # On interruption too, the model gets the last completed step,
            # unless the interrupted step had already consumed (donated) it.
            if not state.consumed:
                state.update_model(model)
            model.eval()
    return TrainResult(
        model=model,
        history=history,
        wall_time_s=time.perf_counter() - t_start,
        compile_time_s=step.compile_time_s,
        images_per_s=_images_per_s(records, steps_per_epoch * config.batch_size),
        start_epoch=start_epoch,
        stopped_early=stopped,
    )


# --- the process's malloc ----------------------------------------------------

_MALLOCS = ("tcmalloc", "jemalloc")


def malloc_in_use(maps: str | os.PathLike = "/proc/self/maps") -> str:
    """Which malloc this process runs on: ``"tcmalloc"``, ``"jemalloc"`` or ``"glibc"``.

    Training on XLA's CPU backend allocates and frees large buffers on every step, which
    glibc's malloc serves slowly: on a 2-core x86-64 machine a ResNet-20 training step (batch
    128) ran 1.61x faster and the small CNN's 1.52x with tcmalloc preloaded
    (``LD_PRELOAD=libtcmalloc_minimal.so.4``; Debian/Ubuntu package ``libtcmalloc-minimal4``);
    fingerprint generation ran at the same speed (``benchmarks/results/allocator.md``).

    Args:
      maps: the process's memory map (Linux ``/proc/self/maps``); tests pass their own file.

    Returns:
      The allocator whose shared library is mapped, ``"glibc"`` if neither tcmalloc nor
      jemalloc is, ``"unknown"`` where the map cannot be read (not Linux).

    Example:
      >>> malloc_in_use() in ("tcmalloc", "jemalloc", "glibc", "unknown")
      True
    """
    try:
        with open(maps) as f:
            text = f.read()
    except OSError:
        return "unknown"
    for name in _MALLOCS:
        if f"/lib{name}" in text:
            return name
    return "glibc"


def malloc_hint() -> str | None:
    """A one-line tip to preload tcmalloc, when training here would gain from it; else ``None``.

    It is given on the CPU backend under glibc's malloc (see :func:`malloc_in_use`).

    Example:
      >>> hint = malloc_hint()
      >>> hint is None or "LD_PRELOAD" in hint
      True
    """
    if jax.default_backend() != "cpu" or malloc_in_use() != "glibc":
        return None
    return ("training on the CPU under glibc's malloc: LD_PRELOAD=libtcmalloc_minimal.so.4 "
            "(apt install libtcmalloc-minimal4) makes it about 1.5x faster")
