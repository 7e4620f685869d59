"""User-facing gradient APIs: w.r.t. edge weights, w.r.t. every entry of the adjacency, attributions.

- `edge_grad`: dL/dw for the existing edges (one backward pass); ``symmetric=True`` gives one value
  per undirected pair (`PairGrad`).
- `adjacency_grad`: dL/dA for all N^2 pairs, existing edges and missing ones, exact and held as
  low-rank factors (`AdjacencyGrad`: ``dense``, ``at``, ``row``, ``topk``, ``symmetric``).
- `saliency`, `integrated_gradients`: batched studies with ``vmap`` over targets or weight vectors.

Writing models for `adjacency_grad`: the factored gradient is exact for models whose uses of the
adjacency are linear per call once node scalings are held fixed: ``spmm``/``gspmm`` sums with the
graph's weights (also on ``graph.reverse()``), weighted degrees, `jgrad.ops.gcn_norm`, `row_norm`,
``graph.add_self_loops()``, `propagate`, and attention with ``edge_weight_mode="normalise"``; in plain
code, under ``jax.jit``/``nnx.jit`` and in ``lax.scan``/``lax.fori_loop`` loops. Max/min/mean message
reductions, weights used as per-edge data and other arithmetic on the weights raise, naming the
cause. Any model that is a function of the weighted adjacency can use ``mode="dense"`` on small graphs.
"""

from ._adjacency_result import AdjacencyGrad as AdjacencyGrad
from ._adjacency_result import AdjacencyTopK as AdjacencyTopK
from ._adjacency import adjacency_grad as adjacency_grad
from ._attribution import integrated_gradients as integrated_gradients
from ._attribution import saliency as saliency
from ._edge import PairGrad as PairGrad
from ._edge import edge_grad as edge_grad
from ._propagation import propagate as propagate

__all__ = [
    "AdjacencyGrad",
    "AdjacencyTopK",
    "PairGrad",
    "adjacency_grad",
    "edge_grad",
    "integrated_gradients",
    "propagate",
    "saliency",
]
