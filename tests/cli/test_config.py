"""YAML configs: typed loading, errors that name the key, --set overrides, the saved resolved config."""

import dataclasses
import re
from pathlib import Path

import pytest

from jgrad.config import Config, ConfigError, config_from_dict, load_config, save_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = [CONFIG_DIR / f"{name}.yaml" for name in
           ("gcn_cora", "gcn_citeseer", "gat_cora", "sage_cora", "gin_csbm", "gcn_karate_tiny", "gcn_cora_tiny")]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.name == path.stem


def test_paper_hyper_parameters_are_in_the_configs():
    gcn = load_config(CONFIG_DIR / "gcn_cora.yaml")
    assert (gcn.model.hidden, gcn.model.dropout, gcn.optim.learning_rate, gcn.optim.weight_decay) == (16, 0.5, 0.01, 5e-4)
    assert (gcn.optim.decay, gcn.train.epochs, gcn.train.early_stopping, gcn.train.patience) == ("first_layer", 200, "window", 10)
    gat = load_config(CONFIG_DIR / "gat_cora.yaml")
    assert (gat.model.heads, gat.model.hidden, gat.model.out_heads, gat.model.dropout) == (8, 8, 1, 0.6)
    assert (gat.optim.learning_rate, gat.optim.decay, gat.train.patience, gat.train.epochs) == (0.005, "all", 100, 1000)


def test_unknown_key_is_named_with_the_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hiden: 16\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model\.hiden'; valid keys in model: name, hidden, n_layers"):
        load_config(path)


def test_unknown_section_is_named_with_the_valid_sections():
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; valid keys in config: name, data, model, optim, train"):
        config_from_dict({"trian": {}})


def test_a_structure_attack_config_is_named_as_such():
    """It gave seven 'unknown key' problems; it is one line saying which script reads it."""
    with pytest.raises(ConfigError, match=r"^config: .*structure_attack.yaml: has an 'attack' section: it is a structure-attack experiment "
                       r"config, not a training config; run it with python experiments/structure_attack.py"):
        load_config(CONFIG_DIR / "structure_attack.yaml")


def test_mistyped_value_names_the_key_and_type():
    with pytest.raises(ConfigError, match=r"config: model\.hidden must be int; got '16' \(str\), expected a value in \[1, 65536\]\."):
        config_from_dict({"model": {"hidden": "16"}})
    with pytest.raises(ConfigError, match=r"config: train\.progress must be bool; got 1 \(int\)"):
        config_from_dict({"train": {"progress": 1}})


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        config_from_dict({"model": {"hiden": 1, "dropout": "x"}, "trian": {}})
    assert str(error.value).count("\n") == 2


def test_value_outside_its_choices_lists_them():
    with pytest.raises(ConfigError, match=r"model\.name must be one of gcn, gat, sage, gin; got 'mlp'"):
        config_from_dict({"model": {"name": "mlp"}})


def test_checkpoint_every_must_be_a_multiple_of_log_every():
    # Checked when the config loads, so `jgrad train` stops before it writes the workdir (fit checked it
    # only after config.yaml was saved there).
    with pytest.raises(ConfigError, match=r"^config: train\.checkpoint_every must be a multiple of train\.log_every "
                                          r"\(the epochs run in chunks of log_every\); got 30 and 20\.$"):
        config_from_dict({"train": {"log_every": 20, "checkpoint_every": 30}})
    assert config_from_dict({"train": {"log_every": 20, "checkpoint_every": 40}}).train.checkpoint_every == 40


def test_sage_aggregator_is_one_of_its_choices():
    with pytest.raises(ConfigError, match=r"^config: model\.aggregator must be one of mean, max, sum; got 'median'\.$"):
        config_from_dict({"model": {"name": "sage", "aggregator": "median"}})
    assert config_from_dict({"model": {"aggregator": "max"}}).model.aggregator == "max"


def test_train_stops_on_a_checkpoint_every_that_log_every_does_not_divide_before_writing(tmp_path, capsys):
    from jgrad.cli import main

    workdir = tmp_path / "run"
    assert main(["train", str(CONFIG_DIR / "gat_cora.yaml"), "--set", "train.checkpoint_every=30",
                 "--workdir", str(workdir)]) == 2
    captured = capsys.readouterr()
    assert "train.checkpoint_every must be a multiple of train.log_every" in captured.err
    assert captured.out == "" and not workdir.exists()


