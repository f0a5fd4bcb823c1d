"""Training loop: config validation, accuracy on digits, augmentation, checkpoint resume."""

import dataclasses
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from ipguard_jax import models, params_hash
from ipguard_jax.data import load_digits
from ipguard_jax.train import (
    TrainConfig,
    TrainState,
    TrainStep,
    augment,
    evaluate,
    fit,
    make_optimizer,
    train_epoch,
)


def build(fn):
    # One compiled init program with the "rbg" generator: much faster to
    # compile on CPU than eager threefry init, and just as deterministic.
    return nnx.jit(fn)()


def rngs(seed):
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@pytest.fixture(scope="module")
def digits_split():
    """sklearn digits as (N, 8, 8, 1) float32 in [0, 1]: 1400 train, 397 test."""
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits))
    x, y = digits.x[order], digits.y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


DIGITS = dict(random_crop=False, horizontal_flip=False)


@pytest.fixture(scope="module")
def trained_mlp(digits_split):
    x, y, x_test, y_test = digits_split
    model = build(
        lambda: models.create("mlp", in_features=64, in_channels=1, hidden=(128,), rngs=rngs(0))
    )
    config = TrainConfig(epochs=5, batch_size=64, optimizer="adam", lr=3e-3, **DIGITS)
    result = fit(model, x, y, config, x_val=x_test, y_val=y_test, progress=True)
    return model, result


def test_mlp_reaches_90_percent_on_digits(trained_mlp, digits_split):
    model, result = trained_mlp
    _, _, x_test, y_test = digits_split
    assert result.model is model
    assert evaluate(model, x_test, y_test) >= 0.9
    assert result.history["epoch"] == [1, 2, 3, 4, 5]
    assert result.history["val_accuracy"][-1] == evaluate(model, x_test, y_test)
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.images_per_s > 0 and result.compile_time_s > 0
    assert result.start_epoch == 0 and not result.stopped_early
    assert result.history["lr"][-1] < 1e-6  # cosine decay to zero


def test_evaluate_pads_the_last_batch_and_accepts_uint8(trained_mlp, digits_split):
    model, _ = trained_mlp
    _, _, x_test, y_test = digits_split
    full = evaluate(model, x_test, y_test, batch_size=len(x_test))
    assert evaluate(model, x_test, y_test, batch_size=50) == full  # 397 = 7 * 50 + 47
    x_u8 = np.round(x_test * 255).astype(np.uint8)
    assert abs(evaluate(model, x_u8, y_test) - full) <= 2 / len(y_test)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 2.5),
        ("batch_size", 0),
        ("optimizer", "rmsprop"),
        ("lr", -0.1),
        ("lr", float("nan")),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("label_smoothing", 1.0),
        ("warmup_epochs", 40),
        ("crop_padding", -1),
        ("crop_pad_mode", "edge"),
        ("horizontal_flip", "yes"),
        ("checkpoint_every", 0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_config_default_learning_rates():
    assert TrainConfig().learning_rate == 0.1
    assert TrainConfig(optimizer="adam").learning_rate == 1e-3
    assert TrainConfig(optimizer="adam", lr=0.5).learning_rate == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3


def test_fit_rejects_bad_data(digits_split):
    x, y, _, _ = digits_split
    model = models.MLP(64, in_channels=1, hidden=(4,), rngs=rngs(0))
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, x[:10], y[:10], TrainConfig(batch_size=64), progress=False)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        fit(model, x[:, :, :, 0], y, progress=False)
    with pytest.raises(ValueError, match="y_train"):
        fit(model, x, y[:-1], progress=False)
    with pytest.raises(ValueError, match="together"):
        fit(model, x, y, x_val=x, progress=False)


