"""``clipcache fit / predict / evaluate`` end to end on a small synthetic store."""

import csv
import json
import re

import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.classifiers import load_model
from clipcache.cli.main import cli

DEPRECATED = "clipcache: {old} is deprecated and will be removed in the next release; use {new}\n"


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args])

    return invoke


def _table_cells(output: str) -> dict:
    """``{(method, shots): (mean, ci)}`` from the printed table (percent, 2 decimals)."""
    lines = output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("method"))
    shots = [int(s.split("-")[0]) for s in lines[head].split()[1:]]
    cells = {}
    for line in lines[head + 2:]:
        values = re.findall(r"(\d+\.\d+) ± (\d+\.\d+)", line)
        for k, (mean, ci) in zip(shots, values, strict=True) if values else ():
            cells[(line.split()[0], k)] = (float(mean), float(ci))
    return cells


def test_evaluate_prints_the_table_of_the_json_report_and_writes_the_plot(run, store, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    res = run("evaluate", store, "--methods", "gda,tip,fusion", "--feature-set", "clip", "--aux-feature-set", "aux",
              "--shots", "1,2", "--seeds", "1,2", "-o", out, "--plot", png)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 12 and doc["config"]["feature_set"] == "clip" and doc["config"]["aux_feature_set"] == "aux"
    expected = {(m, int(k)): (round(100 * v["mean"], 2), round(100 * v["ci95"], 2))
                for m, by in doc["summary"]["top1"].items() for k, v in by.items()}
    assert _table_cells(res.stdout) == pytest.approx(expected, abs=0.0051)
    assert len(expected) == 6
    assert res.stdout.splitlines()[0] == "clip on 'test' (150 rows), base zeroshot, validation 'val'; top1, mean ± 95% CI over 2 seed(s)"
    assert res.stdout.splitlines()[-2:] == [f"wrote {out}", f"wrote {png}"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_json_flag_prints_the_report_that_output_writes(run, store, tmp_path):
    args = ("evaluate", store, "--methods", "ncm,knn", "--feature-set", "clip", "--shots", "2", "--seeds", "1")
    printed = run(*args, "--json", "-o", tmp_path / "r.json")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == json.loads((tmp_path / "r.json").read_text())
    assert printed.stderr == f"wrote {tmp_path / 'r.json'}\n"  # stdout holds only the JSON


def test_evaluate_json_file_is_the_deprecated_spelling_of_output(run, store, tmp_path):
    args = ("evaluate", store, "--methods", "ncm", "--feature-set", "clip", "--shots", "2", "--seeds", "1")
    old = run(*args, "--json", tmp_path / "old.json")
    new = run(*args, "-o", tmp_path / "new.json")
    assert old.exit_code == new.exit_code == 0, old.output
    assert old.stderr == DEPRECATED.format(old="--json FILE", new="-o FILE (--json alone prints the JSON)")
    assert old.stdout.replace("old.json", "new.json") == new.stdout and new.stderr == ""
    assert (tmp_path / "old.json").read_text() == (tmp_path / "new.json").read_text()


def test_evaluate_refuses_json_file_together_with_output(run, store, tmp_path):
    res = run("evaluate", store, "--json", tmp_path / "a.json", "-o", tmp_path / "b.json")
    assert res.exit_code == 2 and "--json FILE is the old spelling of -o FILE; give only -o" in res.output
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("old, new", [("--features", "--feature-set"), ("--aux-features", "--aux-feature-set")])
def test_old_feature_set_flags_still_work_with_a_deprecation_message(run, store, tmp_path, old, new):
    values = {"--feature-set": "clip", "--aux-feature-set": "aux"}
    base = ("evaluate", store, "--methods", "fusion", "--shots", "1", "--seeds", "1")
    spelled = {"new": [*values.items()], "old": [(old if flag == new else flag, v) for flag, v in values.items()]}
    results = {}
    for name, flags in spelled.items():
        results[name] = run(*base, *[x for pair in flags for x in pair], "-o", tmp_path / f"{name}.json")
        assert results[name].exit_code == 0, results[name].output
    assert results["old"].stderr == DEPRECATED.format(old=old, new=new)
    assert results["new"].stderr == ""
    assert (tmp_path / "old.json").read_text() == (tmp_path / "new.json").read_text()


def test_fit_old_feature_set_flags_save_the_same_model(run, store, tmp_path):
    common = ("fit", store, "--method", "fusion", "--shots", "2", "--seed", "4")
    new = run(*common, "--feature-set", "clip", "--aux-feature-set", "aux", "-o", tmp_path / "new.npz")
    old = run(*common, "--features", "clip", "--aux-features", "aux", "-o", tmp_path / "old.npz")
    assert new.exit_code == old.exit_code == 0, old.output
    assert old.stderr == DEPRECATED.format(old="--features", new="--feature-set") + DEPRECATED.format(
        old="--aux-features", new="--aux-feature-set")
    assert old.stdout.replace("old.npz", "new.npz") == new.stdout and new.stderr == ""
    (_, old_meta), (_, new_meta) = load_model(tmp_path / "old.npz"), load_model(tmp_path / "new.npz")
    assert old_meta == new_meta and (new_meta["feature_set"], new_meta["aux_feature_set"]) == ("clip", "aux")
    for name in ("old", "new"):
        assert run("predict", store, tmp_path / f"{name}.npz", "-o", tmp_path / f"{name}.csv").exit_code == 0
    assert (tmp_path / "old.csv").read_text() == (tmp_path / "new.csv").read_text()


def test_old_and_new_spelling_together_are_refused(run, store, tmp_path):
    res = run("fit", store, "--method", "gda", "--features", "clip", "--feature-set", "clip", "--shots", "2",
              "-o", tmp_path / "m.npz")
    assert res.exit_code == 2 and "--features is the old spelling of --feature-set; give only --feature-set" in res.output


def test_fit_then_predict_writes_the_saved_model_predictions(run, store, tmp_path):
    model, preds = tmp_path / "tip.h5", tmp_path / "p.csv"
    res = run("fit", store, "--method", "tip", "--feature-set", "clip", "--shots", "4", "--seed", "3", "-o", model)
    assert res.exit_code == 0, res.output
    estimator, meta = load_model(model)
    hp = meta["hyperparameters"]
    assert res.stdout == (
        f"fitted tip on 20 samples of 'train' (4-shot, seed 3); validation: 'val'; "
        f"hyper-parameters: alpha={hp['alpha']:g}, beta={hp['beta']:g}; saved {model}\n"
    )
    res = run("predict", store, model, "--split", "test", "--output", preds)
    assert res.exit_code == 0, res.output
    assert res.stdout == f"wrote 150 predictions of 'test' to {preds}\n"
    with FeatureStore(store) as s:
        proba = estimator.predict_proba(s.features("test", "clip"))
        ids, labels = s.ids("test"), s.labels("test")
    with open(preds, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "path", "label", "pred", "pred_name", "confidence"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in ids]
    assert [int(r[2]) for r in rows[1:]] == labels.tolist()
    assert [int(r[3]) for r in rows[1:]] == proba.argmax(axis=1).tolist()
    assert [r[4] for r in rows[1:]] == [f"class{p}" for p in proba.argmax(axis=1)]
    assert [r[5] for r in rows[1:]] == [f"{c:.6f}" for c in proba.max(axis=1)]


def test_library_error_is_one_line_naming_the_flag(run, store, tmp_path):
    res = run("fit", store, "--method", "fusion", "--feature-set", "clip", "--shots", "2", "-o", tmp_path / "m.npz")
    assert res.exit_code == 1
    assert res.output == (
        "Error: method fusion needs the auxiliary backbone's features; give aux_feature_set (--aux-feature-set)\n"
    )


def test_conflicting_flags_are_rejected_before_work(run, store, tmp_path):
    res = run("fit", store, "--method", "gda", "--aux-feature-set", "aux", "--shots", "2", "-o", tmp_path / "m.npz")
    assert res.exit_code == 2 and "Error: --aux-feature-set is only used by --method fusion\n" in res.output
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["--methods", "gda,svm"], "Invalid value for '--methods': unknown method 'svm'; choose from zeroshot, ncm, gda, gda-zs, tip, fusion, knn, auto"),
    (["--test-split", "train"], "Invalid value for '--test-split': the test split 'train' must differ from the split the support sets are drawn from"),
    (["--val-per-class", "0"], "Invalid value for '--val-per-class': val_per_class=0 must be a positive number of rows per class"),
])
def test_bad_values_are_usage_errors_naming_the_flag(run, store, args, message):
    res = run("evaluate", store, *args)
    assert res.exit_code == 2 and res.output.splitlines()[-1] == f"Error: {message}"


