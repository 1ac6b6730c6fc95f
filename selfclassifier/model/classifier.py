"""SelfClassifier = backbone -> MLP projection (L2-normalised) -> unit-norm linear heads."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedLinear(nn.Module):
    """Bias-free weight-normalised linear layer: logits = g * (x @ (v / ||v||)^T).

    ``weight`` is v (C, d); ``scale`` is g (C,). ``norm="learnt"`` makes g a parameter that
    starts at 1 and trains, exactly the authors' ``weight_norm(Linear(d, C, bias=False))`` with
    ``weight_g`` filled with 1. ``norm="fixed"`` keeps g = 1 (plain cosine logits);
    ``norm="buffer"`` holds g as a fixed buffer (checkpoints converted by earlier releases).

    >>> head = NormalizedLinear(4, 3)
    >>> [name for name, _ in head.named_parameters()]
    ['weight', 'scale']
    """

    def __init__(self, in_dim: int, num_classes: int, norm: str = "learnt"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's own initialisation
        self.scale: torch.Tensor | None
        if norm == "learnt":
            self.scale = nn.Parameter(torch.ones(num_classes))
        elif norm == "buffer":
            self.register_buffer("scale", torch.ones(num_classes))
        elif norm == "fixed":
            self.scale = None
        else:
            raise ValueError(f"unknown head norm '{norm}'; choose learnt, fixed or buffer")

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, F.normalize(self.weight, dim=1))
        return logits if self.scale is None else logits * self.scale.to(logits.dtype)


def standardize_images(images: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each image of (B, C, H, W) shifted and scaled to zero mean and unit std over its pixels;
    invariant to any per-image brightness gain and offset (an all-flat image becomes zeros)."""
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return ((x - mean) * torch.rsqrt(var + eps)).to(images.dtype)


def sobel_images(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2, H, W): horizontal and vertical Sobel gradients of the channel
    mean (zero padding), DeepCluster's fixed input filter: edges and shape, not tone."""
    x = images.float().mean(dim=1, keepdim=True)
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device)
    weight = torch.stack([k, k.t()]).unsqueeze(1)
    return F.conv2d(x, weight, padding=1).to(images.dtype)


class GroupedLinear(nn.Module):
    """``groups`` independent Linear layers run as one: (B, G * in) -> (B, G * out).

    Group g maps input block g to output block g with its own ``weight[g]`` (out, in) and
    ``bias[g]``; with ``shared_input`` every group reads the same (B, in) input (the first layer
    of per-head MLPs), which is one matrix product. Each group is initialised like an
    ``nn.Linear`` of its own, so G groups compute what G separate layers would, in one module
    (on digits' 8 px ResNet-20 this did not shorten a run: 257-279 s against 267 s).
    """

    def __init__(self, in_dim: int, out_dim: int, groups: int, bias: bool, shared_input: bool):
        super().__init__()
        self.groups, self.in_dim, self.out_dim = groups, in_dim, out_dim
        self.shared_input = shared_input
        self.weight = nn.Parameter(torch.empty(groups, out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(groups, out_dim)) if bias else None
        for g in range(groups):  # nn.Linear's own initialisation, per group
            nn.init.kaiming_uniform_(self.weight[g], a=5**0.5)
            if self.bias is not None:
                nn.init.uniform_(self.bias[g], -(in_dim**-0.5), in_dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input:
            y = F.linear(x, self.weight.reshape(-1, self.in_dim))
        else:
            blocks = x.view(x.shape[0], self.groups, self.in_dim).transpose(0, 1)  # (G, B, in)
            y = torch.bmm(blocks, self.weight.transpose(1, 2)).transpose(0, 1)
            y = y.reshape(x.shape[0], -1)
        return y if self.bias is None else y + self.bias.reshape(-1)


def projection_mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int = 2,
    batch_norm: bool = True,
    activation: str = "leaky_relu",
    init: str = "trunc_normal",
    groups: int = 1,
) -> nn.Sequential:
    """``layers`` linear layers; every one but the last is followed by BN and the activation.

    A Linear followed by BN has no bias: BN's mean subtraction cancels it (the authors' MLP has
    one, whose gradient is zero in training mode; ``convert`` folds it into BN's running mean).
    ``init="trunc_normal"``: weights N(0, 0.02) truncated at +-2, biases 0 (the authors' MLP).
    ``groups`` > 1: that many independent MLPs on the same input, output (B, groups * out_dim)
    (block g is MLP g's); BatchNorm and the activation act per feature, so sharing those
    modules across the groups changes nothing.
    """
    acts = {"leaky_relu": lambda: nn.LeakyReLU(0.01), "relu": nn.ReLU, "gelu": nn.GELU}
    if activation not in acts:
        raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(acts)}")
    mods: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    for k in range(layers):
        last = k == layers - 1
        bias = last or not batch_norm
        if groups == 1:
            mods.append(nn.Linear(dims[k], dims[k + 1], bias=bias))
        else:
            mods.append(GroupedLinear(dims[k], dims[k + 1], groups, bias, shared_input=k == 0))
        if not last:
            if batch_norm:
                mods.append(nn.BatchNorm1d(groups * dims[k + 1]))
            mods.append(acts[activation]())
    if init == "trunc_normal":
        for mod in mods:
            if isinstance(mod, nn.Linear | GroupedLinear):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
    elif init != "torch":
        raise ValueError(f"unknown MLP init '{init}'; choose trunc_normal or torch")
    return nn.Sequential(*mods)


