# ruff: noqa: E402 (the warnings filter comes before the imports it is for)
"""Feature extraction: backbones, datasets, prompts, the extraction loop and shard merging.

Importing this package imports torch, open_clip and timm; the command line imports
it only when an extraction command runs.
"""

import warnings

# Older timm releases (1.0.17, the minimum, among them) call torch.jit.interface when it is imported, which torch 2.x deprecates with a
# FutureWarning that users can do nothing about; it would end up in every extract command's output.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning)

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
