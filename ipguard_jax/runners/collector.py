"""Gathering finished candidates, in any order, and the rule that stops a run."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ipguard_jax.config import FingerprintConfig

__all__ = ["Collector"]


class Collector:
    """Gathers finished candidates (in any order) and tracks the stopping rule."""

    def __init__(self, config: FingerprintConfig, want: int, progress: bool):
        self.config, self.want = config, want
        self.parts: list[dict[str, np.ndarray]] = []
        self.converged_ids: list[np.ndarray] = []
        self.drawn = self.converged = 0
        self.bar = tqdm(total=want, disable=not progress, unit="pt", desc="fingerprints",
                        leave=False, dynamic_ncols=True)

    def add(self, out: dict[str, np.ndarray], ids: np.ndarray, source: np.ndarray) -> None:
        if not out.pop("finite").all():
            raise ValueError(
                "the classifier produced non-finite logits (NaN or inf) during generation; "
                "check the model and its parameters"
            )
        out["source"], out["id"] = source, ids
        self.parts.append(out)
        self.drawn += len(ids)
        new = int(out["converged"].sum())
        self.converged += new
        self.converged_ids.append(ids[out["converged"]])
        self.bar.update(min(new, max(self.want - self.bar.n, 0)) if self.config.keep == "converged"
                        else len(ids))
        self.bar.set_postfix(converged=f"{self.converged}/{self.drawn}")

    def settled(self, lowest_open: float) -> bool:
        """Whether the first ``want`` converged candidates (by index) are known, given that no
        candidate below ``lowest_open`` is still running."""
        if self.config.keep != "converged" or self.converged < self.want:
            return False
        ids = np.sort(np.concatenate(self.converged_ids))
        return bool(ids[self.want - 1] < lowest_open)

    def merged(self) -> dict[str, np.ndarray]:
        """Everything collected so far, in the order collected (with ``id`` and ``source``)."""
        return {name: np.concatenate([p[name] for p in self.parts]) for name in self.parts[0]}

    def restore(self, merged: dict[str, np.ndarray]) -> None:
        """Takes back what a checkpoint saved from :meth:`merged`."""
        self.parts = [dict(merged)]
        self.drawn = len(merged["id"])
        self.converged = int(merged["converged"].sum())
        self.converged_ids = [merged["id"][merged["converged"]]]
        self.bar.update(min(self.converged, self.want) if self.config.keep == "converged"
                        else self.drawn)

    def arrays(self) -> dict[str, np.ndarray]:
        merged = self.merged()
        order = np.argsort(merged.pop("id"), kind="stable")  # candidate order
        return {name: a[order] for name, a in merged.items()}
