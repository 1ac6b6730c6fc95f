"""SelfClassifier = backbone -> MLP projection (L2-normalised) -> unit-norm linear heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class NormalizedLinear(nn.Module):
    """Bias-free linear layer whose rows have norm 1: weight-normalisation with g fixed to 1.

    Equivalent to the paper's ``weight_norm(Linear(d, C, bias=False))`` with ``weight_g`` frozen
    at 1; ``weight`` plays the role of ``weight_v``. With ``scaled=True`` a fixed per-class
    buffer ``scale`` (C,) plays ``weight_g``: the authors' released checkpoints learnt g, and
    ``selfclassifier convert`` keeps it so their logits are reproduced exactly.
    """

    def __init__(self, in_dim: int, num_classes: int, scaled: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale: torch.Tensor | None
        if scaled:
            self.register_buffer("scale", torch.ones(num_classes))
        else:
            self.scale = None

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, F.normalize(self.weight, dim=1))
        return logits if self.scale is None else logits * self.scale.to(logits.dtype)


def projection_mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int = 2,
    batch_norm: bool = True,
    activation: str = "leaky_relu",
) -> nn.Sequential:
    """``layers`` linear layers; every one but the last is followed by BN and the activation."""
    acts = {"leaky_relu": lambda: nn.LeakyReLU(0.01), "relu": nn.ReLU, "gelu": nn.GELU}
    if activation not in acts:
        raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(acts)}")
    mods: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    for k in range(layers):
        last = k == layers - 1
        mods.append(nn.Linear(dims[k], dims[k + 1], bias=last or not batch_norm))
        if not last:
            if batch_norm:
                mods.append(nn.BatchNorm1d(dims[k + 1]))
            mods.append(acts[activation]())
    return nn.Sequential(*mods)


class SelfClassifier(nn.Module):
    """Backbone, projection and classification heads of Self-Classifier.

    >>> from selfclassifier.backbones import build_backbone
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
        head_scale: bool = False,
    ):
        super().__init__()
        if not heads:
            raise ValueError("at least one classification head is needed")
        self.backbone = backbone
        self.projection = projection_mlp(
            backbone.out_dim, hidden_dim, out_dim, mlp_layers, batch_norm, activation
        )
        self.heads = nn.ModuleList(NormalizedLinear(out_dim, c, head_scale) for c in heads)
        if freeze_heads:
            for head in self.heads:
                head.weight.requires_grad_(False)

    @property
    def num_classes(self) -> list[int]:
        return [h.num_classes for h in self.heads]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, D), the representation kNN and linear probes use."""
        return self.backbone(images)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (B, out_dim) of backbone features."""
        return F.normalize(self.projection(features), dim=1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (B, out_dim) of a batch of images."""
        return self.project(self.features(images))

    def classify(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head for normalised embeddings: list of (B, C_h)."""
        return [head(embedding) for head in self.heads]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.classify(self.embed(images))

    def embed_views(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings of multi-crop views, one backbone call per resolution.

        Consecutive views of equal size are concatenated, as in DINO, so 2 global + 6 local
        crops cost two backbone calls (and BatchNorm sees each resolution as one batch).
        """
        sizes = [v.shape[-1] for v in views]
        out: list[torch.Tensor] = []
        start = 0
        while start < len(views):
            end = start
            while end < len(views) and sizes[end] == sizes[start]:
                end += 1
            emb = self.embed(torch.cat(list(views[start:end]), dim=0))
            out.extend(emb.chunk(end - start, dim=0))
            start = end
        return out
