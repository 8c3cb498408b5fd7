"""Backbones: weights, provenance, rebuilding from provenance, offline errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from clipcache.errors import ModelLoadError
from clipcache.extract import backbones
from clipcache.extract.backbones import (
    EFFICIENTNET_LITE0_SHA256,
    build_open_clip,
    build_timm,
    find_checkpoint,
    load_backbone,
    parse_aux_spec,
)


def _images(n: int, size: int = 48, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_lite0_loads_bundled_weights_with_recorded_sha(lite0_small):
    prov = lite0_small.provenance()
    assert prov["weights_sha256"] == EFFICIENTNET_LITE0_SHA256
    assert prov["backbone"] == "timm" and prov["model"] == "tf_efficientnet_lite0"
    assert lite0_small.dim == 1280


def test_lite0_weights_differ_from_random_init(lite0_small):
    random = build_timm("timm:tf_efficientnet_lite0=none", image_size=64)
    w_pre = lite0_small.module.conv_stem.weight
    w_rand = random.module.conv_stem.weight
    assert not torch.allclose(w_pre, w_rand)
    assert random.provenance()["random_init"] is True


def test_tiny_clip_provenance_records_random_init(tiny_clip):
    prov = tiny_clip.provenance()
    assert prov["pretrained"] == "none" and prov["random_init"] is True and prov["init_seed"] == 0
    assert prov["preprocess"]["image_size"] == 32
    assert set(prov["library_versions"]) >= {"torch", "open_clip", "timm"}


def test_tiny_clip_is_seeded():
    a = build_open_clip("clipcache-tiny-vit", "none", seed=3)
    b = build_open_clip("clipcache-tiny-vit", "none", seed=3)
    imgs = _images(2)
    np.testing.assert_array_equal(a.encode_images(imgs), b.encode_images(imgs))


def test_encode_images_are_unit_norm(tiny_clip):
    feats = tiny_clip.encode_images(_images(3))
    assert feats.dtype == np.float32 and feats.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_encode_text_shape_and_norm(tiny_clip):
    emb = tiny_clip.encode_text(["a photo of a cat.", "a dog", "x"])
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_timm_backbone_has_no_text_tower(lite0_small):
    with pytest.raises(ModelLoadError, match="no text tower"):
        lite0_small.encode_text(["a cat"])


def test_load_backbone_rebuilds_identical_encoder(tiny_clip):
    rebuilt = load_backbone(tiny_clip.provenance())
    imgs = _images(2, seed=1)
    np.testing.assert_array_equal(rebuilt.encode_images(imgs), tiny_clip.encode_images(imgs))


def test_load_backbone_rejects_changed_weights(lite0_small):
    prov = dict(lite0_small.provenance(), weights_sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        load_backbone(prov)


def test_timm_local_weights_load_with_weights_only(tmp_path):
    source = build_timm("timm:test_efficientnet=none", seed=1)
    path = tmp_path / "w.pth"
    torch.save(source.module.state_dict(), path)
    loaded = build_timm(f"timm:test_efficientnet={path}", seed=2)
    for (k, a), b in zip(source.module.state_dict().items(), loaded.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert loaded.provenance()["weights_sha256"] == backbones.sha256_file(path)


def test_timm_pickled_weights_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": object()}}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        build_timm(f"timm:test_efficientnet={path}")


def _offline(monkeypatch):
    from clipcache.extract import hub

    monkeypatch.setattr(hub, "reachable", lambda host, timeout=0: False)
    monkeypatch.setattr(hub, "cached_hub_file", lambda repo, names: None)


def test_offline_tag_fails_in_one_line_naming_the_fix(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(ModelLoadError) as info:
        build_open_clip("ViT-B-32", "openai")
    message = str(info.value)
    assert "\n" not in message and "cannot be reached" in message and message.endswith("pass the local file as pretrained")
    assert info.value.param == "pretrained" and "--" not in message


def test_offline_timm_download_names_local_file_fix(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(ModelLoadError, match="timm:NAME=/path/weights.pth") as info:
        build_timm("timm:resnet18")
    assert info.value.param == "aux"


def test_local_checkpoint_directory_loads(tmp_path):
    import json

    import open_clip

    from clipcache.extract.testing import tiny_clip_config

    source = build_open_clip("clipcache-tiny-vit", "none", seed=7)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_clip_config()}))
    torch.save(source.module.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    loaded = build_open_clip("clipcache-tiny-vit", str(tmp_path))
    imgs = _images(2)
    np.testing.assert_allclose(loaded.encode_images(imgs), source.encode_images(imgs), atol=1e-6)
    assert loaded.provenance()["weights_sha256"] == backbones.sha256_file(tmp_path / "open_clip_pytorch_model.bin")
    assert open_clip.list_models().count("clipcache-tiny-vit") == 0  # the global registry is untouched


def test_local_checkpoint_file_loads_and_is_hashed(tmp_path):
    source = build_open_clip("clipcache-tiny-vit", "none", seed=3)
    weights = tmp_path / "tiny.pt"
    torch.save(source.module.state_dict(), weights)
    loaded = build_open_clip("clipcache-tiny-vit", str(weights))
    imgs = _images(2)
    np.testing.assert_allclose(loaded.encode_images(imgs), source.encode_images(imgs), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_text(["a cat"]), source.encode_text(["a cat"]), atol=1e-6)
    prov = loaded.provenance()
    assert prov["pretrained"] == str(weights) and prov["weights_sha256"] == backbones.sha256_file(weights)


def test_unknown_open_clip_model_is_rejected():
    with pytest.raises(ModelLoadError, match="not an open_clip model"):
        build_open_clip("no-such-model", "none")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("efficientnet-lite0", ("efficientnet-lite0", "tf_efficientnet_lite0", "efficientnet-lite0")),
        ("timm:resnet18", ("resnet18", "resnet18", None)),
        ("timm:resnet18=/w.pth", ("resnet18", "resnet18", "/w.pth")),
    ],
)
def test_parse_aux_spec(spec, expected):
    assert parse_aux_spec(spec) == expected


def test_bad_aux_spec_names_the_forms():
    with pytest.raises(ModelLoadError, match="timm:NAME"):
        parse_aux_spec("resnet18")


def test_find_checkpoint_order(tmp_path):
    names = ["b.pth", "a.bin", "z.safetensors", "y.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    chosen = []
    while (found := find_checkpoint(tmp_path)) is not None:
        chosen.append(os.path.basename(found))
        os.remove(found)
    assert chosen == ["open_clip_pytorch_model.bin", "pytorch_model.bin", "y.safetensors", "z.safetensors", "a.bin", "b.pth"]


@pytest.mark.parametrize(
    "names",
    [["a.bin", "b.pth"], ["x.pth", "w.safetensors"], ["model.pth", "open_clip_model.safetensors", "pytorch_model.bin"], ["notes.txt"]],
)
def test_find_checkpoint_agrees_with_open_clip(tmp_path, names):
    import open_clip.factory

    theirs = getattr(open_clip.factory, "_find_checkpoint_in_dir", None)
    if theirs is None:
        pytest.skip("this open_clip has no _find_checkpoint_in_dir to compare with")
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert find_checkpoint(tmp_path) == theirs(tmp_path)
