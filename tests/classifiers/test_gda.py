import logging

import numpy as np
import pytest
import scipy.special
from sklearn.covariance import ledoit_wolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from clipcache import ClipCacheError, FeatureStore
from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    InvalidFeaturesError,
    InvalidParameterError,
)


def _imbalanced(seed=0, d=10, n_classes=4):
    rng = np.random.default_rng(seed)
    counts = np.array([30, 12, 20, 45])[:n_classes]
    y = np.repeat(np.arange(n_classes), counts)
    mu = rng.normal(size=(n_classes, d))
    X = (mu[y] + rng.normal(size=(len(y), d)) @ rng.normal(size=(d, d)) * 0.5).astype(np.float32)
    return X, y


def _iclr_reference(X, y):
    """The ICLR 2024 baseline's formulas, written out in float64 (uniform priors)."""
    X = X.astype(np.float64)
    classes = np.unique(y)
    mus = np.stack([X[y == c].mean(axis=0) for c in classes])
    centred = np.concatenate([X[y == c] - mus[i] for i, c in enumerate(classes)])
    cov = np.cov(centred.T)
    d = X.shape[1]
    prec = d * np.linalg.pinv((len(centred) - 1) * cov + np.trace(cov) * np.eye(d))
    W = mus @ prec
    b = np.log(np.full(len(classes), 1 / len(classes))) - 0.5 * np.einsum("kd,de,ke->k", mus, prec, mus)
    return W, b


def test_iclr2024_matches_reference_formula():
    X, y = _imbalanced()
    clf = GDAClassifier().fit(X, y)
    W, b = _iclr_reference(X, y)
    np.testing.assert_allclose(clf.coef_, W, rtol=1e-5, atol=1e-5 * np.abs(W).max())
    np.testing.assert_allclose(clf.logits(X), X.astype(np.float64) @ W.T + b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shrinkage", [0.05, 0.2, 0.9])
def test_shrinkage_matches_sklearn_lda_lsqr_with_empirical_priors(shrinkage):
    X, y = _imbalanced()
    ours = GDAClassifier(precision="shrinkage", shrinkage=shrinkage, priors="empirical").fit(X, y)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(X.astype(np.float64), y)
    np.testing.assert_allclose(ours.logits(X), ref.decision_function(X.astype(np.float64)), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X.astype(np.float64)), atol=1e-5)


def test_shrinkage_matches_sklearn_lda_lsqr_with_uniform_priors():
    X, y = _imbalanced(1)
    ours = GDAClassifier(precision="shrinkage", shrinkage=0.3, priors="uniform").fit(X, y)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.3, priors=np.full(4, 0.25)).fit(X.astype(np.float64), y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X.astype(np.float64)), atol=1e-5)


def test_ledoit_wolf_intensity_matches_sklearn_on_residuals():
    X, y = _imbalanced(2, d=30)
    clf = GDAClassifier(precision="ledoit-wolf").fit(X, y)
    means = np.stack([X[y == c].mean(axis=0) for c in range(4)]).astype(np.float64)
    _, delta = ledoit_wolf(X - means[y], assume_centered=True)
    assert clf.shrinkage_ == pytest.approx(delta, rel=1e-5)


def test_near_bayes_optimal_on_gaussian_data():
    rng = np.random.default_rng(3)
    d, n_classes = 8, 3
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.5 * np.eye(d)
    mu = rng.normal(size=(n_classes, d)) * 0.8
    chol = np.linalg.cholesky(cov)

    def draw(n):
        y = rng.integers(0, n_classes, n)
        return (mu[y] + rng.normal(size=(n, d)) @ chol.T).astype(np.float32), y

    X, y = draw(3000)
    Xt, yt = draw(20000)
    prec = np.linalg.inv(cov)
    bayes = (Xt @ prec @ mu.T - 0.5 * np.einsum("kd,de,ke->k", mu, prec, mu)).argmax(axis=1)
    bayes_acc = np.mean(bayes == yt)
    acc = GDAClassifier(precision="ledoit-wolf").fit(X, y).score(Xt, yt)
    assert bayes_acc - acc < 0.01


