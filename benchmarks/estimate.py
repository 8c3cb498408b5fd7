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
4. fits three project classifiers (``GDAClassifier()``, its Ledoit-Wolf variant,
   ``ClassMeanClassifier()``) on the 1000 clean train features, keeps the one with the best
   clean validation accuracy (no shifted set is looked at), and estimates its accuracy on the
   clean test set and on each shifted set with every method of
   :func:`clipcache.estimate.estimate_accuracy` (validation: the clean val split). MaNo is
   also given with one normalisation branch for every set, chosen by its criterion on the
   clean validation logits; a scikit-learn logistic-regression probe is a diagnostic only;
5. writes validation proxy shifts (:data:`PROXY_OPS`: the AugMix operations, disjoint from the
   corruptions, at levels 3, 6, 9) of the first ``--per-class`` val images of each class of the
   full-size split of ``benchmarks/ood.py`` (training images 4500 on, never fitted here), extracts
   them at the same size, and chooses MaNo's variant (:data:`MANO_VARIANTS`: calibration, row
   centring, branch, p) by its R² on these 24 labelled sets (the clean val split and the 23
   shifts). That variant's R² on the corrupted test sets is the goal's verdict; no corrupted
   test image or label takes part in a choice.

The table gives, over the 71 sets, R² (the squared Pearson correlation, i.e. the R² of a
linear fit of true accuracy on the estimate, the convention of the MaNo and
nuclear-norm papers), R² of the estimate taken as is (1 - SSE / SST), Spearman ρ and
the mean absolute error. Goal: MaNo R² >= 0.9 (the variant chosen on the proxy shifts).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ood import FEATURE_SET, FULL_VAL_PER_CLASS, cifar_folder, extract_store, load, machine, start  # noqa: E402

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


#: Validation shifts: the AugMix operations (Hendrycks et al., ICLR 2020, google-research/augmix
#: ``augmentations.py``), chosen by their authors to be disjoint from the CIFAR-10-C corruptions, with
#: AugMix's parameterisation at levels 3, 6 and 9 of 10 (autocontrast and equalize have no level).
#: They are applied to clean *validation* images; their labels decide the estimation benchmark's
#: choices, so that no corrupted test image, nor its label, takes part in a choice.
PROXY_OPS = ("autocontrast", "equalize", "posterize", "solarize", "rotate", "shear_x", "shear_y", "translate_x",
             "translate_y")
PROXY_LEVELS = (3, 6, 9)


def _augmix_op(image, op: str, level: int, rng: np.random.Generator):
    """One AugMix operation on a PIL image at ``level`` (0-10), random signs drawn from ``rng``."""
    from PIL import Image, ImageOps

    size = image.size[0]
    sign = 1 if rng.random() < 0.5 else -1
    if op == "autocontrast":
        return ImageOps.autocontrast(image)
    if op == "equalize":
        return ImageOps.equalize(image)
    if op == "posterize":
        return ImageOps.posterize(image, 4 - int(level * 4 / 10))
    if op == "solarize":
        return ImageOps.solarize(image, 256 - int(level * 256 / 10))
    if op == "rotate":
        return image.rotate(sign * int(level * 30 / 10), resample=Image.BILINEAR)
    if op.startswith("shear"):
        shear = sign * level * 0.3 / 10
        matrix = (1, shear, 0, 0, 1, 0) if op == "shear_x" else (1, 0, 0, shear, 1, 0)
        return image.transform(image.size, Image.AFFINE, matrix, resample=Image.BILINEAR)
    shift = sign * int(level * (size / 3) / 10)
    matrix = (1, 0, shift, 0, 1, 0) if op == "translate_x" else (1, 0, 0, 0, 1, shift)
    return image.transform(image.size, Image.AFFINE, matrix, resample=Image.BILINEAR)


def proxy_shifts(cifar: Path, cache: Path, per_class: int) -> Path:
    """Write (once) the validation shifts of the first ``per_class`` full-size val images of each class.

    The images are the first of the val split of ``benchmarks/ood.py``'s full-size stores (the last 500
    training images of each class); one folder ``val-<op>-<level>`` per operation and level, PNG, and
    an ``images.csv`` manifest. Seeded per image (:func:`clipcache.corrupt.image_rng`, seed 0).
    """
    from PIL import Image

    from clipcache.corrupt import image_rng

    out = cache / f"cifar10-val-shifts-{per_class}"
    manifest = out / "images.csv"
    if manifest.exists():
        return out
    rows = []
    for class_dir in sorted(p for p in (cifar / "train").iterdir() if p.is_dir()):
        images = sorted(class_dir.iterdir())[-FULL_VAL_PER_CLASS:][:per_class]
        for op in PROXY_OPS:
            for level in (PROXY_LEVELS if op not in ("autocontrast", "equalize") else (0,)):
                split = f"val-{op}-{level}"
                (out / split / class_dir.name).mkdir(parents=True, exist_ok=True)
                for path in images:
                    rng = image_rng(0, op, level, f"{class_dir.name}/{path.name}")
                    name = f"{split}/{class_dir.name}/{path.stem}.png"
                    with Image.open(path) as image:
                        _augmix_op(image.convert("RGB"), op, level, rng).save(out / name)
                    rows.append(f"{name},{class_dir.name},{split}")
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return out