def test_augment_flips_and_crops_per_image():
    x = np.random.default_rng(0).uniform(size=(16, 6, 6, 2)).astype(np.float32)
    key = jax.random.key(0)
    flipped = np.asarray(augment(x, key, random_crop=False, horizontal_flip=True))
    is_flip = [np.array_equal(f, a[:, ::-1]) for f, a in zip(flipped, x)]
    is_same = [np.array_equal(f, a) for f, a in zip(flipped, x)]
    assert all(a or b for a, b in zip(is_flip, is_same))
    assert 0 < sum(is_flip) < len(x)

    cropped = np.asarray(augment(x, key, crop_padding=2, horizontal_flip=False))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for c, p in zip(cropped, padded):
        windows = [p[i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(np.array_equal(c, w) for w in windows)
    reflected = np.asarray(
        augment(x, key, crop_padding=2, pad_mode="reflect", horizontal_flip=False)
    )
    assert np.isin(reflected, x).all()  # reflection copies pixels, adds no zeros
    np.testing.assert_array_equal(cropped, augment(x, key, crop_padding=2, horizontal_flip=False))


# A BatchNorm + dropout model with every augmentation and schedule feature
# on, trained for 4 epochs once uninterrupted and once with a crash after
# epoch 2 followed by a resume.
RESUME_CONFIG = TrainConfig(
    epochs=4,
    batch_size=32,
    optimizer="sgd",
    lr=0.05,
    nesterov=True,
    warmup_epochs=1,
    label_smoothing=0.1,
    crop_padding=2,
    crop_pad_mode="reflect",
    seed=3,
)


def small_cnn():
    return build(
        lambda: models.create("cnn", in_channels=1, widths=(8, 16), dropout=0.2, rngs=rngs(1))
    )


@pytest.fixture(scope="module")
def uninterrupted(digits_split):
    x, y, _, _ = digits_split
    model = small_cnn()
    initial_stats = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    result = fit(model, x[:384], y[:384], RESUME_CONFIG, progress=False)
    return model, result, initial_stats


class Crash(Exception):
    pass


# slow: a CNN trained twice more; fit's resumption (stopped, resumed, the same parameters)
# stays in the default suite in tests/test_evaluation.py::
# test_a_benchmark_model_stopped_part_way_resumes_to_the_same_parameters[mlp-kwargs0]
@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(uninterrupted, digits_split, tmp_path):
    x, y, _, _ = digits_split
    x, y = x[:384], y[:384]
    reference, reference_result, _ = uninterrupted
    config = dataclasses.replace(RESUME_CONFIG, checkpoint_dir=str(tmp_path))

    def crash_after_two(epoch, metrics):
        if epoch == 2:
            raise Crash

    crashed = small_cnn()
    with pytest.raises(Crash):
        fit(crashed, x, y, config, progress=False, on_epoch_end=crash_after_two)
    # A write cut short by the crash leaves a temporary directory behind.
    os.makedirs(tmp_path / "3.orbax-checkpoint-tmp-1234" / "state")
    (tmp_path / "3.orbax-checkpoint-tmp-1234" / "state" / "junk").write_text("partial")

    resumed = small_cnn()
    result = fit(resumed, x, y, config, progress=False)
    assert result.start_epoch == 2
    assert result.history["epoch"] == [1, 2, 3, 4]
    np.testing.assert_allclose(result.history["loss"], reference_result.history["loss"], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
        jax.tree.map(np.asarray, nnx.state(resumed, nnx.Param)),
        jax.tree.map(np.asarray, nnx.state(reference, nnx.Param)),
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
        jax.tree.map(np.asarray, nnx.state(resumed, nnx.BatchStat)),
        jax.tree.map(np.asarray, nnx.state(reference, nnx.BatchStat)),
    )

    # A finished run resumes to the end without training.
    again = small_cnn()
    result = fit(again, x, y, config, progress=False)
    assert result.start_epoch == 4 and np.isnan(result.images_per_s)
    np.testing.assert_array_equal(again.head.kernel[...], resumed.head.kernel[...])

    # Another run's checkpoint is refused, not overwritten.
    with pytest.raises(ValueError, match="another run"):
        fit(small_cnn(), x, y, dataclasses.replace(config, lr=0.1), progress=False)


def test_batchnorm_statistics_update_in_training_and_serve_in_eval(uninterrupted, digits_split):
    model, _, initial_stats = uninterrupted
    _, _, x_test, y_test = digits_split
    trained_stats = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), initial_stats, trained_stats)
    assert all(jax.tree.leaves(changed))
    # fit leaves the model in eval mode: running statistics, no dropout.
    assert model.stages[0][0].bn.use_running_average
    assert model.dropout.deterministic
    logits = nnx.jit(lambda m, x: m(x))(model, x_test)
    manual = float(np.mean(np.argmax(logits, -1) == y_test))
    assert evaluate(model, x_test, y_test) == pytest.approx(manual)
    assert manual > 0.2  # 48 steps of a tiny CNN with flips on digits: above chance

    # evaluate does not switch a model in train mode to eval mode.
    model.train()
    evaluate(model, x_test[:10], y_test[:10])
    assert not model.stages[0][0].bn.use_running_average
    model.eval()


# Digests (``ipguard_jax.params_hash``) of the two fixtures' trained models, computed with the
# train.py of before its split into make_optimizer / TrainState / TrainStep / train_epoch /
# Checkpointer: the same config and data must still give the same parameters bit for bit. XLA
# may round sums in another order on another platform (docs/determinism.md), so the digests
# are checked only on the one that wrote them.
PINNED_PLATFORM = {
    "jax": "0.10.2", "jaxlib": "0.10.2", "flax": "0.12.8", "optax": "0.2.8",
    "machine": "x86_64", "backend": "cpu",
    "cpu": "avx,avx2,avx512_bf16,avx512_bitalg,avx512_vbmi2,avx512_vnni,avx512_vpopcntdq,"
           "avx512bw,avx512cd,avx512dq,avx512f,avx512ifma,avx512vbmi,avx512vl,fma,sse4_1,"
           "sse4_2,sse4a",
}
PINNED_MLP_PARAMS = "f2810300aa9e1a9d512b846bfc29e329c40b736ef37ac25faf8fadf55621f8c8"
PINNED_CNN_PARAMS_AND_STATS = "9ed86f4b2d7c63af591816735aff8b10d76c9bdb73b77959fc7e6c8b7b4577d4"


