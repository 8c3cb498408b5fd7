"""Accuracy against shots on real features: clipcache's training-free methods beside a trained probe.

Run: ``python benchmarks/accuracy_vs_shots.py [--cache DIR] [--docs docs/benchmarks.md]``.

The script extracts its own real features first (once; the stores are cached in
``--cache``, by default under the system temporary folder, never in the
repository): EfficientNet-lite0 (ImageNet weights, 224 px, L2-normalised) on
CIFAR-10 (``../shared/data/cifar10-jpg.tar.gz``) and Fashion-MNIST
(``../shared/data/fashion-mnist``), with ``clipcache.extract.loop.extract`` as
``clipcache extract`` calls it: per class the first ``--train`` training images
(the support pool, also the unlabelled pool of the centring), the next
``--val`` as the validation split, and the first ``--test`` test images.
Extraction runs under ``nice`` with ``--threads`` torch threads.

Then, for every shot count and seed, on the same support sets:

- clipcache's methods through :func:`clipcache.evaluation.run_evaluation`,
  without centring and with CL2N centring on the train pool's mean, with the
  transductive GDA beside them (its unlabelled rows are the test features);
- the probe: scikit-learn ``LogisticRegression(max_iter=5000)`` with C chosen
  on the same validation split from ``PROBE_CS`` (ties: the smaller C), on the
  raw features, and on the same CL2N features as a second row;
- fit times on the same support set: ``auto`` (SelectByValidation, every
  candidate fitted, calibrated and chosen on validation), ``gda`` (no
  hyper-parameter), ``gda-zs`` (base + alpha GDA, alpha searched on validation),
  and the probe with its C search. Each fit is run ``--repeat`` times per seed
  (the same count for every method and the probe) and timed by the wall clock
  and by the CPU time of the fitting thread (``time.thread_time``: on a shared
  machine the wall clock also counts the time other jobs held the CPU, which
  falls hardest on a millisecond fit that follows the probe's long one); a
  seed's time is the smallest of its repeats (``timeit``'s convention: what
  lies above the minimum is interference from other jobs and cold caches), and
  the tables give the medians over the seeds.

Everything after the extraction runs with the BLAS/OpenMP thread pools limited
to ``--blas-threads`` (threadpoolctl), the same for clipcache and the probe: on
a shared 2-core machine, multi-threaded BLAS on few-shot-sized products spent
most of its time waiting for threads (a 40 x 1280 by 1280 x 40 product took
15-40 ms with 2 threads under load, 3 ms with 1).

Every choice (hyper-parameters, the selected method, the EM strength) is made
on the validation split; the test split is only scored. Tables give top-1 %,
mean ± 95% CI (Student t) over the seeds. ``--docs`` rewrites the section
between the ``accuracy-vs-shots`` markers of that file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from clipcache import FeatureStore
from clipcache.evaluation import mean_ci, run_evaluation, sample_few_shot
from clipcache.evaluation.options import TRANSDUCTIVE_METHOD, ProtocolOptions
from clipcache.evaluation.protocol import build_estimator, fit_method, pool_mean, resolve_protocol
from clipcache.ops import l2_normalize

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
METHODS = ["ncm", "gda", "gda-zs", "tip", "knn", "auto"]
PROBE_CS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
BEGIN, END = "<!-- accuracy-vs-shots:begin -->", "<!-- accuracy-vs-shots:end -->"


# --------------------------------------------------------------------------- extraction


def _cifar_source(cache: Path, train: int, val: int, test: int, data: Path = DATA) -> Path:
    """Unpack the first images of each class (by file number) from the shared tarball into ``cache``."""
    marker = cache / f"cifar10-jpg-{train + val}-{test}.done"
    if not marker.exists():
        wanted = {f"cifar10-jpg/{split}/{c}/{i:04d}.jpg" for c in CIFAR
                  for split, n in (("train", train + val), ("test", test)) for i in range(n)}
        with tarfile.open(data / "cifar10-jpg.tar.gz") as tar:
            tar.extractall(cache, members=[m for m in tar if m.name in wanted], filter="data")
        marker.touch()
    return cache / "cifar10-jpg"


def extract_stores(cache: Path, train: int, val: int, test: int, threads: int, data: Path = DATA) -> dict[str, Path]:
    """The two stores, extracted into ``cache`` unless they are there already."""
    import torch

    from clipcache.extract.loop import ExtractConfig, RunOptions, extract

    cache.mkdir(parents=True, exist_ok=True)
    sources = {"cifar10": lambda: (_cifar_source(cache, train, val, test, data), CIFAR),
               "fashion-mnist": lambda: (data / "fashion-mnist", FASHION)}
    stores = {}
    for name, source in sources.items():
        path = cache / f"{name}-lite0-{train}-{val}-{test}.h5"
        stores[name] = path
        if path.exists():
            continue
        torch.set_num_threads(threads)
        root, classes = source()
        config = ExtractConfig(source=str(root), aux=("efficientnet-lite0",), classes=classes,
                               max_per_class={"train": train, "test": test}, val_per_class=val, batch_size=32)
        partial = path.with_suffix(".part.h5")
        report = extract(partial, config, RunOptions(workers=0, progress=False), overwrite=True)
        os.replace(partial, path)
        print(f"extracted {name}: {report.rows} at {report.images_per_second:.1f} img/s", flush=True)
    return stores


# --------------------------------------------------------------------------- the probe


def probe(X, y, Xv, yv):
    """LogisticRegression with C chosen on validation (the smaller C on ties); returns the fitted model."""
    best = None
    for c in PROBE_CS:
        model = LogisticRegression(C=c, max_iter=5000).fit(X, y)
        score = model.score(Xv, yv)
        if best is None or score > best[0]:
            best = (score, model)
    return best[1]


def _timed(times: dict, name: str, k: int, fit, repeat: int):
    """``fit()`` run ``repeat`` times; records the smallest wall-clock and thread CPU seconds under ``times[clock][name][k]``."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        out = fit()
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    times["cpu"][name].setdefault(k, []).append(min(cpus))
    times["wall"][name].setdefault(k, []).append(min(walls))
    return out


