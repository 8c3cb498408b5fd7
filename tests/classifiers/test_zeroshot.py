import numpy as np
import pytest

from clipcache import ClipCacheError
from clipcache.classifiers import (
    InvalidFeaturesError,
    MissingTextError,
    ZeroShotClassifier,
    prompt_ensemble,
)


def _reference_weights(emb, idx):
    out = []
    for c in range(idx.max() + 1):
        rows = emb[idx == c].astype(np.float64)
        mean = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(axis=0)
        out.append(mean / np.linalg.norm(mean))
    return np.array(out)


def test_prompt_ensemble_is_normalised_mean_of_normalised_prompts():
    rng = np.random.default_rng(0)
    emb, idx = rng.normal(size=(12, 8)) * 3, np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 2])
    np.testing.assert_allclose(prompt_ensemble(emb, idx), _reference_weights(emb, idx), atol=1e-6)


def test_zeroshot_logits_equal_scaled_cosine(blobs, text_weights):
    emb, idx = text_weights["text_embeddings"], text_weights["class_index"]
    clf = ZeroShotClassifier(text_embeddings=emb, class_index=idx, logit_scale=50.0).fit(blobs["X"], blobs["y"])
    x = blobs["Xt"] * 3.0  # not normalised: the classifier normalises
    ref = 50.0 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ _reference_weights(emb, idx).T
    np.testing.assert_allclose(clf.logits(x), ref, rtol=1e-5, atol=1e-4)
    assert clf.logits(x).dtype == np.float32


def test_zeroshot_accuracy_on_clustered_data(blobs, text_weights):
    clf = ZeroShotClassifier(**text_weights).fit(blobs["X"], blobs["y"])
    assert clf.score(blobs["Xt"], blobs["yt"]) >= 0.8  # chance is 0.2


def test_missing_text_raises_clear_error(blobs):
    with pytest.raises(MissingTextError, match="text_embeddings is None"):
        ZeroShotClassifier().fit(blobs["X"], blobs["y"])


def test_text_dimension_mismatch_raises(blobs, text_weights):
    with pytest.raises(InvalidFeaturesError, match="same CLIP model"):
        ZeroShotClassifier(text_embeddings=text_weights["text_embeddings"][:, :8],
                           class_index=text_weights["class_index"]).fit(blobs["X"], blobs["y"])


def test_labels_outside_text_classes_raise(blobs, text_weights):
    with pytest.raises(ClipCacheError, match=r"\[0, 5\)"):
        ZeroShotClassifier(**text_weights).fit(blobs["X"], blobs["y"] + 3)


def test_torch_backend_matches_numpy(blobs, text_weights):
    a = ZeroShotClassifier(**text_weights).fit(blobs["X"], blobs["y"]).logits(blobs["Xt"])
    b = ZeroShotClassifier(**text_weights, device="cpu").fit(blobs["X"], blobs["y"]).logits(blobs["Xt"])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
