"""Datasets: Zachary's karate club, synthetic graphs, and the Planetoid citation graphs (path from JGRAD_DATA)."""

from ._dataset import NodeDataset as NodeDataset
from ._karate import karate_club as karate_club
from ._planetoid import PLANETOID_NAMES as PLANETOID_NAMES
from ._planetoid import load_planetoid as load_planetoid
from ._safe_pickle import ForbiddenGlobalError as ForbiddenGlobalError
from ._synthetic import csbm as csbm
from ._synthetic import power_law_graph as power_law_graph

__all__ = [
    "PLANETOID_NAMES",
    "ForbiddenGlobalError",
    "NodeDataset",
    "csbm",
    "karate_club",
    "load_planetoid",
    "power_law_graph",
]
