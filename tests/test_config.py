import pytest
import yaml

from selfclassifier.config import (
    Config,
    ConfigError,
    from_dict,
    list_presets,
    load_config,
    parse_set,
    to_yaml,
)


def test_presets_load_and_validate():
    assert "digits" in list_presets()
    for name in list_presets():
        cfg = load_config(name)
        assert isinstance(cfg, Config)


def test_default_preset_is_digits_and_overrides_apply():
    cfg = load_config(
        "digits", parse_set(["train.epochs=3", "model.heads=[10, 20]", "loss.row_tau=0.2"])
    )
    assert cfg.data.path == "digits" and cfg.train.epochs == 3
    assert cfg.model.heads == [10, 20] and cfg.loss.row_tau == 0.2


def test_round_trip_through_yaml_and_dict():
    cfg = load_config("digits")
    again = from_dict(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "override,fragment",
    [
        ({"train": {"epochz": 1}}, "unknown config key 'train.epochz'"),
        ({"trian": {"epochs": 1}}, "unknown config section 'trian'"),
        ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer"),
        ({"model": {"heads": [10, 1]}}, "model.heads[1] = 1"),
        ({"loss": {"col_tau": 0}}, "loss.col_tau must be > 0"),
        ({"train": {"batch_size": 1}}, "train.batch_size must be >= 2"),
        ({"augment": {"local_crops": -1}}, "augment.local_crops must be >= 0"),
        ({"augment": {"global_scale": [0.0, 1.0]}}, "augment.global_scale"),
        ({"augment": {"local_scale": [0.2, 1.5]}}, "augment.local_scale"),
        ({"train": {"queue_size": 10, "batch_size": 64}}, "train.queue_size"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config("digits", override)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_set_syntax_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set(["epochs=3"])


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="digits"):
        load_config("nope")
