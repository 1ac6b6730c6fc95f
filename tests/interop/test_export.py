"""selfclassifier export: torchvision backbone weights, ONNX (vs onnxruntime), TorchScript."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from selfclassifier.interop.export import DeployModel, export_onnx, export_torchscript
from selfclassifier.model.build import model_from_checkpoint
from tests.helpers import run_cli
from tests.helpers.checkpoints import make_checkpoint


def test_torchvision_export_loads_strictly_into_torchvision(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet18", 3, 32)
    out = tmp_path / "backbone.pth"
    code, stdout, err = run_cli("export", ckpt, "--format", "torchvision", "--out", out)
    assert code == 0, err
    assert "torchvision.models.resnet18()" in stdout
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model, _, _ = model_from_checkpoint(ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model.features(x))


def test_torchvision_export_says_how_to_standardise_images(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet18", 3, 32, input_norm="image")
    out = tmp_path / "backbone.pth"
    code, stdout, err = run_cli("export", ckpt, "--format", "torchvision", "--out", out)
    assert code == 0, err
    assert "model.input_norm=image" in stdout + err
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model, _, _ = model_from_checkpoint(ckpt)
    x = torch.randn(2, 3, 32, 32)
    per_image = (x - x.mean((1, 2, 3), keepdim=True)) / x.std(
        (1, 2, 3), keepdim=True, unbiased=False
    )
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(per_image), model.features(x), atol=1e-4, rtol=1e-4)


def test_torchvision_export_says_how_to_make_sobel_input(tmp_path):
    from selfclassifier.model.classifier import sobel_images

    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet18", 3, 32, input_norm="sobel")
    out = tmp_path / "backbone.pth"
    code, stdout, err = run_cli("export", ckpt, "--format", "torchvision", "--out", out)
    assert code == 0, err
    assert "model.input_norm=sobel" in stdout + err and "2 channel(s)" in stdout + err
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.conv1 = nn.Conv2d(2, 64, 7, 2, 3, bias=False)
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model, _, _ = model_from_checkpoint(ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(sobel_images(x)), model.features(x))


def test_torchvision_export_refuses_backbones_torchvision_lacks(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8)
    code, _, err = run_cli("export", ckpt, "--format", "torchvision", "--out", tmp_path / "x")
    assert code == 2
    assert err.startswith("error:") and "resnet20" in err and len(err.strip().splitlines()) == 1


MODEL_VARIANTS = [
    {"input_norm": "none"},
    {"input_norm": "image"},
    {"input_norm": "sobel"},
    {"head_projection": "per_head"},
]


@pytest.mark.parametrize("model_keys", MODEL_VARIANTS, ids=lambda k: "-".join(k.values()))
def test_onnx_export_matches_pytorch_with_dynamic_batch(tmp_path, model_keys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8, **model_keys)
    out = tmp_path / "model.onnx"
    code, _, err = run_cli("export", ckpt, "--format", "onnx", "--out", out)
    assert code == 0, err
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
        assert [g.shape for g in got] == [(batch, 10), (batch, 20), (batch, model.embed_dim)]
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
@pytest.mark.parametrize("model_keys", MODEL_VARIANTS, ids=lambda k: "-".join(k.values()))
def test_torchscript_export_matches_pytorch(tmp_path, model_keys):
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8, **model_keys)
    model, cfg, _ = model_from_checkpoint(ckpt)
    names = export_torchscript(model, cfg, tmp_path / "model.ts", channels=1, size=8)
    assert names == ["probs_0", "probs_1", "embedding"]
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        for g, w in zip(loaded(x), DeployModel(model, cfg.loss.row_tau)(x), strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
