"""jgrad: exact, memory-frugal gradients through message passing in JAX.

Matrix convention: ``A[v, u]`` is the weight of the edge ``u -> v``, so aggregation is ``y = A @ x``.

Every subpackage loads on first use, so ``import jgrad`` (and ``jgrad --help``) costs next to nothing:
``jgrad.Graph`` imports JAX and the graph container, `jgrad.nn` adds Flax, `jgrad.train` Optax and
checkpoints, `jgrad.data` the shipped datasets; `jgrad.attacks`, `jgrad.parallel` and `jgrad.bench`
load only when named.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Subpackages imported on first attribute access.
_SUBMODULES = ("attacks", "bench", "config", "data", "gradients", "graph", "nn", "ops", "parallel", "train")
# Names re-exported from a subpackage, imported on first access: name -> subpackage.
_NAMES = {
    "AdjacencyGrad": "gradients",
    "adjacency_grad": "gradients",
    "edge_grad": "gradients",
    "Graph": "graph",
    "batch": "graph",
    "checked": "graph",
    "pad": "graph",
    "unbatch": "graph",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import attacks, data, gradients, graph, nn, ops, parallel, train  # noqa: F401
    from .gradients import AdjacencyGrad, adjacency_grad, edge_grad  # noqa: F401
    from .graph import Graph, batch, checked, pad, unbatch  # noqa: F401


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'jgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "train",
    "unbatch",
]
