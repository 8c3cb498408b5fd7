import json

import numpy as np
from click.testing import CliRunner

from clipcache import FeatureStore, __version__
from clipcache.cli import cli
from tests.conftest import unit_rows


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"clipcache, version {__version__}"


def test_info_describes_splits_features_text_and_completion(synthetic_store):
    path, _ = synthetic_store
    with FeatureStore(path, "a") as store:
        store.write_text("simple", unit_rows(np.random.default_rng(0), 4, 16), [0, 1, 2, 3], list("abcd"),
                         provenance={"model": "tiny"}, templates=["a photo of a {}."])
        store.create_split("val", ["clip"])
        store.append("val", ids=["v"], paths=["v.jpg"], labels=[2], features={"clip": unit_rows(np.random.default_rng(1), 1, 16)})
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "classes (4): class0, class1, class2, class3" in out
    assert "  train: 40 rows (40 labelled), complete" in out
    assert "  val: 1 rows (1 labelled), INCOMPLETE" in out
    assert "  clip: dim 16, float32, L2-normalised; backbone=open_clip, model=tiny, pretrained=none" in out
    assert "  simple: 4 prompts (1 templates), dim 16; model=tiny" in out


def test_info_json_is_machine_readable(synthetic_store):
    path, _ = synthetic_store
    result = CliRunner().invoke(cli, ["info", str(path), "--json"])
    assert result.exit_code == 0
    d = json.loads(result.output)
    assert d["format"] == "clipcache.feature_store v1"
    assert d["splits"]["test"] == {"rows": 20, "complete": True, "skipped": 0, "labelled": 20, "views": 1,
                                   "features": {"clip": 20}}
    assert d["feature_sets"]["clip"]["dim"] == 16


def test_unexpected_os_error_is_one_line_naming_the_file(tmp_path):
    from clipcache.extract.demo import write_demo_dataset

    write_demo_dataset(tmp_path / "imgs", train_per_class=1, test_per_class=1)
    missing = tmp_path / "nope" / "s.h5"
    result = CliRunner().invoke(cli, ["extract", str(tmp_path / "imgs"), str(missing), "--aux", "efficientnet-lite0",
                                      "--workers", "0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {missing}: cannot open the store for writing (No such file or directory)"]
