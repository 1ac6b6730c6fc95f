"""``MultiCropForward``, what training runs (and DDP wraps), equals the authors' code
(elad-amrani/self-classifier, src/model.py, src/loss.py, src/utils.py, src/train.py), restated
here in our own words: the same network, views, NN queue and loss give the same embeddings,
loss and gradients. docs/FIDELITY.md lists every setting; the optimiser and schedule are
checked in tests/test_optim.py, the queue in tests/test_queue.py, the projection's
initialisation in tests/model/test_classifier.py, the presets in tests/test_config.py.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from selfclassifier.loss import SelfClassifierLoss
from selfclassifier.model import SelfClassifier
from selfclassifier.model.backbones import build_backbone
from selfclassifier.queue import NNQueue
from selfclassifier.train.forward import MultiCropForward

HEADS = (10, 20)
HIDDEN, DIM = 64, 16
BATCH = 8


# ----------------------------------------------------------------------------- their network


def _weight_norm(linear: nn.Linear) -> nn.Linear:
    with warnings.catch_warnings():  # deprecated in favour of parametrizations, same maths
        warnings.simplefilter("ignore")
        return nn.utils.weight_norm(linear)


class AuthorsModel(nn.Module):
    """src/model.py's Model with use_bn, num_hidden=2, LeakyReLU: backbone once per run of
    equal-size views, then the MLP ONCE over all views' features, L2-normalised with eps 1e-7;
    weight_norm(Linear(bias=False)) heads applied to all views concatenated."""

    def __init__(self):
        super().__init__()
        self.backbone = torchvision.models.resnet18(weights=None)
        self.backbone.fc = nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(512, HIDDEN),  # a bias before BN, as theirs
            nn.BatchNorm1d(HIDDEN),
            nn.LeakyReLU(inplace=True),
            nn.Linear(HIDDEN, DIM),
        )
        self.cls = nn.ModuleList(_weight_norm(nn.Linear(DIM, c, bias=False)) for c in HEADS)

    def embeddings(self, views):
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-1] == views[start].shape[-1]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))
            start = end
        emb = F.normalize(self.mlp(torch.cat(feats)), p=2, dim=1, eps=1e-7)
        return [emb[i : i + BATCH] for i in range(0, len(emb), BATCH)]

    def logits(self, embeddings):
        x = torch.cat(embeddings)
        return [[out[i : i + BATCH] for i in range(0, len(out), BATCH)] for out in
                (head(x) for head in self.cls)]  # fmt: skip


def authors_get_nn(queue, queue_indices, x, x_indices):
    """utils.NNQueue.get_nn: top-2 so that a sample never gets its own stale entry."""
    _, q_idx = (x @ queue.T).topk(2)
    sample = queue_indices[q_idx]
    pick = torch.where(x_indices == sample[:, 0], q_idx[:, 1], q_idx[:, 0])
    return queue[pick]


def authors_loss(out, row_tau=0.1, col_tau=0.05, eps=1e-12):
    """src/loss.py's Loss in one process (AllGather and keep_current are identities)."""
    total, terms = 0.0, 0
    for cls_out in out:
        cls_out = [x.float() for x in cls_out]
        const = cls_out[0].shape[0] / cls_out[0].shape[1]
        targets = [F.normalize(F.softmax(v / col_tau, dim=0), p=1, dim=1, eps=eps) for v in cls_out]
        for j, view_j in enumerate(cls_out):
            pred = F.normalize(F.softmax(view_j / row_tau, dim=1), p=1, dim=0, eps=eps)
            log_pred = torch.log(const * pred + eps)
            for i, target in enumerate(targets):
                if i == j or (i >= 2 and j >= 2):
                    continue
                total = total - torch.mean(torch.sum(target * log_pred, dim=1))
                terms += 1
    return total / terms


# ----------------------------------------------------------------------------- ours, copied over


def _ours_and_theirs():
    torch.manual_seed(0)
    ours = SelfClassifier(
        build_backbone("resnet18", 3, 64), heads=HEADS, hidden_dim=HIDDEN, out_dim=DIM
    )
    with torch.no_grad():  # a learnt norm g that is no longer 1
        for head in ours.heads:
            head.scale.uniform_(0.5, 1.5)
    theirs = AuthorsModel()
    theirs.backbone.load_state_dict(
        {
            k.removeprefix("backbone.net."): v
            for k, v in ours.state_dict().items()
            if k.startswith("backbone.net.")
        }  # fmt: skip
    )
    lin0, bn, _, lin1 = ours.projection
    with torch.no_grad():
        theirs.mlp[0].weight.copy_(lin0.weight)
        theirs.mlp[0].bias.normal_()  # BN removes it in training mode
        theirs.mlp[1].load_state_dict(bn.state_dict())
        theirs.mlp[3].load_state_dict(lin1.state_dict())
        for head, cls in zip(ours.heads, theirs.cls, strict=True):
            cls.weight_v.copy_(head.weight)
            cls.weight_g.copy_(head.scale.reshape(-1, 1))
    return ours.train(), theirs.train()


