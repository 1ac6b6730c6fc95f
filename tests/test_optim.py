import pytest
import torch

from selfclassifier.optim import LARS, build_optimizer, cosine_lr, parameter_groups


def test_cosine_schedule_warmup_and_end():
    lrs = [cosine_lr(s, 100, 10, 1.0, final_lr=0.1) for s in range(101)]
    assert lrs[0] == 0.0 and abs(lrs[10] - 1.0) < 1e-12
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))  # cosine falls
    assert abs(lrs[100] - 0.1) < 1e-12


def test_parameter_groups_exclude_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    decay, no_decay = parameter_groups(model, 0.1, exclude_norm_bias=True)
    assert [p.ndim for p in decay["params"]] == [2]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    assert len(parameter_groups(model, 0.1, exclude_norm_bias=False)) == 1


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_optimizers_reduce_a_quadratic(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    x, y = torch.randn(64, 5), torch.randn(64, 1)
    opt = build_optimizer(model, name, lr=0.05 if name != "lars" else 1.0, weight_decay=0.0)
    first = None
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_lars_scales_update_by_trust_ratio():
    w = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = LARS([{"params": [w]}], lr=1.0, momentum=0.0, trust_coefficient=0.01)
    w.grad = torch.full((4,), 100.0)
    opt.step()
    # update = lr * trust * ||w|| / ||g|| * g = 0.01 * 4/200 * 100 = 0.02 per element
    torch.testing.assert_close(w.detach(), torch.full((4,), 1.98))


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="sgd, adamw, lars"):
        build_optimizer(torch.nn.Linear(2, 2), "rmsprop", 0.1, 0.0)
