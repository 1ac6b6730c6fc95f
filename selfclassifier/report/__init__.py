"""The HTML gallery of the classes a run found (``html.py``) and its embedding map
(``embedding_map.py``)."""

from selfclassifier.report.gallery import ClassSummary, summarize_classes, write_report

__all__ = ["ClassSummary", "summarize_classes", "write_report"]
