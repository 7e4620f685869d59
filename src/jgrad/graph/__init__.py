"""The Graph container and everything structural: construction, transforms, batching, padding."""

from ._batching import batch as batch
from ._batching import bucket_size as bucket_size
from ._batching import pad as pad
from ._batching import pad_to_bucket as pad_to_bucket
from ._batching import unbatch as unbatch
from ._checked import checked as checked
from ._graph import Graph as Graph
from ._interop import from_jraph as from_jraph
from ._interop import from_networkx as from_networkx
from ._interop import from_pyg as from_pyg
from ._interop import from_scipy as from_scipy
from ._interop import to_jraph as to_jraph
from ._interop import to_networkx as to_networkx
from ._interop import to_pyg as to_pyg
from ._interop import to_scipy as to_scipy
from ._structure import add_self_loops as add_self_loops
from ._structure import coalesce as coalesce
from ._structure import remove_self_loops as remove_self_loops
from ._structure import sort_by_receiver as sort_by_receiver
from ._structure import to_undirected as to_undirected

__all__ = [
    "Graph",
    "add_self_loops",
    "batch",
    "bucket_size",
    "checked",
    "coalesce",
    "from_jraph",
    "from_networkx",
    "from_pyg",
    "from_scipy",
    "pad",
    "pad_to_bucket",
    "remove_self_loops",
    "sort_by_receiver",
    "to_jraph",
    "to_networkx",
    "to_pyg",
    "to_scipy",
    "to_undirected",
    "unbatch",
]
