import numpy as np

from clipcache.classifiers import GDAClassifier, LogitEnsemble, ZeroShotClassifier


def test_ensemble_logits_are_base_plus_alpha_model(blobs, text_weights):
    est = LogitEnsemble(base=ZeroShotClassifier(**text_weights), model=GDAClassifier(), alpha=0.3).fit(blobs["X"], blobs["y"])
    zs = ZeroShotClassifier(**text_weights).fit(blobs["X"], blobs["y"]).logits(blobs["Xt"])
    gda = GDAClassifier().fit(blobs["X"], blobs["y"]).logits(blobs["Xt"])
    np.testing.assert_allclose(est.logits(blobs["Xt"]), zs + 0.3 * gda, rtol=1e-5, atol=1e-4)


def test_alpha_is_chosen_on_validation_like_a_loop(blobs, text_weights):
    grid = np.array([0.0, 0.01, 0.1, 1.0, 10.0])
    est = LogitEnsemble(base=ZeroShotClassifier(**text_weights), alpha_grid=grid)
    est.fit(blobs["X"], blobs["y"], blobs["Xv"], blobs["yv"])
    loop = [LogitEnsemble(base=ZeroShotClassifier(**text_weights), alpha=a).fit(blobs["X"], blobs["y"])
            .score(blobs["Xv"], blobs["yv"]) for a in grid]
    np.testing.assert_allclose(est.search_accuracy_, loop, atol=1e-12)
    assert est.alpha_ == grid[int(np.argmax(loop))]