#: MaNo's variants searched on the validation proxy shifts: (calibrate, centre, branch, p). Branch "per set" is the
#: paper's criterion (softmax where Phi > 5, per set); "softmax" and "taylor" fix one normalisation for every set
#: (``mano_score(threshold=-inf | inf)``); p is the entry-wise norm order (4 in the paper; 2 and 8 its ablation's
#: range). "centre" subtracts each row's mean logit first: softmax and Phi do not change, the Taylor expansion
#: ``1 + z + z^2/2`` (made for logits near 0) does (GDA's logits carry a large per-row offset, docs/shift.md).
MANO_VARIANTS = [
    (calibrate, centre, branch, p)
    for calibrate in (True, False) for centre in (False, True) for branch in ("per set", "softmax", "taylor")
    for p in (2, 4, 8)
    if not (centre and branch == "softmax")
]
_BRANCH_THRESHOLD = {"per set": 5.0, "softmax": -np.inf, "taylor": np.inf}


def mano_label(calibrate: bool, centre: bool, branch: str, p: int) -> str:
    return (f"mano ({'calibrated' if calibrate else 'uncalibrated'}, {'row-centred logits, ' if centre else ''}"
            f"branch {branch}, p={p})")


def mano_variant(clf, sets, calibrate: bool, centre: bool, branch: str, p: int, temperature: float) -> np.ndarray:
    """One MaNo variant's score on each set of ``sets`` ([(name, X, y)])."""
    from clipcache.estimate import mano_score

    t = temperature if calibrate else 1.0
    scores = []
    for _, Xs, _ in sets:
        z = np.asarray(clf.logits(Xs), dtype=np.float64) / t
        if centre:
            z = z - z.mean(axis=1, keepdims=True)
        scores.append(mano_score(z, norm_order=p, threshold=_BRANCH_THRESHOLD[branch]))
    return np.array(scores)


def choose_mano(clf, proxy_sets, temperature: float) -> tuple[tuple, dict]:
    """The MANO_VARIANTS entry with the best R² (linear fit) on the validation proxy sets: (variant, {variant: R²})."""
    from clipcache.estimate import r2_linear_fit

    truth = np.array([np.mean(clf.predict(Xs) == ys) for _, Xs, ys in proxy_sets])
    table = {v: r2_linear_fit(mano_variant(clf, proxy_sets, *v, temperature), truth) for v in MANO_VARIANTS}
    return max(table, key=lambda v: table[v]), table


def r2_fit(estimate: np.ndarray, truth: np.ndarray) -> float:
    from clipcache.estimate import r2_linear_fit

    return r2_linear_fit(estimate, truth)


def candidates():
    """Candidate classifiers (project estimators); the one with the best clean validation accuracy is evaluated."""
    from clipcache.classifiers import ClassMeanClassifier, GDAClassifier

    return {
        "GDAClassifier()": GDAClassifier(),
        "GDAClassifier(precision='ledoit-wolf')": GDAClassifier(precision="ledoit-wolf"),
        "ClassMeanClassifier()": ClassMeanClassifier(),
    }


def store_sets(path: Path) -> list:
    """Every split of the store at ``path`` as [(split, X, y)]."""
    with FeatureStore(path) as store:
        return [(split, *store.to_numpy(split, FEATURE_SET)) for split in store.splits]


def load_sets(clean: Path, shifted: Path) -> list:
    return [("test (clean)", *load(clean, "test")), *store_sets(shifted)]


def choose_classifier(X, y, Xv, yv) -> tuple[str, object]:
    """The candidate with the best accuracy on the clean validation split (never a shifted set)."""
    scores = {}
    for name, clf in candidates().items():
        clf.fit(X, y)
        scores[name] = (float(np.mean(clf.predict(Xv) == yv)), clf)
    for name, (acc, _) in scores.items():
        print(f"clean validation accuracy of {name}: {acc:.4f}")
    name = max(scores, key=lambda n: scores[n][0])
    return name, scores[name][1]


