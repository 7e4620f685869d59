"""The optimizer: Adam with L2 weight decay on a chosen subset of the weight matrices."""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

DECAY_PRESETS = ("all", "first_layer", "none")


def decay_mask(params: Any, which: str = "all") -> Any:
    """A pytree of bools like ``params``: True where L2 weight decay applies.

    Only weights with ``ndim >= 2`` (kernels, attention vectors) are ever decayed; biases are not.
    ``which`` selects among them by path (keys joined with ``/``, e.g. ``layers/0/kernel``):

    - ``"all"``: every weight (GAT; Veličković et al.).
    - ``"first_layer"``: the weights under ``layers/0/`` only (GCN; Kipf & Welling decay the first layer).
    - ``"none"``: nothing.
    - any other string: a regular expression searched in the path.

    Raises:
      ValueError: ``"first_layer"`` on a model without a ``layers`` list, or a pattern matching nothing.
    """
    paths = [(_path_string(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    if which == "none":
        selected = [False for _ in paths]
    elif which == "all":
        selected = [leaf.ndim >= 2 for _, leaf in paths]
    else:
        pattern = r"^layers/0/" if which == "first_layer" else which
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"decay_mask: which is neither one of {DECAY_PRESETS} nor a valid regular expression; "
                f"got {which!r} ({error})."
            ) from None
        selected = [bool(regex.search(path)) and leaf.ndim >= 2 for path, leaf in paths]
        if not any(selected):
            names = ", ".join(path for path, _ in paths)
            hint = " The model needs a `layers` list for 'first_layer'." if which == "first_layer" else ""
            raise ValueError(f"decay_mask: {which!r} selects no weight matrix; got parameters {names}.{hint}")
    return jax.tree.unflatten(jax.tree.structure(params), selected)


def _path_string(path: tuple) -> str:
    parts = []
    for entry in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def make_optimizer(
    learning_rate: float,
    weight_decay: float = 0.0,
    decay: str = "all",
) -> optax.GradientTransformation:
    """Adam with an L2 penalty ``weight_decay / 2 * sum(w**2)`` on the weights `decay_mask` selects.

    The penalty enters as its gradient, ``weight_decay * w``, added before Adam
    (``optax.masked(optax.add_decayed_weights)`` chained before ``optax.adam``). That is exactly the
    gradient of the papers' loss ``CE + weight_decay * l2_loss(w)`` (TensorFlow's ``l2_loss`` halves the
    sum of squares), so GCN and GAT train as in their reference code. It is *not* AdamW's decoupled decay.
    The penalty is left out of the reported losses.

    Args:
      learning_rate: Adam's step size.
      weight_decay: the L2 coefficient; 0 disables it.
      decay: which weights are penalised, see `decay_mask`.

    Returns:
      An ``optax.GradientTransformation`` for the pure-dict parameters of `split_model`. Its mask is
      computed from the parameters it is given, so it also works inside ``jax.vmap`` over seeds.
      Equal hashable arguments (of equal types) give the same object, which is stateless, so `fit`
      can reuse the program it compiled for it.

    Example:
      >>> import jax.numpy as jnp
      >>> opt = make_optimizer(0.01, 5e-4, "first_layer")
      >>> params = {"layers": {0: {"kernel": jnp.ones((3, 2))}, 1: {"kernel": jnp.ones((2, 2))}}}
      >>> state = opt.init(params)
    """
    if weight_decay < 0:
        raise ValueError(f"make_optimizer: weight_decay must be >= 0; got {weight_decay}.")
    try:
        hash((learning_rate, weight_decay, decay))
    except TypeError:  # e.g. a learning rate given as a jax array
        return _build_optimizer(learning_rate, weight_decay, decay)
    return _kept_optimizer(learning_rate, weight_decay, decay)


def _build_optimizer(learning_rate: Any, weight_decay: Any, decay: str) -> optax.GradientTransformation:
    adam = optax.adam(learning_rate)
    if weight_decay == 0 or decay == "none":
        return adam
    return optax.chain(
        optax.masked(optax.add_decayed_weights(weight_decay), lambda params: decay_mask(params, decay)),
        adam,
    )


_kept_optimizer = functools.lru_cache(maxsize=32, typed=True)(_build_optimizer)


def l2_penalty(params: Any, weight_decay: float, decay: str = "all") -> jax.Array:
    """The penalty ``weight_decay / 2 * sum(w**2)`` over the weights `decay_mask` selects, a scalar.

    Its gradient is what `make_optimizer` adds. Useful to monitor the same objective the reference GCN
    code early-stops on (its validation "loss" includes this term).
    """
    mask = decay_mask(params, decay)
    squares = [jnp.sum(jnp.square(leaf)) for leaf, on in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if on]
    return 0.5 * weight_decay * sum(squares, jnp.zeros((), jnp.float32))
