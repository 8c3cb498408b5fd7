"""Building, searching, saving and loading store indexes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from clipcache import FeatureStore
from clipcache.errors import (
    ClipCacheError,
    IndexMismatchError,
    InvalidParameterError,
    OutputWriteError,
)
from clipcache.retrieval import (
    QueryError,
    build_index,
    index_path,
    index_store,
    load_index,
    search_store,
)
from clipcache.retrieval.index import read_sidecar, rows_path, sidecar_path
from tests.retrieval.conftest import D, clustered_rows, write_store


def brute_force(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k in float64: (scores (q, k), ids (q, k))."""
    s = xq.astype(np.float64) @ xb.astype(np.float64).T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found, for (q, k) id arrays."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def test_flat_search_equals_numpy_brute_force(db):
    path, xb, xq = db
    with FeatureStore(path) as store:
        result = build_index(store, "db", "clip").search(xq, 10)
    scores, ids = brute_force(xb, xq, 10)
    np.testing.assert_allclose(result.scores, scores, rtol=0, atol=1e-6)
    # Ids must agree wherever the score is not tied (within float32 rounding) with a neighbour.
    gaps = np.diff(scores, axis=1)
    untied = np.ones_like(ids, dtype=bool)
    untied[:, 1:] &= gaps < -1e-5
    untied[:, :-1] &= gaps < -1e-5
    assert untied.mean() > 0.9
    np.testing.assert_array_equal(result.rows[untied], ids[untied])


@pytest.mark.parametrize("factory", ["IVF64,Flat", "HNSW32"])
def test_approximate_indexes_reach_recall_095_at_defaults(tmp_path, factory):
    rng = np.random.default_rng(3)
    x = clustered_rows(rng, 4100, 32, 64, spread=0.18)  # nprobe=1 gets 0.948 here
    path = tmp_path / "big.h5"
    write_store(path, {"db": (x[:4000], np.zeros(4000, int))}, d=32)
    truth = brute_force(x[:4000], x[4000:], 10)[1]
    with FeatureStore(path) as store:
        found = build_index(store, "db", "clip", factory=factory).search(x[4000:], 10).rows
    assert recall_at_k(found, truth) >= 0.95


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "IVF8,PQ4x4"])
def test_chunked_add_equals_one_shot_add(db, factory):
    path, _, _ = db
    with FeatureStore(path) as store:
        chunked = build_index(store, "db", "clip", factory=factory, chunk_rows=7)
        whole = build_index(store, "db", "clip", factory=factory, chunk_rows=10_000)
    assert faiss.serialize_index(chunked.index).tobytes() == faiss.serialize_index(whole.index).tobytes()


def test_save_load_round_trip_gives_the_same_results(db):
    path, _, xq = db
    with FeatureStore(path) as store:
        built = build_index(store, "db", "clip", factory="IVF8,Flat", nprobe=3)
        before = built.search(xq, 5)
        built.save(index_path(path, "db", "clip"))
        loaded = load_index(store, "db", "clip")
        after = loaded.search(xq, 5)
    np.testing.assert_array_equal(after.rows, before.rows)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert loaded.search_params == {"nprobe": 3}
    assert (loaded.factory, loaded.metric, loaded.ntotal) == ("IVF8,Flat", "ip", 300)


def test_saved_files_lie_beside_the_store_with_sidecar_fields(db):
    path, _, _ = db
    with FeatureStore(path) as store:
        saved = build_index(store, "db", "clip").save(index_path(path, "db", "clip"))
        fingerprint = store.fingerprint("db", "clip")
    assert saved == path.with_name("db.db.clip.faiss")
    meta = json.loads(sidecar_path(saved).read_text())
    assert (meta["fingerprint"], meta["feature_set"], meta["split"], meta["metric"]) == (fingerprint, "clip", "db", "ip")
    np.testing.assert_array_equal(np.load(rows_path(saved), allow_pickle=False), np.arange(300))
    assert sorted(p.name for p in path.parent.iterdir()) == ["db.db.clip.faiss", "db.db.clip.faiss.json", "db.db.clip.faiss.rows.npy", "db.h5"]


