"""YAML configs: typed loading, errors that name the key, --set overrides, the saved resolved config."""

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


def test_mistyped_value_names_the_key_and_type():
    with pytest.raises(ConfigError, match=r"config: model\.hidden must be int; got '16' \(str\)"):
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
    with pytest.raises(ConfigError, match="learning_rate must be float; got 'fast'"):
        load_config(path, [])