def test_help_lists_only_the_new_spellings(run):
    for command in ("fit", "evaluate"):
        out = run(command, "--help").output
        assert "--feature-set" in out and "--aux-feature-set" in out and "-o, --output" in out
        assert "--features" not in out and "--aux-features" not in out
    assert re.search(r"^  --json\s+Print", run("evaluate", "--help").output, re.M)


def test_evaluate_transductive_reports_its_own_row(run, store, tmp_path):
    res = run("evaluate", store, "--feature-set", "clip", "--methods", "gda,auto", "--shots", "2", "--seeds", "1,2",
              "--transductive", "--center", "support", "-o", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    cells = _table_cells(res.output)
    assert {m for m, _ in cells} == {"gda", "auto", "transductive-gda"}
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["transductive"] is True and report["config"]["center"] == "support"
    assert set(report["summary"]["ece_calibrated"]) == {"gda", "auto", "transductive-gda"}


def test_evaluate_base_to_new_prints_the_harmonic_mean(run, store):
    res = run("evaluate", store, "--feature-set", "clip", "--methods", "gda", "--shots", "2", "--seeds", "1",
              "--base-to-new")
    assert res.exit_code == 0, res.output
    assert "hm, mean" in res.output and ("gda", 2) in _table_cells(res.output)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "hm"], "Invalid value for '--metric': --metric hm needs --base-to-new"),
        (["--center", "transductive"], "Invalid value for '--center': center='transductive' takes the mean of the "
                                       "test features"),
    ],
)
def test_protocol_flag_conflicts_are_usage_errors(run, store, args, message):
    res = run("evaluate", store, "--feature-set", "clip", *args)
    assert res.exit_code == 2 and message in res.output


def test_fit_centres_on_the_pool_and_saves_the_mean(run, store, tmp_path):
    res = run("fit", store, "--method", "gda", "--feature-set", "clip", "--shots", "4", "--center", "pool",
              "-o", tmp_path / "m.h5")
    assert res.exit_code == 0, res.output
    model, meta = load_model(tmp_path / "m.h5")
    with FeatureStore(store) as s:
        X, _ = s.to_numpy("train", "clip")
    assert meta["center"] == "pool" and model.center_.shape == (X.shape[1],)
    assert abs(model.center_ - X.mean(axis=0)).max() < 1e-6


def test_fit_auto_names_the_selected_method(run, store, tmp_path):
    res = run("fit", store, "--method", "auto", "--feature-set", "clip", "--shots", "4", "-o", tmp_path / "m.h5")
    assert res.exit_code == 0, res.output
    model, meta = load_model(tmp_path / "m.h5")
    assert f"selected={model.best_name_}" in res.output and meta["hyperparameters"]["selected"] == model.best_name_
