"""--init-backbone (torchvision, timm or checkpoint naming) and --freeze-backbone (cached)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from selfclassifier.config import load_config
from selfclassifier.data.sources import build_dataset
from selfclassifier.interop.pretrained import load_backbone_weights, read_state_dict
from selfclassifier.model.backbones import ViTTrunk, build_backbone
from selfclassifier.storage import CheckpointError, load_checkpoint
from selfclassifier.train.features import draw_views, nearest_neighbours
from selfclassifier.views import eval_transform


def _randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def test_torchvision_resnet_weights_load_exactly(tmp_path):
    torch.manual_seed(0)
    tv = _randomise_bn(torchvision.models.resnet18())
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
    tv = _randomise_bn(torchvision.models.resnet18())
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
    ref = _randomise_bn(timm.create_model("resnet18", pretrained=False, num_classes=0))
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

    tv = _randomise_bn(torchvision.models.resnet18())
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


def test_view_drawing_is_distinct_and_neighbours_exclude_self():
    feats = torch.arange(5 * 6 * 2, dtype=torch.float16).reshape(5, 6, 2)
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 3, 5])
    views = draw_views(feats, idx, 3, g)
    stacked = torch.stack(views)  # (3 views, B, D)
    for b in range(3):
        rows = {tuple(v.tolist()) for v in stacked[:, b]}
        assert len(rows) == 3  # three different cached views of the same sample
        assert all(tuple(r) in {tuple(feats[c, idx[b]].float().tolist()) for c in range(5)}
                   for r in rows)  # fmt: skip
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    nb = nearest_neighbours(points, 1)
    assert nb.squeeze(1).tolist() == [1, 0, 3, 2]
    # TEMI pairing: the last view is one of a neighbour's cached views, the first the sample's
    neighbours = torch.tensor([[1], [2], [3], [4], [5], [0]])
    first, last = draw_views(feats, idx, 2, g, neighbours)
    for b, i in enumerate(idx.tolist()):
        own = {tuple(feats[c, i].float().tolist()) for c in range(5)}
        theirs = {tuple(feats[c, neighbours[i, 0]].float().tolist()) for c in range(5)}
        assert tuple(first[b].tolist()) in own and tuple(last[b].tolist()) in theirs


# ----------------------------------------------------------------------------- through the CLI


def _image_folder(root, n_per_class=16, size=16):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["dark", "bright"]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            base = 40 + 150 * c
            arr = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def _train(args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "selfclassifier", "train", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_init_and_freeze_backbone_train_on_cached_features(tmp_path):
    data = _image_folder(tmp_path / "imgs")
    torch.manual_seed(1)
    tv = _randomise_bn(torchvision.models.resnet18())
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "run"
    common = [
        "--data", str(data), "--out", str(out), "--batch-size", "16", "--workers", "0",
        "--init-backbone", str(tmp_path / "r18.pth"), "--freeze-backbone",
        "--set", "model.backbone=resnet18", "--set", "model.heads=[2,4]",
        "--set", "model.hidden_dim=32", "--set", "model.out_dim=16",
        "--set", "augment.global_size=16", "--set", "augment.local_crops=0",
        "--set", "augment.pipeline=classic", "--set", "optim.warmup_epochs=0",
        "--set", "train.feature_views=2",
    ]  # fmt: skip
    proc = _train([*common, "--epochs", "2"])
    assert proc.returncode == 0, proc.stderr
    assert "backbone initialised from" in proc.stderr and "cached backbone features" in proc.stderr

    ckpt = load_checkpoint(out / "checkpoint.pt")
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):  # frozen: exactly the weights from disk
            assert torch.equal(ckpt["model"][f"backbone.net.{k}"], v), k
    cache = torch.load(out / "features.pt", weights_only=True)
    assert cache["features"].shape == (1 + 2, 32, 512)
    # view 0 is the un-augmented image through the saved weights
    cfg = load_config(None, {"augment": {"global_size": 16}})
    ds = build_dataset(str(data))
    first = eval_transform(cfg.augment, 3, from_files=True)(ds[0][0])
    tv.fc = nn.Identity()
    with torch.no_grad():
        expected = tv(first[None])[0]
    torch.testing.assert_close(cache["features"][0, 0].float(), expected, atol=2e-2, rtol=1e-2)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch_end"] for r in records if "epoch_end" in r] == [0, 1]
    assert json.loads((out / "eval.json").read_text())["heads"][0]["classes"] == 2

    proc = _train([*common, "--epochs", "3"])  # resumes; the cache is reused
    assert proc.returncode == 0, proc.stderr
    assert "using cached backbone features" in proc.stderr
    assert "backbone initialised from" not in proc.stderr  # resume restores, no re-init


def test_resuming_a_weights_only_checkpoint_is_a_clear_error(tmp_path, capsys):
    from selfclassifier.cli import main
    from selfclassifier.storage import FORMAT, save_atomic

    cfg = load_config("digits")
    out = tmp_path / "run"
    out.mkdir()
    save_atomic({"format": FORMAT, "config": cfg.to_dict(), "model": {}}, out / "checkpoint.pt")
    assert main(["train", "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "weights only" in err
    assert len(err.strip().splitlines()) == 1
