"""Data parallelism equals one process on the global batch (CPU, gloo).

Two processes with half of the global batch each, wrapped the way training wraps them
(SyncBatchNorm + DDP), must give the loss, every parameter gradient and the NN queue of one
process holding the whole batch. The spawned run is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from selfclassifier import dist
from selfclassifier.loss import SelfClassifierLoss
from selfclassifier.model import SelfClassifier
from selfclassifier.queue import NNQueue
from selfclassifier.train.forward import MultiCropForward
from tests.helpers import one_thread, read_jsonl, run_cli, run_python

WORLD = 2
BATCH = 8  # global
HEADS = (3, 5, 7)
OUT_DIM = 16
STEPS = 3  # queue of 2 global batches: empty, half full, then the NN swap is used
SIZES = (8, 8, 6, 6)  # 2 global crops + 2 local crops
KINDS = ("no_bn", "sync_bn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _TinyConv(nn.Module):
    """A small backbone: conv (-> BatchNorm) -> ReLU -> 2x2 average pool -> (B, 32)."""

    out_dim = 32

    def __init__(self, batch_norm: bool):
        super().__init__()
        norm = [nn.BatchNorm2d(8)] if batch_norm else []
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=not batch_norm), *norm, nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _model(kind: str) -> SelfClassifier:
    torch.manual_seed(0)
    # sync_bn: BatchNorm in the backbone and the projection must see the global batch.
    bn = kind == "sync_bn"
    # float64: the comparison then tests the maths, not float32's summation order
    model = SelfClassifier(_TinyConv(bn), HEADS, hidden_dim=24, out_dim=OUT_DIM, batch_norm=bn)
    return model.double()


def _global_views(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(BATCH, 1, s, s, generator=g, dtype=torch.float64) for s in SIZES]


def _step(net: nn.Module, queue: NNQueue, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of this process's share of global batch ``step``.

    Returns (loss averaged over processes = the global batch's loss, view-1 embeddings).
    """
    b = BATCH // dist.world_size()
    mine = slice(dist.rank() * b, (dist.rank() + 1) * b)
    logits, first, _ = net([v[mine] for v in _global_views(step)], queue)
    loss = SelfClassifierLoss(row_tau=0.1, col_tau=0.05, num_global=2)(logits)
    loss.backward()
    return dist.all_reduce_mean(loss.detach()), first


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _train(kind: str) -> dict:
    """STEPS training steps, wrapped as training wraps the network (SyncBatchNorm + DDP).

    Records, before every step, the state it starts from (weights, BatchNorm statistics,
    queue), so that the one-process reference can take the same step from the same state.
    """
    model = _model(kind)
    net = dist.data_parallel(MultiCropForward(model), torch.device("cpu"), sync_bn=True)
    queue = NNQueue(size=2 * BATCH, dim=OUT_DIM)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = []
    for step in range(STEPS):
        start = {"model": _clone(model.state_dict()), "queue": _clone(queue.state_dict())}
        optimizer.zero_grad()
        loss, first = _step(net, queue, step)
        steps.append({"start": start, "loss": loss.item(), "grads": _grads(model)})
        optimizer.step()
        queue.push_global(first.float())
    return {
        "steps": steps,
        "queue": _clone(queue.state_dict()),
        "model": _clone(model.state_dict()),
    }


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def _reference(kind: str, start: dict, step: int) -> dict:
    """One process, whole global batch, from a recorded state: loss, gradients, next queue."""
    model = _model(kind)
    model.load_state_dict(start["model"])
    queue = NNQueue(size=2 * BATCH, dim=OUT_DIM)
    queue.load_state_dict(start["queue"])
    used_queue = queue.full
    loss, first = _step(MultiCropForward(model), queue, step)
    queue.push(first.float())
    return {"loss": loss.item(), "grads": _grads(model), "queue": queue.items, "used": used_queue}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    dist.init_from_env("cpu", timeout_s=60)
    try:
        result: dict = {kind: _train(kind) for kind in KINDS}
        # Control-flow decisions: rank 1 alone sees a problem, every rank must learn of it.
        result["any_rank"] = dist.any_rank(rank == 1, False)
        result["gather_object"] = dist.gather_object(f"rank {rank}")
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.shutdown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the 2 processes recorded, for both kinds of network."""
    out = tmp_path_factory.mktemp("dist")
    # fork: the workers inherit the imported modules instead of importing them again.
    ctx = mp.start_processes(
        _worker, (WORLD, free_port(), str(out)), nprocs=WORLD, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process run did not finish in 120 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def references(ranks) -> dict[str, list[dict]]:
    """Each recorded step retaken by this (undistributed) process on the whole batch."""
    assert dist.world_size() == 1
    return {
        kind: [_reference(kind, s["start"], k) for k, s in enumerate(ranks[0][kind]["steps"])]
        for kind in KINDS
    }


@pytest.mark.parametrize("kind", KINDS)
def test_loss_equals_one_process_on_the_global_batch(ranks, references, kind):
    for step, ref in enumerate(references[kind]):
        for r in range(WORLD):
            got = ranks[r][kind]["steps"][step]["loss"]
            assert abs(got - ref["loss"]) <= 1e-6 * abs(ref["loss"]), (step, r, got, ref["loss"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_gradient_equals_one_process_on_the_global_batch(ranks, references, kind):
    trainable = [n for n, p in _model(kind).named_parameters() if p.requires_grad]
    for step, ref in enumerate(references[kind]):
        assert sorted(ref["grads"]) == sorted(trainable)  # every parameter gets a gradient
        for r in range(WORLD):
            grads = ranks[r][kind]["steps"][step]["grads"]
            assert sorted(grads) == sorted(trainable)
            for name, g1 in ref["grads"].items():
                # 1e-5 relative per element, with an absolute floor at 1e-5 of the largest
                # entry so that entries that are ~0 compare on the parameter's own scale. In
                # float64 the summation order drops out (no_bn agrees to ~1e-12); what is left
                # is SyncBatchNorm's own CPU arithmetic (~1e-6 relative, measured).
                torch.testing.assert_close(
                    grads[name],
                    g1,
                    rtol=1e-5,
                    atol=1e-5 * float(g1.abs().max()),
                    msg=lambda m, n=name, s=step, r=r: f"step {s} rank {r} {n}: {m}",
                )


@pytest.mark.parametrize("kind", KINDS)
def test_nn_queue_is_identical_on_all_ranks(ranks, references, kind):
    # The last step looks its view-1 embeddings up in the (then full) queue.
    assert [ref["used"] for ref in references[kind]] == [False] * (STEPS - 1) + [True]
    for step in range(STEPS):
        after = (
            ranks[0][kind]["steps"][step + 1]["start"]["queue"]
            if step + 1 < STEPS
            else ranks[0][kind]["queue"]
        )
        for r in range(1, WORLD):
            theirs = (
                ranks[r][kind]["steps"][step + 1]["start"]["queue"]
                if step + 1 < STEPS
                else (ranks[r][kind]["queue"])
            )
            assert all(torch.equal(theirs[k], after[k]) for k in after)
        # ... and holds what one process would have enqueued, in the same order.
        torch.testing.assert_close(
            after["items"], references[kind][step]["queue"], rtol=0, atol=1e-5
        )
    assert int(ranks[0][kind]["queue"]["count"]) == 2 * BATCH


def test_ranks_hold_identical_weights_and_batchnorm_statistics(ranks):
    for kind in KINDS:
        for name, w in ranks[0][kind]["model"].items():
            for r in range(1, WORLD):
                assert torch.equal(ranks[r][kind]["model"][name], w), name


def test_decisions_and_objects_reach_every_rank(ranks):
    for r in range(WORLD):
        assert ranks[r]["any_rank"] == (True, False)
        assert ranks[r]["gather_object"] == [f"rank {k}" for k in range(WORLD)]


# ----------------------------------------------------------------------------- in one process


def test_collectives_are_identities_in_one_process():
    x = torch.randn(4, 3, requires_grad=True)
    assert dist.world_size() == 1 and dist.rank() == 0
    assert dist.gather_with_grad(x) is x
    assert dist.all_reduce_sum_with_grad(x) is x
    assert torch.equal(dist.local_rows(x, 4), x)
    assert dist.any_rank(True, False) == (True, False)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert dist.data_parallel(model, torch.device("cpu")) is model


def test_sync_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4, momentum=0.3))
    sync = dist.convert_sync_batchnorm(_copy(bn), "cpu")
    assert isinstance(sync[1], dist.SyncBatchNorm)
    assert sync.state_dict().keys() == bn.state_dict().keys()
    # The same parameter objects: an optimiser built before the conversion keeps working.
    plain = _copy(bn)
    before = list(plain.parameters())
    dist.convert_sync_batchnorm(plain, "cpu")
    assert all(a is b for a, b in zip(before, plain.parameters(), strict=True))
    x = torch.randn(6, 2, 5, 5)
    torch.testing.assert_close(sync(x), bn(x))
    bn.eval(), sync.eval()
    torch.testing.assert_close(sync(x), bn(x))


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def test_global_batch_that_does_not_divide_is_one_line_exit_2(monkeypatch, tmp_path):
    monkeypatch.setattr(dist, "world_size", lambda: 2)  # as if torchrun had started 2
    code, _, err = run_cli("train", "--out", tmp_path, "--batch-size", "63", "--epochs", "1")
    err = err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.batch_size=63" in err and "2 processes" in err and "multiple of 2" in err


# ----------------------------------------------------------------------------- end to end


def _train_args(out: Path, epochs: int) -> list[str]:
    """The command README.md's "Scaling out with torchrun" lists, at test size."""
    return [
        "train", "--data", "digits", "--split", "test",
        "--out", str(out), "--epochs", str(epochs), "--batch-size", "64",
        "--set", "model.hidden_dim=32", "--set", "model.out_dim=16",
        "--set", "augment.local_crops=2", "--set", "train.queue_size=256",
        "--set", "train.log_every=1",
    ]  # fmt: skip


