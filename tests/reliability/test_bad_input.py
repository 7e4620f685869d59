"""Every public entry point fed malformed input fails early, with a clear error type and message.

The suite is a table: each `Case` names the entry point and the malformation, calls it, and states the
exception type and a regular expression that the message must match. A case passes only if that exact
type is raised with a message naming the problem; an XLA error, a bare ``IndexError`` from deep inside,
or a silently computed result all fail it.

A second table lists malformations that are *not* errors (zero-edge and empty graphs) and the result
they must give.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify

import jgrad
from jgrad import Graph, ops
from jgrad.data import ForbiddenGlobalError, NodeDataset, csbm, load_planetoid, power_law_graph

jax.config.update("jax_numpy_rank_promotion", "raise")


class Case(NamedTuple):
    """One malformed call: ``call(env)`` must raise ``error`` with a message matching ``match``."""

    id: str
    call: Callable[[Any], Any]
    error: type[BaseException]
    match: str


class Env:
    """What a case may need besides literals: a scratch folder and copies of the Cora files."""

    def __init__(self, tmp_path: Path, planetoid_source: Path):
        self.tmp_path = tmp_path
        self._source = planetoid_source

    def cora(self) -> Path:
        """A writable copy of the eight Cora files, in a fresh folder."""
        folder = self.tmp_path / "cora"
        if not folder.exists():
            folder.mkdir()
            for path in self._source.glob("ind.cora.*"):
                shutil.copyfile(path, folder / path.name)
        return folder

    def cora_with(self, part: str, data: bytes | None) -> Path:
        """The Cora copy with ``ind.cora.<part>`` replaced by ``data`` (deleted if None)."""
        folder = self.cora()
        target = folder / f"ind.cora.{part}"
        if data is None:
            target.unlink()
        else:
            target.write_bytes(data)
        return folder

    def truncated(self, part: str, keep: float = 0.5) -> Path:
        original = (self._source / f"ind.cora.{part}").read_bytes()
        return self.cora_with(part, original[: int(len(original) * keep)])


# ------------------------------------------------------------------------------------------------------
# Fixtures of the table: a valid graph, features and models to corrupt one argument at a time.
# ------------------------------------------------------------------------------------------------------
G = Graph.from_edges([0, 1, 2, 2], [1, 2, 0, 1], n_nodes=3, edge_weight=[1.0, 2.0, 3.0, 4.0])
X = jnp.ones((3, 2), jnp.float32)
W = jnp.ones((4,), jnp.float32)
IDS = jnp.array([0, 0, 2])
DATA = jnp.array([1.0, 2.0, 3.0])

# The plain constructor does not validate (JAX rebuilds pytrees with placeholder leaves), so these
# graphs reach the ops unchecked. Before the ops checked indices eagerly, gathers clamped these
# indices and the segment reductions dropped them: a silently wrong result.
RAW_BAD_SENDER = Graph(senders=jnp.array([0, 5]), receivers=jnp.array([1, 0]), n_nodes=2)
RAW_BAD_RECEIVER = Graph(senders=jnp.array([0, 1]), receivers=jnp.array([1, 7]), n_nodes=2)
RAW_NEGATIVE = Graph(senders=jnp.array([-1, 1]), receivers=jnp.array([1, 0]), n_nodes=2)


def _model(cls, **kwargs):
    return cls(2, 4, 3, rngs=nnx.Rngs(0), **kwargs)


def _reduce_pickle(callable_, args) -> bytes:
    """A pickle whose loading calls ``callable_(*args)``, as an attacker would write it."""

    class Payload:
        def __reduce__(self):
            return callable_, args

    return pickle.dumps(Payload(), protocol=2)


def _dataset(**overrides):
    arrays = dict(
        graph=G,
        features=np.ones((3, 2), np.float32),
        labels=np.array([0, 1, 0]),
        train_mask=np.array([True, False, False]),
        val_mask=np.array([False, True, False]),
        test_mask=np.array([False, False, True]),
    )
    arrays.update(overrides)
    return NodeDataset.from_arrays(**arrays)


V = ValueError
T = TypeError

CASES: list[Case] = [
    # --- Graph.from_edges -----------------------------------------------------------------------------
    Case("from_edges/float-senders", lambda env: Graph.from_edges([0.0, 1.0], [1, 0], 2), T,
         r"senders must have an integer dtype; got float64"),
    Case("from_edges/float-receivers", lambda env: Graph.from_edges([0, 1], np.array([1.0, 0.0], np.float32), 2),
         T, r"receivers must have an integer dtype; got float32"),
    Case("from_edges/bool-senders", lambda env: Graph.from_edges([True, False], [1, 0], 2), T,
         r"senders must have an integer dtype; got bool"),
    Case("from_edges/negative-sender", lambda env: Graph.from_edges([-1, 1], [1, 0], 2), V,
         r"senders out of range \(senders\[0\]=-1\).*Negative indices are not allowed"),
    Case("from_edges/sender-too-large", lambda env: Graph.from_edges([0, 5], [1, 0], 2), V,
         r"senders\[1\]=5\); expected 0 <= index < n_nodes=2"),
    Case("from_edges/receiver-equals-n", lambda env: Graph.from_edges([0, 1], [1, 2], 2), V,
         r"receivers\[1\]=2\); expected 0 <= index < n_nodes=2"),
    Case("from_edges/int64-wraps-into-range", lambda env: Graph.from_edges(np.array([2**32], np.int64), [0], 2),
         V, r"senders\[0\]=4294967296"),
    Case("from_edges/both-out-of-range-reported", lambda env: Graph.from_edges([9], [-3], 2), V,
         r"senders\[0\]=9.*receivers\[0\]=-3"),
    Case("from_edges/many-out-of-range-summarised", lambda env: Graph.from_edges(np.arange(10) + 2, np.zeros(10, int), 2),
         V, r"10 senders out of range .* and 5 more"),
    Case("from_edges/length-mismatch", lambda env: Graph.from_edges([0, 1, 1], [1, 0], 2), V,
         r"same length; got 3 senders and 2 receivers"),
    Case("from_edges/2d-senders", lambda env: Graph.from_edges([[0, 1]], [[1, 0]], 2), V,
         r"senders must be 1-D \(E,\); got shape \(1, 2\)"),
    Case("from_edges/nan-weight", lambda env: Graph.from_edges([0, 1], [1, 0], 2, edge_weight=[np.nan, 1.0]), V,
         r"edge_weight must be finite; got 1 non-finite value\(s\) \(edge_weight\[0\]=nan\)"),
    Case("from_edges/inf-weight", lambda env: Graph.from_edges([0, 1], [1, 0], 2, edge_weight=[1.0, np.inf]), V,
         r"edge_weight\[1\]=inf"),
    Case("from_edges/neg-inf-weight-2d", lambda env: Graph.from_edges([0, 1], [1, 0], 2,
                                                                      edge_weight=[[1.0, 1.0], [1.0, -np.inf]]),
         V, r"edge_weight\[\(1, 1\)\]=-inf"),
    Case("from_edges/weight-length", lambda env: Graph.from_edges([0, 1], [1, 0], 2, edge_weight=[1.0, 1.0, 1.0]),
         V, r"one row per edge; got shape \(3,\), expected \(2,\)"),
    Case("from_edges/scalar-weight", lambda env: Graph.from_edges([0, 1], [1, 0], 2, edge_weight=1.0), V,
         r"one row per edge; got shape \(\)"),
    Case("from_edges/string-weight", lambda env: Graph.from_edges([0, 1], [1, 0], 2, edge_weight=np.array(["a", "b"])),
         T, r"edge_weight must be a float array; got dtype str"),
    Case("from_edges/float-n_nodes", lambda env: Graph.from_edges([0], [1], 2.0), T,
         r"n_nodes must be an int; got float 2.0"),
    Case("from_edges/bool-n_nodes", lambda env: Graph.from_edges([], [], True), T, r"n_nodes must be an int; got bool"),
    Case("from_edges/negative-n_nodes", lambda env: Graph.from_edges([], [], -1), V,
         r"n_nodes must be non-negative; got -1"),
    Case("from_edges/traced-n_nodes", lambda env: jax.jit(lambda n: Graph.from_edges([0], [0], n))(1), T,
         r"n_nodes must be a static Python int, not a traced value"),
    Case("from_edges/edges-but-no-nodes", lambda env: Graph.from_edges([0], [0], 0), V,
         r"expected 0 <= index < n_nodes=0"),
    # --- Graph.from_dense, with_edge_weight, structure, batching, interop ------------------------------
    Case("from_dense/non-square", lambda env: Graph.from_dense(np.ones((2, 3))), V,
         r"adjacency must be a square N x N matrix; got shape \(2, 3\)"),
    Case("from_dense/3d", lambda env: Graph.from_dense(np.ones((2, 2, 2))), V, r"square N x N matrix"),
    Case("from_dense/nan", lambda env: Graph.from_dense(np.array([[0.0, np.nan], [1.0, 0.0]])), V,
         r"adjacency must be finite; got 1 non-finite"),
    Case("from_dense/traced", lambda env: jax.jit(Graph.from_dense)(jnp.eye(2)), T, r"needs a concrete matrix"),
    Case("with_edge_weight/length", lambda env: G.with_edge_weight(jnp.ones(5)), V,
         r"wrong leading dimension; got shape \(5,\), expected \(4, \.\.\.\) for 4 edges"),
    Case("coalesce/traced", lambda env: jax.jit(lambda g: g.coalesce())(G), T,
         r"coalesce: works on concrete arrays only"),
    Case("remove_self_loops/traced", lambda env: jax.jit(lambda g: g.remove_self_loops())(G), T,
         r"works on concrete arrays only"),
    Case("batch/empty", lambda env: jgrad.batch([]), V, r"batch: needs at least one graph"),
    Case("batch/not-a-graph", lambda env: jgrad.batch([G, 3]), T, r"graphs\[1\] is a int, expected a jgrad.Graph"),
    Case("pad/too-few-nodes", lambda env: jgrad.pad(G, n_nodes=2, n_edges=4), V,
         r"n_nodes=2 is smaller than the graph's 3 nodes"),
    Case("pad/too-few-edges", lambda env: jgrad.pad(G, n_nodes=4, n_edges=3), V,
         r"n_edges=3 is smaller than the graph's 4 edges"),
    Case("pad/edges-without-padding-node", lambda env: jgrad.pad(G, n_nodes=3, n_edges=6), V,
         r"needs at least one padding node"),
    Case("pad/negative-edges", lambda env: jgrad.pad(G, n_nodes=4, n_edges=-1), V,
         r"n_edges must be non-negative"),
    Case("bucket_size/growth", lambda env: jgrad.graph.bucket_size(10, growth=1.0), V, r"growth must be > 1"),
    Case("from_scipy/non-square", lambda env: jgrad.graph.from_scipy(__import__("scipy.sparse").sparse.eye(2, 3)), V,
         r"from_scipy: matrix must be square"),
    Case("to_scipy/vector-weights", lambda env: jgrad.graph.to_scipy(G.with_edge_weight(jnp.ones((4, 2)))), V,
         r"to_scipy: needs scalar edge weights"),
    # --- gspmm / spmm ----------------------------------------------------------------------------------
    Case("gspmm/unknown-op", lambda env: ops.gspmm(G, "u_pow_e", "sum", X, W), V,
         r"unknown message op 'u_pow_e'; expected one of 'copy_u'"),
    Case("gspmm/unknown-reducer", lambda env: ops.gspmm(G, "copy_u", "avg", X), V, r"unknown reducer 'avg'"),
    Case("gspmm/unknown-tie", lambda env: ops.gspmm(G, "copy_u", "max", X, tie="last"), V, r"unknown tie rule 'last'"),
    Case("gspmm/missing-u", lambda env: ops.gspmm(G, "copy_u", "sum"), V, r"op 'copy_u' needs node data u; got u=None"),
    Case("gspmm/missing-e", lambda env: ops.gspmm(G, "u_mul_e", "sum", X), V, r"needs edge data e; got e=None"),
    Case("gspmm/u-rows", lambda env: ops.gspmm(G, "copy_u", "sum", jnp.ones((4, 2))), V,
         r"u must have one row per node; got shape \(4, 2\), expected \(3, \.\.\.\) for n_nodes=3"),
    Case("gspmm/e-rows", lambda env: ops.gspmm(G, "u_mul_e", "sum", X, jnp.ones(5)), V,
         r"e must have one row per edge; got shape \(5,\), expected \(4, \.\.\.\)"),
    Case("gspmm/u-and-e-rows-both-reported", lambda env: ops.gspmm(G, "u_mul_e", "sum", jnp.ones((4, 2)), jnp.ones(5)),
         V, r"u must have one row per node.*e must have one row per edge"),
    Case("gspmm/scalar-u", lambda env: ops.gspmm(G, "copy_u", "sum", 1.0), V, r"got shape \(\), expected \(3, \.\.\.\)"),
    Case("gspmm/int-u", lambda env: ops.gspmm(G, "copy_u", "sum", jnp.ones((3, 2), jnp.int32)), T,
         r"u must be a float array; got dtype int32"),
    Case("gspmm/bool-e", lambda env: ops.gspmm(G, "u_mul_e", "sum", X, jnp.ones(4, bool)), T,
         r"e must be a float array; got dtype bool"),
    Case("gspmm/broadcast", lambda env: ops.gspmm(G, "u_mul_e", "sum", X, jnp.ones((4, 5))), V,
         r"e cannot broadcast against u of shape \(3, 2\); got \(4, 5\), expected one of \(4,\), \(4, 1\), \(4, 2\)"),
    Case("gspmm/heads-broadcast", lambda env: ops.gspmm(G, "u_mul_e", "sum", jnp.ones((3, 2, 8)), jnp.ones((4, 3))), V,
         r"expected one of \(4,\), \(4, 1\), \(4, 2, 1\), \(4, 2, 8\)"),
    Case("gspmm/accumulate-int", lambda env: ops.gspmm(G, "copy_u", "sum", X, accumulate_dtype=jnp.int32), T,
         r"accumulate_dtype must be a float dtype"),
    Case("gspmm/accumulate-narrower", lambda env: ops.gspmm(G, "copy_u", "sum", X, accumulate_dtype=jnp.bfloat16), V,
         r"accumulate_dtype is narrower than the operands; got bfloat16, expected at least as wide as float32"),
    Case("gspmm/unvalidated-sender", lambda env: ops.gspmm(RAW_BAD_SENDER, "copy_u", "sum", jnp.ones((2, 1))), V,
         r"gspmm: the graph has indices out of range: .*senders\[1\]=5.*Graph.from_edges"),
    Case("gspmm/unvalidated-receiver-max", lambda env: ops.gspmm(RAW_BAD_RECEIVER, "copy_u", "max", jnp.ones((2, 1))), V,
         r"receivers\[1\]=7\); expected 0 <= index < n_nodes=2"),
    Case("gspmm/unvalidated-negative", lambda env: ops.gspmm(RAW_NEGATIVE, "copy_u", "mean", jnp.ones((2, 1))), V,
         r"senders\[0\]=-1.*Negative indices"),
    Case("spmm/x-rows", lambda env: ops.spmm(G, jnp.ones((2, 2))), V, r"u must have one row per node"),
    Case("spmm/weight-length", lambda env: ops.spmm(G, X, jnp.ones(3)), V, r"e must have one row per edge"),
    Case("spmm/int-weight", lambda env: ops.spmm(G, X, jnp.ones(4, jnp.int32)), T, r"e must be a float array"),
    Case("spmm/unvalidated", lambda env: ops.spmm(RAW_BAD_RECEIVER, jnp.ones((2, 1))), V, r"receivers\[1\]=7"),
    # --- gsddmm / edge_softmax / norms -----------------------------------------------------------------
    Case("gsddmm/unknown-op", lambda env: ops.gsddmm(G, "pow", X, X), V, r"unknown edge op 'pow'"),
    Case("gsddmm/unknown-target", lambda env: ops.gsddmm(G, "dot", X, X, "w", "v"), V, r"unknown lhs_target 'w'"),
    Case("gsddmm/missing-rhs", lambda env: ops.gsddmm(G, "dot", X, None), V, r"this op needs rhs; got rhs=None"),
    Case("gsddmm/rows", lambda env: ops.gsddmm(G, "dot", X, jnp.ones((4, 2))), V,
         r"rhs with target 'v' must have one row per node; got shape \(4, 2\)"),
    Case("gsddmm/edge-rows", lambda env: ops.gsddmm(G, "mul", X, jnp.ones((3, 2)), "u", "e"), V,
         r"rhs with target 'e' must have one row per edge"),
    Case("gsddmm/broadcast", lambda env: ops.gsddmm(G, "dot", X, jnp.ones((3, 5))), V, r"lhs and rhs cannot broadcast"),
    Case("gsddmm/int", lambda env: ops.gsddmm(G, "add", jnp.ones((3, 2), jnp.int32), X), T,
         r"lhs must be a float array; got dtype int32"),
    Case("gsddmm/unvalidated", lambda env: ops.gsddmm(RAW_BAD_SENDER, "dot", jnp.ones((2, 1)), jnp.ones((2, 1))), V,
         r"gsddmm: the graph has indices out of range"),
    Case("edge_softmax/rows", lambda env: ops.edge_softmax(G, jnp.ones(5)), V,
         r"logits must have one row per edge; got shape \(5,\), expected \(4, \.\.\.\)"),
    Case("edge_softmax/int", lambda env: ops.edge_softmax(G, jnp.ones(4, jnp.int32)), T,
         r"logits must be a float array; got dtype int32"),
    Case("edge_softmax/unvalidated", lambda env: ops.edge_softmax(RAW_BAD_RECEIVER, jnp.ones(2)), V,
         r"edge_softmax: the graph has indices out of range.*receivers\[1\]=7"),
    Case("gat_attention/rows", lambda env: ops.gat_attention(G, jnp.ones((4, 2)), jnp.ones((4, 2))), V,
         r"gat_attention: score_src must have one row per node; got shape \(4, 2\), expected \(3,\) or \(3, H\)"),
    Case("gat_attention/shapes", lambda env: ops.gat_attention(G, jnp.ones((3, 2)), jnp.ones((3, 4))), V,
         r"score_src and score_dst must have the same shape; got \(3, 2\) and \(3, 4\)"),
    Case("gat_attention/int", lambda env: ops.gat_attention(G, jnp.ones(3), jnp.ones(3, jnp.int32)), T,
         r"score_dst must be a float array; got dtype int32"),
    Case("gat_attention/unvalidated", lambda env: ops.gat_attention(RAW_BAD_RECEIVER, jnp.ones(2), jnp.ones(2)), V,
         r"gat_attention: the graph has indices out of range.*receivers\[1\]=7"),
    Case("gcn_norm/vector-weights", lambda env: ops.gcn_norm(G, jnp.ones((4, 2))), V,
         r"gcn_norm: needs one scalar weight per edge; got shape \(4, 2\), expected \(4,\)"),
    Case("gcn_norm/int-weights", lambda env: ops.gcn_norm(G, jnp.ones(4, jnp.int32)), T, r"must be a float array"),
    Case("gcn_norm/unvalidated", lambda env: ops.gcn_norm(RAW_BAD_RECEIVER), V, r"gcn_norm: the graph has indices"),
    Case("row_norm/length", lambda env: ops.row_norm(G, jnp.ones(3)), V, r"row_norm: needs one scalar weight per edge"),
    Case("row_norm/unvalidated", lambda env: ops.row_norm(RAW_NEGATIVE), V, r"row_norm: the graph has indices"),
    # --- segment reductions ----------------------------------------------------------------------------
    Case("segment_sum/float-ids", lambda env: ops.segment_sum(DATA, jnp.array([0.0, 1.0, 2.0]), 3), T,
         r"segment_ids must have an integer dtype; got float32"),
    Case("segment_sum/traced-num_segments", lambda env: jax.jit(lambda n: ops.segment_sum(DATA, IDS, n))(3), T,
         r"num_segments must be a Python int.*cannot be a traced array"),
    Case("segment_sum/float-num_segments", lambda env: ops.segment_sum(DATA, IDS, 3.0), T,
         r"num_segments must be a Python int; got 3.0"),
    Case("segment_sum/negative-num_segments", lambda env: ops.segment_sum(DATA, IDS, -1), V,
         r"num_segments is negative; got -1"),
    Case("segment_sum/length", lambda env: ops.segment_sum(jnp.ones(4), IDS, 3), V,
         r"disagree on the number of entries E; got data of shape \(4,\) and segment_ids of shape \(3,\)"),
    Case("segment_sum/2d-ids", lambda env: ops.segment_sum(DATA, IDS[None], 3), V, r"segment_ids must be 1-D"),
    Case("segment_sum/scalar-data", lambda env: ops.segment_sum(1.0, IDS, 3), V, r"data must have a leading entry axis"),
    Case("segment_sum/float-mask", lambda env: ops.segment_sum(DATA, IDS, 3, mask=jnp.ones(3)), T,
         r"mask must have dtype bool; got float32"),
    Case("segment_sum/mask-shape", lambda env: ops.segment_sum(DATA, IDS, 3, mask=jnp.ones(4, bool)), V,
         r"mask must have one flag per entry; got shape \(4,\), expected \(3,\)"),
    Case("segment_max/unknown-tie", lambda env: ops.segment_max(DATA, IDS, 3, tie="last"), V, r"unknown tie 'last'"),
    Case("segment_reduce/unknown", lambda env: ops.segment_reduce(DATA, IDS, 3, "prod"), V, r"unknown reducer 'prod'"),
    Case("segment_std/ddof", lambda env: ops.segment_std(DATA, IDS, 3, ddof=-1), V, r"ddof is negative; got -1"),
    Case("segment_std/eps", lambda env: ops.segment_std(DATA, IDS, 3, eps=float("nan")), V, r"eps is negative or NaN"),
    Case("segment_softmax/ids-and-mask-types-together", lambda env: ops.segment_softmax(DATA, DATA, 3, mask=DATA), T,
         r"(?s)2 problems:.*segment_ids must have an integer dtype.*mask must have dtype bool"),
    # --- layers and models -----------------------------------------------------------------------------
    Case("GCNConv/zero-width", lambda env: jgrad.nn.GCNConv(0, 4, rngs=nnx.Rngs(0)), V,
         r"feature sizes must be positive ints; got in_features=0"),
    Case("GCNConv/float-width", lambda env: jgrad.nn.GCNConv(2, 4.0, rngs=nnx.Rngs(0)), V, r"out_features=4.0"),
    Case("GCNConv/cached-without-scaling", lambda env: jgrad.nn.GCNConv(2, 4, cached=True, rngs=nnx.Rngs(0))(G, X), V,
         r"cached=True needs the precomputed normalisation; got scaling=None"),
    Case("GCN/dropout", lambda env: _model(jgrad.nn.GCN, dropout=1.5), V, r"dropout must be in \[0, 1\); got 1.5"),
    Case("GCN/n_layers", lambda env: _model(jgrad.nn.GCN, n_layers=0), V, r"n_layers must be an int >= 1; got 0"),
    Case("GCN/feature-width", lambda env: _model(jgrad.nn.GCN)(G, jnp.ones((3, 5))), V,
         r"x has the wrong feature dimension; got shape \(3, 5\), expected \(3, 2\) for in_features=2"),
    Case("GCN/feature-rows", lambda env: _model(jgrad.nn.GCN)(G, jnp.ones((4, 2))), V,
         r"x must have one row per node; got 4 rows, expected n_nodes=3"),
    Case("GCN/int-features", lambda env: _model(jgrad.nn.GCN)(G, jnp.ones((3, 2), jnp.int32)), T,
         r"x must be a float array; got dtype int32"),
    Case("GCN/unvalidated-graph", lambda env: _model(jgrad.nn.GCN)(RAW_BAD_SENDER, jnp.ones((2, 2))), V,
         r"the graph has indices out of range"),
    Case("GAT/feature-width", lambda env: _model(jgrad.nn.GAT, heads=2)(G, jnp.ones((3, 5))), V,
         r"gat_conv: x has the wrong feature dimension"),
    Case("GraphSAGE/feature-width", lambda env: _model(jgrad.nn.GraphSAGE)(G, jnp.ones((3, 5))), V,
         r"x has the wrong feature dimension"),
    Case("GIN/feature-width", lambda env: _model(jgrad.nn.GIN)(G, jnp.ones((3, 5))), V,
         r"gin_conv: x has the wrong feature dimension"),
    Case("SAGEConv/aggregator", lambda env: jgrad.nn.SAGEConv(2, 4, aggregator="median", rngs=nnx.Rngs(0)), V,
         r"unknown aggregator 'median'"),
    Case("GATConv/dropout", lambda env: jgrad.nn.GATConv(2, 4, dropout=-0.1, rngs=nnx.Rngs(0)), V,
         r"dropout must be in \[0, 1\)"),
    # --- datasets --------------------------------------------------------------------------------------
    Case("NodeDataset/nan-features", lambda env: _dataset(features=np.array([[1, 2], [np.nan, 0], [0, 0]], float)), V,
         r"features must be finite; got 1 non-finite value\(s\), the first features\[1, 0\]=nan"),
    Case("NodeDataset/inf-features", lambda env: _dataset(features=np.full((3, 2), np.inf)), V,
         r"got 6 non-finite value\(s\)"),
    Case("NodeDataset/feature-rows", lambda env: _dataset(features=np.ones((4, 2))), V,
         r"features has the wrong shape; got \(4, 2\), expected \(N, F\) with N=3"),
    Case("NodeDataset/float-labels", lambda env: _dataset(labels=np.array([0.0, 1.0, 0.0])), T,
         r"labels must be integers; got dtype float64"),
    Case("NodeDataset/label-range", lambda env: _dataset(labels=np.array([0, 5, 0]), n_classes=2), V,
         r"labels\[1\] is out of range; got 5, expected 0 <= label < n_classes=2"),
    Case("NodeDataset/int-mask", lambda env: _dataset(train_mask=np.array([1, 0, 0])), T,
         r"train_mask must be boolean; got dtype int64"),
    Case("csbm/too-few-nodes", lambda env: csbm(1, 2, seed=0), V, r"csbm"),
    Case("csbm/homophily", lambda env: csbm(10, 2, homophily=2.0, seed=0), V, r"homophily"),
    Case("power_law_graph/n_nodes", lambda env: power_law_graph(0, seed=0), V, r"n_nodes"),
    Case("power_law_graph/exponent", lambda env: power_law_graph(10, exponent=0.5, seed=0), V, r"exponent"),
    Case("load_planetoid/unknown-name", lambda env: load_planetoid("corra", env.tmp_path), V,
         r"unknown dataset name; got 'corra', expected one of \('cora', 'citeseer', 'pubmed'\)"),
    Case("load_planetoid/missing-folder", lambda env: load_planetoid("cora", env.tmp_path / "nowhere"), FileNotFoundError,
         r"root is not a folder"),
    Case("load_planetoid/no-root", lambda env: _without_env(lambda: load_planetoid("cora")), FileNotFoundError,
         r"pass root=\.\.\. or set the JGRAD_DATA environment variable"),
    Case("load_planetoid/missing-file", lambda env: load_planetoid("cora", env.cora_with("graph", None)),
         FileNotFoundError, r"ind.cora.graph not found in"),
    Case("load_planetoid/missing-test-index", lambda env: load_planetoid("cora", env.cora_with("test.index", None)),
         FileNotFoundError, r"ind.cora.test.index not found"),
    Case("load_planetoid/truncated-features", lambda env: load_planetoid("cora", env.truncated("x")), V,
         r"ind.cora.x is truncated or corrupted; unpickling it failed"),
    Case("load_planetoid/truncated-graph", lambda env: load_planetoid("cora", env.truncated("graph", 0.3)), V,
         r"ind.cora.graph is truncated or corrupted"),
    Case("load_planetoid/empty-file", lambda env: load_planetoid("cora", env.cora_with("ally", b"")), V,
         r"ind.cora.ally is truncated or corrupted"),
    Case("load_planetoid/trailing-data", lambda env: load_planetoid("cora", env.cora_with(
        "ty", (env.cora() / "ind.cora.ty").read_bytes() + b"junk")), V, r"data after the end of the pickle"),
    Case("load_planetoid/graph-not-a-dict", lambda env: load_planetoid("cora", env.cora_with(
        "graph", pickle.dumps([1, 2, 3], protocol=2))), V, r"ind.cora.graph is not an adjacency dict; got list"),
    Case("load_planetoid/graph-id-out-of-range", lambda env: load_planetoid("cora", env.cora_with(
        "graph", pickle.dumps({0: [99999]}, protocol=2))), V, r"neighbour id out of range; got 99999"),
    Case("load_planetoid/test-index-text", lambda env: load_planetoid("cora", env.cora_with(
        "test.index", b"1708\nnot-a-number\n")), V, r"test.index line 2 is not an integer"),
    Case("load_planetoid/mismatched-rows", lambda env: load_planetoid("cora", env.cora_with(
        "y", pickle.dumps(np.zeros((5, 7)), protocol=4))), V, r"ind.cora.y does not match the other files; got 5 rows"),
    Case("load_planetoid/pickle-calls-os-system", lambda env: load_planetoid("cora", env.cora_with(
        "graph", _reduce_pickle(__import__("os").system, ("true",)))), ForbiddenGlobalError,
         r"refusing to load '(posix|os|nt)\.system' from ind.cora.graph"),
]


class CommandFailed(Exception):
    """A CLI command exited non-zero; the message is what it printed to stderr."""


def _cli(env, *argv: str, config: str | None = None):
    """Runs ``jgrad ARGV`` in-process (``CONFIG`` in argv is replaced by a file holding ``config``)."""
    from jgrad.cli import main

    if config is not None:
        path = env.tmp_path / "config.yaml"
        path.write_text(config)
        argv = tuple(str(path) if arg == "CONFIG" else arg for arg in argv)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(list(argv))
    if status != 0:
        raise CommandFailed(f"exit status {status}: {stderr.getvalue().strip()}")
    return status


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
_KARATE = "name: x\ndata:\n  name: karate\nmodel:\n  name: gcn\n"
CLI = CommandFailed
CASES += [
    Case("cli-train/unknown-key", lambda env: _cli(env, "train", "CONFIG", config=_KARATE + "  hiden: 16\n"), CLI,
         r"exit status 2: jgrad train: config: .*config.yaml: unknown key 'model.hiden'; valid keys in model: name, hidden"),
    Case("cli-train/unknown-section", lambda env: _cli(env, "train", "CONFIG", config=_KARATE + "trian:\n  epochs: 1\n"),
         CLI, r"exit status 2: .*unknown key 'trian'"),
    Case("cli-train/wrong-type", lambda env: _cli(env, "train", "CONFIG", "--set", "model.hidden=abc", config=_KARATE),
         CLI, r"exit status 2: .*model.hidden must be int; got 'abc'"),
    Case("cli-train/unknown-override", lambda env: _cli(env, "train", "CONFIG", "--set", "optim.lr=1", config=_KARATE),
         CLI, r"exit status 2: .*unknown key 'optim.lr'"),
    Case("cli-train/missing-config", lambda env: _cli(env, "train", str(env.tmp_path / "none.yaml")), CLI,
         r"exit status 2: jgrad train: config: no config file at"),
    Case("cli-train/missing-dataset-files", lambda env: _cli(env, "train", str(CONFIGS / "gcn_cora_tiny.yaml"), "--data-dir",
                                                             str(env.tmp_path)), CLI,
         r"exit status 2: jgrad train: load_planetoid: ind.cora.x not found"),
    Case("cli-eval/no-checkpoint", lambda env: _cli(env, "eval", str(CONFIGS / "gcn_karate_tiny.yaml"), "--workdir",
                                                    str(env.tmp_path)), CLI,
         r"exit status 2: jgrad eval: evaluate_checkpoint: no checkpoint in"),

]

# ------------------------------------------------------------------------------------------------------
# adjacency_grad, AdjacencyGrad accessors, jgrad.checked and unbatch: each message matched whole
# (``^...$``), so a case fails if the message grows a second line or loses the name of the problem.
# ------------------------------------------------------------------------------------------------------
J = checkify.JaxRuntimeError
_SUM_LOSS = lambda g, x: ops.spmm(g, x).sum()  # noqa: E731


@functools.lru_cache(maxsize=None)
def _grad():
    """dL/dA of a tiny linear model on G (3 nodes), built once."""
    return jgrad.adjacency_grad(_SUM_LOSS, G, X)


def _exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def _bad_batch(**changes):
    return dataclasses.replace(jgrad.batch([Graph.from_edges([0], [1], 2), Graph.from_edges([0, 1], [1, 2], 3)]),
                               **changes)


def _checked_call(fn, *args, **options):
    return jax.block_until_ready(jgrad.checked(fn, **options)(*args))


def _shifted_spmm(graph, x, offset):
    return ops.spmm(dataclasses.replace(graph, senders=graph.senders + offset), x)


CASES += [
    # --- complex input and negative normalisation weights ------------------------------------------------
    Case("segment_sum/complex-data", lambda env: ops.segment_sum(DATA.astype(jnp.complex64), IDS, 3), T,
         _exact("segment_sum: data must be real; got dtype complex64, expected a real float, integer or bool dtype. "
                "Hint: reduce data.real and data.imag separately.")),
    Case("segment_softmax/complex-logits", lambda env: ops.segment_softmax(DATA * 1j, IDS, 3), T,
         r"^segment_softmax: data must be real; got dtype complex64"),
    Case("gspmm/complex-u", lambda env: ops.gspmm(G, "copy_u", "sum", X.astype(jnp.complex64)), T,
         r"^gspmm: u must be a float array; got dtype complex64\."),
    Case("gsddmm/complex-rhs", lambda env: ops.gsddmm(G, "dot", X, X * 1j), T,
         r"^gsddmm: rhs must be a float array; got dtype complex64\."),
    Case("edge_softmax/complex-logits", lambda env: ops.edge_softmax(G, W * 1j), T,
         _exact("edge_softmax: logits must be a float array; got dtype complex64.")),
    Case("gcn_norm/negative-weight", lambda env: ops.gcn_norm(G, W.at[1].set(-1.0)), V,
         _exact("gcn_norm: edge_weight is negative on 1 edge(s); got edge_weight[1]=-1, expected edge_weight >= 0 "
                "(a negative weight can make a degree zero or negative, where the normalisation is undefined).")),
    Case("gcn_norm/negative-fill", lambda env: ops.gcn_norm(G, fill=-0.5), V,
         _exact("gcn_norm: fill is negative or NaN; got -0.5, expected fill >= 0 (the self-loop weight enters every "
                "degree).")),
    Case("row_norm/negative-weight", lambda env: ops.row_norm(G.with_edge_weight(-W)), V,
         r"^row_norm: edge_weight is negative on 4 edge\(s\); got edge_weight\[0\]=-1, edge_weight\[1\]=-1, "),
    # --- adjacency_grad -----------------------------------------------------------------------------
    Case("adjacency_grad/fn-not-callable", lambda env: jgrad.adjacency_grad(3, G, X), T,
         _exact("adjacency_grad: fn must be callable; got int 3, expected fn(graph, *args) -> scalar loss.")),
    Case("adjacency_grad/graph-not-a-graph", lambda env: jgrad.adjacency_grad(_SUM_LOSS, np.eye(3), X), T,
         _exact("adjacency_grad: graph must be a jgrad.Graph; got an array of dtype float64 and shape (3, 3). The "
                "graph comes first (op(graph, x), layer(graph, x)); a PyG edge_index (2, E) becomes one with "
                "jgrad.Graph.from_edge_index(edge_index).")),
    Case("adjacency_grad/symmetric-not-bool", lambda env: jgrad.adjacency_grad(_SUM_LOSS, G, X, symmetric="yes"),
         T, _exact("adjacency_grad: symmetric must be a bool; got str 'yes', expected True or False.")),
    Case("adjacency_grad/unknown-mode", lambda env: jgrad.adjacency_grad(_SUM_LOSS, G, X, mode="sparse"), V,
         _exact("adjacency_grad: unknown mode 'sparse'; expected one of 'factored', 'dense'.")),
    Case("adjacency_grad/matrix-weights",
         lambda env: jgrad.adjacency_grad(_SUM_LOSS, G.with_edge_weight(jnp.ones((4, 2))), X), V,
         _exact("adjacency_grad: needs one scalar weight per edge; got edge_weight of shape (4, 2), expected (4,).")),
    Case("adjacency_grad/non-scalar-output", lambda env: jgrad.adjacency_grad(lambda g, x: ops.spmm(g, x), G, X),
         V, r"^adjacency_grad: fn must return a scalar; got .* of shape \(3, 2\), expected \(\)\. Reduce the output"),
    Case("adjacency_grad/dense-above-the-size-limit",
         lambda env: jgrad.adjacency_grad(_SUM_LOSS, Graph.from_edges([0], [1], 3000), jnp.ones((3000, 1)),
                                          mode="dense"), V,
         r"^adjacency_grad: mode='dense' builds a complete graph of N\^2 edges; got n_nodes=3000, expected at most "
         r"2048 \(9000000 edges would be built\)\."),
    # --- AdjacencyGrad accessors (indices are checked, never clamped or wrapped) -----------------------
    Case("AdjacencyGrad.at/row-out-of-range", lambda env: _grad().at(jnp.array([0, 3]), jnp.array([1, 1])), V,
         _exact("AdjacencyGrad.at: 1 rows out of range; got rows[1]=3, expected 0 <= index < n_nodes=3.")),
    Case("AdjacencyGrad.at/negative-col", lambda env: _grad().at(jnp.array([0, 1]), jnp.array([-1, 1])), V,
         _exact("AdjacencyGrad.at: 1 cols out of range; got cols[0]=-1, expected 0 <= index < n_nodes=3.")),
    Case("AdjacencyGrad.at/both-out-of-range", lambda env: _grad().at([5, 0], [0, 9]), V,
         _exact("AdjacencyGrad.at: 1 rows out of range; got rows[0]=5, expected 0 <= index < n_nodes=3. "
                "1 cols out of range; got cols[1]=9, expected 0 <= index < n_nodes=3.")),
    Case("AdjacencyGrad.at/float-rows", lambda env: _grad().at(jnp.array([0.0]), jnp.array([1])), T,
         _exact("AdjacencyGrad.at: rows must be integer node indices; got dtype float32, expected an integer "
                "dtype.")),
    Case("AdjacencyGrad.at/shape-mismatch", lambda env: _grad().at(jnp.array([0, 1]), jnp.array([1])), V,
         _exact("AdjacencyGrad.at: rows and cols must have the same shape; got (2,) and (1,), expected equal "
                "shapes.")),
    Case("AdjacencyGrad.row/negative", lambda env: _grad().row(-1), V,
         _exact("AdjacencyGrad.row: v is out of range; got -1, expected 0 <= v < n_nodes=3.")),
    Case("AdjacencyGrad.row/too-large", lambda env: _grad().row(jnp.int32(3)), V,
         _exact("AdjacencyGrad.row: v is out of range; got 3, expected 0 <= v < n_nodes=3.")),
    Case("AdjacencyGrad.row/vector", lambda env: _grad().row(jnp.array([0, 1])), V,
         _exact("AdjacencyGrad.row: v must be a single node index; got shape (2,), expected a scalar. Hint: use "
                "AdjacencyGrad.at for many pairs.")),
    Case("AdjacencyGrad.row/float", lambda env: _grad().row(1.0), T,
         r"^AdjacencyGrad\.row: v must be integer node indices; got dtype float(32|64), expected an integer dtype\.$"),
    Case("AdjacencyGrad.topk/k-zero", lambda env: _grad().topk(0), V,
         _exact("AdjacencyGrad.topk: k must be a positive int; got 0, expected k >= 1.")),
    Case("AdjacencyGrad.topk/k-float", lambda env: _grad().topk(2.0), T,
         _exact("AdjacencyGrad.topk: k must be a Python int; got float 2.0, expected a positive int.")),
    Case("AdjacencyGrad.topk/k-above-the-pair-count", lambda env: _grad().topk(10**9), V,
         _exact("AdjacencyGrad.topk: k is larger than the number of pairs; got k=1000000000, expected k <= "
                "n_nodes**2=9.")),
    Case("AdjacencyGrad.topk/sign", lambda env: _grad().topk(1, sign=2), V,
         _exact("AdjacencyGrad.topk: sign must be +1 or -1; got 2, expected 1 or -1.")),
    Case("AdjacencyGrad.topk/unknown-candidates", lambda env: _grad().topk(1, among="pairs"), V,
         r"^AdjacencyGrad\.topk: unknown candidate set 'pairs'; expected one of 'non_edges', 'edges', 'all'\.$"),
    Case("AdjacencyGrad.topk/block-size-zero", lambda env: _grad().topk(1, block_size=0), V,
         _exact("AdjacencyGrad.topk: block_size must be a positive int; got 0, expected block_size >= 1.")),
    # --- jgrad.checked -------------------------------------------------------------------------------
    Case("checked/fn-not-callable", lambda env: jgrad.checked("spmm"), T,
         _exact("checked: fn must be callable; got str 'spmm', expected a function of arrays and graphs.")),
    Case("checked/flag-not-bool", lambda env: jgrad.checked(_SUM_LOSS, finite_inputs=None), T,
         _exact("checked: finite_inputs must be a bool; got NoneType None, expected True or False.")),
    Case("checked/graph-argument-out-of-range", lambda env: _checked_call(ops.spmm, RAW_BAD_SENDER, X[:2]), J,
         _exact("Graph: senders[1]=5 is out of range; expected 0 <= index < n_nodes=2. (`check` failed)")),
    Case("checked/graph-changed-inside", lambda env: _checked_call(_shifted_spmm, G, X, 1), J,
         _exact("gspmm: senders[2]=3 is out of range; expected 0 <= index < n_nodes=3. (`check` failed)")),
    Case("checked/nan-feature", lambda env: _checked_call(ops.spmm, G, X.at[1, 0].set(jnp.nan)), J,
         _exact("spmm: argument args[1] is not finite; got nan at flat index 2 of shape (3, 2), expected finite "
                "values. (`check` failed)")),
    Case("checked/gather-out-of-range", lambda env: _checked_call(lambda x, i: x[i], X, jnp.array([4])), J,
         r"^out-of-bounds indexing for array of shape \(3, 2\): index 4 is out of bounds for axis 0 with size 3\."),
    Case("checked/segment-id-out-of-range", lambda env: _checked_call(lambda d, i: ops.segment_max(d, i, 2), DATA,
                                                                      IDS), J,
         _exact("segment_max: segment_ids[2]=2 is out of range; expected 0 <= index < num_segments=2. (`check` "
                "failed)")),
    Case("checked/label-minus-one",
         lambda env: _checked_call(jgrad.train.masked_cross_entropy, jnp.zeros((3, 2)), jnp.array([0, -1, 1]),
                                   jnp.ones(3, bool)), J,
         _exact("masked_cross_entropy: labels[1]=-1 is out of range; expected 0 <= index < n_classes=2. (`check` "
                "failed)")),
    Case("checked/negative-weight-in-gcn-norm",
         lambda env: _checked_call(lambda w: ops.gcn_norm(G, w).edge_weight, W.at[3].set(-2.0)), J,
         _exact("gcn_norm: edge_weight[3]=-2.0 is negative; expected weights >= 0 (a degree normalisation is "
                "undefined for a degree <= 0). (`check` failed)")),
    # --- unbatch ---------------------------------------------------------------------------------------
    Case("unbatch/not-a-graph", lambda env: jgrad.unbatch([G]), T,
         _exact("unbatch: graph must be a jgrad.Graph; got list, expected a batch made by jgrad.batch.")),
    Case("unbatch/float-node-counts", lambda env: jgrad.unbatch(_bad_batch(n_node_per_graph=jnp.array([2.5, 2.5]))),
         T, _exact("unbatch: n_node_per_graph must have an integer dtype; got float32, expected int32 node "
                   "counts.")),
    Case("unbatch/2d-node-counts", lambda env: jgrad.unbatch(_bad_batch(n_node_per_graph=jnp.array([[2, 3]]))), V,
         _exact("unbatch: n_node_per_graph must be 1-D; got shape (1, 2), expected (G,).")),
    Case("unbatch/node-counts-do-not-add-up", lambda env: jgrad.unbatch(_bad_batch(n_node_per_graph=jnp.array([1, 3]))),
         V, _exact("unbatch: n_node_per_graph must be non-negative and add up to n_nodes; got sum 4 over 2 graphs, "
                   "expected 5.")),
    Case("unbatch/negative-node-count", lambda env: jgrad.unbatch(_bad_batch(n_node_per_graph=jnp.array([-1, 6]))),
         V, r"^unbatch: n_node_per_graph must be non-negative and add up to n_nodes; got sum 5 over 2 graphs"),
    Case("unbatch/edge-joins-two-graphs", lambda env: jgrad.unbatch(_bad_batch(senders=jnp.array([0, 1, 3]))), V,
         _exact("unbatch: 1 edge(s) join two graphs of the batch (first: edge 1, 1 -> 3); expected each edge "
                "inside one graph's node range.")),
    Case("unbatch/index-out-of-range", lambda env: jgrad.unbatch(_bad_batch(receivers=jnp.array([1, 3, 9]))), V,
         r"^unbatch: the graph has indices out of range: 1 receivers out of range \(receivers\[2\]=9\); expected "
         r"0 <= index < n_nodes=5\."),
    Case("unbatch/graph-mask-shape", lambda env: jgrad.unbatch(_bad_batch(graph_mask=jnp.array([True]))), V,
         _exact("unbatch: graph_mask has the wrong shape; got (1,), expected (2,).")),
    Case("unbatch/node-mask-shape", lambda env: jgrad.unbatch(_bad_batch(node_mask=jnp.ones(3, bool))), V,
         _exact("unbatch: node_mask has the wrong shape; got (3,), expected (5,).")),
    Case("unbatch/edge-mask-shape", lambda env: jgrad.unbatch(_bad_batch(edge_mask=jnp.ones(1, bool))), V,
         _exact("unbatch: edge_mask has the wrong shape; got (1,), expected (3,).")),
    Case("unbatch/edge-weight-rows", lambda env: jgrad.unbatch(_bad_batch(edge_weight=jnp.ones(2))), V,
         _exact("unbatch: edge_weight must have one row per edge; got shape (2,), expected (3, ...).")),
    # (raised inside jax.jit, so JAX appends its note on filtered frames after the message)
    Case("unbatch/traced", lambda env: jax.jit(lambda g: jgrad.unbatch(g)[0].senders)(_bad_batch()), T,
         "^" + re.escape("unbatch: works on concrete arrays only, because its output size depends on the values; "
                         "call it outside jax.jit / jax.vmap and pass the result in.\n")),
    # --- PyTorch Geometric's argument order and names ----------------------------------------------------
    Case("spmm/pyg-argument-order", lambda env: ops.spmm(X, G), T,
         r"^spmm: graph must be a jgrad.Graph; got an array of dtype float32 and shape \(3, 2\)\. The graph comes "
         r"first \(op\(graph, x\), layer\(graph, x\)\); a PyG edge_index \(2, E\) becomes one with "
         r"jgrad\.Graph\.from_edge_index\(edge_index\)\.$"),
    Case("gspmm/edge-index-as-graph", lambda env: ops.gspmm(jnp.stack([G.senders, G.receivers]), "copy_u", "sum", X),
         T, r"^gspmm: graph must be a jgrad.Graph; got an array of dtype int32 and shape \(2, 4\)\."),
    Case("GCNConv/pyg-argument-order",
         lambda env: jgrad.nn.GCNConv(2, 4, rngs=nnx.Rngs(0))(X, jnp.stack([G.senders, G.receivers])), T,
         r"^gcn_conv: graph must be a jgrad.Graph; got an array of dtype float32 and shape \(3, 2\)\."),
    Case("GAT/pyg-argument-order", lambda env: _model(jgrad.nn.GAT)(X, G), T,
         r"^GAT: graph must be a jgrad.Graph; got an array of dtype float32 and shape \(3, 2\)\."),
    Case("add_self_loops/not-a-graph", lambda env: jgrad.graph.add_self_loops([[0, 1], [1, 0]]), T,
         _exact("add_self_loops: graph must be a jgrad.Graph; got list.")),
    Case("from_edge_index/pyg-num-nodes", lambda env: Graph.from_edge_index([[0, 1], [1, 0]], num_nodes=2), T,
         _exact("Graph.from_edge_index: unexpected keyword argument num_nodes (PyG's name; jgrad's is n_nodes).")),
    Case("Graph/pyg-num-nodes", lambda env: G.num_nodes, AttributeError,
         _exact("'Graph' object has no attribute 'num_nodes'; that is PyG's name: jgrad's is n_nodes.")),
    Case("Graph/pyg-edge-index", lambda env: G.edge_index, AttributeError,
         r"^'Graph' object has no attribute 'edge_index'; that is PyG's name: jgrad keeps senders and receivers "),
    Case("Graph/unknown-attribute", lambda env: G.no_such_field, AttributeError,
         _exact("'Graph' object has no attribute 'no_such_field'")),
    Case("NodeDataset/pyg-x", lambda env: _dataset().x, AttributeError,
         _exact("'NodeDataset' object has no attribute 'x'; that is PyG's name: jgrad's is features.")),
    Case("NodeDataset/pyg-num-classes", lambda env: _dataset().num_classes, AttributeError,
         _exact("'NodeDataset' object has no attribute 'num_classes'; that is PyG's name: jgrad's is n_classes.")),
]


def _without_env(fn):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("JGRAD_DATA", raising=False)
        return fn()


MIN_CASES = 135


def test_the_bad_input_table_is_large():
    print(f"bad-input cases: {len(CASES)}")
    assert len(CASES) >= MIN_CASES
    assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_raises_a_clear_error(case: Case, tmp_path, planetoid_dir):
    env = Env(tmp_path, planetoid_dir)
    with pytest.raises(case.error, match=case.match) as info:
        case.call(env)
    assert type(info.value) is case.error, f"{case.id}: raised a subclass {type(info.value).__name__}"
    message = str(info.value)
    assert "Traceback" not in message and "XlaRuntimeError" not in message


# ------------------------------------------------------------------------------------------------------
# Degenerate but valid input: graphs with no edges, or no nodes at all, work and give zeros.
# ------------------------------------------------------------------------------------------------------
NO_EDGES = Graph.from_edges([], [], n_nodes=4)
NO_NODES = Graph.from_edges([], [], n_nodes=0)
REDUCERS = ("sum", "mean", "max", "min")


def _zero_edge_calls(graph: Graph) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """Calls of every op on ``graph`` as functions of node features x of shape (N, 2)."""
    empty_edges = jnp.zeros((0, 2))
    calls = {f"gspmm-copy_u-{r}": (lambda r: lambda x: ops.gspmm(graph, "copy_u", r, x))(r) for r in REDUCERS}
    calls |= {
        "gspmm-u_mul_e": lambda x: ops.gspmm(graph, "u_mul_e", "sum", x, jnp.zeros((0,))),
        "gspmm-copy_e-max": lambda x: ops.gspmm(graph, "copy_e", "max", None, empty_edges) + 0 * x.sum(),
        "spmm": lambda x: ops.spmm(graph, x),
        "spmm-bf16-accumulate": lambda x: ops.spmm(graph, x.astype(jnp.bfloat16), accumulate_dtype=jnp.float32),
        "gsddmm-dot": lambda x: ops.gsddmm(graph, "dot", x, x),
        "edge_softmax": lambda x: ops.edge_softmax(graph, empty_edges) + 0 * x.sum(),
        "gcn_norm-spmm": lambda x: ops.spmm(ops.gcn_norm(graph, add_self_loops=False), x),
        "gcn_norm-with-loops": lambda x: ops.spmm(ops.gcn_norm(graph), x),
        "row_norm-spmm": lambda x: ops.spmm(ops.row_norm(graph), x),
        "segment_softmax": lambda x: ops.segment_softmax(jnp.zeros((0,)), jnp.zeros((0,), jnp.int32), graph.n_nodes),
        "segment_std": lambda x: ops.segment_std(empty_edges, jnp.zeros((0,), jnp.int32), graph.n_nodes),
        "in_degree": lambda x: graph.in_degree(),
        "to_dense": lambda x: graph.to_dense(),
        "GCN": lambda x: _model(jgrad.nn.GCN)(graph, x),
        "GAT": lambda x: _model(jgrad.nn.GAT, heads=2)(graph, x),
        "GraphSAGE": lambda x: _model(jgrad.nn.GraphSAGE)(graph, x),
        "GIN": lambda x: _model(jgrad.nn.GIN)(graph, x),
    }
    return calls


MODELS = ("GCN", "GAT", "GraphSAGE", "GIN")
ZERO_EDGE_CASES = [(name, graph) for graph in (NO_EDGES, NO_NODES) for name in _zero_edge_calls(graph)
                   if graph.n_nodes or name not in MODELS]  # models: once, to keep the suite fast


@pytest.mark.parametrize(
    "name, graph", ZERO_EDGE_CASES, ids=[f"{name}-N{graph.n_nodes}" for name, graph in ZERO_EDGE_CASES]
)
def test_graphs_without_edges_work_and_give_zeros_with_zero_gradients(name, graph):
    fn = _zero_edge_calls(graph)[name]
    x = jnp.arange(graph.n_nodes * 2, dtype=jnp.float32).reshape(graph.n_nodes, 2) + 1
    out = jax.jit(fn)(x)  # compiled once: eager op-by-op dispatch of a whole model is slow
    assert np.isfinite(np.asarray(out, np.float32)).all()
    if name == "gcn_norm-with-loops":  # only the self loops remain: D^-1/2 I D^-1/2 x = x
        np.testing.assert_array_equal(out, x)
    elif name in MODELS:  # a bias or root term still acts on isolated nodes
        assert out.shape == (graph.n_nodes, 3)
    else:
        assert not np.asarray(out, np.float32).any(), f"{name}: expected zeros, got {out}"
    grad = jax.jit(jax.grad(lambda x: jnp.sum(fn(x).astype(jnp.float32))))(x)
    assert grad.shape == x.shape and np.isfinite(grad).all()
    if name != "gcn_norm-with-loops" and name not in MODELS:
        assert not np.asarray(grad).any()


# ------------------------------------------------------------------------------------------------------
# NaN/Inf features are not rejected by the ops (they cannot be, under jit); they must never disappear
# silently. They propagate to exactly the outputs that depend on them; `jgrad.checked` turns them into
# errors (tests/reliability/test_checked.py).
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", REDUCERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_features_propagate_to_exactly_their_receivers(reduce, bad):
    # 0 -> 1, 2 -> 1, 1 -> 3, 3 -> 0: only node 1 receives from node 2.
    graph = Graph.from_edges([0, 2, 1, 3], [1, 1, 3, 0], n_nodes=4)
    x = jnp.ones((4, 2)).at[2, 0].set(bad)
    out = np.asarray(ops.gspmm(graph, "copy_u", reduce, x))
    assert np.isfinite(out[[0, 2, 3]]).all() and np.isfinite(out[1, 1])
    if reduce in ("sum", "mean", "max") or np.isnan(bad):
        assert not np.isfinite(out[1, 0]), f"{reduce}: a non-finite input vanished: {out[1]}"
    else:  # min over {1, inf} is 1, exactly
        assert out[1, 0] == 1.0
