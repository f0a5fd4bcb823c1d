"""Baselines on the shared engine: random points, FGSM, PGD, CW; defining properties and a
cross-check against foolbox."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ipguard_jax as ipg
from ipguard_jax import baselines
from ipguard_jax.baselines import CW, FGSM, PGD, RandomPoints

ALL = ipg.FingerprintConfig(num=48, keep="all")


def _run(owner, digits, method, config=ALL, key=0):
    return ipg.generate(owner, config, key=key, data=digits["test"][0], method=method,
                        progress=False)


def _start(digits, fp):
    return digits["test"][0][fp.source]


def _grad(owner, x, labels):
    """Gradient of the cross-entropy at ``labels`` w.r.t. the inputs."""
    def ce(x):
        logits = owner.apply_fn(owner.params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    return np.asarray(jax.grad(ce)(jnp.asarray(x)))


def test_random_points_are_the_start_points_labelled_by_the_owner(owner, digits):
    fp = _run(owner, digits, "random")
    np.testing.assert_array_equal(fp.x, _start(digits, fp))
    np.testing.assert_array_equal(fp.labels, np.asarray(owner.predict(fp.x)))
    assert fp.converged.all() and (fp.steps == 0).all()
    noise = ipg.generate(owner, ipg.FingerprintConfig(num=16, init="noise", keep="all"), key=3,
                         method=RandomPoints(), progress=False)
    assert noise.x.min() >= 0.0 and noise.x.max() <= 1.0 and noise.x.std() > 0.2


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_is_one_signed_gradient_step_of_size_eps(owner, digits, targeted):
    eps = 0.1
    fp = _run(owner, digits, FGSM(eps=eps, targeted=targeted))
    x0 = _start(digits, fp)
    if targeted:  # descend the cross-entropy of j
        expected = np.clip(x0 - eps * np.sign(_grad(owner, x0, fp.j)), 0.0, 1.0)
    else:  # ascend the cross-entropy of i
        expected = np.clip(x0 + eps * np.sign(_grad(owner, x0, fp.i)), 0.0, 1.0)
    np.testing.assert_allclose(fp.x, expected, atol=1e-6)
    assert (fp.steps == 1).all()
    hit = fp.labels == fp.j if targeted else fp.labels != fp.i
    np.testing.assert_array_equal(fp.converged, hit)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_pgd_stays_in_the_ball_and_the_bounds_and_beats_random_noise(owner, digits, norm):
    eps = 0.1 if norm == "inf" else 1.0
    fp = _run(owner, digits, PGD(eps=eps, steps=20, norm=norm))
    delta = (fp.x - _start(digits, fp)).reshape(len(fp), -1)
    size = np.abs(delta).max(axis=1) if norm == "inf" else np.sqrt((delta ** 2).sum(axis=1))
    assert size.max() <= eps + 1e-5
    assert fp.x.min() >= 0.0 and fp.x.max() <= 1.0
    assert (fp.steps == 20).all()  # PGD runs its whole budget
    # Random perturbations of the same size flip far fewer labels than the attack.
    rng = np.random.default_rng(0)
    noise = rng.choice([-1.0, 1.0], size=delta.shape) * (eps if norm == "inf" else
                                                        eps / np.sqrt(delta.shape[1]))
    noisy = np.clip(_start(digits, fp) + noise.reshape(fp.x.shape), 0, 1).astype(np.float32)
    noise_flips = (np.asarray(owner.predict(noisy)) != fp.i).mean()
    assert fp.converged.mean() >= noise_flips + 0.3
    np.testing.assert_array_equal(fp.converged, fp.labels != fp.i)


def test_targeted_pgd_reaches_the_target_more_often_than_targeted_fgsm(owner, digits):
    fgsm = _run(owner, digits, FGSM(eps=0.2, targeted=True))
    pgd = _run(owner, digits, PGD(eps=0.2, steps=20, targeted=True, random_start=False))
    np.testing.assert_array_equal(fgsm.j, pgd.j)  # same targets: same candidates and keys
    assert (pgd.labels == pgd.j).mean() > (fgsm.labels == fgsm.j).mean()


def test_pgd_random_start_is_keyed_per_candidate(owner, digits):
    a = _run(owner, digits, PGD(eps=0.1, steps=1, step_size=1e-6), key=0)
    b = _run(owner, digits, PGD(eps=0.1, steps=1, step_size=1e-6), key=1)
    assert np.abs(a.x - _start(digits, a)).max() > 0.05  # moved off the start by the draw
    np.testing.assert_array_equal(a.x, _run(owner, digits, PGD(eps=0.1, steps=1,
                                                               step_size=1e-6), key=0).x)
    assert not np.array_equal(a.source, b.source) or not np.array_equal(a.x, b.x)


def _cw_margin(owner, fp):
    logits = np.asarray(owner(fp.x))
    rows = np.arange(len(fp))
    others = logits.copy()
    others[rows, fp.j] = -np.inf
    return logits[rows, fp.j] - others.max(axis=1)


@pytest.mark.parametrize("kappa", [0.0, 2.0])
def test_cw_reaches_the_target_with_the_asked_confidence(owner, digits, kappa):
    fp = _run(owner, digits, CW(kappa=kappa, steps=100, search_steps=4))
    assert fp.converged.mean() >= 0.9
    ok = fp.converged
    assert (fp.labels[ok] == fp.j[ok]).all()
    assert _cw_margin(owner, fp)[ok].min() >= kappa - 1e-4
    assert fp.x.min() >= 0.0 and fp.x.max() <= 1.0
    assert (fp.steps == 400).all()  # 4 rounds of 100 steps


def test_cw_binary_search_only_lowers_the_distortion(owner, digits):
    one = _run(owner, digits, CW(steps=100, search_steps=1))
    five = _run(owner, digits, CW(steps=100, search_steps=5))
    both = one.converged & five.converged
    assert both.mean() >= 0.9
    dist = lambda fp: ((fp.x - _start(digits, fp)).reshape(len(fp), -1) ** 2).sum(axis=1)
    # Round one is the same in both runs; later rounds only keep less distorted successes.
    assert (dist(five)[both] <= dist(one)[both] + 1e-5).all()
    assert dist(five)[both].mean() < 0.9 * dist(one)[both].mean()


def test_cw_search_update_brackets_c():
    c, lower, upper = baselines.cw_search_update(np.array([1.0, 1.0]), np.zeros(2),
                                                 np.full(2, np.inf), np.array([True, False]))
    np.testing.assert_allclose(c, [0.5, 10.0])
    c, lower, upper = baselines.cw_search_update(c, lower, upper, np.array([False, True]))
    np.testing.assert_allclose(c, [0.75, 5.5])  # between the last failure and success
    np.testing.assert_allclose(lower, [0.5, 1.0])
    np.testing.assert_allclose(upper, [1.0, 10.0])


@pytest.mark.parametrize("method", [
    PGD(eps=0.1, steps=9),
    # slow: PGD and FGSM keep the two loops' agreement in the default suite, and
    # test_cw_reaches_the_target_with_the_asked_confidence the CW method
    pytest.param(CW(steps=10, search_steps=2), marks=pytest.mark.slow),
    FGSM(eps=0.1)])
def test_host_and_device_loops_agree(owner, digits, method):
    config = ipg.FingerprintConfig(num=24, keep="all", batch_size=16, block_steps=4)
    host = _run(owner, digits, method, ipg.FingerprintConfig(**{**config.__dict__,
                                                                "loop": "host"}))
    device = _run(owner, digits, method, ipg.FingerprintConfig(**{**config.__dict__,
                                                                  "loop": "device"}))
    np.testing.assert_allclose(host.x, device.x, atol=1e-6)
    np.testing.assert_array_equal(host.steps, device.steps)
    np.testing.assert_array_equal(host.converged, device.converged)


def test_compaction_gives_the_same_pgd_points(owner, digits):
    config = ipg.FingerprintConfig(num=40, batch_size=16, loop="host")
    plain = _run(owner, digits, PGD(eps=0.1, steps=8), config)
    compact = _run(owner, digits, PGD(eps=0.1, steps=8),
                   ipg.FingerprintConfig(**{**config.__dict__, "compact": True}))
    np.testing.assert_array_equal(plain.source, compact.source)
    np.testing.assert_allclose(plain.x, compact.x, atol=1e-6)


def test_keep_converged_returns_successful_attacks_and_records_the_method(owner, digits,
                                                                          tmp_path):
    config = ipg.FingerprintConfig(num=20, max_candidates=200)
    fp = _run(owner, digits, FGSM(eps=0.1), config)
    assert len(fp) == 20 and fp.converged.all() and (fp.labels != fp.i).all()
    assert fp.metadata["method"] == {"name": "fgsm", "params": {"eps": 0.1, "targeted": False}}
    ipg.save(fp, tmp_path / "fgsm")
    assert ipg.load(tmp_path / "fgsm").metadata["method"]["name"] == "fgsm"
    default = _run(owner, digits, "ipguard", ipg.FingerprintConfig(num=4, keep="all"))
    assert default.metadata["method"] == {"name": "ipguard", "params": {}}


def test_bad_methods_are_refused_with_clear_errors(owner, digits):
    with pytest.raises(ValueError, match="method must be one of"):
        _run(owner, digits, "deepfool")
    with pytest.raises(TypeError, match="method must be a name"):
        _run(owner, digits, 3)
    with pytest.raises(ValueError, match="eps must be > 0"):
        FGSM(eps=-0.1)
    with pytest.raises(ValueError, match="norm must be"):
        PGD(norm="1")
    with pytest.raises(TypeError, match="steps must be an int"):
        PGD(steps=2.5)
    with pytest.raises(ValueError, match="kappa must be >= 0"):
        CW(kappa=-1.0)
    with pytest.raises(TypeError, match="targeted must be a bool"):
        FGSM(targeted="yes")


def test_step_rules_act_per_point():
    grads = jnp.array([[3.0, -4.0], [0.0, 0.0]])
    sign = jax.vmap(baselines.sign_step(0.5).update, in_axes=(0, None))(grads, optax.EmptyState())
    np.testing.assert_allclose(sign[0], [[-0.5, 0.5], [0.0, 0.0]])
    l2 = jax.vmap(baselines.normalized_step(1.0).update, in_axes=(0, None))(grads,
                                                                              optax.EmptyState())
    np.testing.assert_allclose(l2[0], [[-0.6, 0.8], [0.0, 0.0]])  # unit norm, zero stays zero


@pytest.fixture(scope="module")
def foolbox():
    with warnings.catch_warnings():  # foolbox imports deprecated scipy and eagerpy paths
        warnings.simplefilter("ignore")
        return pytest.importorskip("foolbox")


def _foolbox_attack(foolbox, owner, attack, x0, labels, eps):
    model = foolbox.JAXModel(lambda x: owner.apply_fn(owner.params, x), bounds=(0.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, adv, _ = attack(model, jnp.asarray(x0), jnp.asarray(labels), epsilons=eps)
    return np.asarray(adv)


def test_fgsm_and_pgd_match_foolbox(owner, digits, foolbox):
    fp = _run(owner, digits, FGSM(eps=0.1))
    x0 = _start(digits, fp)
    # On points the owner is very sure of (top-2 logit gap ~15+), 1 - p_i is below float32's
    # resolution, the cross-entropy gradient is a sum of tiny terms and its signs depend on
    # the implementation's rounding; elsewhere the two implementations agree.
    top2 = np.sort(np.asarray(owner(x0)), axis=1)[:, -2:]
    ok = top2[:, 1] - top2[:, 0] < 12
    assert ok.mean() > 0.6
    theirs = _foolbox_attack(foolbox, owner, foolbox.attacks.FGSM(), x0, fp.i, 0.1)
    np.testing.assert_allclose(fp.x[ok], theirs[ok], atol=1e-6)

    fp = _run(owner, digits, PGD(eps=0.1, steps=10, step_size=0.02, random_start=False))
    theirs = _foolbox_attack(foolbox, owner, foolbox.attacks.LinfPGD(
        abs_stepsize=0.02, steps=10, random_start=False), x0, fp.i, 0.1)
    # A gradient component near zero may still take the other sign at some step.
    assert (np.abs(fp.x[ok] - theirs[ok]) > 1e-5).mean() < 0.01

    fp = _run(owner, digits, PGD(eps=1.0, steps=10, step_size=0.2, norm="2",
                                 random_start=False))
    theirs = _foolbox_attack(foolbox, owner, foolbox.attacks.L2PGD(
        abs_stepsize=0.2, steps=10, random_start=False), x0, fp.i, 1.0)
    np.testing.assert_allclose(fp.x[ok], theirs[ok], atol=1e-3)


@pytest.mark.parametrize("field, value", [("k", 5.0), pytest.param("steps", 10, marks=pytest.mark.slow),
                                          pytest.param("lr", 0.5, marks=pytest.mark.slow), ("tol", 0.1)])
def test_a_baseline_refuses_ipguard_settings_it_would_ignore(owner, digits, field, value):
    config = ipg.FingerprintConfig(num=4, keep="all", **{field: value})
    with pytest.raises(ValueError, match=rf"FingerprintConfig\.{field}=.*the pgd method ignores"):
        _run(owner, digits, PGD(eps=0.1), config)
    fp = _run(owner, digits, "ipguard", config)  # IPGuard reads them
    assert len(fp) == 4


def test_ipguard_holding_its_settings_runs_as_the_config_that_holds_them(owner, digits):
    settings = dict(k=5.0, steps=30, lr=0.05, tol=0.01)
    by_config = _run(owner, digits, "ipguard", ipg.FingerprintConfig(num=8, keep="all",
                                                                     **settings))
    by_method = _run(owner, digits, ipg.methods.IPGuard(**settings),
                     ipg.FingerprintConfig(num=8, keep="all"))
    for field in ("x", "labels", "i", "j", "steps", "converged"):
        np.testing.assert_array_equal(getattr(by_method, field), getattr(by_config, field))
    assert int(by_method.steps.max()) <= 30
    assert by_method.metadata["config"] == by_config.metadata["config"]  # the config that ran
    assert by_method.metadata["config"]["k"] == 5.0
    assert by_method.metadata["method"] == {"name": "ipguard", "params": {}}
    # The same value in both places is one setting; two values are refused before any work.
    _run(owner, digits, ipg.methods.IPGuard(k=5.0), ipg.FingerprintConfig(num=2, k=5.0,
                                                                          keep="all"))
    with pytest.raises(ValueError, match=r"k is set twice: IPGuard\(k=4.0\) and "
                                         r"FingerprintConfig\(k=5.0\)"):
        _run(owner, digits, ipg.methods.IPGuard(k=4.0), ipg.FingerprintConfig(num=2, k=5.0))
    for bad, error in ((dict(k=-1.0), ValueError), (dict(steps=0), ValueError),
                       (dict(steps=2.5), TypeError), (dict(lr=0.0), ValueError),
                       (dict(tol=float("nan")), ValueError), (dict(k="3"), TypeError)):
        with pytest.raises(error, match=next(iter(bad))):
            ipg.methods.IPGuard(**bad)
