"""``clipcache ood``: the command object, run through a group with the real error handling."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from clipcache.cli.shift import ood_command
from clipcache.ood import OODDetector, auroc, fpr_at_95_tpr
from tests.conftest import write_synthetic_store


def _run(args):
    group = type(cli)("g")  # the class of the real group: same error handling
    group.add_command(ood_command)
    return CliRunner().invoke(group, ["ood", *args])


@pytest.fixture
def stores(tmp_path):
    main = tmp_path / "main.h5"
    other = tmp_path / "other.h5"
    arrays = write_synthetic_store(main, {"train": 40, "val": 12, "test": 20, "shifted": 16}, seed=0)
    other_arrays = write_synthetic_store(other, {"test": 10}, seed=1)
    return main, other, arrays, other_arrays


def test_json_numbers_equal_the_detector_on_the_same_arrays(stores):
    main, other, arrays, other_arrays = stores
    result = _run([str(main), "--out", "shifted", "--out", f"{other}:test", "--methods", "mahalanobis,knn", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["val_split"] == "val" and report["n_fit"] == 40 and report["n_in"] == 20
    rows = {(r["method"], r["out"]): r for r in report["results"]}
    assert set(rows) == {("mahalanobis", "shifted"), ("mahalanobis", f"{other}:test"), ("knn", "shifted"),
                         ("knn", f"{other}:test")}
    for method in ("mahalanobis", "knn"):
        det = OODDetector(method).fit(arrays["train"]["x"], arrays["train"]["y"], X_val=arrays["val"]["x"],
                                      y_val=arrays["val"]["y"])
        s_in = det.score_samples(arrays["test"]["x"])
        for label, x_out in (("shifted", arrays["shifted"]["x"]), (f"{other}:test", other_arrays["test"]["x"])):
            s_out = det.score_samples(x_out)
            assert rows[(method, label)]["auroc"] == pytest.approx(auroc(s_in, s_out), rel=1e-9)
            assert rows[(method, label)]["fpr95"] == pytest.approx(fpr_at_95_tpr(s_in, s_out), rel=1e-9)


def test_text_table(stores):
    main = stores[0]
    result = _run([str(main), "--out", "shifted", "--methods", "knn"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "validation 'val'" in lines[0]
    assert lines[1].split() == ["method", "OOD", "set", "AUROC", "AUPR-in", "FPR@95"]
    assert lines[2].split()[:2] == ["knn", "shifted"] and len(lines) == 3


def test_other_store_from_another_model_is_refused(stores, tmp_path):
    main = stores[0]
    foreign = tmp_path / "foreign.h5"
    with FeatureStore(foreign, "w") as s:
        s.set_classes([f"class{i}" for i in range(4)])
        s.add_feature_set("clip", 16, provenance={"backbone": "open_clip", "model": "other", "pretrained": "none"})
        s.create_split("test", ["clip"])
        s.append("test", ids=["a"], paths=["a"], labels=[0], features={"clip": np.ones((1, 16), np.float32) / 4})
        s.mark_complete("test")
    result = _run([str(main), "--out", f"{foreign}:test", "--methods", "knn"])
    assert result.exit_code == 1
    assert "different model" in result.output and "Traceback" not in result.output


def test_bad_flags_are_one_line_errors(stores):
    main = stores[0]
    result = _run([str(main), "--out", "nosuch", "--methods", "knn"])
    assert result.exit_code == 1 and "no split 'nosuch'" in result.output and "(--out)" in result.output
    result = _run([str(main), "--out", "shifted", "--methods", "knn,odin"])
    assert result.exit_code == 1 and "'odin' is not one of" in result.output and "(--methods)" in result.output
    result = _run([str(main), "--out", "shifted", "--in", "train"])
    assert result.exit_code == 2 and "--in must differ from --fit-split" in result.output
    result = _run([str(main), "--out", "/no/such/store.h5:test"])
    assert result.exit_code == 2 and "no store file" in result.output


def test_empty_ood_split_is_a_clear_error(stores, tmp_path):
    main = stores[0]
    with FeatureStore(main, "a") as s:
        s.create_split("empty", ["clip"])
        s.mark_complete("empty")
    result = _run([str(main), "--out", "empty", "--methods", "knn"])
    assert result.exit_code == 1 and "score_out is empty" in result.output


def test_output_file_holds_the_printed_json(stores, tmp_path):
    main = stores[0]
    target = tmp_path / "ood.json"
    result = _run([str(main), "--out", "shifted", "--methods", "knn", "--json", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text()) == json.loads(result.stdout)
    assert result.stderr.strip() == f"wrote {target}"


def test_feature_set_must_exist(stores):
    main = stores[0]
    result = _run([str(main), "--out", "shifted", "--methods", "knn", "--feature-set", "nosuch"])
    assert result.exit_code == 1 and "no feature set 'nosuch'" in result.output and "(--feature-set)" in result.output


def test_default_methods_are_the_library_defaults():
    from clipcache.ood import DEFAULT_METHODS

    default = next(p.default for p in ood_command.params if p.name == "methods")
    assert default.split(",") == list(DEFAULT_METHODS)


def test_other_store_without_the_feature_set_is_refused(stores, tmp_path):
    main = stores[0]
    foreign = tmp_path / "nofs.h5"
    with FeatureStore(foreign, "w") as s:
        s.set_classes(["a"])
        s.add_feature_set("other", 16, provenance={"backbone": "open_clip", "model": "tiny", "pretrained": "none"})
        s.create_split("test", ["other"])
        s.append("test", ids=["a"], paths=["a"], labels=[0], features={"other": np.ones((1, 16), np.float32) / 4})
        s.mark_complete("test")
    result = _run([str(main), "--out", f"{foreign}:test", "--methods", "knn"])
    assert result.exit_code == 1 and "has no feature set 'clip'" in result.output and "Traceback" not in result.output
