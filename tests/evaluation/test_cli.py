"""``clipcache fit / predict / evaluate`` end to end on a small synthetic store."""

import json

import pytest
from click.testing import CliRunner

from clipcache.cli.main import cli


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args])

    return invoke


def test_evaluate_prints_table_and_writes_json_and_plot(run, store, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    res = run("evaluate", store, "--methods", "gda,tip,fusion", "--features", "clip", "--aux-features", "aux",
              "--shots", "1,2", "--seeds", "1,2", "--json", out, "--plot", png)
    assert res.exit_code == 0, res.output
    assert "method" in res.output and "2-shot" in res.output and "±" in res.output
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 12 and set(doc["summary"]["top1"]) == {"gda", "tip", "fusion"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_then_predict(run, store, tmp_path):
    model, preds = tmp_path / "tip.h5", tmp_path / "p.csv"
    res = run("fit", store, "--method", "tip", "--features", "clip", "--shots", "4", "--seed", "3", "-o", model)
    assert res.exit_code == 0, res.output
    assert "hyper-parameters: alpha=" in res.output
    res = run("predict", store, model, "--split", "test", "-o", preds)
    assert res.exit_code == 0, res.output
    assert len(preds.read_text().splitlines()) == 151


def test_library_error_is_one_line_and_exit_1(run, store, tmp_path):
    res = run("fit", store, "--method", "fusion", "--features", "clip", "--shots", "2", "-o", tmp_path / "m.npz")
    assert res.exit_code == 1
    assert res.output.strip().count("\n") == 0 and "--aux-features" in res.output


def test_conflicting_flags_are_rejected_before_work(run, store, tmp_path):
    res = run("fit", store, "--method", "gda", "--aux-features", "aux", "--shots", "2", "-o", tmp_path / "m.npz")
    assert res.exit_code == 2 and "only used by --method fusion" in res.output
    assert not (tmp_path / "m.npz").exists()


def test_unknown_method_is_rejected(run, store):
    res = run("evaluate", store, "--methods", "gda,svm")
    assert res.exit_code == 2 and "'svm' is not one of" in res.output
