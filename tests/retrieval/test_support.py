"""SuS-X style support sets: retrieval from an unlabelled pool, written back as a split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipcache import FeatureStore
from clipcache.errors import ClipCacheError, InvalidParameterError, StoreMismatchError
from clipcache.retrieval import (
    QueryError,
    build_index,
    build_support_split,
    index_path,
    retrieve_support,
    write_support,
)
from tests.retrieval.conftest import N_CLASSES, D, unit, write_store


def greedy_reference(scores: np.ndarray, k: int) -> set[tuple[int, int]]:
    """Exclusive assignment over the whole pool, from the full (C, n) score matrix: {(class, row)}."""
    taken, count, out = set(), [0] * scores.shape[0], set()
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        c, r = divmod(int(flat), scores.shape[1])
        if count[c] < k and r not in taken:
            taken.add(r)
            count[c] += 1
            out.add((c, r))
    return out


def test_shared_support_is_the_top_k_pool_images_per_class(pool_store):
    path, x, class_emb = pool_store
    with FeatureStore(path) as store:
        support = retrieve_support(store, "pool", "clip", 7, exclusive=False, chunk_rows=50)
    expected = np.argsort(-(class_emb @ x.T), axis=1, kind="stable")[:, :7]
    assert support.rows.reshape(N_CLASSES, 7).tolist() == expected.tolist()
    assert support.labels.tolist() == np.repeat(np.arange(N_CLASSES), 7).tolist()


def test_exclusive_support_equals_greedy_assignment_over_the_whole_pool(pool_store):
    path, x, class_emb = pool_store
    with FeatureStore(path) as store:
        support = retrieve_support(store, "pool", "clip", 20, chunk_rows=64)
    got = set(zip(support.labels.tolist(), support.rows.tolist(), strict=True))
    assert got == greedy_reference(class_emb @ x.T, 20)
    assert len(set(support.rows.tolist())) == len(support.rows) == 20 * N_CLASSES


def test_support_through_a_flat_index_equals_the_exact_scan(pool_store):
    path, _, _ = pool_store
    with FeatureStore(path) as store:
        exact = retrieve_support(store, "pool", "clip", 9)
        indexed = retrieve_support(store, "pool", "clip", 9, index=build_index(store, "pool", "clip"))
    assert exact.rows.tolist() == indexed.rows.tolist()


def test_written_split_holds_pool_features_with_pseudo_labels(pool_store):
    path, x, _ = pool_store
    with FeatureStore(path, "a") as store:
        support = retrieve_support(store, "pool", "clip", 5)
        write_support(store, support, "support")
    with FeatureStore(path) as store:
        feats, labels = store.to_numpy("support", "clip")
        assert store.is_complete("support")
        assert store.ids("support").tolist() == [f"pool-{r:05d}" for r in support.rows]
        assert store.metadata["support_sets"]["support"]["pool"] == "pool"
    np.testing.assert_array_equal(feats, x[support.rows])
    np.testing.assert_array_equal(labels, support.labels)


def test_existing_target_split_is_refused(pool_store):
    path, _, _ = pool_store
    with pytest.raises(ClipCacheError, match="split 'pool' already exists; choose another name") as err:
        build_support_split(path, "pool", "pool", 3)
    assert err.value.param == "to_split"


@pytest.mark.parametrize("k", [0, -2, 1.5])
def test_k_that_is_not_a_positive_integer_is_refused_before_the_store_is_opened(tmp_path, k):
    with pytest.raises(InvalidParameterError, match="k must be a positive integer") as err:
        build_support_split(tmp_path / "missing.h5", "pool", "support", k)
    assert err.value.param == "k"


def test_feature_set_defaults_to_the_only_one_of_the_pool_split(pool_store):
    """The docstring said "the only feature set with a matching text set"; the code takes the pool's only one."""
    path, _, _ = pool_store
    with FeatureStore(path, "a") as store:
        store.add_feature_set("other", 8, provenance={})  # in the store, but not in the pool split
    summary = build_support_split(path, "pool", "support", 2)
    assert (summary["feature_set"], summary["text"], summary["rows"]) == ("clip", "prompts", 8)


