"""Official Self-Classifier checkpoints -> ours: safe reading, architecture inference, logits."""

from __future__ import annotations

import collections
import os
import pickle
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from selfclassifier.interop.official import convert_official, infer_backbone
from selfclassifier.interop.torchfile import Opaque, read_tensors
from selfclassifier.model.build import model_from_checkpoint
from selfclassifier.storage import CheckpointError
from tests.helpers import run_cli

# ----------------------------------------------------------------------------- a fake release


class OfficialMLPHead(nn.Module):
    """The authors' MLPHead layout: Linear (with bias) [+ BN] + LeakyReLU ..., Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, nlayers: int, use_bn: bool):
        super().__init__()
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, out_dim)
            return
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden] * (nlayers - 1)
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers.append(nn.Linear(a, b))
            if use_bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.LeakyReLU(inplace=True))
        layers.append(nn.Linear(hidden, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return F.normalize(self.mlp(x), p=2, dim=1, eps=1e-7)


class OfficialModel(nn.Module):
    """backbone -> mlp_head -> cls_<k> = weight_norm(Linear(dim, C_k, bias=False))."""

    def __init__(self, heads, dim=16, hidden=32, nlayers=2, use_bn=True, gains=None):
        super().__init__()
        self.backbone = torchvision.models.resnet18()
        self.backbone.fc = nn.Identity()
        self.mlp_head = OfficialMLPHead(512, dim, hidden, nlayers, use_bn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the authors' (old) weight_norm
            for k, c in enumerate(heads):
                layer = nn.utils.weight_norm(nn.Linear(dim, c, bias=False))
                layer.weight_g.data.fill_(1)
                if gains is not None:
                    layer.weight_g.data.copy_(gains[k].reshape(-1, 1))
                setattr(self, f"cls_{k}", layer)
        self.num_cls = len(heads)

    def forward(self, x):
        z = self.mlp_head(self.backbone(x))
        return [getattr(self, f"cls_{k}")(z) for k in range(self.num_cls)]


def _randomise_norms(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)


def _run_exec_on_load(marker: str):
    """What a malicious pickle does: any code runs at load time (here: creates a file)."""
    return exec, (f"open({marker!r}, 'w').write('code ran')",)


def write_official(path, marker, heads=(7, 11), gains=None, nlayers=2, use_bn=True):
    """An official-layout checkpoint: module.* state dict, epoch/arch/optimizer, queue object.

    The queue is an instance of a class from a module that no longer exists when the file is
    read; ``payload`` is a pickle that would create ``marker`` if any code ran.
    """
    torch.manual_seed(0)
    model = OfficialModel(heads, nlayers=nlayers, use_bn=use_bn, gains=gains)
    _randomise_norms(model, 1)
    model.eval()
    utils = types.ModuleType("official_utils")

    class NNQueue:
        def __init__(self):
            self.queue = torch.randn(64, 16)
            self.ptr, self.full = 3, False

    class Payload:
        def __reduce__(self):
            return _run_exec_on_load(marker)

    for cls in (NNQueue, Payload):
        cls.__module__, cls.__qualname__ = "official_utils", cls.__name__
        setattr(utils, cls.__name__, cls)
    sys.modules["official_utils"] = utils
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        state = {f"module.{k}": v for k, v in model.state_dict().items()}
        torch.save(
            {
                "epoch": 800,
                "arch": "resnet18",
                "state_dict": state,
                "best_loss": 4.2,
                "nn_queue": NNQueue(),
                "payload": Payload(),
                "optimizer": optimizer.state_dict(),
            },
            path,
        )
    finally:
        del sys.modules["official_utils"]
    return model, state


def direct_logits(state: dict, x: torch.Tensor, nlayers=2, use_bn=True) -> list[torch.Tensor]:
    """Logits computed straight from the file's tensors (the equations, not our model)."""
    sd = {k.removeprefix("module."): v for k, v in state.items()}
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    net.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("backbone.")})
    h = net.eval()(x)
    if nlayers == 1:
        h = F.linear(h, sd["mlp_head.mlp.weight"], sd["mlp_head.mlp.bias"])
    else:
        h = F.linear(h, sd["mlp_head.mlp.0.weight"], sd["mlp_head.mlp.0.bias"])
        if use_bn:
            bn = {
                n: sd[f"mlp_head.mlp.1.{n}"]
                for n in ("running_mean", "running_var", "weight", "bias")
            }
            h = F.batch_norm(h, bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"])
        last = 3 if use_bn else 2
        h = F.linear(
            F.leaky_relu(h, 0.01),
            sd[f"mlp_head.mlp.{last}.weight"],
            sd[f"mlp_head.mlp.{last}.bias"],
        )
    z = F.normalize(h, dim=1)
    out = []
    k = 0
    while f"cls_{k}.weight_v" in sd:
        v, g = sd[f"cls_{k}.weight_v"], sd[f"cls_{k}.weight_g"]
        out.append(z @ (g * v / v.norm(dim=1, keepdim=True)).T)
        k += 1
    return out


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = tmp_path_factory.mktemp("official")
    marker = str(d / "code-ran.txt")
    gains = [torch.ones(7), torch.rand(11) + 0.5]  # head 1 learnt its weight_g
    model, state = write_official(d / "model_800ep.pth.tar", marker, gains=gains)
    return d, marker, model, state


def test_weights_only_refuses_the_file_but_read_tensors_runs_no_code(release):
    d, marker, _, state = release
    with pytest.raises(pickle.UnpicklingError):
        torch.load(d / "model_800ep.pth.tar", weights_only=True)
    obj, skipped = read_tensors(d / "model_800ep.pth.tar")
    assert not os.path.exists(marker)
    assert "official_utils.NNQueue" in skipped and "__builtin__.exec" in skipped
    assert isinstance(obj["nn_queue"], Opaque) and isinstance(obj["payload"], Opaque)
    assert obj["epoch"] == 800 and obj["arch"] == "resnet18"
    assert set(obj["state_dict"]) == set(state)
    for key, value in state.items():
        assert torch.equal(obj["state_dict"][key], value), key


def test_foreign_objects_keep_their_state_and_nothing_stays_allowlisted(release):
    d, _, _, _ = release
    allowed = set(torch.serialization.get_safe_globals())
    obj, _ = read_tensors(d / "model_800ep.pth.tar")
    queue = obj["nn_queue"]
    assert type(queue).__qualname__ == "official_utils.NNQueue"
    assert queue.state["ptr"] == 3 and queue.state["full"] is False
    assert queue.state["queue"].shape == (64, 16)
    assert obj["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert set(torch.serialization.get_safe_globals()) == allowed  # stubs registered only to load


class _Blocked:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize(
    ("content", "kwargs", "reason"),
    [
        ({"payload": _Blocked()}, {}, "module posix is blocked"),
        ({"meters": collections.defaultdict(list, a=[1.0])}, {}, "Can only SETITEM"),
        ({"epoch": 1}, {"pickle_protocol": 4}, "Unsupported operand"),
    ],
    ids=["os.system", "dict subclass", "protocol 4"],
)
def test_what_torch_refuses_is_one_line(tmp_path, content, kwargs, reason):
    """The cases torchfile.py's docstring lists: refused whole, with torch's reason."""
    path = tmp_path / "m.pth"
    state = {f"module.{k}": v for k, v in OfficialModel((5,)).state_dict().items()}
    torch.save({"state_dict": state, **content}, path, **kwargs)
    allowed = set(torch.serialization.get_safe_globals())
    for read in (read_tensors, convert_official):
        with pytest.raises(CheckpointError, match=reason) as err:
            read(path)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"refusing to read '{path}'")
    assert set(torch.serialization.get_safe_globals()) == allowed


def test_convert_cli_gives_the_logits_of_the_raw_tensors(release, tmp_path):
    d, marker, official, state = release
    out = tmp_path / "ours.pt"
    code, _, err = run_cli("convert", d / "model_800ep.pth.tar", "--out", out)
    assert code == 0, err
    assert "official_utils.NNQueue" in err and not os.path.exists(marker)
    model, cfg, ckpt = model_from_checkpoint(out)  # weights_only=True load
    assert cfg.model.backbone == "resnet18"
    assert cfg.model.heads == [7, 11] and cfg.model.out_dim == 16 and cfg.model.hidden_dim == 32
    assert cfg.model.batch_norm and cfg.model.mlp_layers == 2 and cfg.model.head_norm == "learnt"
    # their learnt g is the heads' norm, a parameter that training continues
    assert all(h.scale.requires_grad for h in model.heads)
    torch.testing.assert_close(model.heads[1].scale, state["module.cls_1.weight_g"].reshape(-1))
    assert ckpt["source"]["epoch"] == 800
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)
        direct = direct_logits(state, x)
        theirs = official(x)
    assert len(ours) == len(direct) == 2
    for a, b, c in zip(ours, direct, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("nlayers", "use_bn"), [(1, False), (3, False), (3, True)])
