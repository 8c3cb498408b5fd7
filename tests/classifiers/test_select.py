"""SelectByValidation: the paired one-standard-error rule, written out, and the fitted choice."""

import numpy as np
import pytest
from sklearn.base import clone

from clipcache.calibration import fit_temperature
from clipcache.classifiers import (
    ClassMeanClassifier,
    GDAClassifier,
    KNNClassifier,
    LogitEnsemble,
    ProductOfExperts,
    SelectByValidation,
    TipAdapter,
    ZeroShotClassifier,
    load_model,
    save_model,
)
from clipcache.classifiers.base import PartCache, fit_part
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
    assert select.best_name_ == "gda+ncm" and isinstance(select.best_estimator_, ProductOfExperts)
    np.testing.assert_array_equal(select.best_estimator_.expert_temperatures_, [1.0, 1.0])
    assert select.validation_accuracy_.size == 0


def test_default_candidates_put_the_product_first():
    assert [(name, type(est).__name__, level) for name, est, level in default_candidates()] == [
        ("gda+ncm", "ProductOfExperts", 0), ("gda", "GDAClassifier", 1), ("ncm", "ClassMeanClassifier", 1)]
    base = ZeroShotClassifier()
    with_text = default_candidates(base=base)
    assert [(name, level) for name, _, level in with_text] == [
        ("gda+ncm+zeroshot", 0), ("gda", 1), ("ncm", 1), ("zeroshot", 1), ("gda-ensemble", 2), ("tip", 3)]
    assert with_text[0][1].experts[2] is base and with_text[4][1].base is base


def test_the_product_stays_unless_an_expert_alone_beats_it_beyond_the_noise():
    m = 40
    product = np.zeros(m, dtype=bool)
    product[:30] = True
    alone = product.copy()
    alone[30:33] = True  # +3 rows, 3 disagreements: gain 0.075 > se sqrt(3)/40 = 0.043
    assert choose_candidate(np.array([product, alone]), [0, 1], 1.0)[0] == 1
    alone = product.copy()
    alone[30] = True  # +1 row: gain 0.025 = se 1/40
    assert choose_candidate(np.array([product, alone]), [0, 1], 1.0)[0] == 0


def _straightforward(candidates, X, y, Xv, yv, tolerance=1.0):
    """The selection without shared work: clone, public fit and logits for every candidate."""
    fitted, correct = [], []
    for _, est, _ in candidates:
        est = clone(est)
        takes_val = isinstance(est, LogitEnsemble | TipAdapter | ProductOfExperts | SelectByValidation)
        est = est.fit(X, y, Xv, yv) if takes_val else est.fit(X, y)
        fitted.append(est)
        correct.append(est.predict(Xv) == yv)
    chosen = choose_candidate(np.array(correct), [level for _, _, level in candidates], tolerance)[0]
    best = fitted[chosen]
    return chosen, np.mean(correct, axis=1), best, fit_temperature(best.logits(Xv), np.searchsorted(best.classes_, yv))


@pytest.mark.parametrize("which", ["default", "mixed"])
def test_the_shared_fit_equals_the_straightforward_path(blobs, which):
    candidates = default_candidates() if which == "default" else [
        ("knn", KNNClassifier(n_neighbors=3), 0), ("gda", GDAClassifier(), 1),
        ("tip", TipAdapter(), 1), ("poe", ProductOfExperts(experts=[GDAClassifier(), KNNClassifier()]), 2)]
    X, y, Xv, yv = blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"]
    select = SelectByValidation(candidates=candidates, tolerance=0.0).fit(X, y, Xv, yv)
    chosen, accuracy, best, temperature = _straightforward(candidates, X, y, Xv, yv, tolerance=0.0)
    assert select.best_name_ == candidates[chosen][0]
    np.testing.assert_allclose(select.validation_accuracy_, accuracy)
    np.testing.assert_allclose(select.logits(blobs["Xt"]), best.logits(blobs["Xt"]), rtol=1e-6, atol=1e-6)
    assert select.temperature_ == pytest.approx(temperature, rel=1e-6)


def test_a_part_shared_by_two_candidates_is_fitted_once(blobs):
    X = blobs["X"]
    classes, codes = np.unique(blobs["y"], return_inverse=True)
    cache = PartCache()
    first, z1 = fit_part(GDAClassifier(), X, classes, codes, blobs["Xv"], codes, cache)
    again, z2 = fit_part(GDAClassifier(), X, classes, codes, blobs["Xv"], codes, cache)
    other, _ = fit_part(GDAClassifier(precision="ledoit-wolf"), X, classes, codes, blobs["Xv"], codes, cache)
    assert again is first and z2 is z1 and other is not first
    np.testing.assert_allclose(z1, GDAClassifier().fit(X, blobs["y"]).logits(blobs["Xv"]), rtol=1e-6, atol=1e-6)
    center = fit_part(GDAClassifier(center=blobs["Xv"].mean(0)), X, classes, codes, cache=cache)[0]
    assert cache.key(GDAClassifier(center=blobs["Xv"].mean(0)), False) is None and center is not first