def mano_rows(clf, sets, Xv, yv, temperature: float) -> dict:
    """MaNo with its branch taken per set (the paper) and fixed for every set by the validation criterion."""
    from clipcache.estimate import mano_score, softrun

    phi_val = softrun(clf.logits(Xv) / temperature)[1]
    branch = "softmax" if phi_val > 5.0 else "Taylor"
    fixed = -np.inf if branch == "softmax" else np.inf  # mano_score: softmax where Phi > threshold
    print(f"MaNo's criterion Phi on the calibrated clean validation logits: {phi_val:.3f}: {branch} for every set")
    return {f"mano (one branch for all sets from validation Phi: {branch})":
            np.array([mano_score(clf.logits(Xs) / temperature, threshold=fixed) for _, Xs, _ in sets])}


def proxy_sets(clean: Path, proxy: Path) -> list:
    """The validation proxy sets [(name, X, y)]: the clean val split and every AugMix shift of val images."""
    return [("val (clean)", *load(clean, "val")), *store_sets(proxy)]


def evaluate(clean: Path, shifted: Path, proxy: Path) -> tuple[dict, list, dict]:
    """Estimates per method and set: ({method: array}, [(set, true accuracy)], diagnostics)."""
    from clipcache.calibration import fit_temperature
    from clipcache.estimate import METHODS, estimate_accuracy, softrun

    X, y = load(clean, "train")
    Xv, yv = load(clean, "val")
    name, clf = choose_classifier(X, y, Xv, yv)
    sets = load_sets(clean, shifted)
    truth = [(split, float(np.mean(clf.predict(Xs) == ys))) for split, Xs, ys in sets]
    temperature = fit_temperature(clf.logits(Xv), yv)
    criteria = np.array([softrun(clf.logits(Xs) / temperature)[1] for _, Xs, _ in sets])
    print(f"classifier: {name}; temperature on val: {temperature:.3f}; MaNo's criterion Phi on the calibrated logits "
          f"ranges {criteria.min():.2f} to {criteria.max():.2f}: softmax (Phi > 5) on {int(np.sum(criteria > 5))} of "
          f"{len(sets)} sets, Taylor on the others")
    estimates = {
        method: np.array([estimate_accuracy(clf, Xs, method=method, X_val=Xv, y_val=yv) for _, Xs, _ in sets])
        for method in METHODS
    }
    estimates.update(mano_rows(clf, sets, Xv, yv, temperature))
    estimates["mano (uncalibrated)"] = np.array(
        [estimate_accuracy(clf, Xs, method="mano", X_val=Xv, y_val=yv, calibrate=False) for _, Xs, _ in sets]
    )
    proxies = proxy_sets(clean, proxy)
    variant, proxy_table = choose_mano(clf, proxies, temperature)
    chosen = f"mano, chosen on the validation proxy shifts: {mano_label(*variant)[6:-1]}"
    estimates[chosen] = mano_variant(clf, sets, *variant, temperature)
    test_truth = np.array([acc for _, acc in truth])
    from clipcache.estimate import r2_linear_fit

    variants = {v: (r2, r2_linear_fit(mano_variant(clf, sets, *v, temperature), test_truth))
                for v, r2 in proxy_table.items()}
    shares = np.array([np.bincount(clf.predict(Xs), minlength=10).max() / len(Xs) for _, Xs, _ in sets])
    proxy_truth = np.array([np.mean(clf.predict(Xs) == ys) for _, Xs, ys in proxies])
    proxy_estimates = {
        method: np.array([estimate_accuracy(clf, Xs, method=method, X_val=Xv, y_val=yv) for _, Xs, _ in proxies])
        for method in METHODS
    }
    return estimates, truth, {"classifier": name, "shares": shares, "logreg": logistic_probe(X, y, Xv, yv, sets),
                              "chosen": chosen, "variants": variants, "proxy_truth": proxy_truth,
                              "proxy_estimates": proxy_estimates, "proxy_names": [n for n, _, _ in proxies]}


