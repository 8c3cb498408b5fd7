"""The torch backend's exact search (TorchFlatIndex, knn_blocks) on the CPU, against faiss Flat."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from clipcache.errors import InvalidParameterError, QueryError
from clipcache.retrieval.torch_flat import TorchFlatIndex, default_query_rows, knn_blocks
from tests.retrieval.conftest import clustered_rows

FAISS_FLAT = {"ip": faiss.IndexFlatIP, "l2": faiss.IndexFlatL2}


def untied(scores: np.ndarray, metric: str, tol: float = 1e-5) -> np.ndarray:
    """(q, k) bool: slots whose reference score differs from both neighbours' by more than ``tol``."""
    gaps = np.abs(np.diff(scores, axis=1))
    out = np.ones(scores.shape, dtype=bool)
    out[:, 1:] &= gaps > tol
    out[:, :-1] &= gaps > tol
    return out


def assert_same_neighbours(scores, ids, ref_scores, ref_ids, metric, atol=2e-5) -> None:
    """Scores within float32 rounding of the reference; ids equal wherever the reference is not tied."""
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=atol)
    mask = untied(ref_scores, metric)
    assert mask.mean() > 0.9
    np.testing.assert_array_equal(ids[mask], ref_ids[mask])


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Database (2000, 24) and queries (150, 24), float32, clustered, not normalised (so that L2 and IP differ)."""
    rng = np.random.default_rng(7)
    x = clustered_rows(rng, 2150, 24, 40) * rng.uniform(0.5, 2.0, size=(2150, 1)).astype(np.float32)
    return np.ascontiguousarray(x[:2000]), np.ascontiguousarray(x[2000:])


def faiss_flat(xb: np.ndarray, xq: np.ndarray, k: int, metric: str):
    index = FAISS_FLAT[metric](xb.shape[1])
    index.add(xb)
    return index.search(xq, k)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_equals_faiss_flat(data, metric):
    xb, xq = data
    index = TorchFlatIndex(xb.shape[1], metric, device="cpu")
    index.add(xb)
    scores, ids = index.search(xq, 10)
    ref_scores, ref_ids = faiss_flat(xb, xq, 10, metric)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == ids.shape == (150, 10)
    assert_same_neighbours(scores, ids, ref_scores, ref_ids, metric)
    order = np.diff(scores, axis=1)
    assert (order <= 0).all() if metric == "ip" else (order >= 0).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_tiny_blocks_streamed_through_the_device_give_the_same_result(data, metric):
    """block_rows=7 with no device memory: every block stays on the host and streams through at each search."""
    xb, xq = data
    streamed = TorchFlatIndex(xb.shape[1], metric, device="cpu", block_rows=7, query_rows=4, device_memory=0)
    for start in range(0, len(xb), 333):  # several adds, none a multiple of the block size
        streamed.add(xb[start : start + 333])
    assert (streamed.ntotal, streamed.resident_bytes, streamed.streamed_bytes) == (2000, 0, xb.nbytes)
    assert len(list(streamed.iter_blocks())) == -(-2000 // 7)
    scores, ids = streamed.search(xq, 12)
    ref_scores, ref_ids = faiss_flat(xb, xq, 12, metric)
    assert_same_neighbours(scores, ids, ref_scores, ref_ids, metric)


def test_device_memory_keeps_whole_blocks_resident_up_to_the_budget(data):
    xb, _ = data
    block_bytes = 100 * xb.shape[1] * 4
    index = TorchFlatIndex(xb.shape[1], device="cpu", block_rows=100, device_memory=3 * block_bytes + 5)
    index.add(xb)
    assert (index.resident_bytes, index.streamed_bytes) == (3 * block_bytes, xb.nbytes - 3 * block_bytes)


def test_k_equal_to_ntotal_and_blocks_smaller_than_k(data):
    xb, xq = data
    index = TorchFlatIndex(xb.shape[1], device="cpu", block_rows=3)
    index.add(xb[:50])
    scores, ids = index.search(xq[:5], 50)
    assert (np.sort(ids, axis=1) == np.arange(50)).all()  # every vector once
    np.testing.assert_allclose(scores, -np.sort(-(xq[:5] @ xb[:50].T), axis=1), atol=1e-5)


def test_knn_blocks_numbers_neighbours_from_each_block_offset():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((30, 8)).astype(np.float32)
    blocks = [(1000, xb[:10], None), (5000, torch.from_numpy(xb[10:]), None)]
    _, ids = knn_blocks(xb[[3, 25]], blocks, 1, metric="l2", device="cpu")
    np.testing.assert_array_equal(ids[:, 0], [1003, 5015])


def reference_half(xb: np.ndarray, xq: np.ndarray, k: int, dtype: str):
    """Exact inner-product top-k over database and queries rounded to ``dtype``, in float64."""
    def rounded(x):
        return torch.from_numpy(x).to(getattr(torch, dtype)).double().numpy()

    s = rounded(xq) @ rounded(xb).T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


@pytest.mark.parametrize(("dtype", "min_recall"), [("float16", 0.995), ("bfloat16", 0.98)])
def test_half_storage_is_exact_search_of_the_rounded_vectors_with_measured_recall(dtype, min_recall):
    """float16/bfloat16 storage: the exact result over the rounded vectors; recall@10 against float32 measured."""
    rng = np.random.default_rng(11)
    x = clustered_rows(rng, 4200, 64, 60, spread=0.3)
    xb, xq = x[:4000], x[4000:]
    index = TorchFlatIndex(64, device="cpu", dtype=dtype, block_rows=1000)
    index.add(xb)
    assert index.resident_bytes == xb.size * 2  # two bytes a value
    scores, ids = index.search(xq, 10)
    ref_scores, ref_ids = reference_half(xb, xq, 10, dtype)
    assert_same_neighbours(scores, ids, ref_scores, ref_ids, "ip", atol=1e-5)
    exact = faiss_flat(xb, xq, 10, "ip")[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
    assert min_recall <= recall < 1.0  # some loss, measured, and bounded


def test_default_query_rows_bound_the_score_scratch():
    assert default_query_rows("cpu", 16384) == 1024  # 64 MiB of float32 scores
    assert default_query_rows("cuda:0", 262144) == 1024  # 1 GiB
    assert default_query_rows("cpu", 1 << 40) == 1


def test_bad_sizes_and_shapes_are_refused():
    with pytest.raises(InvalidParameterError) as err:
        TorchFlatIndex(8, block_rows=0)
    assert err.value.param == "block_rows"
    with pytest.raises(InvalidParameterError) as err:
        TorchFlatIndex(8, device_memory=-1)
    assert err.value.param == "device_memory"
    with pytest.raises(InvalidParameterError) as err:
        TorchFlatIndex(8, metric="cosine")
    assert err.value.param == "metric"
    index = TorchFlatIndex(8)
    with pytest.raises(QueryError, match=r"shape \(n, 8\), not \(3, 5\)"):
        index.add(np.zeros((3, 5), np.float32))
    index.add(np.eye(8, dtype=np.float32))
    with pytest.raises(QueryError, match="between 1 and the 8 indexed vectors, not 9"):
        index.search(np.eye(8, dtype=np.float32), 9)
