"""Extraction on a CUDA GPU against CPU fp32, in every precision (skipped without CUDA).

The images are those of issue 15: the first 20 train and 30 test images of each
class of the shared CIFAR-10 JPEGs (500 images), decoded on the CPU in both runs
(the nvJPEG path has its own tests in test_decode_gpu.py). The backbones are ViT-B-32
with random weights (the ``clip`` feature set) and the ImageNet-pretrained
EfficientNet-lite0. Each GPU store must hold the same ids, paths and labels as
the CPU fp32 store, and its features must lie within the cosine tolerances of
``TOLERANCES``, set just below the cosines measured on one NVIDIA H200 (torch
2.11; docs/extraction.md, "Why these defaults"), which ``pytest -s`` prints. Run
with ``python -m pytest -m data tests/extract/test_gpu.py -s`` on a CUDA machine.
"""

from __future__ import annotations

import dataclasses
import tarfile

import numpy as np
import pytest
import torch

from clipcache import FeatureStore
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from clipcache.feature_store import schema
from tests.conftest import SHARED_DATA

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LITE0 = "efficientnet-lite0"
PER_CLASS = {"train": 20, "test": 30}
#: (minimum, mean) row-wise cosine of the GPU features to the CPU fp32 features, by precision and feature set.
#: Measured on an H200 (min / mean): fp32 1.00000 / 1.00000 (clip), 0.99998 / 1.00000 (lite0); bf16 0.99994 /
#: 0.99996, 0.98498 / 0.99722; fp16 1.00000 / 1.00000, 0.99992 / 0.99997.
TOLERANCES = {
    "fp32": {"clip": (0.9999, 0.9999), LITE0: (0.9999, 0.9999)},
    "bf16": {"clip": (0.9999, 0.9999), LITE0: (0.98, 0.995)},
    "fp16": {"clip": (0.9999, 0.9999), LITE0: (0.9999, 0.9999)},
}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """The first 20 train and 30 test JPEGs of each CIFAR-10 class, unpacked from the shared tarball."""
    tarball = SHARED_DATA / "cifar10-jpg.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"real data not found at {tarball} (../shared/data beside the checkout)")
    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(tarball) as tar:
        members = [m for m in tar if m.isfile() and _wanted(m.name)]
        tar.extractall(root, members=members, filter="data")
    return root / "cifar10-jpg"


def _wanted(name: str) -> bool:
    parts = name.split("/")  # cifar10-jpg/<split>/<class>/<NNNN>.jpg
    return len(parts) == 4 and parts[1] in PER_CLASS and int(parts[3].split(".")[0]) < PER_CLASS[parts[1]]


def _config(source) -> ExtractConfig:
    return ExtractConfig(source=str(source), model="ViT-B-32", pretrained="none", aux=(LITE0,), batch_size=100)


@pytest.fixture(scope="module")
def cpu_store(cifar, tmp_path_factory):
    path = tmp_path_factory.mktemp("cpu") / "cpu.h5"
    extract(path, _config(cifar), RunOptions(device="cpu", workers=4, progress=False))
    return path


def _rows(path) -> dict:
    with FeatureStore(path) as store:
        return {split: (list(store.ids(split)), list(store.paths(split)), store.labels(split).tolist()) for split in store.splits}


def _cosines(gpu_path, cpu_path, feature_set: str) -> np.ndarray:
    with FeatureStore(gpu_path) as gpu, FeatureStore(cpu_path) as cpu:
        return np.concatenate([(gpu.features(s, feature_set) * cpu.features(s, feature_set)).sum(1) for s in cpu.splits])


@pytest.mark.parametrize(
    ("amp", "expected"),
    [
        ("fp32", {"clip": "fp32", LITE0: "fp32"}),
        ("bf16", {"clip": "bf16", LITE0: "bf16"}),
        ("fp16", {"clip": "fp16", LITE0: "fp16"}),
        (None, {"clip": "bf16", LITE0: "fp32"}),  # the defaults per backbone
    ],
    ids=["fp32", "bf16", "fp16", "default"],
)
def test_cuda_features_match_cpu_fp32(cifar, cpu_store, tmp_path, amp, expected):
    gpu_path = tmp_path / "gpu.h5"
    report = extract(gpu_path, _config(cifar), RunOptions(device="cuda", amp=amp, decode="cpu", workers=4, progress=False))
    assert report.precisions == expected
    with FeatureStore(gpu_path) as store:
        assert {name: schema.precision_of(i.provenance) for name, i in store.feature_sets.items()} == expected
    assert report.rows == {"test": 300, "train": 200}
    assert _rows(gpu_path) == _rows(cpu_store)
    for feature_set, precision in expected.items():
        cosine = _cosines(gpu_path, cpu_store, feature_set)
        low, mean = TOLERANCES[precision][feature_set]
        print(f"{feature_set} {precision}: cosine to CPU fp32 min {cosine.min():.5f}, mean {cosine.mean():.5f}")
        assert cosine.min() >= low and cosine.mean() >= mean, (feature_set, precision, cosine.min(), cosine.mean())


def test_cuda_graphs_store_the_eager_features_bit_for_bit(cifar, tmp_path, monkeypatch):
    """``RunOptions.cuda_graphs``: replaying each tower's captured kernels stores exactly what launching them
    eagerly does."""
    from clipcache.extract import loop

    options = RunOptions(device="cuda", decode="cpu", workers=4, progress=False)
    extract(tmp_path / "eager.h5", _config(cifar), dataclasses.replace(options, cuda_graphs=False))
    replays = []
    real = loop._GraphedFeatures.features

    def features(self, batch):
        replays.append(batch.shape[0] == self.static_input.shape[0])
        return real(self, batch)

    monkeypatch.setattr(loop._GraphedFeatures, "features", features)
    extract(tmp_path / "graphed.h5", _config(cifar), options)
    assert replays == [True] * 10  # 5 full batches of 100, two backbones
    assert _rows(tmp_path / "graphed.h5") == _rows(tmp_path / "eager.h5")
    with FeatureStore(tmp_path / "graphed.h5") as graphed, FeatureStore(tmp_path / "eager.h5") as eager:
        for split in eager.splits:
            for name in eager.feature_sets:
                a, b = graphed.features(split, name), eager.features(split, name)
                print(f"{split} {name}: largest difference {np.abs(a - b).max():.3g}")
                assert np.array_equal(a, b), (split, name)


@pytest.mark.parametrize("decode", ["hybrid", "gpu"])
def test_resizing_on_a_stream_of_its_own_stores_the_default_features_bit_for_bit(cifar, tmp_path, monkeypatch, decode):
    """``loop.PREPROCESS_STREAM``: the decode thread resizes each batch on a side stream, which the loop's stream
    waits for; the same kernels, so the same features, and no block of a batch reused while it is encoded."""
    from clipcache.extract import loop

    options = RunOptions(device="cuda", decode=decode, workers=4, progress=False)
    extract(tmp_path / "default.h5", _config(cifar), options)
    monkeypatch.setattr(loop, "PREPROCESS_STREAM", True)
    extract(tmp_path / "side.h5", _config(cifar), options)
    assert _rows(tmp_path / "side.h5") == _rows(tmp_path / "default.h5")
    with FeatureStore(tmp_path / "side.h5") as side, FeatureStore(tmp_path / "default.h5") as default:
        for split in default.splits:
            for name in default.feature_sets:
                a, b = side.features(split, name), default.features(split, name)
                print(f"{decode} {split} {name}: largest difference {np.abs(a - b).max():.3g}")
                assert np.array_equal(a, b), (split, name)
