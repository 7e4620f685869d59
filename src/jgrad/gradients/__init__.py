"""User-facing gradient APIs: w.r.t. edge weights, w.r.t. every entry of the adjacency, attributions.

Layers whose gradient w.r.t. the whole adjacency should be exact and cheap use `propagate`, which
writes GCN / mean normalisations as node scalings around the raw-weight aggregation.
"""

from ._propagation import propagate as propagate

__all__ = [
    "propagate",
]
