"""Differentiable message-passing kernels: segment reductions, g-SpMM, g-SDDMM, edge softmax, norms.

Every op is a pure function of arrays and a `jgrad.Graph`; it works under ``jit``, ``vmap``, reverse
mode of any order and forward mode. The graph carries its execution plan (``graph.plan``): the ops
run on the fastest backend for it without being told (see `use_backend`, `with_backend`).
"""

from .._src._messages import EDGE_OPS as EDGE_OPS
from .._src._messages import MESSAGE_OPS as MESSAGE_OPS
from ._backends import backend_of as backend_of
from ._backends import use_backend as use_backend
from ._backends import with_backend as with_backend
from ._edge_softmax import edge_softmax as edge_softmax
from ._edge_softmax import gat_attention as gat_attention
from ._gsddmm import gsddmm as gsddmm
from ._gspmm import gspmm as gspmm
from ._gspmm import spmm as spmm
from ._native import available as native_available
from ._norm import gcn_norm as gcn_norm
from ._norm import row_norm as row_norm
from ._segment import segment_logsumexp as segment_logsumexp
from ._segment import segment_max as segment_max
from ._segment import segment_mean as segment_mean
from ._segment import segment_min as segment_min
from ._segment import segment_reduce as segment_reduce
from ._segment import segment_softmax as segment_softmax
from ._segment import segment_std as segment_std
from ._segment import segment_sum as segment_sum

__all__ = [
    "EDGE_OPS",
    "backend_of",
    "MESSAGE_OPS",
    "edge_softmax",
    "gat_attention",
    "gcn_norm",
    "gsddmm",
    "gspmm",
    "native_available",
    "row_norm",
    "segment_logsumexp",
    "segment_max",
    "segment_mean",
    "segment_min",
    "segment_reduce",
    "segment_softmax",
    "segment_std",
    "segment_sum",
    "spmm",
    "use_backend",
    "with_backend",
]
