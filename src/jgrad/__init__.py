"""jgrad: exact, memory-frugal gradients through message passing in JAX.

Matrix convention: ``A[v, u]`` is the weight of the edge ``u -> v``, so aggregation is ``y = A @ x``.
"""

from . import graph as graph
from . import ops as ops
from .graph import Graph as Graph
from .graph import batch as batch
from .graph import checked as checked
from .graph import pad as pad
from .graph import unbatch as unbatch

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "batch",
    "checked",
    "graph",
    "ops",
    "pad",
    "unbatch",
]
