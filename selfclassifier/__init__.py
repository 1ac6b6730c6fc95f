"""Self-Classifier (Amrani, Karlinsky, Bronstein, ECCV 2022): discover classes and learn
representations from unlabelled images in one end-to-end stage.

>>> import selfclassifier
>>> sorted(n for n in selfclassifier.__all__ if n[0].islower())[:3]
['build_backbone', 'load', 'load_config']
"""

from selfclassifier.api import Predictor, load
from selfclassifier.backbones import BACKBONES, build_backbone
from selfclassifier.checkpoint import model_from_checkpoint
from selfclassifier.config import Config, load_config
from selfclassifier.loss import SelfClassifierLoss, self_classifier_loss
from selfclassifier.model import SelfClassifier

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "Config",
    "Predictor",
    "SelfClassifier",
    "SelfClassifierLoss",
    "build_backbone",
    "load",
    "load_config",
    "model_from_checkpoint",
    "self_classifier_loss",
]
