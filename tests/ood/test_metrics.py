"""AUROC, AUPR-in and FPR@95: scikit-learn's AUROC, hand-computed cases, OpenOOD's conventions."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clipcache.errors import InvalidFeaturesError, InvalidParameterError
from clipcache.ood import aupr_in, auroc, fpr_at_95_tpr


def test_auroc_equals_sklearn_roc_auc_score_with_ties():
    rng = np.random.default_rng(0)
    s_in = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding makes ties
    s_out = np.round(rng.normal(0.0, 1.0, 200), 1)
    want = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[s_in, s_out])
    assert auroc(s_in, s_out) == pytest.approx(want, rel=1e-12)


def test_hand_computed_case():
    s_in, s_out = [0.9, 0.4], [0.6, 0.1]
    assert auroc(s_in, s_out) == 0.75  # 3 of the 4 (in, out) pairs are ordered
    # PR points (recall, precision) from the lowest threshold reaching full recall: (1, 2/3), (0.5, 1/2),
    # (0.5, 1), then (0, 1); trapezoids: 0.5 * (2/3 + 1/2) / 2 + 0 + 0.5 * 1
    assert aupr_in(s_in, s_out) == pytest.approx(0.5 * (2 / 3 + 0.5) / 2 + 0.5, rel=1e-12)


def test_fpr95_conventions_differ_as_documented():
    s_in, s_out = [0.9, 0.8, 0.3], [0.5, 0.1]
    # OpenOOD v1.5: detect every OOD sample (flag scores <= 0.5): in-distribution 0.3 is flagged too.
    assert fpr_at_95_tpr(s_in, s_out) == pytest.approx(1 / 3)
    # KNN/MCM papers: keep every in-distribution sample (scores >= 0.3): OOD 0.5 is kept.
    assert fpr_at_95_tpr(s_in, s_out, positive="in") == pytest.approx(1 / 2)


def test_perfect_and_reversed_separation():
    assert auroc([3, 4], [1, 2]) == 1.0 and fpr_at_95_tpr([3, 4], [1, 2]) == 0.0 and aupr_in([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0 and fpr_at_95_tpr([1, 2], [3, 4]) == 1.0


def test_fpr95_at_the_first_threshold_reaching_95_percent():
    s_in = np.arange(100, dtype=float)  # in: 0..99
    s_out = np.arange(-10, 10, dtype=float) + 0.5  # out: -9.5 .. 9.5
    # positive "in": keep 95 of 100 in-distribution scores (>= 5); OOD at or above 5: 5.5 .. 9.5 -> 5 of 20
    assert fpr_at_95_tpr(s_in, s_out, positive="in") == pytest.approx(5 / 20)
    # positive "out": flag 19 of 20 OOD scores (<= 8.5): in-distribution 0..8 are flagged -> 9 of 100
    assert fpr_at_95_tpr(s_in, s_out) == pytest.approx(9 / 100)


def test_empty_or_nan_scores_are_clear_errors():
    with pytest.raises(InvalidFeaturesError, match="score_out is empty"):
        auroc([1.0], [])
    with pytest.raises(InvalidFeaturesError, match="score_in is empty"):
        fpr_at_95_tpr([], [1.0])
    with pytest.raises(InvalidFeaturesError, match="NaN"):
        aupr_in([1.0, np.nan], [0.0])
    with pytest.raises(InvalidParameterError) as info:
        fpr_at_95_tpr([1.0], [0.0], positive="both")
    assert info.value.param == "positive"
