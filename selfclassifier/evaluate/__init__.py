"""Evaluation: clustering metrics (``metrics.py``), the protocols as pure functions of
feature tensors (``protocols.py``: kNN, linear probe, k-means, superclasses), the authors'
evaluation scripts rewritten (``authors.py``), which data and which features a protocol sees
(``probes.py``), per-head and per-protocol score records (``scores.py``), and the
``evaluate`` command's glue that runs them on a loaded run (``command.py``)."""
