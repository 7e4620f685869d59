"""Experiment configuration: YAML files loaded into frozen, typed dataclasses, with ``--set`` overrides.

A config has four sections, each a frozen dataclass, plus a ``name``::

    name: gcn_cora
    data:  {name: cora, root: null}
    model: {name: gcn, hidden: 16, dropout: 0.5}
    optim: {learning_rate: 0.01, weight_decay: 5.0e-4, decay: first_layer}
    train: {epochs: 200, early_stopping: window, patience: 10, seeds: 10}

Every key is optional (defaults below). An unknown key, a value of the wrong type or a value outside
a field's choices raises `ConfigError`, naming the key and listing the valid keys or values.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def _choice(default: Any, choices: tuple) -> Any:
    return dataclasses.field(default=default, metadata={"choices": choices})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset. ``root`` is the Planetoid folder (else ``--data-dir``, else ``JGRAD_DATA``).

    The ``csbm`` fields parametrise `jgrad.data.csbm` and are ignored by the other datasets.
    """

    name: str = _choice("karate", ("karate", "cora", "citeseer", "pubmed", "csbm"))
    root: str | None = None
    n_nodes: int = 1000
    n_classes: int = 3
    avg_degree: float = 10.0
    homophily: float = 0.8
    feature_dim: int = 16
    signal: float = 1.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model (`jgrad.nn`) and its sizes; ``hidden`` is per head for GAT."""

    name: str = _choice("gcn", ("gcn", "gat", "sage", "gin"))
    hidden: int = 16
    n_layers: int = 2
    dropout: float = 0.5
    heads: int = 8
    out_heads: int = 1
    aggregator: str = "mean"
    use_bias: bool = True


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam with L2 weight decay on the weights ``decay`` selects (see `jgrad.train.decay_mask`)."""

    learning_rate: float = 0.01
    weight_decay: float = 5e-4
    decay: str = "first_layer"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop: epochs, early stopping, seeds ``seed .. seed + seeds - 1``, logging cadence."""

    epochs: int = 200
    early_stopping: str = _choice("window", ("window", "patience", "none"))
    patience: int = 10
    seeds: int = 1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    progress: bool = True
    monitor_penalty: bool = False  # early-stop on val loss + L2 penalty, as the GCN reference code does


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment."""

    name: str = "experiment"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()


def config_from_dict(values: Mapping[str, Any] | None, cls: type = Config, prefix: str = "") -> Any:
    """Builds ``cls`` from a nested mapping, checking every key and type.

    Ints are accepted where floats are expected; nothing else is converted.

    Raises:
      ConfigError: naming every unknown key (with the valid ones) and every mistyped value.
    """
    values = {} if values is None else values
    where = prefix.rstrip(".") or "config"
    if not isinstance(values, Mapping):
        raise ConfigError(f"config: {where} must be a mapping of keys to values; got {values!r}.")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems, kwargs = [], {}
    for key, value in values.items():
        if key not in fields:
            problems.append(f"config: unknown key '{prefix}{key}'; valid keys in {where}: {', '.join(fields)}.")
            continue
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            try:
                kwargs[key] = config_from_dict(value, kind, f"{prefix}{key}.")
            except ConfigError as error:
                problems.append(str(error))
            continue
        try:
            kwargs[key] = _check_value(f"{prefix}{key}", value, kind, fields[key].metadata.get("choices"))
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("\n".join(problems))
    return cls(**kwargs)


def _check_value(name: str, value: Any, kind: Any, choices: tuple | None) -> Any:
    allowed = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, _union_type()) else (kind,)
    if value is None and type(None) in allowed:
        return None
    for target in allowed:
        if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            break
        if target is float and isinstance(value, str) and _is_float_text(value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
            break
        if target in (int, str, bool) and type(value) is target:
            break
    else:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise ConfigError(f"config: {name} must be {names}; got {value!r} ({type(value).__name__}).")
    if choices is not None and value not in choices:
        raise ConfigError(f"config: {name} must be one of {', '.join(map(str, choices))}; got {value!r}.")
    return value


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def _union_type() -> Any:
    import types

    return types.UnionType


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a nested dict of plain values (the inverse of `config_from_dict`)."""
    return dataclasses.asdict(config)


def apply_overrides(values: dict[str, Any], overrides: Iterable[str], cls: type = Config) -> dict[str, Any]:
    """Applies ``a.b=c`` overrides to a nested dict of config values.

    The value is parsed as YAML (``0.01`` and ``1e-3`` are floats, ``true`` a bool, ``null`` None),
    except for string fields, which take the text as is. Types are checked when the config is built.

    Raises:
      ConfigError: for a malformed override or an unknown key (listing the valid ones).
    """
    values = dict(values)
    for override in overrides:
        path, sep, text = override.partition("=")
        if not sep or not path:
            raise ConfigError(f"config: override must look like section.key=value; got {override!r}.")
        keys = path.strip().split(".")
        node, kind = values, cls
        for depth, key in enumerate(keys):
            fields = {field.name: field for field in dataclasses.fields(kind)}
            where = ".".join(keys[:depth]) or "config"
            if key not in fields:
                raise ConfigError(f"config: unknown key '{'.'.join(keys[:depth + 1])}'; valid keys in "
                                  f"{where}: {', '.join(fields)}.")
            hint = typing.get_type_hints(kind)[key]
            if depth < len(keys) - 1:
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"config: '{'.'.join(keys[:depth + 1])}' is a value, not a section; "
                                      f"got override {override!r}.")
                child = node.get(key)
                node[key] = dict(child) if isinstance(child, Mapping) else {}
                node, kind = node[key], hint
            else:
                if dataclasses.is_dataclass(hint):
                    raise ConfigError(f"config: '{path}' is a section; set one of its keys, e.g. "
                                      f"{path}.{dataclasses.fields(hint)[0].name}=...")
                node[key] = _parse(text, hint)
    return values


def _parse(text: str, hint: Any) -> Any:
    if hint is str:
        return text
    if hint is float:
        try:
            return float(text)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Reads a YAML config (or the defaults if ``path`` is None) and applies ``a.b=c`` overrides.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ConfigError: for invalid YAML, unknown keys or mistyped values.
    """
    values: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config: no config file at {path}.")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config: {path} is not valid YAML: {error}") from None
        if not isinstance(values, Mapping):
            raise ConfigError(f"config: {path} must hold a mapping of sections; got {type(values).__name__}.")
    return config_from_dict(apply_overrides(dict(values), overrides))


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Writes the resolved config as YAML, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        yaml.safe_dump(config_to_dict(config), file, sort_keys=False)
    os.replace(tmp, path)
