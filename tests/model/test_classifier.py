"""``SelfClassifier``: backbone -> MLP projection -> L2-normalised embedding -> heads."""

import pytest
import torch

from selfclassifier.model import SelfClassifier
from selfclassifier.model.backbones import build_backbone
from selfclassifier.model.classifier import (
    GroupedLinear,
    NormalizedLinear,
    projection_mlp,
    sobel_images,
    standardize_images,
)


def tiny_model(heads=(4, 6), channels=1, freeze_heads=False, batch_norm=True):
    return SelfClassifier(
        build_backbone("resnet20", channels),
        heads=heads,
        hidden_dim=16,
        out_dim=8,
        batch_norm=batch_norm,
        freeze_heads=freeze_heads,
    )


def test_heads_are_unit_norm_and_bias_free():
    head = NormalizedLinear(8, 5, norm="fixed")
    with torch.no_grad():
        head.weight.mul_(7.0)
    x = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    logits = head(x)
    assert logits.abs().max() <= 1.0 + 1e-6  # cosine similarities
    assert not any("bias" in n for n, _ in head.named_parameters())


def test_embed_is_normalised_and_classify_matches_forward():
    model = tiny_model().eval()
    x = torch.randn(5, 1, 8, 8)
    e = model.embed(x)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))
    for a, b in zip(model.classify(e), model(x), strict=True):
        torch.testing.assert_close(a, b)
    assert [t.shape[1] for t in model(x)] == [4, 6]


def test_every_trainable_parameter_gets_a_gradient():
    model = tiny_model()
    out = model(torch.randn(4, 1, 8, 8))
    sum(o.square().sum() for o in out).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_heads_have_no_gradient():
    model = tiny_model(freeze_heads=True)
    assert not any(p.requires_grad for p in model.heads.parameters())


def test_learnt_head_norm_scales_each_class_cosine():
    head = NormalizedLinear(8, 5)  # learnt: weight_norm with g trained, starting at 1
    x = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    cosine = head(x).detach()
    with torch.no_grad():
        head.scale.copy_(torch.arange(1.0, 6.0))
    torch.testing.assert_close(head(x), cosine * torch.arange(1.0, 6.0))
    head(x).sum().backward()
    assert head.scale.grad is not None and head.weight.grad is not None


@pytest.mark.parametrize("layers,bn", [(1, True), (2, False), (3, True)])
def test_projection_mlp_shapes(layers, bn):
    mlp = projection_mlp(12, 20, 7, layers=layers, batch_norm=bn)
    assert mlp(torch.randn(4, 12)).shape == (4, 7)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in mlp) == (layers - 1 if bn else 0)


def test_embed_views_groups_by_resolution(monkeypatch):
    model = tiny_model().eval()
    calls = []
    orig = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward", lambda x: calls.append(x.shape) or orig(x))
    views = [torch.randn(3, 1, 8, 8)] * 2 + [torch.randn(3, 1, 6, 6)] * 4
    embs = model.embed_views(views)
    assert len(embs) == 6 and all(e.shape == (3, 8) for e in embs)
    assert calls == [(6, 1, 8, 8), (12, 1, 6, 6)]
    # grouping does not change the result (eval mode: BN uses running statistics)
    torch.testing.assert_close(embs[0], model.embed(views[0]))


def test_joint_projection_pools_batchnorm_over_all_views():
    torch.manual_seed(0)
    model = SelfClassifier(build_backbone("resnet20", 1), heads=(5,), hidden_dim=16, out_dim=8)
    views = [torch.randn(4, 1, 8, 8) for _ in range(2)] + [torch.randn(4, 1, 6, 6)]
    joint = model.embed_views(views)
    feats = [model.features(torch.cat(views[:2])), model.features(views[2])]
    pooled = model.project(torch.cat(feats))
    torch.testing.assert_close(torch.cat(joint), pooled)
    model.joint_projection = False
    split = model.embed_views(views)
    torch.testing.assert_close(torch.cat(split[:2]), model.project(feats[0]))
    assert not torch.allclose(split[2], joint[2])  # BN saw another batch


def test_projection_starts_from_the_authors_initialisation():
    torch.manual_seed(0)
    model = SelfClassifier(build_backbone("resnet20", 1), heads=(5,), hidden_dim=512, out_dim=64)
    first = model.projection[0].weight
    assert abs(first.std().item() - 0.02) < 0.002 and first.abs().max() <= 2.0
    assert torch.all(model.projection[-1].bias == 0)
    assert all(torch.all(h.scale == 1) and h.scale.requires_grad for h in model.heads)


