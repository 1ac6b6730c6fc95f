"""Config: presets, ``--set`` overrides, validation with one-line errors, YAML round trip."""

import pytest
import yaml

from selfclassifier.config import (
    CANDIDATE_HEADS,
    Config,
    ConfigError,
    from_dict,
    heads_for_classes,
    list_presets,
    load_config,
    parse_set,
    preset_candidates,
    preset_over_clusters,
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
        ({"model": {"input_norm": "batch"}}, "model.input_norm must be none, image"),
        ({"augment": {"gamma": 1.5}}, "augment.gamma is a probability"),
        ({"augment": {"gamma_range": [0.0, 2.0]}}, "augment.gamma_range must be [low, high]"),
        ({"augment": {"erase": -0.1}}, "augment.erase is a probability"),
        ({"augment": {"erase_scale": [0.3, 0.1]}}, "augment.erase_scale"),
        ({"augment": {"erase_ratio": [3.0]}}, "augment.erase_ratio must be [low, high]"),
        ({"augment": {"eval_size": -1}}, "augment.eval_size must be >= 0"),
        (
            {"augment": {"eval_size": 20}, "model": {"freeze_backbone": True}},
            "augment.eval_size 20 with model.freeze_backbone",
        ),
        ({"augment": {"final_size": 12}}, "augment.final_size 12 and augment.final_epochs 0"),
        ({"augment": {"final_epochs": 2}}, "augment.final_size 0 and augment.final_epochs 2"),
        (
            {"augment": {"final_size": 12, "final_epochs": 9}, "train": {"epochs": 8}},
            "augment.final_epochs 9 exceeds train.epochs 8",
        ),
        (
            {"augment": {"final_size": 12, "final_epochs": 1}, "model": {"freeze_backbone": True}},
            "augment.final_size with model.freeze_backbone",
        ),
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


# ----------------------------------------------------------------------------- the presets


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.model.heads and cfg.loss.col_tau < cfg.loss.row_tau


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist_cpu"])
def test_fashion_presets_use_all_70k_images(name):
    cfg = load_config(name)
    assert (cfg.data.path, cfg.data.split) == ("fashion_mnist", "all")
    assert cfg.model.heads[0] == 10


def test_small_grayscale_recipe_never_flips():
    cfg = load_config("digits").augment
    assert cfg.hflip == 0.0 and cfg.hue == 0.0


def test_imagenet_preset_is_the_papers_recipe():
    cfg = load_config("imagenet")
    assert cfg.model.backbone == "resnet50" and cfg.model.heads == [1000, 2000, 4000, 8000]
    assert (cfg.model.hidden_dim, cfg.model.out_dim, cfg.model.batch_norm) == (4096, 128, True)
    assert (cfg.loss.row_tau, cfg.loss.col_tau) == (0.1, 0.05)
    a = cfg.augment
    assert (a.global_crops, a.global_size, a.global_scale) == (2, 224, [0.4, 1.0])
    assert (a.local_crops, a.local_size, a.local_scale) == (6, 96, [0.05, 0.4])
    assert cfg.optim.optimizer == "lars" and cfg.optim.weight_decay == 1e-6
    assert not cfg.optim.scale_lr and cfg.optim.lr == 3.2 and cfg.train.batch_size == 4092
    assert (cfg.optim.warmup_epochs, cfg.train.epochs, cfg.train.queue_size) == (10, 800, 262144)


def test_defaults_and_imagenet_preset_are_the_authors():
    cfg = load_config("imagenet")
    m, o, t, a = cfg.model, cfg.optim, cfg.train, cfg.augment
    assert (m.backbone, m.heads, m.hidden_dim, m.out_dim, m.mlp_layers) == (
        "resnet50", [1000, 2000, 4000, 8000], 4096, 128, 2)  # fmt: skip
    assert (m.head_norm, m.joint_projection, m.mlp_init) == ("learnt", True, "trunc_normal")
    assert (o.optimizer, o.lr, o.scale_lr, o.warmup_start_lr, o.min_lr) == (
        "lars", 3.2, False, 0.2, 0.0032)  # fmt: skip
    assert (o.weight_decay, o.no_bias_wd, o.exclude_norm_bias) == (1e-6, False, False)
    assert (t.batch_size, t.epochs, t.precision, t.head_precision) == (4092, 800, "fp32", "fp32")
    assert (t.queue_size, a.blur, a.solarize) == (262144, [0.1, 1.0, 0.5], [0.0, 0.2, 0.0])
    assert a.eval_size == 0  # evaluation at the crops' 224 px, as their Resize + CenterCrop


def test_a_config_written_before_the_fidelity_keys_keeps_its_meaning():
    old = load_config("digits").to_dict()
    for section, key in [("model", "head_norm"), ("model", "joint_projection"),
                         ("model", "mlp_init"), ("train", "head_precision")]:  # fmt: skip
        del old[section][key]
    cfg = from_dict(old)
    assert (cfg.model.head_norm, cfg.model.joint_projection) == ("fixed", False)
    assert (cfg.model.mlp_init, cfg.train.head_precision) == ("torch", "autocast")


# ----------------------------------------------------------------------------- --classes K


def test_heads_for_classes_are_candidates_plus_over_clustering():
    assert heads_for_classes(10) == [10] * 6 + [20, 40]
    assert heads_for_classes(3, candidates=2) == [3, 3, 6, 12]
    # With the preset's candidate count it reproduces the digits preset's heads (RESULTS.md).
    digits = load_config("digits").model.heads
    assert heads_for_classes(10, preset_candidates(digits)) == digits
    assert preset_candidates(digits) == 16 and preset_candidates([1000, 2000]) == CANDIDATE_HEADS
    for bad in (1, 0, -5, True, 2.5):
        with pytest.raises(ConfigError, match="at least 2 classes"):
            heads_for_classes(bad)


def test_classes_k_adds_over_clustering_heads_only_where_the_preset_has_them():
    fm = load_config("fashion_mnist_cpu").model.heads  # six 10-class candidates, nothing else
    assert not preset_over_clusters(fm)
    assert heads_for_classes(10, preset_candidates(fm), preset_over_clusters(fm)) == fm
    assert heads_for_classes(4, 2, over_clustering=False) == [4, 4]
    for name in ("digits", "images_cpu", "images_gpu"):
        assert preset_over_clusters(load_config(name).model.heads)


@pytest.mark.parametrize("name", ["images_cpu", "images_gpu"])
def test_own_image_presets(name):
    cfg = load_config(name)
    assert cfg.model.heads == heads_for_classes(10)  # the presets' default K = 10
    assert cfg.data.split == "all" and cfg.train.batch_size >= 4 * 10
    a = cfg.augment
    if name == "images_gpu":  # ResNet-50 at the paper's 2 x 224 + 6 x 96 px views
        assert cfg.model.backbone == "resnet50"
        assert (a.global_crops, a.global_size, a.local_crops, a.local_size) == (2, 224, 6, 96)
        assert cfg.train.batch_size <= 128  # 152 MiB of saved activations per sample (bf16)
    else:  # a small backbone on 32-64 px crops
        assert cfg.model.backbone in ("resnet8", "resnet14", "resnet20")
        assert 32 <= a.global_size <= 64 and a.local_size < a.global_size
