"""Device placement: the candidate batch sharded over a mesh, parameters replicated.

Used by :func:`ipguard_jax.generate` and by verification of :class:`~ipguard_jax.Classifier`
suspects. ``mesh="auto"`` means a 1-D ``("batch",)`` mesh over every device (all hosts' devices
under ``jax.distributed``) when there are several, and nothing on one device.

Example:
    >>> import jax, numpy as np
    >>> from jax.sharding import Mesh, PartitionSpec
    >>> from ipguard_jax.sharding import Placement
    >>> place = Placement(Mesh(jax.devices()[:1], ("batch",)))
    >>> place.put(np.zeros((4, 3))).sharding.spec == PartitionSpec("batch")
    True
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
    hosts' devices under ``jax.distributed``), else ``None``; a ``Mesh`` or ``None`` as is.

    Args:
        mesh: ``"auto"``, ``None`` or a ``jax.sharding.Mesh``.

    Returns:
        The mesh to shard over, or ``None`` for the default device.

    Raises:
        ValueError: a string other than ``"auto"``.
        TypeError: any other type.

    Example:
        >>> import jax
        >>> from jax.sharding import Mesh
        >>> from ipguard_jax.sharding import resolve_mesh
        >>> resolve_mesh(None) is None
        True
        >>> mesh = Mesh(jax.devices()[:1], ("batch",))
        >>> resolve_mesh(mesh) is mesh
        True
    """
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

    Args:
        mesh: the mesh (e.g. from :func:`resolve_mesh`), or ``None`` for the default device.

    Attributes:
        mesh: the mesh, or ``None``.
        size: the number of devices the batch is split over (1 without a mesh).

    Example:
        >>> import jax
        >>> from jax.sharding import Mesh
        >>> from ipguard_jax.sharding import Placement
        >>> place = Placement(Mesh(jax.devices()[:1], ("batch",)))
        >>> place.size, place.padded(5)
        (1, 5)
    """

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.size = 1 if mesh is None else mesh.size
        if mesh is not None:
            self.batch = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
            self.replicated = NamedSharding(mesh, PartitionSpec())

    def put(self, a: Any) -> jax.Array:
        """A batch-leading array, sharded along the batch.

        Args:
            a: an array (host or device) whose leading axis is the batch, padded to a
                multiple of :attr:`size` (see :meth:`padded`).

        Returns:
            A JAX array sharded over the mesh (already sharded arrays are returned as they
            are), or on the default device without a mesh.

        Example:
            >>> import numpy as np
            >>> from ipguard_jax.sharding import Placement
            >>> Placement(None).put(np.arange(3)).tolist()
            [0, 1, 2]
        """
        if self.mesh is None:
            return jnp.asarray(a)
        if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(self.batch, a.ndim):
            return a
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, self.batch, lambda index: host[index])

    def replicate(self, tree: Any) -> Any:
        """Every leaf on every device of the mesh (leaves already on the mesh stay put).

        Args:
            tree: a pytree of arrays, e.g. a classifier's parameters.

        Returns:
            The pytree with replicated leaves; ``tree`` itself without a mesh.

        Example:
            >>> import jax, numpy as np
            >>> from jax.sharding import Mesh, PartitionSpec
            >>> from ipguard_jax.sharding import Placement
            >>> place = Placement(Mesh(jax.devices()[:1], ("batch",)))
            >>> place.replicate({"w": np.ones(2)})["w"].sharding.spec == PartitionSpec()
            True
        """
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
        """Numpy copies of (possibly sharded, possibly multi-host) arrays.

        Args:
            tree: a pytree of arrays; with several processes, arrays sharded over all hosts
                (every process must call this).

        Returns:
            The pytree with NumPy leaves holding the whole arrays, in every process.

        Example:
            >>> import jax.numpy as jnp
            >>> from ipguard_jax.sharding import Placement
            >>> Placement(None).fetch({"x": jnp.arange(2)})
            {'x': array([0, 1], dtype=int32)}
        """
        if jax.process_count() > 1:
            return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
        return jax.tree.map(np.asarray, tree)

    def padded(self, n: int) -> int:
        """``n`` rounded up to a multiple of the device count.

        Args:
            n: a batch length.

        Returns:
            The smallest multiple of :attr:`size` that is ``>= n``.

        Example:
            >>> from ipguard_jax.sharding import Placement
            >>> Placement(None).padded(5)
            5
        """
        return -(-n // self.size) * self.size