@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (3, 1, 8, 8), (2, 3, 5, 7)])
def test_standardized_images_ignore_each_images_brightness_and_contrast(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g)
    gain = torch.rand(shape[0], 1, 1, 1, generator=g) * 3 + 0.1
    offset = torch.randn(shape[0], 1, 1, 1, generator=g)
    z = standardize_images(x)
    torch.testing.assert_close(z.mean((1, 2, 3)), torch.zeros(shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        z.std((1, 2, 3), unbiased=False), torch.ones(shape[0]), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(standardize_images(x * gain + offset), z, atol=1e-3, rtol=1e-3)
    flat = standardize_images(torch.full(shape, 0.7))
    assert torch.isfinite(flat).all() and flat.abs().max() < 1e-3


def test_input_norm_makes_the_model_blind_to_per_image_brightness():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    gain = torch.tensor([0.3, 1.0, 2.0, 5.0]).view(4, 1, 1, 1)
    offset = torch.tensor([0.5, -1.0, 0.2, 2.0]).view(4, 1, 1, 1)
    for norm, blind in (("image", True), ("none", False)):
        model = SelfClassifier(
            build_backbone("resnet20", 1), heads=(4,), hidden_dim=16, out_dim=8, input_norm=norm
        ).eval()
        with torch.no_grad():
            same = torch.allclose(model.embed(x), model.embed(x * gain + offset), atol=1e-4)
        assert same is blind


@pytest.mark.parametrize("channels", [1, 3])
def test_sobel_images_are_edges_of_the_channel_mean(channels):
    """Two channels: d/dx and d/dy of the grey image; flat regions and any offset give 0
    inside the frame (the 3x3 filter's zero padding marks the border)."""
    x = torch.zeros(2, channels, 8, 8)
    x[0, :, :, 4:] = 1.0  # a vertical edge: only the horizontal gradient fires
    x[1, :, 4:, :] = 1.0  # a horizontal edge: only the vertical gradient fires
    e = sobel_images(x)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert e.shape == (2, 2, 8, 8)
    assert e[0, 0][1:-1, 3:5].abs().min() > 0 and e[0, 1][inner[2:]].abs().max() == 0
    assert e[1, 1][3:5, 1:-1].abs().min() > 0 and e[1, 0][inner[2:]].abs().max() == 0
    torch.testing.assert_close(sobel_images(x + 0.7)[inner], e[inner])
    assert sobel_images(torch.full((1, channels, 6, 6), 0.3))[inner].abs().max() < 1e-6


def test_sobel_input_norm_feeds_a_two_channel_backbone():
    """model.input_norm=sobel: build_model gives the backbone 2 input channels whatever the
    data's, and the model then runs on the data's images."""
    from selfclassifier.config import load_config
    from selfclassifier.model.build import build_model

    cfg = load_config("digits", {"model": {"input_norm": "sobel", "backbone": "resnet8"}})
    for channels in (1, 3):
        model = build_model(cfg, channels, 8).eval()
        assert model.backbone.stem[0].in_channels == 2
        with torch.no_grad():
            assert model.embed(torch.rand(3, channels, 8, 8)).shape == (3, model.embed_dim)


def test_unknown_input_norm_is_refused():
    with pytest.raises(ValueError, match="input_norm"):
        SelfClassifier(build_backbone("resnet20", 1), heads=(4,), input_norm="batch")


def per_head_model(heads=(4, 4, 6)):
    return SelfClassifier(
        build_backbone("resnet20", 1), heads=heads, hidden_dim=16, out_dim=8,
        head_projection="per_head",
    )  # fmt: skip


def test_per_head_embedding_is_unit_norm_and_each_head_reads_its_own_block():
    model = per_head_model().eval()
    x = torch.randn(5, 1, 8, 8)
    e = model.embed(x)
    assert e.shape == (5, model.embed_dim) == (5, 3 * 8)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))
    z = model.projection(model.features(x))  # (5, 3 * 8): block h is head h's MLP output
    for h, logits in enumerate(model(x)):
        own = torch.nn.functional.normalize(z[:, 8 * h : 8 * (h + 1)], dim=1)
        torch.testing.assert_close(logits, model.heads[h](own))
    # the whole embedding's cosine is the mean of the heads' cosines
    f = model.embed(torch.randn(5, 1, 8, 8))
    parts = zip(e.split(8, 1), f.split(8, 1), strict=True)
    mean_cos = torch.stack([(a * b).sum(1) * 3 for a, b in parts]).mean(0)
    torch.testing.assert_close((e * f).sum(1), mean_cos)


@pytest.mark.parametrize("shared_input", [True, False])
def test_grouped_linear_equals_separate_linear_layers(shared_input):
    groups, d_in, d_out = 3, 5, 4
    layer = GroupedLinear(d_in, d_out, groups, bias=True, shared_input=shared_input)
    x = torch.randn(6, d_in if shared_input else groups * d_in)
    want = []
    for g in range(groups):
        xg = x if shared_input else x[:, g * d_in : (g + 1) * d_in]
        want.append(torch.nn.functional.linear(xg, layer.weight[g], layer.bias[g]))
    torch.testing.assert_close(layer(x), torch.cat(want, 1))


def test_per_head_mlps_are_independent_candidates():
    """A loss on head 0 trains MLP 0 and the backbone, never another head's MLP."""
    model = per_head_model()
    model(torch.randn(6, 1, 8, 8))[0].square().sum().backward()
    grouped = [m for m in model.projection if isinstance(m, GroupedLinear)]
    assert len(grouped) == 2
    for layer in grouped:
        assert layer.weight.grad[0].abs().sum() > 0
        assert layer.weight.grad[1:].abs().sum() == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    # and two heads of one class count start from different MLPs
    assert not torch.equal(grouped[0].weight[0], grouped[0].weight[1])


def test_shared_projection_keeps_the_authors_layout():
    model = tiny_model()
    assert model.embed_dim == 8
    assert not any(isinstance(m, GroupedLinear) for m in model.projection)
    with pytest.raises(ValueError, match="head_projection"):
        SelfClassifier(build_backbone("resnet20", 1), heads=(4,), head_projection="each")
