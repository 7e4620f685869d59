"""User-facing gradient APIs: w.r.t. edge weights, w.r.t. every entry of the adjacency, attributions.

- `edge_grad`: dL/dw for the existing edges (one backward pass); ``symmetric=True`` gives one value
  per undirected pair (`PairGrad`).
- `adjacency_grad`: dL/dA for all N^2 pairs, existing edges and missing ones, exact and held as
  low-rank factors (`AdjacencyGrad`: ``dense``, ``at``, ``row``, ``topk``, ``symmetric``).
- `saliency`, `integrated_gradients`: batched studies with ``vmap`` over targets or weight vectors.

Writing models for `adjacency_grad`: the factored gradient is exact when every use of the adjacency
is linear per call, i.e. an aggregation ``spmm(graph, m)`` with the graph's own weights or a weighted
degree ``graph.in_degree()`` / ``graph.out_degree()``. Normalisations must therefore be node
scalings around the raw aggregation, as `propagate` does::

    deg = graph.in_degree() + 1;  s = deg ** -0.5
    y = s * (spmm(graph, s * x) + s * x)          # = D^-1/2 (A + I) D^-1/2 x

and not per-edge normalised weights (`jgrad.ops.gcn_norm`, `row_norm`) or ``graph.add_self_loops()``
inside the model, which make the weights enter non-linearly; `adjacency_grad` detects that (the
factors disagree with `edge_grad` at the existing edges) and raises. Any model, linear or not, can
use ``adjacency_grad(..., mode="dense")`` on small graphs.
"""

from ._adjacency import AdjacencyGrad as AdjacencyGrad
from ._adjacency import AdjacencyTopK as AdjacencyTopK
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