def test_streaming_fit_equals_in_memory_fit():
    X, y = _imbalanced(4)
    calls = []

    def chunks():
        calls.append(1)
        return ((X[i : i + 7], y[i : i + 7]) for i in range(0, len(X), 7))

    for precision in ("iclr2024", "ledoit-wolf", "shrinkage"):
        a = GDAClassifier(precision=precision).fit(X, y)
        b = GDAClassifier(precision=precision).fit_chunks(chunks)
        scale = np.abs(a.coef_).max()
        np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(b.intercept_, a.intercept_, rtol=1e-5, atol=1e-5 * np.abs(a.intercept_).max())
    assert len(calls) == 6  # two passes per fit


def _store_of(path, X, y) -> FeatureStore:
    """A store, open for writing, whose complete split ``train`` holds X (feature set ``f``) with labels y in 0 .. 3."""
    store = FeatureStore(path, "w")
    store.set_classes(["a", "b", "c", "d"])
    store.add_feature_set("f", X.shape[1], normalized=False, provenance={"model": "m"})
    store.create_split("train", ["f"])
    ids = [str(i) for i in range(len(y))]
    store.append("train", ids=ids, paths=ids, labels=y, features={"f": X})
    store.mark_complete("train")
    return store


def test_fit_store_streams_rows_of_a_split(tmp_path):
    X, y = _imbalanced(5)
    with _store_of(tmp_path / "s.h5", X, y) as store:
        rows = np.arange(0, len(y), 2)
        streamed = GDAClassifier().fit_store(store, "train", "f", rows=rows, chunk_rows=5)
    direct = GDAClassifier().fit(X[rows], y[rows])
    np.testing.assert_allclose(streamed.coef_, direct.coef_, rtol=1e-5, atol=1e-5 * np.abs(direct.coef_).max())
    np.testing.assert_array_equal(streamed.classes_, direct.classes_)


def test_one_shot_falls_back_to_identity_covariance(caplog):
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(4, 6)).astype(np.float32), np.arange(4)
    with caplog.at_level(logging.INFO):
        clf = GDAClassifier().fit(X, y)
    assert clf.fallback_ == "identity" and "identity covariance" in caplog.text
    Xt = rng.normal(size=(50, 6)).astype(np.float32)
    nearest = ((Xt[:, None, :] - X[None]) ** 2).sum(-1).argmin(axis=1)
    np.testing.assert_array_equal(clf.predict(Xt), nearest)


def test_more_dimensions_than_samples_still_classifies(blobs):
    rng = np.random.default_rng(7)
    d = 200  # d > N = 40
    proj = rng.normal(size=(16, d)).astype(np.float32)
    clf = GDAClassifier().fit(blobs["X"] @ proj, blobs["y"])
    assert np.isfinite(clf.coef_).all()
    assert clf.score(blobs["Xt"] @ proj, blobs["yt"]) > 0.6


def test_gda_beats_class_mean_with_correlated_noise():
    rng = np.random.default_rng(8)
    d = 12
    mix = np.eye(d) + 2.0 * np.outer(np.ones(d), np.ones(d)) / np.sqrt(d)
    mu = rng.normal(size=(4, d)) * 0.6

    def draw(n):
        y = np.repeat(np.arange(4), n)
        return (mu[y] + rng.normal(size=(len(y), d)) @ mix).astype(np.float32), y

    (X, y), (Xt, yt) = draw(16), draw(200)
    gda = GDAClassifier().fit(X, y).score(Xt, yt)
    ncm = ClassMeanClassifier(normalize=False).fit(X, y).score(Xt, yt)
    assert gda > ncm + 0.05


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_raise(blobs, bad):
    X = blobs["X"].copy()
    X[3, 2] = bad
    with pytest.raises(InvalidFeaturesError, match="NaN or inf"):
        GDAClassifier().fit(X, blobs["y"])


