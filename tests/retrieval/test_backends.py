"""Backend choice (auto, faiss, torch) and the torch backend behind build_index, load_index, search, support, kNN and OOD."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import faiss
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.classifiers import KNNClassifier
from clipcache.cli import retrieval as cli_retrieval
from clipcache.cli.main import cli
from clipcache.errors import ClipCacheError, IndexMismatchError, InvalidParameterError
from clipcache.ood import OODDetector
from clipcache.retrieval import (
    BACKENDS,
    DTYPES,
    build_index,
    choose_backend,
    index_path,
    index_store,
    load_index,
    retrieve_support,
    search,
    search_store,
)
from clipcache.retrieval import backends as backends_module
from clipcache.retrieval.index import read_sidecar, rows_path, sidecar_path
from clipcache.retrieval.query import find_index
from tests.retrieval.conftest import clustered_rows, write_store

NO_CUDA = not torch.cuda.is_available()


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def untied_equal(rows, ref_rows, ref_scores, tol=1e-5) -> None:
    """Rows equal wherever the reference score is not tied (by more than ``tol``) with a neighbour."""
    gaps = np.abs(np.diff(ref_scores, axis=1))
    mask = np.ones(ref_rows.shape, dtype=bool)
    mask[:, 1:] &= gaps > tol
    mask[:, :-1] &= gaps > tol
    assert mask.mean() > 0.9
    np.testing.assert_array_equal(rows[mask], ref_rows[mask])


# -- the auto choice ----------------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch):
    """faiss without GPU support (as installed here) and torch without CUDA, whatever the machine has."""
    monkeypatch.setattr(backends_module, "faiss_gpu_status", lambda: "faiss has no GPU support (faiss-cpu)")
    monkeypatch.setattr(backends_module, "torch_cuda_available", lambda: False)


@pytest.fixture
def fake_faiss_gpu(monkeypatch):
    """faiss-gpu simulated: GPU resources exist, one GPU is seen, and cloning to it returns the CPU index."""
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: index, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", faiss.ParameterSpace, raising=False)
    backends_module.faiss_gpu_status.cache_clear()
    yield
    backends_module.faiss_gpu_status.cache_clear()


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch reports a CUDA GPU (nothing is run on it)."""
    monkeypatch.setattr(backends_module, "torch_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_without_any_gpu_is_faiss_on_the_cpu(no_gpu, caplog):
    with caplog.at_level(logging.INFO, logger="clipcache.retrieval.backends"):
        choice = choose_backend("auto")
    assert choice.to_dict() == {
        "requested": "auto", "name": "faiss", "device": "cpu", "dtype": "float32",
        "reason": "faiss has no GPU support (faiss-cpu); torch sees no CUDA GPU",
    }
    assert caplog.messages == [
        "search backend: faiss on cpu (float32; faiss has no GPU support (faiss-cpu); torch sees no CUDA GPU)"
    ]


def test_auto_takes_faiss_gpu_when_its_probe_search_passes(fake_faiss_gpu, fake_cuda):
    assert backends_module.faiss_gpu_status() is None
    choice = choose_backend("auto")
    assert (choice.name, choice.device, choice.reason) == ("faiss", "gpu", "faiss-gpu passed its probe search")
    assert (choose_backend("auto", factory="IVF64,Flat").name, choose_backend("auto", factory="HNSW32").device) == (
        "faiss", "gpu"
    )


def test_auto_skips_faiss_gpu_whose_probe_fails_and_takes_torch_on_cuda(fake_faiss_gpu, fake_cuda, monkeypatch):
    def broken(index):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", broken)
    choice = choose_backend("auto")
    assert (choice.name, choice.device) == ("torch", "cuda")
    assert choice.reason == (
        "the faiss-gpu probe search failed (CUDA error: no kernel image is available for execution on the device); "
        "torch sees a CUDA GPU"
    )


def test_auto_without_faiss_gpu_is_torch_on_cuda_for_flat_and_faiss_cpu_otherwise(no_gpu, fake_cuda):
    assert (choose_backend("auto").name, choose_backend("auto").device) == ("torch", "cuda")
    ivf = choose_backend("auto", factory="IVF64,Flat")
    assert (ivf.name, ivf.device, ivf.reason) == (
        "faiss", "cpu", "faiss has no GPU support (faiss-cpu); 'IVF64,Flat' is faiss-only"
    )
    assert choose_backend("auto", device="cuda:1").device == "cuda:1"


def test_auto_on_device_cpu_stays_on_faiss_and_a_half_dtype_takes_torch(fake_faiss_gpu, fake_cuda):
    assert (choose_backend("auto", device="cpu").name, choose_backend("auto", device="cpu").device) == ("faiss", "cpu")
    half = choose_backend("auto", dtype="float16")
    assert (half.name, half.device, half.dtype) == ("torch", "cuda", "float16")
    assert choose_backend("auto", device="cpu", dtype="bfloat16").device == "cpu"


def test_scans_never_take_faiss_gpu(fake_faiss_gpu, monkeypatch):
    monkeypatch.setattr(backends_module, "torch_cuda_available", lambda: False)
    assert choose_backend("auto").device == "gpu"
    choice = choose_backend("auto", faiss_gpu=False)
    assert (choice.name, choice.device, choice.reason) == (
        "faiss", "cpu", "faiss-gpu is not used for block-by-block scans; torch sees no CUDA GPU"
    )


def test_explicit_backends_and_gpu_flag(no_gpu, caplog):
    assert choose_backend("torch").to_dict() == {
        "requested": "torch", "name": "torch", "device": "cpu", "dtype": "float32", "reason": "asked for"
    }
    with caplog.at_level(logging.WARNING):
        choice = choose_backend("faiss", gpu=True)
    assert (choice.name, choice.device) == ("faiss", "cpu")
    assert "a GPU was asked for, but faiss-gpu is not usable (faiss has no GPU support (faiss-cpu))" in caplog.text


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine where torch sees no CUDA GPU")
def test_torch_on_a_cuda_device_that_torch_does_not_see_is_refused():
    with pytest.raises(ClipCacheError) as err:
        choose_backend("torch", device="cuda")
    assert str(err.value) == "device 'cuda' was asked for but torch sees no CUDA GPU; use device='cpu' or backend='auto'"
    assert err.value.param == "device"


@pytest.mark.parametrize(
    ("kwargs", "param", "message"),
    [
        ({"backend": "cuda"}, "backend", "backend must be one of auto, faiss, torch, not 'cuda'"),
        ({"backend": "torch", "factory": "IVF1024,Flat"}, "backend",
         "the torch backend searches exact 'Flat' indexes only, not 'IVF1024,Flat'; "
         "use backend='faiss' or 'auto' for IVF, PQ and HNSW"),
        ({"backend": "torch", "factory": "HNSW32"}, "backend", None),
        ({"backend": "torch", "factory": "IVF64,PQ8"}, "backend", None),
        ({"dtype": "float64"}, "dtype", "dtype must be one of float32, float16, bfloat16, not 'float64'"),
        ({"backend": "faiss", "dtype": "float16"}, "dtype",
         "dtype='float16' needs the torch backend and a 'Flat' index (faiss keeps float32 vectors); "
         "use dtype='float32' or backend='torch'"),
        ({"device": 3}, "device", "device must be a name such as 'cpu' or 'cuda', not 3"),
        ({"backend": "torch", "device": "gpu0"}, "device", "device 'gpu0' is not a torch device; use 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_impossible_choices_are_one_sentence_value_errors(kwargs, param, message):
    with pytest.raises(InvalidParameterError) as err:
        choose_backend(**kwargs)
    assert isinstance(err.value, ValueError) and err.value.param == param
    assert "\n" not in str(err.value) and not str(err.value).endswith(".")
    if message is not None:
        assert str(err.value) == message


def test_torch_for_ivf_is_refused_before_the_store_is_read(tmp_path):
    with pytest.raises(InvalidParameterError, match="exact 'Flat' indexes only") as err:
        index_store(tmp_path / "absent.h5", "db", factory="IVF8,Flat", backend="torch")
    assert err.value.param == "backend"


def test_auto_does_not_import_torch_on_a_machine_without_a_gpu_driver():
    if backends_module._gpu_driver_present():
        pytest.skip("this machine has a GPU driver, so auto asks torch")
    code = (
        "import sys; from clipcache.retrieval import choose_backend; "
        "c = choose_backend('auto'); print(c.name, c.device, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["faiss", "cpu", "False"]


def test_cli_choices_are_the_library_lists():
    for command in (cli_retrieval.index, cli_retrieval.search, cli_retrieval.support):
        options = {p.name: p for p in command.params}
        assert tuple(options["backend"].type.choices) == BACKENDS
        if "dtype" in options:
            assert tuple(options["dtype"].type.choices) == DTYPES


# -- the torch backend behind StoreIndex ----------------------------------------------------


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_torch_store_index_equals_faiss_flat_and_gives_the_same_hits(db, metric):
    path, _, xq = db
    with FeatureStore(path) as store:
        ref = build_index(store, "db", "clip", metric=metric, backend="faiss")
        index = build_index(store, "db", "clip", metric=metric, backend="torch", device="cpu")
        assert (index.backend.name, index.device, index.uses_torch) == ("torch", "cpu", True)
        got, want = index.search(xq, 10), ref.search(xq, 10)
        np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=2e-6)
        untied_equal(got.rows, want.rows, want.scores)
        hits = search(store, index, ids=["queries-00003", "db-00010"], k=4)
        ref_hits = search(store, ref, ids=["queries-00003", "db-00010"], k=4)
    assert [[(h.row, h.id, h.path, h.label, h.class_name) for h in q] for q in hits] == [
        [(h.row, h.id, h.path, h.label, h.class_name) for h in q] for q in ref_hits
    ]
    assert hits[1][0].id == "db-00010"


def test_a_store_streamed_in_tiny_blocks_gives_the_faiss_result(db):
    path, _, xq = db
    with FeatureStore(path) as store:
        ref = build_index(store, "db", "clip", backend="faiss").search(xq, 7)
        index = build_index(store, "db", "clip", backend="torch", device="cpu", chunk_rows=11, block_rows=5,
                            device_memory=0)
        got = index.search(xq, 7)
    assert (index.index.resident_bytes, index.index.streamed_bytes) == (0, 300 * 16 * 4)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=0, atol=2e-6)
    untied_equal(got.rows, ref.rows, ref.scores)


def test_torch_save_writes_the_sidecar_and_rows_only_and_both_backends_load_it(db):
    path, _, xq = db
    target = index_path(path, "db", "clip")
    with FeatureStore(path) as store:
        built = build_index(store, "db", "clip", backend="torch", device="cpu")
        expected = built.search(xq, 5)
        built.save(target)
        by_torch = load_index(store, "db", "clip", backend="torch", device="cpu", dtype="float16")
        by_faiss = load_index(store, "db", "clip", backend="faiss")
        half, flat = by_torch.search(xq, 5), by_faiss.search(xq, 5)
    assert sorted(p.name for p in path.parent.iterdir()) == ["db.db.clip.faiss.json", "db.db.clip.faiss.rows.npy", "db.h5"]
    meta = read_sidecar(target)
    assert (meta["format_version"], meta["vectors"], meta["factory"], meta["ntotal"]) == (2, "store", "Flat", 300)
    assert "index_sha256" not in meta and len(meta["rows_sha256"]) == 64
    assert (by_torch.backend.dtype, by_faiss.backend.name, type(by_faiss.index).__name__) == ("float16", "faiss", "IndexFlat")
    np.testing.assert_array_equal(flat.rows, expected.rows)
    np.testing.assert_allclose(flat.scores, expected.scores, atol=2e-6)
    assert (half.rows[:, 0] == expected.rows[:, 0]).mean() > 0.95
    np.testing.assert_allclose(half.scores, expected.scores, atol=3e-3)  # float16 rounding


def test_a_saved_faiss_flat_index_loads_on_torch_and_torch_replaces_it(db):
    path, _, xq = db
    target = index_path(path, "db", "clip")
    with FeatureStore(path) as store:
        build_index(store, "db", "clip", backend="faiss").save(target)
        faiss_meta = read_sidecar(target)
        from_faiss_file = load_index(store, "db", "clip", backend="torch", device="cpu")
        expected = load_index(store, "db", "clip", backend="faiss").search(xq, 5)
        got = from_faiss_file.search(xq, 5)
        build_index(store, "db", "clip", backend="torch", device="cpu").save(target)
    assert (faiss_meta["format_version"], faiss_meta["vectors"]) == (1, "index_file")
    assert from_faiss_file.uses_torch
    untied_equal(got.rows, expected.rows, expected.scores)
    assert not target.exists()  # the faiss file of the earlier build is gone: the sidecar no longer names it
    assert read_sidecar(target)["vectors"] == "store"


def test_a_torch_index_is_found_beside_the_store_and_named_by_its_sidecar(db):
    path, _, _ = db
    summary = index_store(path, "db", backend="torch", device="cpu")
    target = index_path(path, "db", "clip")
    assert summary["files"] == [str(rows_path(target)), str(sidecar_path(target))]
    assert summary["backend"]["name"] == "torch" and summary["device"] == "cpu"
    with FeatureStore(path) as store:
        assert find_index(store) == target
    report = search_store(path, index_file=sidecar_path(target), ids=["queries-00001"], k=3, backend="torch", device="cpu")
    assert report.backend["name"] == "torch" and report.to_dict()["backend"] == report.backend
    assert len(report.hits[0]) == 3


def test_a_stale_torch_index_is_refused_before_its_vectors_are_read(db, monkeypatch):
    path, xb, _ = db
    index_store(path, "db", backend="torch", device="cpu")
    write_store(path, {"db": (xb, np.zeros(len(xb), int))})  # the store recreated: same rows, new uuid
    read = []
    monkeypatch.setattr(FeatureStore, "iter_chunks", lambda *a, **k: read.append(1) or iter(()))
    for backend in ("torch", "faiss"):
        with FeatureStore(path) as store, pytest.raises(IndexMismatchError, match="has changed since"):
            load_index(store, "db", "clip", backend=backend, device="cpu" if backend == "torch" else None)
    assert read == []


def test_loading_an_ivf_index_on_torch_is_refused(db):
    path, _, _ = db
    index_store(path, "db", factory="IVF8,Flat")
    with FeatureStore(path) as store, pytest.raises(InvalidParameterError, match="not 'IVF8,Flat'") as err:
        load_index(store, "db", "clip", backend="torch")
    assert err.value.param == "backend"


def test_support_scan_on_torch_equals_the_faiss_scan(pool_store):
    path, _, _ = pool_store
    with FeatureStore(path) as store:
        ref = retrieve_support(store, "pool", "clip", 9, backend="faiss")
        got = retrieve_support(store, "pool", "clip", 9, backend="torch", device="cpu", chunk_rows=17)
        shared = retrieve_support(store, "pool", "clip", 9, exclusive=False, backend="torch", device="cpu")
        shared_ref = retrieve_support(store, "pool", "clip", 9, exclusive=False, backend="faiss")
    np.testing.assert_array_equal(got.rows, ref.rows)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(got.scores, ref.scores, atol=2e-6)
    np.testing.assert_array_equal(shared.rows, shared_ref.rows)
    assert (got.backend["name"], ref.backend["name"]) == ("torch", "faiss")


# -- the command line ------------------------------------------------------------------------


def test_index_and_search_commands_record_the_backend_in_their_json(db):
    path, _, _ = db
    built = run("index", path, "--split", "db", "--backend", "torch", "--device", "cpu", "--json")
    assert built.exit_code == 0, built.output
    meta = json.loads(built.stdout)
    assert meta["backend"] == {"requested": "torch", "name": "torch", "device": "cpu", "dtype": "float32", "reason": "asked for"}
    assert (meta["vectors"], meta["format_version"]) == ("store", 2)
    text = run("index", path, "--split", "db", "--backend", "torch", "--device", "cpu")
    target = index_path(path, "db", "clip")
    assert text.stdout.splitlines()[-1] == (
        f"wrote {sidecar_path(target)} and {rows_path(target)} "
        "(no .faiss file: the vectors are read from the store at load time)"
    )
    assert " on torch cpu in " in text.stdout.splitlines()[0]
    found = {}
    for backend in ("torch", "faiss"):
        result = run("search", path, "--id", "queries-00002", "-k", "5", "--backend", backend, "--device", "cpu", "--json")
        assert result.exit_code == 0, result.output
        found[backend] = json.loads(result.stdout)
    assert found["torch"]["backend"]["name"] == "torch" and found["faiss"]["backend"]["name"] == "faiss"
    assert found["faiss"]["backend"]["reason"] == "asked for"
    rows = {b: [h["row"] for h in f["results"][0]["hits"]] for b, f in found.items()}
    assert rows["torch"] == rows["faiss"]


def test_support_command_records_the_backend(pool_store):
    path, _, _ = pool_store
    result = run("support", path, "--pool", "pool", "-k", "3", "--to-split", "s", "--backend", "torch", "--device", "cpu",
                 "--json")
    assert result.exit_code == 0, result.output
    backend = json.loads(result.stdout)["backend"]
    assert (backend["name"], backend["device"], backend["requested"]) == ("torch", "cpu", "torch")


def test_torch_with_an_ivf_factory_is_a_one_line_error_naming_the_flag(db):
    path, _, _ = db
    result = run("index", path, "--split", "db", "--factory", "IVF8,Flat", "--backend", "torch")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: the torch backend searches exact 'Flat' indexes only, not 'IVF8,Flat'; "
        "use backend='faiss' or 'auto' for IVF, PQ and HNSW (--backend)\n"
    )


# -- kNN classifier and OOD detector ---------------------------------------------------------


@pytest.fixture(scope="module")
def labelled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys (600, 32) with 3 labels, and 2000 queries: 1.2M products, above the numpy shortcut."""
    rng = np.random.default_rng(5)
    x = clustered_rows(rng, 2600, 32, 9, spread=0.5)
    return x[:600], np.arange(600) % 3, x[600:]


def test_knn_classifier_on_torch_votes_as_on_faiss(labelled):
    keys, y, queries = labelled
    on_faiss = KNNClassifier(n_neighbors=7, backend="faiss").fit(keys, y)
    on_torch = KNNClassifier(n_neighbors=7, backend="torch").fit(keys, y)
    assert (on_faiss.backend_["name"], on_torch.backend_["name"]) == ("faiss", "torch")
    np.testing.assert_allclose(on_torch.predict_proba(queries), on_faiss.predict_proba(queries), atol=1e-6)
    with pytest.raises(InvalidParameterError) as err:
        KNNClassifier(backend="gpu").fit(keys, y)
    assert err.value.param == "backend"


def test_knn_ood_score_on_torch_equals_faiss(labelled):
    keys, y, queries = labelled
    scores = {
        b: OODDetector("knn", k=5, backend=b).fit(keys, y).score_samples(queries) for b in ("faiss", "torch")
    }
    np.testing.assert_allclose(scores["torch"], scores["faiss"], atol=2e-6)
    with pytest.raises(InvalidParameterError) as err:
        OODDetector("knn", backend="numpy").fit(keys, y)
    assert err.value.param == "backend"
