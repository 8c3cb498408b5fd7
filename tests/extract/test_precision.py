"""Precision (``amp``) per backbone: parsing, defaults, provenance, and refusal to mix precisions.

No test here needs CUDA. The GPU path of the rules is taken on the CPU with
:func:`tests.extract.helpers.simulated_gpu`: within it, the CPU is treated as the
autocast device, so a run resolves, applies (CPU autocast) and records reduced
precisions exactly as a cuda run does. ``test_gpu.py`` compares real CUDA runs.
"""

from __future__ import annotations

import json
import logging

import h5py
import open_clip
import pytest
import torch
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from clipcache.errors import InvalidParameterError, StoreMismatchError
from clipcache.extract.backbones import OpenClipBackbone, _open_clip_preprocess, build_open_clip
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from clipcache.extract.merge import merge_stores
from clipcache.extract.precision import autocast, check_amp_names, parse_amp, resolve_precisions
from clipcache.feature_store import schema
from tests.extract.helpers import interrupted_extract, simulated_gpu, snapshot

QUIET = RunOptions(progress=False)
LITE0 = "efficientnet-lite0"


def _config(folder, **kw) -> ExtractConfig:
    base = dict(source=str(folder), model="clipcache-tiny-vit", pretrained="none", aux=(LITE0,), image_size=64,
                batch_size=2, splits=("test",))
    base.update(kw)
    return ExtractConfig(**base)


def _precisions(path) -> dict:
    with FeatureStore(path) as store:
        return {name: info.provenance.get(schema.PRECISION) for name, info in store.feature_sets.items()}


def _strip_precision(path) -> None:
    """Make ``path`` what a release before the precision key wrote: the same provenance without it."""
    with h5py.File(path, "a") as h5:
        for group in h5["feature_sets"].values():
            prov = json.loads(group.attrs["provenance"])
            del prov[schema.PRECISION]
            group.attrs["provenance"] = schema.dump_json(prov)


