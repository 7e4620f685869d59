"""Meta-gradients through a training run: Metattack's "Meta-Self" attack (Zügner & Günnemann, 2019).

The attacker trains a linearised two-layer GCN surrogate ``logits = Â² X W1 W2`` for T steps of SGD with
momentum from a given initialisation (fixed, or re-drawn at every meta-step as in the reference
implementation, see `metattack`), and differentiates the loss after training, cross-entropy on the
unlabelled nodes against self-training labels, w.r.t. the adjacency *through the whole training run*
(a `jax.lax.scan`, each step under `jax.checkpoint`, the inner gradient taken by `jax.grad`: reverse
mode of order two).

Why the all-pairs meta-gradient stays factored. The surrogate is linear in its input, so the adjacency
enters the training run only through ``Â²`` applied to fixed matrices, and it can be applied *outside*
the scan. With ``Â`` symmetric (an undirected graph)::

    training data   (Â² X)[train] = (Â² E_train)^T X       E_train: (N, n_train) indicator columns
    final logits    Â² (X W1_T W2_T)                      (N, C)

so the loss is a function of four `propagate` calls, two on the ``n_train`` indicator columns and two on
the C final logits, and nothing inside the scan touches ``A``. `jgrad.adjacency_grad` then returns the
exact meta-gradient as factors of rank ``2 n_train + 2 C`` plus degree terms (doubled by `symmetric`),
never an N x N array. When the features are narrower than the training set (F < n_train, e.g. a CSBM),
``Â² X`` itself is propagated instead (rank ``2 F``), see `MetaConfig.form`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._src._types import check_choice
from ..gradients import AdjacencyGrad, adjacency_grad, propagate
from ..graph import Graph
from ._checks import check_node_inputs, check_undirected
from ._features import Features, SparseFeatures, features_matmul, features_rmatmul, n_features
from ._flips import GreedyResult, _greedy_flips
from ._models import SURROGATE, GCNConfig, gcn_logits, init_gcn, masked_cross_entropy, train_gcn

FORMS = ("auto", "train", "features")
ATTACKER_LOSSES = ("ce", "masked_ce")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """The inner training run of the meta-gradient (static).

    Attributes:
      hidden: hidden width H of the linearised surrogate.
      steps: inner training steps T.
      learning_rate: SGD step size. The right value depends on the scale of the features: the reference
        0.1 trains the surrogate on 0/1 bag-of-words features, but hardly moves it from its
        initialisation when the rows are normalised to sum to 1. Check with `MetaProblem.surrogate_fit`.
      momentum: heavy-ball momentum, ``v <- momentum v + g;  W <- W - learning_rate v``.
      checkpoint: recompute each inner step in the backward pass (`jax.checkpoint`) instead of storing
        its intermediates; memory O(T·F·H) for the carried weights only.
      form: how ``Â²`` is hoisted out of the scan: ``"train"`` propagates the train indicator columns
        (rank ~ 2 n_train), ``"features"`` propagates X (rank ~ 2 F), ``"auto"`` picks the narrower.
      attacker_loss: ``"ce"``, cross-entropy over every unlabelled node (Meta-Self); ``"masked_ce"``,
        cross-entropy over the unlabelled nodes the trained surrogate still classifies as their
        self-training label (the mask is held constant in the gradient), so flips go to nodes not yet
        misclassified instead of pushing lost ones further (Geisler et al., 2021).
    """

    hidden: int = 16
    steps: int = 100
    learning_rate: float = 0.1
    momentum: float = 0.9
    checkpoint: bool = True
    form: Literal["auto", "train", "features"] = "auto"
    attacker_loss: Literal["ce", "masked_ce"] = "ce"

    def __post_init__(self):
        check_choice("MetaConfig", "attacker_loss", self.attacker_loss, ATTACKER_LOSSES)


def inner_train(params: dict[str, jax.Array], data: jax.Array, labels: jax.Array,
                config: MetaConfig = MetaConfig()) -> dict[str, jax.Array]:
    """T steps of SGD with momentum on ``mean CE(data @ W1 @ W2, labels)``; returns the final weights.

    Args:
      params: ``{"w1": (F, H), "w2": (H, C)}`` initial weights.
      data: (n_train, F) propagated features of the training nodes, ``(Â² X)[train]``.
      labels: (n_train,) int labels.
      config: `MetaConfig`.

    Differentiable w.r.t. ``params`` and ``data`` to any order (a `jax.lax.scan`; with
    ``config.checkpoint`` each step is rematerialised in the backward pass).
    """

    def loss(p):
        logits = data @ p["w1"] @ p["w2"]
        return masked_cross_entropy(logits, labels, jnp.ones(labels.shape, bool))

    def step(carry, _):
        p, v = carry
        g = jax.grad(loss)(p)
        v = jax.tree.map(lambda v_, g_: config.momentum * v_ + g_, v, g)
        p = jax.tree.map(lambda p_, v_: p_ - config.learning_rate * v_, p, v)
        return (p, v), None

    body = jax.checkpoint(step) if config.checkpoint else step
    velocity = jax.tree.map(jnp.zeros_like, params)
    (params, _), _ = jax.lax.scan(body, (params, velocity), None, length=config.steps)
    return params


def resolve_form(config: MetaConfig, n_train: int, n_feature: int) -> str:
    """The hoisting form `MetaConfig.form` resolves to for these sizes."""
    check_choice("MetaConfig", "form", config.form, FORMS)
    if config.form != "auto":
        return config.form
    return "features" if n_feature <= n_train else "train"


def surrogate_logits(
    graph: Graph,
    x: Features,
    train_index: jax.Array,
    train_labels: jax.Array,
    params: dict[str, jax.Array],
    config: MetaConfig = MetaConfig(),
) -> jax.Array:
    """(N, K, C) logits ``Â² X W1_T W2_T`` of the surrogate after `inner_train` on ``graph``, one per initialisation.

    ``(W1_T, W2_T)`` are the weights after `inner_train` on ``(Â² X)[train_index]`` from each of the K
    initialisations in ``params`` (leaves (F, H) and (H, C), K = 1, or (K, F, H) and (K, H, C)), with
    ``Â = D^-1/2 (A + I) D^-1/2``. Every use of the adjacency is a `propagate` outside the inner scan
    (see the module docstring), so the adjacency gradient of any loss of these logits stays factored.
    """
    dtype = params["w1"].dtype
    batch = params if params["w1"].ndim == 3 else jax.tree.map(lambda p: p[None], params)  # (K, ...) leaves
    n_train = int(train_index.shape[0])

    def products(data):  # (F, K*C): W1_T W2_T of every trained initialisation, side by side
        trained = jax.vmap(lambda p: inner_train(p, data, train_labels, config))(batch)
        product = jnp.einsum("kfh,khc->fkc", trained["w1"], trained["w2"])
        return product.reshape(product.shape[0], -1)

    if resolve_form(config, n_train, n_features(x)) == "features":
        dense = x.todense() if isinstance(x, SparseFeatures) else jnp.asarray(x)
        propagated = propagate(graph, propagate(graph, dense.astype(dtype)))  # Â² X, (N, F)
        logits = propagated @ products(propagated[train_index])
    else:
        indicator = (jnp.arange(graph.n_nodes)[:, None] == train_index[None, :]).astype(dtype)
        columns = propagate(graph, propagate(graph, indicator))  # Â² E_train, (N, n_train)
        data = features_rmatmul(x, columns).T  # (Â² X)[train] because Â is symmetric
        logits = propagate(graph, propagate(graph, features_matmul(x, products(data))))
    return logits.reshape(logits.shape[0], -1, batch["w2"].shape[-1])


def meta_self_loss(
    graph: Graph,
    x: Features,
    train_index: jax.Array,
    train_labels: jax.Array,
    unlabeled_mask: jax.Array,
    pseudo_labels: jax.Array,
    params: dict[str, jax.Array],
    config: MetaConfig = MetaConfig(),
) -> jax.Array:
    """The Meta-Self attacker loss of a graph: train the surrogate on it, then score the unlabelled nodes.

    ``L(A) = mean_{v unlabelled} CE(Â² X W1_T W2_T [v], pseudo_labels[v])`` (or its masked form,
    `MetaConfig.attacker_loss`), with the trained weights of `surrogate_logits`.

    Args:
      graph: an undirected graph (both directions of each edge, equal weights); the weights may be traced.
      x: (N, F) features, dense or `SparseFeatures`.
      train_index: (n_train,) int indices of the labelled training nodes.
      train_labels: (n_train,) their labels.
      unlabeled_mask: (N,) bool, the nodes the attacker scores.
      pseudo_labels: (N,) int self-training labels.
      params: initial surrogate weights ``{"w1": (F, H), "w2": (H, C)}``, or an ensemble of K
        initialisations ``{"w1": (K, F, H), "w2": (K, H, C)}``: each is trained and the loss is the mean
        of the K losses (the propagations are shared, so the factored rank grows by 2(K-1)C only).
      config: `MetaConfig`.

    Returns:
      The scalar loss. Every use of the adjacency is a `propagate` outside the inner scan, so
      ``jgrad.adjacency_grad(meta_self_loss, graph, ...)`` is the exact factored meta-gradient.
    """
    logits = surrogate_logits(graph, x, train_index, train_labels, params, config)  # (N, K, C)
    losses = jax.vmap(lambda l: attacker_loss(l, pseudo_labels, unlabeled_mask, config), in_axes=1)(logits)
    return jnp.mean(losses)


def attacker_loss(logits: jax.Array, pseudo_labels: jax.Array, unlabeled_mask: jax.Array,
                  config: MetaConfig = MetaConfig()) -> jax.Array:
    """The attacker's loss on (N, C) surrogate logits, `MetaConfig.attacker_loss`; a scalar."""
    mask = unlabeled_mask
    if config.attacker_loss == "masked_ce":
        mask = mask & (jnp.argmax(jax.lax.stop_gradient(logits), axis=-1) == pseudo_labels)
    return masked_cross_entropy(logits, pseudo_labels, mask)