def _platform() -> dict[str, str]:
    flags = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                names = line.split(":", 1)[1].split()
                flags = ",".join(sorted(f for f in names if f.startswith(("avx", "fma", "sse4"))))
                break
    except OSError:
        pass
    versions = {name: metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")}
    return {**versions, "machine": platform.machine(), "backend": jax.default_backend(),
            "cpu": flags}


def test_fixed_configs_train_to_the_pinned_parameters(trained_mlp, uninterrupted):
    if _platform() != PINNED_PLATFORM:
        pytest.skip("digests pinned on another platform: "
                    f"{json.dumps(PINNED_PLATFORM)}, here {json.dumps(_platform())}")
    mlp, _ = trained_mlp
    cnn, _, _ = uninterrupted
    assert params_hash(nnx.state(mlp, nnx.Param)) == PINNED_MLP_PARAMS  # Adam(W), validation
    # SGD with Nesterov, warmup, label smoothing, reflect-padded crops, flips, BatchNorm, dropout
    assert params_hash(nnx.state(cnn, nnx.Param, nnx.BatchStat)) == PINNED_CNN_PARAMS_AND_STATS


def test_public_pieces_train_as_fit_does(digits_split):
    """make_optimizer, TrainState, TrainStep and train_epoch by hand give fit's parameters."""
    x, y, _, _ = digits_split
    x, y = x[:200], y[:200]  # 3 steps of 64 per epoch, 8 images dropped
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, crop_padding=1, seed=7)

    def mlp():
        return build(lambda: models.create("mlp", in_features=64, in_channels=1, hidden=(16,),
                                           dropout=0.1, rngs=rngs(2)))

    reference = mlp()
    result = fit(reference, x, y, config, progress=False)

    model = mlp()
    steps = len(x) // config.batch_size
    tx, schedule = make_optimizer(config, config.epochs * steps, steps)
    state = TrainState.create(model, tx).copy()
    x_all, y_all = jax.device_put(x), jax.device_put(y.astype(np.int32))
    step = TrainStep(state, tx, config)
    lowered = step.lower(state, x_all, y_all)
    assert "dynamic_slice" in lowered.as_text()  # the batch is gathered on the device
    assert step.compiled is None and step.compile_time_s == 0.0
    step.compile(state, x_all, y_all)
    assert step.compile_time_s > 0
    seen = []
    losses = [train_epoch(step, state, x_all, y_all, epoch,
                          on_step=lambda i, metrics: seen.append(i))[0]
              for epoch in range(config.epochs)]
    assert seen == [0, 1, 2] * config.epochs
    assert losses == result.history["loss"]
    assert float(schedule(config.epochs * steps - 1)) == result.history["lr"][-1]
    state.update_model(model)
    assert params_hash(nnx.state(model)) == params_hash(nnx.state(reference))


MAPS_LINE = "7f0000000000-7f0000001000 r-xp 00000000 08:01 123 {}\n"


@pytest.mark.parametrize("libraries, expected", [
    (["/usr/lib/x86_64-linux-gnu/libc.so.6"], "glibc"),
    (["/usr/lib/x86_64-linux-gnu/libc.so.6",
      "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10"], "tcmalloc"),
    (["/opt/lib/libjemalloc.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6"], "jemalloc"),
    # A file that merely mentions an allocator is not one.
    (["/home/me/site-packages/tcmalloc_stats/plugin.so"], "glibc"),
])
def test_malloc_in_use_reads_the_memory_map(libraries, expected, tmp_path):
    from ipguard_jax.train import malloc_in_use

    maps = tmp_path / "maps"
    maps.write_text("".join(MAPS_LINE.format(lib) for lib in libraries))
    assert malloc_in_use(maps) == expected
    assert malloc_in_use(tmp_path / "missing") == "unknown"


# slow: starts Python with tcmalloc preloaded; malloc_in_use stays in the default suite in
# test_malloc_in_use_reads_the_memory_map
@pytest.mark.slow
def test_malloc_in_use_sees_a_preloaded_tcmalloc():
    import ctypes.util
    import subprocess
    import sys

    library = ctypes.util.find_library("tcmalloc_minimal")
    if library is None:
        pytest.skip("tcmalloc is not installed (apt install libtcmalloc-minimal4)")
    code = "from ipguard_jax.train import malloc_in_use; print(malloc_in_use())"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    seen = [subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                           check=True).stdout.strip()
            for e in (env, {**env, "LD_PRELOAD": library})]
    assert seen == ["glibc", "tcmalloc"]

