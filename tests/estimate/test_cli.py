"""``clipcache estimate``: the command object, run through a group with the real error handling."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.classifiers import load_model
from clipcache.cli.main import cli
from clipcache.cli.shift import estimate_command
from clipcache.estimate import estimate_accuracy, r2_linear_fit
from clipcache.evaluation import fit_from_store


def _run(args):
    group = type(cli)("g")
    group.add_command(estimate_command)
    return CliRunner().invoke(group, ["estimate", *args])


def _clustered(rng, n, noise, d=16, n_classes=4):
    y = np.arange(n) % n_classes
    x = np.eye(n_classes, d)[y] * 3 + rng.normal(size=(n, d)) * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


@pytest.fixture
def fitted(tmp_path):
    """A store with train/val/test and three noisier copies of test (one unlabelled), and a GDA model."""
    rng = np.random.default_rng(0)
    path = tmp_path / "store.h5"
    with FeatureStore(path, "w") as s:
        s.set_classes([f"class{i}" for i in range(4)])
        s.add_feature_set("clip", 16, provenance={"backbone": "open_clip", "model": "tiny", "pretrained": "none"})
        for split, n, noise in (("train", 80, 1.0), ("val", 40, 1.0), ("test", 60, 1.0), ("s1", 60, 2.0),
                                ("s2", 60, 3.0), ("s3", 60, 4.5), ("unlabelled", 30, 2.0)):
            x, y = _clustered(rng, n, noise)
            if split == "unlabelled":
                y = np.full(n, -1)
            s.create_split(split, ["clip"])
            s.append(split, ids=[f"{split}{i}" for i in range(n)], paths=["p"] * n, labels=y, features={"clip": x})
            s.mark_complete(split)
    model = tmp_path / "gda.h5"
    fit_from_store(path, "gda", model, shots=10, seed=1)
    return path, model


def test_json_estimates_truth_and_summary(fitted):
    path, model = fitted
    result = _run([str(path), "--model", str(model), "--splits", "test,s1,s2,s3,unlabelled", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["val_split"] == "val" and report["methods"] == ["ac", "doc", "atc-mc", "atc-ne", "nuclear", "mano"]
    estimator, _ = load_model(model)
    with FeatureStore(path) as s:
        xv, yv = s.to_numpy("val", "clip")
        arrays = {split: s.to_numpy(split, "clip") for split in ("test", "s1", "s2", "s3", "unlabelled")}
    rows = {r["split"]: r for r in report["splits"]}
    for split, (x, y) in arrays.items():
        want = None if split == "unlabelled" else float(np.mean(estimator.predict(x) == y))
        assert rows[split]["accuracy"] == want and rows[split]["n"] == len(x)
        for m in report["methods"]:
            assert rows[split]["estimates"][m] == pytest.approx(estimate_accuracy(estimator, x, m, xv, yv), rel=1e-9)
    truth = [rows[s]["accuracy"] for s in ("test", "s1", "s2", "s3")]
    mano = [rows[s]["estimates"]["mano"] for s in ("test", "s1", "s2", "s3")]
    assert report["summary"]["mano"]["n_splits"] == 4
    assert report["summary"]["mano"]["r2"] == pytest.approx(r2_linear_fit(mano, truth), rel=1e-9)
    assert truth == sorted(truth, reverse=True)  # the shifts do hurt


def test_text_table(fitted):
    path, model = fitted
    result = _run([str(path), "--model", str(model), "--splits", "test,s1,s2", "--methods", "ac,mano"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "validation: 'val'"
    assert lines[1].split() == ["split", "n", "true", "ac", "mano"]
    assert [line.split()[0] for line in lines[2:5]] == ["test", "s1", "s2"]
    assert lines[5].startswith("R² (linear fit)") and lines[6].startswith("Spearman ρ") and lines[7].startswith("MAE")


def test_errors_are_one_line(fitted):
    path, model = fitted
    result = _run([str(path), "--model", str(model), "--splits", "test", "--methods", "entropy"])
    assert result.exit_code == 1 and "'entropy' is not one of" in result.output and "(--methods)" in result.output
    result = _run([str(path), "--model", str(model), "--splits", "nosuch"])
    assert result.exit_code == 1 and "no split 'nosuch'" in result.output
    result = _run([str(path), "--model", str(model), "--splits", "test,val", "--val-split", "val"])
    assert result.exit_code == 2 and "--val-split must not be one of" in result.output


def test_output_file_holds_the_json_report(fitted, tmp_path):
    path, model = fitted
    target = tmp_path / "estimate.json"
    result = _run([str(path), "--model", str(model), "--splits", "test,s1", "--methods", "ac", "-o", str(target)])
    assert result.exit_code == 0, result.output
    report = json.loads(target.read_text())
    assert [r["split"] for r in report["splits"]] == ["test", "s1"] and report["methods"] == ["ac"]
    assert result.output.splitlines()[-1] == f"wrote {target}"


def test_fusion_model_reads_its_feature_set_then_the_auxiliary_one(tmp_path):
    from clipcache.estimate import estimate_store

    rng = np.random.default_rng(3)
    path = tmp_path / "two.h5"
    arrays = {}
    with FeatureStore(path, "w") as s:
        s.set_classes([f"class{i}" for i in range(4)])
        s.add_feature_set("clip", 16, provenance={"backbone": "open_clip", "model": "tiny", "pretrained": "none"})
        s.add_feature_set("aux", 8, provenance={"backbone": "timm", "model": "tiny-aux", "pretrained": "none"})
        for split, n in (("train", 60), ("val", 40), ("test", 40)):
            x, y = _clustered(rng, n, 1.5)
            a, _ = _clustered(rng, n, 1.5, d=8)
            s.create_split(split, ["clip", "aux"])
            s.append(split, ids=[f"{split}{i}" for i in range(n)], paths=["p"] * n, labels=y, features={"clip": x, "aux": a})
            s.mark_complete(split)
            arrays[split] = (np.hstack([x, a]), y)
    model = tmp_path / "fusion.h5"
    fit_from_store(path, "fusion", model, shots=8, seed=1, aux_feature_set="aux")
    report = estimate_store(path, model, ["test"], methods=["ac", "atc-mc"])
    estimator, _ = load_model(model)
    (xt, yt), (xv, yv) = arrays["test"], arrays["val"]
    row = report["splits"][0]
    assert row["accuracy"] == float(np.mean(estimator.predict(xt) == yt))
    for m in ("ac", "atc-mc"):
        assert row["estimates"][m] == pytest.approx(estimate_accuracy(estimator, xt, m, xv, yv), rel=1e-9)
