"""Training: TrainState, optimizers, pure train/eval steps, early stopping, checkpoints and fit loops.

The model is split into a static `ModelDef` and a pure-dict parameter pytree (`split_model`); optax
updates the parameters; `make_train_step` returns a pure ``train_step(state, batch) -> (state, metrics)``
that the caller jits (with donation) and vmaps (over seeds). `fit` runs full-batch node classification
for several seeds in one compiled loop; `fit_graph_classification` trains on bucketed mini-batches.
"""

from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import Checkpointer as Checkpointer
from ._demo import run_demo as run_demo
from ._experiment import create_model as create_model
from ._experiment import create_optimizer as create_optimizer
from ._experiment import evaluate_checkpoint as evaluate_checkpoint
from ._experiment import load_dataset as load_dataset
from ._experiment import train_and_evaluate as train_and_evaluate
from ._fit import FitResult as FitResult
from ._fit import NonFiniteLossError as NonFiniteLossError
from ._fit import fit as fit
from ._fit import format_table as format_table
from ._graph_classification import GraphBatch as GraphBatch
from ._graph_classification import fit_graph_classification as fit_graph_classification
from ._graph_classification import graph_classification_loss as graph_classification_loss
from ._graph_classification import make_graph_batches as make_graph_batches
from ._model import ModelDef as ModelDef
from ._model import init_params as init_params
from ._model import split_model as split_model
from ._optim import decay_mask as decay_mask
from ._optim import l2_penalty as l2_penalty
from ._optim import make_optimizer as make_optimizer
from ._state import TrainState as TrainState
from ._step import EarlyStopping as EarlyStopping
from ._step import evaluate as evaluate
from ._step import make_epoch_step as make_epoch_step
from ._step import make_train_step as make_train_step
from ._step import masked_cross_entropy as masked_cross_entropy
from ._step import node_classification_loss as node_classification_loss
from ._workdir import WorkdirBusyError as WorkdirBusyError
from ._workdir import lock_workdir as lock_workdir

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "EarlyStopping",
    "FitResult",
    "GraphBatch",
    "ModelDef",
    "NonFiniteLossError",
    "TrainState",
    "WorkdirBusyError",
    "create_model",
    "create_optimizer",
    "decay_mask",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "fit_graph_classification",
    "format_table",
    "graph_classification_loss",
    "init_params",
    "l2_penalty",
    "load_dataset",
    "lock_workdir",
    "make_epoch_step",
    "make_graph_batches",
    "make_optimizer",
    "make_train_step",
    "masked_cross_entropy",
    "node_classification_loss",
    "run_demo",
    "split_model",
    "train_and_evaluate",
]
