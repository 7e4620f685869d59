"""Experiment configuration: YAML files loaded into frozen, typed dataclasses, with ``--set`` overrides.

A config has four sections, each a frozen dataclass, plus a ``name``::

    name: gcn_cora
    data:  {name: cora, root: null}
    model: {name: gcn, hidden: 16, dropout: 0.5}
    optim: {learning_rate: 0.01, weight_decay: 5.0e-4, decay: first_layer}
    train: {epochs: 200, early_stopping: window, patience: 10, seeds: 10}

Every key is optional (defaults below). An unknown key, a value of the wrong type, a number outside
its field's range or a value outside a field's choices raises `ConfigError`, naming the key and listing
the valid keys, values or range.

Files are read with a restricted YAML loader: at most 1 MiB of UTF-8 text, no anchors or aliases
(``&a`` / ``*a``), no duplicate keys, and no nesting deeper than the sections allow. Every error message
names the file and line and shows at most a short prefix of any value, so its length does not grow
with the input.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import tempfile
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def _choice(default: Any, choices: tuple) -> Any:
    return dataclasses.field(default=default, metadata={"choices": choices})


def _range(default: Any, low: float, high: float, *, high_open: bool = False) -> Any:
    """A numeric field whose value must lie in ``[low, high]`` (``[low, high)`` if ``high_open``)."""
    return dataclasses.field(default=default, metadata={"range": (low, high, high_open)})


_MAX_SEED = 2**32 - 1


PLANETOID_FILES_ONLY = ("pubmed",)
"""The dataset names whose files do not ship with jgrad: they are read from Planetoid files
(`jgrad.data.load_planetoid`), so they need ``data.root``, ``--data-dir`` or ``JGRAD_DATA``."""
_PLANETOID = ("cora", "citeseer", "pubmed")  # the names `jgrad.data.load_planetoid` reads from a folder
_GENERATED = ("karate", "csbm")  # built in code; data.root is not read


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset: one that ships with jgrad (`jgrad.data.DATASETS`), ``"csbm"``, or a Planetoid name
    read from ``root`` (else ``--data-dir``, else the ``JGRAD_DATA`` folder; needed only for ``pubmed``,
    whose files do not ship: see `check_data_source`).

    ``seed`` draws the random split of the graphs without a standard one (``cora_npz``, ``citeseer_npz``,
    ``cora_ml``, ``polblogs``) and the ``csbm`` graph; the ``csbm`` fields parametrise `jgrad.data.csbm`
    and are ignored by the other datasets.
    """

    name: str = _choice("karate", ("karate", "cora", "citeseer", "cora_npz", "citeseer_npz", "cora_ml",
                                   "polblogs", "pubmed", "csbm"))
    root: str | None = None
    n_nodes: int = _range(1000, 1, 10_000_000)
    n_classes: int = _range(3, 1, 1000)
    avg_degree: float = _range(10.0, 0, 10_000)
    homophily: float = _range(0.8, 0, 1)
    feature_dim: int = _range(16, 1, 100_000)
    signal: float = _range(1.0, -1e6, 1e6)
    seed: int = _range(0, 0, _MAX_SEED)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model (`jgrad.nn`) and its sizes; ``hidden`` is per head for GAT."""

    name: str = _choice("gcn", ("gcn", "gat", "sage", "gin"))
    hidden: int = _range(16, 1, 65_536)
    n_layers: int = _range(2, 1, 64)
    dropout: float = _range(0.5, 0, 1, high_open=True)
    heads: int = _range(8, 1, 256)
    out_heads: int = _range(1, 1, 256)
    aggregator: str = _choice("mean", ("mean", "max", "sum"))  # GraphSAGE's
    use_bias: bool = True


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam with L2 weight decay on the weights ``decay`` selects (see `jgrad.train.decay_mask`)."""

    learning_rate: float = _range(0.01, 0, 1e6)
    weight_decay: float = _range(5e-4, 0, 1e6)
    decay: str = "first_layer"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop: epochs, early stopping, seeds ``seed .. seed + seeds - 1``, logging cadence."""

    epochs: int = _range(200, 1, 10_000_000)
    early_stopping: str = _choice("window", ("window", "patience", "none"))
    patience: int = _range(10, 1, 10_000_000)
    seeds: int = _range(1, 1, 4096)
    seed: int = _range(0, 0, _MAX_SEED)
    log_every: int = _range(10, 1, 10_000_000)
    checkpoint_every: int = _range(50, 1, 10_000_000)
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


_MAX_FILE_BYTES = 1 << 20  # a config is a few hundred bytes; this bounds the cost of a hostile one
_MAX_PROBLEMS = 10  # problems listed in one error; the rest are counted
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 2, 4, 4, 4, 4


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, at a cost that does not grow with ``value``."""
    try:
        text = _SHORT.repr(value)
    except (ValueError, RecursionError):  # e.g. an int beyond Python's 4300-digit str limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_key(key: Any) -> str:
    text = key if isinstance(key, str) else short_repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def config_from_dict(values: Mapping[str, Any] | None, cls: type = Config, prefix: str = "") -> Any:
    """Builds ``cls`` from a nested mapping, checking every key, type and range.

    Ints are accepted where floats are expected; nothing else is converted.

    Raises:
      ConfigError: naming every unknown key (with the valid ones) and every mistyped or out-of-range
        value, one per line (at most ten, then how many more).
    """
    if cls is Config and isinstance(values, Mapping) and "attack" in values:  # not a list of seven unknown keys
        raise ConfigError("config: has an 'attack' section: it is a structure-attack experiment config, not a "
                          "training config; run it with python experiments/structure_attack.py --config <this file>.")
    problems: list[str] = []
    config = _build(values, cls, prefix, problems)
    if not problems and cls is Config:
        last_seed = config.train.seed + config.train.seeds - 1
        if last_seed > _MAX_SEED:
            problems.append(f"config: train.seed + train.seeds - 1 must be <= {_MAX_SEED}; got "
                            f"{config.train.seed} + {config.train.seeds} - 1 = {last_seed}.")
        if config.train.checkpoint_every % config.train.log_every:
            problems.append(f"config: train.checkpoint_every must be a multiple of train.log_every (the epochs "
                            f"run in chunks of log_every); got {config.train.checkpoint_every} and "
                            f"{config.train.log_every}.")
    if problems:
        extra = len(problems) - _MAX_PROBLEMS
        listed = problems[:_MAX_PROBLEMS] + ([f"config: ... and {extra} more problems."] if extra > 0 else [])
        raise ConfigError("\n".join(listed))
    return config


