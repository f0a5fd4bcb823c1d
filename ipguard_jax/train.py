"""Training loop for the Flax NNX classifiers in :mod:`ipguard_jax.models`.

The model is split once (``nnx.split``) into a static graph definition and
state pytrees; each training step is a pure function of those pytrees,
compiled ahead of time with ``jax.jit`` (no per-step ``nnx.jit`` graph
traversal). The whole training set lives on the device once; a step gathers
its batch by index and augments it inside the compiled step.

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


def _make_optimizer(config: TrainConfig, total_steps: int, steps_per_epoch: int):
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


def _make_train_step(graphdef, state_def, tx, config: TrainConfig):
    """The pure training step, closed over the static graph and optimizer.

    The train state travels as a flat list of arrays: flattening nested
    ``nnx.State`` / optax pytrees on every call costs more host time than
    the step dispatch itself (~1.1 ms vs ~0.34 ms per step for ResNet-20,
    ~6 ms vs ~1 ms for ResNet-50, measured on this 2-core CPU).
    """
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
        params, opt_state, rest = jax.tree.unflatten(state_def, leaves)
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

    return jax.jit(step, donate_argnums=(0, 1))


def _epoch_permutation(seed: int, epoch: int, n: int) -> tuple[jax.Array, jax.Array]:
    """Data order and augmentation key of an epoch: functions of (seed, epoch)."""
    key = jax.random.fold_in(jax.random.key(seed), epoch)
    key_perm, key_aug = jax.random.split(key)
    return jax.random.permutation(key_perm, n).astype(jnp.int32), key_aug


# --- checkpoints -------------------------------------------------------------
# The train state is saved as its flat list of leaves (typed PRNG keys as raw
# key data) and rebuilt with the tree structure of a fresh state, so custom
# pytree nodes (nnx.State, optax states) need no orbax support.


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


class _Checkpointer:
    """Epoch checkpoints of the train state plus JSON metadata, via orbax."""

    def __init__(self, directory: str | os.PathLike):
        self._manager = ocp.CheckpointManager(
            os.path.abspath(os.fspath(directory)),
            options=ocp.CheckpointManagerOptions(
                # Two kept: the previous complete one survives while the next
                # is written (orbax also writes to a temporary directory and
                # renames it only once complete).
                max_to_keep=2,
                enable_async_checkpointing=False,
                # Remove leftovers of writes cut short by a crash.
                cleanup_tmp_directories=True,
            ),
        )

    def latest(self) -> int | None:
        return self._manager.latest_step()

    def save(self, epoch: int, state, meta: dict[str, Any]) -> None:
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flatten_state(state)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore_meta(self, epoch: int) -> dict[str, Any]:
        return self._manager.restore(
            epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta

    def restore_state(self, epoch: int, template):
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract_saved(template))
            ),
        ).state
        return unflatten_state(template, restored)

    def close(self) -> None:
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
    checkpointer = _Checkpointer(directory)
    try:
        latest = checkpointer.latest()
        if latest is None:
            return None
        return {k: list(v) for k, v in checkpointer.restore_meta(latest)["history"].items()}
    finally:
        checkpointer.close()


def _new_history() -> dict[str, list[float]]:
    return {k: [] for k in ("epoch", "loss", "accuracy", "val_accuracy", "lr", "seconds")}


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
    x_train = np.asarray(x_train)
    y_train = np.asarray(y_train)
    _check_data(x_train, y_train, "x_train", "y_train")
    has_val = x_val is not None or y_val is not None
    if has_val:
        if x_val is None or y_val is None:
            raise ValueError("x_val and y_val must be given together")
        x_val, y_val = np.asarray(x_val), np.asarray(y_val)
        _check_data(x_val, y_val, "x_val", "y_val")
    n = len(x_train)
    steps_per_epoch = n // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"TrainConfig.batch_size ({config.batch_size}) exceeds the training set size ({n})"
        )
    total_steps = config.epochs * steps_per_epoch

    graphdef, params, rest = nnx.split(_mode_view(model, train=True), nnx.Param, ...)
    eval_graphdef = nnx.split(_mode_view(model, train=False), nnx.Param, ...)[0]
    tx, schedule = _make_optimizer(config, total_steps, steps_per_epoch)
    opt_state = tx.init(params)
    state = (params, opt_state, rest)

    meta_base = {
        "format": "ipguard_jax.train/1",
        "config": config.trajectory_dict(),
        "data": {
            "n": n,
            "x_shape": list(x_train.shape[1:]),
            "x_dtype": str(x_train.dtype),
        },
        "state": _structure_signature(state),
    }
    history = _new_history()
    start_epoch = 0
    checkpointer = _Checkpointer(config.checkpoint_dir) if config.checkpoint_dir else None
    try:
        if checkpointer is not None and checkpointer.latest() is not None:
            start_epoch = checkpointer.latest()
            meta = checkpointer.restore_meta(start_epoch)
            # JSON round trip so tuples/lists and floats compare alike.
            expected = json.loads(json.dumps(meta_base))
            for key in ("format", "config", "data", "state"):
                if meta.get(key) != expected[key]:
                    raise ValueError(
                        f"checkpoint_dir {os.fspath(config.checkpoint_dir)!r} holds a "
                        f"checkpoint of another run ({key} differs); use another "
                        "directory or delete it to start over"
                    )
            state = checkpointer.restore_state(start_epoch, state)
            history = {k: list(v) for k, v in meta["history"].items()}

        leaves, state_def = jax.tree.flatten(state)
        # Steps donate their input state; copy so the model's own arrays stay
        # valid if the run is interrupted before it finishes.
        leaves = [jnp.copy(leaf) for leaf in leaves]
        x_all = jax.device_put(x_train)
        y_all = jax.device_put(y_train.astype(np.int32))
        compile_time = 0.0
        if start_epoch < config.epochs:
            step_fn = _make_train_step(graphdef, state_def, tx, config)
            zero_metrics = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
            perm0, key0 = _epoch_permutation(config.seed, 0, n)
            t_compile = time.perf_counter()
            compiled = step_fn.lower(
                leaves, zero_metrics, x_all, y_all, perm0, np.int32(0), key0
            ).compile()
            compile_time = time.perf_counter() - t_compile

        bar = tqdm(
            total=(config.epochs - start_epoch) * steps_per_epoch,
            disable=not progress,
            unit="step",
            dynamic_ncols=True,
        )
        train_seconds = 0.0
        images = 0
        stopped = False
        try:
            for epoch in range(start_epoch, config.epochs):
                bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
                perm, epoch_key = _epoch_permutation(config.seed, epoch, n)
                metrics = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
                t_epoch = time.perf_counter()
                t_shown = t_epoch
                for index in range(steps_per_epoch):
                    leaves, metrics = compiled(
                        leaves, metrics, x_all, y_all, perm, np.int32(index), epoch_key
                    )
                    bar.update(1)
                    if progress and time.perf_counter() - t_shown > 1.0:
                        # Reading metrics waits for the device: do it rarely.
                        bar.set_postfix(_running(metrics, index + 1, config.batch_size))
                        t_shown = time.perf_counter()
                loss_sum, correct_sum = jax.device_get(metrics)
                seconds = time.perf_counter() - t_epoch
                train_seconds += seconds
                images += steps_per_epoch * config.batch_size

                params, _, rest = jax.tree.unflatten(state_def, leaves)
                val_acc = (
                    _accuracy(eval_graphdef, params, rest, x_val, y_val, eval_batch_size)
                    if has_val
                    else float("nan")
                )
                record = {
                    "epoch": epoch + 1,
                    "loss": float(loss_sum) / steps_per_epoch,
                    "accuracy": float(correct_sum) / (steps_per_epoch * config.batch_size),
                    "val_accuracy": val_acc,
                    "lr": float(schedule((epoch + 1) * steps_per_epoch - 1)),
                    "seconds": seconds,
                }
                for k, v in record.items():
                    history[k].append(v)
                shown = ("loss", "accuracy", "val_accuracy") if has_val else ("loss", "accuracy")
                bar.set_postfix({k: f"{record[k]:.4f}" for k in shown})

                done = epoch + 1
                if checkpointer is not None and (
                    done % config.checkpoint_every == 0 or done == config.epochs
                ):
                    checkpointer.save(done, leaves, {**meta_base, "history": history})
                if on_epoch_end is not None and on_epoch_end(done, record):
                    stopped = done < config.epochs
                    break
        finally:
            bar.close()
            # On interruption too, the model gets the last completed step,
            # unless the interrupted step had already consumed (donated) it.
            if not any(leaf.is_deleted() for leaf in leaves):
                params, _, rest = jax.tree.unflatten(state_def, leaves)
                nnx.update(model, params, rest)
            model.eval()
    finally:
        if checkpointer is not None:
            checkpointer.close()

    return TrainResult(
        model=model,
        history=history,
        wall_time_s=time.perf_counter() - t_start,
        compile_time_s=compile_time,
        images_per_s=images / train_seconds if train_seconds > 0 else float("nan"),
        start_epoch=start_epoch,
        stopped_early=stopped,
    )


def _running(metrics, steps: int, batch_size: int) -> dict[str, str]:
    loss_sum, correct_sum = jax.device_get(metrics)
    return {
        "loss": f"{float(loss_sum) / steps:.4f}",
        "accuracy": f"{float(correct_sum) / (steps * batch_size):.4f}",
    }


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
