"""Accuracy against shots for every method on real feature stores, beside scikit-learn peers.

Run: ``python benchmarks/accuracy_vs_shots.py STORE [STORE ...] [--out DIR]``
(the project's tables use EfficientNet-lite0 stores of CIFAR-10 and
Fashion-MNIST with train/val/test splits). Methods that need CLIP text
embeddings (zeroshot; fusion, which also needs a second backbone) are reported
as n/a on stores without them; ``gda-zs`` and ``tip`` then use the nearest
class mean as their base logits. The peers, on the same support sets, are
scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``
and ``LogisticRegression`` (C chosen on the same validation split).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression

from clipcache import FeatureStore
from clipcache.evaluation import (
    format_table,
    mean_ci,
    plot_accuracy,
    run_evaluation,
    sample_few_shot,
)

METHODS = ["ncm", "gda", "gda-zs", "tip", "knn"]


def peers(store_path, feature_set, shots, seeds):
    """Top-1 of the scikit-learn peers: {name: {shots: [per-seed accuracies]}}."""
    with FeatureStore(store_path) as s:
        name = feature_set or next(iter(s.feature_sets))
        X, y = s.to_numpy("train", name)
        Xv, yv = s.to_numpy("val", name)
        Xt, yt = s.to_numpy("test", name)
        n_classes = len(s.classes)
    out = {"sklearn-lda-auto": {}, "sklearn-logreg": {}}
    for k in shots:
        for seed in seeds:
            rows = sample_few_shot(y, k, seed, n_classes).rows
            if k > 1:
                lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(X[rows], y[rows])
                out["sklearn-lda-auto"].setdefault(k, []).append(lda.score(Xt, yt))
            best = max(
                (LogisticRegression(C=c, max_iter=2000).fit(X[rows], y[rows]) for c in (0.1, 1.0, 10.0, 100.0)),
                key=lambda m: m.score(Xv, yv),
            )
            out["sklearn-logreg"].setdefault(k, []).append(best.score(Xt, yt))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--feature-set")
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--out", default="/tmp/clipcache-bench", help="Folder for JSON and PNG results.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    shots = [int(v) for v in args.shots.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for store in args.stores:
        stem = Path(store).stem
        report = run_evaluation(store, METHODS, shots, seeds, feature_set=args.feature_set, base="ncm")
        report.write_json(out / f"{stem}.json")
        plot_accuracy(report, out / f"{stem}.png")
        print(f"\n## {stem}: {report.config['feature_set']}, test {report.config['n_test']} rows, "
              f"validation {report.config['val']['split']!r} ({report.config['val']['n']} rows), "
              f"top-1 %, mean ± 95% CI over {len(seeds)} seeds")
        print(format_table(report, "top1"))
        for name, by in peers(store, args.feature_set, shots, seeds).items():
            cells = [f"{100 * mean_ci(by[k])[0]:.2f} ± {100 * mean_ci(by[k])[1]:.2f}" if k in by else "n/a"
                     for k in shots]
            print(f"{name}  " + "  ".join(cells))
        print("zeroshot, fusion: n/a (no CLIP text embeddings, one backbone)")


if __name__ == "__main__":
    main()
