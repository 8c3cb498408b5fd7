"""Prompt templates, CuPL descriptions, and text embeddings in the store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipcache import FeatureStore
from clipcache.errors import ClipCacheError, DatasetError
from clipcache.extract.backbones import build_open_clip
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from clipcache.extract.prompts import builtin_templates, embed_prompts, load_prompts


def test_imagenet80_has_clip_templates():
    templates = builtin_templates("imagenet80")
    assert len(templates) == 80 and len(set(templates)) == 80
    assert templates[0] == "a bad photo of a {}." and all("{}" in t for t in templates)


def test_templates_fill_class_major():
    prompts = load_prompts("simple", ["cat", "sea_lion"])
    assert prompts.prompts == ["a photo of a cat.", "a photo of a sea lion."]
    assert prompts.class_index.tolist() == [0, 1] and prompts.templates == ["a photo of a {}."]


def test_template_file_list(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(["{}!", "art of {}"]))
    prompts = load_prompts(str(path), ["a", "b"])
    assert prompts.name == "mine" and prompts.prompts == ["a!", "art of a", "b!", "art of b"]


def test_cupl_descriptions(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({"b": ["B one"], "a": ["A one", "A two"], "extra": ["x"]}))
    prompts = load_prompts(str(path), ["a", "b"])
    assert prompts.prompts == ["A one", "A two", "B one"]
    assert prompts.class_index.tolist() == [0, 0, 1] and prompts.templates is None


def test_cupl_missing_class_is_rejected(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({"a": ["A"]}))
    with pytest.raises(DatasetError, match="'b'"):
        load_prompts(str(path), ["a", "b"])


def test_template_without_placeholder_is_rejected(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(["a photo"]))
    with pytest.raises(DatasetError, match=r"\{\}"):
        load_prompts(str(path), ["a"])


def test_unknown_builtin_is_rejected():
    with pytest.raises(DatasetError, match="imagenet80"):
        load_prompts("imagenet1000", ["a"])


def test_text_embeddings_equal_text_tower(image_folder, tmp_path, tiny_clip):
    store = tmp_path / "s.h5"
    extract(store, ExtractConfig(source=str(image_folder), model="clipcache-tiny-vit", splits=("test",)), RunOptions(progress=False))
    with FeatureStore(store, "a") as fs:
        embed_prompts(fs, "imagenet80")
        text = fs.text("imagenet80")
    expected = tiny_clip.encode_text(["a bad photo of a circle.", "a photo of many circle."])
    np.testing.assert_allclose(text.embeddings[:2], expected, atol=1e-5)
    assert text.embeddings.shape == (160, 32) and text.templates[0] == "a bad photo of a {}."
    assert text.provenance["model"] == "clipcache-tiny-vit"


def test_text_needs_a_clip_feature_set(image_folder, tmp_path):
    store = tmp_path / "s.h5"
    config = ExtractConfig(source=str(image_folder), aux=("efficientnet-lite0",), image_size=32, splits=("test",))
    extract(store, config, RunOptions(progress=False))
    with FeatureStore(store, "a") as fs, pytest.raises(ClipCacheError, match="no feature set 'clip'") as info:
        embed_prompts(fs, "simple")
    assert info.value.param == "feature_set"


def test_text_provenance_records_the_models_logit_scale(image_folder, tmp_path, tiny_clip):
    store = tmp_path / "s.h5"
    extract(store, ExtractConfig(source=str(image_folder), model="clipcache-tiny-vit", splits=("test",)), RunOptions(progress=False))
    with FeatureStore(store, "a") as fs:
        embed_prompts(fs, "simple")
        recorded = fs.text("simple").provenance["logit_scale"]
    assert recorded == tiny_clip.module.logit_scale.exp().item()
    assert recorded == pytest.approx(1 / 0.07, rel=1e-6)  # open_clip's initial temperature


def test_trained_logit_scale_is_stored(image_folder, tmp_path):
    backbone = build_open_clip("clipcache-tiny-vit", "none", seed=0)
    with torch.no_grad():
        backbone.module.logit_scale.fill_(np.log(100.0))  # what OpenAI CLIP learned
    store = tmp_path / "s.h5"
    extract(store, ExtractConfig(source=str(image_folder), model="clipcache-tiny-vit", splits=("test",)), RunOptions(progress=False))
    with FeatureStore(store, "a") as fs:
        embed_prompts(fs, "simple", backbone=backbone)
        assert fs.text("simple").provenance["logit_scale"] == pytest.approx(100.0, rel=1e-6)