def self_training_labels(graph: Graph, x: Features, labels: jax.Array, train_mask: jax.Array,
                         val_mask: jax.Array, *, key: jax.Array, n_classes: int,
                         config: GCNConfig = SURROGATE) -> jax.Array:
    """Labels for the Meta-Self loss: a linearised GCN trained on the clean graph predicts every node,
    and the training nodes keep their true labels. Shape (N,), int32."""
    # The graph is an argument of the jitted training, not a constant baked into the program.
    params = _train_gcn(graph, x, labels, train_mask, val_mask, key=key, n_classes=n_classes, config=config)
    predicted = jnp.argmax(gcn_logits(params, graph, x, config), axis=-1)
    return jnp.where(train_mask, labels, predicted).astype(jnp.int32)


_train_gcn = jax.jit(train_gcn, static_argnames=("n_classes", "config"))


class SurrogateFit(NamedTuple):
    """The surrogate after its inner training run (`MetaProblem.surrogate_fit`); scalars, means over inits.

    Attributes:
      train_loss: cross-entropy on the training nodes (uniform predictions give ``log C``).
      train_accuracy: accuracy on the training nodes.
      pseudo_agreement: fraction of the unlabelled nodes predicted as their self-training label.
    """

    train_loss: jax.Array
    train_accuracy: jax.Array
    pseudo_agreement: jax.Array