def test_set_overrides_convert_types():
    config = load_config(None, ["model.hidden=64", "optim.learning_rate=1e-3", "train.progress=false",
                                "data.root=/data/planetoid", "name=run1", "optim.weight_decay=0"])
    assert config.model.hidden == 64
    assert config.optim.learning_rate == 0.001
    assert config.optim.weight_decay == 0.0 and isinstance(config.optim.weight_decay, float)
    assert config.train.progress is False
    assert config.data.root == "/data/planetoid"
    assert config.name == "run1"
    assert load_config(None, ["data.root=null"]).data.root is None


def test_set_overrides_beat_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 8\n  dropout: 0.1\n")
    config = load_config(path, ["model.hidden=32"])
    assert (config.model.hidden, config.model.dropout) == (32, 0.1)


def test_set_with_unknown_key_or_bad_value_fails():
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lr'; valid keys in optim: learning_rate, weight_decay"):
        load_config(None, ["optim.lr=0.1"])
    with pytest.raises(ConfigError, match=r"model\.hidden must be int; got 'big'"):
        load_config(None, ["model.hidden=big"])
    with pytest.raises(ConfigError, match=r"override must look like section\.key=value; got 'model\.hidden'"):
        load_config(None, ["model.hidden"])


def test_a_problem_an_override_brings_in_names_the_override_not_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: 8\ntrain:\n  seeds: 0\n")
    with pytest.raises(ConfigError, match=r"^config: override model\.hiden=3: unknown key 'model\.hiden'; valid keys "
                                          r"in model: name, hidden"):
        load_config(path, ["model.hiden=3"])
    with pytest.raises(ConfigError) as error:  # the file's own problem stays the file's
        load_config(path, ["model.hidden=abc"])
    assert str(error.value).split("\n") == [
        "config: override model.hidden=abc: model.hidden must be int; got 'abc' (str), expected a value in [1, 65536].",
        f"config: {path}: train.seeds is out of range; got 0, expected a value in [1, 4096]."]
    with pytest.raises(ConfigError, match=r"^config: override train\.seeds=5000: train\.seeds is out of range; got 5000"):
        load_config(path, ["train.seeds=5000"])
    with pytest.raises(ConfigError, match=rf"^config: {re.escape(str(path))} with the overrides: train\.checkpoint_every "
                                          r"must be a multiple of train\.log_every"):
        load_config(path, ["train.seeds=1", "train.log_every=7"])
    assert load_config(path, ["train.seeds=2"]).train.seeds == 2  # an override may correct the file