@pytest.mark.parametrize("device", [None, "cpu"], ids=["numpy", "torch"])
@pytest.mark.parametrize("block", [0, 1])
def test_non_finite_features_in_stream_raise(blobs, device, block):
    """numpy checks each block on the host; torch checks it where it computes, after the first pass."""
    if device is not None:
        pytest.importorskip("torch")
    X = blobs["X"].copy()
    X[block * 20, 0] = np.nan
    with pytest.raises(InvalidFeaturesError, match="NaN or inf"):
        GDAClassifier(device=device).fit_chunks(lambda: [(X[:20], blobs["y"][:20]), (X[20:], blobs["y"][20:])])


def test_prepared_ahead_keeps_order_and_raises_the_readers_error():
    from clipcache.classifiers._gda_math import _prepared_ahead

    blocks = [(np.full((2, 3), i, dtype=np.float32), np.array([i, i])) for i in range(5)]
    got = list(_prepared_ahead(iter(blocks), lambda X: X * 10))
    assert [int(X[0, 0]) for X, _ in got] == [0, 10, 20, 30, 40]
    assert [int(c[0]) for _, c in got] == [0, 1, 2, 3, 4]

    def failing():
        yield blocks[0]
        raise OSError("disk gone")

    it = _prepared_ahead(failing(), lambda X: X)
    assert int(next(it)[1][0]) == 0
    with pytest.raises(OSError, match="disk gone"):
        next(it)


def test_prepared_ahead_stops_its_thread_when_the_caller_stops():
    import threading

    from clipcache.classifiers._gda_math import _prepared_ahead

    read = []

    def endless():
        i = 0
        while True:
            read.append(i)
            yield np.zeros(1), i
            i += 1

    it = _prepared_ahead(endless(), lambda X: X, ahead=2)
    assert next(it)[1] == 0
    it.close()
    assert not any(t.name == "clipcache-read-ahead" for t in threading.enumerate())
    assert len(read) <= 5  # one taken, two queued, one waiting to be queued, and at most one more read
    nested = _prepared_ahead(_prepared_ahead(endless(), lambda X: X), lambda X: X + 1)  # as a GPU fit reads
    assert [next(nested)[0][0] for _ in range(3)] == [1, 1, 1]
    nested.close()
    assert not any(t.name == "clipcache-read-ahead" for t in threading.enumerate())


def test_single_class_raises(blobs):
    with pytest.raises(InvalidFeaturesError, match="at least 2 classes"):
        GDAClassifier().fit(blobs["X"], np.zeros(len(blobs["X"]), dtype=int))


def test_bad_precision_name_raises(blobs):
    with pytest.raises(ClipCacheError) as info:
        GDAClassifier(precision="oas").fit(blobs["X"], blobs["y"])
    assert str(info.value) == (
        "GDAClassifier got precision='oas'; precision must be 'iclr2024', 'ledoit-wolf' or 'shrinkage'"
    )
    assert info.value.param == "precision"


def test_float32_throughout(blobs):
    clf = GDAClassifier().fit(blobs["X"].astype(np.float64), blobs["y"])
    assert clf.coef_.dtype == np.float32 and clf.predict_proba(blobs["Xt"]).dtype == np.float32


def test_torch_backend_matches_numpy(blobs):
    a = GDAClassifier().fit(blobs["X"], blobs["y"])
    b = GDAClassifier(device="cpu").fit(blobs["X"], blobs["y"])
    np.testing.assert_allclose(b.logits(blobs["Xt"]), a.logits(blobs["Xt"]), rtol=1e-4, atol=1e-3)


def test_predictions_are_bayes_rule_probabilities(blobs):
    clf = GDAClassifier().fit(blobs["X"], blobs["y"])
    z = clf.logits(blobs["Xt"]).astype(np.float64)
    np.testing.assert_allclose(clf.predict_proba(blobs["Xt"]), scipy.special.softmax(z, axis=1), atol=1e-6)


