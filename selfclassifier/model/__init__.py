"""The network: backbones (``backbones.py``), the Self-Classifier model on top of one
(``classifier.py``: backbone -> MLP projection -> L2-normalised embedding -> heads), and
building one from a config or a checkpoint (``build.py``)."""

from selfclassifier.model.backbones import BACKBONES, build_backbone
from selfclassifier.model.build import build_model, model_from_checkpoint
from selfclassifier.model.classifier import SelfClassifier

__all__ = ["BACKBONES", "SelfClassifier", "build_backbone", "build_model", "model_from_checkpoint"]
