"""Device meshes for jgrad's parallel ops, and the one place that picks JAX's ``shard_map``.

jgrad builds on JAX's own machinery: a `jax.sharding.Mesh` names the device axes, ``shard_map`` runs one
program per device, and ``jax.lax.psum`` / ``pmax`` / ``pmin`` / ``pmean`` combine the partial results.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

shard_map = jax.shard_map  # public since jax 0.7; the package needs jax >= 0.10

EDGE_AXIS = "edges"
"""Mesh axis over which edges are partitioned (`make_mesh`, `partition_edges`)."""

FEATURE_AXIS = "features"
"""Optional mesh axis over which the feature axis F of node data is split."""

DATA_AXIS = "data"
"""Mesh axis over which a stacked batch of graphs is split (data parallelism)."""


def make_mesh(
    n_edge_shards: int | None = None,
    n_feature_shards: int = 1,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A 2-D mesh ``(EDGE_AXIS, FEATURE_AXIS)`` over the first ``n_edge_shards * n_feature_shards`` devices.

    Args:
      n_edge_shards: D, the number of edge partitions; defaults to all devices divided by
        ``n_feature_shards``.
      n_feature_shards: how many pieces the feature axis F of node data is cut into (1: replicated).
      devices: the devices to use; defaults to ``jax.devices()`` (all processes' devices in a multi-host run).

    Returns:
      A `jax.sharding.Mesh` with axis names ``("edges", "features")`` and shape
      ``(n_edge_shards, n_feature_shards)``.

    Raises:
      ValueError: if more devices are asked for than exist, or a count is not a positive int.

    Example:
      >>> from jgrad.parallel import make_mesh
      >>> mesh = make_mesh(1)
      >>> dict(mesh.shape)
      {'edges': 1, 'features': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    problems = []
    if not isinstance(n_feature_shards, int) or isinstance(n_feature_shards, bool) or n_feature_shards < 1:
        raise ValueError(f"make_mesh: n_feature_shards must be a positive int; got {n_feature_shards!r}.")
    if n_edge_shards is None:
        n_edge_shards = max(len(devices) // n_feature_shards, 1)
    if not isinstance(n_edge_shards, int) or isinstance(n_edge_shards, bool) or n_edge_shards < 1:
        problems.append(f"n_edge_shards must be a positive int; got {n_edge_shards!r}.")
    elif n_edge_shards * n_feature_shards > len(devices):
        problems.append(
            f"needs n_edge_shards * n_feature_shards = {n_edge_shards * n_feature_shards} devices; got "
            f"{len(devices)}. On CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=8 before "
            "importing jax to get 8 virtual devices."
        )
    if problems:
        raise ValueError("make_mesh: " + " ".join(problems))
    grid = np.array(devices[: n_edge_shards * n_feature_shards], dtype=object)
    return Mesh(grid.reshape(n_edge_shards, n_feature_shards), (EDGE_AXIS, FEATURE_AXIS))


def make_data_mesh(n_devices: int | None = None, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh ``(DATA_AXIS,)`` over the first ``n_devices`` devices, for data-parallel training.

    Example:
      >>> from jgrad.parallel import make_data_mesh
      >>> dict(make_data_mesh(1).shape)
      {'data': 1}
    """
    devices = list(jax.devices() if devices is None else devices)
    n_devices = len(devices) if n_devices is None else n_devices
    if not isinstance(n_devices, int) or isinstance(n_devices, bool) or not 1 <= n_devices <= len(devices):
        raise ValueError(
            f"make_data_mesh: n_devices is out of range; got {n_devices!r}, expected 1 <= n_devices <= "
            f"{len(devices)} (the devices available)."
        )
    return Mesh(np.array(devices[:n_devices], dtype=object), (DATA_AXIS,))