@dataclasses.dataclass(frozen=True)
class MetaProblem:
    """Everything `meta_gradient` needs besides the graph: features, labels and the inner initialisation.

    ``params`` is the initialisation of every inner training run, unless `metattack` is given a key, in
    which case each meta-step draws its own with `initial_params`.
    """

    x: Any
    train_index: jax.Array
    train_labels: jax.Array
    unlabeled_mask: jax.Array
    pseudo_labels: jax.Array
    params: dict[str, jax.Array]
    config: MetaConfig = MetaConfig()

    @classmethod
    def create(cls, graph: Graph, x: Features, labels: Any, train_mask: Any, val_mask: Any, *,
               key: jax.Array, n_classes: int, config: MetaConfig = MetaConfig(),
               dtype: Any = jnp.float32, inits: int = 1) -> MetaProblem:
        """Trains the self-training surrogate on the clean graph and draws the fixed inner initialisation.

        ``graph`` must be undirected, ``labels`` (N,) ints in ``[0, n_classes)``, ``train_mask`` and
        ``val_mask`` (N,) bool, each selecting a node, and ``train_mask`` must leave unlabelled nodes
        (one-line TypeError or ValueError otherwise).

        With ``inits`` > 1 it draws an ensemble of that many initialisations (leaves (K, ...)); the
        attacker loss is then the mean over them (see `meta_self_loss`). The first member is the single
        initialisation ``inits=1`` would draw.
        """
        if not isinstance(inits, int) or inits < 1:
            raise ValueError(f"MetaProblem.create: inits must be a positive int; got {inits!r}.")
        check_node_inputs("MetaProblem.create", graph, labels, train_mask, val_mask, n_classes)
        label_key, init_key = jax.random.split(key)
        labels, train_mask = jnp.asarray(labels), jnp.asarray(train_mask)
        pseudo = self_training_labels(graph, x, labels, train_mask, jnp.asarray(val_mask), key=label_key,
                                      n_classes=n_classes)
        train_index = jnp.asarray(np.flatnonzero(np.asarray(train_mask)), jnp.int32)
        width = dataclasses.replace(SURROGATE, hidden=config.hidden)
        params = init_gcn(init_key, n_features(x), n_classes, width, dtype)
        if inits > 1:
            extra = [init_gcn(jax.random.fold_in(init_key, i), n_features(x), n_classes, width, dtype)
                     for i in range(1, inits)]
            params = jax.tree.map(lambda *members: jnp.stack(members), params, *extra)
        return cls(x, train_index, labels[train_index], ~train_mask, pseudo, params, config)

    @property
    def inits(self) -> int:
        """How many initialisations the attacker loss averages over (1 unless an ensemble)."""
        return int(self.params["w1"].shape[0]) if self.params["w1"].ndim == 3 else 1

    def initial_params(self, key: jax.Array) -> dict[str, jax.Array]:
        """Fresh surrogate weights drawn from ``key``, with the shapes, dtype and distribution of ``params``
        (`init_gcn`, ``U(-1/sqrt(F_out), 1/sqrt(F_out))``; an ensemble gets as many fresh members); jit-able."""
        n_in, hidden = self.params["w1"].shape[-2:]
        width = dataclasses.replace(SURROGATE, hidden=hidden)
        draw = lambda k: init_gcn(k, n_in, self.params["w2"].shape[-1], width, self.params["w1"].dtype)
        if self.inits == 1:
            return draw(key)
        return jax.vmap(draw)(jax.random.split(key, self.inits))

    def with_initial_params(self, key: jax.Array) -> MetaProblem:
        """This problem with ``params`` replaced by `initial_params` ``(key)``."""
        return dataclasses.replace(self, params=self.initial_params(key))

    def loss(self, graph: Graph) -> jax.Array:
        """`meta_self_loss` of ``graph``."""
        return meta_self_loss(graph, self.x, self.train_index, self.train_labels, self.unlabeled_mask,
                              self.pseudo_labels, self.params, self.config)

    def surrogate_fit(self, graph: Graph) -> SurrogateFit:
        """How well the inner training run fits on ``graph``: `SurrogateFit`, means over the initialisations.

        A training loss still near that of the initialisation (``config.steps=0``) means the surrogate
        hardly trains in ``config.steps`` steps (the learning rate is small for the scale of the
        features), so the meta-gradient describes a barely trained model; docs/attacks.md shows what
        that does to the attack on Cora. Jit-able.
        """
        logits = surrogate_logits(graph, self.x, self.train_index, self.train_labels, self.params, self.config)
        train_logits = logits[self.train_index]  # (n_train, K, C)
        train_loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            train_logits, self.train_labels[:, None]))
        train_accuracy = jnp.mean(jnp.argmax(train_logits, axis=-1) == self.train_labels[:, None])
        agree = (jnp.argmax(logits, axis=-1) == self.pseudo_labels[:, None]) & self.unlabeled_mask[:, None]
        pseudo_agreement = jnp.sum(agree) / (jnp.maximum(jnp.sum(self.unlabeled_mask), 1) * logits.shape[1])
        dtype = train_loss.dtype
        return SurrogateFit(train_loss, train_accuracy.astype(dtype), pseudo_agreement.astype(dtype))


