import numpy as np
import pytest

from clipcache import FeatureStore
from clipcache.errors import InvalidParameterError, StoreError
from tests.conftest import unit_rows, write_synthetic_store


def test_columns_and_features_round_trip(synthetic_store):
    path, written = synthetic_store
    with FeatureStore(path) as store:
        assert store.splits == ["test", "train"]
        assert store.classes == ["class0", "class1", "class2", "class3"]
        for split, w in written.items():
            x, y = store.to_numpy(split, "clip")
            np.testing.assert_array_equal(x, w["x"])
            np.testing.assert_array_equal(y, w["y"])
            assert x.dtype == np.float32 and y.dtype == np.int64
            assert list(store.ids(split)) == w["ids"]
            assert store.paths(split)[3] == f"/img/{w['ids'][3]}.jpg"
            assert store.is_complete(split)


def test_feature_set_provenance_round_trips(synthetic_store):
    path, _ = synthetic_store
    with FeatureStore(path) as store:
        info = store.feature_sets["clip"]
    assert (info.dim, info.dtype, info.normalized) == (16, "float32", True)
    assert info.provenance == {"backbone": "open_clip", "model": "tiny", "pretrained": "none"}


@pytest.mark.parametrize(
    "rows",
    [slice(5, 17), slice(None, None, 3), [7, 2, 2, 39, 0], np.array([], dtype=int), np.arange(40) % 2 == 0],
    ids=["slice", "strided", "fancy-repeats", "empty", "mask"],
)
def test_row_selection_equals_numpy_indexing(synthetic_store, rows):
    path, written = synthetic_store
    with FeatureStore(path) as store:
        got = store.features("train", "clip", rows)
        got_ids = store.ids("train", rows)
    np.testing.assert_array_equal(got, written["train"]["x"][rows].reshape(-1, 16))
    assert list(got_ids) == list(np.asarray(written["train"]["ids"], dtype=object)[rows])


def test_row_selection_across_many_chunks(tmp_path):
    rng = np.random.default_rng(1)
    x = unit_rows(rng, 9000, 256)  # 4 MiB chunks of 4096 rows: use 9000 rows to cross chunks
    with FeatureStore(tmp_path / "s.h5", "w") as store:
        store.set_classes(["a"])
        store.add_feature_set("f", 256)
        store.create_split("s", ["f"])
        store.append("s", ids=[str(i) for i in range(9000)], paths=[""] * 9000, labels=np.zeros(9000), features={"f": x})
        assert store.h5["splits/s/features/f"].chunks == (4096, 256)  # so the rows span 3 chunks
        rows = rng.permutation(9000)[:700]
        np.testing.assert_array_equal(store.features("s", "f", rows), x[rows])


def test_iter_chunks_covers_the_split_in_order(synthetic_store):
    path, written = synthetic_store
    with FeatureStore(path) as store:
        chunks = list(store.iter_chunks("train", "clip", chunk_rows=16))
        picked = list(store.iter_chunks("train", "clip", chunk_rows=3, rows=[9, 1, 5, 30]))
    assert [len(c.rows) for c in chunks] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), written["train"]["x"])
    np.testing.assert_array_equal(np.concatenate([c.labels for c in chunks]), written["train"]["y"])
    np.testing.assert_array_equal(np.concatenate([c.rows for c in picked]), [9, 1, 5, 30])
    np.testing.assert_array_equal(picked[1].features, written["train"]["x"][[30]])