@pytest.mark.parametrize("fails", ["write_index", "save", "write_text"])
def test_a_failed_save_leaves_the_previous_index_whole(db, monkeypatch, fails):
    path, _, xq = db
    target = index_path(path, "db", "clip")
    with FeatureStore(path) as store:
        build_index(store, "db", "clip").save(target)
        before = {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name != "db.h5"}
        expected = load_index(store, "db", "clip").search(xq, 5)
        approximate = build_index(store, "db", "clip", factory="IVF8,Flat")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    owner = {"write_index": faiss, "save": np, "write_text": Path}[fails]  # each of the three files in turn
    monkeypatch.setattr(owner, fails, fail)
    with pytest.raises(OutputWriteError) as err:
        approximate.save(target)
    monkeypatch.undo()
    assert str(err.value) == f"{target}: cannot write the index (No space left on device); free disk space or write it elsewhere"
    after = {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name != "db.h5"}
    assert after == before  # all three files as they were, and no temporary file left behind
    with FeatureStore(path) as store:
        result = load_index(store, "db", "clip").search(xq, 5)
    np.testing.assert_array_equal(result.rows, expected.rows)


def test_sidecar_names_the_hashes_of_its_files_and_a_mismatch_is_refused(db):
    path, _, _ = db
    with FeatureStore(path) as store:
        saved = build_index(store, "db", "clip").save(index_path(path, "db", "clip"))
        other = build_index(store, "db", "clip", factory="SQ8")
    meta = read_sidecar(saved)
    assert meta["index_sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert meta["rows_sha256"] == hashlib.sha256(rows_path(saved).read_bytes()).hexdigest()
    faiss.write_index(other._cpu_view(), str(saved))  # same counts, metric and structure: only the hash differs
    with FeatureStore(path) as store, pytest.raises(IndexMismatchError) as err:
        load_index(store, "db", "clip")
    assert str(err.value) == (
        f"{saved}: the index file does not match its sidecar (content hash differs; an interrupted build?); "
        "rebuild it with build_index and StoreIndex.save (clipcache index)"
    )


def test_a_sidecar_without_hashes_is_still_read(db, caplog):
    path, _, xq = db
    with FeatureStore(path) as store:
        saved = build_index(store, "db", "clip").save(index_path(path, "db", "clip"))
        expected = load_index(store, "db", "clip").search(xq, 3)
    meta = {k: v for k, v in read_sidecar(saved).items() if not k.endswith("_sha256")}
    sidecar_path(saved).write_text(json.dumps(meta))  # as clipcache 0.1.0 wrote it
    with FeatureStore(path) as store:
        result = load_index(store, "db", "clip").search(xq, 3)
    np.testing.assert_array_equal(result.rows, expected.rows)
    assert "records no content hashes" in caplog.text


def test_index_with_a_missing_folder_is_one_output_write_error(db, tmp_path):
    path, _, _ = db
    with FeatureStore(path) as store, pytest.raises(OutputWriteError) as err:
        build_index(store, "db", "clip").save(tmp_path / "nowhere" / "i.faiss")
    assert str(err.value) == (
        f"{tmp_path / 'nowhere' / 'i.faiss'}: cannot write the index (No such file or directory); "
        "check that the folder exists and is writable"
    )
    assert not (tmp_path / "nowhere").exists()


def test_index_is_refused_after_rows_are_added(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "growing.h5"
    write_store(path, {"pool": (clustered_rows(rng, 50, D, 4), np.zeros(50, int))}, complete=False)
    with FeatureStore(path) as store:
        build_index(store, "pool", "clip").save(index_path(path, "pool", "clip"))
    with FeatureStore(path, "a") as store:
        store.append("pool", ids=["extra"], paths=["/x.jpg"], labels=[0], features={"clip": clustered_rows(rng, 1, D, 1)})
    with FeatureStore(path) as store, pytest.raises(IndexMismatchError, match="has changed since .*; rebuild it with build_index"):
        load_index(store, "pool", "clip")


def test_index_of_a_recreated_store_is_refused(db):
    path, xb, xq = db
    with FeatureStore(path) as store:
        build_index(store, "db", "clip").save(index_path(path, "db", "clip"))
    write_store(path, {"db": (xb, np.zeros(len(xb), int))})  # same rows, new file
    with FeatureStore(path) as store, pytest.raises(IndexMismatchError, match="has changed since"):
        load_index(store, "db", "clip")


def test_inconsistent_sidecar_is_refused(db):
    path, _, _ = db
    with FeatureStore(path) as store:
        saved = build_index(store, "db", "clip").save(index_path(path, "db", "clip"))
    meta = json.loads(sidecar_path(saved).read_text())
    sidecar_path(saved).write_text(json.dumps({**meta, "ntotal": 299}))
    with FeatureStore(path) as store, pytest.raises(IndexMismatchError, match="disagree"):
        load_index(store, "db", "clip")


def test_unknown_sidecar_version_is_refused(db):
    path, _, _ = db
    with FeatureStore(path) as store:
        saved = build_index(store, "db", "clip").save(index_path(path, "db", "clip"))
    meta = json.loads(sidecar_path(saved).read_text())
    sidecar_path(saved).write_text(json.dumps({**meta, "format_version": 99}))
    with FeatureStore(path) as store, pytest.raises(IndexMismatchError, match="format version 99"):
        load_index(store, "db", "clip")


def test_missing_index_names_the_function_and_command_that_build_it(db):
    path, _, _ = db
    with FeatureStore(path) as store, pytest.raises(IndexMismatchError) as err:
        load_index(store, "db", "clip")
    assert str(err.value) == (
        f"{index_path(path, 'db', 'clip')}: no index there (or its sidecar db.db.clip.faiss.json is missing); "
        "build it with build_index and StoreIndex.save (clipcache index)"
    )


def test_sidecars_are_parsed_in_one_place(db):
    path, _, _ = db
    with FeatureStore(path) as store:
        saved = build_index(store, "db", "clip", factory="IVF8,Flat", nprobe=2).save(index_path(path, "db", "clip"))
    meta = read_sidecar(saved)
    assert (meta["split"], meta["feature_set"], meta["search_params"], meta["ntotal"]) == ("db", "clip", {"nprobe": 2}, 300)
    sidecar_path(saved).write_text("{not json")
    with pytest.raises(IndexMismatchError, match="the index sidecar is corrupt"):
        read_sidecar(saved)


def test_empty_split_cannot_be_indexed(tmp_path):
    path = tmp_path / "empty.h5"
    write_store(path, {"pool": (np.zeros((0, D), np.float32), np.zeros(0, int))})
    with FeatureStore(path) as store, pytest.raises(QueryError, match="would be empty"):
        build_index(store, "pool", "clip")


def test_k_larger_than_the_index_is_refused(db):
    path, _, xq = db
    with FeatureStore(path) as store:
        index = build_index(store, "db", "clip")
    with pytest.raises(QueryError, match="k=301 is larger than the 300 vectors"):
        index.search(xq, 301)


def test_query_dimension_mismatch_is_refused(db):
    path, _, _ = db
    with FeatureStore(path) as store:
        index = build_index(store, "db", "clip")
    with pytest.raises(QueryError, match="query dimension 8 does not match"):
        index.search(np.ones((2, 8), np.float32), 3)


def test_single_vector_query_is_one_query(db):
    path, _, xq = db
    with FeatureStore(path) as store:
        index = build_index(store, "db", "clip")
    np.testing.assert_array_equal(index.search(xq[0], 4).rows, index.search(xq[:1], 4).rows)


def test_invalid_factory_string_is_a_clear_error(db):
    path, _, _ = db
    with FeatureStore(path) as store, pytest.raises(ClipCacheError, match="faiss cannot build factory 'IVFxyz'"):
        build_index(store, "db", "clip", factory="IVFxyz")


def test_ivf_with_more_lists_than_rows_is_a_clear_error(db):
    path, _, _ = db
    with FeatureStore(path) as store, pytest.raises(ClipCacheError, match="needs at least 1024 training rows"):
        build_index(store, "db", "clip", factory="IVF1024,Flat")


def test_gpu_request_without_gpu_falls_back_to_the_cpu(db):
    path, _, xq = db
    with FeatureStore(path) as store:
        gpu = build_index(store, "db", "clip", gpu=True)
        cpu = build_index(store, "db", "clip")
    if faiss.get_num_gpus() > 0 and hasattr(faiss, "StandardGpuResources"):
        pytest.skip("a GPU is present")
    assert gpu.device == "cpu"
    np.testing.assert_array_equal(gpu.search(xq, 5).rows, cpu.search(xq, 5).rows)


def test_l2_metric_returns_squared_distances(db):
    path, xb, xq = db
    with FeatureStore(path) as store:
        result = build_index(store, "db", "clip", metric="l2").search(xq[:3], 1)
    expected = ((xq[:3, None, :] - xb[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(result.scores[:, 0], expected, atol=1e-5)


def test_search_restores_faiss_blas_block_sizes(db):
    path, _, xq = db
    before = (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs)
    with FeatureStore(path) as store:
        build_index(store, "db", "clip").search(xq, 3)
    assert (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs) == before


@pytest.mark.parametrize("param", ["nprobe", "ef_search", "train_size", "chunk_rows"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_build_index_refuses_a_size_that_is_not_a_positive_integer(db, param, value):
    path, _, _ = db
    with FeatureStore(path) as store, pytest.raises(InvalidParameterError, match=f"{param} must be a positive integer") as err:
        build_index(store, "db", "clip", factory="IVF8,Flat", **{param: value})
    assert err.value.param == param and isinstance(err.value, ValueError)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
@pytest.mark.parametrize("params", [{"nprobe": 0}, {"ef_search": 0}, {"nprobe": -4}, {"ef_search": -1}])
def test_set_search_params_refuses_zero_and_negative_for_every_index_type(db, factory, params):
    path, _, _ = db
    with FeatureStore(path) as store:
        index = build_index(store, "db", "clip", factory=factory)
    before = index.search_params
    with pytest.raises(InvalidParameterError) as err:
        index.set_search_params(**params)
    assert err.value.param == next(iter(params)) and index.search_params == before


def test_set_search_params_changes_the_search(db):
    path, xb, xq = db
    with FeatureStore(path) as store:
        index = build_index(store, "db", "clip", factory="IVF8,Flat", nprobe=1)
    narrow = index.search(xq, 10).rows
    index.set_search_params(nprobe=8)  # every list: exact
    assert index.search_params == {"nprobe": 8}
    np.testing.assert_array_equal(np.sort(index.search(xq, 10).rows), np.sort(brute_force(xb, xq, 10)[1]))
    assert not np.array_equal(np.sort(narrow), np.sort(brute_force(xb, xq, 10)[1]))


@pytest.mark.parametrize("params", [{"nprobe": 0}, {"ef_search": 0}, {"nprobe": -1}])
def test_search_store_refuses_zero_instead_of_ignoring_it(db, params):
    """Issue 13: ``if nprobe or ef_search`` silently dropped nprobe=0."""
    path, _, xq = db
    with FeatureStore(path) as store:
        build_index(store, "db", "clip", factory="IVF8,Flat").save(index_path(path, "db", "clip"))
    with pytest.raises(InvalidParameterError) as err:
        search_store(path, vectors=xq[:2], k=3, **params)
    assert err.value.param == next(iter(params))


def test_index_store_refuses_zero_before_reading_the_store(tmp_path):
    with pytest.raises(InvalidParameterError, match="nprobe must be a positive integer, not 0"):
        index_store(tmp_path / "missing.h5", "db", "clip", nprobe=0)


@pytest.mark.parametrize("kwargs, param", [
    ({"metric": "cosine"}, "metric"), ({"factory": " "}, "factory"), ({"factory": "IDMap,Flat"}, "factory"),
    ({"factory": "IVFxyz"}, "factory"),
])
def test_bad_factory_or_metric_names_the_parameter(db, kwargs, param):
    path, _, _ = db
    with FeatureStore(path) as store, pytest.raises(InvalidParameterError) as err:
        build_index(store, "db", "clip", **kwargs)
    assert err.value.param == param


def test_index_store_defaults_to_the_only_feature_set_of_the_split(db, tmp_path):
    path, _, _ = db
    meta = index_store(path, "db", output=tmp_path / "x.faiss")
    assert (meta["feature_set"], meta["path"], meta["ntotal"]) == ("clip", str(tmp_path / "x.faiss"), 300)
    with pytest.raises(ClipCacheError, match="no feature set 'aux'") as err:
        index_store(path, "db", "aux")
    assert err.value.param == "feature_set"
