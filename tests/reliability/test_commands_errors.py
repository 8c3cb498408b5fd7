"""Inputs that used to give a traceback or a wrong result now give one line naming the file or flag.

Each test reproduces a case of issue 12's list ("Silent wrong results and
crashes") in the model, index, search and protocol code.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from tests.classifiers.synth import write_store
from tests.retrieval.conftest import unit
from tests.retrieval.conftest import write_store as write_db

MODEL_META = "__clipcache_model__"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, status: int = 1) -> str:
    """The message of a one-line error (nothing else on stderr for status 1)."""
    assert result.exit_code == status, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    if status == 1:
        assert len(lines) == 1, result.stderr
    assert lines[-1].startswith("Error: "), result.stderr
    return lines[-1][len("Error: "):]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s.h5"
    write_store(path, aux=False)
    return path


def _fit(store, out):
    result = run("fit", store, "--method", "gda", "--shots", "2", "-o", out)
    assert result.exit_code == 0, result.output
    return out


def _no_temporary_files(folder, expected):
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)


# -- model files -----------------------------------------------------------------------


def test_truncated_npz_model_is_one_line_naming_the_file(store, tmp_path):
    model = _fit(store, tmp_path / "m.npz")
    model.write_bytes(model.read_bytes()[:300])
    message = one_line_error(run("predict", store, model, "-o", tmp_path / "p.csv"))
    assert message == f"{model}: cannot read the model file (File is not a zip file); give a file written by save_model (clipcache fit)"
    _no_temporary_files(tmp_path, ["s.h5", "m.npz"])


def _rewrite_document(model, edit):
    with h5py.File(model, "r+") as h5:
        doc = json.loads(h5.attrs[MODEL_META])
        h5.attrs[MODEL_META] = json.dumps(edit(doc))


@pytest.mark.parametrize(
    "edit",
    [
        lambda doc: {k: v for k, v in doc.items() if k != "estimator"},  # KeyError: 'estimator'
        lambda doc: [doc],  # AttributeError: 'list' object has no attribute 'get'
        lambda doc: {**doc, "metadata": "x"},  # AttributeError in predict: 'str' object has no attribute 'get'
        lambda doc: {**doc, "estimator": {**doc["estimator"], "params": {"bogus": {"value": 1}}}},  # TypeError
        lambda doc: {**doc, "estimator": {**doc["estimator"], "attrs": {"coef_": {"array": "nope"}}}},  # KeyError
        lambda doc: {**doc, "estimator": {**doc["estimator"], "attrs": {"coef_": 3}}},  # TypeError
    ],
    ids=["no-estimator", "not-an-object", "metadata-not-an-object", "unknown-parameter", "missing-array", "bad-attribute"],
)
def test_model_with_bad_metadata_is_one_line_naming_the_file(store, tmp_path, edit):
    model = _fit(store, tmp_path / "m.h5")
    _rewrite_document(model, edit)
    message = one_line_error(run("predict", store, model, "-o", tmp_path / "p.csv"))
    assert message.startswith(f"{model}: the model file is damaged (")
    assert message.endswith("); give a file written by save_model (clipcache fit)")
    _no_temporary_files(tmp_path, ["s.h5", "m.h5"])


def test_model_with_a_wrong_coefficient_shape_is_refused_and_leaves_no_csv(store, tmp_path):
    model = _fit(store, tmp_path / "m.h5")
    with h5py.File(model, "r+") as h5:
        coef = h5["est/attrs/coef_"][()]
        del h5["est/attrs/coef_"]
        h5["est/attrs/coef_"] = coef[:, :-1]  # one feature short: a matmul error at predict time
    message = one_line_error(run("predict", store, model, "-o", tmp_path / "p.csv"))
    assert message.startswith(f"{model}: the model file is damaged (")
    assert "GDAClassifier" in message
    _no_temporary_files(tmp_path, ["s.h5", "m.h5"])


# -- seeds -----------------------------------------------------------------------------


def test_negative_fit_seed_is_a_usage_error(store, tmp_path):
    message = one_line_error(run("fit", store, "--method", "ncm", "--shots", "1", "--seed", "-1", "-o", tmp_path / "m.h5"), 2)
    assert message == "Invalid value for '--seed': must be 0 or more, not -1"
    _no_temporary_files(tmp_path, ["s.h5"])


def test_negative_evaluate_seed_is_a_usage_error(store):
    message = one_line_error(run("evaluate", store, "--methods", "ncm", "--shots", "1", "--seeds", "1,-1"), 2)
    assert message == "Invalid value for '--seeds': seeds must be 0 or more, not -1"


def test_negative_index_seed_is_a_usage_error(store, tmp_path):
    result = run("index", store, "--split", "test", "--factory", "IVF2,Flat", "--seed", "-1")
    assert one_line_error(result, 2) == "Invalid value for '--seed': must be 0 or more, not -1"
    _no_temporary_files(tmp_path, ["s.h5"])


def test_index_library_refuses_a_negative_seed_before_reading(store):
    from clipcache.errors import InvalidParameterError
    from clipcache.retrieval import index_store

    with pytest.raises(InvalidParameterError, match="seed must be an integer of 0 or more, not -1") as err:
        index_store(store, "test", factory="IVF2,Flat", seed=-1)
    assert err.value.param == "seed"


# -- index and search --------------------------------------------------------------------


def test_index_over_nan_rows_is_refused(tmp_path):
    x = unit(np.random.default_rng(0).normal(size=(30, 16)))
    write_db(tmp_path / "n.h5", {"db": (x, np.zeros(30, int))})
    with h5py.File(tmp_path / "n.h5", "r+") as h5:  # the store refuses NaN on append: damage it behind its back
        h5["splits/db/features/clip"][17, 3] = np.nan
    message = one_line_error(run("index", tmp_path / "n.h5", "--split", "db"))
    assert message == (
        f"{tmp_path / 'n.h5'}: split 'db' of feature set 'clip' has NaN or inf at row 17; re-extract the split "
        "or repair the store before indexing it"
    )
    _no_temporary_files(tmp_path, ["n.h5"])


@pytest.fixture
def indexed(store):
    assert run("index", store, "--split", "test").exit_code == 0
    return store


def test_search_with_zero_query_vectors_is_an_error(indexed, tmp_path):
    np.save(tmp_path / "q.npy", np.zeros((0, 24), np.float32))
    message = one_line_error(run("search", indexed, "--vectors", tmp_path / "q.npy"), 2)
    assert message == f"Invalid value for '--vectors': {tmp_path / 'q.npy'}: holds no vectors (shape (0, 24)); give at least one row"


def test_search_library_refuses_zero_query_vectors(indexed):
    from clipcache.retrieval import QueryError, search_store

    with pytest.raises(QueryError, match="vectors has no rows; give at least one query vector") as err:
        search_store(indexed, vectors=np.zeros((0, 24), np.float32))
    assert err.value.param == "vectors"


def test_text_file_given_as_npy_gets_a_clear_message(indexed, tmp_path):
    (tmp_path / "q.npy").write_text("0.1 0.2 0.3\n")
    message = one_line_error(run("search", indexed, "--vectors", tmp_path / "q.npy"), 2)
    assert message == (
        f"Invalid value for '--vectors': {tmp_path / 'q.npy'}: not a .npy file (it lacks the NumPy header); "
        "save the vectors with numpy.save"
    )


def test_zero_query_vector_names_the_flag_not_the_api(indexed, tmp_path):
    np.save(tmp_path / "q.npy", np.zeros((1, 24), np.float32))
    message = one_line_error(run("search", indexed, "--vectors", tmp_path / "q.npy"))
    assert message == "query vector 0 is all zeros and cannot be normalised; give a nonzero vector (--vectors)"
    assert "=" not in message


@pytest.mark.parametrize("named", [False, True])
def test_corrupt_sidecar_is_reported_as_corrupt(indexed, tmp_path, named):
    sidecar = tmp_path / "s.test.clip.faiss.json"
    sidecar.write_text("{not json")
    np.save(tmp_path / "q.npy", np.ones((1, 24), np.float32))
    args = ("--split", "test", "--feature-set", "clip") if named else ("--split", "test")
    message = one_line_error(run("search", indexed, "--vectors", tmp_path / "q.npy", *args))
    assert message.startswith(f"{sidecar}: the index sidecar is corrupt (")
    assert message.endswith("); rebuild it with build_index and StoreIndex.save (clipcache index)")


def test_index_without_its_sidecar_is_not_reported_as_no_index(indexed, tmp_path):
    (tmp_path / "s.test.clip.faiss.json").unlink()
    message = one_line_error(run("search", indexed, "--id", "test-0001", "--split", "test"))
    assert message == (
        f"{tmp_path / 's.test.clip.faiss'}: the index has no sidecar s.test.clip.faiss.json (an interrupted "
        "build?); rebuild it with build_index and StoreIndex.save (clipcache index)"
    )


# -- the protocol --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_one_class_store_is_refused_in_the_protocols_words(tmp_path, command):
    write_store(tmp_path / "one.h5", n_classes=1, aux=False, text=False)
    args = ["-o", tmp_path / "m.h5", "--shots", "1", "--method", "ncm"] if command == "fit" else ["--methods", "ncm,knn", "--shots", "1"]
    message = one_line_error(run(command, tmp_path / "one.h5", *args))
    assert message == (
        f"{tmp_path / 'one.h5'}: the store has 1 class (class0); few-shot classification needs at least 2, "
        "so extract a dataset with two or more classes"
    )
    with FeatureStore(tmp_path / "one.h5") as fs:
        assert fs.classes == ["class0"]