def test_iter_chunks_reads_whole_splits_into_the_allocated_arrays(tmp_path):
    """``allocate``'s arrays receive the features of all rows of a float32 set; index rows and float16 get new arrays."""
    rng = np.random.default_rng(3)
    x = unit_rows(rng, 9000, 256)  # 3 HDF5 chunks of 4096 rows, so blocks cross them
    given = []

    def allocate(shape, dtype):
        given.append(np.full(shape, np.nan, dtype=dtype))
        return given[-1]

    with FeatureStore(tmp_path / "s.h5", "w") as store:
        store.set_classes(["a"])
        for name, dtype in (("f", "float32"), ("h", "float16")):
            store.add_feature_set(name, 256, dtype=dtype)
        store.create_split("s", ["f", "h"])
        store.append("s", ids=[str(i) for i in range(9000)], paths=[""] * 9000, labels=np.zeros(9000), features={"f": x, "h": x})
        blocks = list(store.iter_chunks("s", "f", chunk_rows=5000, allocate=allocate))
        assert [b.features is a for b, a in zip(blocks, given, strict=True)] == [True, True]
        np.testing.assert_array_equal(np.concatenate([b.features for b in blocks]), x)
        picked = list(store.iter_chunks("s", "f", chunk_rows=100, rows=[5, 4100, 3], allocate=allocate))
        half = list(store.iter_chunks("s", "h", chunk_rows=5000, allocate=allocate))
        assert len(given) == 2  # neither an index selection nor float16 rows are read into allocated arrays
        np.testing.assert_array_equal(picked[0].features, x[[5, 4100, 3]])
        np.testing.assert_allclose(np.concatenate([b.features for b in half]), x, atol=1e-3)
        with pytest.raises(InvalidParameterError, match=r"allocate\(\(5000, 256\), 'float32'\) returned \(5000, 256\) float64"):
            next(store.iter_chunks("s", "f", chunk_rows=5000, allocate=lambda shape, dtype: np.zeros(shape)))


def test_float16_storage_round_trips_within_tolerance(tmp_path):
    x = unit_rows(np.random.default_rng(2), 50, 64)
    with FeatureStore(tmp_path / "h.h5", "w") as store:
        store.set_classes(["a"])
        store.add_feature_set("f", 64, dtype="float16")
        store.create_split("s", ["f"])
        store.append("s", ids=list("x" * 50), paths=[""] * 50, labels=np.zeros(50), features={"f": x})
    with FeatureStore(tmp_path / "h.h5") as store:
        got = store.features("s", "f")
        assert store.h5["splits/s/features/f"].dtype == np.float16
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x, atol=1e-3)
    assert np.abs(got - x).max() > 0  # really stored at half precision


def test_views_skipped_and_metadata_round_trip(tmp_path):
    x = unit_rows(np.random.default_rng(3), 6, 4)
    with FeatureStore(tmp_path / "v.h5", "w") as store:
        store.set_classes(["a", "b"])
        store.add_feature_set("f", 4)
        store.create_split("support", ["f"])
        store.append("support", ids=["a", "a", "a", "b", "b", "b"], paths=[""] * 6, labels=[0, 0, 0, 1, 1, 1],
                     features={"f": x}, views=[0, 1, 2, 0, 1, 2])
        store.record_skipped("support", ids=["c"], paths=["c.png"], reasons=["cannot identify image file"])
        store.set_metadata("extract", {"seed": 7, "views": 3})
    with FeatureStore(tmp_path / "v.h5") as store:
        np.testing.assert_array_equal(store.views("support"), [0, 1, 2, 0, 1, 2])
        assert store.skipped("support") == [("c", "c.png", "cannot identify image file")]
        assert store.metadata == {"extract": {"seed": 7, "views": 3}}
        assert store.describe()["splits"]["support"]["views"] == 3


def test_text_embeddings_round_trip_and_class_means(tmp_path):
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(6, 8)).astype(np.float32)
    idx = np.array([0, 1, 2, 0, 1, 2])
    with FeatureStore(tmp_path / "t.h5", "w") as store:
        store.set_classes(["a", "b", "c"])
        store.write_text("simple", emb, idx, ["p"] * 6, provenance={"model": "m"}, templates=["a {}", "b {}"])
    with FeatureStore(tmp_path / "t.h5") as store:
        text = store.text("simple")
    np.testing.assert_array_equal(text.embeddings, emb)
    assert text.templates == ["a {}", "b {}"] and text.provenance == {"model": "m"}
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    mean = unit[[1, 4]].mean(axis=0)
    np.testing.assert_allclose(text.class_embeddings()[1], mean / np.linalg.norm(mean), rtol=1e-6)


