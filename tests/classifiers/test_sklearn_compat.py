"""scikit-learn compatibility: check_estimator, cross_val_score and GridSearchCV."""

import numpy as np
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    LogitBiasFusion,
    LogitEnsemble,
    TipAdapter,
    ZeroShotClassifier,
)


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
    ]
)
def test_check_estimator(estimator, check):
    check(estimator)


def test_zero_shot_and_tip_work_in_cross_val_score(blobs, text_weights):
    X = np.vstack([blobs["X"], blobs["Xt"]])
    y = np.concatenate([blobs["y"], blobs["yt"]])
    zs = cross_val_score(ZeroShotClassifier(**text_weights), X, y, cv=3)
    tip = cross_val_score(TipAdapter(base=ZeroShotClassifier(**text_weights)), X, y, cv=3)
    assert zs.shape == tip.shape == (3,) and tip.mean() > 0.6


def test_grid_search_over_gda_precision(blobs):
    X = np.vstack([blobs["X"], blobs["Xt"]])
    y = np.concatenate([blobs["y"], blobs["yt"]])
    search = GridSearchCV(GDAClassifier(), {"precision": ["iclr2024", "ledoit-wolf"]}, cv=3).fit(X, y)
    assert search.best_params_["precision"] in ("iclr2024", "ledoit-wolf") and search.best_score_ > 0.6
