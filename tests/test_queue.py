"""The nearest-neighbour queue: FIFO, the authors' top-2 look-up, state, and in training."""

import torch
import torch.nn.functional as F

from selfclassifier.queue import UNKNOWN, NNQueue


def test_fifo_overwrites_oldest_and_fills():
    q = NNQueue(size=5, dim=2)
    q.push(torch.ones(3, 2), indices=torch.tensor([0, 1, 2]))
    assert not q.full and int(q.count) == 3
    q.push(2 * torch.ones(3, 2), indices=torch.tensor([3, 4, 5]))
    assert q.full
    # slots 0,1,2 held ones, 3,4 twos, then one two wrapped into slot 0
    assert q.items[:, 0].tolist() == [2, 1, 1, 2, 2]
    assert q.indices.tolist() == [5, 1, 2, 3, 4]


def test_nearest_without_indices_is_the_most_similar_entry():
    torch.manual_seed(0)
    q = NNQueue(size=32, dim=8)
    stored = F.normalize(torch.randn(32, 8), dim=1)
    q.push(stored, labels=torch.arange(32) % 4)
    batch = F.normalize(torch.randn(6, 8), dim=1)
    nn, labels = q.nearest(batch)
    best = (batch @ stored.T).argmax(1)
    torch.testing.assert_close(nn, stored[best])
    assert labels.tolist() == (best % 4).tolist()


def test_the_query_never_gets_its_own_index_back():
    """The authors' top-2 rule: an image whose earlier embedding is in the queue (a later
    epoch) gets the second nearest entry, never its own."""
    torch.manual_seed(1)
    q = NNQueue(size=64, dim=8)
    stored = F.normalize(torch.randn(64, 8), dim=1)
    q.push(stored, indices=torch.arange(100, 164))
    queries = stored[:10] + 1e-3 * torch.randn(10, 8)  # the same images, slightly moved
    own = torch.arange(100, 110)
    nn, _ = q.nearest(F.normalize(queries, dim=1), indices=own)
    picked = torch.stack([(stored == row).all(1).nonzero()[0, 0] for row in nn])
    assert (picked + 100 != own).all()
    sims = F.normalize(queries, dim=1) @ stored.T
    assert picked.tolist() == sims.topk(2, dim=1).indices[:, 1].tolist()
    # without indices the stale own embedding would win
    nn_plain, _ = q.nearest(F.normalize(queries, dim=1))
    assert torch.equal(nn_plain, stored[:10])


def test_state_dict_round_trip_keeps_indices_and_labels():
    q = NNQueue(size=4, dim=3)
    q.push(torch.randn(6, 3), indices=torch.arange(6), labels=torch.arange(6) % 2)
    r = NNQueue(size=4, dim=3)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.items, q.items) and int(r.ptr) == int(q.ptr) and r.full
    assert torch.equal(r.indices, q.indices) and torch.equal(r.labels, q.labels)


def test_a_queue_saved_before_indices_loads_with_unknown_entries():
    q = NNQueue(size=4, dim=3)
    q.push(torch.randn(4, 3))
    old = {k: v for k, v in q.state_dict().items() if k not in ("indices", "labels")}
    r = NNQueue(size=4, dim=3)
    r.load_state_dict(old)
    assert r.full and (r.indices == UNKNOWN).all() and (r.labels == UNKNOWN).all()


def test_training_fills_the_queue_with_indices_and_logs_nn_accuracy(tmp_path):
    """A digits run with a queue: entries carry their dataset index and label, and once the
    queue is full the log records the authors' NN-accuracy monitor."""
    import json

    from selfclassifier.config import load_config
    from selfclassifier.data.sources import dataset_targets
    from selfclassifier.train.loop import Trainer

    cfg = load_config(
        "digits",
        {
            "model": {"backbone": "resnet20", "heads": [10], "hidden_dim": 32, "out_dim": 16},
            "train": {"epochs": 2, "batch_size": 256, "queue_size": 600, "log_every": 1},
        },
    )
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    trainer.fit()
    q = trainer.queue
    assert q.full and (q.indices >= 0).all()
    targets = dataset_targets(trainer.dataset)
    assert torch.equal(q.labels, targets[q.indices])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    accs = [r["nn_acc"] for r in records if "nn_acc" in r]
    assert accs and all(0.0 <= a <= 1.0 for a in accs)
    # before the queue is full (600 entries at 256 per step: 3 steps) there is no neighbour
    assert "nn_acc" not in next(r for r in records if r.get("global_step") == 1)


def test_queue_fill_level_survives_a_checkpoint_without_device_reads():
    q = NNQueue(size=4, dim=2)
    q.push(torch.eye(2))
    assert not q.full
    q.push(torch.eye(2))
    assert q.full
    fresh = NNQueue(size=4, dim=2)
    fresh.load_state_dict(q.state_dict())
    assert fresh.full and fresh.nearest(torch.tensor([[0.0, 1.0]]))[0].tolist() == [[0.0, 1.0]]
    holder = torch.nn.Module()
    holder.queue = NNQueue(size=4, dim=2)
    holder.load_state_dict({"queue." + k: v for k, v in q.state_dict().items()})
    assert holder.queue.full  # the hook also runs when a parent module loads
