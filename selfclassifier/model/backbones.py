"""Backbone registry: name -> module that maps (B, C, H, W) images to (B, D) features.

Every backbone exposes ``out_dim``. ``*_small`` ResNets swap the ImageNet stem (7x7 stride-2
conv + max-pool) for a 3x3 stride-1 conv, the usual choice for 8-64 px inputs; ``resnet20``
is the compact CIFAR ResNet of He et al. (2016), fast enough to train on a laptop CPU, and
``resnet8`` / ``resnet20`` (16-32-64 channels) have ``_wide`` twins at 32-64-128, and the
``_s2`` ResNet-8s a stride-2 stem: 28 px crops then cost what 14 px crops cost at stride 1, but
the first conv still sees every input pixel.
ViTs interpolate their position embeddings so global and local crops of different
resolutions go through the same network.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from selfclassifier.errors import UnknownBackbone


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier."""

    def __init__(self, net: torchvision.models.ResNet, in_channels: int, small_images: bool):
        super().__init__()
        width = net.conv1.out_channels
        if small_images:
            net.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: three stages of n basic blocks, widths w, 2w, 4w."""

    def __init__(
        self, depth: int = 20, width: int = 16, in_channels: int = 3, stem_stride: int = 1
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        layers, cin = [], width
        for stage, cout in enumerate([width, 2 * width, 4 * width]):
            for b in range(n):
                layers.append(_BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


class ViTTrunk(nn.Module):
    """A torchvision VisionTransformer returning the class token, at any input resolution."""

    def __init__(self, net: torchvision.models.VisionTransformer, in_channels: int):
        super().__init__()
        if in_channels != 3:
            old = net.conv_proj
            net.conv_proj = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride)
        net.heads = nn.Identity()
        self.net = net
        self.out_dim = net.hidden_dim

    def _position_embedding(self, h: int, w: int) -> torch.Tensor:
        pos = self.net.encoder.pos_embedding  # (1, 1 + g*g, D)
        grid = int(math.sqrt(pos.shape[1] - 1))
        if (h, w) == (grid, grid):
            return pos
        patch = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patch.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.conv_proj(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._position_embedding(h, w)
        enc = net.encoder
        return enc.ln(enc.layers(enc.dropout(x)))[:, 0]


def _resnet(name: str, small: bool) -> Callable[[int, int], nn.Module]:
    def build(in_channels: int, image_size: int) -> nn.Module:
        return ResNetTrunk(getattr(torchvision.models, name)(weights=None), in_channels, small)

    return build


def _tv_vit(name: str) -> Callable[[int, int], nn.Module]:
    def build(in_channels: int, image_size: int) -> nn.Module:
        return ViTTrunk(getattr(torchvision.models, name)(weights=None), in_channels)

    return build


def _small_vit(patch: int, dim: int, depth: int, heads: int) -> Callable[[int, int], nn.Module]:
    def build(in_channels: int, image_size: int) -> nn.Module:
        size = max(patch, image_size - image_size % patch)
        net = torchvision.models.VisionTransformer(
            image_size=size,
            patch_size=patch,
            num_layers=depth,
            num_heads=heads,
            hidden_dim=dim,
            mlp_dim=4 * dim,
        )
        return ViTTrunk(net, in_channels)

    return build


BACKBONES: dict[str, Callable[[int, int], nn.Module]] = {
    **{n: _resnet(n, small=False) for n in ("resnet18", "resnet34", "resnet50", "resnet101")},
    **{f"{n}_small": _resnet(n, small=True) for n in ("resnet18", "resnet34", "resnet50")},
    "resnet8": lambda c, s: CifarResNet(8, 16, c),
    "resnet8_wide": lambda c, s: CifarResNet(8, 32, c),
    "resnet8_s2": lambda c, s: CifarResNet(8, 16, c, stem_stride=2),
    "resnet8_wide_s2": lambda c, s: CifarResNet(8, 32, c, stem_stride=2),
    "resnet14": lambda c, s: CifarResNet(14, 16, c),
    "resnet20": lambda c, s: CifarResNet(20, 16, c),
    "resnet20_wide": lambda c, s: CifarResNet(20, 32, c),
    "resnet32": lambda c, s: CifarResNet(32, 16, c),
    "resnet56": lambda c, s: CifarResNet(56, 16, c),
    **{n: _tv_vit(n) for n in ("vit_b_16", "vit_b_32", "vit_l_16")},
    "vit_tiny_patch4": _small_vit(4, 192, 12, 3),
    "vit_tiny_patch16": _small_vit(16, 192, 12, 3),
    "vit_small_patch16": _small_vit(16, 384, 12, 6),
}


def check_backbone(name: str) -> None:
    """Raise UnknownBackbone (one line listing the choices) unless ``name`` can be built."""
    if name.startswith("timm:"):
        import importlib.util

        if importlib.util.find_spec("timm") is None:
            raise UnknownBackbone(f"backbone '{name}' needs timm: pip install timm")
        return
    if name not in BACKBONES:
        raise UnknownBackbone(
            f"unknown backbone '{name}' (model.backbone); choose one of: "
            f"{', '.join(sorted(BACKBONES))} (or timm:<model> with timm installed)"
        )


def build_backbone(name: str, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    """Build backbone ``name`` for ``in_channels``-channel images of about ``image_size`` px.

    Names starting with ``timm:`` build ``timm.create_model(rest, num_classes=0)`` when timm is
    installed (optional dependency).
    """
    if name.startswith("timm:"):
        return _timm_backbone(name[5:], in_channels)
    check_backbone(name)
    return BACKBONES[name](in_channels, image_size)


def _blocks(backbone: nn.Module) -> list[nn.Module]:
    """The repeated blocks whose activations dominate memory, for each backbone family."""
    if isinstance(backbone, ResNetTrunk):
        net = backbone.net
        return [b for stage in (net.layer1, net.layer2, net.layer3, net.layer4) for b in stage]
    if isinstance(backbone, CifarResNet):
        return list(backbone.layers)
    if isinstance(backbone, ViTTrunk):
        return list(backbone.net.encoder.layers)
    return []


def _checkpointed(forward: Callable) -> Callable:
    def run(*args):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False)
        return forward(*args)

    return run


def enable_activation_checkpointing(backbone: nn.Module) -> None:
    """Recompute each residual/transformer block's activations in backward.

    Only block inputs are kept during forward, which cuts activation memory several-fold for
    about one extra forward pass of compute. The blocks' ``forward`` is wrapped in place, so
    parameter names and checkpoints are unchanged. (BatchNorm running statistics see the
    recomputed forward too: a second update with the same batch statistics.) timm models use
    their own ``set_grad_checkpointing``.
    """
    if hasattr(backbone, "set_grad_checkpointing"):
        backbone.set_grad_checkpointing(True)
        return
    blocks = _blocks(backbone)
    if not blocks:
        raise UnknownBackbone(
            f"activation checkpointing is not available for {type(backbone).__name__}; "
            "set train.grad_checkpointing=false"
        )
    for block in blocks:
        block.forward = _checkpointed(block.forward)


def _timm_backbone(name: str, in_channels: int) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise UnknownBackbone(f"backbone 'timm:{name}' needs timm: pip install timm") from e
    net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    net.out_dim = net.num_features
    return net