def _few_shot(seed=9, d=300, n_classes=6, shots=5):
    """N = 30 < d = 300: correlated noise around random class means."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    mu = rng.normal(size=(n_classes, d))

    def draw(n):
        y = np.repeat(np.arange(n_classes), n)
        return (mu[y] + rng.normal(size=(len(y), d)) @ mix).astype(np.float32), y

    return draw(shots), draw(200)


@pytest.mark.parametrize("priors", ["uniform", "empirical"])
@pytest.mark.parametrize("precision", ["iclr2024", "ledoit-wolf", "shrinkage"])
def test_woodbury_equals_the_covariance_path(precision, priors):
    (X, y), (Xt, _) = _few_shot()
    keep = np.concatenate([np.arange(30), [0, 1, 2]])  # unequal class counts
    X, y = X[keep], y[keep]
    wood = GDAClassifier(precision=precision, priors=priors, solver="woodbury").fit(X, y)
    full = GDAClassifier(precision=precision, priors=priors, solver="covariance").fit(X, y)
    assert (wood.solver_, full.solver_) == ("woodbury", "covariance")
    assert wood.shrinkage_ == pytest.approx(full.shrinkage_, rel=1e-6)
    np.testing.assert_allclose(wood.coef_, full.coef_, rtol=1e-4, atol=1e-4 * np.abs(full.coef_).max())
    np.testing.assert_allclose(wood.intercept_, full.intercept_, rtol=1e-4, atol=1e-4 * np.abs(full.intercept_).max())
    np.testing.assert_array_equal(wood.predict(Xt), full.predict(Xt))


def test_woodbury_matches_the_iclr2024_reference_formula():
    (X, y), _ = _few_shot(seed=10)
    W, b = _iclr_reference(X, y)
    clf = GDAClassifier(solver="woodbury").fit(X, y)
    np.testing.assert_allclose(clf.coef_, W, rtol=1e-4, atol=1e-4 * np.abs(W).max())
    np.testing.assert_allclose(clf.intercept_, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_auto_solver_uses_woodbury_only_with_fewer_samples_than_dimensions(blobs):
    (X, y), _ = _few_shot()
    assert GDAClassifier().fit(X, y).solver_ == "woodbury"
    assert GDAClassifier().fit(blobs["X"], blobs["y"]).solver_ == "covariance"  # N = 40 > d = 16


def test_woodbury_with_zero_ridge_falls_back_to_the_covariance_path():
    (X, y), _ = _few_shot()
    clf = GDAClassifier(precision="shrinkage", shrinkage=0.0, solver="woodbury").fit(X, y)
    assert clf.solver_ == "covariance" and np.isfinite(clf.coef_).all()


def test_streamed_fit_refuses_the_woodbury_solver(blobs):
    with pytest.raises(InvalidParameterError) as info:
        GDAClassifier(solver="woodbury").fit_chunks(lambda: [(blobs["X"], blobs["y"])])
    assert info.value.param == "solver"


@pytest.mark.parametrize("precision", ["iclr2024", "ledoit-wolf", "shrinkage"])
def test_torch_device_fit_equals_the_numpy_fit(precision):
    pytest.importorskip("torch")
    X, y = _imbalanced(11, d=24)
    a = GDAClassifier(precision=precision, solver="covariance").fit(X, y)
    b = GDAClassifier(precision=precision, device="cpu").fit(X, y)
    c = GDAClassifier(precision=precision, device="cpu").fit_chunks(lambda: [(X[:50], y[:50]), (X[50:], y[50:])])
    for other in (b, c):
        assert other.shrinkage_ == pytest.approx(a.shrinkage_, rel=1e-5)
        np.testing.assert_allclose(other.coef_, a.coef_, rtol=1e-4, atol=1e-4 * np.abs(a.coef_).max())
        np.testing.assert_allclose(other.intercept_, a.intercept_, rtol=1e-4, atol=1e-4 * np.abs(a.intercept_).max())
        np.testing.assert_array_equal(other.predict(X), a.predict(X))


@pytest.mark.parametrize(("budget", "reads"), [(1 << 30, 1), (2 * 30 * 24 * 4, 2), (0, 2)], ids=["fits", "too-big", "off"])
@pytest.mark.parametrize("precision", ["iclr2024", "ledoit-wolf"])
def test_resident_blocks_are_read_once_when_they_fit(monkeypatch, precision, budget, reads):
    """A torch fit keeps the first pass's blocks on the device and replays them, unless they pass the budget."""
    pytest.importorskip("torch")
    from clipcache.classifiers import _gda_math as gm

    monkeypatch.setattr(gm.TorchOps, "resident_budget", lambda self: budget)
    X, y = _imbalanced(13, d=24)  # 107 rows in blocks of 30: the third block passes the "too-big" budget
    calls = []

    def chunks():
        calls.append(1)
        return [(X[i : i + 30], y[i : i + 30]) for i in range(0, len(X), 30)]

    fitted = GDAClassifier(precision=precision, device="cpu").fit_chunks(chunks)
    reference = GDAClassifier(precision=precision, solver="covariance").fit(X, y)
    assert len(calls) == reads
    np.testing.assert_allclose(fitted.coef_, reference.coef_, rtol=1e-4, atol=1e-4 * np.abs(reference.coef_).max())
    np.testing.assert_allclose(fitted.intercept_, reference.intercept_, rtol=1e-4, atol=1e-4 * np.abs(reference.intercept_).max())


