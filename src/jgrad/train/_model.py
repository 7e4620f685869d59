"""Splitting a Flax NNX model into a static `ModelDef` and a pure-dict parameter pytree, and back."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

Params = Any  # a nested dict of arrays, as `nnx.to_pure_dict` returns


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """Everything about a model except its trainable parameters; hashable static data for `jax.jit`.

    Attributes:
      graphdef: the `nnx.GraphDef` of the model.
      template: the `nnx.State` of its `nnx.Param` variables (only its structure is used).
      rest: the `nnx.State` of every other variable; carried unchanged (jgrad layers keep none).
    """

    graphdef: Any
    template: Any
    rest: Any

    def merge(self, params: Params) -> nnx.Module:
        """The module with ``params`` (a pure dict, as from `split_model`) in place of its parameters."""
        state = jax.tree.map(lambda leaf: leaf, self.template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state, self.rest)

    def apply(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        """``merge(params)(*args, **kwargs)``: calls the model, e.g. ``apply(params, graph, x, key=k)``."""
        return self.merge(params)(*args, **kwargs)

    def __hash__(self) -> int:
        return hash(self.graphdef)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelDef) and self.graphdef == other.graphdef


def split_model(model: nnx.Module) -> tuple[ModelDef, Params]:
    """Splits ``model`` with `nnx.split` into ``(model_def, params)``.

    ``params`` holds the model's `nnx.Param` arrays as a nested dict (`nnx.to_pure_dict`): the pytree
    that optax updates, orbax saves and ``jax.vmap`` batches over seeds. ``model_def.merge(params)``
    rebuilds the module and ``model_def.apply(params, graph, x, key=key)`` calls it.

    Example:
      >>> from flax import nnx
      >>> model_def, params = split_model(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> sorted(params), params["kernel"].shape
      (['bias', 'kernel'], (3, 2))
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return ModelDef(graphdef, params, rest), nnx.to_pure_dict(params)


def init_params(make_model: Callable[[nnx.Rngs], nnx.Module], keys: jax.Array) -> tuple[ModelDef, Params]:
    """Initialises one parameter set per key in a single ``jax.vmap``.

    Args:
      make_model: builds the model from an `nnx.Rngs`, e.g. ``lambda rngs: GCN(F, 16, C, rngs=rngs)``.
      keys: PRNG keys, shape (B,).

    Returns:
      ``(model_def, params)`` where every leaf of ``params`` has a leading seed axis of size B. Row b
      equals the parameters of ``make_model(nnx.Rngs(params=keys[b]))``.
    """
    model_def, _ = split_model(nnx.eval_shape(lambda: make_model(nnx.Rngs(params=0))))

    def one(key):
        return split_model(make_model(nnx.Rngs(params=key)))[1]

    if jax.tree.leaves(model_def.rest):
        model_def, _ = split_model(make_model(nnx.Rngs(params=keys[0])))
    return model_def, jax.vmap(one)(keys)
