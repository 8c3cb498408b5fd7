"""OOD detection on real features: every ``clipcache.ood`` method, far and near, side by side.

Run::

    nice -n 10 python benchmarks/ood.py [--cache DIR] [--image-size N]

Features: EfficientNet-lite0 (the ``efficientnet-lite0`` auxiliary backbone, ImageNet
weights, L2-normalised features, 1280 dims) of real images, extracted by this script
with the library (``clipcache.extract.extract``, one torch thread) into ``--cache``
(default: ``clipcache-shift-bench`` under the system temp folder), and reused by later
runs. Sizes: CIFAR-10 ``train`` 100 images per class, ``val`` the next 10 per class,
``test`` 100 per class; Fashion-MNIST ``test`` 100 per class.

* far: fit on CIFAR-10 train (10 classes), in = CIFAR-10 test, out = Fashion-MNIST test;
* near: fit on CIFAR-10 train classes 0-5, in = test classes 0-5, out = test classes 6-9.

The logit methods (msp, maxlogit, energy, gen) and vim, fdbd and nnguide score the default
``GDAClassifier()`` fitted on the same train features; "calibrated" is its logits divided by the
temperature fitted on the val split. The baseline of the goals is calibrated MSP of that default.

Validation (temperature of the logit methods, threshold of ``predict``) is the ``val``
split (of the fitted classes). Each cell is AUROC / AUPR-in / FPR@95 (OpenOOD v1.5
convention, see docs/ood.md).

The goals: the best feature-based detector beats calibrated MSP by 0.2 AUROC (far) and 0.08
(near); moonshot far AUROC >= 0.995 at FPR@95 <= 0.03. "Best" is decided on validation
data only: for each setting, every candidate of ``GRID`` (feature-based detectors, their
hyper-parameters, with and without ``center``) is scored on a leave-one-class-out proxy built
from the train and val images of the fitted classes (:func:`proxy_folds`); the candidate with
the best mean proxy AUROC is refitted on the whole train split and its test AUROC is the
verdict. The OOD test images are never used for a choice.

``--full`` runs the larger setting of the goals' verdicts (docs/benchmarks.md): at 224 px, fit on
900 CIFAR-10 train images per class (``cifar10-full-train-0``, the first fifth of the training set
less val), val the last 500 training images per class, in = the whole CIFAR-10 test set (10,000),
far OOD = the same Fashion-MNIST test images; the search uses ``FULL_GRID`` and
``FULL_PROXY_FIT_PER_CLASS`` fitted rows per class in each proxy fold. Near is searched first.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from clipcache import FeatureStore
from clipcache.classifiers import ClassMeanClassifier

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FEATURE_SET = "efficientnet-lite0"
PER_CLASS = {"train": 100, "val": 10, "test": 100}

#: (label, OODDetector options). The logit methods score GDAClassifier() logits (the default) unless
#: the label names the cosine class means (ClassMeanClassifier(), logit scale 100).
ROWS = [
    ("msp (raw GDA logits)", {"method": "msp", "temperature": 1.0}),
    ("msp (calibrated)", {"method": "msp"}),
    ("msp (cosine class means, calibrated)", {"method": "msp", "classifier": ClassMeanClassifier()}),
    ("maxlogit", {"method": "maxlogit"}),
    ("energy (calibrated)", {"method": "energy"}),
    ("gen (calibrated)", {"method": "gen"}),
    ("mahalanobis", {"method": "mahalanobis"}),
    ("mahalanobis (ridge 0: plain pinv)", {"method": "mahalanobis", "ridge": 0.0}),
    ("rmds", {"method": "rmds"}),
    ("rmds (ridge 0: plain pinv)", {"method": "rmds", "ridge": 0.0}),
    ("rmds (ridge 10)", {"method": "rmds", "ridge": 10.0}),
    ("rmds (center)", {"method": "rmds", "center": True}),
    ("mahalanobis++", {"method": "mahalanobis++"}),
    ("mahalanobis (center)", {"method": "mahalanobis", "center": True}),
    ("vim (D=512, default)", {"method": "vim"}),
    ("vim (D=256)", {"method": "vim", "dim": 256}),
    ("vim (D=256, center)", {"method": "vim", "dim": 256, "center": True}),
    ("knn (default k = knn_default_k(n))", {"method": "knn"}),
    ("knn (k=10)", {"method": "knn", "k": 10}),
    ("knn (k=50, OpenOOD)", {"method": "knn", "k": 50}),
    ("fdbd", {"method": "fdbd"}),
    ("nnguide", {"method": "nnguide"}),
]
LOGIT_METHODS = {"msp", "maxlogit", "energy", "gen", "mcm"}


def default_cache() -> Path:
    return Path(tempfile.gettempdir()) / "clipcache-shift-bench"


def cifar_folder(cache: Path) -> Path:
    """Unpack the CIFAR-10 JPEG tarball once into ``cache``; return its root (``train/``, ``test/``)."""
    root = cache / "cifar10-jpg"
    marker = cache / "cifar10-jpg.done"
    if not marker.exists():
        tarball = DATA / "cifar10-jpg.tar.gz"
        if not tarball.is_file():
            sys.exit(f"{tarball} not found: the benchmark needs ../shared/data beside the checkout")
        with tarfile.open(tarball) as tar:
            members = [m for m in tar if m.name.startswith(("cifar10-jpg/train/", "cifar10-jpg/test/"))]
            tar.extractall(cache, members=members, filter="data")
        marker.touch()
    return root


def extract_store(path: Path, source, *, max_per_class, val_per_class: int = 0, image_size: int | None = None,
                  splits=None, batch_size: int = 64) -> Path:
    """Extract (or finish extracting) EfficientNet-lite0 features of ``source`` into ``path``."""
    import torch

    from clipcache.extract.loop import ExtractConfig, RunOptions, extract

    torch.set_num_threads(1)
    config = ExtractConfig(
        source=str(source), aux=(FEATURE_SET,), max_per_class=max_per_class, val_per_class=val_per_class,
        image_size=image_size, splits=tuple(splits) if splits else None, batch_size=batch_size,
    )
    began = time.perf_counter()
    report = extract(path, config, RunOptions(workers=0, device="cpu", progress=False), resume=path.exists())
    if report.encoded:
        print(f"extracted {report.encoded} images into {path} in {time.perf_counter() - began:.0f} s", flush=True)
    return path


#: The full-size CIFAR-10 stores at the backbone's native 224 px: OpenOOD's setting (detectors fitted on the
#: whole training set, scored on the whole test set), with 500 training images per class held out as val.
FULL_TRAIN_CHUNKS = 5
FULL_VAL_PER_CLASS = 500


def full_manifests(cifar: Path, cache: Path) -> dict[str, Path]:
    """CSV manifests of the full-size stores: ``eval`` (val and test) and ``train-0`` ... ``train-4``.

    Per class, in file-name order: val is the last ``FULL_VAL_PER_CLASS`` training images, train the
    others cut into ``FULL_TRAIN_CHUNKS`` equal chunks (one store each, so that an interrupted
    extraction keeps every finished chunk), test every test image.
    """
    rows: dict[str, list[str]] = {"eval": []} | {f"train-{k}": [] for k in range(FULL_TRAIN_CHUNKS)}
    for class_dir in sorted(p for p in (cifar / "train").iterdir() if p.is_dir()):
        images = sorted(class_dir.iterdir())
        train, val = images[:-FULL_VAL_PER_CLASS], images[-FULL_VAL_PER_CLASS:]
        rows["eval"] += [f"{p.relative_to(cache).as_posix()},{class_dir.name},val" for p in val]
        for k, chunk in enumerate(np.array_split(np.array(train, dtype=object), FULL_TRAIN_CHUNKS)):
            rows[f"train-{k}"] += [f"{p.relative_to(cache).as_posix()},{class_dir.name},train" for p in chunk]
    for class_dir in sorted(p for p in (cifar / "test").iterdir() if p.is_dir()):
        rows["eval"] += [f"{p.relative_to(cache).as_posix()},{class_dir.name},test" for p in sorted(class_dir.iterdir())]
    paths = {}
    for name, lines in rows.items():
        path = cache / f"cifar10-full-{name}.csv"
        if not path.exists():
            path.write_text("path,label,split\n" + "\n".join(lines) + "\n")
        paths[name] = path
    return paths


def full_stores(cache: Path, names=None) -> dict[str, Path]:
    """Extract (or finish) the full-size stores named in ``names`` (all by default); {name: store path}."""
    manifests = full_manifests(cifar_folder(cache), cache)
    out = {}
    for name, manifest in manifests.items():
        if names is None or name in names:
            out[name] = extract_store(cache / f"cifar10-full-{name}.h5", manifest, max_per_class=None)
    return out


def start(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parse the arguments shared by the shift benchmarks, lower the priority, make the cache folder."""
    parser.add_argument("--cache", type=Path, default=default_cache(), help="Folder for the images and stores.")
    parser.add_argument("--extract-only", action="store_true", help="Write the images and features, then stop.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if hasattr(os, "nice"):
        os.nice(10)
    args.cache.mkdir(parents=True, exist_ok=True)
    return args


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.platform()}"