def test_feature_set_added_later_is_filled_and_completes(synthetic_store):
    path, written = synthetic_store
    aux = np.random.default_rng(5).normal(size=(40, 3)).astype(np.float32)
    with FeatureStore(path, "a") as store:
        store.add_feature_set("aux", 3, normalized=False, provenance={"model": "aux"})
        store.create_split("train", ["aux"])
        assert not store.is_complete("train")
        store.append_features("train", "aux", aux[:25])
        store.append_features("train", "aux", aux[25:])
        store.mark_complete("train")
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.features("train", "aux"), aux)
        np.testing.assert_array_equal(store.features("train", "clip"), written["train"]["x"])
        assert store.is_complete("train")


def test_fingerprint_changes_with_rows_and_recreation(tmp_path):
    path = tmp_path / "f.h5"
    write_synthetic_store(path)
    with FeatureStore(path) as store:
        first = store.fingerprint("train", "clip")
        assert first == store.fingerprint("train", "clip")
        assert first != store.fingerprint("test", "clip")
    write_synthetic_store(path)
    with FeatureStore(path) as store:
        assert store.fingerprint("train", "clip") != first


def test_linked_features_read_through_to_their_sources(tmp_path):
    parts = [write_synthetic_store(tmp_path / f"part{i}.h5", {"train": n}, seed=i) for i, n in enumerate((7, 5))]
    with FeatureStore(tmp_path / "merged.h5", "w") as store:
        store.set_classes([f"class{i}" for i in range(4)])
        store.add_feature_set("clip", 16, provenance={"backbone": "open_clip", "model": "tiny", "pretrained": "none"})
        store.create_split("train")
        for part in parts:
            w = part["train"]
            store.append("train", ids=w["ids"], paths=w["ids"], labels=w["y"], features={})
        store.create_split("train", ["clip"])
        store.link_features("train", "clip", [(tmp_path / "part0.h5", 7), (tmp_path / "part1.h5", 5)])
        store.mark_complete("train")
    with FeatureStore(tmp_path / "merged.h5") as store:
        assert store.h5["splits/train/features/clip"].is_virtual
        want = np.concatenate([p["train"]["x"] for p in parts])
        np.testing.assert_array_equal(store.features("train", "clip"), want)
        np.testing.assert_array_equal(store.features("train", "clip", [11, 0, 7]), want[[11, 0, 7]])


def test_a_writer_sees_its_structural_changes_between_appends(tmp_path):
    """A writer keeps its splits open from one append to the next; the appends after a split is dropped and made
    again, or given a column, write to the split as it is now, and labels are still checked against the classes."""
    rng = np.random.default_rng(0)
    x, z = unit_rows(rng, 4, 8), unit_rows(rng, 4, 8)
    path = tmp_path / "s.h5"
    with FeatureStore(path, "w") as store:
        store.set_classes(["a"])
        store.add_feature_set("f", 8, provenance={})
        store.add_feature_set("g", 8, provenance={})
        store.create_split("t", ["f"])
        store.append("t", ids=["0", "1"], paths=["0", "1"], labels=[0, 0], features={"f": x[:2]})
        store.drop_split("t")
        store.create_split("t", ["f"])
        store.append("t", ids=["2"], paths=["2"], labels=[0], features={"f": x[2:3]})
        store.create_split("t", ["f", "g"])  # adds the column g
        store.append_features("t", "g", z[:1])
        with pytest.raises(StoreError, match="outside"):
            store.append("t", ids=["3"], paths=["3"], labels=[1], features={"f": x[3:], "g": z[1:2]})
        store.append("t", ids=["3"], paths=["3"], labels=[0], features={"f": x[3:], "g": z[1:2]})
    with FeatureStore(path) as store:
        assert list(store.ids("t")) == ["2", "3"] and store.labels("t").tolist() == [0, 0]
        np.testing.assert_array_equal(store.features("t", "f"), x[2:])
        np.testing.assert_array_equal(store.features("t", "g"), z[:2])