class SelfClassifier(nn.Module):
    """Backbone, projection and classification heads of Self-Classifier.

    >>> from selfclassifier.model.backbones import build_backbone
    >>> model = SelfClassifier(build_backbone("resnet20", 1), heads=(10, 20), hidden_dim=64,
    ...                        out_dim=32)
    >>> [p.shape for p in model(torch.randn(4, 1, 8, 8))]
    [torch.Size([4, 10]), torch.Size([4, 20])]
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Sequence[int] = (1000, 2000, 4000, 8000),
        hidden_dim: int = 4096,
        out_dim: int = 128,
        mlp_layers: int = 2,
        batch_norm: bool = True,
        activation: str = "leaky_relu",
        freeze_heads: bool = False,
        head_norm: str = "learnt",
        joint_projection: bool = True,
        mlp_init: str = "trunc_normal",
        input_norm: str = "none",
        head_projection: str = "shared",
    ):
        super().__init__()
        if head_projection not in ("shared", "per_head"):
            raise ValueError(f"head_projection must be shared or per_head, got {head_projection!r}")
        if input_norm not in ("none", "image", "sobel"):
            raise ValueError(f"input_norm must be none, image or sobel, got {input_norm!r}")
        self.input_norm = input_norm
        if not heads:
            raise ValueError("at least one classification head is needed")
        self.backbone = backbone

        self.out_dim, self.per_head = out_dim, head_projection == "per_head"
        # per_head: one grouped MLP whose output block h feeds head h; shared: the authors' MLP.
        self.projection = projection_mlp(
            backbone.out_dim, hidden_dim, out_dim, mlp_layers, batch_norm, activation, mlp_init,
            groups=len(heads) if self.per_head else 1,
        )  # fmt: skip
        self.heads = nn.ModuleList(NormalizedLinear(out_dim, c, head_norm) for c in heads)
        self.joint_projection = joint_projection
        if freeze_heads:
            self.heads.requires_grad_(False)

    @property
    def num_classes(self) -> list[int]:
        return [h.num_classes for h in self.heads]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, D), the representation kNN and linear probes use."""
        if self.input_norm == "image":
            images = standardize_images(images)
        elif self.input_norm == "sobel":
            images = sobel_images(images)
        return self.backbone(images)

    @property
    def embed_dim(self) -> int:
        """Width of ``embed``'s output: out_dim, or len(heads) x out_dim with per-head MLPs."""
        return self.out_dim * (len(self.heads) if self.per_head else 1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (B, embed_dim) of backbone features.

        With per-head projections: each head's unit embedding, concatenated and divided by
        sqrt(len(heads)), so the whole is unit-norm and its cosine similarity is the mean of
        the heads' cosines."""
        z = self.projection(features)
        if not self.per_head:
            return F.normalize(z, dim=1, eps=1e-7)
        parts = F.normalize(z.view(z.shape[0], len(self.heads), self.out_dim), dim=2, eps=1e-7)
        return parts.flatten(1) / math.sqrt(len(self.heads))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (B, embed_dim) of a batch of images."""
        return self.project(self.features(images))

    def classify(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head for normalised embeddings: list of (B, C_h)."""
        if self.per_head:  # head h reads its own part, back at unit norm
            parts = embedding.split(self.out_dim, dim=1)
            return [
                head(F.normalize(part, dim=1, eps=1e-7))
                for head, part in zip(self.heads, parts, strict=True)
            ]
        return [head(embedding) for head in self.heads]

    def probabilities(self, embedding: torch.Tensor, row_tau: float) -> list[torch.Tensor]:
        """Class probabilities of every head, list of (B, C_h) in float32: the row softmax at
        ``row_tau`` (the training ``loss.row_tau``), the prediction the loss trains.

        Every tool that reports a class or a confidence (predict, evaluate, report, export,
        the Python API) uses this one function."""
        return [
            torch.softmax(logits.float() / row_tau, dim=1) for logits in self.classify(embedding)
        ]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.classify(self.embed(images))

    def embed_views(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings of multi-crop views, one backbone call per resolution.

        Consecutive views of equal size are concatenated, so 2 global + 6 local crops cost two
        backbone calls. With ``joint_projection`` (the authors' code) the projection then runs
        once over all views' features, so its BatchNorm statistics pool every crop; without,
        it runs once per resolution group.
        """
        groups: list[list[torch.Tensor]] = []
        for v in views:
            if groups and groups[-1][0].shape[-1] == v.shape[-1]:
                groups[-1].append(v)
            else:
                groups.append([v])
        feats = [self.features(torch.cat(group, dim=0)) for group in groups]
        if self.joint_projection:
            return list(self.project(torch.cat(feats, dim=0)).chunk(len(views), dim=0))
        out: list[torch.Tensor] = []
        for group, f in zip(groups, feats, strict=True):
            out.extend(self.project(f).chunk(len(group), dim=0))
        return out
