"""``clipcache corrupt``: the command object, run through a group with the real error handling."""

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from clipcache.cli.main import cli
from clipcache.cli.shift import corrupt_command
from clipcache.corrupt import CORRUPTIONS, MANIFEST


def _run(args):
    group = type(cli)("g")
    group.add_command(corrupt_command)
    return CliRunner().invoke(group, ["corrupt", *args])


def _source(root):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)).save(root / name / "0.png")
    return root


def test_writes_the_requested_splits(tmp_path):
    src = _source(tmp_path / "src")
    result = _run([str(src), str(tmp_path / "out"), "--corruptions", "fog,pixelate", "--severities", "2-3", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "wrote 8 images (2 source images x 4 splits: 2 corruptions x severities 2,3, seed 5)" in result.output
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert [s["split"] for s in manifest["splits"]] == ["test-fog-2", "test-fog-3", "test-pixelate-2", "test-pixelate-3"]
    assert manifest["seed"] == 5


def test_all_and_a_severity_list(tmp_path):
    src = _source(tmp_path / "src")
    result = _run([str(src), str(tmp_path / "out"), "--severities", "1,5"])
    assert result.exit_code == 0, result.output
    splits = json.loads((tmp_path / "out" / MANIFEST).read_text())["splits"]
    assert len(splits) == 2 * len(CORRUPTIONS) and {s["severity"] for s in splits} == {1, 5}


def test_bad_flags(tmp_path):
    src = _source(tmp_path / "src")
    result = _run([str(src), str(tmp_path / "out"), "--severities", "0-6"])
    assert result.exit_code == 2 and "severities run from 1 to 5" in result.output
    result = _run([str(src), str(tmp_path / "out"), "--corruptions", "snow"])
    assert result.exit_code == 1 and "'snow' is not one of" in result.output and "(--corruptions)" in result.output
    assert _run([str(src), str(tmp_path / "o2"), "--corruptions", "fog", "--severities", "1"]).exit_code == 0
    result = _run([str(src), str(tmp_path / "o2"), "--corruptions", "fog", "--severities", "1"])
    assert result.exit_code == 1 and "choose another output folder or overwrite it (--overwrite)" in result.output