def logistic_probe(X, y, Xv, yv, sets) -> dict:
    """Diagnostic only (not a clipcache estimator): the same estimates on a cross-entropy-trained linear head."""
    from sklearn.linear_model import LogisticRegression

    from clipcache.calibration import fit_temperature
    from clipcache.estimate import average_confidence, mano_score, nuclear_norm_score

    probe = LogisticRegression(C=1.0, max_iter=5000).fit(X, y)
    t = fit_temperature(probe.decision_function(Xv), yv)
    truth = np.array([np.mean(probe.predict(Xs) == ys) for _, Xs, ys in sets])
    z = [probe.decision_function(Xs) / t for _, Xs, _ in sets]
    import scipy.special

    return {
        "truth": truth,
        "ac": np.array([average_confidence(scipy.special.softmax(q, axis=1)) for q in z]),
        "nuclear": np.array([nuclear_norm_score(scipy.special.softmax(q, axis=1)) for q in z]),
        "mano": np.array([mano_score(q) for q in z]),
    }


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


def diagnosis(estimates: dict, truth: list, diag: dict) -> str:
    """R² on the noise corruptions and on the others, and the same estimates on a logistic-regression probe."""
    from clipcache.estimate import r2_linear_fit

    names = [name for name, _ in truth]
    t = np.array([acc for _, acc in truth])
    noise = np.array(["noise" in n for n in names])
    shares = diag["shares"]
    lines = ["| method | R² all sets | R² without the 4 noise corruptions | R² noise corruptions only |",
             "|---|---|---|---|"]
    for method in ("ac", "atc-ne", "nuclear", "mano", *[m for m in estimates if m.startswith("mano (one")]):
        e = estimates[method]
        lines.append(f"| {method} | {r2_linear_fit(e, t):.4f} | {r2_linear_fit(e[~noise], t[~noise]):.4f} | "
                     f"{r2_linear_fit(e[noise], t[noise]):.4f} |")
    probe = diag["logreg"]
    lines.append("")
    lines.append(f"Share of the most predicted class: {shares[0]:.2f} on the clean set, up to {shares.max():.2f} "
                 f"(noise, severity 5); its correlation with the true accuracy over the {len(t)} sets: "
                 f"{np.corrcoef(shares, t)[0, 1]:.3f}.")
    lines.append("Diagnostic probe (scikit-learn LogisticRegression(C=1), cross-entropy, temperature on val): R² "
                 + ", ".join(f"{m} {r2_linear_fit(probe[m], probe['truth']):.4f}" for m in ("ac", "nuclear", "mano")))
    return "\n".join(lines)


def variant_table(diag: dict) -> str:
    """Every MaNo variant's R² on the validation proxy sets (the choice) and on the test sets (not a choice)."""
    lines = ["| MaNo variant | R² on the validation proxy sets (the choice) | R² on the test sets (reported, not a choice) |",
             "|---|---|---|"]
    for v, (proxy, test) in diag["variants"].items():
        lines.append(f"| {mano_label(*v)[6:-1]} | {proxy:.4f} | {test:.4f} |")
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
    proxy = extract_store(args.cache / f"estimate-cifar10-val-shifts-{args.per_class}-{size}.h5",
                          proxy_shifts(cifar, args.cache, args.per_class) / "images.csv", max_per_class=None,
                          image_size=size)
    if args.extract_only:
        return
    estimates, truth, diag = evaluate(clean, shifted, proxy)
    print(f"machine: {machine()}")
    print(f"features: {FEATURE_SET} at {size} px; classifier {diag['classifier']} on {TRAIN_PER_CLASS} clean train images "
          f"per class; validation {VAL_PER_CLASS} per class; {len(truth) - 1} corrupted sets of {10 * args.per_class} "
          f"images + the clean test set ({10 * TEST_PER_CLASS}); true accuracy from {min(a for _, a in truth):.3f} "
          f"to {max(a for _, a in truth):.3f}")
    pt = diag["proxy_truth"]
    print(f"validation proxy sets: {len(pt)} (the clean val split and {len(pt) - 1} AugMix shifts of 10 x {args.per_class} "
          f"val images); their true accuracy {pt.min():.3f} to {pt.max():.3f}")
    print(table(estimates, truth))
    print("On the validation proxy sets (every method as in the table above):")
    print(table(diag["proxy_estimates"], list(zip(diag["proxy_names"], pt, strict=True))))
    print(variant_table(diag))
    print(diagnosis(estimates, truth, diag))
    t = np.array([a for _, a in truth])
    paper, chosen = r2_fit(estimates["mano"], t), r2_fit(estimates[diag["chosen"]], t)
    print(f"- goal MaNo R² >= 0.9: variant chosen on validation ({diag['chosen']}): {chosen:.4f}: "
          f"{'met' if chosen >= 0.9 else 'NOT met'}; the paper's default (calibrated, per set, p=4): {paper:.4f}")


if __name__ == "__main__":
    main()
