"""Fingerprinting methods as values: IPGuard and the baselines (random points, FGSM, PGD and
Carlini-Wagner L2); :class:`~ipguard_jax.conferrable.Conferrable` builds on the same base.

The IPGuard paper compares its boundary points with simpler fingerprints; these are they, run
by the same batched optimiser as IPGuard (:mod:`ipguard_jax.core`: ``vmap``-ed per-point
optimiser states, done masks, projection onto the input box, chunking, the host or device step
loop, progress bars and provenance). Each method is an :class:`~ipguard_jax.Objective`
plus a step rule; pass one to :func:`ipguard_jax.generate` with ``method=``:

=========================  ==============================================================
``"ipguard"``              the boundary points (the default; :class:`IPGuard`)
``"random"``               the start points themselves (real images or uniform noise),
                           labelled by the owner (:class:`RandomPoints`)
``"fgsm"``                 one signed-gradient step of size ``eps`` (:class:`FGSM`)
``"pgd"``                  iterated FGSM projected onto an L-inf or L2 ball (:class:`PGD`)
``"cw"``                   Carlini-Wagner L2, targeted, with confidence ``kappa`` and a
                           binary search over ``c`` (:class:`CW`)
=========================  ==============================================================

A string picks the method with its default parameters; an instance sets them. The
:class:`~ipguard_jax.FingerprintConfig` still decides ``num``, ``init``, ``target`` (the target
class ``j`` of the targeted attacks), ``batch_size``, ``keep`` (``"converged"`` keeps
successful attacks: a changed label for untargeted ones, the target for targeted ones) and the
loop; its ``k``, ``steps``, ``lr``, ``optimizer`` and ``tol`` belong to IPGuard (which can
also hold its own: ``IPGuard(k=10.0, steps=500)``) and the baselines carry their own.

Example:
    >>> import jax.numpy as jnp
    >>> from ipguard_jax import Classifier, FingerprintConfig, generate
    >>> from ipguard_jax.methods import PGD
    >>> w = jnp.array([[1.0, -1.0, 0.5], [-0.5, 1.0, 0.2], [0.3, 0.1, -1.0]])
    >>> clf = Classifier(lambda p, x: x @ p, w, input_shape=(3,))
    >>> fp = generate(clf, FingerprintConfig(num=8, init="noise", keep="all"), key=0,
    ...               method=PGD(eps=0.5, steps=10), progress=False)
    >>> fp.metadata["method"]["name"], len(fp)
    ('pgd', 8)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ipguard_jax.core.objectives import (
    CW_OBJECTIVE, IPGUARD, RANDOM_OBJECTIVE, TARGETED_L2, TARGETED_LINF, UNTARGETED_L2,
    UNTARGETED_LINF, Objective, random_start_l2, random_start_linf, normalized_step, sign_step)

__all__ = ["Method", "IPGuard", "IPGUARD_SETTINGS", "bind_ipguard_settings",
           "check_ipguard_settings", "RandomPoints", "FGSM", "PGD", "CW", "METHODS",
           "resolve_method", "sign_step", "normalized_step", "cw_search_update"]


class Plan(NamedTuple):
    """How the engine runs a method: static parts (hashable; they key the compiled code).

    Attributes:
        objective: the per-point objective.
        step_rule: ``"adam"``, ``"sign"`` or ``"l2"``: the optimiser built from the traced
            step size ``lr``.
        optimizer: a custom optax transformation that replaces the step rule (IPGuard's
            ``FingerprintConfig.optimizer``), else ``None``.
        perturb: ``(key, x, hyper) -> x``, a random start around each start point, or ``None``.
        uses_origin: the objective reads ``point["origin"]``, the start point (in the box).

    Example:
        >>> from ipguard_jax import FingerprintConfig
        >>> from ipguard_jax.methods import PGD
        >>> plan = PGD(eps=0.1).plan(FingerprintConfig())
        >>> plan.step_rule, plan.uses_origin
        ('sign', True)
    """
    objective: Objective
    step_rule: str = "adam"
    optimizer: optax.GradientTransformation | None = None
    perturb: Callable[..., jax.Array] | None = None
    uses_origin: bool = False


def make_optimizer(plan: Plan, lr: Any) -> optax.GradientTransformation:
    """The plan's optimiser with step size ``lr`` (may be traced: no recompile per value).

    Args:
        plan: the method's :class:`Plan`.
        lr: the step size: Adam's learning rate, or the step of the sign and L2 rules.

    Returns:
        ``plan.optimizer`` when the plan has one (``lr`` is then ignored), else the optax
        transformation of ``plan.step_rule``: ``optax.adam(lr)``, :func:`sign_step` or
        :func:`normalized_step`.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import FingerprintConfig
        >>> from ipguard_jax.methods import FGSM, make_optimizer
        >>> opt = make_optimizer(FGSM().plan(FingerprintConfig()), 0.25)
        >>> opt.update(jnp.array([2.0, -1.0]), opt.init(None))[0].tolist()
        [-0.25, 0.25]
    """
    if plan.optimizer is not None:
        return plan.optimizer
    rules = {"adam": optax.adam, "sign": sign_step, "l2": normalized_step}
    return rules[plan.step_rule](lr)


# --- methods -----------------------------------------------------------------------------------

def _positive(name: str, value: Any, *, integer: bool = False, zero_ok: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'} and finite, "
                         f"got {value}")


@dataclasses.dataclass(frozen=True)
class Method:
    """A fingerprinting method: its name, parameters and how the engine runs it.

    Subclasses are frozen dataclasses whose fields are the method's parameters;
    :func:`ipguard_jax.generate` asks them for the plan, the batch-wide scalars, the step
    budget and the step size under the run's :class:`~ipguard_jax.FingerprintConfig`.

    Example:
        >>> from ipguard_jax import FingerprintConfig
        >>> from ipguard_jax.methods import PGD
        >>> pgd = PGD(eps=0.1, steps=10)
        >>> config = FingerprintConfig()
        >>> pgd.budget(config), pgd.learning_rate(config), pgd.hyper(config)
        (10, 0.025, {'eps': 0.1})
    """

    name: ClassVar[str] = "method"

    def plan(self, config: Any) -> Plan:
        """The static :class:`Plan` for this method under ``config``.

        Args:
            config: the run's :class:`~ipguard_jax.FingerprintConfig`.

        Returns:
            The :class:`Plan` (objective, step rule, random start...).
        """
        raise NotImplementedError

    def hyper(self, config: Any) -> dict[str, float]:
        """Batch-wide scalars for the objective (traced in the compiled code).

        Args:
            config: the run's :class:`~ipguard_jax.FingerprintConfig`.

        Returns:
            Name -> value, e.g. ``{"eps": 0.03}``; empty for methods without any. Numbers
            become float32 scalars; other values (arrays, pytrees of arrays, such as the
            stacked parameters of :class:`~ipguard_jax.conferrable.Conferrable`'s members)
            are passed as they are.
        """
        del config
        return {}

    #: The :class:`~ipguard_jax.FingerprintConfig` fields this method reads besides the run
    #: settings (``num``, ``init``, ``target``, ``batch_size``, ``keep``, the loop...).
    config_fields: ClassVar[tuple[str, ...]] = ()

    def check(self, classifier: Any) -> None:
        """Refuses an owner the method cannot run on (nothing to check by default).

        Args:
            classifier: the owner :class:`~ipguard_jax.Classifier`.
        """
        del classifier

    def bind(self, config: Any) -> Any:
        """The config the run uses: ``config`` with the settings this method holds itself.

        The default returns ``config`` as it is; :class:`IPGuard` and
        :class:`~ipguard_jax.conferrable.Conferrable` put their ``k``, ``steps``, ``lr`` and
        ``tol`` in it when they are given, so the set's recorded config is the one that ran.

        Args:
            config: the run's :class:`~ipguard_jax.FingerprintConfig`.

        Returns:
            A :class:`~ipguard_jax.FingerprintConfig`.
        """
        return config

    def check_config(self, config: Any) -> None:
        """Refuses a config that sets IPGuard's own settings for a method that ignores them.

        ``k``, ``steps``, ``lr``, ``optimizer`` and ``tol`` of a
        :class:`~ipguard_jax.FingerprintConfig` belong to IPGuard (and the methods built on
        its loss); a baseline carries its own parameters, so a changed value there would be
        silently ignored.

        Args:
            config: the run's :class:`~ipguard_jax.FingerprintConfig`.

        Raises:
            ValueError: such a field differs from its default and the method does not read it.

        Example:
            >>> from ipguard_jax import FingerprintConfig
            >>> from ipguard_jax.methods import PGD
            >>> PGD().check_config(FingerprintConfig(k=5.0))
            Traceback (most recent call last):
            ...
            ValueError: FingerprintConfig.k=5.0 is IPGuard's setting; the pgd method ignores it: set the method's own parameters instead (PGD(eps=..., step_size=...))
        """
        defaults = type(config)()
        for name in ("k", "steps", "lr", "optimizer", "tol"):
            if name in self.config_fields:
                continue
            value = getattr(config, name)
            if value is not getattr(defaults, name) and value != getattr(defaults, name):
                shown = type(value).__name__ if name == "optimizer" else value
                raise ValueError(
                    f"FingerprintConfig.{name}={shown} is IPGuard's setting; the {self.name} "
                    f"method ignores it: set the method's own parameters instead "
                    f"({type(self).__name__}({', '.join(self._own_parameters())}))")

    def _own_parameters(self) -> list[str]:
        return [f"{f.name}=..." for f in dataclasses.fields(self)][:2] or ["..."]

    def screen(self, classifier: Any, arrays: dict[str, np.ndarray], config: Any
               ) -> tuple[np.ndarray, dict[str, Any]] | None:
        """A last filter on the generated points, and its counts for the provenance.

        Args:
            classifier: the owner.
            arrays: the run's per-candidate arrays (``x``, ``labels``, ``i``, ``j``,
                ``converged``...), labels already the owner's in float32.
            config: the run's :class:`~ipguard_jax.FingerprintConfig`.

        Returns:
            ``None`` (the default: no screening), or ``(passed, record)``: points with
            ``passed`` false no longer count as converged, and ``record`` goes into
            ``metadata["screening"]``.
        """
        del classifier, arrays, config
        return None

    def budget(self, config: Any) -> int:
        """The step budget per point (per round for :class:`CW`).

        Args:
            config: the run's :class:`~ipguard_jax.FingerprintConfig`.

        Returns:
            The most optimisation steps a point takes.
        """
        raise NotImplementedError

    def learning_rate(self, config: Any) -> float:
        """The step size (learning rate) of the step rule.

        Args:
            config: the run's :class:`~ipguard_jax.FingerprintConfig`.

        Returns:
            The step size passed to :func:`make_optimizer`.
        """
        del config
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        """Name and parameters, JSON-able, for provenance.

        Returns:
            ``{"name": ..., "params": {...}}``, as recorded in ``metadata["method"]``.

        Example:
            >>> from ipguard_jax.methods import FGSM
            >>> FGSM(eps=0.1).to_dict()
            {'name': 'fgsm', 'params': {'eps': 0.1, 'targeted': False}}
        """
        return {"name": self.name, "params": dataclasses.asdict(self)}


#: IPGuard's settings that :class:`IPGuard` and the methods built on its loss may hold
#: themselves instead of the :class:`~ipguard_jax.FingerprintConfig`.
IPGUARD_SETTINGS = ("k", "steps", "lr", "tol")


def bind_ipguard_settings(method: Method, config: Any) -> Any:
    """``config`` with the IPGuard settings ``method`` holds (its fields that are not ``None``).

    Raises:
        ValueError: a setting given both to the method and, with another value, to the config.
    """
    defaults = type(config)()
    given = {name: getattr(method, name) for name in IPGUARD_SETTINGS
             if getattr(method, name) is not None}
    for name, value in given.items():
        current = getattr(config, name)
        if current != getattr(defaults, name) and current != value:
            raise ValueError(
                f"{name} is set twice: {type(method).__name__}({name}={value!r}) and "
                f"FingerprintConfig({name}={current!r}); set it in one place")
    return dataclasses.replace(config, **given) if given else config


def check_ipguard_settings(method: Method) -> None:
    """Checks the IPGuard settings a method holds (``None``: the config's).

    Raises:
        TypeError: a setting that is not a number (``steps``: not an int).
        ValueError: ``k`` or ``tol`` negative or not finite, ``lr`` or ``steps`` not > 0.
    """
    for name in ("k", "lr", "tol"):
        value = getattr(method, name)
        if value is not None:
            _positive(name, value, zero_ok=name != "lr")
    if method.steps is not None:
        _positive("steps", method.steps, integer=True)


def _without_settings(params: dict[str, Any]) -> dict[str, Any]:
    # The settings are recorded once, in the run's config (see Method.bind).
    return {name: value for name, value in params.items() if name not in IPGUARD_SETTINGS}


@dataclasses.dataclass(frozen=True)
class IPGuard(Method):
    """IPGuard's boundary points (Cao, Jia and Gong, AsiaCCS 2021).

    Attributes:
        k: the margin by which the target ``j`` must beat the runner-up ``i``, in logits.
        steps: the most optimisation steps per point.
        lr: Adam's learning rate.
        tol: a point whose loss is ``<= tol`` stops and counts as converged.

    Each is ``None`` by default: the :class:`~ipguard_jax.FingerprintConfig`'s value
    (``FingerprintConfig(k=10)`` and ``IPGuard(k=10)`` run the same; the set's recorded
    config holds the value that ran). The optimiser, when not Adam, is
    ``FingerprintConfig.optimizer``.

    Raises:
        TypeError, ValueError: a setting that is not a number, or not finite and >= 0 (> 0
            for ``lr``; ``steps`` an int > 0).

    Example:
        >>> from ipguard_jax import FingerprintConfig
        >>> from ipguard_jax.methods import IPGuard
        >>> IPGuard().budget(FingerprintConfig(steps=200))
        200
        >>> IPGuard(k=10.0, steps=500).bind(FingerprintConfig()).k
        10.0
        >>> IPGuard(k=10.0).bind(FingerprintConfig(k=5.0))
        Traceback (most recent call last):
        ...
        ValueError: k is set twice: IPGuard(k=10.0) and FingerprintConfig(k=5.0); set it in one place
    """

    k: float | None = None
    steps: int | None = None
    lr: float | None = None
    tol: float | None = None

    name: ClassVar[str] = "ipguard"
    config_fields: ClassVar[tuple[str, ...]] = ("k", "steps", "lr", "optimizer", "tol")

    def __post_init__(self):
        check_ipguard_settings(self)

    def bind(self, config):
        return bind_ipguard_settings(self, config)

    def to_dict(self) -> dict[str, Any]:
        """Name and parameters; ``k``, ``steps``, ``lr`` and ``tol`` are in the run's config.

        Example:
            >>> from ipguard_jax.methods import IPGuard
            >>> IPGuard(k=10.0).to_dict()
            {'name': 'ipguard', 'params': {}}
        """
        return {"name": self.name, "params": _without_settings(dataclasses.asdict(self))}

    def plan(self, config):
        return Plan(IPGUARD, "adam", config.optimizer)

    def budget(self, config):
        return config.steps

    def learning_rate(self, config):
        return config.lr


@dataclasses.dataclass(frozen=True)
class RandomPoints(Method):
    """The start points themselves, labelled by the owner: real images (``init="data"``) or
    uniform noise (``init="noise"``). No optimisation; every point "converges".

    Example:
        >>> from ipguard_jax import FingerprintConfig
        >>> from ipguard_jax.methods import RandomPoints
        >>> RandomPoints().budget(FingerprintConfig())
        0
    """

    name: ClassVar[str] = "random"

    def plan(self, config):
        return Plan(RANDOM_OBJECTIVE)

    def budget(self, config):
        return 0


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


@dataclasses.dataclass(frozen=True)
class FGSM(Method):
    """Fast gradient sign method: ``x' = clip(x + eps * sign(grad_x CE(x, i)))`` (untargeted),
    or ``x' = clip(x - eps * sign(grad_x CE(x, j)))`` towards the target ``j`` (targeted).

    Attributes:
        eps: the step, in input units (for inputs in [0, 1], 8/255 is about 0.03).
        targeted: step towards the config's target class ``j`` instead of away from ``i``.

    Raises:
        TypeError: ``eps`` is not a number or ``targeted`` not a bool.
        ValueError: ``eps`` is not finite and > 0.

    Example:
        >>> from ipguard_jax.methods import FGSM
        >>> FGSM(eps=8 / 255, targeted=True).targeted
        True
    """

    eps: float = 0.03
    targeted: bool = False
    name: ClassVar[str] = "fgsm"

    def __post_init__(self):
        _positive("eps", self.eps)
        _check_bool("targeted", self.targeted)

    def plan(self, config):
        return Plan(TARGETED_LINF if self.targeted else UNTARGETED_LINF, "sign", uses_origin=True)

    def hyper(self, config):
        return {"eps": self.eps}

    def budget(self, config):
        return 1

    def learning_rate(self, config):
        return self.eps


@dataclasses.dataclass(frozen=True)
class PGD(Method):
    """Projected gradient descent (iterated FGSM, Madry et al.) in an L-inf or L2 ball.

    Each step moves ``step_size`` along the sign of the gradient (L-inf) or the unit gradient
    (L2), then projects onto the ``eps``-ball around the start point and onto the input box.

    Attributes:
        eps: the ball's radius, in input units.
        step_size: the step; ``None`` means ``2.5 * eps / steps``.
        steps: the number of steps (every point takes all of them).
        norm: ``"inf"`` or ``"2"``.
        targeted: descend the cross-entropy of the target ``j`` instead of ascending that of
            ``i``.
        random_start: start at a uniform random point of the ball (keyed per candidate).

    Raises:
        TypeError: a parameter of the wrong type (``steps`` must be an int).
        ValueError: ``eps``, ``steps`` or ``step_size`` not finite and > 0, or ``norm`` not
            ``"inf"`` or ``"2"``.

    Example:
        >>> from ipguard_jax.methods import PGD
        >>> PGD(eps=0.5, steps=10, norm="2").to_dict()["params"]["step_size"]
        0.125
    """

    eps: float = 0.03
    step_size: float | None = None
    steps: int = 20
    norm: Literal["inf", "2"] = "inf"
    targeted: bool = False
    random_start: bool = True
    name: ClassVar[str] = "pgd"

    def __post_init__(self):
        _positive("eps", self.eps)
        _positive("steps", self.steps, integer=True)
        if self.step_size is not None:
            _positive("step_size", self.step_size)
        if self.norm not in ("inf", "2"):
            raise ValueError(f"norm must be 'inf' or '2', got {self.norm!r}")
        _check_bool("targeted", self.targeted)
        _check_bool("random_start", self.random_start)

    def plan(self, config):
        objective = {("inf", False): UNTARGETED_LINF, ("inf", True): TARGETED_LINF,
                     ("2", False): UNTARGETED_L2, ("2", True): TARGETED_L2}[self.norm,
                                                                            self.targeted]
        if not self.random_start:
            perturb = None
        else:
            perturb = random_start_linf if self.norm == "inf" else random_start_l2
        return Plan(objective, "sign" if self.norm == "inf" else "l2", None, perturb, True)

    def hyper(self, config):
        return {"eps": self.eps}

    def budget(self, config):
        return self.steps

    def learning_rate(self, config):
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def to_dict(self):
        """Name and parameters, with ``step_size`` resolved (``2.5 * eps / steps`` if unset)."""
        out = super().to_dict()
        out["params"]["step_size"] = self.learning_rate(None)
        return out


@dataclasses.dataclass(frozen=True)
class CW(Method):
    """Carlini-Wagner L2, targeted at the config's ``j``.

    Minimises ``||x - x0||^2 + c * max(kappa - (Z_j - max_{t != j} Z_t), 0)`` over
    ``x = lo + (hi - lo) * (tanh(w) + 1) / 2`` (so ``x`` never leaves the box) with Adam, and
    binary-searches ``c`` per point over ``search_steps`` rounds: start at ``initial_c``; after
    a success, halve the gap towards the largest failing ``c``; after a failure, go ten times
    up until a success bounds it. Each point returns its least-distorted success over all steps
    and rounds (the last iterate of its first round if it never succeeds).

    Attributes:
        kappa: the confidence: the target's logit must lead every other by ``kappa``.
        steps: Adam steps per round.
        lr: Adam's learning rate (in tanh space).
        initial_c: the first ``c``.
        search_steps: rounds of the binary search.

    Raises:
        TypeError: a parameter of the wrong type (``steps`` and ``search_steps`` must be
            ints).
        ValueError: a parameter that is not finite and > 0 (``kappa``: >= 0).

    Example:
        >>> from ipguard_jax.methods import CW
        >>> CW(kappa=5.0, search_steps=3).to_dict()["params"]["kappa"]
        5.0
    """

    kappa: float = 0.0
    steps: int = 100
    lr: float = 0.05
    initial_c: float = 1.0
    search_steps: int = 5
    name: ClassVar[str] = "cw"

    def __post_init__(self):
        _positive("kappa", self.kappa, zero_ok=True)
        _positive("steps", self.steps, integer=True)
        _positive("lr", self.lr)
        _positive("initial_c", self.initial_c)
        _positive("search_steps", self.search_steps, integer=True)

    def plan(self, config):
        return Plan(CW_OBJECTIVE, "adam", uses_origin=True)

    def hyper(self, config):
        return {"kappa": self.kappa}

    def budget(self, config):
        return self.steps

    def learning_rate(self, config):
        return self.lr


def cw_search_update(c: Any, lower: Any, upper: Any, success: Any) -> tuple[Any, Any, Any]:
    """One round of CW's per-point binary search over ``c`` (numpy or jax arrays).

    Args:
        c: the ``c`` each point just used.
        lower: the largest ``c`` that failed so far (0 at first).
        upper: the smallest ``c`` that succeeded so far (``inf`` at first).
        success: whether each point succeeded with ``c``.

    Returns:
        ``(next_c, lower, upper)``.

    Example:
        >>> import numpy as np
        >>> from ipguard_jax.methods import cw_search_update
        >>> c, lower, upper = cw_search_update(np.array([1.0, 1.0]), np.zeros(2),
        ...                                    np.full(2, np.inf), np.array([True, False]))
        >>> c.tolist(), lower.tolist(), upper.tolist()  # midpoint after success, x10 after failure
        ([0.5, 10.0], [0.0, 1.0], [1.0, inf])
    """
    xp = jnp if isinstance(c, jax.Array) else np
    upper = xp.where(success, xp.minimum(upper, c), upper)
    lower = xp.where(success, lower, xp.maximum(lower, c))
    bounded = xp.isfinite(upper)
    next_c = xp.where(bounded, (lower + xp.where(bounded, upper, 0)) / 2, c * 10)
    return next_c, lower, upper


#: Method names accepted by ``generate(..., method=...)`` and their classes.
METHODS: dict[str, type[Method]] = {"ipguard": IPGuard, "random": RandomPoints, "fgsm": FGSM,
                                    "pgd": PGD, "cw": CW}


def resolve_method(method: str | Method) -> Method:
    """A :class:`Method` from a name (default parameters) or an instance.

    Args:
        method: a :data:`METHODS` name (``"ipguard"``, ``"random"``, ``"fgsm"``, ``"pgd"``,
            ``"cw"``) or a :class:`Method` instance, returned as it is.

    Returns:
        The method.

    Raises:
        ValueError: an unknown name.
        TypeError: neither a string nor a :class:`Method`.

    Example:
        >>> from ipguard_jax.methods import resolve_method
        >>> resolve_method("fgsm")
        FGSM(eps=0.03, targeted=False)
    """
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        if method == "conferrable":
            raise ValueError("method 'conferrable' needs its surrogate and reference models: "
                             "pass ipguard_jax.conferrable.Conferrable(surrogates=..., "
                             "references=...)")
        if method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)} or a Method instance, "
                             f"got {method!r}")
        return METHODS[method]()
    raise TypeError(f"method must be a name or an ipguard_jax.baselines.Method, got "
                    f"{type(method).__name__}")

