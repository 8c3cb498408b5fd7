"""Property tests: any sequence of appends reads back as the concatenation, under any selection."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipcache import FeatureStore
from clipcache.feature_store import schema

D = 24
#: Rows per HDF5 chunk in these tests, so that a few hundred rows span many chunks.
FEATURE_CHUNK_ROWS = {"float32": 7, "float16": 14}
COLUMN_CHUNK_ROWS = 5


@pytest.fixture
def small_chunks(monkeypatch):
    """Shrink the writer's chunks: 7 float32 (or 14 float16) feature rows, 5 column rows per chunk."""
    monkeypatch.setattr(schema, "FEATURE_CHUNK_BYTES", FEATURE_CHUNK_ROWS["float32"] * D * 4)
    monkeypatch.setattr(schema, "COLUMN_CHUNK_ROWS", COLUMN_CHUNK_ROWS)


@pytest.fixture(params=["serial", "parallel"])
def reads(request, monkeypatch):
    """Spans read by one thread (None), or, every span of two chunks or more, by a pool of up to 3 threads
    (the list of the pools' sizes)."""
    from clipcache.feature_store import rows

    if request.param == "serial":
        return None
    pools = []

    class Pool(rows.ThreadPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(rows, "PARALLEL_READ_BYTES", 0)
    monkeypatch.setattr(rows, "READ_THREADS", 3)
    monkeypatch.setattr(rows.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(rows, "ThreadPoolExecutor", Pool)
    return pools


def _n_chunks(rows: int, per_chunk: int) -> int:
    return -(-rows // per_chunk)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=8),
    dtype=st.sampled_from(["float32", "float16"]),
    picks=st.lists(st.integers(min_value=0, max_value=10_000), max_size=50),
    chunk_rows=st.integers(min_value=1, max_value=500),
)
def test_appends_read_back_under_any_selection(tmp_path_factory, small_chunks, reads, batches, dtype, picks, chunk_rows):
    rng = np.random.default_rng(len(batches))
    path = tmp_path_factory.mktemp("prop") / "s.h5"
    total = sum(batches)
    x = rng.normal(size=(total, D)).astype(np.float32)
    y = rng.integers(-1, 3, total)
    with FeatureStore(path, "w") as store:
        store.set_classes(["a", "b", "c"])
        store.add_feature_set("f", D, dtype=dtype, normalized=False)
        store.create_split("s", ["f"])
        start = 0
        for b in batches:
            store.append("s", ids=[str(i) for i in range(start, start + b)], paths=[""] * b,
                         labels=y[start : start + b], features={"f": x[start : start + b]})
            start += b
    want = x.astype(np.float16).astype(np.float32) if dtype == "float16" else x
    with FeatureStore(path) as store:
        features, labels = store.h5["splits/s/features/f"], store.h5["splits/s/labels"]
        per_chunk = FEATURE_CHUNK_ROWS[dtype]
        assert features.chunks == (per_chunk, D) and labels.chunks == (COLUMN_CHUNK_ROWS,)
        # the rows fill every chunk they span, so the reads below cross these chunks and the appends
        assert features.id.get_num_chunks() == _n_chunks(total, per_chunk)
        assert labels.id.get_num_chunks() == _n_chunks(total, COLUMN_CHUNK_ROWS)
        assert store.n_rows("s") == total
        pools = len(reads or [])
        np.testing.assert_array_equal(store.features("s", "f"), want)
        if reads is not None and total > FEATURE_CHUNK_ROWS[dtype]:  # the full read spans two chunks or more
            assert len(reads) == pools + 1 and reads[-1] in (2, 3)
        rows = [p % total for p in picks] if total else []
        np.testing.assert_array_equal(store.features("s", "f", rows), want[rows].reshape(-1, D))
        np.testing.assert_array_equal(store.labels("s", rows), y[rows])
        assert list(store.ids("s", rows)) == [str(r) for r in rows]
        chunks = list(store.iter_chunks("s", "f", chunk_rows=chunk_rows))
        assert [len(c.rows) for c in chunks] == [min(chunk_rows, total - s) for s in range(0, total, chunk_rows)]
        got = np.concatenate([c.features for c in chunks] or [np.empty((0, D))])
        np.testing.assert_array_equal(got, want)


def test_small_chunks_span_many_chunks(tmp_path, small_chunks):
    """The fixture really shrinks the chunks: 100 rows written in one append fill 15 feature chunks."""
    x = np.arange(100 * D, dtype=np.float32).reshape(100, D)
    with FeatureStore(tmp_path / "s.h5", "w") as store:
        store.set_classes(["a"])
        store.add_feature_set("f", D, normalized=False)
        store.create_split("s", ["f"])
        store.append("s", ids=[str(i) for i in range(100)], paths=[""] * 100, labels=np.zeros(100), features={"f": x})
    with FeatureStore(tmp_path / "s.h5") as store:
        ds = store.h5["splits/s/features/f"]
        assert ds.chunks == (7, D) and ds.id.get_num_chunks() == 15
        assert store.h5["splits/s/ids/offsets"].chunks == (COLUMN_CHUNK_ROWS,)
        rows = np.array([99, 0, 50, 6, 7, 13, 14, 50])  # both sides of chunk edges, repeats, reverse order
        np.testing.assert_array_equal(store.features("s", "f", rows), x[rows])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=6), max_size=12), min_size=1, max_size=5))
