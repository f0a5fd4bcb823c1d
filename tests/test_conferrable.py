"""Conferrable boundary points on the engine, and the factories of surrogates and references."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ipguard_jax as ipg
from ipguard_jax import engine
from ipguard_jax.conferrable import Conferrable, member_lead, stack_members
from ipguard_jax.evaluation import ModelCache, factories
from ipguard_jax.evaluation import postprocess as pp
from tests.conftest import mlp_apply, train_mlp


@pytest.fixture(scope="module")
def members(digits):
    """Two surrogates (the owner's data, other seeds) and two references (other data)."""
    (xo, yo), (xi, yi) = digits["owner"], digits["other"]
    make = lambda x, y, seed: ipg.Classifier(mlp_apply, train_mlp(x, y, seed=seed),
                                             input_shape=(8, 8, 1))
    return ({"s1": make(xo, yo, 11), "s2": make(xo, yo, 12)},
            {"r1": make(xi, yi, 13), "r2": make(xi, yi, 14)})


def _generate(owner, digits, method, num=24, key=0, **config):
    config = ipg.FingerprintConfig(num=num, **config)
    return ipg.generate(owner, config, key=key, data=digits["test"][0], method=method,
                        progress=False)


# slow: the property stays in the default suite in the doctest of ipguard_jax.conferrable
# (generate with Conferrable: points the surrogate gives and the reference does not), the
# method's objective in test_loss_is_ipguard_plus_the_member_hinges
@pytest.mark.slow
def test_points_are_given_by_every_surrogate_and_by_no_reference(owner, digits, members):
    surrogates, references = members
    method = Conferrable(surrogates=surrogates, references=references)
    fp = _generate(owner, digits, method)
    assert len(fp) == 24 and fp.converged.all()
    np.testing.assert_array_equal(fp.labels, fp.j)
    for m in surrogates.values():
        np.testing.assert_array_equal(m.predict(fp.x), fp.labels)
    for m in references.values():
        assert not (m.predict(fp.x) == fp.labels).any()
    # The margins hold too: every surrogate leads with j by >= 1, every reference trails.
    for m in surrogates.values():
        assert (np.asarray(member_lead_batch(m, fp)) >= 1.0 - 1e-4).all()
    for m in references.values():
        assert (np.asarray(member_lead_batch(m, fp)) <= -1.0 + 1e-4).all()
    screening = fp.metadata["screening"]
    assert screening["kept"] >= 24 and screening["surrogates"] == 2
    assert screening["candidates"] >= screening["owner_converged"] >= screening["kept"]
    method_record = fp.metadata["method"]
    assert method_record["name"] == "conferrable"
    assert [r["name"] for r in method_record["params"]["references"]] == ["r1", "r2"]
    assert method_record["params"]["surrogates"][0]["params_sha256"] == surrogates["s1"].params_hash
    json.dumps(fp.metadata)  # provenance stays JSON


def member_lead_batch(member, fp):
    logits = member(fp.x)
    return jnp.stack([member_lead(logits[n][None], int(fp.j[n]))[0] for n in range(len(fp))])


def test_plain_ipguard_points_do_not_have_that_property(owner, digits, members):
    # The control: the same owner, key and start points without the member terms.
    _, references = members
    fp = _generate(owner, digits, "ipguard")
    given = np.mean([(m.predict(fp.x) == fp.labels).mean() for m in references.values()])
    assert given > 0.1  # IPGuard's points are often given by independent models too


def test_loss_is_ipguard_plus_the_member_hinges(owner, members):
    surrogates, references = members
    method = Conferrable(surrogates=surrogates, references=references, surrogate_margin=0.5,
                         reference_margin=2.0, surrogate_weight=0.3, reference_weight=2.0)
    plan = method.plan(ipg.FingerprintConfig())
    hyper = {name: jnp.float32(v) if isinstance(v, float) else v
             for name, v in method.hyper(ipg.FingerprintConfig()).items()}
    hyper["k"] = jnp.float32(3.0)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 8, 1)), jnp.float32)
    point = {"i": jnp.int32(2), "j": jnp.int32(5)}
    got = plan.objective.loss(owner(x[None])[0], x, point, hyper)
    lead = lambda m: float(member_lead(m(x[None]), 5)[0])
    expected = float(engine.ipguard_loss(owner(x[None])[0], 2, 5, 3.0))
    expected += 0.3 * np.mean([max(0.0, 0.5 - lead(m)) for m in surrogates.values()])
    expected += 2.0 * np.mean([max(0.0, lead(m) + 2.0) for m in references.values()])
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_shares_free_the_worst_members(owner, members):
    # With min_references=0.5 of two references only the better-placed one counts.
    surrogates, references = members
    method = Conferrable(references=references, min_references=0.5)
    assert method.references_needed == 1 and method.surrogates_needed == 0
    hyper = {name: jnp.float32(v) if isinstance(v, float) else v
             for name, v in method.hyper(ipg.FingerprintConfig()).items()}
    hyper["k"] = jnp.float32(0.0)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 8, 1)), jnp.float32)
    j = int(owner(x[None])[0].argmax())
    i = (j + 1) % 10
    loss = method.plan(ipg.FingerprintConfig()).objective.loss(
        owner(x[None])[0], x, {"i": jnp.int32(i), "j": jnp.int32(j)}, hyper)
    gaps = sorted(max(0.0, float(member_lead(m(x[None]), j)[0]) + 1.0)
                  for m in references.values())
    owner_part = float(engine.ipguard_loss(owner(x[None])[0], i, j, 0.0))
    np.testing.assert_allclose(float(loss), owner_part + gaps[0], rtol=1e-5)


