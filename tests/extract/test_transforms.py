"""Preprocessing: every resize mode equals open_clip's and timm's own transforms; provenance and store identity."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import timm
import timm.data
import torch
import torchvision.transforms.functional as TF
from open_clip.transform import PreprocessCfg, center_crop_or_pad, image_transform_v2
from PIL import Image
from torchvision.transforms import InterpolationMode

from clipcache import FeatureStore
from clipcache.errors import InvalidParameterError, StoreMismatchError
from clipcache.extract.backbones import _timm_preprocess, build_open_clip
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from clipcache.extract.testing import TINY_CLIP_NAME, tiny_clip_config
from clipcache.extract.transforms import (
    RESIZE_MODES,
    Preprocess,
    _window_start,
    augmented_view_uint8,
    crop_or_pad,
    eval_transform,
    eval_transform_uint8,
    normalize_batch,
    plan_geometry,
)
from tests.extract.helpers import interrupt_append

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
# (width, height): landscape and portrait photos, a square one, one smaller than the input
SIZES = [(500, 375), (300, 480), (224, 224), (20, 31)]


def _images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize_mode", RESIZE_MODES)
def test_eval_transform_equals_open_clip_bit_for_bit(resize_mode, interpolation):
    # Both resize through PIL and normalise in float32 the same way: the tolerance is zero.
    size, fill = 224, 77
    cfg = PreprocessCfg(size=size, mean=MEAN, std=STD, interpolation=interpolation, resize_mode=resize_mode, fill_color=fill)
    reference = image_transform_v2(cfg, is_train=False)
    ours = eval_transform(Preprocess(size, size, MEAN, STD, interpolation, resize_mode, fill))
    for image in _images():
        expected = reference(image)
        assert expected.shape == (3, size, size)
        np.testing.assert_array_equal(ours(image).numpy(), expected.numpy(), err_msg=f"{resize_mode} {image.size}")


def test_resize_modes_give_different_inputs():
    image = _images()[0]
    tensors = [eval_transform_uint8(Preprocess(224, 224, MEAN, STD, resize_mode=mode))(image) for mode in RESIZE_MODES]
    for i in range(len(tensors)):
        for j in range(i + 1, len(tensors)):
            assert not torch.equal(tensors[i], tensors[j])


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_timm_preprocess_equals_timm_transform(crop_mode):
    module = timm.create_model(
        "test_efficientnet", pretrained=False, num_classes=0,
        pretrained_cfg_overlay={"crop_mode": crop_mode, "crop_pct": 0.9, "interpolation": "bilinear"},
    )
    reference = timm.data.create_transform(**timm.data.resolve_data_config({}, model=module))
    pp = _timm_preprocess(module, None)
    assert pp.resize_mode == {"center": "shortest", "squash": "squash", "border": "longest"}[crop_mode]
    assert pp.interpolation == "bilinear" and pp.resize_size == int(pp.image_size / 0.9)
    for image in _images(seed=1):
        np.testing.assert_array_equal(eval_transform(pp)(image).numpy(), reference(image).numpy())


def test_geometry_of_each_mode():
    pp = Preprocess(image_size=100, resize_size=120, mean=MEAN, std=STD, fill_color=(1, 2, 3))
    shortest = plan_geometry(pp, 400, 300)  # resize the short side to 120: 160 x 120, crop 100 in the middle
    assert (shortest.resize_hw, shortest.top, shortest.left) == ((120, 160), 10, 30)
    longest = plan_geometry(dataclasses.replace(pp, resize_mode="longest"), 400, 300)  # 120 x 90, pad 5 rows above
    assert (longest.resize_hw, longest.top, longest.left, longest.fill) == ((90, 120), -5, 10, (1, 2, 3))
    squash = plan_geometry(dataclasses.replace(pp, resize_mode="squash"), 400, 300)
    assert (squash.resize_hw, squash.top, squash.left) == ((120, 120), 10, 10)


@pytest.mark.parametrize("shape", [(3, 7, 9), (3, 10, 4), (3, 4, 4), (3, 2, 11), (3, 6, 6)])
def test_crop_or_pad_equals_open_clip_centre_crop_or_pad(shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    height, width = shape[1:]
    ours = crop_or_pad(images, _window_start(height, 6), _window_start(width, 6), 6, (9, 9, 9))
    np.testing.assert_array_equal(ours.numpy(), center_crop_or_pad(images, [6, 6], fill=9).numpy())


def test_crop_or_pad_batches_and_fills_per_channel():
    images = torch.full((2, 3, 2, 2), 200, dtype=torch.uint8)
    out = crop_or_pad(images, -1, -1, 4, (1, 2, 3))
    assert out.shape == (2, 3, 4, 4)
    assert out[:, :, 1:3, 1:3].eq(200).all()
    assert out[:, 0, 0, 0].tolist() == [1, 1] and out[:, 2, 3, 3].tolist() == [3, 3]


def test_augmented_view_resamples_with_the_interpolation():
    image = _images()[0]
    params = (10, 20, 200, 300, False)
    pp = Preprocess(64, 64, MEAN, STD, interpolation="bilinear", resize_mode="squash")
    expected = TF.resized_crop(image, 10, 20, 200, 300, [64, 64], interpolation=InterpolationMode.BILINEAR)
    np.testing.assert_array_equal(augmented_view_uint8(image, params, pp).permute(1, 2, 0).numpy(), np.asarray(expected))


def test_preprocess_dict_round_trip_and_old_provenance():
    pp = Preprocess(224, 256, MEAN, STD, "bilinear", "longest", (10, 20, 30))
    assert Preprocess.from_dict(json.loads(json.dumps(pp.to_dict()))) == pp
    old = {"image_size": 32, "resize_size": 32, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic"}
    restored = Preprocess.from_dict(old)
    assert (restored.resize_mode, restored.fill_color, restored.interpolation) == ("shortest", 0, "bicubic")
    assert restored.to_dict() == {**old, "resize_mode": "shortest", "fill_color": 0}


@pytest.mark.parametrize("field, value", [("resize_mode", "crop"), ("interpolation", "random"), ("image_size", 0)])
def test_bad_preprocess_values_are_refused(field, value):
    fields = {"image_size": 32, "resize_size": 32, "mean": MEAN, "std": STD, field: value}
    with pytest.raises(InvalidParameterError) as info:
        Preprocess(**fields)
    assert info.value.param == field and not str(info.value).endswith(".")


def _squash_checkpoint(folder, seed: int = 4):
    """A checkpoint folder whose open_clip_config.json asks for squash, bilinear, fill 0."""
    source = build_open_clip(TINY_CLIP_NAME, "none", seed=seed)
    folder.mkdir()
    preprocess_cfg = {"resize_mode": "squash", "interpolation": "bilinear", "fill_color": 0}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_clip_config(), "preprocess_cfg": preprocess_cfg}))
    torch.save(source.module.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def test_open_clip_preprocess_config_reaches_backbone_and_provenance(tmp_path):
    backbone = build_open_clip(TINY_CLIP_NAME, str(_squash_checkpoint(tmp_path / "ckpt")))
    assert (backbone.preprocess.resize_mode, backbone.preprocess.interpolation) == ("squash", "bilinear")
    recorded = backbone.provenance()["preprocess"]
    assert recorded["resize_mode"] == "squash" and recorded["interpolation"] == "bilinear" and recorded["fill_color"] == 0
    # the same config through open_clip's own factory and transform gives the same input
    _, _, reference = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'ckpt'}")
    image = _images()[1]
    np.testing.assert_array_equal(backbone.image_preprocess()(image).numpy(), reference(image).numpy())


def test_store_refuses_feature_sets_that_differ_only_in_resize_mode(image_folder, tmp_path):
    store = tmp_path / "s.h5"
    config = ExtractConfig(source=str(image_folder), model=TINY_CLIP_NAME, pretrained=str(_squash_checkpoint(tmp_path / "ckpt")),
                           splits=("test",), batch_size=4)
    extract(store, config, RunOptions(progress=False))
    with FeatureStore(store) as fs:
        info = fs.feature_sets["clip"]
    assert info.provenance["preprocess"]["resize_mode"] == "squash"
    shortest = dict(info.provenance, preprocess={**info.provenance["preprocess"], "resize_mode": "shortest"})
    with FeatureStore(store, "a") as fs, pytest.raises(StoreMismatchError, match="preprocess"):
        fs.add_feature_set("clip", info.dim, dtype=info.dtype, normalized=info.normalized, provenance=shortest)


def test_resume_accepts_a_store_written_without_the_new_preprocess_keys(image_folder, tmp_path, monkeypatch):
    config = ExtractConfig(source=str(image_folder), model=TINY_CLIP_NAME, splits=("train",), batch_size=4)
    quiet = RunOptions(progress=False)
    extract(tmp_path / "full.h5", config, quiet)
    real_to_dict = Preprocess.to_dict

    def old_to_dict(self):  # what clipcache wrote before resize_mode and fill_color were recorded
        return {k: v for k, v in real_to_dict(self).items() if k not in ("resize_mode", "fill_color")}

    monkeypatch.setattr(Preprocess, "to_dict", old_to_dict)
    interrupt_append(monkeypatch, at=2)
    with pytest.raises(KeyboardInterrupt):
        extract(tmp_path / "old.h5", config, quiet)
    monkeypatch.undo()
    extract(tmp_path / "old.h5", config, quiet, resume=True)
    with FeatureStore(tmp_path / "old.h5") as old, FeatureStore(tmp_path / "full.h5") as full:
        assert "resize_mode" not in old.feature_sets["clip"].provenance["preprocess"]
        np.testing.assert_array_equal(old.features("train", "clip"), full.features("train", "clip"))


def test_the_workers_transform_pickles_and_gives_the_same_pixels():
    """A fork server or ``spawn`` sends each worker its dataset pickled; its transforms must survive that."""
    import pickle

    pp = Preprocess(24, 24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    transform = eval_transform_uint8(pp)
    again = pickle.loads(pickle.dumps(transform))
    assert again(image).shape == (3, 24, 24) and torch.equal(again(image), transform(image))


def test_normalize_batch_as_one_kernel_gives_the_torch_operations_bytes(monkeypatch):
    """On a CUDA device normalisation is one Triton kernel that looks each pixel up in its channel's 256 values,
    computed by the torch operations on that device; run here by Triton's interpreter, on every value of every
    channel, in launches of whole images."""
    pytest.importorskip("triton")
    from clipcache.extract import _triton

    pp = Preprocess(16, 16, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), "bicubic")
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8))
    batch[0] = torch.arange(256, dtype=torch.uint8).view(16, 16)  # every value in every channel
    want = normalize_batch(batch, pp)
    assert want.dtype == torch.float32
    monkeypatch.setattr(_triton, "MAX_PLANES", 8)  # 6 planes (2 images) a launch: 3 launches
    got = normalize_batch(batch, pp, method="interpret")
    assert got.dtype == torch.float32 and torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert torch.equal(normalize_batch(batch[1], pp, method="interpret"), want[1])  # (3, S, S)
    with pytest.raises(ValueError, match=r"method 'cuda' is not one of \['torch', 'triton', 'interpret'\]"):
        normalize_batch(batch, pp, method="cuda")
