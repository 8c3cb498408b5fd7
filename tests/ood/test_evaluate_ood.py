"""``run_evaluation(..., ood_splits=...)`` and ``clipcache evaluate --ood``: detectors on the same support sets."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.classify import evaluate_command
from clipcache.cli.main import cli
from clipcache.errors import InvalidParameterError
from clipcache.evaluation import run_evaluation
from clipcache.evaluation.metrics import mean_ci
from clipcache.ood import DEFAULT_METHODS, OODDetector, aupr_in, auroc, fpr_at_95_tpr

D, C = 12, 3


def _rows(rng, n, centre_of):
    y = np.arange(n) % C
    x = np.stack([centre_of(c) for c in y]) + rng.normal(scale=0.3, size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


@pytest.fixture
def store(tmp_path):
    """Classes along the first three axes; the OOD split 'far' along axis 8."""
    rng = np.random.default_rng(0)
    path = tmp_path / "store.h5"
    with FeatureStore(path, "w") as s:
        s.set_classes([f"class{i}" for i in range(C)])
        s.add_feature_set("clip", D, provenance={"backbone": "open_clip", "model": "tiny", "pretrained": "none"})
        for split, n, far in (("train", 60, False), ("val", 15, False), ("test", 30, False), ("far", 20, True)):
            x, y = _rows(rng, n, (lambda c: 3 * np.eye(D)[8]) if far else (lambda c: 3 * np.eye(D)[c]))
            if far:
                y = np.full(n, -1)
            s.create_split(split, ["clip"])
            s.append(split, ids=[f"{split}{i}" for i in range(n)], paths=["p"] * n, labels=y, features={"clip": x})
            s.mark_complete(split)
    return path


def test_detectors_are_fitted_on_each_support_set_with_the_protocol_validation(store):
    report = run_evaluation(store, ["ncm"], [2, 4], [1, 2], ood_splits=["far"], ood_methods=["knn", "mahalanobis"])
    ood = report.ood
    assert ood["config"]["detectors"] == ["knn", "mahalanobis"] and ood["config"]["out_splits"] == ["far"]
    assert ood["config"]["n_in"] == 30 and ood["config"]["n_out"] == {"far": 20}
    assert [(r["detector"], r["shots"], r["seed"]) for r in ood["runs"]] == [
        (d, k, s) for k in (2, 4) for s in (1, 2) for d in ("knn", "mahalanobis")
    ]
    with FeatureStore(store) as s:
        ids = list(s.ids("train"))
        X, y = s.to_numpy("train", "clip")
        Xv, yv = s.to_numpy("val", "clip")
        Xi, _ = s.to_numpy("test", "clip")
        Xo, _ = s.to_numpy("far", "clip")
    for run in ood["runs"]:
        support = next(sup for sup in report.supports if (sup["shots"], sup["seed"]) == (run["shots"], run["seed"]))
        rows = np.array([ids.index(i) for i in support["ids"]])
        det = OODDetector(run["detector"]).fit(X[rows], y[rows], X_val=Xv, y_val=yv)
        s_in, s_out = det.score_samples(Xi), det.score_samples(Xo)
        assert run["auroc"] == pytest.approx(auroc(s_in, s_out), abs=1e-12)
        assert run["aupr_in"] == pytest.approx(aupr_in(s_in, s_out), abs=1e-12)
        assert run["fpr95"] == pytest.approx(fpr_at_95_tpr(s_in, s_out), abs=1e-12)
        assert run["in_kept"] == pytest.approx(np.mean(det.predict(Xi) == 1), abs=1e-12)
    for k in (2, 4):
        values = [r["auroc"] for r in ood["runs"] if r["detector"] == "knn" and r["shots"] == k]
        mean, ci = mean_ci(values)
        assert ood["summary"]["auroc"]["knn"]["far"][str(k)] == {"mean": mean, "ci95": ci}
    assert min(r["auroc"] for r in ood["runs"]) > 0.95  # the far split lies along an unseen axis
    assert report.to_dict()["ood"] == ood


def test_without_ood_splits_the_report_has_no_ood_entry(store):
    report = run_evaluation(store, ["ncm"], [2], [1])
    assert report.ood == {} and "ood" not in report.to_dict()


@pytest.mark.parametrize("splits, methods, match", [
    (["nosuch"], None, "no split 'nosuch'"), (["test"], None, "also a train, validation or test split"),
    (["far"], ["odin"], "'odin' is not one of"),
])
def test_bad_ood_parameters_are_named(store, splits, methods, match):
    with pytest.raises(InvalidParameterError, match=match) as info:
        run_evaluation(store, ["ncm"], [2], [1], ood_splits=splits, ood_methods=methods)
    assert info.value.param == ("ood_methods" if methods else "ood_splits")


def _evaluate(args):
    group = type(cli)("g")
    group.add_command(evaluate_command)
    return CliRunner().invoke(group, ["evaluate", *args])


def test_cli_ood_json_and_table(store):
    result = _evaluate([str(store), "--methods", "ncm", "--shots", "2", "--seeds", "1,2", "--ood", "far", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ood"]["config"]["detectors"] == list(DEFAULT_METHODS)
    assert set(report["ood"]["summary"]) == {"auroc", "aupr_in", "fpr95"}
    assert len(report["ood"]["runs"]) == len(DEFAULT_METHODS) * 2
    result = _evaluate([str(store), "--methods", "ncm", "--shots", "2", "--seeds", "1", "--ood", "far"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("auroc vs far")))
    assert lines[start].split()[-1] == "2-shot"
    assert [line.split()[0] for line in lines[start + 2:]] == list(DEFAULT_METHODS)


def test_cli_unknown_ood_split_is_one_line(store):
    result = _evaluate([str(store), "--methods", "ncm", "--shots", "2", "--seeds", "1", "--ood", "nosuch"])
    assert result.exit_code == 1 and "no split 'nosuch'" in result.output and "(--ood)" in result.output
