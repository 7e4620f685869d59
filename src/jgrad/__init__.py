"""jgrad: exact, memory-frugal gradients through message passing in JAX.

Matrix convention: ``A[v, u]`` is the weight of the edge ``u -> v``, so aggregation is ``y = A @ x``.
"""

from . import attacks as attacks
from . import data as data
from . import gradients as gradients
from . import graph as graph
from . import nn as nn
from . import ops as ops
from . import parallel as parallel
from .gradients import AdjacencyGrad as AdjacencyGrad
from .gradients import adjacency_grad as adjacency_grad
from .gradients import edge_grad as edge_grad
from .graph import Graph as Graph
from .graph import batch as batch
from .graph import checked as checked
from .graph import pad as pad
from .graph import unbatch as unbatch

__version__ = "0.1.0"

# Heavier subpackages (checkpointing, benchmarks, attacks) load on first attribute access.
_LAZY_SUBMODULES = ("attacks", "bench", "train")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'jgrad' has no attribute {name!r}")


__all__ = [
    "AdjacencyGrad",
    "Graph",
    "adjacency_grad",
    "attacks",
    "batch",
    "checked",
    "data",
    "edge_grad",
    "gradients",
    "graph",
    "nn",
    "ops",
    "pad",
    "parallel",
    "unbatch",
]
