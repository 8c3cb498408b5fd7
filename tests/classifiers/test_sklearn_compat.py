"""scikit-learn compatibility: check_estimator, cross_val_score and GridSearchCV."""

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    LogitBiasFusion,
    LogitEnsemble,
    ProductOfExperts,
    SelectByValidation,
    TipAdapter,
    TransductiveGDA,
    ZeroShotClassifier,
)


def _expected_failures(estimator) -> dict:
    """-1 marks an unlabelled row (scikit-learn's semi-supervised convention), so the check that
    relabels a binary problem as {-1, 1} does not apply; scikit-learn exempts its own
    semi-supervised estimators from it by name (``_choose_check_classifiers_labels``)."""
    if isinstance(estimator, TransductiveGDA):
        return {"check_classifiers_classes": "-1 is the unlabelled marker of semi-supervised estimators"}
    return {}


@parametrize_with_checks(
    [
        GDAClassifier(),
        GDAClassifier(precision="ledoit-wolf"),
        GDAClassifier(precision="shrinkage", priors="empirical"),
        ClassMeanClassifier(),
        KNNClassifier(weights="distance"),
        TipAdapter(),
        LogitEnsemble(),
        LogitBiasFusion(aux_dim=1),
        GDAClassifier(center="support", solver="woodbury"),
        ClassMeanClassifier(center="support"),
        TransductiveGDA(),
        TransductiveGDA(covariance="em", center="transductive"),
        SelectByValidation(),
        ProductOfExperts(),
    ],
    expected_failed_checks=_expected_failures,
)
def test_check_estimator(estimator, check):
    check(estimator)


def _folds(X, y):
    """The folds that ``cv=3`` gives a classifier: StratifiedKFold(3), unshuffled."""
    return list(StratifiedKFold(3).split(X, y))


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_zero_shot_and_tip_work_in_cross_val_score(blobs, text_weights):
    X = np.vstack([blobs["X"], blobs["Xt"]]).astype(np.float64)
    y = np.concatenate([blobs["y"], blobs["yt"]])
    zs = cross_val_score(ZeroShotClassifier(**text_weights), X, y, cv=3)
    tip = cross_val_score(TipAdapter(base=ZeroShotClassifier(**text_weights), alpha=30.0), X, y, cv=3)
    emb, idx = text_weights["text_embeddings"].astype(np.float64), text_weights["class_index"]
    W = _unit(np.stack([_unit(emb[idx == c]).mean(axis=0) for c in range(5)]))
    zs_ref, tip_ref = [], []
    for train, test in _folds(X, y):  # the formulas written out, with alpha=30 and the default beta=5.5
        base = 100.0 * _unit(X[test]) @ W.T
        cache = np.exp(-5.5 * (1 - _unit(X[test]) @ _unit(X[train]).T)) @ np.eye(5)[y[train]]
        zs_ref.append(np.mean(base.argmax(axis=1) == y[test]))
        tip_ref.append(np.mean((base + 30.0 * cache).argmax(axis=1) == y[test]))
    np.testing.assert_array_equal(zs, zs_ref)
    np.testing.assert_array_equal(tip, tip_ref)
    assert tip.mean() > zs.mean()  # the cache corrects some zero-shot errors


def test_grid_search_over_gda_precision(blobs):
    X = np.vstack([blobs["X"], blobs["Xt"]])
    y = np.concatenate([blobs["y"], blobs["yt"]])
    grid = ["iclr2024", "ledoit-wolf", "shrinkage"]
    search = GridSearchCV(GDAClassifier(), {"precision": grid}, cv=3).fit(X, y)
    loop = [
        np.mean([GDAClassifier(precision=p).fit(X[tr], y[tr]).score(X[te], y[te]) for tr, te in _folds(X, y)])
        for p in grid
    ]
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"], loop)
    assert search.best_params_ == {"precision": grid[int(np.argmax(loop))]}
    refit = GDAClassifier(precision=search.best_params_["precision"]).fit(X, y)
    np.testing.assert_array_equal(search.best_estimator_.coef_, refit.coef_)
