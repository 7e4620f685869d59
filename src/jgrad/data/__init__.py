"""Datasets by name (`load`, shipped with the package, pickle-free), synthetic graphs, and loaders.

``jgrad.data.load("cora")`` needs no files, settings or downloads; `DATASETS` lists every name.
`load_planetoid` reads other Planetoid-format folders (``root=`` or the ``JGRAD_DATA`` variable).
"""

from ._dataset import NodeDataset as NodeDataset
from ._karate import karate_club as karate_club
from ._preprocess import largest_component as largest_component
from ._preprocess import random_split_masks as random_split_masks
from ._registry import DATASETS as DATASETS
from ._registry import load as load
from ._planetoid import PLANETOID_NAMES as PLANETOID_NAMES
from ._planetoid import load_planetoid as load_planetoid
from ._safe_pickle import ForbiddenGlobalError as ForbiddenGlobalError
from ._safe_pickle import PickleLimitError as PickleLimitError
from ._safe_pickle import PickleLimits as PickleLimits
from ._synthetic import csbm as csbm
from ._synthetic import power_law_graph as power_law_graph

__all__ = [
    "DATASETS",
    "PLANETOID_NAMES",
    "ForbiddenGlobalError",
    "NodeDataset",
    "PickleLimitError",
    "PickleLimits",
    "csbm",
    "karate_club",
    "largest_component",
    "load",
    "load_planetoid",
    "power_law_graph",
    "random_split_masks",
]
