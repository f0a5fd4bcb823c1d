"""The pure functional core: no I/O, no global state, every function jittable.

- :mod:`~ipguard_jax.core.loss`: the IPGuard loss and the choice of runner-up and target;
- :mod:`~ipguard_jax.core.objectives`: :class:`Objective` records (IPGuard's and the baselines')
  and their step rules;
- :mod:`~ipguard_jax.core.optimizer`: the batched point optimiser (one step, a loop, the final
  measurement) and :func:`point_optimizer`, which closes it over one model and objective.

Call these inside your own ``jax.jit``, ``vmap``, ``shard_map`` or training loop;
:func:`ipguard_jax.generate` is the orchestration on top (chunking, refills, progress,
provenance). ``ipguard_jax.engine`` is the same API under its earlier name.

Example:
    >>> import jax.numpy as jnp
    >>> from ipguard_jax import core
    >>> float(core.ipguard_loss(jnp.array([2.0, 1.0, 0.0]), i=0, j=1, k=0.5))
    1.5
"""

from ipguard_jax.core.loss import Target as Target
from ipguard_jax.core.loss import batched_ipguard_loss as batched_ipguard_loss
from ipguard_jax.core.loss import choose_targets as choose_targets
from ipguard_jax.core.loss import ipguard_loss as ipguard_loss
from ipguard_jax.core.objectives import IPGUARD as IPGUARD
from ipguard_jax.core.objectives import Objective as Objective
from ipguard_jax.core.objectives import normalized_step as normalized_step
from ipguard_jax.core.objectives import sign_step as sign_step
from ipguard_jax.core.optimizer import ApplyFn as ApplyFn
from ipguard_jax.core.optimizer import OptimizeResult as OptimizeResult
from ipguard_jax.core.optimizer import PointOptimizer as PointOptimizer
from ipguard_jax.core.optimizer import PointState as PointState
from ipguard_jax.core.optimizer import encode_points as encode_points
from ipguard_jax.core.optimizer import finish_points as finish_points
from ipguard_jax.core.optimizer import init_points as init_points
from ipguard_jax.core.optimizer import loss_and_grad as loss_and_grad
from ipguard_jax.core.optimizer import optimize_points as optimize_points
from ipguard_jax.core.optimizer import point_optimizer as point_optimizer
from ipguard_jax.core.optimizer import run_steps as run_steps
from ipguard_jax.core.optimizer import select_points as select_points
from ipguard_jax.core.optimizer import step_points as step_points