def _build(values: Any, cls: type, prefix: str, problems: list[str]) -> Any:
    values = {} if values is None else values
    where = prefix.rstrip(".") or "config"
    if not isinstance(values, Mapping):
        problems.append(f"config: {where} must be a mapping of keys to values; got {short_repr(values)} "
                        f"({type(values).__name__}).")
        return None
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            problems.append(f"config: unknown key '{prefix}{_short_key(key)}'; valid keys in {where}: "
                            f"{', '.join(fields)}.")
            continue
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(value, kind, f"{prefix}{key}.", problems)
            continue
        try:
            kwargs[key] = _check_value(f"{prefix}{key}", value, kind, fields[key].metadata)
        except ConfigError as error:
            problems.append(str(error))
    return None if problems else cls(**kwargs)


def _check_value(name: str, value: Any, kind: Any, metadata: Mapping[str, Any]) -> Any:
    allowed = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, _union_type()) else (kind,)
    if value is None and type(None) in allowed:
        return None
    bounds = metadata.get("range")
    for target in allowed:
        if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an int too large for a float
                value = math.copysign(math.inf, value)
            break
        if target is float and isinstance(value, str) and _is_float_text(value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
            break
        if target in (int, str, bool) and type(value) is target:
            break
    else:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        rule = f", expected a value in {_range_text(bounds)}" if bounds is not None else ""
        raise ConfigError(f"config: {name} must be {names}; got {short_repr(value)} ({type(value).__name__}){rule}.")
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config: {name} must be one of {', '.join(map(str, choices))}; got {short_repr(value)}.")
    if bounds is not None and isinstance(value, (int, float)) and not _in_range(value, bounds):
        raise ConfigError(f"config: {name} is out of range; got {short_repr(value)}, expected a value "
                          f"in {_range_text(bounds)}.")
    return value


def _in_range(value: float, bounds: tuple) -> bool:
    low, high, high_open = bounds
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return low <= value < high if high_open else low <= value <= high


def _range_text(bounds: tuple) -> str:
    low, high, high_open = bounds
    number = lambda x: str(int(x)) if float(x).is_integer() else repr(x)
    return f"[{number(low)}, {number(high)}{')' if high_open else ']'}"


def _is_float_text(text: str) -> bool:
    if len(text) > 100:
        return False
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


def config_differences(first: Any, second: Any, *, ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """The keys whose values differ between two configs (or nested dicts), as dotted paths.

    Returns:
      ``[(path, value_in_first, value_in_second), ...]`` in field order; a key missing on one side
      shows as None there. Paths in ``ignore`` are skipped.
    """
    ignored = set(ignore)
    out: list[tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b and prefix[:-1] not in ignored:
            out.append((prefix[:-1], a, b))

    as_dict = lambda c: config_to_dict(c) if dataclasses.is_dataclass(c) else c
    walk(as_dict(first), as_dict(second), "")
    return out


def format_differences(differences: Sequence[tuple[str, Any, Any]], first: str, second: str, most: int = 8) -> str:
    """``'model.hidden (8 <first>, 16 <second>), ...'``: values cut short, at most ``most`` keys, then a count."""
    listed = [f"{path} ({short_repr(a, 30)} {first}, {short_repr(b, 30)} {second})"
              for path, a, b in differences[:most]]
    if len(differences) > most:
        listed.append(f"and {len(differences) - most} more")
    return ", ".join(listed)


def apply_overrides(values: dict[str, Any], overrides: Iterable[str], cls: type = Config) -> dict[str, Any]:
    """Applies ``a.b=c`` overrides to a nested dict of config values.

    The value is parsed as YAML (``0.01`` and ``1e-3`` are floats, ``true`` a bool, ``null`` None),
    except for string fields, which take the text as is. Types and ranges are checked when the config
    is built.

    Raises:
      ConfigError: for a malformed override or an unknown key (listing the valid ones).
    """
    values = dict(values)
    for override in overrides:
        path, sep, text = override.partition("=")
        if not sep or not path:
            raise ConfigError(f"config: override must look like section.key=value; got {short_repr(override)}.")
        keys = path.strip().split(".")
        node, kind = values, cls
        for depth, key in enumerate(keys):
            fields = {field.name: field for field in dataclasses.fields(kind)}
            where = ".".join(keys[:depth]) or "config"
            if key not in fields:
                raise ConfigError(f"config: unknown key '{_short_key('.'.join(keys[:depth + 1]))}'; valid keys "
                                  f"in {where}: {', '.join(fields)}.")
            hint = typing.get_type_hints(kind)[key]
            if depth < len(keys) - 1:
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"config: '{'.'.join(keys[:depth + 1])}' is a value, not a section; "
                                      f"got override {short_repr(override)}.")
                child = node.get(key)
                node[key] = dict(child) if isinstance(child, Mapping) else {}
                node, kind = node[key], hint
            else:
                if dataclasses.is_dataclass(hint):
                    raise ConfigError(f"config: '{path}' is a section; set one of its keys, e.g. "
                                      f"{path}.{dataclasses.fields(hint)[0].name}=...")
                node[key] = _parse(text, hint, path)
    return values


def _parse(text: str, hint: Any, key: str) -> Any:
    if hint is str:
        return text
    if hint is float and len(text) <= 100:
        try:
            return float(text)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    try:
        return parse_yaml(text, max_depth=2)
    except ConfigError as error:
        raise ConfigError(f"config: --set {key}: {error}") from None


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses anchors, aliases, duplicate keys and nesting beyond ``max_depth``."""

    def __init__(self, stream: str, max_depth: int):
        super().__init__(stream)
        self.max_depth, self.depth = max_depth, 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"line {line}: YAML anchors and aliases (&name, *name) are not supported; "
                              "write each value out.")
        if self.depth >= self.max_depth:
            raise ConfigError(f"line {line}: nested too deeply; got more than {self.max_depth} levels, "
                              "expected sections of `key: value` pairs.")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"line {line}: duplicate key {_short_key(key)!r} (first set on line "
                                      f"{seen[key]}); keep one.")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, *, max_depth: int) -> Any:
    """Parses YAML text with the restricted loader (no anchors, aliases or duplicate keys).

    Args:
      text: the YAML document.
      max_depth: the most nested levels allowed, counting the top-level node as 1.

    Raises:
      ConfigError: naming the line of the first problem, with any quoted value cut short.
    """
    loader = _Loader(text, max_depth)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(error.problem or error.context or "invalid YAML").split())
        raise ConfigError(f"{where}not valid YAML: {_cut(problem)}.") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {_cut(' '.join(str(error).split()))}.") from None
    except (ValueError, OverflowError) as error:  # e.g. an int of more than 4300 digits
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"a value cannot be read: {_cut(' '.join(str(error).split()))}.") from None
    finally:
        loader.dispose()


def _cut(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_depth(cls: type) -> int:
    hints = typing.get_type_hints(cls)
    return 1 + max((_schema_depth(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else 1)
                   for f in dataclasses.fields(cls))


def _example_configs() -> Path | None:
    """The ``configs/`` folder of the source checkout jgrad is imported from (an editable install), if any:
    the example configs are in the repository, not in the installed package."""
    folder = Path(__file__).resolve().parents[2] / "configs"
    return folder if folder.is_dir() and any(folder.glob("*.yaml")) else None


def _where_configs_are(path: Path) -> str:
    """The end of the message for a missing config file: where the example configs are."""
    place = f" (relative to {Path.cwd()})" if not path.is_absolute() else ""
    folder = _example_configs()
    if folder is not None and (folder / path.name).is_file():
        return f"{place}; the example config of that name is {folder / path.name}: pass that path."
    if folder is not None:
        names = sorted(p.name for p in folder.glob("*.yaml"))
        listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return (f"{place}; the example configs are in {folder} ({listed}), and docs/training.md (\"Configs\") "
                "lists every key.")
    return (f"{place}; the example configs (gcn_cora.yaml, gat_cora.yaml, ...) are in the configs/ folder of the "
            "jgrad source repository, not installed with the package: copy one, or write a YAML file with the "
            "sections data, model, optim and train, every key optional (docs/training.md, \"Configs\").")


def read_yaml(path: str | os.PathLike, cls: type = Config) -> dict[str, Any]:
    """Reads a YAML config file into a dict with the restricted loader (see `parse_yaml`).

    The file must be UTF-8 text of at most 1 MiB whose top level is a mapping; nesting may go one level
    deeper than ``cls``'s sections, so that a list where a number belongs is reported by its key.

    Raises:
      FileNotFoundError: ``path`` is not a file; the message says where the example configs are (the
        ``configs/`` folder of the source repository; not installed with the package).
      ConfigError: the file cannot be read or parsed; the message names the file (and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no config file at {path}{_where_configs_are(path)}")
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"config: {path}: cannot be read ({error.strerror or type(error).__name__}).") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(f"config: {path} is too large; got more than {_MAX_FILE_BYTES} bytes, expected a "
                          "small YAML file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"config: {path} is not UTF-8 text; got byte 0x{data[error.start]:02x} on line {line} "
                          f"(byte {error.start}), expected a UTF-8 YAML file.") from None
    try:
        values = parse_yaml(text, max_depth=_schema_depth(cls) + 1)
    except ConfigError as error:
        raise ConfigError(f"config: {path}: {error}") from None
    except (MemoryError, RecursionError) as error:
        raise ConfigError(f"config: {path} cannot be loaded ({type(error).__name__}).") from None
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"config: {path} must hold a mapping of sections; got {type(values).__name__}.")
    return dict(values)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Reads a YAML config (or the defaults if ``path`` is None) and applies ``a.b=c`` overrides.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ConfigError: for an unreadable or invalid file (see `read_yaml`), unknown keys, mistyped or
        out-of-range values; a problem in the file's values names the file, one that an override
        brings in names the override (``override model.hidden=abc: ...``).
    """
    overrides = list(overrides)
    if path is None:
        return config_from_dict(apply_overrides({}, overrides))
    values = merged = read_yaml(path)
    for override in overrides:  # one at a time, so that an error names the override, not the file
        try:
            merged = apply_overrides(merged, [override])
        except ConfigError as error:
            text = str(error)
            named = "--set" in text or "override must" in text  # the message quotes the override already
            raise ConfigError(text if named else _blame(text, f"override {_cut(override, 60)}")) from None
    try:
        return config_from_dict(merged)
    except ConfigError as error:
        problems = str(error).split("\n")
    # A problem the file alone also has is the file's; any other comes from an override.
    in_file = set() if not overrides else _problems(values)
    keys = {override.partition("=")[0].strip(): override for override in overrides}
    blamed = []
    for line in problems:
        key = next((k for k in keys if line.startswith(f"config: {k} ")), None)
        if line in in_file or not overrides or line.startswith("config: ... and"):
            blamed.append(_blame(line, str(path)))
        elif key is not None:
            blamed.append(_blame(line, f"override {_cut(keys[key], 60)}"))
        else:
            blamed.append(_blame(line, f"{path} with the overrides"))
    raise ConfigError("\n".join(blamed))


def _blame(line: str, source: str) -> str:
    """``"config: <problem>"`` as ``"config: <source>: <problem>"``."""
    return line.replace("config: ", f"config: {source}: ", 1)


def _problems(values: Mapping[str, Any]) -> set[str]:
    """The problem lines of the config ``values`` describe (empty if it is valid)."""
    try:
        config_from_dict(values)
    except ConfigError as error:
        return set(str(error).split("\n"))
    return set()


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Writes the resolved config as YAML, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        yaml.safe_dump(config_to_dict(config), file, sort_keys=False)
    os.replace(tmp, path)


def check_data_source(data: DataConfig, data_dir: str | os.PathLike | None = None) -> None:
    """Raises if the dataset ``data`` names cannot be read, before anything is written.

    A name that ships with jgrad needs no files; with ``data_dir`` (``--data-dir``) or ``data.root`` the
    Planetoid files of ``cora``, ``citeseer`` or ``pubmed`` are read from that folder (or its ``planetoid``
    subfolder), and ``pubmed``, which does not ship, needs one of them or the ``JGRAD_DATA`` variable.

    Raises:
      ConfigError: ``pubmed`` without a folder, or a folder given for a dataset that is not a Planetoid one.
      FileNotFoundError: the folder or one of its eight files is missing (`load_planetoid`'s message).
    """
    if data.name in _GENERATED:
        return
    if data_dir is not None:
        origin, root = "--data-dir", data_dir
    elif data.root is not None:
        origin, root = "data.root", data.root
    elif data.name in PLANETOID_FILES_ONLY and os.environ.get("JGRAD_DATA"):
        origin, root = "JGRAD_DATA", os.environ["JGRAD_DATA"]
    elif data.name in PLANETOID_FILES_ONLY:
        raise ConfigError(f"config: data.name={data.name} is read from the Planetoid files, which do not ship with "
                          f"jgrad; set data.root (or pass --data-dir, or set JGRAD_DATA) to a folder holding "
                          f"ind.{data.name}.x and the other ind.{data.name}.* files.")
    else:
        return  # a dataset that ships with jgrad
    if data.name not in _PLANETOID:
        raise ConfigError(f"config: {origin} is read only for the Planetoid names {', '.join(_PLANETOID)}; got "
                          f"data.name={data.name}, which ships with jgrad: leave {origin} unset.")
    from .data._planetoid import check_planetoid_folder  # imports jax: only once a folder is to be read

    check_planetoid_folder(data.name, None if origin == "JGRAD_DATA" else root)  # load_planetoid's errors