@pytest.fixture(scope="module")
def tiny_resnet_clip():
    """An open_clip CLIP whose image tower is a (tiny) ModifiedResNet, not a ViT."""
    module = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"layers": (1, 1, 1, 1), "width": 8, "image_size": 32, "head_width": 8},
        text_cfg={"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    )
    open_clip.set_model_preprocess_cfg(module, {"size": 32, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
                                                "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0})
    return OpenClipBackbone(module, None, _open_clip_preprocess(module), {"backbone": "open_clip"}, name="tiny-rn")


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("amp", "parsed"),
    [
        (None, {}),
        ("bf16", {"*": "bf16"}),
        ("none", {"*": "fp32"}),  # the old spelling of fp32
        ("FP16", {"*": "fp16"}),
        ("clip=bf16", {"clip": "bf16"}),
        ("fp32,clip=bf16", {"*": "fp32", "clip": "bf16"}),
        (("fp32", "clip=bf16", f"{LITE0}=fp16"), {"*": "fp32", "clip": "bf16", LITE0: "fp16"}),
        (("clip=bf16", "clip=bf16"), {"clip": "bf16"}),
        ({"clip": "BF16", "*": "none"}, {"clip": "bf16", "*": "fp32"}),
        ((), {}),
    ],
)
def test_parse_amp(amp, parsed):
    assert parse_amp(amp) == parsed


@pytest.mark.parametrize(
    ("amp", "message"),
    [
        ("bf17", "amp 'bf17': 'bf17' is not one of fp32, bf16, fp16; write PRECISION for every backbone, "
                 "or FEATURE_SET=PRECISION for one, e.g. clip=bf16"),
        ("clip=half", "amp 'clip=half': 'half' is not one of fp32, bf16, fp16; write PRECISION for every backbone, "
                      "or FEATURE_SET=PRECISION for one, e.g. clip=bf16"),
        ("=bf16", "amp '=bf16' names no feature set; write FEATURE_SET=PRECISION, e.g. clip=bf16"),
        (("clip=bf16", "clip=fp16"), "amp gives 'clip' two precisions ('clip=bf16' and 'clip=fp16'); give one"),
        ("bf16,none", "amp gives every backbone two precisions ('bf16' and 'none'); give one"),
    ],
)
def test_parse_amp_rejects(amp, message):
    with pytest.raises(InvalidParameterError) as info:
        parse_amp(amp)
    assert str(info.value) == message and info.value.param == "amp"


def test_amp_must_name_a_backbone_of_the_run(image_folder, tmp_path):
    check_amp_names({"*": "bf16", "clip": "fp32"}, ["clip", LITE0])
    with pytest.raises(InvalidParameterError) as info:
        extract(tmp_path / "s.h5", _config(image_folder), RunOptions(progress=False, amp="clpi=bf16"))
    assert str(info.value) == (f"amp names feature set 'clpi', which no backbone of this run makes (they make clip, {LITE0}); "
                               "name one of these")
    assert info.value.param == "amp" and not (tmp_path / "s.h5").exists()


# --------------------------------------------------------------------------- defaults and resolution


def test_default_precision_is_chosen_per_backbone(tiny_clip, lite0_small, tiny_resnet_clip):
    assert tiny_clip.default_precision == "bf16"  # open_clip's VisionTransformer: measured harmless
    assert lite0_small.default_precision == "fp32"  # measured to cost a point of accuracy in bf16
    assert tiny_resnet_clip.default_precision == "fp32"  # an open_clip tower that is not a ViT: not measured


@pytest.mark.parametrize(
    ("amp", "recorded", "resolved"),
    [
        (None, None, {"clip": "bf16", LITE0: "fp32", "tiny-rn": "fp32"}),
        ("bf16", None, {"clip": "bf16", LITE0: "bf16", "tiny-rn": "bf16"}),  # the old --amp bf16: every backbone
        ("none", None, {"clip": "fp32", LITE0: "fp32", "tiny-rn": "fp32"}),  # the old --amp none
        ("clip=fp32", None, {"clip": "fp32", LITE0: "fp32", "tiny-rn": "fp32"}),
        (f"{LITE0}=bf16", None, {"clip": "bf16", LITE0: "bf16", "tiny-rn": "fp32"}),
        ("fp16,clip=bf16", None, {"clip": "bf16", LITE0: "fp16", "tiny-rn": "fp16"}),
        (None, {"clip": "fp32", LITE0: "bf16"}, {"clip": "fp32", LITE0: "bf16", "tiny-rn": "fp32"}),  # a resume follows the store
        ("bf16", {"clip": "fp32"}, {"clip": "bf16", LITE0: "bf16", "tiny-rn": "bf16"}),  # an explicit request does not
    ],
)
def test_resolution_on_cuda(tiny_clip, lite0_small, tiny_resnet_clip, amp, recorded, resolved):
    backbones = [tiny_clip, lite0_small, tiny_resnet_clip]
    assert resolve_precisions(backbones, parse_amp(amp), "cuda:0", recorded) == resolved


@pytest.mark.parametrize(("amp", "warning"), [(None, None), ("fp32", None), ("fp16,clip=bf16", f"amp clip=bf16,{LITE0}=fp16")])
def test_cpu_computes_fp32_and_warns_of_requests_it_does_not_apply(tiny_clip, lite0_small, caplog, amp, warning):
    with caplog.at_level(logging.WARNING, logger="clipcache.extract.precision"):
        assert resolve_precisions([tiny_clip, lite0_small], parse_amp(amp), "cpu", {"clip": "bf16"}) == {"clip": "fp32", LITE0: "fp32"}
    messages = [r.getMessage() for r in caplog.records]
    expected = [f"{warning} is not applied on cpu: autocast is used on cuda devices only, so every feature set is "
                "computed and recorded in fp32"] if warning else []
    assert messages == expected


def test_applied_precision_follows_the_device():
    backbone = build_open_clip("clipcache-tiny-vit", "none")
    backbone.precision = "bf16"
    assert backbone.applied_precision == "fp32"  # on the CPU
    backbone.device = torch.device("cuda", 0)  # what .to("cuda:0") sets, without moving the module
    assert backbone.applied_precision == "bf16"


def test_autocast_is_a_no_op_for_fp32_and_off_the_autocast_device():
    with autocast("cpu", "bf16"):
        assert not torch.is_autocast_enabled("cpu")
    with simulated_gpu():
        with autocast("cpu", "fp32"):
            assert not torch.is_autocast_enabled("cpu")
        with autocast("cpu", "bf16"):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# --------------------------------------------------------------------------- identity in the store


def test_identity_leaves_full_precision_out():
    prov = {"backbone": "open_clip", "model": "m", "pretrained": "none", "weights_sha256": None, "preprocess": {"image_size": 8}}
    old = schema.identity(prov, 4, "float32", True)
    assert schema.identity({**prov, "precision": "fp32"}, 4, "float32", True) == old
    assert schema.PRECISION not in old and schema.precision_of(prov) == "fp32"
    assert schema.identity({**prov, "precision": "bf16"}, 4, "float32", True) == {**old, "precision": "bf16"}
    # the model identity compares feature sets across stores; like the dtype, the precision is not part of it
    assert schema.model_identity({**prov, "precision": "bf16"}, 4) == schema.model_identity(prov, 4)


@pytest.mark.parametrize(("have", "given", "have_name", "given_name"),
                         [("bf16", "fp32", "bf16", "fp32"), (None, "bf16", "fp32", "bf16"), ("fp16", None, "fp16", "fp32")])
def test_add_feature_set_refuses_another_precision(tmp_path, have, given, have_name, given_name):
    def prov(precision):
        return {"model": "m"} if precision is None else {"model": "m", "precision": precision}

    with FeatureStore(tmp_path / "s.h5", "w") as store:
        store.add_feature_set("clip", 4, provenance=prov(have))
        with pytest.raises(StoreMismatchError) as info:
            store.add_feature_set("clip", 4, provenance=prov(given))
        assert str(info.value) == (
            f"{store.path}: feature set 'clip' holds features computed in {have_name}, and these were computed in "
            f"{given_name}; features of different precisions are never mixed under one name, so compute them in "
            f"{have_name}, or choose another feature set name or a new store"
        )
        assert store.feature_sets["clip"].provenance == prov(have)


def test_a_feature_set_without_precision_takes_fp32_features_and_keeps_its_provenance(tmp_path):
    with FeatureStore(tmp_path / "s.h5", "w") as store:
        store.add_feature_set("clip", 4, provenance={"model": "m"})
        assert store.add_feature_set("clip", 4, provenance={"model": "m", "precision": "fp32"}).provenance == {"model": "m"}


def test_add_feature_set_rejects_an_unknown_precision(tmp_path):
    with FeatureStore(tmp_path / "s.h5", "w") as store:
        with pytest.raises(InvalidParameterError) as info:
            store.add_feature_set("clip", 4, provenance={"precision": "fp8"})
        assert str(info.value) == (f"{store.path}: feature set 'clip': provenance precision 'fp8' is not one of fp32, "
                                   "bf16, fp16; record the precision the features were computed in")
        assert info.value.param == "provenance" and store.feature_sets == {}


# --------------------------------------------------------------------------- extraction


def test_cpu_run_records_fp32_and_applies_no_autocast(image_folder, tmp_path):
    plain = extract(tmp_path / "plain.h5", _config(image_folder, aux=()), QUIET)
    asked = extract(tmp_path / "asked.h5", _config(image_folder, aux=()), RunOptions(progress=False, amp="bf16"))
    assert plain.precisions == asked.precisions == {"clip": "fp32"}
    assert _precisions(tmp_path / "plain.h5") == _precisions(tmp_path / "asked.h5") == {"clip": "fp32"}
    assert snapshot(tmp_path / "asked.h5") == snapshot(tmp_path / "plain.h5")


def test_gpu_path_applies_and_records_each_backbones_precision(image_folder, tmp_path):
    extract(tmp_path / "cpu.h5", _config(image_folder), QUIET)
    with simulated_gpu():
        report = extract(tmp_path / "gpu.h5", _config(image_folder), QUIET)
    assert report.precisions == {"clip": "bf16", LITE0: "fp32"}
    assert _precisions(tmp_path / "gpu.h5") == {"clip": "bf16", LITE0: "fp32"}
    gpu, cpu = snapshot(tmp_path / "gpu.h5")["test"], snapshot(tmp_path / "cpu.h5")["test"]
    assert gpu[LITE0] == cpu[LITE0]  # fp32: no autocast
    assert gpu["clip"] != cpu["clip"]  # bf16 autocast changes the values...
    with FeatureStore(tmp_path / "gpu.h5") as a, FeatureStore(tmp_path / "cpu.h5") as b:
        cosine = (a.features("test", "clip") * b.features("test", "clip")).sum(1)
    assert cosine.min() > 0.999  # ...a little, on this tiny ViT


def test_resume_on_cpu_of_a_gpu_store_is_refused(image_folder, tmp_path):
    path, config = tmp_path / "s.h5", _config(image_folder, aux=())
    with simulated_gpu():
        interrupted_extract(path, config, QUIET)
    before = snapshot(path)
    with pytest.raises(StoreMismatchError) as info:
        extract(path, config, QUIET, resume=True)
    assert str(info.value) == (f"{path}: feature set 'clip' was computed in bf16, but this run computes it in fp32 on cpu "
                               "(autocast is used on cuda only); resume on a cuda device, or extract into a new store")
    assert info.value.param == "amp" and snapshot(path) == before


def test_resume_in_an_explicit_other_precision_is_refused(image_folder, tmp_path):
    path, config = tmp_path / "s.h5", _config(image_folder, aux=())
    with simulated_gpu():
        interrupted_extract(path, config, QUIET)
        with pytest.raises(StoreMismatchError) as info:
            extract(path, config, RunOptions(progress=False, amp="clip=fp32"), resume=True)
    assert str(info.value) == (f"{path}: feature set 'clip' was computed in bf16, but this run computes it in fp32; "
                               "resume with amp clip=bf16, or extract into a new store")


def test_resume_without_amp_follows_the_recorded_precision(image_folder, tmp_path):
    with simulated_gpu():
        extract(tmp_path / "full.h5", _config(image_folder, aux=()), RunOptions(progress=False, amp="clip=fp16"))
        interrupted_extract(tmp_path / "cut.h5", _config(image_folder, aux=()), RunOptions(progress=False, amp="clip=fp16"))
        report = extract(tmp_path / "cut.h5", _config(image_folder, aux=()), QUIET, resume=True)  # default: bf16
    assert report.precisions == {"clip": "fp16"} and report.encoded == 4
    assert snapshot(tmp_path / "cut.h5") == snapshot(tmp_path / "full.h5")


def test_old_store_without_precision_resumes_in_fp32(image_folder, tmp_path):
    config = _config(image_folder, aux=())
    extract(tmp_path / "full.h5", config, QUIET)
    interrupted_extract(tmp_path / "old.h5", config, QUIET)
    _strip_precision(tmp_path / "old.h5")
    with simulated_gpu():  # on a GPU this ViT would default to bf16; the old store's fp32 wins
        report = extract(tmp_path / "old.h5", config, QUIET, resume=True)
    assert report.precisions == {"clip": "fp32"}
    assert _precisions(tmp_path / "old.h5") == {"clip": None}  # still not recorded: the provenance is not rewritten
    assert snapshot(tmp_path / "old.h5") == snapshot(tmp_path / "full.h5")


def test_old_store_refuses_an_explicit_reduced_precision(image_folder, tmp_path):
    path = tmp_path / "old.h5"
    interrupted_extract(path, _config(image_folder, aux=()), QUIET)
    _strip_precision(path)
    with simulated_gpu(), pytest.raises(StoreMismatchError) as info:
        extract(path, _config(image_folder, aux=()), RunOptions(progress=False, amp="bf16"), resume=True)
    assert str(info.value) == (f"{path}: feature set 'clip' records no precision (an older release wrote it, and it is "
                               "read as fp32), but this run computes it in bf16; resume with amp clip=fp32, or extract "
                               "into a new store")


def test_merge_refuses_shards_of_two_precisions(image_folder, tmp_path):
    shards = [tmp_path / "shard0.h5", tmp_path / "shard1.h5"]
    with simulated_gpu():
        extract(shards[0], _config(image_folder, aux=(), shard=(0, 2)), QUIET)
    extract(shards[1], _config(image_folder, aux=(), shard=(1, 2)), QUIET)
    with pytest.raises(StoreMismatchError) as info:
        merge_stores(shards, tmp_path / "m.h5")
    assert str(info.value) == (f"{shards[1]}: feature set 'clip' was computed in fp32, but in bf16 in {shards[0]}; "
                               "merge shards computed in one precision (extract this shard again with amp clip=bf16 on "
                               "a cuda device)")
    assert info.value.param == "inputs" and not (tmp_path / "m.h5").exists()


def test_merged_store_keeps_the_precision(image_folder, tmp_path):
    shards = [tmp_path / "shard0.h5", tmp_path / "shard1.h5"]
    with simulated_gpu():
        for i, shard in enumerate(shards):
            extract(shard, _config(image_folder, aux=(), shard=(i, 2)), QUIET)
    merge_stores(shards, tmp_path / "m.h5")
    assert _precisions(tmp_path / "m.h5") == {"clip": "bf16"}


# --------------------------------------------------------------------------- command line


def _extract_args(image_folder, store, *flags) -> list[str]:
    return ["extract", str(image_folder), str(store), "--model", "clipcache-tiny-vit", "--pretrained", "none",
            "--split", "test", "--workers", "0", "--batch-size", "3", *flags]


def test_cli_amp_specs_set_each_backbones_precision(image_folder, tmp_path):
    store = tmp_path / "s.h5"
    with simulated_gpu():
        flags = ("--aux", LITE0, "--image-size", "64", "--amp", "bf16", "--amp", f"{LITE0}=fp32")
        result = CliRunner().invoke(cli, _extract_args(image_folder, store, *flags))
    assert result.exit_code == 0, result.output
    assert f"test 6 rows of clip (bf16), {LITE0} (fp32);" in result.stdout and result.stderr == ""
    assert _precisions(store) == {"clip": "bf16", LITE0: "fp32"}


def test_cli_old_amp_none_still_means_fp32_with_a_deprecation_message(image_folder, tmp_path):
    store = tmp_path / "s.h5"
    with simulated_gpu():
        result = CliRunner().invoke(cli, _extract_args(image_folder, store, "--amp", "none"))
    assert result.exit_code == 0, result.output
    assert result.stderr == "clipcache: --amp none is deprecated and will be removed in the next release; use --amp fp32\n"
    assert _precisions(store) == {"clip": "fp32"}  # the ViT's default would be bf16


def test_cli_refuses_a_bad_amp_in_one_line(image_folder, tmp_path):
    result = CliRunner().invoke(cli, _extract_args(image_folder, tmp_path / "s.h5", "--amp", "clip=fp8"))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: amp 'clip=fp8': 'fp8' is not one of fp32, bf16, fp16; write PRECISION for every backbone, or "
        "FEATURE_SET=PRECISION for one, e.g. clip=bf16 (--amp)"
    ]
    assert not (tmp_path / "s.h5").exists()


def test_cli_resume_in_another_precision_is_one_line(image_folder, tmp_path):
    store = tmp_path / "s.h5"
    with simulated_gpu():
        assert CliRunner().invoke(cli, _extract_args(image_folder, store)).exit_code == 0
    result = CliRunner().invoke(cli, _extract_args(image_folder, store, "--resume"))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {store}: feature set 'clip' was computed in bf16, but this run computes it in fp32 on cpu (autocast is "
        "used on cuda only); resume on a cuda device, or extract into a new store (--amp)"
    ]


def test_info_shows_each_feature_sets_precision(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStore(path, "w") as store:
        store.add_feature_set("clip", 4, provenance={"model": "m", "precision": "bf16"})
        store.add_feature_set("lite", 4, provenance={"model": "e", "precision": "fp32"})
        store.add_feature_set("old", 4, provenance={"model": "o"})
    out = CliRunner().invoke(cli, ["info", str(path)]).output.splitlines()
    assert out[out.index("  clip: dim 4, float32, L2-normalised; model=m") + 1] == "    precision: bf16"
    assert out[out.index("  lite: dim 4, float32, L2-normalised; model=e") + 1] == "    precision: fp32"
    assert out[out.index("  old: dim 4, float32, L2-normalised; model=o") + 1] == (
        "    precision: not recorded (an older release wrote it; read as fp32)"
    )
    d = json.loads(CliRunner().invoke(cli, ["info", str(path), "--json"]).output)
    assert {name: f["provenance"].get("precision") for name, f in d["feature_sets"].items()} == {
        "clip": "bf16", "lite": "fp32", "old": None
    }


def test_frozen_version_1_store_reads_as_fp32():
    from tests.feature_store.test_frozen_v1 import FROZEN

    with FeatureStore(FROZEN) as store:
        infos = store.feature_sets
    assert {name: schema.precision_of(i.provenance) for name, i in infos.items()} == {"clip": "fp32", "aux": "fp32"}
    assert [schema.PRECISION in i.provenance or schema.PRECISION in i.identity() for i in infos.values()] == [False, False]