@pytest.mark.slow  # trains models or builds a zoo of members
def test_same_key_same_points(owner, digits, members):
    method = Conferrable(surrogates=members[0], references=members[1])
    a = _generate(owner, digits, method, num=8, key=5)
    b = _generate(owner, digits, method, num=8, key=5)
    np.testing.assert_array_equal(a.x, b.x)


@pytest.mark.slow  # trains models or builds a zoo of members
def test_members_of_one_architecture_share_a_stacked_group():
    x_shape = (8, 8, 1)
    cnn = [ipg.Classifier.from_nnx(pp.build_model("cnn", 10, s, in_channels=1), x_shape)
           for s in (0, 1)]
    mlp = ipg.Classifier.from_nnx(pp.build_model("mlp", 10, 2, in_features=64, in_channels=1),
                                  x_shape)
    groups = stack_members([cnn[0], mlp, cnn[1]])
    assert [g.size for g in groups] == [2, 1]
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, *x_shape)), jnp.float32)
    import jax
    stacked = jax.vmap(lambda p: groups[0].apply_fn(p, x)[0])(groups[0].params)
    np.testing.assert_allclose(stacked[1], cnn[1](x)[0], rtol=1e-5, atol=1e-5)


def test_ipguard_settings_held_by_the_method_are_the_runs(owner, digits, members):
    method = Conferrable(surrogates=members[0], references=members[1], k=4.0, steps=20)
    fp = _generate(owner, digits, method, num=4, keep="all")
    assert fp.metadata["config"]["k"] == 4.0 and fp.metadata["config"]["steps"] == 20
    assert int(fp.steps.max()) <= 20
    assert "k" not in fp.metadata["method"]["params"]
    with pytest.raises(ValueError, match=r"steps is set twice: Conferrable\(steps=20\)"):
        _generate(owner, digits, method, num=4, steps=30)
    with pytest.raises(ValueError, match="k must be >= 0"):
        Conferrable(surrogates=members[0], k=-2.0)


