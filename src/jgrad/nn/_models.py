"""Reference GNN models built from the layers in `jgrad.nn`: GCN, GAT, GraphSAGE and GIN.

Every model is called as ``model(graph, x, *, key=None)``. Dropout is active only when ``key`` is
given (training); with ``key=None`` the model is deterministic (evaluation). Models are stateless
NNX modules, so ``nnx.split(model)`` gives ``(graphdef, state)`` and ``jax.jit`` / ``jax.grad`` apply
to them directly.

Parameter paths. The convolutions of every model are in the list attribute ``layers``, so the
parameters of layer ``i`` sit under the path prefix ``("layers", i)``, e.g.
``("layers", 0, "kernel")`` and ``("layers", 0, "bias")`` for GCN.

Weight decay on some layers only. The GCN paper decays the first layer only. Give ``optax.masked`` a
*function* of the parameters rather than a precomputed mask: optax then builds the mask from the
pytree it is handed, which is a state of ``nnx.Param`` variables under ``nnx.Optimizer`` and plain
arrays for the pure-dict parameters of `jgrad.train.split_model`. (A mask precomputed from
``nnx.state(model, nnx.Param)`` fails in ``nnx.Optimizer`` with a pytree structure error.) With
``nnx.Optimizer``:

    >>> import jax, jax.numpy as jnp, optax, jgrad
    >>> from flax import nnx
    >>> def first_layer(params):
    ...     return jax.tree_util.tree_map_with_path(
    ...         lambda path, _: path[0].key == "layers" and path[1].key == 0, params)
    >>> tx = optax.chain(optax.masked(optax.add_decayed_weights(5e-4), first_layer), optax.adam(1e-2))
    >>> model = jgrad.nn.GCN(4, 8, 3, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> g = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
    >>> loss = lambda model: jnp.mean(model(g, jnp.ones((3, 4))) ** 2)
    >>> @nnx.jit
    ... def train_step(model, optimizer):
    ...     optimizer.update(model, nnx.grad(loss)(model))
    >>> train_step(model, optimizer)

The same ``tx`` with optax on the pure-dict parameters (what `jgrad.train` trains), where the mask
selects layer 0's bias and kernel:

    >>> from jgrad.train import split_model
    >>> model_def, params = split_model(model)
    >>> jax.tree.leaves(first_layer(params))  # layers/0/bias, layers/0/kernel, layers/1/...
    [True, True, False, False]
    >>> @jax.jit
    ... def step(params, opt_state):
    ...     grads = jax.grad(lambda p: loss(model_def.merge(p)))(params)
    ...     updates, opt_state = tx.update(grads, opt_state, params)
    ...     return optax.apply_updates(params, updates), opt_state
    >>> params, opt_state = step(params, tx.init(params))

`jgrad.train.make_optimizer` (``decay="first_layer"`` decays layer 0's kernel, not its bias) works
in both settings too.

GIN additionally has the classifier ``head`` (an ``nnx.Linear``: ``("head", "kernel")``,
``("head", "bias")``), which is not part of ``layers``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .._src._checks import check_graph
from .._src._types import check_choice
from ..graph import Graph
from . import functional as F
from ._layers import GATConv, GCNConv, GINConv, SAGEConv, _refuse_extra


def _split(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


def _check_model(where: str, n_layers: int, dropout: float) -> None:
    problems = []
    if not (isinstance(n_layers, int) and not isinstance(n_layers, bool) and n_layers >= 1):
        problems.append(f"n_layers must be an int >= 1; got {n_layers!r}.")
    if not 0.0 <= dropout < 1.0:
        problems.append(f"dropout must be in [0, 1); got {dropout!r}.")
    if problems:
        raise ValueError(f"{where}: " + " ".join(problems))


def _widths(in_features: int, hidden_features: int, out_features: int, n_layers: int) -> list[tuple[int, int]]:
    sizes = [in_features] + [hidden_features] * (n_layers - 1) + [out_features]
    return list(zip(sizes[:-1], sizes[1:]))


class GCN(nnx.Module):
    """The GCN of Kipf & Welling: ``n_layers`` `GCNConv` with ReLU between and dropout on each input.

    ``y = GCNConv_L(... relu(GCNConv_1(dropout(x))) ...)``: dropout (rate ``dropout``) on the input of
    every layer, ReLU after every layer but the last, logits out. The normalisation (``D̂^-1/2`` for
    ``norm="sym"``) is computed once per call and shared by all layers.

    ``x`` may be a 2-D ``jax.experimental.sparse.BCOO`` (e.g. ``BCOO.fromdense(features)``, built once
    outside ``jit``): the first dropout then draws only for the stored entries and the first product
    is sparse, which for bag-of-words features such as Cora's (1.3% non-zero) is most of the cost of a
    training step with dense features. The distribution of the model's outputs is the same.

    Args:
      in_features, hidden_features, out_features: F_in, hidden width, number of classes.
      n_layers: number of GCNConv layers (>= 1).
      dropout: dropout rate, applied only when a ``key`` is passed.
      norm: every layer's normalisation, ``"sym"``, ``"row"`` or ``None`` (see `GCNConv`).
      use_bias: learn a bias in every layer.
      rngs: `nnx.Rngs` for the initialisation.

    Parameter paths: ``("layers", i, "kernel")``, ``("layers", i, "bias")`` (no bias with
    ``use_bias=False``, as in the paper's layers).

    Example:
      >>> import jax, jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> model = jgrad.nn.GCN(4, 8, 3, rngs=nnx.Rngs(0))
      >>> g = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
      >>> train_forward = jax.jit(lambda model, g, x, key: model(g, x, key=key))  # dropout on: a key
      >>> train_forward(model, g, jnp.ones((3, 4)), jax.random.key(0)).shape
      (3, 3)
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, *, n_layers: int = 2,
                 dropout: float = 0.5, norm: str | None = "sym", use_bias: bool = True, rngs: nnx.Rngs,
                 param_dtype: Any = jnp.float32):
        _check_model("GCN", n_layers, dropout)
        self.dropout = dropout
        self.layers = nnx.List([GCNConv(i, o, rngs=rngs, norm=norm, use_bias=use_bias, param_dtype=param_dtype)
                                for i, o in _widths(in_features, hidden_features, out_features, n_layers)])

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        """(N, in_features) -> (N, out_features) logits."""
        _refuse_extra(self, graph, extra, unexpected)
        check_graph(type(self).__name__, graph)
        keys = _split(key, len(self.layers))
        scaling = self.layers[0].prepare(graph)
        for i, layer in enumerate(self.layers):
            x = F.dropout(x, self.dropout, keys[i])
            x = layer(graph, x, scaling=scaling)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class GAT(nnx.Module):
    """The two-layer GAT of Veličković et al. for node classification.

    ``y = GATConv_2(dropout(elu(GATConv_1(dropout(x)))))``: the first layer has ``heads`` heads of
    width ``hidden_features``, concatenated; the output layer has ``out_heads`` heads of width
    ``out_features``, averaged. Dropout (rate ``dropout``) hits the input of each layer and the
    attention coefficients, only when a ``key`` is passed. ``edge_weight_mode`` is passed to both
    layers (see `GATConv`); ``"normalise"`` makes `jgrad.adjacency_grad` exact at every pair.

    Parameter paths: ``("layers", i, name)`` for name in ``kernel``, ``att_src``, ``att_dst``, ``bias``.

    Example:
      >>> import jax, jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> model = jgrad.nn.GAT(4, 8, 3, heads=2, rngs=nnx.Rngs(0))
      >>> g = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
      >>> forward = jax.jit(lambda model, g, x: model(g, x))  # models are pytrees: jit takes them as arguments
      >>> forward(model, g, jnp.ones((3, 4))).shape
      (3, 3)
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, *, heads: int = 8,
                 out_heads: int = 1, dropout: float = 0.6, negative_slope: float = 0.2, rngs: nnx.Rngs,
                 param_dtype: Any = jnp.float32, edge_weight_mode: str = "after_softmax"):
        _check_model("GAT", 2, dropout)
        self.dropout = dropout
        self.layers = nnx.List([
            GATConv(in_features, hidden_features, heads=heads, concat=True, dropout=dropout,
                    negative_slope=negative_slope, rngs=rngs, param_dtype=param_dtype,
                    edge_weight_mode=edge_weight_mode),
            GATConv(hidden_features * heads, out_features, heads=out_heads, concat=False, dropout=dropout,
                    negative_slope=negative_slope, rngs=rngs, param_dtype=param_dtype,
                    edge_weight_mode=edge_weight_mode),
        ])

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        """(N, in_features) -> (N, out_features) logits."""
        _refuse_extra(self, graph, extra, unexpected)
        check_graph(type(self).__name__, graph)
        keys = _split(key, 2 * len(self.layers))
        for i, layer in enumerate(self.layers):
            x = F.dropout(x, self.dropout, keys[2 * i])
            x = layer(graph, x, key=keys[2 * i + 1])
            if i < len(self.layers) - 1:
                x = jax.nn.elu(x)
        return x


class GraphSAGE(nnx.Module):
    """GraphSAGE: ``n_layers`` `SAGEConv` with ReLU between and dropout on each layer's input.

    Parameter paths: ``("layers", i, name)`` for name in ``neighbour_kernel``, ``root_kernel``, ``bias``.

    Example:
      >>> import jax, jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> model = jgrad.nn.GraphSAGE(4, 8, 3, aggregator="max", rngs=nnx.Rngs(0))
      >>> g = jgrad.Graph.from_edges([0, 1, 2], [1, 2, 0], n_nodes=3)
      >>> jax.jit(lambda model, g, x: model(g, x))(model, g, jnp.ones((3, 4))).shape
      (3, 3)
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, *, n_layers: int = 2,
                 dropout: float = 0.5, aggregator: str = "mean", rngs: nnx.Rngs,
                 param_dtype: Any = jnp.float32):
        _check_model("GraphSAGE", n_layers, dropout)
        self.dropout = dropout
        self.layers = nnx.List([
            SAGEConv(i, o, aggregator=aggregator, rngs=rngs, param_dtype=param_dtype)
            for i, o in _widths(in_features, hidden_features, out_features, n_layers)
        ])

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        """(N, in_features) -> (N, out_features) logits."""
        _refuse_extra(self, graph, extra, unexpected)
        check_graph(type(self).__name__, graph)
        keys = _split(key, len(self.layers))
        for i, layer in enumerate(self.layers):
            x = F.dropout(x, self.dropout, keys[i])
            x = layer(graph, x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class GIN(nnx.Module):
    """GIN of Xu et al.: ``n_layers`` `GINConv` (ReLU after each), then a linear head.

    Node mode (``readout=None``): ``head(dropout(h))`` gives (N, out_features) node logits.
    Graph mode (``readout`` = ``"sum"``, ``"mean"`` or ``"max"``): the node features are pooled per
    graph with `jgrad.nn.readout` (padding nodes excluded), then ``head(dropout(pooled))`` gives
    (G, out_features) graph logits; the padding graph of a `jgrad.pad` batch pools to zeros, so its
    row is ``head.bias`` and should be masked out of the loss with ``graph.graph_mask``.

    Args:
      in_features, hidden_features, out_features: F_in, hidden width (also the MLP width), classes.
      n_layers: number of GINConv layers (>= 1).
      dropout: dropout rate before the head, only when a ``key`` is passed.
      readout: ``None`` for node outputs, or the graph pooling.
      train_eps: learn each layer's eps.
      rngs: `nnx.Rngs` for the initialisation.

    Parameter paths: ``("layers", i, "eps")``, ``("layers", i, "mlp", j, "kernel" | "bias")`` and
    ``("head", "kernel" | "bias")``.

    Example:
      >>> import jax, jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> g = jgrad.Graph.from_edges([0], [1], n_nodes=2)
      >>> model = jgrad.nn.GIN(3, 8, 2, n_layers=2, readout="sum", rngs=nnx.Rngs(0))
      >>> jax.jit(lambda model, g, x: model(g, x))(model, jgrad.batch([g, g, g]), jnp.ones((6, 3))).shape
      (3, 2)
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, *, n_layers: int = 3,
                 dropout: float = 0.5, readout: str | None = None, train_eps: bool = True, rngs: nnx.Rngs,
                 param_dtype: Any = jnp.float32):
        _check_model("GIN", n_layers, dropout)
        if readout is not None:
            check_choice("GIN", "readout", readout, F.READOUTS)
        self.dropout, self.readout = dropout, readout
        sizes = [in_features] + [hidden_features] * n_layers
        self.layers = nnx.List([
            GINConv(i, o, hidden_features=hidden_features, train_eps=train_eps, rngs=rngs,
                    param_dtype=param_dtype)
            for i, o in zip(sizes[:-1], sizes[1:])
        ])
        self.head = nnx.Linear(hidden_features, out_features, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        """(N, in_features) -> (N, out_features), or (G, out_features) with a readout."""
        _refuse_extra(self, graph, extra, unexpected)
        check_graph(type(self).__name__, graph)
        for layer in self.layers:
            x = jax.nn.relu(layer(graph, x))
        if self.readout is not None:
            x = F.readout(graph, x, self.readout)
        return self.head(F.dropout(x, self.dropout, key))
