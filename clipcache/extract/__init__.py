"""Feature extraction: backbones, datasets, prompts, the extraction loop and shard merging.

Importing this package imports torch; the command line imports it only when an
extraction command runs.
"""

from clipcache.extract.backbones import (
    Backbone,
    OpenClipBackbone,
    Preprocess,
    TimmBackbone,
    build_backbones,
    build_open_clip,
    build_timm,
    load_backbone,
)
from clipcache.extract.loop import ExtractConfig, ExtractReport, RunOptions, extract

__all__ = [
    "Backbone",
    "ExtractConfig",
    "ExtractReport",
    "OpenClipBackbone",
    "Preprocess",
    "RunOptions",
    "TimmBackbone",
    "build_backbones",
    "build_open_clip",
    "build_timm",
    "extract",
    "load_backbone",
]