def _one_process(args: list[str]) -> str:
    """The same command in one process (this one, one thread as the torchrun ranks); stderr."""
    with one_thread():
        code, _, err = run_cli(*args)
    assert code == 0, err[-3000:]
    return err


def _step_losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "step" in r]


def _epoch_ends(out: Path) -> list[int]:
    return [r["epoch_end"] for r in read_jsonl(out / "metrics.jsonl") if "epoch_end" in r]


@pytest.mark.slow
def test_torchrun_two_processes_then_resume_in_one(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun = [
        "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=test",
    ]  # fmt: skip
    proc = run_python(
        *torchrun, "-m", "selfclassifier", *_train_args(two, epochs=1),
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Exactly one checkpoint, written once, by rank 0 only.
    assert sorted(p.name for p in two.iterdir() if p.name != ".lock") == sorted(
        ["checkpoint.pt", "config.yaml", "eval.json", "metrics.jsonl"]
    )
    assert _epoch_ends(two) == [0]
    ckpt = torch.load(two / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["state"]["epoch"] == 1

    # The finished run, rerun in one process, only scores its heads again: the unsupervised
    # head selection (losses over the global batch) and the evaluation equal the 2-process ones.
    again = tmp_path / "again"
    shutil.copytree(two, again)
    _one_process(_train_args(again, epochs=1))
    by_two, by_one = (json.loads((d / "eval.json").read_text())["heads"] for d in (two, again))
    assert len({h["classes"] for h in by_one}) < len(by_one)  # the preset has candidate heads
    for a, b in zip(by_two, by_one, strict=True):
        assert abs(a["selection_loss"] - b["selection_loss"]) <= 1e-4 * b["selection_loss"]
        assert a["selected"] == b["selected"] and a["acc"] == b["acc"]

    # The same command in one process starts the same run: same data order, views and initial
    # weights give the same losses. (Later steps drift apart by float rounding, as they do
    # between two 1-process runs with different OMP_NUM_THREADS.)
    _one_process(_train_args(one, epochs=1))
    for got, ref in zip(_step_losses(two)[:2], _step_losses(one)[:2], strict=True):
        assert abs(got - ref) <= 1e-5 * abs(ref), (got, ref)

    # N -> M: the 2-process checkpoint resumes in one process.
    err = _one_process(_train_args(two, epochs=2))
    assert "resuming from" in err and "epoch 1, step 0" in err
    resumed = torch.load(two / "checkpoint.pt", weights_only=True)
    assert resumed["world_size"] == 1 and resumed["state"]["epoch"] == 2
    assert resumed["state"]["global_step"] == 2 * ckpt["state"]["global_step"]
    assert _epoch_ends(two) == [0, 1]
