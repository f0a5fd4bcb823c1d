"""Conferrable boundary points: IPGuard points that copies of the owner also give, and
independent models do not.

IPGuard's points sit just across the owner's boundary. A fine-tuned or pruned copy keeps that
boundary; a distilled student or a model extracted through the owner's prediction API learns
only the owner's answers on natural data and draws its own boundary near the points, so it
often misses them. Conferrable points (Lukas et al., ICLR 2021) are chosen so that models
*derived* from the owner agree with it and models trained *independently* do not. The defender
builds both kinds of models itself (:mod:`ipguard_jax.evaluation.factories`):

* **surrogates**: copies derived from the owner (distilled students of several architectures,
  one trained on the owner's hard labels only, fine-tuned and pruned copies);
* **references**: models trained independently (other seeds, data, architectures, also on the
  owner's own data).

:class:`Conferrable` runs on the same batched engine as IPGuard. For a start point with the
owner's label ``i`` and a target ``j`` it minimises, per point::

    L(x) = L_IPGuard(x)                                        # the owner: j by k, i runner-up
         + w_s * mean over the n_s surrogates that fit best of ReLU(m_s - lead_j(x))
         + w_r * mean over the n_r references that fit best of ReLU(lead_j(x) + m_r)

where ``lead_j = Z_j - max_{t != j} Z_t`` of that member: a surrogate must give ``j`` by the
margin ``m_s``; a reference must prefer another class by ``m_r``. ``n_s`` and ``n_r`` are the
shares :attr:`Conferrable.min_surrogates` and :attr:`Conferrable.min_references` of the
members (80% by default: the members that fit best count). A point succeeds when ``L(x) <= tol``: every condition holds.

Members of one architecture are stacked and ``vmap``-ped over their parameters, so one jitted
step evaluates the owner and every member. After the run, the points are **screened** once more
in float32 by label (:meth:`Conferrable.screen`): a kept point is one the required shares of
surrogates give the owner's label on and of references do not; the counts go into the set's
provenance (``metadata["screening"]``).

Never score a set against the surrogates or references that made it: they are the training set
of the fingerprint.

Example:
    >>> import jax.numpy as jnp
    >>> import ipguard_jax as ipg
    >>> from ipguard_jax.conferrable import Conferrable
    >>> apply = lambda p, x: x @ p
    >>> owner = ipg.Classifier(apply, jnp.eye(3), input_shape=(3,))
    >>> copy = ipg.Classifier(apply, jnp.eye(3) * 1.1, input_shape=(3,))
    >>> other = ipg.Classifier(apply, jnp.eye(3)[:, [1, 2, 0]], input_shape=(3,))
    >>> method = Conferrable(surrogates={"copy": copy}, references={"other": other},
    ...                      reference_margin=0.5)  # logits of this toy span [0, 1.1]
    >>> fp = ipg.generate(owner, ipg.FingerprintConfig(num=4, k=0.1, init="noise"), key=0,
    ...                   method=method, progress=False)
    >>> bool((copy.predict(fp.x) == fp.labels).all()), bool((other.predict(fp.x) != fp.labels).all())
    (True, True)
    >>> fp.metadata["screening"]["kept"] >= 4
    True
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ipguard_jax import core
from ipguard_jax.methods import Method, Plan, bind_ipguard_settings, check_ipguard_settings
from ipguard_jax.classifier import Classifier

__all__ = ["Conferrable", "MemberGroup", "stack_members", "member_lead"]


@dataclasses.dataclass(frozen=True, eq=False)
class MemberGroup:
    """Members that share one function and one parameter structure, parameters stacked.

    Attributes:
        apply_fn: the shared ``apply_fn(params, x) -> logits``.
        params: the members' parameter pytrees stacked along a new leading axis.
        size: how many members the group holds.
    """

    apply_fn: Any
    params: Any
    size: int


def _function_key(fn: Any) -> Any:
    # Two NNX classifiers of one architecture have equal graph definitions but distinct
    # ``functools.partial`` objects: compare partials by what they hold.
    if isinstance(fn, functools.partial):
        return ("partial", fn.func, fn.args, tuple(sorted(fn.keywords.items())))
    return ("function", fn)


def _structure_key(params: Any) -> Any:
    leaves, treedef = jax.tree.flatten(params)
    return treedef, tuple((tuple(np.shape(a)), str(jnp.result_type(a))) for a in leaves)


def stack_members(members: Sequence[Classifier]) -> tuple[MemberGroup, ...]:
    """Groups classifiers by function and parameter structure and stacks each group's params.

    Args:
        members: classifiers; those of one architecture (equal ``apply_fn`` -- for NNX models,
            equal graph definitions -- and equal parameter shapes) share a group.

    Returns:
        The groups, in order of first appearance; member ``m`` of the input is in exactly one.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import Classifier
        >>> from ipguard_jax.conferrable import stack_members
        >>> apply = lambda p, x: x @ p
        >>> a = Classifier(apply, jnp.eye(3), input_shape=(3,))
        >>> b = Classifier(apply, 2 * jnp.eye(3), input_shape=(3,))
        >>> [(g.size, g.params.shape) for g in stack_members([a, b])]
        [(2, (2, 3, 3))]
    """
    order: list[Any] = []
    grouped: dict[Any, list[Classifier]] = {}
    for member in members:
        key = (_function_key(member.apply_fn), _structure_key(member.params))
        if key not in grouped:
            order.append(key)
            grouped[key] = []
        grouped[key].append(member)
    groups = []
    for key in order:
        same = grouped[key]
        params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[m.params for m in same])
        groups.append(MemberGroup(same[0].apply_fn, params, len(same)))
    return tuple(groups)


def member_lead(logits: jax.Array, j: jax.Array) -> jax.Array:
    """How far class ``j`` leads every other class: ``Z_j - max_{t != j} Z_t`` per row.

    Args:
        logits: ``(M, C)`` logits of ``M`` models at one point.
        j: the class.

    Returns:
        ``(M,)``: positive where a model predicts ``j``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax.conferrable import member_lead
        >>> member_lead(jnp.array([[0.0, 2.0, 1.0], [3.0, 2.0, 0.0]]), 1).tolist()
        [1.0, -1.0]
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    others = jnp.where(jnp.arange(logits.shape[-1]) == j, -jnp.inf, logits)
    return logits[:, j] - jnp.max(others, axis=-1)


