"""Classifier: constructors (plain, NNX, Linen), predictions, hashing, input checks."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ipguard_jax as ipg


class BNNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn(self.conv(x)))
        return self.head(self.drop(h.mean(axis=(1, 2))))


def _train_bn_stats(model):
    model.train()
    for seed in range(3):
        model(jax.random.uniform(jax.random.key(seed), (16, 6, 6, 1)) * 3.0)


def test_from_nnx_uses_evaluation_mode_and_leaves_the_module_alone():
    model = BNNet(nnx.Rngs(0))
    _train_bn_stats(model)
    clf = ipg.Classifier.from_nnx(model, input_shape=(6, 6, 1))
    x = jax.random.uniform(jax.random.key(9), (5, 6, 6, 1))
    assert clf.num_classes == 3
    # deterministic (no dropout) and uses the running statistics
    np.testing.assert_array_equal(clf(x), clf(x))
    assert model.bn.use_running_average is False  # the caller's module is still in train mode
    model.eval()
    np.testing.assert_allclose(clf(x), model(x), atol=1e-6)
    # and the gradient w.r.t. the input flows
    grad = jax.grad(lambda x: clf.apply_fn(clf.params, x)[:, 0].sum())(x)
    assert bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).sum()) > 0


def test_from_nnx_input_shape_from_attribute_or_error():
    model = BNNet(nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_shape is required"):
        ipg.Classifier.from_nnx(model)
    model.input_shape = (6, 6, 1)
    assert ipg.Classifier.from_nnx(model).input_shape == (6, 6, 1)
    with pytest.raises(TypeError, match="nnx.Module"):
        ipg.Classifier.from_nnx(lambda x: x, input_shape=(3,))


def test_from_linen_with_batch_stats():
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x, train: bool):
            x = linen.Dense(8)(x.reshape(len(x), -1))
            x = linen.BatchNorm(use_running_average=not train)(x)
            return linen.Dense(4)(linen.relu(x))

    net = Net()
    variables = net.init(jax.random.key(0), jnp.ones((2, 5)), train=False)
    clf = ipg.Classifier.from_linen(net, variables, input_shape=(5,), train=False)
    x = jax.random.uniform(jax.random.key(1), (3, 5))
    np.testing.assert_allclose(clf(x), net.apply(variables, x, train=False), atol=1e-6)
    assert clf.predict(x).shape == (3,)


def test_predict_in_batches_equals_argmax(owner, digits):
    x = digits["test"][0]
    np.testing.assert_array_equal(owner.predict(x, batch_size=50),
                                  np.asarray(owner(x)).argmax(1))


def test_params_hash_is_stable_and_sensitive(owner):
    params = jax.tree.map(lambda a: np.array(a), owner.params)
    assert ipg.params_hash(params) == owner.params_hash
    params[0][0][0, 0] += 1e-3
    assert ipg.params_hash(params) != owner.params_hash
    model = BNNet(nnx.Rngs(0))
    h1 = ipg.Classifier.from_nnx(model, input_shape=(6, 6, 1)).params_hash
    assert h1 == ipg.Classifier.from_nnx(BNNet(nnx.Rngs(0)), input_shape=(6, 6, 1)).params_hash
    assert h1 != ipg.Classifier.from_nnx(BNNet(nnx.Rngs(1)), input_shape=(6, 6, 1)).params_hash


def _linear(p, x):
    return x @ p


def test_constructor_errors():
    w = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="lo < hi"):
        ipg.Classifier(_linear, w, (4,), bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="lo < hi"):
        ipg.Classifier(_linear, w, (4,), bounds=(0.5, 0.5))
    with pytest.raises(ValueError, match="finite"):
        ipg.Classifier(_linear, w, (4,), bounds=(0.0, np.inf))
    with pytest.raises(TypeError, match="pair of numbers"):
        ipg.Classifier(_linear, w, (4,), bounds=0.5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ipg.Classifier(_linear, jnp.ones((4, 1)), (4,))
    with pytest.raises(ValueError, match="apply_fn fails"):
        ipg.Classifier(_linear, w, (5,))
    with pytest.raises(ValueError, match="positive ints"):
        ipg.Classifier(_linear, w, (0,))
    with pytest.raises(TypeError, match="callable"):
        ipg.Classifier("model", w, (4,))
    with pytest.raises(ValueError, match=r"shape \(N, num_classes\)"):
        ipg.Classifier(lambda p, x: x @ p[:, 0], w, (4,))
    with pytest.raises(TypeError, match="floating logits"):
        ipg.Classifier(lambda p, x: jnp.argsort(x @ p), w, (4,))
    with pytest.raises(TypeError, match="floating dtype"):
        ipg.Classifier(_linear, w, (4,), dtype=jnp.int32)


def test_call_input_errors():
    clf = ipg.Classifier(_linear, jnp.ones((4, 3)), (4,))
    with pytest.raises(ValueError, match=r"must have shape \(N, 4\)"):
        clf(jnp.ones((2, 5)))
    with pytest.raises(TypeError, match="scale uint8"):
        clf(np.ones((2, 4), np.uint8))
    with pytest.raises(ValueError, match="NaN or inf"):
        clf(np.array([[0.0, np.nan, 0.0, 0.0]], np.float32))
    with pytest.raises(ValueError, match="empty"):
        clf(np.zeros((0, 4), np.float32))
    assert "params_hash" in repr(clf)


def test_from_linen_rejects_other_objects():
    with pytest.raises(TypeError, match="flax.linen.Module"):
        ipg.Classifier.from_linen(object(), {}, input_shape=(3,))


@pytest.mark.parametrize("bad_row", [[np.nan, 1.0, 0.0], [np.inf, np.inf, np.inf],
                                     [-np.inf, -np.inf, -np.inf], [np.nan, np.inf, -np.inf]])
def test_predict_refuses_logits_without_a_defined_label(bad_row):
    """A model whose logits for an input are NaN or all infinite gives no label there: argmax
    would silently answer 0."""
    table = jnp.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], bad_row, [np.inf, 0.0, -np.inf]])
    clf = ipg.Classifier(lambda p, x: p[x[:, 0].astype(jnp.int32)], table, input_shape=(1,))
    x = jnp.arange(4.0)[:, None]
    with pytest.raises(ValueError, match=r"NaN logits, or no finite logit, for 1 of 2 inputs "
                                         r"\(the first is input 2\)"):
        clf.predict(x, batch_size=2)
    assert clf.predict(x[jnp.array([0, 1, 3])]).tolist() == [1, 0, 0]  # one +inf: defined