def test_resident_budget_is_zero_off_the_gpu():
    pytest.importorskip("torch")
    from clipcache.classifiers import _gda_math as gm

    assert gm.TorchOps("cpu").resident_budget() == 0


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_gpu_fit_store_equals_the_cpu_fit(tmp_path):
    X, y = _imbalanced(12, d=64)
    with _store_of(tmp_path / "s.h5", X, y) as store:
        gpu = GDAClassifier(device="cuda").fit_store(store, "train", "f", chunk_rows=16)
    cpu = GDAClassifier(solver="covariance").fit(X, y)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-4, atol=1e-4 * np.abs(cpu.coef_).max())
    np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))


@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("resident", [True, False], ids=["blocks-kept-on-the-gpu", "every-pass-reads"])
def test_gpu_fit_store_through_pinned_blocks_equals_the_cpu_fit(tmp_path, monkeypatch, resident):
    """Many blocks read into pinned memory while earlier ones are still being copied: a pinned block reused too early
    would change the sums."""
    from clipcache.classifiers import _gda_math as gm

    if not resident:
        monkeypatch.setattr(gm, "RESIDENT_SHARE", 0.0)
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 200_000)
    X = (rng.standard_normal((200_000, 64)) + 3 * np.eye(4, 64)[y]).astype(np.float32)
    with _store_of(tmp_path / "s.h5", X, y) as store:
        gpu = GDAClassifier(device="cuda").fit_store(store, "train", "f", chunk_rows=2048)
    cpu = GDAClassifier(solver="covariance").fit(X, y)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-4, atol=1e-4 * np.abs(cpu.coef_).max())


@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_gpu_fit_refuses_non_finite_features():
    X, y = _imbalanced(12, d=64)
    X[len(X) - 1, 5] = np.inf  # in the last block, which the thread reads ahead (a store refuses inf itself)
    with pytest.raises(InvalidFeaturesError, match="NaN or inf"):
        GDAClassifier(device="cuda").fit_chunks(lambda: [(X[i : i + 16], y[i : i + 16]) for i in range(0, len(X), 16)])


@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_gpu_in_memory_fit_equals_the_cpu_fit(blobs):
    gpu = GDAClassifier(device="cuda").fit(blobs["X"], blobs["y"])
    cpu = GDAClassifier().fit(blobs["X"], blobs["y"])
    np.testing.assert_allclose(gpu.logits(blobs["Xt"]), cpu.logits(blobs["Xt"]), rtol=1e-4, atol=1e-3)
