"""NodeDataset: one graph with node features, labels and a train/val/test split."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jgrad._src import _pyg_names
from jgrad._src._search import sorted_unique
from jgrad.graph import Graph


@dataclasses.dataclass(frozen=True)
class NodeDataset:
    """A node-classification dataset: one graph, its node features, labels and split masks.

    Attributes:
      graph: the `Graph` with ``N = graph.n_nodes`` nodes.
      features: node features, shape (N, F), float32.
      labels: class of each node, shape (N,), int32, values in ``[0, n_classes)``.
      train_mask: nodes used for training, shape (N,), bool.
      val_mask: nodes used for validation, shape (N,), bool.
      test_mask: nodes used for testing, shape (N,), bool.
      n_classes: number of classes (static int).
      name: short name of the dataset, e.g. ``"cora"`` (static str).

    The loaders in `jgrad.data` return host-side numpy arrays. `NodeDataset` is a pytree whose array
    fields are leaves and whose ``n_classes`` and ``name`` are static, so ``jax.device_put(dataset)``
    moves every array to the device and a dataset can be passed straight into a jitted function.
    Build one from your own arrays with `NodeDataset.from_arrays`, which converts dtypes and checks
    shapes; the plain constructor does neither.
    """

    graph: Graph
    features: np.ndarray | jax.Array
    labels: np.ndarray | jax.Array
    train_mask: np.ndarray | jax.Array
    val_mask: np.ndarray | jax.Array
    test_mask: np.ndarray | jax.Array
    n_classes: int = dataclasses.field(metadata=dict(static=True))
    name: str = dataclasses.field(metadata=dict(static=True))

    def __getattr__(self, name: str) -> Any:
        # Reached only for attributes that do not exist: PyG's names get jgrad's in the message.
        raise _pyg_names.missing_attribute(self, name, _pyg_names.DATASET)

    @property
    def n_nodes(self) -> int:
        """The number of nodes ``N``."""
        return int(self.graph.n_nodes)

    @property
    def n_features(self) -> int:
        """The feature width ``F``."""
        return int(self.features.shape[1])

    @classmethod
    def from_arrays(
        cls,
        graph: Graph,
        features,
        labels,
        train_mask,
        val_mask,
        test_mask,
        *,
        n_classes: int | None = None,
        name: str = "dataset",
    ) -> NodeDataset:
        """Builds a `NodeDataset` from array-likes, converting dtypes and checking shapes.

        Args:
          graph: a `Graph` with ``N`` nodes.
          features: node features, shape (N, F); converted to float32.
          labels: node classes, shape (N,), integer; converted to int32.
          train_mask: shape (N,), bool.
          val_mask: shape (N,), bool.
          test_mask: shape (N,), bool.
          n_classes: number of classes; defaults to ``labels.max() + 1`` (1 for ``N = 0``).
          name: short name of the dataset.

        Returns:
          The `NodeDataset`, holding numpy arrays.

        Raises:
          ValueError: if a shape disagrees with ``N``, a feature is NaN or infinite, a label is outside
            ``[0, n_classes)``, or ``n_classes`` is not positive. Every problem found is reported.
          TypeError: if labels are not integers or a mask is not boolean.
        """
        n_nodes = int(graph.n_nodes)
        features = np.asarray(features)
        labels = np.asarray(labels)
        masks = {
            "train_mask": np.asarray(train_mask),
            "val_mask": np.asarray(val_mask),
            "test_mask": np.asarray(test_mask),
        }
        where = "NodeDataset.from_arrays"
        type_problems = []
        if not np.issubdtype(labels.dtype, np.integer):
            type_problems.append(f"{where}: labels must be integers; got dtype {labels.dtype}.")
        for key, mask in masks.items():
            if mask.dtype != np.bool_:
                type_problems.append(f"{where}: {key} must be boolean; got dtype {mask.dtype}.")
        if type_problems:
            raise TypeError("\n".join(type_problems))

        problems = []
        if features.ndim != 2 or features.shape[0] != n_nodes:
            problems.append(
                f"{where}: features has the wrong shape; got {features.shape}, expected (N, F) with N={n_nodes}."
            )
        elif features.dtype.kind in "fc" and not np.isfinite(features).all():
            bad = np.argwhere(~np.isfinite(features))
            row, column = (int(i) for i in bad[0])
            problems.append(
                f"{where}: features must be finite; got {len(bad)} non-finite value(s), the first "
                f"features[{row}, {column}]={features[row, column]}."
            )
        if labels.shape != (n_nodes,):
            problems.append(f"{where}: labels has the wrong shape; got {labels.shape}, expected ({n_nodes},).")
        for key, mask in masks.items():
            if mask.shape != (n_nodes,):
                problems.append(f"{where}: {key} has the wrong shape; got {mask.shape}, expected ({n_nodes},).")
        if n_classes is None:
            n_classes = int(labels.max()) + 1 if labels.size else 1
        if int(n_classes) < 1:
            problems.append(f"{where}: n_classes must be positive; got {n_classes}.")
        elif labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            bad = int(np.flatnonzero((labels < 0) | (labels >= n_classes))[0])
            problems.append(
                f"{where}: labels[{bad}] is out of range; got {int(labels[bad])}, "
                f"expected 0 <= label < n_classes={n_classes}."
            )
        if problems:
            raise ValueError("\n".join(problems))
        return cls(
            graph=graph,
            features=features.astype(np.float32, copy=False),
            labels=labels.astype(np.int32, copy=False),
            train_mask=masks["train_mask"],
            val_mask=masks["val_mask"],
            test_mask=masks["test_mask"],
            n_classes=int(n_classes),
            name=str(name),
        )

    def __repr__(self) -> str:
        return (
            f"NodeDataset(name={self.name!r}, n_nodes={self.n_nodes}, n_edges={self.graph.n_edges}, "
            f"n_features={self.n_features}, n_classes={self.n_classes}, "
            f"split={int(np.sum(self.train_mask))}/{int(np.sum(self.val_mask))}/{int(np.sum(self.test_mask))})"
        )


jax.tree_util.register_dataclass(NodeDataset)


def symmetric_edges(senders: np.ndarray, receivers: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Host-side edge-list clean-up shared by the loaders: add reverse edges, drop self loops, merge repeats.

    Args:
      senders: int array of shape (E,).
      receivers: int array of shape (E,).
      n_nodes: the number of nodes ``N``; all ids must lie in ``[0, N)``.

    Returns:
      ``(senders, receivers)``, int32 arrays of shape (E',), each unordered pair ``{u, v}`` with ``u != v``
      appearing once in each direction, sorted by receiver, then sender.
    """
    both_senders = np.concatenate([senders, receivers]).astype(np.int64)
    both_receivers = np.concatenate([receivers, senders]).astype(np.int64)
    keep = both_senders != both_receivers
    key = sorted_unique(both_receivers[keep] * n_nodes + both_senders[keep])
    return (key % n_nodes).astype(np.int32), (key // n_nodes).astype(np.int32)
