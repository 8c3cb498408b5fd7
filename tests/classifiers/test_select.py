"""SelectByValidation: the paired one-standard-error rule, written out, and the fitted choice."""

import numpy as np
import pytest

from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    SelectByValidation,
    TipAdapter,
    load_model,
    save_model,
)
from clipcache.classifiers.selection import (
    choose_candidate,
    default_candidates,
    paired_standard_error,
)


def _rows(*bits):
    return np.array([[c == "1" for c in b] for b in bits])


def test_paired_standard_error_is_the_root_of_the_disagreements_over_m():
    a = np.array([1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 0, 1, 1, 1], dtype=bool)
    assert paired_standard_error(a, b) == pytest.approx(np.sqrt(3) / 8)
    assert paired_standard_error(a, a) == 0.0


def test_a_simpler_candidate_within_the_noise_wins():
    correct = _rows("1111100000", "1111110000")  # +1 row, 1 disagreement: gain 0.1 = se 0.1
    assert choose_candidate(correct, [0, 1], 1.0)[:2] == (0, 1)
    assert choose_candidate(correct, [0, 1], 0.5)[:2] == (1, 1)
    assert choose_candidate(correct, [0, 1], 0.0)[:2] == (1, 1)


def test_a_gain_beyond_the_noise_picks_the_complex_candidate():
    correct = _rows("1110000000", "1111111000")  # +4 rows, 4 disagreements: gain 0.4 > se 0.2
    chosen, best, noise = choose_candidate(correct, [0, 2], 1.0)
    assert (chosen, best) == (1, 1)
    np.testing.assert_allclose(noise, [0.2, 0.0])


def test_within_the_lowest_level_the_most_accurate_is_chosen():
    correct = _rows("1100000000", "1111000000", "1111100000")
    # level-0 candidates 0 and 1; the best (2) is within noise of 1 (se sqrt(1)/10) but not of 0 (sqrt(3)/10)
    assert choose_candidate(correct, [0, 0, 1], 1.0)[0] == 1


def test_ties_go_to_the_first_listed():
    correct = _rows("1100", "1100", "0011")
    assert choose_candidate(correct, [0, 0, 0], 0.0)[0] == 0


def test_select_fits_every_candidate_and_predicts_with_the_chosen_one(blobs):
    candidates = [("ncm", ClassMeanClassifier(), 0), ("knn", KNNClassifier(n_neighbors=1), 1),
                  ("tip", TipAdapter(), 2)]
    select = SelectByValidation(candidates=candidates, tolerance=0.0).fit(blobs["X"], blobs["y"], blobs["Xv"],
                                                                          blobs["yv"])
    accs = [ClassMeanClassifier().fit(blobs["X"], blobs["y"]).score(blobs["Xv"], blobs["yv"]),
            KNNClassifier(n_neighbors=1).fit(blobs["X"], blobs["y"]).score(blobs["Xv"], blobs["yv"]),
            TipAdapter().fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"]).score(blobs["Xv"], blobs["yv"])]
    np.testing.assert_allclose(select.validation_accuracy_, accs)
    assert select.best_name_ == candidates[int(np.argmax(accs))][0]
    np.testing.assert_array_equal(select.logits(blobs["Xt"]), select.best_estimator_.logits(blobs["Xt"]))
    assert candidates[0][1].__dict__.get("classes_") is None  # candidates are cloned, never fitted in place


def test_without_validation_data_the_first_candidate_is_used(blobs):
    select = SelectByValidation().fit(blobs["X"], blobs["y"])
    assert select.best_name_ == "gda" and isinstance(select.best_estimator_, GDAClassifier)
    assert select.validation_accuracy_.size == 0


def test_default_candidates_are_ranked_by_what_they_search():
    levels = {name: level for name, _, level in default_candidates()}
    assert levels == {"gda": 0, "ncm": 0, "gda-ensemble": 1, "tip": 2}


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_a_saved_selection_predicts_identically(tmp_path, blobs, suffix):
    select = SelectByValidation().fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])
    loaded, _ = load_model(save_model(select, tmp_path / f"m{suffix}"))
    assert loaded.best_name_ == select.best_name_
    np.testing.assert_array_equal(loaded.predict_proba(blobs["Xt"]), select.predict_proba(blobs["Xt"]))
    candidates = SelectByValidation(candidates=[("ncm", ClassMeanClassifier(), 0), ("gda", GDAClassifier(), 0)])
    loaded, _ = load_model(save_model(candidates.fit(blobs["X"], blobs["y"]), tmp_path / f"c{suffix}"))
    assert [(n, type(e).__name__, level) for n, e, level in loaded.candidates] == [
        ("ncm", "ClassMeanClassifier", 0), ("gda", "GDAClassifier", 0)]
