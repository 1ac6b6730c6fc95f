"""Export a trained model for use elsewhere.

* ``torchvision``: the backbone as a plain torchvision state dict (detection/segmentation
  transfer, as the paper did with Detectron2): ``torchvision.models.<arch>()`` with its
  classifier (``fc`` / ``heads``) replaced by ``nn.Identity()`` loads it with ``strict=True``.
* ``onnx``: images (B, C, H, W), normalised as in training -> per-head class probabilities
  (row softmax at ``loss.row_tau``, as ``predict`` reports them) and the L2-normalised
  embedding; the batch size is dynamic.
* ``torchscript``: the same graph traced with ``torch.jit.trace`` (for libtorch / C++).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from selfclassifier.config import Config
from selfclassifier.errors import ExportError
from selfclassifier.model import SelfClassifier
from selfclassifier.model.backbones import ResNetTrunk, ViTTrunk
from selfclassifier.views import normalization

TORCHVISION_ARCHS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "vit_b_16", "vit_b_32", "vit_l_16",
)  # fmt: skip


class DeployModel(nn.Module):
    """images -> (probabilities of head 0, ..., of head H-1, embedding), all (B, .)."""

    def __init__(self, model: SelfClassifier, row_tau: float):
        super().__init__()
        self.model, self.row_tau = model, row_tau

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embedding = self.model.embed(images)
        return (*self.model.probabilities(embedding, self.row_tau), embedding)


def output_names(model: SelfClassifier) -> list[str]:
    return [f"probs_{h}" for h in range(len(model.heads))] + ["embedding"]


def torchvision_state_dict(model: SelfClassifier, cfg: Config) -> tuple[dict, str, list[str]]:
    """(state dict, torchvision architecture name, warnings) of the model's backbone."""
    name, backbone = cfg.model.backbone, model.backbone
    arch = name.removesuffix("_small")
    if arch not in TORCHVISION_ARCHS or not isinstance(backbone, ResNetTrunk | ViTTrunk):
        raise ExportError(
            f"backbone '{name}' has no torchvision counterpart; --format torchvision works for "
            f"{', '.join(TORCHVISION_ARCHS)} (and their *_small variants)"
        )
    notes = []
    if name.endswith("_small"):
        notes.append(
            f"{name} has a 3x3 stride-1 conv1 and no max-pool: before loading, set "
            "m.conv1 = nn.Conv2d(C, 64, 3, 1, 1, bias=False) and m.maxpool = nn.Identity()"
        )
    channels = _input_channels(backbone)
    if channels != 3 and not name.endswith("_small"):
        notes.append(f"the input convolution takes {channels} channel(s), not 3: replace it first")
    if model.input_norm == "sobel":
        notes.append(
            "the model feeds the backbone two Sobel channels (model.input_norm=sobel): after the "
            "usual normalisation average the image's channels, then convolve with "
            "[[1, 0, -1], [2, 0, -2], [1, 0, -1]] and with its transpose (zero padding 1)"
        )
    if model.input_norm == "image":
        notes.append(
            "the model standardises each image (model.input_norm=image): after the usual "
            "normalisation feed the backbone (x - mean) / sqrt(var + 1e-5), mean and population "
            "variance over all of that image's pixels"
        )
    state = {k: v.detach().clone().contiguous() for k, v in backbone.net.state_dict().items()}
    return state, arch, notes


def _input_channels(backbone: nn.Module) -> int:
    net = backbone.net
    conv = net.conv1 if isinstance(backbone, ResNetTrunk) else net.conv_proj
    return conv.in_channels


def example_input(model: SelfClassifier, channels: int, size: int, batch: int = 2):
    device = next(model.parameters()).device
    return torch.randn(batch, channels, size, size, device=device)


def export_onnx(
    model: SelfClassifier,
    cfg: Config,
    path: str | os.PathLike,
    channels: int,
    size: int,
    opset: int | None = None,
    dynamo: bool | None = None,
) -> list[str]:
    """Write ``path``; returns the output names. Needs ``pip install 'selfclassifier[onnx]'``.

    ``dynamo``: use the torch.export-based exporter (needs onnxscript) or the TorchScript-based
    one; None picks the former when onnxscript is installed.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs onnx: pip install 'selfclassifier[onnx]'") from None
    deploy = DeployModel(model, cfg.loss.row_tau).eval()
    names = output_names(model)
    x = example_input(model, channels, size)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, constant folding)
        _torch_onnx_export(deploy, x, path, names, opset, dynamo)
    proto = onnx.load(str(path))
    mean, std = normalization(cfg.augment, channels)
    meta = {
        "producer": "selfclassifier",
        "input": f"images (batch, {channels}, {size}, {size}), float32, normalised",
        "mean": ",".join(f"{m:g}" for m in mean),
        "std": ",".join(f"{s:g}" for s in std),
        "heads": ",".join(str(c) for c in model.num_classes),
        "row_tau": f"{cfg.loss.row_tau:g}",
        "outputs": ",".join(names),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return names


def _torch_onnx_export(deploy, x, path: Path, names: list[str], opset, dynamo) -> None:
    kwargs = {"input_names": ["images"], "output_names": names}
    if opset:
        kwargs["opset_version"] = opset
    if dynamo is None:
        try:
            import onnxscript  # noqa: F401 - the torch.export-based exporter needs it
        except ImportError:
            dynamo = False
        else:
            dynamo = True
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=65536)
        torch.onnx.export(
            deploy, (x,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
            verbose=False, **kwargs,
        )  # fmt: skip
    else:
        axes = {n: {0: "batch"} for n in ["images", *names]}
        torch.onnx.export(deploy, (x,), str(path), dynamo=False, dynamic_axes=axes, **kwargs)


def export_torchscript(
    model: SelfClassifier, cfg: Config, path: str | os.PathLike, channels: int, size: int
) -> list[str]:
    """Trace :class:`DeployModel` to ``path`` (``torch.jit.load`` reads it back)."""
    deploy = DeployModel(model, cfg.loss.row_tau).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still works
        traced = torch.jit.trace(deploy, example_input(model, channels, size), check_trace=False)
        traced.save(str(path))
    return output_names(model)