def test_the_cache_tells_parts_fitted_with_and_without_validation_apart(blobs):
    X, Xv = blobs["X"], blobs["Xv"]
    classes, codes = np.unique(blobs["y"], return_inverse=True)
    codes_val = np.searchsorted(classes, blobs["yv"])
    cache = PartCache()
    # GDA does not read validation data: fitted without it, it is reused with it, and scored on it then
    gda, z = fit_part(GDAClassifier(), X, classes, codes, cache=cache)
    again, z_val = fit_part(GDAClassifier(), X, classes, codes, Xv, codes_val, cache)
    assert z is None and again is gda
    np.testing.assert_array_equal(z_val, gda.logits(Xv))
    # a searching part fitted without validation data keeps its fixed alpha; with it, it searches: two entries
    fixed = fit_part(LogitEnsemble(alpha=1.0), X, classes, codes, cache=cache)[0]
    searched = fit_part(LogitEnsemble(alpha=1.0), X, classes, codes, Xv, codes_val, cache)[0]
    assert searched is not fixed and fixed.alpha_ == 1.0
    assert searched.alpha_ == LogitEnsemble().fit(X, blobs["y"], Xv, blobs["yv"]).alpha_
    # both ensembles reuse the cached GDA
    assert fixed.model_ is gda and searched.model_ is gda


def test_a_part_that_centres_itself_does_not_reuse_the_callers_parts(blobs):
    X, Xv, y, yv = blobs["X"], blobs["Xv"], blobs["y"], blobs["yv"]
    classes, codes = np.unique(y, return_inverse=True)
    codes_val = np.searchsorted(classes, yv)
    cache = PartCache()
    gda = fit_part(GDAClassifier(), X, classes, codes, Xv, codes_val, cache)[0]
    centred = fit_part(LogitEnsemble(center="support"), X, classes, codes, Xv, codes_val, cache)[0]
    reference = LogitEnsemble(center="support").fit(X, y, Xv, yv)
    assert centred.model_ is not gda
    np.testing.assert_allclose(centred.logits(blobs["Xt"]), reference.logits(blobs["Xt"]), rtol=1e-6, atol=1e-6)


def test_the_gda_of_an_ensemble_candidate_is_the_product_experts_gda(blobs):
    X, Xv = blobs["X"], blobs["Xv"]
    classes, codes = np.unique(blobs["y"], return_inverse=True)
    codes_val = np.searchsorted(classes, blobs["yv"])
    cache = PartCache()
    product = fit_part(ProductOfExperts(experts=[GDAClassifier(), ClassMeanClassifier()]), X, classes, codes, Xv,
                       codes_val, cache)[0]
    ensemble = fit_part(LogitEnsemble(base=ClassMeanClassifier(), model=GDAClassifier()), X, classes, codes, Xv,
                        codes_val, cache)[0]
    tip = fit_part(TipAdapter(base=ClassMeanClassifier()), X, classes, codes, Xv, codes_val, cache)[0]
    assert ensemble.model_ is product.experts_[0] and ensemble.base_ is product.experts_[1]
    assert tip.base_ is product.experts_[1]


def test_bad_validation_features_are_refused_before_any_candidate_is_fitted(blobs):
    with pytest.raises(ValueError, match="X_val has 3 features but X has 16"):
        SelectByValidation().fit(blobs["X"], blobs["y"], blobs["Xv"][:, :3], blobs["yv"])
    bad = blobs["Xv"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        SelectByValidation().fit(blobs["X"], blobs["y"], bad, blobs["yv"])
    with pytest.raises(ValueError, match="each candidate must be"):
        SelectByValidation(candidates=[("gda", "not an estimator", 0)]).fit(blobs["X"], blobs["y"])


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


@pytest.mark.parametrize("make", [
    lambda c: ProductOfExperts(experts=[GDAClassifier(), ClassMeanClassifier()], center=c),
    lambda c: SelectByValidation(center=c),
    lambda c: LogitEnsemble(center=c),
    lambda c: TipAdapter(center=c),
    lambda c: GDAClassifier(center=c),
], ids=["product", "select", "ensemble", "tip", "gda"])
@pytest.mark.parametrize("center", [None, "support"])
def test_the_validation_logits_of_a_part_are_its_logits(blobs, make, center):
    # meta-estimators hand back the validation logits they computed while fitting; they must be the logits
    X, Xv = blobs["X"], blobs["Xv"]
    classes, codes = np.unique(blobs["y"], return_inverse=True)
    est, z = fit_part(make(center), X, classes, codes, Xv, np.searchsorted(classes, blobs["yv"]), PartCache())
    np.testing.assert_allclose(z, est.logits(Xv), rtol=1e-6, atol=1e-6)
