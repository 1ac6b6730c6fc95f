"""Backbones: the registry, every builder's output shape, and activation checkpointing."""

import pytest
import torch

from selfclassifier.model.backbones import (
    BACKBONES,
    UnknownBackbone,
    build_backbone,
    enable_activation_checkpointing,
)


@pytest.mark.parametrize(
    "name,size",
    [("resnet18", 32), ("resnet18_small", 16), ("resnet20", 8), ("vit_tiny_patch4", 16)],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_backbones_shapes(name, size, channels):
    net = build_backbone(name, channels, size).eval()
    out = net(torch.randn(2, channels, size, size))
    assert out.shape == (2, net.out_dim)


@pytest.mark.parametrize("depth", [8, 20])
def test_wide_cifar_resnets_double_every_stage(depth):
    narrow = build_backbone(f"resnet{depth}", 1, 16)
    wide = build_backbone(f"resnet{depth}_wide", 1, 16)
    assert (narrow.out_dim, wide.out_dim) == (64, 128)
    convs = [m for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)]
    wide_convs = [m for m in wide.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [2 * c.out_channels for c in convs] == [c.out_channels for c in wide_convs]
    assert wide.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 128)


def test_vit_takes_local_crops_of_another_resolution():
    net = build_backbone("vit_tiny_patch4", 3, 16).eval()
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 192)


def test_registry_and_unknown_name():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "vit_b_16"} <= set(BACKBONES)
    with pytest.raises(UnknownBackbone, match="resnet18"):
        build_backbone("resnet7")


@pytest.mark.parametrize("name,size", [("resnet20", 16), ("resnet18", 32), ("vit_tiny_patch4", 16)])
def test_activation_checkpointing_keeps_outputs_gradients_and_names(name, size):
    torch.manual_seed(0)
    plain = build_backbone(name, 3, size)
    ckpt = build_backbone(name, 3, size)
    ckpt.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(ckpt)
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, size, size)
    out_a, out_b = plain(x), ckpt(x)
    torch.testing.assert_close(out_a, out_b)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", ["resnet8", "resnet8_wide"])
def test_stride2_stem_reads_every_pixel_and_halves_the_maps(name):
    torch.manual_seed(0)
    plain = build_backbone(name, 1, 28).eval()
    s2 = build_backbone(f"{name}_s2", 1, 28).eval()
    s2.load_state_dict(plain.state_dict())  # the same weights: only the stem's stride differs
    x = torch.randn(3, 1, 28, 28)
    stem = s2.stem(x)
    assert stem.shape[-2:] == (14, 14)
    # a stride-2 conv is the stride-1 conv sampled at every other output position
    torch.testing.assert_close(stem, plain.stem(x)[..., ::2, ::2])
    assert s2(x).shape == (3, s2.out_dim) == (3, plain.out_dim)
