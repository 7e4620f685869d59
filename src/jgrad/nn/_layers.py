"""Flax NNX graph layers: each owns its parameters (``nnx.Param``) and calls `jgrad.nn.functional`.

Every layer is called as ``layer(graph, x, *, key=None)`` and returns new node features; PyG's
``conv(x, edge_index, edge_weight)`` and its ``edge_weight=`` / ``edge_attr=`` / ``edge_index=`` keywords
raise a TypeError that names jgrad's equivalent (the edge weights belong to the graph). Layers are
stateless: nothing is mutated in ``__call__``, randomness comes only from ``key`` (dropout is active
only when a key is given), so a layer is a plain pytree usable directly under ``jax.jit``,
``jax.grad`` and ``jax.vmap``, and splits with ``nnx.split(layer) -> (graphdef, state)``.

Kernels have shape (F_in, F_out) and are initialised with Glorot (Xavier) uniform, biases with zeros.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .._src import _pyg_names
from .._src._types import REDUCERS, check_choice
from ..graph import Graph
from ..ops import gspmm
from . import functional as F

_glorot = nnx.initializers.glorot_uniform()


def _check_sizes(where: str, **sizes: Any) -> None:
    bad = [f"{name}={value!r}" for name, value in sizes.items()
           if not (isinstance(value, int) and not isinstance(value, bool) and value > 0)]
    if bad:
        raise ValueError(f"{where}: feature sizes must be positive ints; got {', '.join(bad)}.")


def _refuse_extra(layer: nnx.Module, graph: Any, extra: tuple, unexpected: dict) -> None:
    """Layers take ``(graph, x, *, key=None)``: anything else (PyG's ``edge_weight``, ``edge_attr``,
    ``edge_index``) raises a TypeError that names jgrad's equivalent."""
    if extra or unexpected:
        raise _pyg_names.layer_call(type(layer).__name__, graph, extra, unexpected)


def _value(param: nnx.Param | None) -> jax.Array | None:
    return None if param is None else param[...]


def _kernel(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: Any) -> nnx.Param:
    return nnx.Param(_glorot(rngs.params(), shape, dtype))


def _bias(use_bias: bool, size: int, dtype: Any) -> nnx.Param | None:
    return nnx.Param(jnp.zeros((size,), dtype)) if use_bias else None


