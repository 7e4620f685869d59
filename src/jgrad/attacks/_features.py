"""Node features as a dense array or as a sparse (COO) matrix, with the two products attacks need.

Bag-of-words features such as Cora's are about 1% non-zero, and every surrogate and victim model
multiplies them by a weight matrix once per training step; `SparseFeatures` does that in O(nnz·F_out)
with a gather and a segment sum, which JAX differentiates to any order.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np


class SparseFeatures(NamedTuple):
    """An (N, F) matrix held as its non-zero entries ``x[rows[i], cols[i]] = values[i]``.

    Attributes:
      rows: (nnz,) int32 node index of each entry.
      cols: (nnz,) int32 feature index of each entry.
      values: (nnz,) float value of each entry.
      n_nodes: N (static).
      n_features: F (static).
    """

    rows: jax.Array
    cols: jax.Array
    values: jax.Array
    n_nodes: int
    n_features: int

    @classmethod
    def from_dense(cls, x: np.ndarray) -> SparseFeatures:
        """The non-zero entries of a host (N, F) array, in row-major order."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"SparseFeatures.from_dense: x must be (N, F); got shape {x.shape}.")
        rows, cols = np.nonzero(x)
        return cls(jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32),
                   jnp.asarray(x[rows, cols]), int(x.shape[0]), int(x.shape[1]))

    def todense(self) -> jax.Array:
        """The (N, F) dense matrix."""
        out = jnp.zeros((self.n_nodes, self.n_features), self.values.dtype)
        return out.at[self.rows, self.cols].add(self.values)

    def astype(self, dtype) -> SparseFeatures:
        return self._replace(values=self.values.astype(dtype))


jax.tree_util.register_pytree_node(
    SparseFeatures,
    lambda s: ((s.rows, s.cols, s.values), (s.n_nodes, s.n_features)),
    lambda aux, leaves: SparseFeatures(*leaves, *aux),
)

Features = Union[jax.Array, SparseFeatures]


def features_matmul(x: Features, w: jax.Array) -> jax.Array:
    """``x @ w`` for dense or sparse x; w: (F, K) → (N, K). Differentiable w.r.t. w to any order."""
    if isinstance(x, SparseFeatures):
        return jax.ops.segment_sum(x.values[:, None].astype(w.dtype) * w[x.cols], x.rows,
                                   num_segments=x.n_nodes)
    return jnp.asarray(x).astype(w.dtype) @ w


def features_rmatmul(x: Features, z: jax.Array) -> jax.Array:
    """``x.T @ z`` for dense or sparse x; z: (N, K) → (F, K). Differentiable w.r.t. z to any order."""
    if isinstance(x, SparseFeatures):
        return jax.ops.segment_sum(x.values[:, None].astype(z.dtype) * z[x.rows], x.cols,
                                   num_segments=x.n_features)
    return jnp.asarray(x).astype(z.dtype).T @ z


def n_features(x: Features) -> int:
    return x.n_features if isinstance(x, SparseFeatures) else int(x.shape[1])