def test_string_columns_read_back_any_text_in_any_batches(tmp_path_factory, small_chunks, batches):
    """Ids and paths of any Unicode (ASCII batches take the one-call encoding, others one row at a time), empty ones
    included, across chunk edges of the bytes and the offsets."""
    path = tmp_path_factory.mktemp("strings") / "s.h5"
    with FeatureStore(path, "w") as store:
        store.set_classes(["a"])
        store.add_feature_set("f", D, normalized=False)
        store.create_split("s", ["f"])
        for ids in batches:
            store.append("s", ids=ids, paths=[f"p/{i}" for i in ids], labels=np.zeros(len(ids)),
                         features={"f": np.zeros((len(ids), D), np.float32)})
    everything = [i for ids in batches for i in ids]
    with FeatureStore(path) as store:
        assert store.ids("s").tolist() == everything
        assert store.paths("s").tolist() == [f"p/{i}" for i in everything]
        assert store.h5["splits/s/ids/utf8"].shape == (len("".join(everything).encode("utf-8")),)


def test_string_values_are_stored_as_their_str(tmp_path):
    """Values that are not str (numpy strings, paths, numbers) are stored as ``str(v)``, as before the one-call encoding."""
    with FeatureStore(tmp_path / "s.h5", "w") as store:
        store.set_classes(["a"])
        store.add_feature_set("f", D, normalized=False)
        store.create_split("s", ["f"])
        store.append("s", ids=np.array(["x", "é"]), paths=[Path("a/b.jpg"), 7], labels=np.zeros(2),
                     features={"f": np.zeros((2, D), np.float32)})
    with FeatureStore(tmp_path / "s.h5") as store:
        assert store.ids("s").tolist() == ["x", "é"] and store.paths("s").tolist() == ["a/b.jpg", "7"]


def test_the_raw_reader_fills_unwritten_chunks_and_refuses_rows_past_the_end(tmp_path):
    """A chunk never written reads as the fill value; rows past the dataset's end (a reader's stale view of a file
    a writer changed) raise OSError, which a store reader answers by opening the file anew."""
    import h5py

    from clipcache.feature_store.rows import _raw_span_reader

    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("x", shape=(10, 4), maxshape=(None, 4), chunks=(10, 4), dtype="f4")
        ds[:] = np.arange(40, dtype=np.float32).reshape(10, 4)
        ds.resize((30, 4))
        read_span = _raw_span_reader(ds)
        got = read_span(5, 30)
        np.testing.assert_array_equal(got[:5], np.arange(20, 40, dtype=np.float32).reshape(5, 4))
        assert not got[5:].any()
        with pytest.raises(OSError, match=r"/x: rows 30\.\.35 lie past its 30 rows"):
            read_span(25, 35)