def _best_mean(gaps: jax.Array, need: int) -> jax.Array:
    """Mean of the ``need`` smallest gaps (0 when none is needed): 0 exactly when at least
    ``need`` members meet their condition."""
    if need == 0:
        return jnp.zeros((), gaps.dtype)
    return jnp.sort(gaps)[:need].mean()


@dataclasses.dataclass(frozen=True)
class _ConferrableLoss:
    """The per-point loss (static: hashed by its functions and member counts)."""

    surrogate_fns: tuple[Any, ...]
    reference_fns: tuple[Any, ...]
    surrogates_needed: int
    references_needed: int

    @staticmethod
    def _logits(fns, stacks, x):
        one = x[None]
        parts = [jax.vmap(lambda p, fn=fn: fn(p, one)[0])(stack) for fn, stack in zip(fns, stacks)]
        return jnp.concatenate(parts, axis=0)

    def __call__(self, logits, x, point, hyper):
        loss = core.ipguard_loss(logits, point["i"], point["j"], hyper["k"])
        members = hyper["members"]
        if self.surrogate_fns:
            lead = member_lead(self._logits(self.surrogate_fns, members["surrogates"], x),
                               point["j"])
            gaps = jax.nn.relu(hyper["surrogate_margin"] - lead)
            loss = loss + hyper["surrogate_weight"] * _best_mean(gaps, self.surrogates_needed)
        if self.reference_fns:
            lead = member_lead(self._logits(self.reference_fns, members["references"], x),
                               point["j"])
            gaps = jax.nn.relu(lead + hyper["reference_margin"])
            loss = loss + hyper["reference_weight"] * _best_mean(gaps, self.references_needed)
        return loss


def _members(value: Any, role: str) -> tuple[tuple[str, Classifier], ...]:
    if value is None:
        return ()
    if isinstance(value, Classifier):
        raise TypeError(f"{role} must be a mapping name -> Classifier or a sequence of "
                        f"Classifiers, got one Classifier; wrap it: [{role[:-1]}]")
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        # Classifiers, named by position; or (name, Classifier) pairs, as the method holds them
        # (so dataclasses.replace on a method works).
        items = [m if isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], Classifier)
                 else (f"{role[:-1]}-{n}", m) for n, m in enumerate(value)]
    else:
        raise TypeError(f"{role} must be a mapping name -> Classifier or a sequence of "
                        f"Classifiers, got {type(value).__name__}")
    for name, member in items:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{role}: names must be non-empty strings, got {name!r}")
        if not isinstance(member, Classifier):
            raise TypeError(f"{role}[{name!r}] must be an ipguard_jax.Classifier, got "
                            f"{type(member).__name__}")
    return tuple(items)


