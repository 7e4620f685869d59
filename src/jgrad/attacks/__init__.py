"""Gradient-based structure attacks on node classifiers, with all-pairs gradients kept factored.

- `greedy_flips`, `FlipSet`, `flip_scores`: flip the best-scoring pairs of ``dL/dA * (1 - 2A)``
  (adding a non-edge or removing an edge), re-scored each step, never as an N x N array.
- `gradient_attack`: greedy flips by the gradient of a fixed, clean-trained surrogate.
- `metattack`, `meta_gradient`, `MetaProblem`: Metattack's Meta-Self attack; the gradient of the
  attacker loss through T steps of surrogate training (`jax.lax.scan`, second-order reverse mode);
  `surrogate_logits` and `MetaProblem.surrogate_fit` show what that training run reaches.
- `pgd_attack`: projected gradient descent on a relaxed perturbation of candidate pairs (Xu et al., 2019).
- `train_gcn`, `victim_accuracy`: the victim GCN, retrained on the perturbed graph (poisoning).
- `largest_component`, `random_split`, `perturbed_graph`: the evaluation setting.
"""

from ._data import graph_from_pairs as graph_from_pairs
from ._data import largest_component as largest_component
from ._data import random_split as random_split
from ._data import undirected_pairs as undirected_pairs
from ._evasion import PGDResult as PGDResult
from ._evasion import Target as Target
from ._evasion import gradient_attack as gradient_attack
from ._evasion import pgd_attack as pgd_attack
from ._evasion import project_budget as project_budget
from ._features import SparseFeatures as SparseFeatures
from ._features import features_matmul as features_matmul
from ._features import features_rmatmul as features_rmatmul
from ._flips import FlipScores as FlipScores
from ._flips import FlipSet as FlipSet
from ._flips import GreedyResult as GreedyResult
from ._flips import choose_flips as choose_flips
from ._flips import flip_scores as flip_scores
from ._flips import greedy_flips as greedy_flips
from ._flips import perturbed_graph as perturbed_graph
from ._flips import step_key as step_key
from ._meta import MetaConfig as MetaConfig
from ._meta import MetaProblem as MetaProblem
from ._meta import SurrogateFit as SurrogateFit
from ._meta import inner_train as inner_train
from ._meta import meta_gradient as meta_gradient
from ._meta import meta_self_loss as meta_self_loss
from ._meta import metattack as metattack
from ._meta import self_training_labels as self_training_labels
from ._meta import surrogate_logits as surrogate_logits
from ._models import SURROGATE as SURROGATE
from ._models import VICTIM as VICTIM
from ._models import GCNConfig as GCNConfig
from ._models import gcn_logits as gcn_logits
from ._models import init_gcn as init_gcn
from ._models import masked_accuracy as masked_accuracy
from ._models import masked_cross_entropy as masked_cross_entropy
from ._models import train_gcn as train_gcn
from ._models import victim_accuracy as victim_accuracy

__all__ = [
    "SURROGATE",
    "VICTIM",
    "FlipScores",
    "FlipSet",
    "GCNConfig",
    "GreedyResult",
    "MetaConfig",
    "MetaProblem",
    "PGDResult",
    "SparseFeatures",
    "SurrogateFit",
    "Target",
    "choose_flips",
    "features_matmul",
    "features_rmatmul",
    "flip_scores",
    "gcn_logits",
    "gradient_attack",
    "graph_from_pairs",
    "greedy_flips",
    "init_gcn",
    "inner_train",
    "largest_component",
    "masked_accuracy",
    "masked_cross_entropy",
    "meta_gradient",
    "meta_self_loss",
    "metattack",
    "perturbed_graph",
    "pgd_attack",
    "project_budget",
    "random_split",
    "self_training_labels",
    "step_key",
    "surrogate_logits",
    "train_gcn",
    "undirected_pairs",
    "victim_accuracy",
]
