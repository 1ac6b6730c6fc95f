"""Python API: selfclassifier.load(...).predict / .embed on PIL images, paths and tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import selfclassifier
from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.data.decode import DataError
from selfclassifier.inference import eval_loader, run_model
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.images import write_arrays


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    ckpt = make_checkpoint(d / "ckpt.pt", "resnet20", 1, 8)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    paths = sorted(write_arrays(d / "images", pixels).glob("*.png"))
    return selfclassifier.load(ckpt, device="cpu"), pixels, paths


def test_public_names():
    for name in ("SelfClassifier", "SelfClassifierLoss", "self_classifier_loss", "load",
                 "Predictor", "build_backbone", "Config", "build_optimizer", "lr_schedule",
                 "model_from_checkpoint"):  # fmt: skip
        assert name in selfclassifier.__all__ and hasattr(selfclassifier, name)


def test_predict_agrees_across_input_kinds_and_with_training_eval(setup):
    model, pixels, paths = setup
    images = [Image.fromarray(a) for a in pixels]
    classes, confidence = model.predict(images)
    assert classes.shape == confidence.shape == (6,) and classes.dtype == torch.int64
    for other in (paths, [str(p) for p in paths], torch.from_numpy(pixels)[:, None],
                  list(pixels), model.preprocess(images)):  # fmt: skip
        c, p = model.predict(other)
        assert torch.equal(c, classes)
        torch.testing.assert_close(p, confidence)
    # the same numbers as the training loop's evaluation of an in-memory dataset
    ds = TensorImageDataset(torch.from_numpy(pixels)[:, None], torch.zeros(6, dtype=torch.long))
    out = run_model(model.model, eval_loader(ds, model.config.augment, 1, 4), torch.device("cpu"))
    pred, conf = out.predictions(0)
    assert torch.equal(pred, classes)
    torch.testing.assert_close(conf, confidence)
    torch.testing.assert_close(model.embed(paths), out.embeddings)


def test_probabilities_embed_and_features(setup):
    model, _, paths = setup
    probs = model.probabilities(paths, batch_size=4)  # two batches
    assert [p.shape for p in probs] == [(6, 10), (6, 20)]
    torch.testing.assert_close(probs[1].sum(1), torch.ones(6))
    classes, confidence = model.predict(paths, head=1)
    torch.testing.assert_close(confidence, probs[1].max(1).values)
    emb = model.embed(paths[0])
    assert emb.shape == (1, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(1))
    assert model.features(paths).shape == (6, 64)
    assert model.num_classes == [10, 20]


def test_bad_inputs_are_clear_errors(setup, tmp_path):
    model, _, paths = setup
    with pytest.raises(DataError, match="not found"):
        model.predict([tmp_path / "missing.png"])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        model.predict([tmp_path / "bad.png"])
    with pytest.raises(DataError, match=r"\(B, 1, H, W\)"):
        model.predict(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="head 5"):
        model.predict(paths, head=5)