def test_bad_members_and_parameters_are_refused(owner, members):
    surrogates, _ = members
    with pytest.raises(ValueError, match="at least one surrogate or reference"):
        Conferrable()
    with pytest.raises(TypeError, match="wrap it"):
        Conferrable(surrogates=owner)
    with pytest.raises(TypeError, match=r"surrogates\['x'\] must be an ipguard_jax.Classifier"):
        Conferrable(surrogates={"x": np.eye(3)})
    with pytest.raises(ValueError, match="surrogate_margin must be a finite number >= 0"):
        Conferrable(surrogates=surrogates, surrogate_margin=-1.0)
    with pytest.raises(ValueError, match=r"min_references must be a share in \(0, 1\]"):
        Conferrable(surrogates=surrogates, min_references=0)
    with pytest.raises(ValueError, match="needs its surrogate and reference models"):
        ipg.generate(owner, ipg.FingerprintConfig(num=2, init="noise"), method="conferrable")
    small = ipg.Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
    with pytest.raises(ValueError, match="surrogate 'small' has input_shape"):
        ipg.generate(owner, ipg.FingerprintConfig(num=2, init="noise"),
                     method=Conferrable(surrogates={"small": small}), progress=False)
    assert "s1" in repr(Conferrable(surrogates=surrogates))
    import dataclasses

    wider = dataclasses.replace(Conferrable(surrogates=surrogates), reference_margin=5.0)
    assert [n for n, _ in wider.surrogates] == ["s1", "s2"] and wider.reference_margin == 5.0


# --- factories ---------------------------------------------------------------------------------

def _nnx_owner(digits, shift=0):
    from ipguard_jax import train

    x, y = digits["owner"]
    model = pp.build_model("mlp", 10, 0, in_features=64, in_channels=1)
    train.fit(model, x, (y + shift) % 10, train.TrainConfig(epochs=30, batch_size=64, optimizer="adam", lr=3e-3, random_crop=False, horizontal_flip=False),
              progress=False)
    model.eval()
    return model


@pytest.mark.slow  # trains models or builds a zoo of members
def test_extraction_learns_the_owners_answers_from_hard_labels(digits):
    # An owner that answers (true class + 1) mod 10: a student that learns from its answers,
    # not from the data's own labels, inherits the shift.
    owner = _nnx_owner(digits, shift=1)
    x = digits["other"][0]
    student = pp.extract(owner, x, pp.PirateConfig(epochs=20, lr=3e-3), student="mlp",
                         student_kwargs={"in_features": 64, "in_channels": 1})
    xt, yt = digits["test"]
    said = pp.apply_batched(student, xt).argmax(-1)
    assert (said == pp.apply_batched(owner, xt).argmax(-1)).mean() > 0.7
    assert (said == yt).mean() < 0.1


@pytest.mark.slow  # trains models or builds a zoo of members
def test_factories_make_cache_and_resume_members(digits, tmp_path):
    owner = _nnx_owner(digits)
    x, y = digits["owner"]
    specs = [("half", "prune", {"rate": 0.5}),
             ("ext", "extract", {"student": "mlp",
                                 "student_kwargs": {"in_features": 64, "in_channels": 1}})]
    cache = ModelCache(tmp_path)
    seen = []
    made = factories.make_surrogates(owner, x, y, specs, config=pp.PirateConfig(epochs=2),
                                     cache=cache, on_model=lambda n, r, m: seen.append(r))
    assert list(made) == ["half", "ext"] and cache.misses == 2
    assert [r["role"] for r in seen] == ["surrogate", "surrogate"]
    again = factories.make_surrogates(owner, x, y, specs, config=pp.PirateConfig(epochs=2),
                                      cache=cache)
    assert cache.hits == 2
    np.testing.assert_array_equal(pp.apply_batched(again["ext"], x[:5]),
                                  pp.apply_batched(made["ext"], x[:5]))
    from ipguard_jax.train import TrainConfig

    refs = factories.make_references(
        x, y, [("r", "mlp", {"in_features": 64, "in_channels": 1}, 11)], num_classes=10,
        config=TrainConfig(epochs=2, batch_size=64), cache=cache)
    method = factories.conferrable_method(made, refs, input_shape=(8, 8, 1),
                                          surrogate_margin=0.5)
    assert method.surrogate_margin == 0.5 and len(method.references) == 1
    with pytest.raises(ValueError, match="surrogate names repeat"):
        factories.make_surrogates(owner, x, y, specs + specs[:1])
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        factories.make_surrogates(owner, x, y, [("a", "nope", {})])
    assert isinstance(made["half"], nnx.Module)
