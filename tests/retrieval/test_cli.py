"""The index, search and support commands."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from clipcache.retrieval import build_index, retrieve_support
from clipcache.retrieval.index import read_sidecar
from tests.retrieval.conftest import D, clustered_rows, write_store

DEPRECATED = "clipcache: {old} is deprecated and will be removed in the next release; use {new}\n"
# Fields of a sidecar that differ between two builds of the same index
_BUILD_TIME = ("created", "saved")


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_index_command_writes_the_index_beside_the_store(db):
    path, _, xq = db
    result = run("index", path, "--feature-set", "clip", "--split", "db", "--factory", "IVF8,Flat", "--nprobe", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("indexed 300 vectors of db/clip (dim 16) with IVF8,Flat (ip, nprobe=3, trained on 300 rows) on faiss cpu in ")
    assert result.stdout.endswith(f"\nwrote {path.with_name('db.db.clip.faiss')}\n")
    meta = read_sidecar(path.with_name("db.db.clip.faiss"))
    assert (meta["split"], meta["feature_set"], meta["factory"], meta["search_params"]) == ("db", "clip", "IVF8,Flat", {"nprobe": 3})
    with FeatureStore(path) as store:
        expected = build_index(store, "db", "clip", factory="IVF8,Flat", nprobe=3).search(xq, 5).rows
    saved = faiss.read_index(str(path.with_name("db.db.clip.faiss")))
    faiss.ParameterSpace().set_index_parameter(saved, "nprobe", 3)
    np.testing.assert_array_equal(saved.search(xq, 5)[1], expected)


def test_index_feature_set_defaults_to_the_only_one_and_output_names_the_file(db, tmp_path):
    path, _, _ = db
    result = run("index", path, "--split", "db", "-o", tmp_path / "mine.faiss", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert (meta["feature_set"], meta["path"]) == ("clip", str(tmp_path / "mine.faiss"))
    assert read_sidecar(tmp_path / "mine.faiss")["ntotal"] == 300
    assert not path.with_name("db.db.clip.faiss").exists()


def test_index_old_features_flag_is_deprecated_and_builds_the_same_index(db, tmp_path):
    path, _, _ = db
    new = run("index", path, "--feature-set", "clip", "--split", "db", "--output", tmp_path / "new.faiss")
    old = run("index", path, "--features", "clip", "--split", "db", "--output", tmp_path / "old.faiss")
    assert new.exit_code == old.exit_code == 0, old.output
    assert old.stderr == DEPRECATED.format(old="--features", new="--feature-set") and new.stderr == ""
    assert (tmp_path / "old.faiss").read_bytes() == (tmp_path / "new.faiss").read_bytes()
    strip = lambda meta: {k: v for k, v in meta.items() if k not in (*_BUILD_TIME, "index_file", "rows_file")}  # noqa: E731
    assert strip(read_sidecar(tmp_path / "old.faiss")) == strip(read_sidecar(tmp_path / "new.faiss"))


def test_index_nprobe_zero_is_a_usage_error(db):
    path, _, _ = db
    result = run("index", path, "--split", "db", "--factory", "IVF8,Flat", "--nprobe", "0")
    assert result.exit_code == 2 and "Invalid value for '--nprobe': must be at least 1, not 0" in result.output


def test_search_json_lists_hits_per_query(db):
    path, _, _ = db
    run("index", path, "--feature-set", "clip", "--split", "db")
    result = run("search", path, "--id", "db-00003", "--id", "db-00004", "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["query"] for r in data["results"]] == ["db-00003", "db-00004"]
    assert [r["hits"][0]["id"] for r in data["results"]] == ["db-00003", "db-00004"]
    assert len(data["results"][0]["hits"]) == 4


def test_search_table_shows_class_and_score(db):
    path, _, _ = db
    run("index", path, "--feature-set", "clip", "--split", "db")
    result = run("search", path, "--id", "db-00010", "-k", "2")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[2].split()
    assert first[:3] == ["0", "1.0000", "10"]
    assert first[3].startswith("class")


def test_search_reads_raw_vectors_from_npy(db, tmp_path):
    path, xb, xq = db
    run("index", path, "--feature-set", "clip", "--split", "db")
    np.save(tmp_path / "q.npy", xq[:3])
    result = run("search", path, "--vectors", tmp_path / "q.npy", "-k", "1", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)["results"]
    assert [r["query"] for r in results] == ["vector 0", "vector 1", "vector 2"]
    assert [r["hits"][0]["row"] for r in results] == (xq[:3] @ xb.T).argmax(axis=1).tolist()
    np.testing.assert_allclose([r["hits"][0]["score"] for r in results], (xq[:3] @ xb.T).max(axis=1), atol=1e-6)


@pytest.mark.parametrize("flag", ["--feature-set", "--features"])
def test_search_chooses_the_index_by_feature_set(tmp_path, flag):
    rng = np.random.default_rng(0)
    x, small = clustered_rows(rng, 50, D, 4), clustered_rows(rng, 50, 8, 4)
    path = tmp_path / "two.h5"
    with FeatureStore(path, "w") as store:
        store.set_classes(["a", "b"])
        store.add_feature_set("clip", D, provenance={})
        store.add_feature_set("small", 8, provenance={})
        store.create_split("db", ["clip", "small"])
        ids = [f"r{i}" for i in range(50)]
        store.append("db", ids=ids, paths=ids, labels=np.zeros(50, int), features={"clip": x, "small": small})
        store.mark_complete("db")
    for name in ("clip", "small"):
        assert run("index", path, "--feature-set", name, "--split", "db").exit_code == 0
    ambiguous = run("search", path, "--id", "r5", "-k", "2")
    assert ambiguous.exit_code == 1 and "several indexes match (db/clip, db/small); give split and feature_set" in ambiguous.output
    result = run("search", path, "--id", "r5", "-k", "2", flag, "small", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["index"]["feature_set"] == "small"
    assert [h["row"] for h in data["results"][0]["hits"]] == np.argsort(-(small @ small[5]), kind="stable")[:2].tolist()
    assert result.stderr == ("" if flag == "--feature-set" else DEPRECATED.format(old="--features", new="--feature-set"))


def test_search_rejects_two_kinds_of_query_before_any_work(db):
    path, _, _ = db
    result = run("search", path, "--id", "db-00001", "--text", "a cat")
    assert result.exit_code == 2
    assert "Error: give exactly one of --id, --image, --text or --vectors (got --id, --text)\n" in result.output


def test_stale_index_is_a_one_line_error(db):
    path, xb, _ = db
    run("index", path, "--feature-set", "clip", "--split", "db")
    write_store(path, {"db": (xb, np.zeros(len(xb), int))})
    result = run("search", path, "--id", "db-00001")
    assert result.exit_code == 1
    assert result.output.startswith("Error: db.db.clip.faiss: it was built from 'db'/'clip' with 300 rows of store ")
    assert result.output.endswith("rebuild it with build_index and StoreIndex.save (clipcache index)\n")
    assert len(result.output.strip().splitlines()) == 1


def test_k_larger_than_index_is_a_one_line_error(db):
    path, _, _ = db
    run("index", path, "--feature-set", "clip", "--split", "db")
    result = run("search", path, "--id", "db-00001", "-k", "500")
    assert result.exit_code == 1
    assert result.output == (
        "Error: k=500 is larger than the 300 vectors in the index of 'db'/'clip'; ask for at most 300 (-k)\n"
    )


def test_support_command_writes_the_split(pool_store):
    path, _, _ = pool_store
    with FeatureStore(path) as store:
        expected = retrieve_support(store, "pool", "clip", 5)
    result = run("support", path, "--pool", "pool", "-k", "5", "--to-split", "support")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("wrote split support: 20 images from pool pool (clip, classes named by prompts)\n")
    with FeatureStore(path) as store:
        assert store.ids("support").tolist() == [f"pool-{r:05d}" for r in expected.rows]
        assert store.labels("support").tolist() == expected.labels.tolist()
        assert store.metadata["support_sets"]["support"]["feature_set"] == "clip"


@pytest.mark.parametrize("old, new", [(["--shared"], ["--no-exclusive"]), (["--features", "clip"], ["--feature-set", "clip"])])
def test_support_old_flags_are_deprecated_and_give_the_same_split(pool_store, old, new):
    path, _, _ = pool_store
    results = {}
    for name, flags in (("new", new), ("old", old)):
        results[name] = run("support", path, "--pool", "pool", "-k", "6", "--to-split", name, *flags, "--json")
        assert results[name].exit_code == 0, results[name].output
    assert results["old"].stderr == DEPRECATED.format(old=old[0], new=new[0]) and results["new"].stderr == ""
    summaries = {name: json.loads(r.stdout) for name, r in results.items()}
    assert summaries["old"] == {**summaries["new"], "split": "old"}
    with FeatureStore(path) as store:
        assert store.ids("old").tolist() == store.ids("new").tolist()
        assert store.labels("old").tolist() == store.labels("new").tolist()
        exclusive = store.metadata["support_sets"]["new"]["exclusive"]
    assert exclusive is (new[0] != "--no-exclusive")


def test_support_exclusive_is_the_default_and_no_exclusive_shares_images(pool_store):
    path, x, class_emb = pool_store
    for name, flags in (("default", []), ("exclusive", ["--exclusive"]), ("shared", ["--no-exclusive"])):
        assert run("support", path, "--pool", "pool", "-k", "30", "--to-split", name, *flags).exit_code == 0
    with FeatureStore(path) as store:
        ids = {name: store.ids(name).tolist() for name in ("default", "exclusive", "shared")}
    assert ids["default"] == ids["exclusive"] and len(set(ids["exclusive"])) == 120
    top = np.argsort(-(class_emb @ x.T), axis=1, kind="stable")[:, :30]
    assert ids["shared"] == [f"pool-{r:05d}" for r in top.ravel()]
    assert len(set(ids["shared"])) < 120  # with 30 per class from 240 images, the plain top-k overlap


def test_support_shared_together_with_exclusive_is_refused(pool_store):
    path, _, _ = pool_store
    result = run("support", path, "--pool", "pool", "-k", "3", "--to-split", "s", "--shared", "--exclusive")
    assert result.exit_code == 2 and "--shared is the old spelling of --no-exclusive; give only --no-exclusive" in result.output
    with FeatureStore(path) as store:
        assert "s" not in store.splits