def run_probes(path: Path, shots, seeds, repeat: int = 1) -> tuple[dict, dict, dict]:
    """Probe top-1 (raw and CL2N features) and fit times (wall clock and CPU) of the probe and of ``auto``."""
    out = {"probe": {}, "probe (CL2N pool)": {}}
    times = {clock: {"probe": {}, "auto": {}, "gda": {}, "gda-zs": {}} for clock in ("wall", "cpu")}
    with FeatureStore(path) as store:
        name = next(iter(store.feature_sets))
        protocol = resolve_protocol(store, ["auto"], ProtocolOptions(feature_set=name, center="pool"))
        mean = pool_mean(store, protocol)
        X, y = store.to_numpy("train", name)
        Xv, yv = store.to_numpy("val", name)
        Xt, yt = store.to_numpy("test", name)
        n_classes = len(store.classes)

        def cl2n(a):
            return l2_normalize(a - mean)

        for k in shots:
            for seed in seeds:
                rows = sample_few_shot(y, k, seed, n_classes).rows
                model = _timed(times, "probe", k, lambda r=rows: probe(X[r], y[r], Xv, yv), repeat)
                out["probe"].setdefault(k, []).append(model.score(Xt, yt))
                model = probe(cl2n(X[rows]), y[rows], cl2n(Xv), yv)
                out["probe (CL2N pool)"].setdefault(k, []).append(model.score(cl2n(Xt), yt))
                for method in ("auto", "gda", "gda-zs"):
                    _timed(times, method, k, lambda m=method, r=rows: fit_method(
                        build_estimator(m, protocol, store, center=mean), m, X[r], y[r], Xv, yv), repeat)
    return out, times, {"n_test": int(len(yt)), "n_val": int(len(yv)), "n_pool": int(len(y))}


