"""Real data from ../shared/data: CIFAR-10 JPEGs and Fashion-MNIST idx with the pretrained EfficientNet-lite0."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from clipcache import FeatureStore
from clipcache.extract.datasets import open_dataset
from clipcache.extract.loop import ExtractConfig, RunOptions, extract

CIFAR_CLASSES = ("airplane", "automobile", "frog", "ship")
pytestmark = pytest.mark.data

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.fixture
def cifar_subset(shared_data, tmp_path):
    """16 train and 10 test JPEGs of 4 CIFAR-10 classes, extracted from the shared tarball."""
    wanted = {f"cifar10-jpg/{split}/{cls}/{i:04d}.jpg" for cls in CIFAR_CLASSES for split, n in (("train", 16), ("test", 10)) for i in range(n)}
    with tarfile.open(shared_data / "cifar10-jpg.tar.gz") as tar:
        members = [m for m in tar if m.name in wanted]
        tar.extractall(tmp_path, members=members, filter="data")
    assert len(members) == len(wanted)
    return tmp_path / "cifar10-jpg"


def _ncm_accuracy(store, name) -> float:
    with FeatureStore(store) as fs:
        x, y = fs.to_numpy("train", name)
        xt, yt = fs.to_numpy("test", name)
    means = np.stack([x[y == c].mean(0) for c in range(int(y.max()) + 1)])
    return float(((xt @ means.T).argmax(1) == yt).mean())


def test_pretrained_lite0_separates_cifar_better_than_random(cifar_subset, tmp_path):
    aux = ("efficientnet-lite0", "timm:tf_efficientnet_lite0=none")
    config = ExtractConfig(source=str(cifar_subset), aux=aux, image_size=160, batch_size=16)
    extract(tmp_path / "s.h5", config, RunOptions(progress=False))
    pretrained = _ncm_accuracy(tmp_path / "s.h5", "efficientnet-lite0")
    random = _ncm_accuracy(tmp_path / "s.h5", "tf_efficientnet_lite0")
    assert pretrained >= 0.7 and pretrained > random + 0.2


def test_fashion_mnist_idx_first_per_class(shared_data):
    ds = open_dataset(shared_data / "fashion-mnist", classes=FASHION)
    assert len(ds.splits["train"]) == 60000 and len(ds.splits["test"]) == 10000
    assert ds.splits["train"].keys[0] == "train-images-idx3-ubyte.gz#0"
    image = ds.splits["test"].load(0)
    assert image.mode == "RGB" and image.size == (28, 28)
    assert ds.classes[int(ds.splits["test"].labels[0])] == "Ankle boot"