def test_mlp_shapes_are_inferred(tmp_path, nlayers, use_bn):
    _, state = write_official(tmp_path / "m.pth", str(tmp_path / "x"), heads=(5,),
                              nlayers=nlayers, use_bn=use_bn)  # fmt: skip
    ckpt, _ = convert_official(tmp_path / "m.pth")
    m = ckpt["config"]["model"]
    assert (m["mlp_layers"], m["batch_norm"], m["head_norm"]) == (nlayers, use_bn, "learnt")
    if nlayers == 1:
        x = torch.randn(2, 3, 32, 32)
        model, _, _ = _model_of(ckpt, tmp_path)
        with torch.no_grad():
            torch.testing.assert_close(model(x)[0], direct_logits(state, x, 1, False)[0],
                                       atol=1e-5, rtol=1e-5)  # fmt: skip


def _model_of(ckpt, tmp_path):
    from selfclassifier.storage import save_atomic

    save_atomic(ckpt, tmp_path / "c.pt")
    return model_from_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize(
    ("builder", "small", "expected"),
    [("resnet18", False, "resnet18"), ("resnet34", False, "resnet34"),
     ("resnet50", False, "resnet50"), ("resnet101", False, "resnet101"),
     ("resnet50", True, "resnet50_small")],
)  # fmt: skip
def test_resnet_depth_and_stem_come_from_the_tensors(builder, small, expected):
    with torch.device("meta"):
        net = getattr(torchvision.models, builder)()
        if small:
            net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    net.fc = nn.Identity()
    name, channels, size = infer_backbone(net.state_dict())
    assert (name, channels, size) == (expected, 1 if small else 3, 224)