def _param_pairs(ours, theirs):
    """(name, our parameter, their parameter) for every trainable tensor of ours."""
    pairs = [(f"backbone.{k}", p, dict(theirs.backbone.named_parameters())[k])
             for k, p in ours.backbone.net.named_parameters()]  # fmt: skip
    lin0, bn, _, lin1 = ours.projection
    pairs += [
        ("mlp.0.weight", lin0.weight, theirs.mlp[0].weight),
        ("mlp.1.weight", bn.weight, theirs.mlp[1].weight),
        ("mlp.1.bias", bn.bias, theirs.mlp[1].bias),
        ("mlp.3.weight", lin1.weight, theirs.mlp[3].weight),
        ("mlp.3.bias", lin1.bias, theirs.mlp[3].bias),
    ]
    for k, (head, cls) in enumerate(zip(ours.heads, theirs.cls, strict=True)):
        pairs += [
            (f"cls_{k}.v", head.weight, cls.weight_v),
            (f"cls_{k}.g", head.scale, cls.weight_g),
        ]
    return pairs


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _views():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, 3, 64, 64, generator=g) for _ in range(2)] + [
        torch.randn(BATCH, 3, 32, 32, generator=g) for _ in range(4)
    ]


@pytest.mark.parametrize("with_queue", [False, True], ids=["plain", "nn-queue"])
def test_training_step_equals_the_authors_code(with_queue):
    """ResNet-18, 2 global + 4 local views, train mode, learnt g != 1: embeddings, loss and
    every gradient equal to 1e-5 relative (the MLP bias before BN, which only they have, gets
    a zero gradient)."""
    ours, theirs = _ours_and_theirs()
    views = _views()
    queue, indices = None, torch.arange(BATCH) * 3
    if with_queue:
        queue = NNQueue(size=4 * BATCH, dim=DIM)
        g = torch.Generator().manual_seed(2)
        entries = F.normalize(torch.randn(4 * BATCH, DIM, generator=g), dim=1)
        stored_indices = torch.arange(4 * BATCH)  # holds the batch's own images too
        queue.push(entries, indices=stored_indices)
        assert queue.full

    logits, first, _ = MultiCropForward(ours)(views, queue, indices)
    loss = SelfClassifierLoss(row_tau=0.1, col_tau=0.05, eps=1e-12)(logits)
    loss.backward()

    their_emb = theirs.embeddings(views)
    assert _rel(first, their_emb[0]) < 1e-5
    our_emb = ours.embed_views(views)
    for e_ours, e_theirs in zip(our_emb, their_emb, strict=True):
        assert _rel(e_ours, e_theirs) < 1e-5
    if with_queue:
        their_emb[0] = authors_get_nn(entries, stored_indices, their_emb[0].detach(), indices)
    their_logits = theirs.logits(their_emb)
    for head_ours, head_theirs in zip(logits, their_logits, strict=True):
        for a, b in zip(head_ours, head_theirs, strict=True):
            assert _rel(a, b) < 1e-5
    their_loss = authors_loss(their_logits)
    their_loss.backward()
    assert abs(loss.item() - their_loss.item()) <= 1e-5 * abs(their_loss.item())

    for name, mine, other in _param_pairs(ours, theirs):
        assert mine.grad is not None and other.grad is not None, name
        assert _rel(mine.grad, other.grad) < 1e-5, (name, _rel(mine.grad, other.grad))
    bias_grad = theirs.mlp[0].bias.grad.abs().max().item()
    assert bias_grad < 1e-6 * theirs.mlp[0].weight.grad.abs().max().item() + 1e-9


def test_heads_run_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = SelfClassifier(build_backbone("resnet20", 1), heads=(5,), hidden_dim=16, out_dim=8)
    views = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp32_logits, first, _ = MultiCropForward(model, heads_fp32=True)(views)
        bf16_logits, _, _ = MultiCropForward(model, heads_fp32=False)(views)
    assert fp32_logits[0][0].dtype == torch.float32
    assert bf16_logits[0][0].dtype == torch.bfloat16
    expected = model.heads[0](first.float())
    torch.testing.assert_close(fp32_logits[0][0], expected)
