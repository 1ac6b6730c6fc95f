"""Typed configuration: dataclasses with advice in their help text, YAML presets.

A run's configuration is the defaults below, overlaid by a preset (``configs/NAME.yaml`` or a
YAML file), overlaid by CLI flags and ``--set section.key=value``. Every error names the key
and what is allowed, in one line (the checks are in :mod:`selfclassifier.config_checks`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from selfclassifier.config_checks import validate
from selfclassifier.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _f(default, help: str, **kw):
    if isinstance(default, list | tuple | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    path: str = _f(
        "digits",
        "'digits', 'fashion_mnist', a folder of IDX files, or a folder of "
        "images (class sub-folders give labels for evaluation; any other layout is "
        "unlabelled).",
    )
    split: str = _f("all", "train | test | all. Clustering papers train and score on 'all'.")
    grayscale: bool | None = _f(
        None,
        "Read images as 1 channel. None: grayscale for digits and IDX data, RGB for image folders.",
    )
    workers: int = _f(2, "DataLoader worker processes for image folders (per process).")
    strict: bool = _f(
        False,
        "Fail before training if any image cannot be decoded, instead of "
        "skipping it and listing it in OUT/skipped.txt.",
    )


@dataclass
class ModelConfig:
    backbone: str = _f(
        "resnet18",
        "Backbone name (see selfclassifier.model.backbones.BACKBONES). Use "
        "*_small or resnet20 for 8-64 px images.",
    )
    heads: list[int] = _f(
        [1000, 2000, 4000, 8000],
        "Classes per head. The first head is the one "
        "reported as 'the' classifier; extra over-clustering heads help.",
    )
    hidden_dim: int = _f(4096, "Hidden width of the projection MLP.")
    out_dim: int = _f(128, "Embedding dimension (the MLP output, L2-normalised).")
    mlp_layers: int = _f(2, "Linear layers in the projection MLP (>= 1).")
    batch_norm: bool = _f(True, "BatchNorm in the projection MLP (the paper's choice).")
    activation: str = _f("leaky_relu", "leaky_relu (paper) | relu | gelu.")
    freeze_heads: bool = _f(
        False, "Keep the randomly initialised heads fixed (the authors' --fixed-cls ablation)."
    )
    head_norm: str = _f(
        "learnt",
        "learnt: each head is weight_norm(Linear(bias=False)) whose per-class norm g starts at 1 "
        "and is trained like every parameter (the authors' code). fixed: g stays 1, so logits "
        "are plain cosines (this package's earlier default).",
    )
    head_scale: bool = _f(
        False,
        "Legacy: a fixed per-class scale buffer on the logits, as 'selfclassifier convert' "
        "wrote before head_norm existed. New conversions store g as the learnt head norm.",
    )
    joint_projection: bool = _f(
        True,
        "Run the projection MLP once over all views concatenated, so its BatchNorm pools global "
        "and local crops (the authors' code). false: one MLP call per crop resolution (this "
        "package's earlier behaviour). The backbone always runs once per resolution.",
    )
    head_projection: str = _f(
        "shared",
        "shared: one projection MLP feeds every head (the authors' code). per_head: each head "
        "has its own MLP and embedding, so candidate heads of one class count explore "
        "independently over the shared backbone; the embedding that kNN, the NN queue and "
        "the tools read is then every head's unit embedding concatenated, scaled to unit "
        "norm (len(heads) x out_dim wide). Not in the paper.",
    )
    input_norm: str = _f(
        "none",
        "none | image: standardise each input image to zero mean and unit variance over its "
        "pixels before the backbone, so a per-image brightness gain or offset carries no "
        "signal | sobel: feed the backbone the horizontal and vertical Sobel gradients of the "
        "channel mean (2 channels, DeepCluster's fixed filter: edges, not tone). Not in the "
        "paper; on Fashion-MNIST neither changed ACC much (docs/RESULTS.md).",
    )
    mlp_init: str = _f(
        "trunc_normal",
        "Initialisation of the projection's Linear layers: trunc_normal (std 0.02, bias 0: the "
        "authors' code) | torch (PyTorch's default).",
    )
    init_backbone: str | None = _f(
        None,
        "Local weights to start the backbone from: a torchvision or timm state dict (.pth, "
        ".bin, .safetensors) or a selfclassifier checkpoint. Ignored when resuming.",
    )
    freeze_backbone: bool = _f(
        False,
        "Train only the projection and heads, on backbone features computed once and cached "
        "in OUT/features.pt (epochs take seconds). Use with init_backbone (a strong encoder).",
    )
    sync_bn: bool = _f(True, "Convert BatchNorm to SyncBatchNorm in multi-process runs.")


@dataclass
class LossConfig:
    row_tau: float = _f(0.1, "Temperature of the row (class) softmax; paper: 0.1.")
    col_tau: float = _f(
        0.05,
        "Temperature of the column (batch) softmax; paper: 0.05. Must be "
        "below row_tau or the trivial uniform solution wins.",
    )
    eps: float = _f(1e-12, "Added inside log(pred).")


@dataclass
class AugmentConfig:
    pipeline: str = _f(
        "auto",
        "classic (per-sample, in loader workers) | fast (batched, on the "
        "training device) | auto (fast for in-memory data and on GPU).",
    )
    global_crops: int = _f(2, "Number of global crops (>= 2).")
    global_size: int = _f(224, "Side of global crops in pixels.")
    eval_size: int = _f(
        0,
        "Side of the deterministic input that evaluation, prediction and export use; 0 = "
        "global_size (the authors' code: 224 for 224 crops). Random-resized crops magnify the "
        "object, so a side a little above global_size can score higher at test time (FixRes, "
        "Touvron et al. 2019; Fashion-MNIST: docs/RESULTS.md). Not in the paper.",
    )
    global_scale: list[float] = _f([0.4, 1.0], "Area range of global crops, fraction of image.")
    final_size: int = _f(
        0,
        "Side of the global crops in the last final_epochs epochs; 0 = global_size throughout. "
        "Progressive resizing (small, cheap crops while the classes form, larger ones to "
        "refine them; Touvron et al. 2019, Tan & Le 2021). eval_size 0 then means final_size. "
        "Not in the paper.",
    )
    final_epochs: int = _f(0, "How many of the last epochs use final_size (0 with final_size 0).")
    local_crops: int = _f(6, "Number of local crops (0 disables multi-crop).")
    local_size: int = _f(96, "Side of local crops in pixels.")
    local_scale: list[float] = _f([0.05, 0.4], "Area range of local crops, fraction of image.")
    ratio: list[float] = _f([0.75, 1.3333333], "Aspect-ratio range of all crops.")
    interpolation: str = _f(
        "bicubic",
        "Resampling of random-resized crops: bicubic (the authors' PIL BICUBIC) | bilinear.",
    )
    hflip: float = _f(0.5, "Horizontal flip probability (0 for digits and text).")
    rotation: float = _f(0.0, "Max rotation in degrees (small grayscale recipe).")
    jitter: float = _f(0.8, "Probability of colour jitter.")
    brightness: float = _f(0.4, "Colour jitter brightness strength.")
    contrast: float = _f(0.4, "Colour jitter contrast strength.")
    saturation: float = _f(0.2, "Colour jitter saturation strength (RGB only).")
    hue: float = _f(0.1, "Colour jitter hue strength (RGB only).")
    grayscale: float = _f(0.2, "Probability of converting to grayscale (RGB only).")
    blur: list[float] = _f(
        [0.1, 1.0, 0.5],
        "Gaussian blur probability for global crop 1 (the view the NN queue stores), global "
        "crop 2 (and further), local crops (the authors' order: 0.1, 1.0, 0.5).",
    )
    blur_sigma: list[float] = _f([0.1, 2.0], "Range of the blur's sigma, in pixels of the crop.")
    solarize: list[float] = _f([0.0, 0.2, 0.0], "Solarisation probability, same layout as blur.")
    gamma: float = _f(
        0.0,
        "Probability of a random gamma (x ** g per image, after colour jitter): changes the "
        "tone curve, which brightness and contrast (linear) cannot. Not in the paper.",
    )
    gamma_range: list[float] = _f(
        [0.5, 2.0], "Range of the random gamma g, drawn log-uniformly (g < 1 lightens)."
    )
    erase: float = _f(
        0.0,
        "Probability of random erasing: one rectangle of the view set to black, the last op "
        "before noise and normalisation (torchvision's RandomErasing, value 0). Not in the paper.",
    )
    erase_scale: list[float] = _f(
        [0.02, 0.33], "Area range of the erased rectangle, fraction of the view."
    )
    erase_ratio: list[float] = _f([0.3, 3.3], "Aspect-ratio range of the erased rectangle.")
    noise: float = _f(0.0, "Std of additive Gaussian pixel noise (0..1 scale) for small images.")
    mean: list[float] | None = _f(
        None, "Normalisation mean per channel; None: ImageNet's for RGB, 0.5 for grayscale."
    )
    std: list[float] | None = _f(None, "Normalisation std per channel (see mean).")
    compute_dtype: str = _f(
        "auto",
        "Float type of the fast path's batched stage for image folders: auto (bfloat16 on "
        "CUDA and CPUs with native bf16, else float32) | bfloat16 | float32.",
    )


@dataclass
class OptimConfig:
    optimizer: str = _f("sgd", "sgd | adamw | lars (the paper: LARS on SGD).")
    lr: float = _f(
        0.3,
        "Peak learning rate. With scale_lr it is per 256 images and multiplied by "
        "batch_size / 256 (0.3 -> 4.8 at batch 4096); without, it is used as given.",
    )
    scale_lr: bool = _f(
        True,
        "Scale lr, warmup_start_lr and min_lr linearly with the global batch (lr * batch / 256). "
        "The authors' scripts give absolute values: set false to use theirs as written.",
    )
    warmup_start_lr: float = _f(
        0.0,
        "LR of the first step; warm-up rises linearly (end point included) to lr. The authors' "
        "800-epoch script: 0.2 for lr 3.2.",
    )
    min_lr: float = _f(0.0, "LR at the end of the cosine schedule (authors: lr / 1000).")
    weight_decay: float = _f(1e-6, "Weight decay on every parameter; paper: 1e-6.")
    momentum: float = _f(0.9, "Momentum for sgd and lars.")
    warmup_epochs: float = _f(10.0, "Linear warmup length in epochs (fractional allowed).")
    no_bias_wd: bool = _f(
        False,
        "No weight decay on biases and norm layers; LARS still adapts them (the authors' "
        "--no-bias-wd, off in their scripts).",
    )
    exclude_norm_bias: bool = _f(
        False,
        "Biases and norm layers get neither weight decay nor LARS scaling (plain SGD steps): "
        "this package's earlier default, common in SSL recipes. The authors: false.",
    )
    clip_grad: float = _f(0.0, "Clip the gradient norm to this value (0 disables).")


@dataclass
class TrainConfig:
    epochs: int = _f(100, "Training epochs.")
    batch_size: int = _f(256, "GLOBAL batch size, divided evenly across processes.")
    seed: int = _f(0, "Seed for weights, data order and augmentations.")
    device: str = _f("auto", "auto (cuda if available) | cpu | cuda | cuda:N.")
    precision: str = _f(
        "auto",
        "auto (bf16 on CUDA, fp32 on CPU) | native_bf16 (bf16 on CUDA and on CPUs with bf16 "
        "in hardware, AVX512-BF16 or AMX; fp32 on other CPUs) | fp32 | bf16 | fp16 (with "
        "GradScaler).",
    )
    head_precision: str = _f(
        "fp32",
        "fp32: heads and loss always in float32, whatever the backbone's autocast (the column "
        "softmax at tau 0.05 is sensitive to bf16 logits). autocast: heads follow the "
        "backbone's precision (this package's earlier behaviour).",
    )
    queue_size: int = _f(
        0,
        "NN queue length in embeddings (0 disables; paper: 262144). Must exceed the global batch.",
    )
    queue_start_epoch: int = _f(0, "Epoch from which the NN queue is filled and used.")
    feature_views: int = _f(
        4,
        "Frozen-backbone mode: augmented global crops per image whose features are cached "
        "(plus the un-augmented image); each step draws the views from them.",
    )
    feature_neighbours: int = _f(
        0,
        "Frozen-backbone mode: if > 0, the last view of each sample is a random one of its k "
        "nearest neighbours in backbone-feature space (TEMI's pairing); 0 disables.",
    )
    channels_last: bool = _f(True, "channels_last memory format for the model and its views.")
    compile: bool = _f(False, "torch.compile the model (CUDA; measure before keeping it).")
    grad_checkpointing: bool = _f(
        False, "Recompute backbone activations in backward to save memory."
    )
    checkpoint_every_steps: int = _f(0, "Also checkpoint every N steps (0: once per epoch).")
    eval_every: int = _f(
        0,
        "Every N epochs, log kNN accuracy and head NMI/ACC to metrics.jsonl "
        "(needs labels; 0 disables).",
    )
    selection_passes: int = _f(
        1,
        "After training, passes over the data (fresh augmentations, frozen weights) that score "
        "each head's loss; among heads with the same number of classes the lowest loss is "
        "marked selected, without labels. Runs only when model.heads repeats a class count; "
        "0 disables.",
    )
    deterministic: bool = _f(False, "Deterministic algorithms (bitwise-reproducible on CPU).")
    skip_nonfinite: bool = _f(False, "Skip steps with a non-finite loss instead of stopping.")
    log_every: int = _f(10, "Progress-bar / log update interval in steps.")
    tensorboard: bool = _f(
        False,
        "Also write metrics.jsonl's records as TensorBoard scalars to OUT/tensorboard/ (rank 0; "
        "a resumed run continues the curves); watch them with `tensorboard --logdir "
        "OUT/tensorboard`. Add eval_every for NMI/ACC/kNN curves. Needs `pip install "
        "'selfclassifier[tensorboard]'`.",
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_types(section_cls) -> dict[str, object]:
    return typing.get_type_hints(section_cls)


def _coerce(key: str, value, hint):
    """Check ``value`` against the annotation ``hint``; ints are accepted for floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """Overlay a nested dict ``{section: {key: value}}`` on ``cfg`` (in place), type-checked."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(overrides).__name__}")
    for section, values in overrides.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section '{section}'; choose one of: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping of keys")
        target = getattr(cfg, section)
        hints = _section_types(type(target))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"unknown config key '{section}.{key}'; keys of '{section}': {', '.join(hints)}"
                )
            setattr(target, key, _coerce(f"{section}.{key}", value, hints[key]))
    return cfg


def parse_set(assignments: list[str]) -> dict:
    """``["train.epochs=3", "model.heads=[10,20]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in assignments or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set expects section.key=value, got '{item}'")
        key, raw = item.split("=", 1)
        section, name = key.strip().split(".", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


CANDIDATE_HEADS = 6  # what the shared-projection presets measured (docs/RESULTS.md)


def preset_candidates(heads: list[int]) -> int:
    """How many candidate heads ``train --classes K`` gives on a preset with these ``heads``: as
    many as the preset repeats its first head size (the digits preset: 16), or
    ``CANDIDATE_HEADS`` where it does not repeat it (one head per size, e.g. ImageNet's).

    >>> preset_candidates([10] * 16 + [20, 40]), preset_candidates([1000, 2000])
    (16, 6)
    """
    repeats = list(heads).count(heads[0]) if heads else 0
    return repeats if repeats > 1 else CANDIDATE_HEADS


def preset_over_clusters(heads: list[int]) -> bool:
    """Whether a preset with these ``heads`` has over-clustering heads (a size other than its
    first), so that ``train --classes K`` adds them at 2K and 4K: the digits and own-image
    presets do, the Fashion-MNIST CPU preset (six 10-class candidates only) does not.

    >>> preset_over_clusters([10] * 16 + [20, 40]), preset_over_clusters([10] * 6)
    (True, False)
    """
    return any(h != heads[0] for h in heads)


def heads_for_classes(
    k: int, candidates: int = CANDIDATE_HEADS, over_clustering: bool = True
) -> list[int]:
    """``model.heads`` for about ``k`` classes (``train --classes K``): ``candidates`` heads of
    k classes, among which training selects the lowest-loss one without labels
    (``train.selection_passes``), plus over-clustering heads of 2k and 4k classes unless
    ``over_clustering`` is false.

    >>> heads_for_classes(10), heads_for_classes(7, 3, over_clustering=False)
    ([10, 10, 10, 10, 10, 10, 20, 40], [7, 7, 7])
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"--classes K: a head needs at least 2 classes, got {k!r}")
    if candidates < 1:
        raise ConfigError(f"heads_for_classes: candidates must be >= 1, got {candidates}")
    return [k] * candidates + ([2 * k, 4 * k] if over_clustering else [])


def preset_path(name_or_file: str) -> Path:
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file '{name_or_file}' not found")
        return path
    path = CONFIG_DIR / f"{name_or_file}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown preset '{name_or_file}'; choose one of: "
            f"{', '.join(list_presets())} or pass a YAML file"
        )
    return path


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(preset: str | None = "digits", overrides: dict | None = None) -> Config:
    """Defaults, then the preset (name or YAML path), then ``overrides``; validated."""
    cfg = Config()
    if preset:
        path = preset_path(preset)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(
                f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}"
            ) from None
        apply_overrides(cfg, data)
    if overrides:
        apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


# Keys added when the defaults moved to the authors' behaviour (docs/FIDELITY.md), with the
# value that reproduces what a config written before them meant.
LEGACY_VALUES = {
    ("model", "head_norm"): "fixed",
    ("model", "joint_projection"): False,
    ("model", "mlp_init"): "torch",
    ("augment", "interpolation"): "bilinear",
    ("train", "head_precision"): "autocast",
}


def from_dict(data: dict) -> Config:
    """Rebuild a Config from ``to_dict()`` output (e.g. stored in a checkpoint).

    A config written before a key existed gets the value that keeps its old meaning
    (:data:`LEGACY_VALUES`), so older checkpoints load and resume as they were trained.
    """
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for (section, key), value in LEGACY_VALUES.items():
            if isinstance(data.get(section), dict):
                data[section].setdefault(key, value)
    return apply_overrides(Config(), data)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
