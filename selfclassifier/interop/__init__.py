"""Other people's files: the authors' official checkpoints (``official.py``), pretrained
backbone weights (``pretrained.py``), the safe reader of foreign pickles (``torchfile.py``),
and exporting ours to ONNX, TorchScript and torchvision (``export.py``)."""
