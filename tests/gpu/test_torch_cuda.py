"""The torch backend on a CUDA GPU, against faiss Flat on the CPU. Skipped without CUDA.

Run them on a CUDA machine: ``python -m pytest -q -p no:cacheprovider tests/gpu``.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from clipcache import FeatureStore
from clipcache.retrieval import backends, build_index, choose_backend, torch_flat
from clipcache.retrieval.torch_flat import TorchFlatIndex
from tests.retrieval.conftest import clustered_rows, write_store
from tests.retrieval.test_torch_flat import FAISS_FLAT, assert_same_neighbours, reference_half

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run with the device tool when one is lent)"
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Database (20000, 128) and queries (500, 128), float32, clustered, norms 0.5 to 2."""
    rng = np.random.default_rng(3)
    x = clustered_rows(rng, 20500, 128, 200, spread=0.4) * rng.uniform(0.5, 2.0, size=(20500, 1)).astype(np.float32)
    return np.ascontiguousarray(x[:20000]), np.ascontiguousarray(x[20000:])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_cuda_float32_equals_faiss_flat(data, metric):
    xb, xq = data
    index = TorchFlatIndex(128, metric, device="cuda")
    index.add(xb)
    scores, ids = index.search(xq, 10)
    ref = FAISS_FLAT[metric](128)
    ref.add(xb)
    ref_scores, ref_ids = ref.search(xq, 10)
    assert_same_neighbours(scores, ids, ref_scores, ref_ids, metric, atol=1e-4)


def test_tf32_is_off_during_a_search_and_the_setting_is_restored(data):
    xb, xq = data
    index = TorchFlatIndex(128, device="cuda")
    index.add(xb)
    torch.set_float32_matmul_precision("high")
    try:
        scores, ids = index.search(xq, 10)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")
    ref = faiss.IndexFlatIP(128)
    ref.add(xb)
    ref_scores, ref_ids = ref.search(xq, 10)
    assert_same_neighbours(scores, ids, ref_scores, ref_ids, "ip", atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_half_storage_is_exact_search_of_the_rounded_vectors(data, dtype):
    xb, xq = data
    index = TorchFlatIndex(128, device="cuda", dtype=dtype)
    index.add(xb)
    scores, ids = index.search(xq, 10)
    ref_scores, ref_ids = reference_half(xb, xq, 10, dtype)
    assert_same_neighbours(scores, ids, ref_scores, ref_ids, "ip", atol=1e-4)


def test_half_products_run_as_one_mm_with_float32_output(data):
    xb, xq = data
    index = TorchFlatIndex(128, device="cuda", dtype="float16")
    index.add(xb)
    index.search(xq, 10)
    assert torch_flat._OUT_DTYPE_MM.get("cuda", True), "torch.mm(out_dtype=float32) failed; blocks were widened"


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_blocks_beyond_the_device_budget_stream_from_pinned_memory_with_the_same_result(data, metric):
    xb, xq = data
    resident = TorchFlatIndex(128, metric, device="cuda", dtype="float16")
    resident.add(xb)
    streamed = TorchFlatIndex(128, metric, device="cuda", dtype="float16", block_rows=3000, device_memory=2 * 3000 * 128 * 2)
    streamed.add(xb)
    assert (streamed.resident_bytes, streamed.streamed_bytes) == (2 * 3000 * 256, (20000 - 6000) * 256)
    blocks = [vectors for _, vectors, _ in streamed.iter_blocks()]
    assert [b.device.type for b in blocks] == ["cuda"] * 2 + ["cpu"] * 5 and all(b.is_pinned() for b in blocks[2:])
    want_scores, want_ids = resident.search(xq, 10)
    scores, ids = streamed.search(xq, 10)
    assert_same_neighbours(scores, ids, want_scores, want_ids, metric, atol=1e-4)


def test_store_index_on_cuda_equals_faiss(tmp_path, data):
    xb, xq = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in data)  # the store keeps normalised features
    path = tmp_path / "s.h5"
    write_store(path, {"db": (xb, np.zeros(len(xb), int))}, d=128)
    with FeatureStore(path) as store:
        ref = build_index(store, "db", "clip", backend="faiss").search(xq, 10)
        index = build_index(store, "db", "clip", backend="torch", device="cuda")
        got = index.search(xq, 10)
    assert index.backend.device == "cuda"
    assert_same_neighbours(got.scores, got.rows, ref.scores, ref.rows, "ip", atol=1e-4)


def test_auto_takes_torch_on_cuda_without_faiss_gpu():
    if backends.faiss_gpu_status() is None:
        pytest.skip("faiss-gpu works here, so auto takes it")
    choice = choose_backend("auto")
    assert (choice.name, choice.device) == ("torch", "cuda")
