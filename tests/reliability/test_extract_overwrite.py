"""``extract --overwrite`` checks every input first and replaces the old store only with a complete new one.

A bad input fails before any work; a failed or killed overwrite leaves the old
store byte for byte as it was (the killed one leaves its hidden, incomplete
temporary file beside it, which nothing reads and the next overwrite does not
need); a finished one replaces it in one rename. Writing the store onto one of
the command's own input files is refused.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from clipcache.errors import StoreWriteError
from clipcache.extract.loop import ExtractConfig, RunOptions, extract
from tests.extract.conftest import write_image_folder
from tests.extract.helpers import snapshot
from tests.faults import Fault, run_cli
from tests.feature_store.faulty import sha256
from tests.reliability.test_extract_disk_full import _inject

QUIET = RunOptions(progress=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images") / "images", {"train": 6, "test": 3})


@pytest.fixture
def old(tmp_path, folder):
    """An existing store of the test split only, and its sha256."""
    path = tmp_path / "s.h5"
    extract(path, _config(folder, splits=("test",)), QUIET)
    return path, sha256(path)


def _config(folder, **kw) -> ExtractConfig:
    return ExtractConfig(source=str(folder), model="clipcache-tiny-vit", pretrained="none", batch_size=4, **kw)


def _args(folder, path, *more) -> list:
    return ["extract", str(folder), str(path), "--model", "clipcache-tiny-vit", "--pretrained", "none",
            "--batch-size", "4", "--workers", "0", *map(str, more)]


def _leftovers(path) -> list:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-"))


def test_a_bad_templates_file_fails_before_any_work(tmp_path, folder, old, monkeypatch):
    path, digest = old
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps(["a photo without the class name"]))
    monkeypatch.setattr("clipcache.extract.loop.build_backbones", lambda *a, **k: pytest.fail("a backbone was built"))
    result = CliRunner().invoke(cli, _args(folder, path, "--overwrite", "--templates", bad))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: templates of 't': each must be a string containing '{}' for the class name "
        "(bad: ['a photo without the class name']) (--templates)"
    ]
    assert sha256(path) == digest and _leftovers(path) == []


def test_a_failed_overwrite_leaves_the_old_store(tmp_path, folder, old, monkeypatch):
    path, digest = old
    _inject(monkeypatch, Fault("clipcache.feature_store._hdf5.write_rows", call=14, when="after", action="enospc"))
    with pytest.raises(StoreWriteError, match=rf"^{path}: the new store could not be written, so the old one is unchanged"):
        extract(path, _config(folder), QUIET, overwrite=True)
    assert sha256(path) == digest and _leftovers(path) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "left"),
    [
        (Fault("clipcache.feature_store.store.FeatureStore.append", call=2), "incomplete"),
        (Fault("os.replace", call=1, when="before"), "complete"),
        (Fault("os.replace", call=1, when="after"), None),
    ],
    ids=["mid-run", "before-replace", "after-replace"],
)
def test_a_killed_overwrite_leaves_the_old_store_or_the_whole_new_one(tmp_path, folder, old, fault, left):
    path, digest = old
    full = tmp_path / "full.h5"
    extract(full, _config(folder), QUIET)
    result = run_cli(_args(folder, path, "--overwrite"), fault)
    assert result.returncode == -signal.SIGKILL, result.stderr
    if left is None:  # killed after the rename: the new store, whole
        assert snapshot(path) == snapshot(full) and _leftovers(path) == []
        return
    assert sha256(path) == digest
    (leftover,) = _leftovers(path)  # hidden beside it, under a name nothing reads
    with FeatureStore(path.parent / leftover) as store:
        assert all(store.is_complete(s) for s in store.splits) == (left == "complete")
    extract(path, _config(folder), QUIET, overwrite=True)  # the next overwrite starts afresh
    assert snapshot(path) == snapshot(full)


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_the_store_cannot_be_the_source_manifest(tmp_path, folder, link):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(folder.rglob("*.png"))))
    before = manifest.read_bytes()
    store = manifest if link == "same" else tmp_path / "store.csv"
    if link == "symlink":
        store.symlink_to(manifest)
    elif link == "hardlink":
        os.link(manifest, store)
    result = CliRunner().invoke(cli, _args(manifest, store, "--overwrite"))
    assert result.exit_code == 1
    assert f"Error: {store}: is the input {manifest}; write the output to another file (STORE)" in result.output
    assert manifest.read_bytes() == before


def test_the_store_cannot_be_the_templates_file(tmp_path, folder):
    templates = tmp_path / "t.json"
    templates.write_text(json.dumps(["a photo of a {}."]))
    result = CliRunner().invoke(cli, _args(folder, templates, "--overwrite", "--templates", templates))
    assert result.exit_code == 1
    assert f"Error: {templates}: is the input {templates}; write the output to another file (STORE)" in result.output
    assert json.loads(templates.read_text()) == ["a photo of a {}."]

