"""Scaling out on JAX's own distributed machinery: meshes, ``shard_map`` and collectives.

* **Edge sharding** (`partition_edges`, `sharded_spmm`, `sharded_gspmm`, `sharded_edge_softmax`): the
  edges of one large graph are split over the devices of a mesh axis ``"edges"``; node features are
  replicated (or split over ``"features"``); partial aggregations are combined with ``psum``,
  ``pmax`` or ``pmin``. Per device: E/D edges, N x F features, an N x F partial output.
* **Data parallelism** (`stack_graphs`, `shard_batch`, `data_parallel_value_and_grad`): a stacked batch
  of padded graphs split over a mesh axis ``"data"``; gradients averaged with ``pmean``.
* **Neighbour sampling** (`NeighborSampler`): GraphSAGE-style fixed-fanout blocks padded to static
  shapes, for graphs larger than device memory.

Multi-host runs call ``jax.distributed.initialize`` first; see ``docs/distributed.md``.
"""

from ._data_parallel import data_parallel_value_and_grad as data_parallel_value_and_grad
from ._data_parallel import shard_batch as shard_batch
from ._data_parallel import stack_graphs as stack_graphs
from ._data_parallel import stack_node_data as stack_node_data
from ._mesh import DATA_AXIS as DATA_AXIS
from ._mesh import EDGE_AXIS as EDGE_AXIS
from ._mesh import FEATURE_AXIS as FEATURE_AXIS
from ._mesh import make_data_mesh as make_data_mesh
from ._mesh import make_mesh as make_mesh
from ._mesh import shard_map as shard_map
from ._partition import ShardedGraph as ShardedGraph
from ._partition import partition_edges as partition_edges
from ._propagation import sharded_edge_softmax as sharded_edge_softmax
from ._propagation import sharded_gspmm as sharded_gspmm
from ._propagation import sharded_spmm as sharded_spmm
from ._sampler import NeighborSampler as NeighborSampler
from ._sampler import SampledBlocks as SampledBlocks

__all__ = [
    "DATA_AXIS",
    "EDGE_AXIS",
    "FEATURE_AXIS",
    "NeighborSampler",
    "SampledBlocks",
    "ShardedGraph",
    "data_parallel_value_and_grad",
    "make_data_mesh",
    "make_mesh",
    "partition_edges",
    "shard_batch",
    "shard_map",
    "sharded_edge_softmax",
    "sharded_gspmm",
    "sharded_spmm",
    "stack_graphs",
    "stack_node_data",
]
