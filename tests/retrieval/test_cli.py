"""The index, search and support commands."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from tests.retrieval.conftest import write_store


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_index_command_writes_the_index_beside_the_store(db):
    path, _, _ = db
    result = run("index", path, "--features", "clip", "--split", "db", "--factory", "IVF8,Flat")
    assert result.exit_code == 0, result.output
    assert "indexed 300 vectors of db/clip" in result.output
    assert path.with_name("db.db.clip.faiss").exists()
    assert path.with_name("db.db.clip.faiss.json").exists()


def test_search_json_lists_hits_per_query(db):
    path, _, _ = db
    run("index", path, "--features", "clip", "--split", "db")
    result = run("search", path, "--id", "db-00003", "--id", "db-00004", "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["query"] for r in data["results"]] == ["db-00003", "db-00004"]
    assert [r["hits"][0]["id"] for r in data["results"]] == ["db-00003", "db-00004"]
    assert len(data["results"][0]["hits"]) == 4


def test_search_table_shows_class_and_score(db):
    path, _, _ = db
    run("index", path, "--features", "clip", "--split", "db")
    result = run("search", path, "--id", "db-00010", "-k", "2")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[2].split()
    assert first[:3] == ["0", "1.0000", "10"]
    assert first[3].startswith("class")


def test_search_reads_raw_vectors_from_npy(db, tmp_path):
    path, _, xq = db
    run("index", path, "--features", "clip", "--split", "db")
    np.save(tmp_path / "q.npy", xq[:3])
    result = run("search", path, "--vectors", tmp_path / "q.npy", "-k", "1", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["results"]) == 3


def test_search_rejects_two_kinds_of_query_before_any_work(db):
    path, _, _ = db
    result = run("search", path, "--id", "db-00001", "--text", "a cat")
    assert result.exit_code == 2
    assert "exactly one of --id, --image, --text or --vectors" in result.output


def test_stale_index_is_a_one_line_error(db):
    path, xb, _ = db
    run("index", path, "--features", "clip", "--split", "db")
    write_store(path, {"db": (xb, np.zeros(len(xb), int))})
    result = run("search", path, "--id", "db-00001")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "rebuild it with: clipcache index" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_k_larger_than_index_is_a_one_line_error(db):
    path, _, _ = db
    run("index", path, "--features", "clip", "--split", "db")
    result = run("search", path, "--id", "db-00001", "-k", "500")
    assert result.exit_code == 1
    assert "k=500 is larger than the 300 vectors" in result.output


def test_support_command_writes_the_split(pool_store):
    path, _, _ = pool_store
    result = run("support", path, "--pool", "pool", "-k", "5", "--to-split", "support")
    assert result.exit_code == 0, result.output
    assert "wrote split support: 20 images" in result.output
    with FeatureStore(path) as store:
        assert np.bincount(store.labels("support")).tolist() == [5, 5, 5, 5]
