"""Seeded synthetic data and stores with class structure, for the classifier and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipcache import FeatureStore

CLIP_PROVENANCE = {"backbone": "open_clip", "model": "tiny", "pretrained": "none"}
AUX_PROVENANCE = {"backbone": "timm", "model": "aux-net", "pretrained": "none"}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, centres: np.ndarray, n_per_class: int, noise: float):
    """Unit-norm rows around unit class centres; returns X (C*n, d) float32 and y (C*n,) int64."""
    n_classes, d = centres.shape
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = unit(centres[y] + noise * rng.normal(size=(len(y), d)) / np.sqrt(d))
    return x, y.astype(np.int64)


def write_store(path: Path, *, n_classes=5, d=24, d_aux=12, per_class=None, text=True, aux=True, seed=0,
                noise=1.2, text_model="tiny", permute_test_labels: int | None = None,
                clip_provenance: dict | None = None) -> dict:
    """A complete store: feature sets 'clip' (+ 'aux'), splits train/val/test, text 'simple'.

    ``permute_test_labels`` (a seed) shuffles the test labels after the features
    are drawn, so that two stores differ in their test labels only;
    ``clip_provenance`` replaces the 'clip' feature set's provenance.
    """
    per_class = per_class or {"train": 20, "val": 8, "test": 30}
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_classes, d)))
    aux_centres = unit(rng.normal(size=(n_classes, d_aux)))
    out = {"centres": centres}
    with FeatureStore(path, "w") as store:
        store.set_classes([f"class{i}" for i in range(n_classes)])
        store.add_feature_set("clip", d, provenance=clip_provenance or CLIP_PROVENANCE)
        names = ["clip"]
        if aux:
            store.add_feature_set("aux", d_aux, provenance=AUX_PROVENANCE)
            names.append("aux")
        for split, n in per_class.items():
            store.create_split(split, names)
            x, y = clustered(rng, centres, n, noise)
            feats = {"clip": x}
            if aux:
                feats["aux"] = clustered(rng, aux_centres, n, noise)[0][np.argsort(np.argsort(y, kind="stable"))]
            ids = [f"{split}-{i:04d}" for i in range(len(y))]
            if split == "test" and permute_test_labels is not None:
                y = np.random.default_rng(permute_test_labels).permutation(y)
            store.append(split, ids=ids, paths=[f"/img/{i}.jpg" for i in ids], labels=y, features=feats)
            store.mark_complete(split)
            out[split] = (x, y)
        if text:
            m = 3
            emb = np.repeat(centres, m, axis=0) + 0.3 * rng.normal(size=(n_classes * m, d)) / np.sqrt(d)
            store.write_text("simple", unit(emb), np.repeat(np.arange(n_classes), m),
                             [f"a photo of class{c} #{j}" for c in range(n_classes) for j in range(m)],
                             provenance={**CLIP_PROVENANCE, "model": text_model})
    return out