class GCNConv(nnx.Module):
    """Graph convolution of Kipf & Welling, ``D̂^-1/2 (A + I) D̂^-1/2 x W + b`` (`functional.gcn_conv`).

    ``norm`` chooses the normalisation of ``Â = A + I``: ``"sym"`` (``D̂^-1/2 Â D̂^-1/2``, the paper's),
    ``"row"`` (``D̂^-1 Â``, the weighted mean over the in-neighbours and the node itself) or ``None``
    (``Â``, the plain sum). Parameters: ``kernel`` (in_features, out_features) and ``bias``
    (out_features,). ``x`` may be a 2-D ``jax.experimental.sparse.BCOO``.

    Args:
      in_features: F_in.
      out_features: F_out.
      rngs: `nnx.Rngs` for the initialisation.
      use_bias: learn a bias.
      cached: the normalisation is supplied by the caller. A stateless module cannot keep anything
        between calls, so "caching" means: compute the node scaling once with ``layer.prepare(graph)``
        (a (N,) vector, `functional.gcn_scaling`) and pass it to every call as ``scaling=``; with
        ``cached=True`` a call without it raises. Without ``cached`` the scaling may still be passed,
        and is computed from the graph when it is not.
      norm: ``"sym"``, ``"row"`` or ``None``.
      normalize: ``False`` is the older spelling of ``norm=None`` (it overrides ``norm``).
      add_self_loops: add a self loop of weight 1 per node.
      param_dtype: dtype of the parameters.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> layer = jgrad.nn.GCNConv(3, 2, rngs=nnx.Rngs(0))
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> layer(g, jnp.ones((2, 3))).shape
      (2, 2)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        use_bias: bool = True,
        cached: bool = False,
        norm: str | None = "sym",
        normalize: bool = True,
        add_self_loops: bool = True,
        param_dtype: Any = jnp.float32,
    ):
        _check_sizes("GCNConv", in_features=in_features, out_features=out_features)
        check_choice("GCNConv", "norm", norm, F.GCN_NORMS)
        self.in_features, self.out_features = in_features, out_features
        self.norm = norm if normalize else None
        self.normalize = self.norm is not None
        self.cached, self.add_self_loops = cached, add_self_loops
        self.kernel = _kernel(rngs, (in_features, out_features), param_dtype)
        self.bias = _bias(use_bias, out_features, param_dtype)

    def prepare(self, graph: Graph) -> jax.Array | None:
        """The (N,) node scaling of ``graph`` for this layer's norm and self loops: ``D̂^-1/2`` for
        ``"sym"``, ``D̂^-1`` for ``"row"``; ``None`` for ``norm=None``, which needs none."""
        if self.norm is None:
            return None
        return F.gcn_scaling(graph, add_self_loops=self.add_self_loops, dtype=self.kernel[...].dtype,
                             norm=self.norm)

    def __call__(
        self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
        scaling: jax.Array | None = None, **unexpected: Any,
    ) -> jax.Array:
        """(N, in_features) -> (N, out_features). ``key`` is unused (the layer has no dropout)."""
        _refuse_extra(self, graph, extra, unexpected)
        del key
        if self.cached and self.norm is not None and scaling is None:
            raise ValueError("GCNConv: cached=True needs the precomputed normalisation; got scaling=None, "
                             "expected scaling=layer.prepare(graph).")
        params = {"kernel": self.kernel[...], "bias": _value(self.bias)}
        return F.gcn_conv(params, graph, x, norm=self.norm, add_self_loops=self.add_self_loops,
                          scaling=scaling)


class GraphConv(nnx.Module):
    """``W · mean_{u -> v} w_uv x_u + B · x_v + b``: edge-weighted neighbour mean and a root weight.

    Parameters: ``neighbour_kernel`` and ``root_kernel`` (in_features, out_features), ``bias``
    (out_features,). See `functional.graph_conv`.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> jgrad.nn.GraphConv(3, 4, rngs=nnx.Rngs(0))(g, jnp.ones((2, 3))).shape
      (2, 4)
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, use_bias: bool = True,
                 param_dtype: Any = jnp.float32):
        _check_sizes("GraphConv", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.neighbour_kernel = _kernel(rngs, (in_features, out_features), param_dtype)
        self.root_kernel = _kernel(rngs, (in_features, out_features), param_dtype)
        self.bias = _bias(use_bias, out_features, param_dtype)

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        """(N, in_features) -> (N, out_features). ``key`` is unused."""
        _refuse_extra(self, graph, extra, unexpected)
        del key
        params = {"neighbour_kernel": self.neighbour_kernel[...], "root_kernel": self.root_kernel[...],
                  "bias": _value(self.bias)}
        return F.graph_conv(params, graph, x)


class SAGEConv(nnx.Module):
    """GraphSAGE: ``agg_{u -> v}(w_uv x_u) @ neighbour_kernel + x_v @ root_kernel + b``.

    ``aggregator`` is ``"mean"`` (edge-weighted mean), ``"max"`` or ``"sum"``. Parameters:
    ``neighbour_kernel`` and ``root_kernel`` (in_features, out_features), ``bias`` (out_features,).
    See `functional.sage_conv`.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> jgrad.nn.SAGEConv(3, 4, aggregator="max", rngs=nnx.Rngs(0))(g, jnp.ones((2, 3))).shape
      (2, 4)
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, aggregator: str = "mean",
                 use_bias: bool = True, param_dtype: Any = jnp.float32):
        _check_sizes("SAGEConv", in_features=in_features, out_features=out_features)
        check_choice("SAGEConv", "aggregator", aggregator, F.SAGE_AGGREGATORS)
        self.in_features, self.out_features, self.aggregator = in_features, out_features, aggregator
        self.neighbour_kernel = _kernel(rngs, (in_features, out_features), param_dtype)
        self.root_kernel = _kernel(rngs, (in_features, out_features), param_dtype)
        self.bias = _bias(use_bias, out_features, param_dtype)

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        """(N, in_features) -> (N, out_features). ``key`` is unused."""
        _refuse_extra(self, graph, extra, unexpected)
        del key
        params = {"neighbour_kernel": self.neighbour_kernel[...], "root_kernel": self.root_kernel[...],
                  "bias": _value(self.bias)}
        return F.sage_conv(params, graph, x, aggregator=self.aggregator)


class GATConv(nnx.Module):
    """Multi-head graph attention (`functional.gat_conv`), with self loops and attention dropout.

    Parameters: ``kernel`` (in_features, heads·out_features), ``att_src`` and ``att_dst``
    (heads, out_features), ``bias`` (heads·out_features,) if ``concat`` else (out_features,).
    Output: (N, heads·out_features) if ``concat`` else (N, out_features) (heads averaged).
    Attention dropout with rate ``dropout`` is applied only when ``key`` is given.
    ``edge_weight_mode``: ``"after_softmax"`` (default) multiplies the attention by the edge weight
    after the softmax; ``"normalise"`` puts the weight inside the softmax normalisation,
    ``alpha[v, u] = A[v, u] exp(s[v, u]) / sum_k A[v, k] exp(s[v, k])``, which makes the layer a
    function of the dense adjacency (needed by `jgrad.adjacency_grad`). Equal for unweighted graphs.

    Example:
      >>> import jax, jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> layer = jgrad.nn.GATConv(3, 4, heads=2, dropout=0.5, rngs=nnx.Rngs(0))
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> forward = jax.jit(lambda layer, g, x, key: layer(g, x, key=key))  # layers are pytrees
      >>> forward(layer, g, jnp.ones((2, 3)), jax.random.key(1)).shape
      (2, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        use_bias: bool = True,
        edge_weight_mode: str = "after_softmax",
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
    ):
        _check_sizes("GATConv", in_features=in_features, out_features=out_features, heads=heads)
        check_choice("GATConv", "edge_weight_mode", edge_weight_mode, F.GAT_EDGE_WEIGHT_MODES)
        self.edge_weight_mode = edge_weight_mode
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"GATConv: dropout must be in [0, 1); got {dropout}.")
        self.in_features, self.out_features, self.heads = in_features, out_features, heads
        self.concat, self.negative_slope, self.dropout = concat, negative_slope, dropout
        self.add_self_loops = add_self_loops
        self.kernel = _kernel(rngs, (in_features, heads * out_features), param_dtype)
        self.att_src = _kernel(rngs, (heads, out_features), param_dtype)
        self.att_dst = _kernel(rngs, (heads, out_features), param_dtype)
        self.bias = _bias(use_bias, heads * out_features if concat else out_features, param_dtype)

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        _refuse_extra(self, graph, extra, unexpected)
        params = {"kernel": self.kernel[...], "att_src": self.att_src[...], "att_dst": self.att_dst[...],
                  "bias": _value(self.bias)}
        return F.gat_conv(params, graph, x, concat=self.concat, negative_slope=self.negative_slope,
                          dropout_rate=self.dropout, add_self_loops=self.add_self_loops,
                          edge_weight_mode=self.edge_weight_mode, key=key)


