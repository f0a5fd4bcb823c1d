"""FingerprintConfig: every choice the IPGuard method leaves open, validated, with defaults.

Example:
    >>> from ipguard_jax import FingerprintConfig
    >>> config = FingerprintConfig(num=50, k=1.0, keep="all")
    >>> config.candidate_budget, config.to_dict()["optimizer"]
    (50, 'adam(learning_rate=0.01)')
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import optax

INITS = ("data", "noise")
TARGETS = ("random", "least_likely")
KEEPS = ("converged", "all")
LOOPS = ("auto", "device", "host")
PRECISIONS = ("float32", "bfloat16")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


@dataclasses.dataclass(frozen=True)
class FingerprintConfig:
    """How to generate a set of IPGuard fingerprints.

    Attributes:
        num: how many fingerprints to return.
        k: the margin, in logit units, by which the target ``j`` must beat the runner-up ``i``.
            Larger ``k`` pushes points further past the boundary: more robust to pirates'
            post-processing, but more likely to be matched by independent models too. Logit
            scales differ between models; :func:`ipguard_jax.suggest_k` scales ``k`` to a model.
        steps: the most optimisation steps per point.
        lr: learning rate of the default optimiser, Adam (ignored when ``optimizer`` is given).
        optimizer: any optax ``GradientTransformation``; ``None`` means ``optax.adam(lr)``. Each
            point gets its own optimiser state.
        tol: a point whose loss is ``<= tol`` stops moving and counts as converged.

            ``k``, ``steps``, ``lr`` and ``tol`` are IPGuard's settings: they may instead be
            given to the method, ``generate(..., method=IPGuard(k=10.0))``, which runs as
            ``FingerprintConfig(k=10.0)`` does (the set records the config that ran). The
            baselines refuse them (they carry their own parameters).
        init: ``"data"`` starts from given images; ``"noise"`` from uniform noise in the bounds.
        target: ``"random"`` (uniform over the classes other than ``i``) or ``"least_likely"``.
        batch_size: candidate points optimised together; device memory is O(batch_size).
        keep: ``"converged"`` keeps drawing candidates until ``num`` points converged (or the
            candidate budget runs out) and returns converged points only; ``"all"`` optimises
            exactly ``num`` candidates and returns them all, converged or not.
        max_candidates: the candidate budget for ``keep="converged"``; ``None`` means
            ``4 * num`` (capped by the number of data points with ``init="data"``).
        loop: where the step loop runs (same steps, same results either way): ``"device"``, a
            ``lax.while_loop`` inside one compiled call; ``"host"``, compiled blocks of
            ``block_steps`` unrolled steps driven from Python, which is several times faster for
            convolutional models on XLA's CPU backend (convolutions in loop bodies are slow
            there); ``"auto"`` (default) picks ``"host"`` when the run is on CPU devices and
            ``"device"`` on GPU/TPU (decided by :func:`ipguard_jax.generate` from the devices
            the run uses, and recorded in ``metadata["loop"]``; see ``docs/backends.md``).
        block_steps: steps per compiled block with ``loop="host"``, and steps between two
            looks at the working batch with compaction (larger blocks mean fewer host
            round-trips but longer compiles).
        compact: swap finished points out of the working batch for fresh candidates as it
            runs, so no step waits for a batch's slowest point. Each candidate follows the same
            path as without compaction, and the same candidates are returned (tested); only the
            count of candidates drawn may differ. Once every candidate has started, the batch
            shrinks by halves to the points still running. With ``loop="host"`` the host
            refills after every block; with ``loop="device"`` the refills happen inside the
            compiled loop, a few finished slots at a time, with the same results. ``"auto"``
            (default) turns it on for runs on GPU/TPU and off on CPU (recorded in
            ``metadata["compact"]``); ``True`` or ``False`` is used as given on every backend.
            The Carlini-Wagner baseline never compacts.
        precision: ``"float32"`` (default) or ``"bfloat16"``: the classifier's forward and
            backward passes run in bfloat16 (parameters and inputs cast, logits cast back),
            while the loss, the points and the optimiser updates stay float32. Faster on
            hardware with bfloat16 units (TPU, recent GPUs); the fingerprints' labels are
            still the float32 owner's (see :func:`ipguard_jax.generate`).

    Raises:
        TypeError: a field of the wrong type (``num``, ``steps``, ``batch_size``,
            ``block_steps`` and ``max_candidates`` must be ints; ``compact`` a bool or
            ``"auto"``;
            ``optimizer`` an optax transformation).
        ValueError: a value out of range (counts <= 0, ``k < 0``, ``lr <= 0``, ``tol < 0``,
            non-finite numbers, an unknown ``init``/``target``/``keep``/``loop``/``precision``,
            a ``compact`` string other than ``"auto"``, ``max_candidates < num``).

    Example:
        >>> from ipguard_jax import FingerprintConfig
        >>> FingerprintConfig(num=100, k=3.0, init="noise").steps
        1000
    """

    num: int = 100
    k: float = 3.0
    steps: int = 1000
    lr: float = 0.01
    optimizer: optax.GradientTransformation | None = None
    tol: float = 0.0
    init: Literal["data", "noise"] = "data"
    target: Literal["random", "least_likely"] = "random"
    batch_size: int = 128
    keep: Literal["converged", "all"] = "converged"
    max_candidates: int | None = None
    loop: Literal["auto", "device", "host"] = "auto"
    block_steps: int = 4
    compact: bool | Literal["auto"] = "auto"
    precision: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self):
        # numpy scalars (e.g. from a sweep) become plain Python values: hashable, JSON-able
        for name in ("num", "steps", "batch_size", "block_steps", "max_candidates"):
            value = getattr(self, name)
            if _is_int(value):
                object.__setattr__(self, name, int(value))
        for name in ("k", "lr", "tol"):
            value = getattr(self, name)
            if _is_number(value):
                object.__setattr__(self, name, float(value))
        if isinstance(self.compact, str):
            if self.compact != "auto":
                raise ValueError(f'compact must be True, False or "auto", got {self.compact!r}')
        elif isinstance(self.compact, (bool, np.bool_)):
            object.__setattr__(self, "compact", bool(self.compact))
        else:
            raise TypeError(f'compact must be True, False or "auto", got {self.compact!r}')
        for name in ("num", "steps", "batch_size", "block_steps"):
            value = getattr(self, name)
            if not _is_int(value):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("k", "lr", "tol"):
            value = getattr(self, name)
            if not _is_number(value):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.tol < 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        for name, allowed in (("init", INITS), ("target", TARGETS), ("keep", KEEPS),
                              ("loop", LOOPS), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.optimizer is not None and not (
            callable(getattr(self.optimizer, "init", None))
            and callable(getattr(self.optimizer, "update", None))
        ):
            raise TypeError(
                f"optimizer must be an optax.GradientTransformation, got {self.optimizer!r}"
            )
        if self.max_candidates is not None:
            if not _is_int(self.max_candidates):
                raise TypeError(f"max_candidates must be an int, got {self.max_candidates!r}")
            if self.max_candidates < self.num:
                raise ValueError(
                    f"max_candidates ({self.max_candidates}) must be >= num ({self.num})"
                )

    @property
    def candidate_budget(self) -> int:
        """The most candidate points ``generate`` draws (before any data-size cap).

        ``num`` with ``keep="all"``; else ``max_candidates``, or ``4 * num`` when unset.

        Example:
            >>> from ipguard_jax import FingerprintConfig
            >>> FingerprintConfig(num=10).candidate_budget
            40
        """
        if self.keep == "all":
            return self.num
        return self.max_candidates if self.max_candidates is not None else 4 * self.num

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values; a custom optimizer is recorded by its ``repr``.

        Returns:
            Every field by name, as recorded in ``Fingerprints.metadata["config"]``; the
            ``optimizer`` entry is ``"adam(learning_rate=...)"`` for the default, else
            ``"custom: <repr>"`` (at most 500 characters).

        Example:
            >>> from ipguard_jax import FingerprintConfig
            >>> d = FingerprintConfig(k=1.0).to_dict()
            >>> d["k"], d["optimizer"]
            (1.0, 'adam(learning_rate=0.01)')
        """
        out = dataclasses.asdict(dataclasses.replace(self, optimizer=None))
        out["optimizer"] = (f"adam(learning_rate={self.lr})" if self.optimizer is None
                            else f"custom: {self.optimizer!r}"[:500])
        return out
