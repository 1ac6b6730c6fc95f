"""Frozen-backbone mode (train/features.py): the backbone's features cached once per view,
views drawn from the cache (TEMI pairing with a neighbour's), and ``--init-backbone
--freeze-backbone`` end to end."""

from __future__ import annotations

import json

import torch
import torchvision
from torch import nn

from selfclassifier.config import load_config
from selfclassifier.data.sources import build_dataset
from selfclassifier.storage import load_checkpoint
from selfclassifier.train.features import draw_views, nearest_neighbours
from selfclassifier.views import eval_transform
from tests.helpers import TINY, heads, read_jsonl, run_cli
from tests.helpers.checkpoints import randomise_bn


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


def test_init_and_freeze_backbone_train_on_cached_features(tmp_path, make_images):
    data = make_images("imgs", classes=2, per_class=16, size=16)
    torch.manual_seed(1)
    tv = randomise_bn(torchvision.models.resnet18())
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "run"
    common = [
        "--data", str(data), "--out", str(out), "--batch-size", "16", "--workers", "0",
        "--init-backbone", str(tmp_path / "r18.pth"), "--freeze-backbone",
        *TINY, "--set", "model.backbone=resnet18", *heads(2, 4),
        "--set", "augment.global_size=16", "--set", "augment.local_crops=0",
        "--set", "augment.pipeline=classic", "--set", "optim.warmup_epochs=0",
        "--set", "train.feature_views=2",
    ]  # fmt: skip
    code, _, err = run_cli("train", *common, "--epochs", "2")
    assert code == 0, err
    assert "backbone initialised from" in err and "cached backbone features" in err

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
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch_end"] for r in records if "epoch_end" in r] == [0, 1]
    assert json.loads((out / "eval.json").read_text())["heads"][0]["classes"] == 2

    code, _, err = run_cli("train", *common, "--epochs", "3")  # resumes; the cache is reused
    assert code == 0, err
    assert "using cached backbone features" in err
    assert "backbone initialised from" not in err  # resume restores, no re-init
