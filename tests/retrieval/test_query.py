"""Queries by stored id, raw vector, image file and free text."""

from __future__ import annotations

import numpy as np
import pytest

from clipcache import FeatureStore, IndexMismatchError
from clipcache.retrieval import QueryError, build_index, index_path, search, search_store
from tests.retrieval.conftest import unit


@pytest.fixture
def indexed(db):
    """The ``db`` store with a saved Flat index of db/clip."""
    path, xb, xq = db
    with FeatureStore(path) as store:
        build_index(store, "db", "clip").save(index_path(path, "db", "clip"))
    return path, xb, xq


def test_id_query_finds_the_sample_itself_first(indexed):
    path, _, _ = indexed
    report = search_store(path, ids=["db-00042"], k=3)
    first = report.hits[0][0]
    assert (first.row, first.id, first.rank) == (42, "db-00042", 0)
    assert first.score == pytest.approx(1.0, abs=1e-6)


def test_id_of_another_split_is_looked_up_there(indexed):
    path, _, xq = indexed
    by_id = search_store(path, ids=["queries-00007"], k=5)
    by_vector = search_store(path, vectors=xq[7], k=5)
    assert [h.row for h in by_id.hits[0]] == [h.row for h in by_vector.hits[0]]


def test_unknown_id_is_refused(indexed):
    path, _, _ = indexed
    with pytest.raises(QueryError, match="unknown id 'nope'") as err:
        search_store(path, ids=["db-00001", "nope"], k=3)
    assert err.value.param == "ids"


def test_hits_carry_the_stored_id_path_label_and_class(indexed):
    path, _, xq = indexed
    hit = search_store(path, vectors=xq[0], k=1).hits[0][0]
    with FeatureStore(path) as store:
        label = int(store.labels("db", [hit.row])[0])
        expected = (str(store.ids("db", [hit.row])[0]), str(store.paths("db", [hit.row])[0]), label, store.classes[label])
    assert (hit.id, hit.path, hit.label, hit.class_name) == expected


def test_raw_vectors_are_normalised_before_searching(indexed):
    path, _, xq = indexed
    scaled = search_store(path, vectors=7.5 * xq[:2], k=4)
    plain = search_store(path, vectors=xq[:2], k=4)
    assert [[h.row for h in hs] for hs in scaled.hits] == [[h.row for h in hs] for hs in plain.hits]
    np.testing.assert_allclose([[h.score for h in hs] for hs in scaled.hits], [[h.score for h in hs] for hs in plain.hits], atol=1e-6)


def test_a_batch_equals_the_queries_one_by_one(indexed):
    path, _, xq = indexed
    batch = search_store(path, vectors=xq[:6], k=5).hits
    single = [search_store(path, vectors=xq[i], k=5).hits[0] for i in range(6)]
    assert [[h.row for h in hs] for hs in batch] == [[h.row for h in hs] for hs in single]


def test_exactly_one_kind_of_query_is_required(indexed):
    path, _, xq = indexed
    with pytest.raises(QueryError, match="exactly one kind of query"):
        search_store(path, ids=["db-00001"], vectors=xq[0], k=3)


def test_search_refuses_a_stale_index(indexed):
    path, xb, _ = indexed
    with FeatureStore(path) as store:
        index = build_index(store, "db", "clip")
    from tests.retrieval.conftest import write_store

    write_store(path, {"db": (xb, np.zeros(len(xb), int))})
    with FeatureStore(path) as store, pytest.raises(IndexMismatchError, match="has changed since"):
        search(store, index, ids=["db-00001"], k=2)


@pytest.fixture(scope="module")
def tiny_clip():
    """The tiny random open_clip model of clipcache.extract (32 px, dim 32)."""
    from clipcache.extract import build_open_clip
    from clipcache.extract.testing import TINY_CLIP_NAME

    return build_open_clip(TINY_CLIP_NAME, "none", seed=0)


@pytest.fixture
def image_store(tmp_path, tiny_clip):
    """A store of 12 demo images encoded by the tiny CLIP, with a saved index: (path, image paths, features)."""
    from clipcache.extract.demo import DEMO_CLASSES, draw_shape

    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        files.append(tmp_path / f"img{i}.png")
        draw_shape(DEMO_CLASSES[i % 4], rng).save(files[-1])
    from PIL import Image

    x = tiny_clip.encode_images([Image.open(f) for f in files])
    path = tmp_path / "images.h5"
    with FeatureStore(path, "w") as store:
        store.set_classes(list(DEMO_CLASSES))
        store.add_feature_set("clip", tiny_clip.dim, provenance=tiny_clip.provenance())
        store.create_split("train", ["clip"])
        store.append("train", ids=[f.stem for f in files], paths=[str(f) for f in files], labels=np.arange(12) % 4, features={"clip": x})
        store.mark_complete("train")
        build_index(store, "train", "clip").save(index_path(path, "train", "clip"))
    return path, files, x


def test_image_query_is_encoded_as_the_store_was(image_store):
    path, files, _ = image_store
    hit = search_store(path, images=[files[5]], k=1).hits[0][0]
    assert (hit.row, hit.id) == (5, "img5")
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_text_query_uses_the_clip_text_tower(image_store, tiny_clip):
    path, _, x = image_store
    texts = ["a photo of a star", "a red circle"]
    report = search_store(path, texts=texts, k=3)
    scores = unit(tiny_clip.encode_text(texts)) @ x.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    assert [[h.row for h in hs] for hs in report.hits] == expected.tolist()


def test_unreadable_query_image_is_refused(image_store, tmp_path):
    path, _, _ = image_store
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(QueryError, match="cannot read the query image"):
        search_store(path, images=[bad], k=1)