def _share(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value <= 1:
        raise ValueError(f"{name} must be a share in (0, 1], got {value!r}")


def _non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Conferrable(Method):
    """IPGuard boundary points that surrogates also give and references do not.

    The owner's term is IPGuard's loss with margin ``k``; ``k``, ``steps``, ``lr`` and
    ``tol`` are the method's when given (as for :class:`~ipguard_jax.methods.IPGuard`), else
    the run's :class:`~ipguard_jax.FingerprintConfig`'s; the optimiser, when not Adam, is
    ``FingerprintConfig.optimizer``.

    Attributes:
        surrogates: models derived from the owner (a mapping name -> :class:`Classifier`, or a
            sequence, named ``surrogate-0``...). May be empty if references are given.
        references: models trained independently of the owner (same forms).
        surrogate_margin: logit margin by which a surrogate must give the target ``j``.
        reference_margin: logit margin by which a reference must prefer a class other than ``j``.
        surrogate_weight: weight of the surrogate term.
        reference_weight: weight of the reference term.
        min_surrogates: share of the surrogates that must meet their condition (the others
            are free): ``1.0`` means all of them.
        min_references: share of the references that must meet theirs.
        k, steps, lr, tol: IPGuard's settings (``None``: the config's).

    The defaults (margins 1 and 3, shares 0.8) were chosen on development models that no
    evaluation scores (``benchmarks/tune_conferrable.py``, results in
    ``benchmarks/results/conferrable_tuning_digits.md``): a wider reference margin clears
    independent models best, and with ten surrogates and eight references requiring every
    member leaves few points that converge.

    Raises:
        TypeError: members that are not classifiers, or not given as a mapping or sequence.
        ValueError: no member at all, a negative or non-finite margin or weight, or a share
            outside ``(0, 1]``.

    Example:
        >>> import jax.numpy as jnp
        >>> from ipguard_jax import Classifier, FingerprintConfig
        >>> from ipguard_jax.conferrable import Conferrable
        >>> m = Classifier(lambda p, x: x @ p, jnp.eye(3), input_shape=(3,))
        >>> method = Conferrable(surrogates=[m], references={"ref": m}, min_references=0.5)
        >>> method.to_dict()["params"]["references"][0]["name"], method.budget(FingerprintConfig())
        ('ref', 1000)
    """

    surrogates: Any = ()
    references: Any = ()
    surrogate_margin: float = 1.0
    reference_margin: float = 3.0
    surrogate_weight: float = 1.0
    reference_weight: float = 1.0
    min_surrogates: float = 0.8
    min_references: float = 0.8
    k: float | None = None
    steps: int | None = None
    lr: float | None = None
    tol: float | None = None

    name: ClassVar[str] = "conferrable"
    config_fields: ClassVar[tuple[str, ...]] = ("k", "steps", "lr", "optimizer", "tol")

    def __post_init__(self):
        surrogates = _members(self.surrogates, "surrogates")
        references = _members(self.references, "references")
        if not surrogates and not references:
            raise ValueError("Conferrable needs at least one surrogate or reference model; "
                             "see ipguard_jax.evaluation.factories to make them")
        for name in ("surrogate_margin", "reference_margin", "surrogate_weight",
                     "reference_weight"):
            _non_negative(name, getattr(self, name))
        _share("min_surrogates", self.min_surrogates)
        _share("min_references", self.min_references)
        check_ipguard_settings(self)
        object.__setattr__(self, "surrogates", surrogates)
        object.__setattr__(self, "references", references)
        object.__setattr__(self, "_groups", {
            "surrogates": stack_members([m for _, m in surrogates]),
            "references": stack_members([m for _, m in references])})

    @property
    def surrogates_needed(self) -> int:
        """How many surrogates must give the target: ``ceil(min_surrogates * count)``."""
        return math.ceil(self.min_surrogates * len(self.surrogates) - 1e-9)

    @property
    def references_needed(self) -> int:
        """How many references must not give the target: ``ceil(min_references * count)``."""
        return math.ceil(self.min_references * len(self.references) - 1e-9)

    def check(self, classifier: Classifier) -> None:
        """Refuses members that do not fit the owner (input shape, bounds, classes, dtype).

        Args:
            classifier: the owner.

        Raises:
            ValueError: a member that differs from the owner in any of those.
        """
        for role, members in (("surrogate", self.surrogates), ("reference", self.references)):
            for name, member in members:
                for what in ("input_shape", "bounds", "num_classes", "dtype"):
                    mine, theirs = getattr(member, what), getattr(classifier, what)
                    if what == "dtype":
                        mine, theirs = np.dtype(mine), np.dtype(theirs)
                    if mine != theirs:
                        raise ValueError(f"{role} {name!r} has {what} {mine}, the owner "
                                         f"{theirs}: members must take the owner's inputs "
                                         f"and classes")

    def plan(self, config):
        loss = _ConferrableLoss(
            tuple(g.apply_fn for g in self._groups["surrogates"]),
            tuple(g.apply_fn for g in self._groups["references"]),
            self.surrogates_needed, self.references_needed)
        return Plan(core.Objective(loss=loss), "adam", config.optimizer)

    def hyper(self, config):
        del config
        return {"surrogate_margin": self.surrogate_margin,
                "reference_margin": self.reference_margin,
                "surrogate_weight": self.surrogate_weight,
                "reference_weight": self.reference_weight,
                "members": {role: tuple(g.params for g in groups)
                            for role, groups in self._groups.items()}}

    def budget(self, config):
        return config.steps

    def learning_rate(self, config):
        return config.lr

    def __repr__(self) -> str:
        names = {role: [name for name, _ in getattr(self, role)]
                 for role in ("surrogates", "references")}
        return (f"Conferrable(surrogates={names['surrogates']}, "
                f"references={names['references']}, surrogate_margin={self.surrogate_margin}, "
                f"reference_margin={self.reference_margin}, min_surrogates="
                f"{self.min_surrogates}, min_references={self.min_references})")

    def bind(self, config):
        return bind_ipguard_settings(self, config)

    def to_dict(self) -> dict[str, Any]:
        """Name, parameters and the members' names and parameter digests (JSON-able); ``k``,
        ``steps``, ``lr`` and ``tol`` are in the run's config.

        Returns:
            ``{"name": "conferrable", "params": {...}}``.
        """
        params = {name: getattr(self, name) for name in (
            "surrogate_margin", "reference_margin", "surrogate_weight", "reference_weight",
            "min_surrogates", "min_references")}
        for role in ("surrogates", "references"):
            params[role] = [{"name": name, "params_sha256": member.params_hash}
                            for name, member in getattr(self, role)]
        return {"name": self.name, "params": params}

    def agreement(self, x: Any, labels: Any, batch_size: int = 1024
                  ) -> tuple[np.ndarray, np.ndarray]:
        """How many surrogates and references give ``labels`` at ``x`` (float32, by label).

        Args:
            x: points ``(N, *input_shape)``.
            labels: ``(N,)`` the owner's labels there.
            batch_size: evaluation batch size.

        Returns:
            ``(surrogates_agreeing (N,), references_agreeing (N,))`` counts.
        """
        labels = np.asarray(labels)
        counts = []
        for members in (self.surrogates, self.references):
            agree = np.zeros(len(labels), np.int64)
            for _, member in members:
                agree += member.predict(x, batch_size) == labels
            counts.append(agree)
        return counts[0], counts[1]

    def screen(self, classifier: Classifier, arrays: Mapping[str, np.ndarray],
               config: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Which generated points pass the screening, and the counts for the provenance.

        A point passes when at least :attr:`surrogates_needed` surrogates give the owner's
        label there and at least :attr:`references_needed` references do not (by label, in
        float32: the margins are the optimiser's, the screening is the verdict's).

        Args:
            classifier: the owner.
            arrays: the run's per-candidate arrays (``x``, ``labels``, ``i``, ``j``,
                ``converged``).
            config: the run's :class:`~ipguard_jax.FingerprintConfig`.

        Returns:
            ``(passed (N,) bool, record)`` with the counts of candidates, owner-converged
            points (IPGuard's condition alone), points the surrogates agree on, points the
            references clear, and points that pass both.
        """
        x, labels = arrays["x"], arrays["labels"]
        n = len(labels)
        if n == 0:
            passed = np.zeros(0, bool)
            s_agree = r_agree = np.zeros(0, np.int64)
            owner_ok = passed
        else:
            s_agree, r_agree = self.agreement(x, labels)
            owner_loss = np.concatenate([np.asarray(core.batched_ipguard_loss(
                classifier(x[s:s + 1024]), jnp.asarray(arrays["i"][s:s + 1024]),
                jnp.asarray(arrays["j"][s:s + 1024]), jnp.float32(config.k)))
                for s in range(0, n, 1024)])
            owner_ok = owner_loss <= config.tol
        s_ok = s_agree >= self.surrogates_needed
        r_ok = (len(self.references) - r_agree) >= self.references_needed
        passed = s_ok & r_ok
        record = {
            "candidates": n,
            "owner_converged": int(owner_ok.sum()),
            "surrogates_agree": int((owner_ok & s_ok).sum()),
            "references_clear": int((owner_ok & r_ok).sum()),
            "kept": int((owner_ok & passed & arrays["converged"]).sum()),
            "surrogates": len(self.surrogates),
            "references": len(self.references),
            "surrogates_needed": self.surrogates_needed,
            "references_needed": self.references_needed,
        }
        return passed, record
