"""Bad input to an attack is a one-line error naming the argument and the value, before any work."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgrad import Graph, attacks
from jgrad.data import csbm


@pytest.fixture(scope="module")
def split():
    data = attacks.largest_component(csbm(40, 3, avg_degree=4.0, feature_dim=4, seed=1))
    return attacks.random_split(data, train=0.2, val=0.2, seed=0)


def _directed(graph):
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    keep = senders < receivers  # one direction of every pair
    return Graph.from_edges(senders[keep], receivers[keep], graph.n_nodes)


def _untraced(*args):
    raise AssertionError("the attack scored a graph it should have refused")


def test_every_attack_refuses_a_directed_graph(split):
    x = jnp.asarray(split.features)
    directed = _directed(split.graph)
    problem = attacks.MetaProblem.create(split.graph, x, split.labels, split.train_mask, split.val_mask,
                                         key=jax.random.key(0), n_classes=3, config=attacks.MetaConfig(steps=2))
    target = attacks.Target.fit(split.graph, x, split.labels, split.train_mask, split.val_mask,
                                key=jax.random.key(0), n_classes=3, config=attacks.GCNConfig(epochs=2))
    message = r"graph must be undirected; got edge \d+ -> \d+ without \d+ -> \d+ \(\d+ more such edges\), " \
              r"expected both directions of every edge\. Use graph\.to_undirected\(\)\.$"
    calls = {
        "metattack": lambda: attacks.metattack(problem, directed, 2),
        "meta_gradient": lambda: attacks.meta_gradient(problem, directed),
        "gradient_attack": lambda: attacks.gradient_attack(target, directed, 2),
        "greedy_flips": lambda: attacks.greedy_flips(_untraced, directed, 2),
        "pgd_attack": lambda: attacks.pgd_attack(target, directed, 2, key=jax.random.key(1), n_candidates=4),
        "MetaProblem.create": lambda: attacks.MetaProblem.create(directed, x, split.labels, split.train_mask,
                                                                 split.val_mask, key=jax.random.key(0), n_classes=3),
        "Target.fit": lambda: attacks.Target.fit(directed, x, split.labels, split.train_mask, split.val_mask,
                                                 key=jax.random.key(0), n_classes=3),
    }
    for where, call in calls.items():
        with pytest.raises(ValueError, match=f"^{where}: " + message):
            call()


N = 39  # nodes of the largest component of the fixture's CSBM graph, checked below
BAD_SETUPS = [
    ("labels", lambda s: np.asarray(s.labels)[:, None], ValueError,
     r"labels must have one class index per node; got shape \(39, 1\), expected \(39,\)\.$"),
    ("labels", lambda s: np.eye(3)[np.asarray(s.labels)], TypeError,
     r"labels must be class indices of an integer dtype; got float64, shape \(39, 3\), expected ints of shape "
     r"\(39,\)\. One-hot labels\? Pass labels\.argmax\(-1\)\.$"),
    ("labels", lambda s: np.asarray(s.labels)[:-1], ValueError,
     r"labels must have one class index per node; got shape \(38,\), expected \(39,\)\.$"),
    ("labels", lambda s: np.where(np.arange(N) == 5, 3, np.asarray(s.labels)), ValueError,
     r"labels\[5\]=3 is out of range; expected 0 <= label < n_classes=3\.$"),
    ("train_mask", lambda s: np.asarray(s.train_mask).astype(np.int64), TypeError,
     r"train_mask must be a bool mask; got dtype int64, expected bool of shape \(39,\)\. A 0/1 mask\? "
     r"Pass train_mask\.astype\(bool\)\.$"),
    ("train_mask", lambda s: np.asarray(s.train_mask)[:-1], ValueError,
     r"train_mask must have one entry per node; got shape \(38,\), expected \(39,\)\.$"),
    ("train_mask", lambda s: np.zeros(N, bool), ValueError,
     r"train_mask selects no node; expected at least one of the 39 nodes\.$"),
    ("train_mask", lambda s: np.ones(N, bool), ValueError,
     r"train_mask selects all 39 nodes; expected some unlabelled nodes for the attacker to score\.$"),
    ("val_mask", lambda s: np.zeros(N, bool), ValueError,
     r"val_mask selects no node; expected at least one of the 39 nodes\.$"),
]


@pytest.mark.parametrize("argument, make, error, message", BAD_SETUPS)
def test_attack_setup_names_bad_labels_and_masks(split, argument, make, error, message):
    assert split.n_nodes == N
    x = jnp.asarray(split.features)
    args = {"labels": split.labels, "train_mask": split.train_mask, "val_mask": split.val_mask}
    args[argument] = make(split)
    with pytest.raises(error, match=r"^MetaProblem\.create: " + message):
        attacks.MetaProblem.create(split.graph, x, **args, key=jax.random.key(0), n_classes=3)
    with pytest.raises(error, match=r"^Target\.fit: " + message):
        attacks.Target.fit(split.graph, x, **args, key=jax.random.key(0), n_classes=3)


def test_an_int_train_mask_no_longer_weights_the_attacker_loss_by_its_complement(split):
    # ~mask of an int 0/1 mask is -1 / -2, which the attacker loss used as weights; it is refused now.
    int_mask = np.asarray(split.train_mask).astype(np.int32)
    assert set(np.unique(~int_mask).tolist()) == {-2, -1}
    with pytest.raises(TypeError, match=r"^Target\.fit: train_mask must be a bool mask; got dtype int32"):
        attacks.Target.fit(split.graph, jnp.asarray(split.features), split.labels, int_mask, split.val_mask,
                           key=jax.random.key(0), n_classes=3)


def test_victim_training_refuses_empty_train_and_test_masks(split):
    x, labels = jnp.asarray(split.features), jnp.asarray(split.labels)
    train, val, test = (jnp.asarray(m) for m in (split.train_mask, split.val_mask, split.test_mask))
    none = jnp.zeros(N, bool)
    with pytest.raises(ValueError, match=r"^train_gcn: train_mask selects no node; expected at least one of the "
                                         r"39 nodes\.$"):
        attacks.train_gcn(split.graph, x, labels, none, val, key=jax.random.key(0), n_classes=3)
    with pytest.raises(ValueError, match=r"^victim_accuracy: test_mask selects no node"):  # its accuracy read 0
        attacks.victim_accuracy(split.graph, x, labels, (train, val, none), jax.random.split(jax.random.key(0), 2),
                                n_classes=3, config=attacks.GCNConfig(epochs=2))
    with pytest.raises(ValueError, match=r"^train_gcn: labels must have one class index per node; got shape "
                                         r"\(39, 1\)"):  # shapes are checked under jit too
        jax.jit(lambda l: attacks.train_gcn(split.graph, x, l, train, val, key=jax.random.key(0), n_classes=3))(
            labels[:, None])


@pytest.mark.parametrize("flips, error, message", [
    ([[3, 3]], ValueError, r"flips\[0\]=\(3, 3\) is a self loop \(1 of 1 flips\); expected i != j\.$"),
    ([[0, 1], [2, 39]], ValueError,
     r"flips\[1\]=\(2, 39\) is out of range \(1 of 2 flips\); expected 0 <= node < n_nodes=39\.$"),
    ([[-1, 4]], ValueError, r"flips\[0\]=\(-1, 4\) is out of range"),
    ([[3, 4], [5, 6], [4, 3]], ValueError,
     r"flips\[2\]=\(4, 3\) repeats an earlier pair; expected each unordered pair at most once \(a second flip "
     r"would undo the first\)\.$"),
    ([[0.0, 1.0]], TypeError, r"flips must be int node pairs; got dtype float64, expected an integer dtype\.$"),
    ([0, 1, 2], ValueError, r"flips must have shape \(P, 2\); got \(3,\)\.$"),
])
def test_perturbed_graph_refuses_self_loops_out_of_range_and_repeated_pairs(split, flips, error, message):
    # Before, (3, 3) added a self loop, (2, 39) the edge (3, 0) (its code 2 * 39 + 39 decoded), and a
    # repeated pair undid the first flip, all silently.
    with pytest.raises(error, match=r"^perturbed_graph: " + message):
        attacks.perturbed_graph(split.graph, np.array(flips))


def test_setup_trains_on_a_graph_large_enough_for_a_planned_backend():
    # 32768 edges and more take a planned backend; training with the graph closed over in a scan or jit
    # left the plan holding tracers, and the next eager use of the graph raised UnexpectedTracerError
    # (polblogs, 33428 edges, could not be attacked).
    data = csbm(2000, 3, avg_degree=20.0, feature_dim=4, seed=0)
    assert data.graph.n_edges >= 32768
    x = jnp.asarray(data.features)
    args = (data.graph, x, data.labels, data.train_mask, data.val_mask)
    problem = attacks.MetaProblem.create(*args, key=jax.random.key(0), n_classes=3,
                                         config=attacks.MetaConfig(steps=2))
    target = attacks.Target.fit(*args, key=jax.random.key(0), n_classes=3, config=attacks.GCNConfig(epochs=2))
    assert problem.pseudo_labels.shape == target.pseudo_labels.shape == (2000,)
    assert np.isfinite(float(target.loss(data.graph)))
