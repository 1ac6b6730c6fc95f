"""Self-Classifier (Amrani, Karlinsky, Bronstein, ECCV 2022): discover classes and learn
representations from unlabelled images in one end-to-end stage.

>>> import selfclassifier
>>> sorted(n for n in selfclassifier.__all__ if n[0].islower())[:3]
['build_backbone', 'build_optimizer', 'load']
"""

from selfclassifier.api import Predictor, load
from selfclassifier.config import Config, load_config
from selfclassifier.loss import SelfClassifierLoss, self_classifier_loss
from selfclassifier.model import SelfClassifier
from selfclassifier.model.backbones import BACKBONES, build_backbone
from selfclassifier.model.build import model_from_checkpoint
from selfclassifier.optim import build_optimizer, lr_schedule

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "Config",
    "Predictor",
    "SelfClassifier",
    "SelfClassifierLoss",
    "build_backbone",
    "build_optimizer",
    "load",
    "load_config",
    "lr_schedule",
    "model_from_checkpoint",
    "self_classifier_loss",
]