# --------------------------------------------------------------------------- tables


def _cell(values) -> str:
    m, ci = mean_ci(values)
    return f"{100 * m:.2f} ± {100 * ci:.2f}"


def accuracy_table(rows: dict, shots) -> str:
    """A markdown table: one row per method, one column per shot count."""
    lines = ["| method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for name, by in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(by[k]) if k in by else "n/a" for k in shots) + " |")
    return "\n".join(lines)


def _ratio(times: dict, clock: str, method: str, k: int) -> float:
    """Median probe fit time over the median fit time of ``method`` (medians over the seeds)."""
    return float(np.median(times[clock]["probe"][k]) / np.median(times[clock][method][k]))


def goals_table(results: dict, shots) -> str:
    """The goals, per data set and shot: auto - probe, transductive - gda (points), fit-time ratios."""
    lines = ["| data set | shots | auto − probe (points) | transductive − gda (points) "
             "| probe fit / auto fit, wall (CPU) | probe / gda, wall (CPU) | probe / gda-zs, wall (CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        rows, times = res["rows"], res["times"]
        for k in shots:
            gain = 100 * (np.mean(rows["auto (CL2N pool)"][k]) - np.mean(rows["probe"][k]))
            trans = 100 * (np.mean(rows["transductive-gda (CL2N pool)"][k]) - np.mean(rows["gda (CL2N pool)"][k]))
            ratios = [f"{_ratio(times, 'wall', m, k):.0f}× ({_ratio(times, 'cpu', m, k):.0f}×)"
                      for m in ("auto", "gda", "gda-zs")]
            lines.append(f"| {name} | {k} | {gain:+.2f} | {trans:+.2f} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load:.1f} at the end of the run")


def evaluate_store(path: Path, shots, seeds, repeat: int = 1) -> dict:
    """Every row of the accuracy table of one store, and the fit times."""
    with FeatureStore(path) as store:
        name = next(iter(store.feature_sets))
    plain = run_evaluation(path, METHODS, shots, seeds, feature_set=name)
    centred = run_evaluation(path, METHODS, shots, seeds, feature_set=name, center="pool", transductive=True)
    rows: dict = {}
    for report, suffix in ((plain, ""), (centred, " (CL2N pool)")):
        for run in report.runs:
            rows.setdefault(run["method"] + suffix, {}).setdefault(run["shots"], []).append(run["top1"])
    probes, times, sizes = run_probes(path, shots, seeds, repeat)
    rows.update(probes)
    selected = {}
    for run in centred.runs:
        if run["method"] == "auto":
            selected.setdefault(run["shots"], []).append(run["hyperparameters"]["selected"])
    strengths = {}
    for run in centred.runs:
        if run["method"] == TRANSDUCTIVE_METHOD:
            strengths.setdefault(run["shots"], []).append(run["hyperparameters"]["strength"])
    ece = {m: {k: v for k, v in by.items()} for m, by in centred.summary("ece").items()}
    ece_cal = {m: {k: v for k, v in by.items()} for m, by in centred.summary("ece_calibrated").items()}
    return {"rows": rows, "times": times, "sizes": sizes, "selected": selected, "strengths": strengths,
            "ece": ece, "ece_calibrated": ece_cal, "runs": plain.runs + centred.runs}


def render(results: dict, shots, seeds, extraction: str) -> str:
    parts = [f"Machine: {_machine()}. {extraction}", ""]
    for name, res in results.items():
        s = res["sizes"]
        parts += [f"**{name}** (train pool {s['n_pool']}, validation {s['n_val']}, test {s['n_test']} images; "
                  f"top-1 %, mean ± 95% CI over {len(seeds)} seeds)", "", accuracy_table(res["rows"], shots), ""]
        picks = "; ".join(f"{k}-shot: " + ", ".join(f"{n}×{v.count(n)}" for n in sorted(set(v)))
                          for k, v in sorted(res["selected"].items()))
        parts += [f"`auto (CL2N pool)` chose: {picks}.", ""]
        strengths = "; ".join(f"{k}-shot: {v}" for k, v in sorted(res["strengths"].items()))
        parts += [f"`transductive-gda` strengths chosen on validation: {strengths}.", ""]
        ece_rows = [f"| {m} | " + " | ".join(f"{res['ece'][m][k][0]:.3f} → {res['ece_calibrated'][m][k][0]:.3f}"
                                           for k in shots) + " |" for m in ("gda", "auto", TRANSDUCTIVE_METHOD)]
        parts += ["ECE before → after temperature scaling on validation (CL2N pool, mean over seeds):", "",
                  "| method | " + " | ".join(f"{k}-shot" for k in shots) + " |", "|---|" + "---|" * len(shots),
                  *ece_rows, ""]
        for clock, what in (("wall", "wall clock"), ("cpu", "CPU time of the fitting thread")):
            t = res["times"][clock]
            parts += [f"Fit time including the validation search, {what}, the fastest run of each seed, median over the seeds (ms): " + "; ".join(
                f"{k}-shot auto {1e3 * np.median(t['auto'][k]):.2f}, gda {1e3 * np.median(t['gda'][k]):.2f}, "
                f"gda-zs {1e3 * np.median(t['gda-zs'][k]):.2f}, probe {1e3 * np.median(t['probe'][k]):.1f}"
                for k in shots) + ".", ""]
    parts += ["Goals, per data set and shot count (means over seeds):", "", goals_table(results, shots)]
    return "\n".join(parts)


def write_docs(path: Path, text: str) -> None:
    doc = path.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} section to replace")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipcache-accuracy-vs-shots",
                        help="Folder of the extracted stores (created; never inside the repository).")
    parser.add_argument("--data", type=Path, default=DATA, help="The shared data folder (../shared/data).")
    parser.add_argument("--train", type=int, default=100, help="Training images per class (support and pool).")
    parser.add_argument("--val", type=int, default=4, help="Validation images per class, carved from train.")
    parser.add_argument("--test", type=int, default=150, help="Test images per class.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the extraction.")
    parser.add_argument("--nice", type=int, default=10, help="Niceness added before extracting.")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS/OpenMP threads of the evaluation.")
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--seeds", default=",".join(str(s) for s in range(1, 21)),
                        help="comma-separated seeds (default 1 to 20: with 5, a few-shot mean moves by several points)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="Timed runs of each fit per seed (every method and the probe); the fastest counts.")
    parser.add_argument("--out", type=Path, help="Also write every run as JSON into this folder.")
    parser.add_argument("--docs", type=Path, help="Rewrite the accuracy-vs-shots section of this markdown file.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if Path(args.cache).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        raise SystemExit("--cache must lie outside the repository")
    shots = [int(v) for v in args.shots.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    if args.nice:
        os.nice(args.nice)
    stores = extract_stores(args.cache, args.train, args.val, args.test, args.threads, args.data)
    with threadpool_limits(args.blas_threads):
        results = {name: evaluate_store(path, shots, seeds, args.repeat) for name, path in stores.items()}
    extraction = (f"Stores: EfficientNet-lite0 features extracted by this script ({args.train} train, "
                  f"{args.val} validation and {args.test} test images per class). BLAS threads: "
                  f"{args.blas_threads} for every method and the probe. Fit times: the fastest of {args.repeat} "
                  "runs per seed, median over the seeds.")
    text = render(results, shots, seeds, extraction)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, res in results.items():
            (args.out / f"{name}.json").write_text(json.dumps(res["runs"], indent=1) + "\n")
    if args.docs:
        write_docs(args.docs, text)
        print(f"wrote {args.docs}", file=sys.stderr)


if __name__ == "__main__":
    main()