def test_not_an_official_checkpoint_is_one_line_exit_2(tmp_path):
    bogus = tmp_path / "bogus.pth.tar"
    torch.save({"weights": torch.zeros(3)}, bogus)
    with pytest.raises(CheckpointError, match="not a Self-Classifier checkpoint"):
        convert_official(bogus)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, _, err = run_cli("convert", text, "--out", tmp_path / "o")
    assert code == 2
    assert err.startswith("error:") and "not a PyTorch zip checkpoint" in err
    assert len(err.strip().splitlines()) == 1


def test_dino_style_vit_backbones_convert(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=0
    ).eval()
    with torch.no_grad():
        vit.pos_embed.normal_(std=0.1)
    head = OfficialMLPHead(192, 16, 32, 2, True).eval()
    _randomise_norms(head, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cls = nn.utils.weight_norm(nn.Linear(16, 5, bias=False))
    cls.weight_g.data.fill_(1)
    state = {f"module.backbone.{k}": v for k, v in vit.state_dict().items()}
    state |= {f"module.mlp_head.{k}": v for k, v in head.state_dict().items()}
    state |= {f"module.cls_0.{k}": v for k, v in cls.state_dict().items()}
    torch.save({"epoch": 100, "arch": "vit_tiny", "state_dict": state}, tmp_path / "vit.pth")
    ckpt, _ = convert_official(tmp_path / "vit.pth")
    assert ckpt["config"]["model"]["backbone"] == "vit_tiny_patch16"
    model, _, _ = _model_of(ckpt, tmp_path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], cls(head(vit(x))), atol=1e-4, rtol=1e-4)
