"""The functional core under its earlier name: every name of :mod:`ipguard_jax.core`.

New code imports from :mod:`ipguard_jax.core` (or its modules ``loss``, ``objectives`` and
``optimizer``); this module stays for code written against ``ipguard_jax.engine``.

Example:
    >>> import jax.numpy as jnp, optax
    >>> from ipguard_jax import engine
    >>> w = jnp.eye(4)                                   # logits = x @ w, 4 classes
    >>> result = engine.optimize_points(
    ...     lambda params, x: x @ params, w, jnp.array([[0.9, 0.5, 0.1, 0.0]]),
    ...     i=jnp.array([0]), j=jnp.array([1]), k=0.2, optimizer=optax.adam(0.01), steps=500)
    >>> bool(result.converged[0]), int(result.logits[0].argmax())
    (True, 1)
"""

from ipguard_jax.core import (  # noqa: F401
    IPGUARD, ApplyFn, Objective, OptimizeResult, PointState, Target, batched_ipguard_loss,
    choose_targets, encode_points, finish_points, init_points, ipguard_loss, loss_and_grad,
    optimize_points, point_optimizer, PointOptimizer, run_steps, select_points, step_points)
