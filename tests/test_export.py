"""selfclassifier export: torchvision backbone weights, ONNX (vs onnxruntime), TorchScript."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from selfclassifier.cli import main
from selfclassifier.config import load_config
from selfclassifier.interop.export import DeployModel, export_onnx, export_torchscript
from selfclassifier.model.build import build_model, model_from_checkpoint
from selfclassifier.storage import FORMAT, save_atomic


def make_checkpoint(path, backbone: str, channels: int, size: int, heads=(10, 20)):
    """A checkpoint as train writes it, with random weights and non-trivial BN statistics."""
    cfg = load_config(
        "digits",
        {
            "model": {"backbone": backbone, "heads": list(heads), "hidden_dim": 32, "out_dim": 16},
            "augment": {"global_size": size},
        },
    )
    torch.manual_seed(0)
    model = build_model(cfg, channels, size)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    ckpt = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "data": {"channels": channels, "image_size": size, "classes": [], "in_memory": True},
    }
    save_atomic(ckpt, path)
    return path


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "selfclassifier", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_torchvision_export_loads_strictly_into_torchvision(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet18", 3, 32)
    out = tmp_path / "backbone.pth"
    proc = _cli("export", ckpt, "--format", "torchvision", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "torchvision.models.resnet18()" in proc.stdout
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model, _, _ = model_from_checkpoint(ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model.features(x))


def test_torchvision_export_refuses_backbones_torchvision_lacks(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8)
    assert main(["export", str(ckpt), "--format", "torchvision", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "resnet20" in err and len(err.strip().splitlines()) == 1


def test_onnx_export_matches_pytorch_with_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8)
    out = tmp_path / "model.onnx"
    proc = _cli("export", ckpt, "--format", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probs_0", "probs_1", "embedding"]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["heads"] == "10,20" and meta["mean"] == "0.5"
    model, cfg, _ = model_from_checkpoint(ckpt)
    deploy = DeployModel(model, cfg.loss.row_tau).eval()
    for batch in (3, 7):
        x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want = deploy(x)
        assert [g.shape for g in got] == [(batch, 10), (batch, 20), (batch, 16)]
        for g, w in zip(got, want, strict=True):
            assert float((torch.from_numpy(g) - w).abs().max()) < 1e-4


def test_onnx_legacy_exporter_also_gives_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8, heads=(4,))
    model, cfg, _ = model_from_checkpoint(ckpt)
    export_onnx(model, cfg, tmp_path / "m.onnx", channels=1, size=8, dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(9, 1, 8, 8)
    probs, emb = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = DeployModel(model, cfg.loss.row_tau)(x)
    assert float((torch.from_numpy(probs) - want[0]).abs().max()) < 1e-4
    assert float((torch.from_numpy(emb) - want[1]).abs().max()) < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_export_matches_pytorch(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8)
    model, cfg, _ = model_from_checkpoint(ckpt)
    names = export_torchscript(model, cfg, tmp_path / "model.ts", channels=1, size=8)
    assert names == ["probs_0", "probs_1", "embedding"]
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        for g, w in zip(loaded(x), DeployModel(model, cfg.loss.row_tau)(x), strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