def test_saved_config_loads_back_to_the_same_value(tmp_path):
    config = load_config(None, ["model.name=gat", "train.seeds=3"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert isinstance(config, Config)


def test_exponent_floats_written_in_a_config_file_load_as_floats(tmp_path):
    from jgrad.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 1e-3\n")
    assert load_config(path, []).optim.learning_rate == 1e-3
    path.write_text("optim:\n  learning_rate: fast\n")
    with pytest.raises(ConfigError, match=r"learning_rate must be float; got 'fast' \(str\), expected a value in \[0, 1000000\]"):
        load_config(path, [])


# Hostile files and overrides: each fails fast with one bounded message naming the file, key or line.
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi"))


def test_billion_laughs_is_refused_at_the_first_anchor_with_a_short_message(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    assert "*h,*h" in BILLION_LAUGHS and len(BILLION_LAUGHS) < 400  # expands to 9**9 strings if followed
    with pytest.raises(ConfigError, match=r"laughs\.yaml: line 1: YAML anchors and aliases .* are not supported") as error:
        load_config(path)
    assert len(str(error.value)) < 200


def test_an_alias_without_anchor_in_the_file_is_refused_too(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text("model:\n  hidden: 16\ntrain:\n  seeds: *x\n")
    with pytest.raises(ConfigError, match=r"alias\.yaml: line 4: YAML anchors and aliases"):
        load_config(path)


def test_nesting_20000_deep_is_refused_without_recursion_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: line 1: nested too deeply; got more than 4 levels") as error:
        load_config(path)
    assert "\n" not in str(error.value) and len(str(error.value)) < 200


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  hidden: 16\n  dropout: 0.5\n  hidden: 64\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: line 4: duplicate key 'hidden' \(first set on line 2\)"):
        load_config(path)


def test_duplicate_key_in_a_flow_mapping_is_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model: {hidden: 16, hidden: 64}\n")
    with pytest.raises(ConfigError, match=r"line 1: duplicate key 'hidden'"):
        load_config(path)


def test_non_utf8_file_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not UTF-8 text; got byte 0xe9 on line 1 \(byte 9\)"):
        load_config(path)


def test_a_file_over_one_mebibyte_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"big\.yaml is too large; got more than 1048576 bytes"):
        load_config(path)


def test_integer_beyond_the_digit_limit_is_a_config_error(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text("model:\n  hidden: 1" + "0" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"digits\.yaml: a value cannot be read") as error:
        load_config(path)
    assert len(str(error.value)) < 250


def test_python_tags_are_refused_by_the_safe_loader(tmp_path):
    path = tmp_path / "tag.yaml"
    path.write_text("model:\n  name: !!python/object/apply:os.system [true]\n")
    with pytest.raises(ConfigError, match=r"tag\.yaml: line 2, column 9: not valid YAML: could not determine a constructor"):
        load_config(path)


def test_huge_hidden_override_is_a_range_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"config: model\.hidden must be int; got '1e20' \(str\), expected a value in \[1, 65536\]"):
        load_config(None, ["model.hidden=1e20"])
    with pytest.raises(ConfigError, match=r"config: model\.hidden is out of range; got 100000000000000000000, "
                                          r"expected a value in \[1, 65536\]"):
        load_config(None, ["model.hidden=100000000000000000000"])


def test_huge_seed_count_is_a_range_error():
    with pytest.raises(ConfigError, match=r"config: train\.seeds is out of range; got 1000000000, expected a value in \[1, 4096\]"):
        load_config(None, ["train.seeds=1000000000"])


def test_seeds_past_the_last_prng_seed_are_refused():
    with pytest.raises(ConfigError, match=r"train\.seed \+ train\.seeds - 1 must be <= 4294967295; got 4294967295 \+ 2 - 1"):
        load_config(None, ["train.seed=4294967295", "train.seeds=2"])


@pytest.mark.parametrize("override, match", [
    ("model.dropout=.nan", r"model\.dropout is out of range; got nan, expected a value in \[0, 1\)"),
    ("model.dropout=1.0", r"model\.dropout is out of range; got 1\.0, expected a value in \[0, 1\)"),
    ("optim.learning_rate=1e400", r"optim\.learning_rate is out of range; got inf"),
    ("optim.weight_decay=-1", r"optim\.weight_decay is out of range; got -1\.0, expected a value in \[0, 1000000\]"),
    ("model.hidden=0", r"model\.hidden is out of range; got 0, expected a value in \[1, 65536\]"),
])
def test_numbers_outside_their_range_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_override_with_an_alias_is_refused():
    with pytest.raises(ConfigError, match=r"--set model\.hidden: line 1: YAML anchors and aliases"):
        load_config(None, ["model.hidden=*a"])


def test_long_keys_and_values_are_cut_in_messages(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(f"model:\n  {'k' * 1000}: 1\n  name: {'m' * 10_000}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "unknown key 'model.kkkk" in message and "model.name must be one of gcn, gat, sage, gin; got 'mmm" in message
    assert len(message) < 600


def test_many_problems_are_listed_up_to_ten_then_counted():
    with pytest.raises(ConfigError) as error:
        config_from_dict({"model": {f"x{i}": 1 for i in range(1000)}})
    lines = str(error.value).split("\n")
    assert len(lines) == 11 and lines[-1] == "config: ... and 990 more problems."


def test_differences_between_configs_are_dotted_paths():
    from jgrad.config import config_differences

    first = load_config(None, ["model.hidden=8"])
    second = load_config(None, ["model.name=gat", "train.progress=false"])
    assert config_differences(first, second, ignore=["train.progress"]) == [
        ("model.name", "gcn", "gat"), ("model.hidden", 8, 16)]


# --------------------------------------------------------------------------------------------------
# check_data_source: a dataset that cannot be read is refused before anything is written
# --------------------------------------------------------------------------------------------------
def test_every_dataset_name_ships_is_generated_or_needs_planetoid_files():
    from jgrad.config import PLANETOID_FILES_ONLY, DataConfig
    from jgrad.data import DATASETS, PLANETOID_NAMES

    names = {f.name: f for f in dataclasses.fields(DataConfig)}["name"].metadata["choices"]
    for name in names:
        assert name in DATASETS or name == "csbm" or name in PLANETOID_FILES_ONLY, name
    assert set(PLANETOID_FILES_ONLY) <= set(PLANETOID_NAMES) - set(DATASETS)


def test_pubmed_without_a_folder_is_refused_with_where_its_files_go(monkeypatch):
    from jgrad.config import check_data_source

    monkeypatch.delenv("JGRAD_DATA", raising=False)
    with pytest.raises(ConfigError) as error:
        check_data_source(load_config(None, ["data.name=pubmed"]).data)
    assert str(error.value) == (
        "config: data.name=pubmed is read from the Planetoid files, which do not ship with jgrad; set data.root "
        "(or pass --data-dir, or set JGRAD_DATA) to a folder holding ind.pubmed.x and the other ind.pubmed.* files.")
    for name in ("karate", "cora", "citeseer", "cora_npz", "polblogs", "csbm"):  # shipped or generated: no files
        check_data_source(load_config(None, [f"data.name={name}"]).data)


def test_a_planetoid_folder_must_hold_the_files_of_the_named_dataset(tmp_path, monkeypatch):
    from jgrad.config import check_data_source

    monkeypatch.delenv("JGRAD_DATA", raising=False)
    data = load_config(None, ["data.name=pubmed"]).data
    missing = (f"load_planetoid: ind.pubmed.x not found in {str(tmp_path)!r}; the folder must hold the Planetoid "
               "files ind.pubmed.{x,y,tx,ty,allx,ally,graph,test.index}.")
    for call in (lambda: check_data_source(data, tmp_path),
                 lambda: check_data_source(dataclasses.replace(data, root=str(tmp_path)))):
        with pytest.raises(FileNotFoundError) as error:
            call()
        assert str(error.value) == missing  # load_planetoid's own message, raised before anything is read
    monkeypatch.setenv("JGRAD_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"^load_planetoid: JGRAD_DATA is not a folder; got '.*nowhere'\.$"):
        check_data_source(data)
    monkeypatch.setenv("JGRAD_DATA", str(tmp_path))
    (tmp_path / "planetoid").mkdir()
    parts = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
    for part in parts[:-1]:
        (tmp_path / "planetoid" / f"ind.pubmed.{part}").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"^load_planetoid: ind\.pubmed\.test\.index not found in '.*planetoid'"):
        check_data_source(data)  # every one of the eight files is checked
    (tmp_path / "planetoid" / "ind.pubmed.test.index").write_bytes(b"")
    check_data_source(data)  # JGRAD_DATA, files in its planetoid subfolder
    check_data_source(data, tmp_path)
    monkeypatch.delenv("JGRAD_DATA")
    check_data_source(dataclasses.replace(data, root=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"^load_planetoid: ind\.cora\.x not found in "):
        check_data_source(dataclasses.replace(data, name="cora", root=str(tmp_path)))


def test_a_folder_for_a_shipped_non_planetoid_graph_is_refused(tmp_path):
    from jgrad.config import check_data_source

    with pytest.raises(ConfigError) as error:
        check_data_source(load_config(None, ["data.name=cora_ml"]).data, tmp_path)
    assert str(error.value) == ("config: --data-dir is read only for the Planetoid names cora, citeseer, pubmed; got "
                                "data.name=cora_ml, which ships with jgrad: leave --data-dir unset.")
    check_data_source(load_config(None, ["data.name=karate"]).data, tmp_path)  # generated: the folder is not read


def test_train_with_pubmed_and_no_folder_fails_before_writing(tmp_path, monkeypatch, capsys):
    from jgrad.cli import main

    monkeypatch.delenv("JGRAD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pubmed.yaml"
    path.write_text("name: pubmed\ndata: {name: pubmed}\n")
    assert main(["train", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "writing to ..." for a run that cannot start
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("jgrad train: config: data.name=pubmed is read from the Planetoid files, which do "
                                   "not ship with jgrad; set data.root (or pass --data-dir, or set JGRAD_DATA)")
    assert not (tmp_path / "runs").exists()
