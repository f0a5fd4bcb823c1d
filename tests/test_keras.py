"""Keras 3 models (JAX backend) as classifiers: logits, gradients, fingerprints, saved files."""

import os

# Keras reads its backend once, at its first import.
os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":  # imported earlier in this process on another backend
    pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend",
                allow_module_level=True)

import ipguard_jax as ipg  # noqa: E402

# Keras 3.15 saves variables through np.array(variable) without numpy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras.*")
from ipguard_jax._keras import SoftmaxOutputWarning, classifier_from_keras  # noqa: E402


def _conv_bn_model(softmax=False):
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax" if softmax else None),
    ])


@pytest.fixture(scope="module")
def keras_model(digits):
    keras.utils.set_random_seed(0)
    model = _conv_bn_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = digits["owner"]
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def keras_owner(keras_model):
    return ipg.Classifier.from_keras(keras_model)


def test_logits_equal_keras_and_batchnorm_uses_moving_stats(keras_model, keras_owner, digits):
    x = digits["test"][0][:50]
    assert keras_owner.input_shape == (8, 8, 1) and keras_owner.num_classes == 10
    ours = np.asarray(keras_owner(x))
    np.testing.assert_allclose(ours, np.asarray(keras_model(x, training=False)), atol=1e-5)
    np.testing.assert_allclose(ours, keras_model.predict(x, verbose=0), atol=1e-5)
    # fitting moved the BatchNorm statistics away from their initial values
    moving_mean = keras_model.layers[1].moving_mean
    assert float(jnp.abs(moving_mean.value).max()) > 0
    # inference mode: one example's logits do not depend on the rest of the batch
    np.testing.assert_allclose(np.asarray(keras_owner(x[:1])), ours[:1], atol=1e-5)


def test_input_gradients_flow(keras_owner, digits):
    x = jnp.asarray(digits["test"][0][:8])

    def margin(x):
        z = keras_owner.apply_fn(keras_owner.params, x)
        return (z[:, 3] - z[:, 5]).sum()

    grad = jax.jit(jax.grad(margin))(x)
    assert grad.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(jnp.abs(grad).sum(axis=(1, 2, 3)) > 0))  # nonzero for every example


def test_generate_and_verify_on_keras(keras_model, keras_owner, digits):
    config = ipg.FingerprintConfig(num=16, k=1.0, steps=300)
    fingerprints = ipg.generate(keras_owner, config, key=0, data=digits["test"][0],
                                progress=False)
    assert len(fingerprints) == 16 and fingerprints.converged.all()
    assert ipg.verify(fingerprints, keras_owner).matching_rate == 1.0
    # Keras itself, as a black-box suspect, gives the same labels
    keras_api = lambda x: keras_model.predict(x, verbose=0)  # noqa: E731
    assert ipg.matching_rate(fingerprints, keras_api) == 1.0


def test_saved_keras_file_gives_same_params_hash(keras_model, keras_owner, tmp_path, digits):
    path = tmp_path / "owner.keras"
    keras_model.save(path)
    loaded = ipg.Classifier.from_keras(keras.models.load_model(path))
    assert loaded.params_hash == keras_owner.params_hash
    x = digits["test"][0][:10]
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(keras_owner(x)))


def test_functional_model_and_explicit_input_shape():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 1))
    h = keras.layers.Conv2D(4, 3)(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    with pytest.raises(ValueError, match="variable input shape"):
        classifier_from_keras(model)
    clf = classifier_from_keras(model, input_shape=(6, 6, 1), bounds=(-1.0, 1.0))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 6, 6, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(clf(x)), np.asarray(model(x)), atol=1e-5)
    assert clf.bounds == (-1.0, 1.0)


def test_softmax_output_warns_or_is_stripped(keras_model):
    keras.utils.set_random_seed(2)
    probs_model = _conv_bn_model(softmax=True)
    probs_model.set_weights(keras_model.get_weights())
    x = np.random.default_rng(0).uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
    with pytest.warns(SoftmaxOutputWarning, match="strip_softmax=True"):
        probs = classifier_from_keras(probs_model)
    np.testing.assert_allclose(np.asarray(probs(x)).sum(axis=1), 1.0, atol=1e-5)
    stripped = classifier_from_keras(probs_model, strip_softmax=True)
    np.testing.assert_allclose(np.asarray(stripped(x)), np.asarray(keras_model(x)), atol=1e-5)
    assert stripped.params_hash == ipg.Classifier.from_keras(keras_model).params_hash
    # the original model is untouched
    np.testing.assert_allclose(np.asarray(probs_model(x)), np.asarray(probs(x)), atol=1e-6)
    with pytest.raises(ValueError, match="does not end in a softmax"):
        classifier_from_keras(keras_model, strip_softmax=True)


def test_outputs_that_are_not_logits_are_refused():
    sigmoid = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    with pytest.raises(ValueError, match="two logits"):
        classifier_from_keras(sigmoid)
    image_out = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match=r"logits of shape \(N, num_classes\)"):
        classifier_from_keras(image_out)
    with pytest.raises(TypeError, match="keras.Model"):
        classifier_from_keras(lambda x: x)


def test_wrong_backend_message_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax before keras is first imported"):
        classifier_from_keras(model)
