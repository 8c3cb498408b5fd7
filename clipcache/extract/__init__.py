"""Feature extraction: backbones, datasets, prompts, the extraction loop and shard merging.

Importing this package imports torch, open_clip and timm; the command line imports
it only when an extraction command runs.
"""

from clipcache.extract.backbones import (
    Backbone,
    OpenClipBackbone,
    TimmBackbone,
    build_backbones,
    build_open_clip,
    build_timm,
    load_backbone,
)
from clipcache.extract.demo import write_demo_dataset
from clipcache.extract.loop import ExtractConfig, ExtractReport, RunOptions, extract
from clipcache.extract.merge import MergeReport, merge_stores
from clipcache.extract.prompts import PromptSet, embed_prompts, load_prompts
from clipcache.extract.testing import TINY_CLIP_NAME, tiny_clip_config
from clipcache.extract.transforms import Preprocess

__all__ = [
    "Backbone",
    "ExtractConfig",
    "ExtractReport",
    "MergeReport",
    "OpenClipBackbone",
    "Preprocess",
    "PromptSet",
    "RunOptions",
    "TINY_CLIP_NAME",
    "TimmBackbone",
    "build_backbones",
    "build_open_clip",
    "build_timm",
    "embed_prompts",
    "extract",
    "load_backbone",
    "load_prompts",
    "merge_stores",
    "tiny_clip_config",
    "write_demo_dataset",
]
