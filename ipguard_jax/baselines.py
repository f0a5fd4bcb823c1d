"""The fingerprinting methods under their earlier module name (see :mod:`ipguard_jax.methods`).

New code imports from :mod:`ipguard_jax.methods` (the methods as values) and
:mod:`ipguard_jax.core.objectives` (their objectives and step rules).

Example:
    >>> from ipguard_jax.baselines import PGD
    >>> PGD(eps=0.1).name
    'pgd'
"""

from ipguard_jax.core.objectives import (  # noqa: F401
    CW_OBJECTIVE, RANDOM_OBJECTIVE, TARGETED_L2, TARGETED_LINF, UNTARGETED_L2, UNTARGETED_LINF,
    normalized_step, sign_step)
from ipguard_jax.methods import (  # noqa: F401
    CW, FGSM, METHODS, PGD, IPGuard, Method, Plan, RandomPoints, cw_search_update,
    make_optimizer, resolve_method)

__all__ = ["Method", "IPGuard", "RandomPoints", "FGSM", "PGD", "CW", "METHODS", "resolve_method",
           "sign_step", "normalized_step", "cw_search_update"]
