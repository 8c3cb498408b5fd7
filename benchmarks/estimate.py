"""Label-free accuracy estimation on CIFAR-10-C-style shifts: every method's R², Spearman ρ and MAE.

Run::

    nice -n 10 python benchmarks/estimate.py [--cache DIR] [--image-size 128] [--per-class 25]

What it does, all with the library, into ``--cache`` (default ``clipcache-shift-bench``
under the system temp folder; reused by later runs):

1. unpacks CIFAR-10 (``../shared/data/cifar10-jpg.tar.gz``) and links the first
   ``--per-class`` test images of each class into a source folder;
2. writes their corrupted copies with ``clipcache.corrupt.corrupt_folder``: all 14
   corruptions x severities 1-5, seed 0 (70 shifted sets of ``10 x per-class`` images);
3. extracts EfficientNet-lite0 features (``efficientnet-lite0``, ``--image-size`` px, one
   torch thread) of CIFAR-10 train (100 per class), val (the next 50 per class) and test
   (100 per class), and of every corrupted set (through the ``images.csv`` manifest);
4. fits ``GDAClassifier()`` on the 1000 clean train features, and estimates its accuracy
   on the clean test set and on each shifted set with every method of
   :func:`clipcache.estimate.estimate_accuracy` (validation: the clean val split).

The table gives, over the 71 sets, R² (the squared Pearson correlation, i.e. the R² of a
linear fit of true accuracy on the estimate, the convention of the MaNo and
nuclear-norm papers), R² of the estimate taken as is (1 - SSE / SST), Spearman ρ and
the mean absolute error. Goal: MaNo R² >= 0.9.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ood import FEATURE_SET, cifar_folder, extract_store, load, machine, start  # noqa: E402

from clipcache import FeatureStore  # noqa: E402

VAL_PER_CLASS = 50
TRAIN_PER_CLASS = 100
TEST_PER_CLASS = 100


def test_subset(cifar: Path, cache: Path, per_class: int) -> Path:
    """A folder of links to the first ``per_class`` CIFAR-10 test images of each class."""
    folder = cache / f"cifar10-test-{per_class}"
    if not (folder / ".done").exists():
        for class_dir in sorted(p for p in (cifar / "test").iterdir() if p.is_dir()):
            target = folder / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                link = target / image.name
                if not link.exists():
                    link.symlink_to(image.resolve())
        (folder / ".done").touch()
    return folder


def corrupted(source: Path, cache: Path, per_class: int) -> Path:
    """Write (once) the 14 x 5 corrupted copies of ``source``; return their folder."""
    from clipcache.corrupt import CSV_MANIFEST, corrupt_folder

    out = cache / f"cifar10-c-{per_class}"
    if not (out / CSV_MANIFEST).exists():
        began = time.perf_counter()
        report = corrupt_folder(source, out, seed=0, overwrite=True)
        print(f"wrote {report.written} corrupted images into {out} in {time.perf_counter() - began:.0f} s", flush=True)
    return out


def r2_fit(estimate: np.ndarray, truth: np.ndarray) -> float:
    from clipcache.estimate import r2_linear_fit

    return r2_linear_fit(estimate, truth)


def evaluate(clean: Path, shifted: Path) -> tuple[dict, list]:
    """Estimates per method and set: ({method: array}, [(set, true accuracy)])."""
    from clipcache.calibration import fit_temperature
    from clipcache.classifiers import GDAClassifier
    from clipcache.estimate import METHODS, estimate_accuracy, softrun

    X, y = load(clean, "train")
    Xv, yv = load(clean, "val")
    clf = GDAClassifier().fit(X, y)
    sets = [("test (clean)", *load(clean, "test"))]
    with FeatureStore(shifted) as store:
        for split in store.splits:
            sets.append((split, *store.to_numpy(split, FEATURE_SET)))
    truth = [(name, float(np.mean(clf.predict(Xs) == ys))) for name, Xs, ys in sets]
    temperature = fit_temperature(clf.logits(Xv), yv)
    criteria = np.array([softrun(clf.logits(Xs) / temperature)[1] for _, Xs, _ in sets])
    print(f"GDA temperature on val: {temperature:.3f}; MaNo's criterion Phi on the calibrated logits ranges "
          f"{criteria.min():.2f} to {criteria.max():.2f}: softmax (Phi > 5) on {int(np.sum(criteria > 5))} of "
          f"{len(sets)} sets, Taylor on the others")
    estimates = {
        method: np.array([estimate_accuracy(clf, Xs, method=method, X_val=Xv, y_val=yv) for _, Xs, _ in sets])
        for method in METHODS
    }
    estimates["mano (uncalibrated)"] = np.array(
        [estimate_accuracy(clf, Xs, method="mano", X_val=Xv, y_val=yv, calibrate=False) for _, Xs, _ in sets]
    )
    return estimates, truth


def table(estimates: dict, truth: list) -> str:
    from scipy.stats import spearmanr

    from clipcache.estimate import r2_linear_fit

    t = np.array([acc for _, acc in truth])
    lines = ["| method | R² (linear fit) | R² (estimate as is) | Spearman ρ | MAE |", "|---|---|---|---|---|"]
    for method, est in estimates.items():
        as_is = 1 - np.sum((est - t) ** 2) / np.sum((t - t.mean()) ** 2)
        rho = spearmanr(est, t).statistic
        lines.append(f"| {method} | {r2_linear_fit(est, t):.4f} | {as_is:.4f} | {rho:.4f} | {np.mean(np.abs(est - t)):.4f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128, help="Input size of EfficientNet-lite0 (default 128).")
    parser.add_argument("--per-class", type=int, default=25, help="Test images per class in each corrupted set.")
    args = start(parser, argv)
    cifar = cifar_folder(args.cache)
    shifted_images = corrupted(test_subset(cifar, args.cache, args.per_class), args.cache, args.per_class)
    size = args.image_size
    clean = extract_store(args.cache / f"estimate-cifar10-{size}.h5", cifar,
                          max_per_class={"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS},
                          val_per_class=VAL_PER_CLASS, image_size=size)
    shifted = extract_store(args.cache / f"estimate-cifar10-c-{args.per_class}-{size}.h5",
                            shifted_images / "images.csv", max_per_class=None, image_size=size)
    if args.extract_only:
        return
    estimates, truth = evaluate(clean, shifted)
    print(f"machine: {machine()}")
    print(f"features: {FEATURE_SET} at {size} px; classifier GDAClassifier() on {TRAIN_PER_CLASS} clean train images "
          f"per class; validation {VAL_PER_CLASS} per class; {len(truth) - 1} corrupted sets of {10 * args.per_class} "
          f"images + the clean test set ({10 * TEST_PER_CLASS}); true accuracy from {min(a for _, a in truth):.3f} "
          f"to {max(a for _, a in truth):.3f}")
    print(table(estimates, truth))
    mano = r2_fit(estimates["mano"], np.array([a for _, a in truth]))
    print(f"- goal MaNo R² >= 0.9: {mano:.4f}: {'met' if mano >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