def meta_gradient(problem: MetaProblem, graph: Graph, *, mode: Literal["factored", "dense"] = "factored",
                  check: bool = True) -> AdjacencyGrad:
    """The symmetric meta-gradient ``dL/dA`` of the Meta-Self loss for every unordered pair, as factors.

    Exactly the gradient of the attacker loss after T inner training steps, w.r.t. the undirected
    adjacency (`AdjacencyGrad.symmetric`); ``mode="dense"`` runs the same computation on the complete
    graph (small graphs only, for checking). ``graph`` must be undirected, since `meta_self_loss` relies
    on a symmetric ``Â`` (ValueError, checked when its indices are concrete). Jit the call, not the
    loss. Under ``jit`` the check against `jgrad.edge_grad` cannot raise: a failed check makes every
    entry NaN.
    """
    check_undirected("meta_gradient", graph)
    # The bound method compares equal for the same problem, so repeated calls reuse one compiled program.
    return adjacency_grad(problem.loss, graph, symmetric=True, mode=mode, check=check)


def metattack(problem: MetaProblem, graph: Graph, budget: int, *, flips_per_step: int = 1,
              key: jax.Array | None = None, log: Callable[[str], None] | None = None) -> GreedyResult:
    """Metattack (Meta-Self): greedy flips by the meta-gradient score ``dL/da (1 - 2a)``, recomputed each step.

    No self loops, no pair flipped twice, no singleton created (`FlipSet`). ``flips_per_step`` > 1 takes
    several of the best-scoring flips per meta-gradient (the original takes one).

    Without ``key`` every meta-step trains the surrogate from ``problem.params``. With ``key``, meta-step
    ``s`` (from 0) trains it from ``problem.initial_params(step_key(key, s))``, fresh weights at every
    meta-step as the reference implementation does; the key is an argument of the jitted step (one
    compilation) and the attack is deterministic given ``key``.

    ``budget`` is an int with ``0 <= budget <= N (N - 1) / 2``, checked before any work (TypeError or
    ValueError otherwise); 0 returns no flips without computing a meta-gradient. ``log`` (default None:
    silent) receives one progress line per meta-step, see `greedy_flips`.
    """
    dtype = problem.params["w1"].dtype
    if key is None:
        return _greedy_flips("metattack", lambda g: meta_gradient(problem, g), graph, budget,
                             flips_per_step=flips_per_step, dtype=dtype, key=None, log=log)
    return _greedy_flips("metattack", lambda g, k: meta_gradient(problem.with_initial_params(k), g), graph,
                         budget, flips_per_step=flips_per_step, dtype=dtype, key=key, log=log)
