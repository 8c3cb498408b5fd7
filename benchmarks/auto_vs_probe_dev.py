"""``auto`` against the trained probe on the development split: the train-pool rows outside each support set.

Run after ``benchmarks/accuracy_vs_shots.py`` has extracted its stores (same ``--cache``)::

    python benchmarks/auto_vs_probe_dev.py [--seeds 20] [--shots 1,2,4,8,16]

The test split of ``accuracy_vs_shots.py`` has 5 seeds by default, and at a few
shots one seed's support set moves top-1 by several points. This scores the same
methods on many more seeds without touching the test split: for every (data set,
shots, seed), the support set is drawn from the train pool exactly as there, the
validation split chooses (``auto``'s candidate, the probe's C), and the score is
top-1 on the pool rows outside the support set (about 1,000 rows). It prints the
mean top-1 of ``auto``, GDA and nearest-class-mean (CL2N pool centring, as
``accuracy_vs_shots.py``'s ``(CL2N pool)`` rows) and of the probe
(``LogisticRegression``, C from ``PROBE_CS`` on validation), and ``auto``'s paired
difference to the probe with its 95% interval (normal, over the seeds).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from accuracy_vs_shots import probe
from threadpoolctl import threadpool_limits

from clipcache import FeatureStore
from clipcache.evaluation import sample_few_shot
from clipcache.evaluation.options import ProtocolOptions
from clipcache.evaluation.protocol import build_estimator, fit_method, pool_mean, resolve_protocol

METHODS = ("auto", "gda", "ncm")


def dev_scores(path: Path, shots, seeds) -> dict:
    """``{shots: {method: [top-1 % per seed]}}`` on the development split of one store."""
    out = {}
    with threadpool_limits(1), FeatureStore(path) as store:
        name = next(iter(store.feature_sets))
        protocol = resolve_protocol(store, ["auto"], ProtocolOptions(feature_set=name, center="pool"))
        mean = pool_mean(store, protocol)
        X, y = store.to_numpy("train", name)
        Xv, yv = store.to_numpy("val", name)
        for k in shots:
            scores: dict[str, list[float]] = {m: [] for m in (*METHODS, "probe")}
            for seed in seeds:
                rows = sample_few_shot(y, k, seed, len(store.classes)).rows
                dev = np.setdiff1d(np.arange(len(y)), rows)
                for method in METHODS:
                    est = fit_method(build_estimator(method, protocol, store, center=mean), method, X[rows], y[rows], Xv, yv)
                    scores[method].append(100 * float((est.predict(X[dev]) == y[dev]).mean()))
                scores["probe"].append(100 * probe(X[rows], y[rows], Xv, yv).score(X[dev], y[dev]))
            out[k] = scores
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipcache-accuracy-vs-shots",
                        help="accuracy_vs_shots.py's --cache, holding its stores")
    parser.add_argument("--seeds", type=int, default=20, help="seeds 1 to N")
    parser.add_argument("--shots", default="1,2,4,8,16")
    args = parser.parse_args(argv)
    shots = [int(k) for k in args.shots.split(",")]
    stores = sorted(args.cache.glob("*-lite0-*.h5"))
    if not stores:
        raise SystemExit(f"{args.cache}: no stores; run benchmarks/accuracy_vs_shots.py first")
    print("| data set | shots | auto | gda | ncm | probe | auto − probe (95% CI) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for path in stores:
        for k, scores in dev_scores(path, shots, range(1, args.seeds + 1)).items():
            a = {m: np.array(v) for m, v in scores.items()}
            d = a["auto"] - a["probe"]
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
            print(f"| {path.name.split('-lite0')[0]} | {k} | {a['auto'].mean():.2f} | {a['gda'].mean():.2f} | "
                  f"{a['ncm'].mean():.2f} | {a['probe'].mean():.2f} | {d.mean():+.2f} ± {half:.2f} |", flush=True)


if __name__ == "__main__":
    main()
