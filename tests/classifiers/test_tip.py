import numpy as np
import pytest

from clipcache.classifiers import InvalidFeaturesError, TipAdapter, ZeroShotClassifier
from clipcache.classifiers.tip import DEFAULT_BETAS


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_logits(zs, F, K, labels, n_classes, alpha, beta):
    V = np.eye(n_classes)[labels]
    A = np.exp(-beta * (1 - _unit(F) @ _unit(K).T))
    return zs + alpha * A @ V


def test_tip_logits_equal_reference_formula(blobs, text_weights):
    zs = ZeroShotClassifier(**text_weights)
    tip = TipAdapter(base=zs, alpha=2.0, beta=3.0).fit(blobs["X"], blobs["y"])
    base = ZeroShotClassifier(**text_weights).fit(blobs["X"], blobs["y"]).logits(blobs["Xt"])
    ref = _reference_logits(base, blobs["Xt"], blobs["X"], blobs["y"], 5, 2.0, 3.0)
    np.testing.assert_allclose(tip.logits(blobs["Xt"]), ref, rtol=1e-5, atol=1e-4)


def test_tip_search_equals_reference_nested_loop(blobs, text_weights):
    alphas, betas = np.linspace(0, 4, 9), np.linspace(0.5, 8, 6)
    tip = TipAdapter(base=ZeroShotClassifier(**text_weights), alpha_grid=alphas, beta_grid=betas)
    tip.fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])
    base = tip.base_.logits(blobs["Xv"])
    grid = np.zeros((len(betas), len(alphas)))
    for i, beta in enumerate(betas):  # the reference loop: one product per cell
        for j, alpha in enumerate(alphas):
            z = _reference_logits(base, blobs["Xv"], blobs["X"], blobs["y"], 5, alpha, beta)
            grid[i, j] = np.mean(z.argmax(axis=1) == blobs["yv"])
    np.testing.assert_allclose(tip.search_accuracy_, grid, atol=1e-12)
    i, j = np.unravel_index(np.argmax(grid), grid.shape)
    assert (tip.beta_, tip.alpha_) == (betas[i], alphas[j])


def test_tip_without_validation_uses_given_alpha_beta(blobs):
    tip = TipAdapter(alpha=0.7, beta=4.0).fit(blobs["X"], blobs["y"])
    assert (tip.alpha_, tip.beta_) == (0.7, 4.0) and tip.search_accuracy_.size == 0


def test_tip_improves_on_its_base_with_validation(blobs, text_weights):
    tip = TipAdapter(base=ZeroShotClassifier(**text_weights)).fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])
    base = tip.base_.score(blobs["Xv"], blobs["yv"])
    # alpha=0 is the base alone, whatever beta; the chosen cell is the best and beats it
    np.testing.assert_array_equal(tip.search_accuracy_[:, 0], np.full(len(DEFAULT_BETAS), base))
    assert tip.score(blobs["Xv"], blobs["yv"]) == tip.search_accuracy_.max() > base


def test_support_missing_a_class_of_the_zero_shot_base_raises(blobs, text_weights):
    keep = blobs["y"] != 4
    with pytest.raises(InvalidFeaturesError, match="no support sample"):
        TipAdapter(base=ZeroShotClassifier(**text_weights)).fit(blobs["X"][keep], blobs["y"][keep])


def test_validation_labels_unknown_to_support_raise(blobs):
    with pytest.raises(InvalidFeaturesError, match="y_val"):
        TipAdapter().fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"] + 10)
