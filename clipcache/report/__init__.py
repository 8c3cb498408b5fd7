"""Reports people look at: one self-contained HTML page about a store and its models.

- :func:`write_report` (``clipcache report``): the store, accuracy against shots,
  one model in detail (per-class recall, confusion matrix, reliability), its
  most confidently wrong and a sample of its correct test images with their
  nearest support images, and the OOD and accuracy-estimation panels.
- :func:`write_search_html` (``clipcache search --html``): the neighbour grid of a search.
- :class:`ReportLimits`: the bounds on the number and size of the thumbnails.

Pages have no script and no external reference: figures are inline SVG or PNG
data URIs drawn with matplotlib's Agg back end, thumbnails are JPEG data URIs.
docs/report.md describes each section.
"""

from __future__ import annotations

from clipcache.report._html import HTML_PAGE
from clipcache.report.page import ReportLimits, ReportResult, write_report
from clipcache.report.search import QUERY_KINDS, write_search_html
from clipcache.report.thumbnails import Thumbnail, Thumbnails, dataset_root

__all__ = [
    "HTML_PAGE",
    "QUERY_KINDS",
    "ReportLimits",
    "ReportResult",
    "Thumbnail",
    "Thumbnails",
    "dataset_root",
    "write_report",
    "write_search_html",
]
