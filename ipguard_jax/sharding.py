"""Device placement: the candidate batch sharded over a mesh, parameters replicated.

Used by :func:`ipguard_jax.generate` and by verification of :class:`~ipguard_jax.Classifier`
suspects. ``mesh="auto"`` means a 1-D ``("batch",)`` mesh over every device (all hosts' devices
under ``jax.distributed``) when there are several, and nothing on one device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["Placement", "resolve_mesh"]


def resolve_mesh(mesh: Any) -> Mesh | None:
    """``"auto"`` -> a 1-D ``("batch",)`` mesh over all devices when there are several (all
    hosts' devices under ``jax.distributed``), else ``None``; a ``Mesh`` or ``None`` as is."""
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f'mesh must be "auto", None or a jax.sharding.Mesh, got {mesh!r}')
        if jax.device_count() == 1:
            return None
        return jax.make_mesh((jax.device_count(),), ("batch",),
                             axis_types=(jax.sharding.AxisType.Auto,))
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    raise TypeError(f'mesh must be "auto", None or a jax.sharding.Mesh, got '
                    f'{type(mesh).__name__}')


class Placement:
    """Where the arrays of a run live: the default device, or a mesh with the batch sharded.

    With a mesh, every per-candidate array is sharded along its leading (batch) axis over all
    of the mesh's axes and the classifier's parameters are replicated (parameters already laid
    out on the mesh, e.g. sharded for a model too big for one device, are left as they are).
    Global arrays are built from host data with ``jax.make_array_from_callback``, which works
    the same in one process and across hosts, where each process supplies its own devices'
    shards; results are gathered back to every process.
    """

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.size = 1 if mesh is None else mesh.size
        if mesh is not None:
            self.batch = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
            self.replicated = NamedSharding(mesh, PartitionSpec())

    def put(self, a: Any) -> jax.Array:
        """A batch-leading array, sharded along the batch."""
        if self.mesh is None:
            return jnp.asarray(a)
        if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(self.batch, a.ndim):
            return a
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, self.batch, lambda index: host[index])

    def replicate(self, tree: Any) -> Any:
        """Every leaf on every device of the mesh (leaves already on the mesh stay put)."""
        if self.mesh is None:
            return tree

        def one(leaf):
            if isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding) \
                    and leaf.sharding.mesh == self.mesh:
                return leaf
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, self.replicated,
                                                lambda index: host[index])

        return jax.tree.map(one, tree)

    def fetch(self, tree: Any) -> Any:
        """Numpy copies of (possibly sharded, possibly multi-host) arrays."""
        if jax.process_count() > 1:
            return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
        return jax.tree.map(np.asarray, tree)

    def padded(self, n: int) -> int:
        """``n`` rounded up to a multiple of the device count."""
        return -(-n // self.size) * self.size
