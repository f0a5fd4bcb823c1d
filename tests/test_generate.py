"""generate(): convergence, the margin, bounds, determinism, compilation, refills, errors."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ipguard_jax as ipg


def _margins(classifier, fp):
    logits = np.asarray(classifier(fp.x))
    rows = np.arange(len(fp))
    z_i, z_j = logits[rows, fp.i], logits[rows, fp.j]
    others = logits.copy()
    others[rows, fp.i] = -np.inf
    others[rows, fp.j] = -np.inf
    return z_j - z_i, z_i - others.max(axis=1)


def test_default_config_converges_and_meets_the_margin(owner, digits):
    config = ipg.FingerprintConfig(num=100, keep="all")  # keep all: measure the rate honestly
    fp = ipg.generate(owner, config, key=0, data=digits["test"][0], progress=False)
    assert len(fp) == 100
    assert fp.converged.mean() >= 0.95
    margin_j, margin_i = _margins(owner, fp[fp.converged])
    assert margin_j.min() >= config.k - 1e-4  # j beats i by k
    assert margin_i.min() >= -1e-4  # i is the runner-up
    assert (fp.labels[fp.converged] == fp.j[fp.converged]).all()
    assert (fp.i != fp.j).all()


@pytest.mark.parametrize("init", ["data", "noise"])
def test_points_lie_inside_the_bounds(owner, digits, init):
    config = ipg.FingerprintConfig(num=40, k=10.0, init=init, keep="all")
    data = digits["test"][0] if init == "data" else None
    fp = ipg.generate(owner, config, key=1, data=data, progress=False)
    assert fp.x.min() >= owner.bounds[0] and fp.x.max() <= owner.bounds[1]
    assert fp.x.dtype == np.float32 and fp.input_shape == (8, 8, 1)


def test_start_points_runner_up_and_least_likely_target(owner, digits):
    data = digits["test"][0]
    config = ipg.FingerprintConfig(num=30, target="least_likely", keep="all")
    fp = ipg.generate(owner, config, key=2, data=data, progress=False)
    start_logits = np.asarray(owner(data[fp.source]))
    np.testing.assert_array_equal(fp.i, start_logits.argmax(1))
    np.testing.assert_array_equal(fp.j, start_logits.argmin(1))
    assert len(set(fp.source.tolist())) == 30  # distinct start images


def test_same_key_same_fingerprints_other_key_other(owner, digits):
    config = ipg.FingerprintConfig(num=20)
    runs = [ipg.generate(owner, config, key=key, data=digits["test"][0], progress=False)
            for key in (7, 7, 8)]
    for name, a in runs[0].arrays().items():
        np.testing.assert_array_equal(a, runs[1].arrays()[name], err_msg=name)
    assert not np.array_equal(runs[0].source, runs[2].source)
    assert runs[0].metadata["key"] == runs[1].metadata["key"] != runs[2].metadata["key"]


def test_second_call_compiles_nothing(owner, caplog):
    # A function of its own, so no earlier test's compiled programs serve the first call.
    apply_fn = owner.apply_fn
    owner = ipg.Classifier(lambda params, x: apply_fn(params, x), owner.params,
                           input_shape=owner.input_shape)
    config = ipg.FingerprintConfig(num=24, batch_size=8, init="noise", keep="all")
    with caplog.at_level(logging.DEBUG), jax.log_compiles():
        ipg.generate(owner, config, key=0, progress=False)
    assert any("ompil" in r.getMessage() for r in caplog.records)  # the probe sees compiles
    caplog.clear()
    sweep = ipg.FingerprintConfig(num=24, batch_size=8, init="noise", keep="all", k=9.0,
                                  lr=0.02, steps=50)
    with caplog.at_level(logging.DEBUG), jax.log_compiles():
        ipg.generate(owner, config, key=1, progress=False)
        ipg.generate(owner, sweep, key=2, progress=False)  # k, lr, steps are traced values
    compiles = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert compiles == []


def test_keep_converged_refills_until_num(owner, digits):
    # At k=30 with few steps many candidates fail: generate draws more until 20 converged.
    config = ipg.FingerprintConfig(num=20, k=30.0, steps=60, batch_size=16, max_candidates=400)
    fp = ipg.generate(owner, config, key=0, data=digits["test"][0], progress=False)
    assert len(fp) == 20 and fp.converged.all()
    meta = fp.metadata
    assert meta["num_candidates"] > 20 and meta["num_converged"] >= 20
    assert fp.convergence_rate == pytest.approx(meta["num_converged"] / meta["num_candidates"])


def test_budget_exhausted_warns_and_says_how_many(owner):
    config = ipg.FingerprintConfig(num=10, k=500.0, steps=3, init="noise", max_candidates=30)
    with pytest.warns(ipg.ConvergenceWarning, match=r"only 0 of the 10"):
        fp = ipg.generate(owner, config, key=0, progress=False)
    assert len(fp) == 0
    assert fp.metadata["num_candidates"] == 30


def test_provenance(owner, owner_fingerprints):
    meta = owner_fingerprints.metadata
    assert meta["classifier"]["params_sha256"] == owner.params_hash
    assert meta["classifier"]["input_shape"] == [8, 8, 1]
    assert meta["classifier"]["bounds"] == [0.0, 1.0]
    assert meta["config"]["k"] == 3.0 and meta["config"]["steps"] == 1000
    assert meta["library"]["version"] == ipg.__version__
    assert meta["key"]["data"] == np.asarray(jax.random.key_data(jax.random.key(0))).tolist()
    assert "x=" not in repr(owner_fingerprints) and "0." not in repr(owner_fingerprints)


def test_suggest_k_scales_with_logits(owner, digits):
    x = digits["test"][0]
    k = ipg.suggest_k(owner, x)
    scaled = ipg.Classifier(lambda p, x: 3.0 * owner.apply_fn(p, x), owner.params, (8, 8, 1))
    assert k > 0
    assert ipg.suggest_k(scaled, x) == pytest.approx(3 * k, rel=1e-4)
    with pytest.raises(ValueError, match="fraction"):
        ipg.suggest_k(owner, x, fraction=0)


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num": 0}, ValueError, "num must be > 0"),
        ({"num": 2.5}, TypeError, "num must be an int"),
        ({"k": -1.0}, ValueError, "k must be >= 0"),
        ({"k": float("nan")}, ValueError, "k must be finite"),
        ({"steps": 0}, ValueError, "steps must be > 0"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
        ({"lr": -0.1}, ValueError, "lr must be > 0"),
        ({"tol": -1.0}, ValueError, "tol must be >= 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be > 0"),
        ({"init": "zeros"}, ValueError, "init must be one of"),
        ({"target": "far"}, ValueError, "target must be one of"),
        ({"keep": "some"}, ValueError, "keep must be one of"),
        ({"loop": "gpu"}, ValueError, "loop must be one of"),
        ({"block_steps": 0}, ValueError, "block_steps must be > 0"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be an optax"),
        ({"num": 10, "max_candidates": 5}, ValueError, "max_candidates"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        ipg.FingerprintConfig(**kwargs)


def test_generate_rejects_bad_data(owner, digits):
    x = digits["test"][0]
    config = ipg.FingerprintConfig(num=10)
    cases = [
        (None, ValueError, 'needs start images'),
        (x[:5], ValueError, "too few data points"),
        (x.reshape(-1, 64)[:20], ValueError, r"must have shape \(N, 8, 8, 1\)"),
        ((x[:20] * 255).astype(np.uint8), TypeError, "floating"),
        (np.where(np.arange(x[:20].size).reshape(x[:20].shape) == 3, np.nan, x[:20]),
         ValueError, "NaN or inf"),
        (x[:20] * 2.0, ValueError, "outside the classifier's bounds"),
    ]
    for data, error, match in cases:
        with pytest.raises(error, match=match):
            ipg.generate(owner, config, key=0, data=data, progress=False)
    with pytest.raises(ValueError, match='only used with init="data"'):
        ipg.generate(owner, ipg.FingerprintConfig(num=4, init="noise"), data=x, progress=False)
    with pytest.raises(TypeError, match="key must be"):
        ipg.generate(owner, config, key="seed", data=x, progress=False)
    with pytest.raises(TypeError, match="config must be"):
        ipg.generate(owner, {"num": 3}, data=x, progress=False)


def test_non_finite_logits_are_reported(owner):
    broken = ipg.Classifier(lambda p, x: owner.apply_fn(p, x) * jnp.inf, owner.params, (8, 8, 1))
    with pytest.raises(ValueError, match="non-finite logits"):
        ipg.generate(broken, ipg.FingerprintConfig(num=4, init="noise"), progress=False)


@pytest.mark.parametrize("init", ["data", "noise"])
def test_host_and_device_loops_give_the_same_fingerprints(owner, digits, init):
    data = digits["test"][0] if init == "data" else None
    runs = {}
    for loop, block in (("device", 4), ("host", 4), ("host", 3)):
        # steps=50 is not a multiple of 4 or 3: the last block must stop at the budget
        config = ipg.FingerprintConfig(num=24, k=10.0, steps=50, init=init, keep="all",
                                       loop=loop, block_steps=block)
        runs[loop, block] = ipg.generate(owner, config, key=3, data=data, progress=False)
    reference = runs["device", 4]
    assert reference.steps.max() == 50 and not reference.converged.all()  # budget binds
    for fp in runs.values():
        np.testing.assert_array_equal(fp.steps, reference.steps)
        np.testing.assert_array_equal(fp.converged, reference.converged)
        np.testing.assert_array_equal(fp.labels, reference.labels)
        np.testing.assert_allclose(fp.x, reference.x, atol=1e-6)
    assert runs["host", 4].metadata["loop"] == "host"


def test_keys_accepted_and_rejected():
    from ipguard_jax.generation import as_key

    typed = jax.random.key(5)
    raw = jax.random.key_data(typed)
    assert (jax.random.key_data(as_key(5)) == raw).all()
    assert (jax.random.key_data(as_key(np.asarray(raw))) == raw).all()
    assert as_key(typed) is typed
    with pytest.raises(ValueError, match="single PRNG key"):
        as_key(jax.random.split(typed, 3))
    with pytest.raises(TypeError, match="key must be"):
        as_key(1.5)


@pytest.mark.parametrize("loop", ["host", "device"])
@pytest.mark.parametrize("keep", ["all", "converged"])
def test_compaction_returns_the_same_fingerprints(owner, digits, keep, loop):
    # k=10 with 40 steps: a mix of fast, slow and never-converging points, so slots refill
    # at different times and the per-point budgets matter. With loop="device" the refills
    # happen inside the compiled loop.
    base = dict(num=30, k=10.0, steps=40, batch_size=8, keep=keep, block_steps=4,
                max_candidates=120)
    runs = {compact: ipg.generate(owner, ipg.FingerprintConfig(
                **base, compact=compact, loop=loop if compact else "host"), key=4,
                data=digits["test"][0], progress=False)
            for compact in (False, True)}
    plain, compacted = runs[False], runs[True]
    assert compacted.metadata["compact"] and not plain.metadata["compact"]
    assert len(plain) == len(compacted) == 30
    if keep == "all":
        assert 0 < plain.converged.sum() < 30  # both kinds of point present
    for name in ("source", "i", "j", "labels", "converged", "steps"):
        np.testing.assert_array_equal(getattr(compacted, name), getattr(plain, name),
                                      err_msg=name)
    np.testing.assert_allclose(compacted.x, plain.x, atol=1e-6)
    np.testing.assert_allclose(compacted.loss, plain.loss, atol=1e-5)


def test_compaction_shrinks_the_batch_to_the_stragglers(owner, digits, monkeypatch):
    from ipguard_jax.runners import compacted as compaction, programs

    sizes = []
    take = programs.take

    def spy(points, state, index, valid):
        sizes.append((len(index), int(np.asarray(valid).sum())))
        return take(points, state, index, valid)

    monkeypatch.setattr(programs, "take", spy)
    # k=20 within 100 steps: most points converge, a few run to the limit alone.
    base = dict(num=24, k=20.0, steps=100, batch_size=16, keep="all", loop="host",
                block_steps=4)
    runs = {compact: ipg.generate(owner, ipg.FingerprintConfig(**base, compact=compact), key=2,
                                  data=digits["test"][0], progress=False)
            for compact in (False, True)}
    plain, compacted = runs[False], runs[True]
    assert 0 < plain.converged.sum() < 24
    assert len(sizes) >= 2, f"the working batch shrank {len(sizes)} times"
    batch_sizes = [16] + [size for size, _ in sizes]
    assert all(b // a == 2 ** round(np.log2(b / a)) and a < b
               for a, b in zip(batch_sizes[1:], batch_sizes[:-1])), batch_sizes
    assert all(size >= compaction.MIN_ROWS_PER_DEVICE and running <= size
               for size, running in sizes)
    for name in ("source", "i", "j", "labels", "converged", "steps"):
        np.testing.assert_array_equal(getattr(compacted, name), getattr(plain, name),
                                      err_msg=name)
    np.testing.assert_allclose(compacted.x, plain.x, atol=1e-6)


def test_bfloat16_generation_labels_points_with_the_float32_owner(owner, digits):
    config = ipg.FingerprintConfig(num=40, k=1.0, keep="all", precision="bfloat16")
    fp = ipg.generate(owner, config, key=0, data=digits["test"][0], progress=False)
    logits = np.asarray(owner(fp.x))  # the float32 owner
    np.testing.assert_array_equal(fp.labels, logits.argmax(axis=1))
    margin_j, margin_i = _margins(owner, fp[fp.converged])
    assert fp.converged.mean() >= 0.8
    assert margin_j.min() >= config.k - 1e-4 and margin_i.min() >= -1e-4
    assert fp.metadata["config"]["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="precision='bfloat16' is for the ipguard method"):
        ipg.generate(owner, config, key=0, data=digits["test"][0], method="fgsm",
                     progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        ipg.FingerprintConfig(precision="float16")


def test_runner_counters_record_the_work_executed(owner, digits):
    # The host loop runs blocks of block_steps over the whole batch: point_steps counts every
    # row of every block, so it bounds the useful steps (sum of each point's steps) from above;
    # compaction spends fewer point-steps on the same candidates.
    base = dict(num=24, k=20.0, steps=100, batch_size=16, keep="all", loop="host",
                block_steps=4)
    runs = {compact: ipg.generate(owner, ipg.FingerprintConfig(**base, compact=compact), key=2,
                                  data=digits["test"][0], progress=False)
            for compact in (False, True)}
    for fp in runs.values():
        runner = fp.metadata["runner"]
        assert runner["point_steps"] >= int(fp.steps.sum()) > 0
        assert runner["syncs"] >= runner["blocks"] > 0 and runner["programs"] > runner["blocks"]
    plain = runs[False].metadata["runner"]
    assert plain["point_steps"] == plain["blocks"] * 4 * 16  # whole chunks of 16 rows
    assert runs[True].metadata["runner"]["point_steps"] < plain["point_steps"]


@pytest.mark.parametrize("keep", [
    # slow: "converged" keeps the device's refills equal to the host's in the default suite
    pytest.param("all", marks=pytest.mark.slow), "converged"])
def test_device_compaction_equals_host_compaction_with_few_round_trips(owner, digits, keep):
    # The device refills a few stopped slots at a time: the same candidates and the same
    # results, bit for bit on the MLP, in fewer executed point-steps; the host waits only at
    # the end and when the batch shrinks. With the host's rule (a quarter of the batch, every
    # stopped slot at once) the device runs exactly the host's blocks too.
    from ipguard_jax.runners import device_compacted as dc

    base = dict(num=40 if keep == "all" else 24, k=20.0 if keep == "all" else 3.0, steps=100,
                batch_size=16, keep=keep, block_steps=4, compact=True)
    run = lambda loop: ipg.generate(owner, ipg.FingerprintConfig(**base, loop=loop), key=2,
                                    data=digits["test"][0], progress=False)
    host, device = run("host"), run("device")
    with dc.refill_policy(dc.RefillPolicy(4, whole_batch=True)):
        device_host_rule = run("device")
    for other in (device, device_host_rule):
        for name in ("source", "i", "j", "labels", "converged", "steps", "x", "loss"):
            np.testing.assert_array_equal(getattr(other, name), getattr(host, name),
                                          err_msg=name)
    assert device_host_rule.metadata["num_candidates"] == host.metadata["num_candidates"]
    for counter in ("blocks", "point_steps"):
        assert device_host_rule.metadata["runner"][counter] == host.metadata["runner"][counter]
    if keep == "all":  # with "converged" the refills' timing changes how many are drawn
        assert device.metadata["runner"]["point_steps"] < host.metadata["runner"]["point_steps"]
    assert device.metadata["runner"]["refills"] > device_host_rule.metadata["runner"]["refills"]
    for fp in (device, device_host_rule):
        syncs = fp.metadata["runner"]["syncs"]
        assert syncs <= 1 + np.log2(16) and syncs < host.metadata["runner"]["syncs"] / 4


@pytest.mark.parametrize("init", [
    # slow: "noise" keeps the sub-batch refills in the default suite
    pytest.param("data", marks=pytest.mark.slow), "noise"])
def test_device_refills_run_on_sub_batches_and_keep_every_result(owner, digits, init,
                                                                 monkeypatch):
    # A working batch of 48 refills 3 rows at a time (48 // 16): the finishing and starting
    # programs inside the loop see 3 rows, never the whole batch; the fingerprints equal whole
    # chunks' bit for bit (k=10 within 60 steps: fast, slow and failing points).
    from ipguard_jax.runners import device_compacted as dc, programs

    assert dc.refill_rows(48, 1) == (3, 3)
    traced = {"finish": set(), "start": set()}
    for name in traced:
        real = getattr(programs, name)
        monkeypatch.setattr(programs, name, lambda *a, real=real, name=name, **kw: (
            traced[name].add(int(a[3].i.shape[0] if name == "finish" else a[3].shape[0]))
            or real(*a, **kw)))
    data = digits["test"][0] if init == "data" else None
    base = dict(num=150, k=10.0, steps=60, batch_size=48, keep="all", block_steps=4, init=init)
    device = ipg.generate(owner, ipg.FingerprintConfig(**base, loop="device", compact=True),
                          key=6, data=data, progress=False)
    assert 3 in traced["finish"] and 3 in traced["start"]  # traced inside the loop
    assert max(traced["finish"]) <= 3  # the whole batch is never finished on the device
    plain = ipg.generate(owner, ipg.FingerprintConfig(**base, loop="host", compact=False),
                         key=6, data=data, progress=False)
    assert 0 < plain.converged.sum() < 150
    for name in ("source", "i", "j", "labels", "converged", "steps", "x", "loss"):
        np.testing.assert_array_equal(getattr(device, name), getattr(plain, name), err_msg=name)
    runner = device.metadata["runner"]
    assert runner["point_steps"] >= int(device.steps.sum())
    assert runner["refills"] >= 150 // 3


# slow: a cost property (192 points twice); the device refills' results stay in the default
# suite in test_device_refills_run_on_sub_batches_and_keep_every_result and
# test_device_compaction_equals_host_compaction_with_few_round_trips
@pytest.mark.slow
def test_device_refills_raise_the_useful_share(owner, digits):
    # Sub-batches of a sixteenth of the batch waste fewer point-steps than the host's rule
    # (refill once a quarter stopped), on the same candidates with the same results.
    from ipguard_jax.runners import device_compacted as dc

    config = ipg.FingerprintConfig(num=192, k=10.0, steps=100, batch_size=32, keep="all",
                                   loop="device", compact=True)
    run = lambda: ipg.generate(owner, config, key=7, data=digits["test"][0], progress=False)
    with dc.refill_policy(dc.RefillPolicy(4, whole_batch=True)):
        quarter = run()
    sixteenth = run()
    np.testing.assert_array_equal(sixteenth.steps, quarter.steps)
    np.testing.assert_array_equal(sixteenth.x, quarter.x)
    useful = int(quarter.steps.sum())
    share = {name: useful / fp.metadata["runner"]["point_steps"]
             for name, fp in (("quarter", quarter), ("sixteenth", sixteenth))}
    assert share["sixteenth"] > share["quarter"], share


def test_refill_policy_is_checked_and_restored():
    from ipguard_jax.runners import device_compacted as dc

    with pytest.raises(ValueError, match="divisor"):
        dc.RefillPolicy(0)
    with pytest.raises(TypeError, match="RefillPolicy"):
        with dc.refill_policy(8):
            pass
    with pytest.raises(RuntimeError):
        with dc.refill_policy(dc.RefillPolicy(2)):
            assert dc.refill_rows(64, 1) == (32, 32)
            raise RuntimeError
    assert dc.refill_rows(64, 1) == (4, 4)  # the default again
    assert dc.refill_rows(64, 8) == (16, 16) and dc.refill_rows(8, 8) == (8, 8)
