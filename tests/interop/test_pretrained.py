"""--init-backbone weights (torchvision, timm, DINO or selfclassifier checkpoint naming) load
exactly into our backbones; --freeze-backbone's cached features: tests/train/test_features.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from selfclassifier.interop.pretrained import load_backbone_weights, read_state_dict
from selfclassifier.model.backbones import ViTTrunk, build_backbone
from selfclassifier.storage import CheckpointError
from tests.helpers.checkpoints import randomise_bn


def test_torchvision_resnet_weights_load_exactly(tmp_path):
    torch.manual_seed(0)
    tv = randomise_bn(torchvision.models.resnet18())
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}},
               tmp_path / "r18.pth.tar")  # fmt: skip
    ours = build_backbone("resnet18", 3)
    report = load_backbone_weights(ours, tmp_path / "r18.pth.tar")
    assert report.prefix == "module." and report.ignored == 2  # fc.weight, fc.bias
    tv.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), tv(x))


def test_rgb_weights_become_grayscale_weights(tmp_path):
    tv = randomise_bn(torchvision.models.resnet18())
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    ours = build_backbone("resnet18", 1)
    report = load_backbone_weights(ours, tmp_path / "r18.pth")
    assert any("conv1.weight" in a for a in report.adapted)
    tv.fc = nn.Identity()
    gray = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # summing conv1 over RGB == feeding the gray image as R=G=B
        torch.testing.assert_close(ours.eval()(gray), tv(gray.expand(-1, 3, -1, -1)))


def test_wrong_architecture_is_one_clear_error(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"conv1.weight.*resnet18_small|not found"):
        load_backbone_weights(build_backbone("resnet18_small", 3), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="tensors not found"):
        load_backbone_weights(build_backbone("resnet34", 3), tmp_path / "r18.pth")


def _tiny_tv_vit() -> ViTTrunk:
    net = torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128
    )
    return ViTTrunk(net, 3)


def test_timm_vit_naming_maps_to_torchvision(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0
    ).eval()
    with torch.no_grad():
        ref.pos_embed.normal_()  # timm starts it at zero-ish; make it count
        ref.cls_token.normal_()
    # as DINO stores it: {"teacher": {"backbone.<timm names>": ...}}
    torch.save({"teacher": {f"backbone.{k}": v for k, v in ref.state_dict().items()}},
               tmp_path / "dino.pth")  # fmt: skip
    ours = _tiny_tv_vit()
    report = load_backbone_weights(ours, tmp_path / "dino.pth")
    assert report.naming == "timm" and report.prefix == "backbone."
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=1e-5, rtol=1e-5)


def test_timm_resnet_and_selfclassifier_checkpoints_load(tmp_path):
    timm = pytest.importorskip("timm")
    ref = randomise_bn(timm.create_model("resnet18", pretrained=False, num_classes=0))
    torch.save(ref.state_dict(), tmp_path / "timm_r18.pth")
    ours = build_backbone("resnet18", 3)
    load_backbone_weights(ours, tmp_path / "timm_r18.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=1e-5, rtol=1e-5)
    # a selfclassifier checkpoint: the backbone sits under model -> backbone.net.*
    from selfclassifier.storage import FORMAT

    torch.save({"format": FORMAT, "config": {}, "model": {f"backbone.net.{k}": v for k, v in
               ours.net.state_dict().items()} | {"heads.0.weight": torch.zeros(3, 4)}},
               tmp_path / "ckpt.pt")  # fmt: skip
    again = build_backbone("resnet18", 3)
    report = load_backbone_weights(again, tmp_path / "ckpt.pt")
    assert report.prefix == "backbone.net." and report.ignored == 1
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), ours(x))


def test_training_checkpoints_with_foreign_objects_load(tmp_path):
    """timm / torchvision / DINO training checkpoints pickle args, numpy scalars and paths."""
    import argparse
    from pathlib import PurePosixPath

    tv = randomise_bn(torchvision.models.resnet18())
    args = argparse.Namespace(lr=0.1, mean=(0.5, 0.5), output=PurePosixPath("/runs/x"))
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": tv.state_dict(), "args": args,
                "metric": np.float64(71.25), "optimizer": torch.optim.SGD(tv.parameters(), 0.1)
                .state_dict()}, tmp_path / "timm_train.pth.tar")  # fmt: skip
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "timm_train.pth.tar")
    ours = build_backbone("resnet18", 3)
    load_backbone_weights(ours, tmp_path / "timm_train.pth.tar")
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(ours.net.state_dict()[k], v), k


def test_safetensors_files_are_read(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    sd = {k: v.contiguous() for k, v in _tiny_tv_vit().net.state_dict().items()}
    st.save_file(sd, str(tmp_path / "w.safetensors"))
    assert set(read_state_dict(tmp_path / "w.safetensors")) == set(sd)