def test_a_pool_with_two_feature_sets_needs_feature_set(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "two.h5"
    with FeatureStore(path, "w") as store:
        store.set_classes(["a", "b"])
        for name in ("clip", "aux"):
            store.add_feature_set(name, D, provenance={})
        store.create_split("pool", ["clip", "aux"])
        store.append("pool", ids=["0", "1", "2"], paths=[""] * 3, labels=[-1] * 3,
                     features={"clip": unit(rng.normal(size=(3, D))), "aux": unit(rng.normal(size=(3, D)))})
    with pytest.raises(ClipCacheError, match="split 'pool' has feature sets clip, aux; give feature_set") as err:
        build_support_split(path, "pool", "support", 1)
    assert err.value.param == "feature_set"


def test_k_larger_than_the_pool_is_refused(pool_store):
    path, _, _ = pool_store
    with FeatureStore(path) as store, pytest.raises(QueryError, match="k=241 is larger than the 240 images") as err:
        retrieve_support(store, "pool", "clip", 241)
    assert err.value.param == "k"


def test_text_of_another_dimension_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mismatch.h5"
    write_store(path, {"pool": (unit(rng.normal(size=(30, D))), np.full(30, -1))})
    with FeatureStore(path, "a") as store:
        store.write_text("prompts", unit(rng.normal(size=(4, 8))), np.arange(4), ["p"] * 4, provenance={})
        with pytest.raises(StoreMismatchError, match="dimension 8 but feature set 'clip' has 16"):
            retrieve_support(store, "pool", "clip", 3, text="prompts")


@pytest.fixture
def labelled_store(tmp_path):
    """Pool (400 unlabelled), test and val (labelled) splits drawn around 4 class centres, with prompts."""
    rng = np.random.default_rng(5)
    centres = unit(rng.normal(size=(N_CLASSES, D)))
    text = unit(np.repeat(centres, 2, axis=0) + 0.3 * rng.normal(size=(2 * N_CLASSES, D)))

    def draw(n):
        y = rng.integers(0, N_CLASSES, n)
        return unit(centres[y] + 0.15 * rng.normal(size=(n, D))), y

    pool_x, _ = draw(400)
    path = tmp_path / "fit.h5"
    write_store(path, {"pool": (pool_x, np.full(400, -1)), "test": draw(200), "val": draw(40)}, text=text)
    return path


def test_tip_adapter_fits_on_a_retrieved_support_split(labelled_store):
    from clipcache.classifiers import TipAdapter, ZeroShotClassifier

    build_support_split(labelled_store, "pool", "support", 16)
    with FeatureStore(labelled_store) as store:
        x_s, y_s = store.to_numpy("support", "clip")
        x_t, y_t = store.to_numpy("test", "clip")
        text = store.text("prompts")
    base = ZeroShotClassifier(text_embeddings=text.embeddings, class_index=text.class_index)
    model = TipAdapter(base=base).fit(x_s, y_s)
    assert model.classes_.tolist() == list(range(N_CLASSES))
    assert (model.predict(x_t) == y_t).mean() >= 0.9


def test_clipcache_fit_accepts_the_support_split(labelled_store, tmp_path):
    from click.testing import CliRunner

    from clipcache.cli.main import cli

    build_support_split(labelled_store, "pool", "support", 8)
    out = tmp_path / "tip.npz"
    args = ["fit", str(labelled_store), "--method", "tip", "--train-split", "support", "--val-split", "val", "--shots", "0", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    from clipcache.classifiers import load_model

    _, meta = load_model(out)
    with FeatureStore(labelled_store) as store:
        support_ids = store.ids("support").tolist()
    assert (meta["train_split"], meta["feature_set"], meta["val"]["split"]) == ("support", "clip", "val")
    assert sorted(meta["support"]["ids"]) == sorted(support_ids) and len(support_ids) == 8 * N_CLASSES


def test_support_uses_the_saved_pool_index_when_asked(pool_store):
    path, _, _ = pool_store
    with FeatureStore(path) as store:
        build_index(store, "pool", "clip", factory="IVF4,Flat", nprobe=4).save(index_path(path, "pool", "clip"))
        exact = retrieve_support(store, "pool", "clip", 6)
    summary = build_support_split(path, "pool", "support", 6, use_index=True)
    with FeatureStore(path) as store:
        assert sorted(store.ids("support").tolist()) == sorted(f"pool-{r:05d}" for r in exact.rows)
        record = store.metadata["support_sets"]["support"]
    assert summary["per_class"] == {f"class{i}": 6 for i in range(N_CLASSES)}
    assert (summary["feature_set"], record["feature_set"], record["k"], record["exclusive"]) == ("clip", "clip", 6, True)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_classes=st.integers(5, 12),
    k=st.integers(1, 6),
    n=st.integers(12, 90),
    seed=st.integers(0, 2**16),
    clustered=st.booleans(),
)
def test_exclusive_support_matches_the_whole_pool_greedy_rule(tmp_path, n_classes, k, n, seed, clustered):
    # More than 4 classes, so the candidate list starts below k * C and has to grow.
    rng = np.random.default_rng(seed)
    d = 6
    text = unit(rng.normal(size=(n_classes, d)))
    x = unit(text[rng.integers(0, n_classes, n)] + rng.normal(size=(n, d))) if clustered else unit(rng.normal(size=(n, d)))
    k = min(k, n)
    path = tmp_path / f"prop-{seed}-{n_classes}-{k}-{n}-{clustered}.h5"
    with FeatureStore(path, "w") as store:
        store.set_classes([f"c{i}" for i in range(n_classes)])
        store.add_feature_set("clip", d, provenance={})
        store.create_split("pool", ["clip"])
        store.append("pool", ids=[str(i) for i in range(n)], paths=[""] * n, labels=np.full(n, -1), features={"clip": x})
        store.write_text("t", text, np.arange(n_classes), ["p"] * n_classes, provenance={})
        support = retrieve_support(store, "pool", "clip", k, chunk_rows=17)
    got = set(zip(support.labels.tolist(), support.rows.tolist(), strict=True))
    assert got == greedy_reference(text @ x.T, k)
