"""Graph neural network layers and models (Flax NNX) over the pure functions in `jgrad.nn.functional`.

Layers (``layer(graph, x, *, key=None)``): `GCNConv`, `GraphConv`, `SAGEConv`, `GATConv`, `GINConv`
and the `MessagePassing` base class. Models: `GCN`, `GAT`, `GraphSAGE`, `GIN`. Graph pooling:
`readout`. Dropout is active only when a PRNG ``key`` is passed; modules are stateless pytrees.
Node features may be a 2-D ``jax.experimental.sparse.BCOO`` (bag-of-words features): `GCN` and `GAT`
then drop out and multiply only the stored entries (see `functional.dropout`).
"""

from . import functional as functional
from ._layers import GATConv as GATConv
from ._layers import GCNConv as GCNConv
from ._layers import GINConv as GINConv
from ._layers import GraphConv as GraphConv
from ._layers import MessagePassing as MessagePassing
from ._layers import SAGEConv as SAGEConv
from ._models import GAT as GAT
from ._models import GCN as GCN
from ._models import GIN as GIN
from ._models import GraphSAGE as GraphSAGE
from .functional import readout as readout

__all__ = [
    "GAT",
    "GATConv",
    "GCN",
    "GCNConv",
    "GIN",
    "GINConv",
    "GraphConv",
    "GraphSAGE",
    "MessagePassing",
    "SAGEConv",
    "functional",
    "readout",
]
