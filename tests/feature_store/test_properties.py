"""Property tests: any sequence of appends reads back as the concatenation, under any selection."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipcache import FeatureStore


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=8),
    dtype=st.sampled_from(["float32", "float16"]),
    picks=st.lists(st.integers(min_value=0, max_value=10_000), max_size=50),
    chunk_rows=st.integers(min_value=1, max_value=500),
)
def test_appends_read_back_under_any_selection(tmp_path_factory, batches, dtype, picks, chunk_rows):
    d = 24  # 1 MiB chunks hold ~10k float32 rows; make chunks small to cross boundaries
    rng = np.random.default_rng(len(batches))
    path = tmp_path_factory.mktemp("prop") / "s.h5"
    total = sum(batches)
    x = rng.normal(size=(total, d)).astype(np.float32)
    y = rng.integers(-1, 3, total)
    with FeatureStore(path, "w") as store:
        store.set_classes(["a", "b", "c"])
        store.add_feature_set("f", d, dtype=dtype, normalized=False)
        store.create_split("s", ["f"])
        start = 0
        for b in batches:
            store.append("s", ids=[str(i) for i in range(start, start + b)], paths=[""] * b,
                         labels=y[start : start + b], features={"f": x[start : start + b]})
            start += b
    want = x.astype(np.float16).astype(np.float32) if dtype == "float16" else x
    with FeatureStore(path) as store:
        assert store.n_rows("s") == total
        np.testing.assert_array_equal(store.features("s", "f"), want)
        rows = [p % total for p in picks] if total else []
        np.testing.assert_array_equal(store.features("s", "f", rows), want[rows].reshape(-1, d))
        np.testing.assert_array_equal(store.labels("s", rows), y[rows])
        assert list(store.ids("s", rows)) == [str(r) for r in rows]
        got = np.concatenate([c.features for c in store.iter_chunks("s", "f", chunk_rows=chunk_rows)] or [np.empty((0, d))])
        np.testing.assert_array_equal(got, want)
