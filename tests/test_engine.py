"""The pure functional core: loss, targets, one step, the batched optimiser."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import mlp_apply
from ipguard_jax import engine


@pytest.mark.parametrize(
    "logits, i, j, k, expected",
    [
        # relu(2 - 1 + 3) + relu(max(0.5, -1) - 2) = 4 + 0
        ([2.0, 1.0, 0.5, -1.0], 0, 1, 3.0, 4.0),
        # relu(1 - 0.5 + 3) + relu(max(2, -1) - 1) = 3.5 + 1
        ([2.0, 1.0, 0.5, -1.0], 1, 2, 3.0, 4.5),
        # all other logits negative: masking with -inf gives max(-5, -3) = -3, so the second
        # term is relu(-3 + 1) = 0 (zeroing i and j instead would wrongly give relu(0 + 1) = 1)
        ([-5.0, -1.0, -2.0, -3.0], 1, 2, 0.5, 1.5),
        # conditions met: j beats i by more than k, i beats the rest
        ([0.0, 2.0, 5.0, -1.0], 1, 2, 3.0, 0.0),
        # 2 classes: no other class, only the margin term: relu(3 - 1 + 1)
        ([1.0, 3.0], 1, 0, 1.0, 3.0),
    ],
)
def test_loss_matches_hand_computation(logits, i, j, k, expected):
    loss = engine.ipguard_loss(jnp.array(logits), i, j, k)
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_loss_gradient_is_finite_for_two_classes():
    grad = jax.grad(engine.ipguard_loss)(jnp.array([1.0, 3.0]), 1, 0, 1.0)
    np.testing.assert_allclose(grad, [-1.0, 1.0])


def test_loss_gradient_flows_only_through_the_active_other_class():
    grad = jax.grad(engine.ipguard_loss)(jnp.array([3.0, 1.0, 0.0, -2.0]), 1, 2, 0.5)
    # term 1: z1 - z2 + .5 > 0 -> +1 on z1, -1 on z2; term 2: max(z0, z3) - z1 = 2 > 0 -> z0, -z1
    np.testing.assert_allclose(grad, [1.0, 0.0, -1.0, 0.0])


def test_random_targets_never_equal_runner_up_and_cover_other_classes():
    logits = jax.random.normal(jax.random.key(0), (4000, 5))
    i, j = engine.choose_targets(logits, jax.random.key(1), "random")
    assert (i == jnp.argmax(logits, -1)).all()
    assert (i != j).all()
    offsets = np.bincount(np.asarray((j - i) % 5), minlength=5)
    assert offsets[0] == 0 and (offsets[1:] > 800).all()  # ~1000 each


def test_per_point_keys_make_targets_independent_of_the_batch():
    logits = jax.random.normal(jax.random.key(0), (6, 7))
    keys = jax.random.split(jax.random.key(3), 6)
    _, j_all = engine.choose_targets(logits, keys, "random")
    _, j_tail = engine.choose_targets(logits[3:], keys[3:], "random")
    np.testing.assert_array_equal(j_all[3:], j_tail)


def test_least_likely_target_and_tie_fallback():
    logits = jnp.array([[0.1, 2.0, -3.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    i, j = engine.choose_targets(logits, jax.random.key(0), "least_likely")
    assert i.tolist() == [1, 0]
    assert j.tolist() == [2, 1]  # all tied: argmin == argmax, so the next class


def test_unknown_target_is_rejected():
    with pytest.raises(ValueError, match="target must be"):
        engine.choose_targets(jnp.zeros((1, 3)), jax.random.key(0), "furthest")


def _linear(params, x):
    return x @ params


def test_done_points_are_frozen_and_points_stay_in_bounds():
    w = jnp.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # point 0 already meets the conditions for i=1 -> j=0 (k=0.5); point 1 does not
    x0 = jnp.array([[0.9, 0.5, 0.1], [0.1, 0.9, 0.0]])
    i, j = jnp.array([1, 1]), jnp.array([0, 0])
    opt = optax.sgd(1.0)
    state = engine.init_points(opt, x0)
    state = engine.step_points(_linear, w, state, i, j, k=0.5, optimizer=opt, bounds=(0.0, 1.0))
    assert state.done.tolist() == [True, False]
    assert state.steps.tolist() == [0, 1]
    np.testing.assert_array_equal(state.x[0], x0[0])
    assert float(state.x.min()) >= 0.0 and float(state.x.max()) <= 1.0
    assert not np.allclose(state.x[1], x0[1])


def test_batch_equals_points_one_at_a_time(owner, digits):
    x0 = jnp.asarray(digits["test"][0][:12])
    logits = owner(x0)
    i, j = engine.choose_targets(logits, jax.random.key(0))
    run = jax.jit(lambda x, i, j: engine.optimize_points(
        mlp_apply, owner.params, x, i, j, k=3.0, optimizer=optax.adam(0.01), steps=300))
    batch = run(x0, i, j)
    singles = [run(x0[n:n + 1], i[n:n + 1], j[n:n + 1]) for n in range(12)]
    np.testing.assert_array_equal(batch.converged, np.concatenate([s.converged for s in singles]))
    np.testing.assert_array_equal(batch.steps, np.concatenate([s.steps for s in singles]))
    np.testing.assert_allclose(batch.x, np.concatenate([s.x for s in singles]), atol=1e-5)


def test_optimizer_state_is_per_point():
    # Global-norm clipping couples every parameter of one update; with per-point states each
    # point is clipped by its own gradient norm, so a point's path does not depend on the others.
    w = jax.random.normal(jax.random.key(0), (5, 4))
    x0 = jax.random.uniform(jax.random.key(1), (6, 5))
    i, j = engine.choose_targets(x0 @ w, jax.random.key(2))
    opt = optax.chain(optax.clip_by_global_norm(0.05), optax.adam(0.02))
    run = lambda x, i, j: engine.optimize_points(_linear, w, x, i, j, k=0.3, optimizer=opt,
                                                 steps=50)
    batch = run(x0, i, j)
    single = run(x0[2:3], i[2:3], j[2:3])
    np.testing.assert_allclose(batch.x[2], single.x[0], atol=1e-6)


def test_optimize_points_is_pure_under_jit_with_traced_hyperparameters():
    w = jax.random.normal(jax.random.key(0), (5, 4))
    x0 = jax.random.uniform(jax.random.key(1), (8, 5))
    i, j = engine.choose_targets(x0 @ w, jax.random.key(2))

    @jax.jit
    def run(k, steps):
        r = engine.optimize_points(_linear, w, x0, i, j, k=k, optimizer=optax.adam(0.05),
                                   steps=steps)
        return r.converged, r.steps, r.logits

    converged, steps, logits = run(0.2, 500)
    assert bool(converged.all())
    margin = jnp.take_along_axis(logits, j[:, None], 1) - jnp.take_along_axis(logits, i[:, None], 1)
    assert float(margin.min()) >= 0.2 - 1e-5
    _, steps_few, _ = run(0.2, 2)
    assert int(steps_few.max()) <= 2


def test_inactive_points_never_move_nor_hold_up_the_loop():
    w = jax.random.normal(jax.random.key(0), (5, 4))
    x0 = jax.random.uniform(jax.random.key(1), (4, 5))
    i, j = engine.choose_targets(x0 @ w, jax.random.key(2))
    active = jnp.array([True, True, False, False])
    result = engine.optimize_points(_linear, w, x0, i, j, k=1e6, optimizer=optax.adam(0.05),
                                    steps=7, active=active)
    assert result.steps.tolist() == [7, 7, 0, 0]
    np.testing.assert_array_equal(result.x[2:], x0[2:])
    # all active points done at once: the loop stops even though padding never converges
    easy = engine.optimize_points(_linear, w, x0, i, j, k=1e6, optimizer=optax.adam(0.05),
                                  steps=7, active=jnp.zeros(4, bool))
    assert easy.steps.tolist() == [0, 0, 0, 0]