def load(store_path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with FeatureStore(store_path) as store:
        return store.to_numpy(split, FEATURE_SET)


def settings(cifar: Path, fmnist: Path) -> dict:
    """The two settings as arrays: {name: (X_fit, y_fit, X_val, y_val, X_in, X_out)}."""
    X, y = load(cifar, "train")
    Xv, yv = load(cifar, "val")
    Xt, yt = load(cifar, "test")
    Xf, _ = load(fmnist, "test")
    near_fit, near_val, near_in = y < 6, yv < 6, yt < 6
    return {
        "far": (X, y, Xv, yv, Xt, Xf),
        "near": (X[near_fit], y[near_fit], Xv[near_val], yv[near_val], Xt[near_in], Xt[~near_in]),
    }


def run(data: dict) -> dict:
    """AUROC, AUPR-in and FPR@95 of every row in every setting: {setting: {label: dict}}."""
    from clipcache.ood import OODDetector, aupr_in, auroc, fpr_at_95_tpr

    results: dict = {}
    for name, (X, y, Xv, yv, Xi, Xo) in data.items():
        results[name] = {}
        for label, options in ROWS:
            began = time.perf_counter()
            det = OODDetector(**options).fit(X, y, X_val=Xv, y_val=yv)
            s_in, s_out = det.score_samples(Xi), det.score_samples(Xo)
            kept = float(np.mean(det.predict(Xi) == 1))
            results[name][label] = {
                "auroc": auroc(s_in, s_out), "aupr_in": aupr_in(s_in, s_out), "fpr95": fpr_at_95_tpr(s_in, s_out),
                "in_kept": kept, "seconds": time.perf_counter() - began,
            }
    return results


def table(results: dict) -> str:
    settings_ = list(results)
    head = "| method | " + " | ".join(f"{s}: AUROC / AUPR-in / FPR@95" for s in settings_) + " | in kept by predict (far) |"
    lines = [head, "|" + "---|" * (len(settings_) + 2)]
    for label, _ in ROWS:
        cells = [f"{results[s][label]['auroc']:.4f} / {results[s][label]['aupr_in']:.4f} / {results[s][label]['fpr95']:.4f}"
                 for s in settings_]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {results[settings_[0]][label]['in_kept']:.3f} |")
    return "\n".join(lines)


#: The candidates of the validation search: feature-based detectors and their hyper-parameters.
GRID = [
    (method, {**options, **({"center": True} if center else {})})
    for center in (False, True)
    for method, options in (
        [("rmds", {"ridge": r}) for r in ("auto", 3.0, 10.0, 30.0)]
        + [("mahalanobis", {"ridge": r}) for r in ("auto", 10.0)]
        + [("knn", {"k": k}) for k in (1, 2, 5, 10)]
        + [("vim", {"dim": d}) for d in (128, 256, 512)]
        + [("fdbd", {}), ("nnguide", {})]
    )
]
PROXY_FIT_PER_CLASS = 80
#: The full setting's search: GRID plus OpenOOD's k = 50 for knn (its default k for 50,000 rows; with 9,000 fitted
#: rows, ``knn_default_k`` gives 9, inside GRID's range), and 400 fitted rows per class in each proxy fold (of 900:
#: as in the small setting, the fitted classes' covariance has full rank, and the CPU time of the search halves).
FULL_GRID = GRID + [("knn", {"k": 50, **({"center": True} if center else {})}) for center in (False, True)]
FULL_PROXY_FIT_PER_CLASS = 400


def label(method: str, options: dict) -> str:
    return method + "".join(f" {k}={v}" for k, v in options.items())


def proxy_folds(X, y, Xv, yv, seed: int = 0, fit_per_class: int = PROXY_FIT_PER_CLASS) -> list:
    """Leave-one-class-out folds built from the train and val splits of the fitted classes only.

    Each class c in turn plays OOD: the detectors are fitted on ``fit_per_class`` train rows of
    every other class (seeded), their threshold and temperature use the val rows of those classes, the
    in-distribution proxy is the remaining train rows of those classes, and the OOD proxy is every
    train and val row of class c. No test image and no OOD test set is read.
    """
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        fit[rng.choice(rows, min(fit_per_class, len(rows) - 1), replace=False)] = True
    folds = []
    for c in np.unique(y):
        other, other_val = y != c, yv != c
        folds.append((X[fit & other], y[fit & other], Xv[other_val], yv[other_val], X[~fit & other],
                      np.vstack([X[y == c], Xv[yv == c]])))
    return folds


def select_on_validation(X, y, Xv, yv, grid=None, fit_per_class: int = PROXY_FIT_PER_CLASS) -> tuple[str, dict, dict]:
    """The ``grid`` candidate with the best mean AUROC on the leave-one-class-out proxy: (method, options, table)."""
    from clipcache.ood import OODDetector, auroc

    folds = proxy_folds(X, y, Xv, yv, fit_per_class=fit_per_class)
    table = {}
    for method, options in grid or GRID:
        aucs = []
        for Xf, yf, Xfv, yfv, Xi, Xo in folds:
            det = OODDetector(method, **options).fit(Xf, yf, X_val=Xfv, y_val=yfv)
            aucs.append(auroc(det.score_samples(Xi), det.score_samples(Xo)))
        table[label(method, options)] = (float(np.mean(aucs)), method, options)
    best = max(table, key=lambda k: table[k][0])
    return table[best][1], table[best][2], table


def selected(data: dict, grid=None, fit_per_class: int = PROXY_FIT_PER_CLASS) -> dict:
    """Per setting: the validation choice, its proxy table, and its test metrics."""
    from clipcache.ood import OODDetector, aupr_in, auroc, fpr_at_95_tpr

    out = {}
    for name, (X, y, Xv, yv, Xi, Xo) in data.items():
        began = time.perf_counter()
        method, options, table = select_on_validation(X, y, Xv, yv, grid, fit_per_class)
        det = OODDetector(method, **options).fit(X, y, X_val=Xv, y_val=yv)
        s_in, s_out = det.score_samples(Xi), det.score_samples(Xo)
        out[name] = {
            "label": label(method, options), "table": table, "seconds": time.perf_counter() - began,
            "folds": len(np.unique(y)), "auroc": auroc(s_in, s_out), "aupr_in": aupr_in(s_in, s_out),
            "fpr95": fpr_at_95_tpr(s_in, s_out), "in_kept": float(np.mean(det.predict(Xi) == 1)),
        }
    return out


def proxy_table(chosen: dict, grid=None) -> str:
    settings_ = list(chosen)
    lines = ["| candidate | " + " | ".join(f"{s}: proxy AUROC ({chosen[s]['folds']} folds)" for s in settings_) + " |",
             "|" + "---|" * (len(settings_) + 1)]
    for method, options in grid or GRID:
        key = label(method, options)
        lines.append(f"| {key} | " + " | ".join(f"{chosen[s]['table'][key][0]:.4f}" for s in settings_) + " |")
    return "\n".join(lines)


def goals(results: dict, chosen: dict) -> str:
    """The verdicts use the detector chosen on validation; the best row of the test table is shown beside it."""
    out = []
    for setting, margin in (("far", 0.2), ("near", 0.08)):
        r = results[setting]
        baseline = r["msp (calibrated)"]["auroc"]
        c = chosen[setting]
        gain = c["auroc"] - baseline
        feature = {k: v for k, v in r.items() if not any(k.startswith(m) for m in LOGIT_METHODS)}
        best = max(feature, key=lambda k: feature[k]["auroc"])
        out.append(f"- {setting}: detector chosen on validation {c['label']}: AUROC {c['auroc']:.4f} / AUPR-in "
                   f"{c['aupr_in']:.4f} / FPR@95 {c['fpr95']:.4f} vs calibrated MSP {baseline:.4f}: {gain:+.4f} "
                   f"(goal +{margin}): {'met' if gain >= margin else 'NOT met'}; for reference, the best row of "
                   f"the table above (chosen on test, not a verdict): {best} {feature[best]['auroc']:.4f}")
    c = chosen["far"]
    moon = c["auroc"] >= 0.995 and c["fpr95"] <= 0.03
    out.append(f"- moonshot (far AUROC >= 0.995 at FPR@95 <= 0.03): {c['label']} {c['auroc']:.4f} at "
               f"{c['fpr95']:.4f}: {'met' if moon else 'NOT met'}")
    return "\n".join(out)


def full_settings(cache: Path) -> dict:
    """The full setting as arrays, near first: {name: (X_fit, y_fit, X_val, y_val, X_in, X_out)}.

    Fit: ``cifar10-full-train-0`` (900 train images per class), val: the 500 held-out train images per
    class, in: the whole CIFAR-10 test set (10,000), far OOD: Fashion-MNIST test (``ood-fmnist.h5``), all at 224 px.
    """
    stores = full_stores(cache, ["eval", "train-0"])
    fmnist = extract_store(cache / "ood-fmnist.h5", DATA / "fashion-mnist", max_per_class={"test": 100}, splits=["test"])
    X, y = load(stores["train-0"], "train")
    Xv, yv = load(stores["eval"], "val")
    Xt, yt = load(stores["eval"], "test")
    Xf, _ = load(fmnist, "test")
    near_fit, near_val, near_in = y < 6, yv < 6, yt < 6
    return {
        "near": (X[near_fit], y[near_fit], Xv[near_val], yv[near_val], Xt[near_in], Xt[~near_in]),
        "far": (X, y, Xv, yv, Xt, Xf),
    }


def main_full(args) -> None:
    """The full setting: the validation choice per setting first (near, then far), then the descriptive table."""
    import json

    data = full_settings(args.cache)
    if args.extract_only:
        return
    print(f"machine: {machine()}")
    print(f"features: {FEATURE_SET} at 224 px; fit 900 train images per class (cifar10-full-train-0), val 500 per class, "
          "test 1,000 per class; Fashion-MNIST test 100 per class", flush=True)
    chosen = {}
    for name in ("near", "far"):
        chosen.update(selected({name: data[name]}, FULL_GRID, FULL_PROXY_FIT_PER_CLASS))
        c = chosen[name]
        print(f"{name}: chosen on validation {c['label']} (proxy search {c['seconds']:.0f} s): AUROC {c['auroc']:.4f} / "
              f"AUPR-in {c['aupr_in']:.4f} / FPR@95 {c['fpr95']:.4f}", flush=True)
    print(proxy_table({s: chosen[s] for s in ("far", "near")}, FULL_GRID), flush=True)
    results = run({s: data[s] for s in ("far", "near")})
    (args.cache / "ood-full-results.json").write_text(json.dumps({"results": results, "chosen": chosen}, default=str))
    print(table(results))
    print(goals(results, chosen))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, help="Input size of EfficientNet-lite0 (its default, 224, otherwise).")
    parser.add_argument("--full", action="store_true",
                        help="The full setting: fit on 900 train images per class, val 500, the whole test set, 224 px.")
    args = start(parser, argv)
    if args.full:
        if args.image_size:
            parser.error("--full uses the backbone's default 224 px; drop --image-size")
        return main_full(args)
    tag = f"-{args.image_size}" if args.image_size else ""
    cifar = extract_store(args.cache / f"ood-cifar10{tag}.h5", cifar_folder(args.cache),
                          max_per_class={"train": PER_CLASS["train"], "test": PER_CLASS["test"]},
                          val_per_class=PER_CLASS["val"], image_size=args.image_size)
    fmnist = extract_store(args.cache / f"ood-fmnist{tag}.h5", DATA / "fashion-mnist", max_per_class={"test": 100},
                           splits=["test"], image_size=args.image_size)
    if args.extract_only:
        return
    data = settings(cifar, fmnist)
    results = run(data)
    chosen = selected(data)
    print(f"machine: {machine()}")
    print(f"features: {FEATURE_SET} at {args.image_size or 224} px; sizes per class {PER_CLASS}; "
          "Fashion-MNIST test 100 per class")
    print(table(results))
    print(proxy_table(chosen))
    print(goals(results, chosen))


if __name__ == "__main__":
    main()