class GINConv(nnx.Module):
    """Graph isomorphism layer ``MLP((1 + eps) x_v + sum_{u -> v} w_uv x_u)`` (`functional.gin_conv`).

    The MLP is ``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``; ``hidden_features`` defaults to
    ``out_features``. Parameters: ``eps`` (a scalar ``nnx.Param`` when ``train_eps``, else the constant
    ``eps`` stored as a plain float), ``mlp[0].kernel``, ``mlp[0].bias``, ``mlp[1].kernel``,
    ``mlp[1].bias``.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> g = jgrad.Graph.from_edges([0, 1], [1, 0], n_nodes=2)
      >>> jgrad.nn.GINConv(3, 4, rngs=nnx.Rngs(0))(g, jnp.ones((2, 3))).shape
      (2, 4)
    """

    def __init__(self, in_features: int, out_features: int, *, hidden_features: int | None = None,
                 train_eps: bool = True, eps: float = 0.0, rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
        hidden = out_features if hidden_features is None else hidden_features
        _check_sizes("GINConv", in_features=in_features, out_features=out_features, hidden_features=hidden)
        self.in_features, self.out_features, self.hidden_features = in_features, out_features, hidden
        self.train_eps = train_eps
        self.eps = nnx.Param(jnp.asarray(eps, param_dtype)) if train_eps else float(eps)
        self.mlp = nnx.List([
            nnx.Linear(in_features, hidden, rngs=rngs, param_dtype=param_dtype, kernel_init=_glorot),
            nnx.Linear(hidden, out_features, rngs=rngs, param_dtype=param_dtype, kernel_init=_glorot),
        ])

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        """(N, in_features) -> (N, out_features). ``key`` is unused."""
        _refuse_extra(self, graph, extra, unexpected)
        del key
        eps = self.eps[...] if self.train_eps else self.eps
        mlp = [{"kernel": dense.kernel[...], "bias": _value(dense.bias)} for dense in self.mlp]
        return F.gin_conv({"eps": eps, "mlp": mlp}, graph, x)


class MessagePassing(nnx.Module):
    """Base class for custom layers on `functional.message_passing`: override `message` and `update`.

    A subclass creates its parameters in ``__init__`` (calling ``super().__init__(aggregate=...)``)
    and overrides ``message(x_sender, x_receiver, edge_data) -> (E, F')`` and, optionally,
    ``update(x, aggregated) -> out``. The defaults send ``w_uv * x_u`` (or ``x_u`` when unweighted)
    and return the aggregate, so the base class alone computes ``A @ x`` for ``aggregate="sum"``.

    Args:
      aggregate: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``, reduced at the receivers.

    Example:
      >>> import jax.numpy as jnp, jgrad
      >>> from flax import nnx
      >>> class Diff(jgrad.nn.MessagePassing):
      ...     def message(self, x_sender, x_receiver, edge_data):
      ...         return x_sender - x_receiver
      >>> g = jgrad.Graph.from_edges([0, 1], [2, 2], n_nodes=3)
      >>> Diff(aggregate="max")(g, jnp.array([[1.0], [2.0], [3.0]])).tolist()
      [[0.0], [0.0], [-1.0]]
    """

    def __init__(self, *, aggregate: str = "sum"):
        check_choice(type(self).__name__, "aggregate", aggregate, REDUCERS)
        self.aggregate = aggregate

    def message(self, x_sender: jax.Array, x_receiver: jax.Array, edge_data: Any) -> jax.Array:
        """The message of every edge, (E, F'); by default ``edge_data * x_sender``."""
        if edge_data is None:
            return x_sender
        edge_data = jnp.asarray(edge_data)
        return x_sender * edge_data.reshape(edge_data.shape + (1,) * (x_sender.ndim - edge_data.ndim))

    def update(self, x: jax.Array, aggregated: jax.Array) -> jax.Array:
        """The new node features from the old ones and the aggregate; by default the aggregate."""
        del x
        return aggregated

    def __call__(self, graph: Graph, x: jax.Array, *extra: Any, key: jax.Array | None = None,
                 **unexpected: Any) -> jax.Array:
        """Runs message, aggregation and update. ``key`` is unused by the base class.

        With the default `message` and array features, message and aggregation are one `jgrad.ops.gspmm`
        (``u_mul_e``, or ``copy_u`` when unweighted): no (E, F) messages, the graph's backend, and a
        model `jgrad.adjacency_grad` can follow.
        """
        _refuse_extra(self, graph, extra, unexpected)
        del key
        if type(self).message is MessagePassing.message and isinstance(x, jax.Array):
            op = "copy_u" if graph.edge_weight is None else "u_mul_e"
            return self.update(x, gspmm(graph, op, self.aggregate, u=x, e=graph.edge_weight))
        return F.message_passing(graph, x, self.message, aggregate=self.aggregate, update_fn=self.update)
