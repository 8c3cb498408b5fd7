"""Disk full and kills while ``index`` and ``fit`` write their outputs.

The faults are injected into a child process by :mod:`tests.faults` (ENOSPC or
SIGKILL at the Nth call of a named function). Where this machine lets the test
mount a small tmpfs, the disk-full cases also run against a real full disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from clipcache import FeatureStore
from clipcache.cli.main import cli
from clipcache.retrieval import build_index
from tests.classifiers.synth import write_store
from tests.faults import Fault, run_cli

ENOSPC = "No space left on device"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def files(folder) -> dict:
    """``{name: bytes}`` of every file in ``folder`` (temporary files included)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_one_line(result, message: str) -> None:
    """Exit status 1 and one error line; logged warnings (e.g. calibration's on tiny data) may precede it."""
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines(keepends=True) if not line.startswith("clipcache: WARNING: ")]
    assert "".join(lines) == f"Error: {message}\n"


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "data" / "s.h5"
    path.parent.mkdir()
    write_store(path, aux=False, per_class={"train": 20, "val": 8, "test": 30})
    return path


@contextlib.contextmanager
def small_tmpfs(folder, size: str):
    """Mount a tmpfs of ``size`` on ``folder`` for the block, or skip when this machine does not allow it."""
    folder.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8); the injected-ENOSPC tests cover this case")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected-ENOSPC tests cover this case")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


# -- index: disk full ----------------------------------------------------------------------


@pytest.fixture
def old_index(store, tmp_path):
    """An index of split 'val' saved at out/i.faiss; the later builds index 'test' to the same path."""
    out = tmp_path / "out"
    out.mkdir()
    assert run("index", store, "--split", "val", "-o", out / "i.faiss").exit_code == 0
    return out / "i.faiss"


@pytest.mark.parametrize(
    "fault",
    [
        Fault("faiss.write_index", action="enospc"),
        Fault("faiss.write_index", action="enospc", when="after"),
        Fault("numpy.save", action="enospc"),
        Fault("pathlib.Path.write_text", action="enospc"),
        Fault("os.replace", call=1, action="enospc"),
    ],
    ids=["index-file", "index-file-after", "rows", "sidecar", "first-rename"],
)
def test_index_disk_full_is_one_line_and_keeps_the_previous_index(store, old_index, fault):
    before = files(old_index.parent)
    result = run_cli(["index", store, "--split", "test", "-o", old_index], fault)
    assert_one_line(result, f"{old_index}: cannot write the index ({ENOSPC}); free disk space or write it elsewhere")
    assert files(old_index.parent) == before  # the previous set, byte for byte, and no temporary file
    searched = run("search", store, "--index", old_index, "--id", "val-0000", "-k", "3", "--json")
    assert searched.exit_code == 0, searched.output


def test_index_on_a_really_full_disk_keeps_the_previous_index(store, tmp_path):
    with small_tmpfs(tmp_path / "tiny", "64k") as tiny:
        small = run("index", store, "--split", "val", "-o", tiny / "i.faiss")
        assert small.exit_code == 0, small.output
        before = files(tiny)
        big = tmp_path / "big.h5"
        write_store(big, aux=False, d=64, per_class={"train": 2, "val": 40, "test": 400})
        result = run_cli(["index", big, "--split", "test", "-o", tiny / "i.faiss", "--overwrite"])
        assert_one_line(result, f"{tiny / 'i.faiss'}: cannot write the index ({ENOSPC}); free disk space or write it elsewhere")
        assert files(tiny) == before


def test_index_into_a_missing_folder_is_one_line(store, tmp_path):
    result = run_cli(["index", store, "--split", "test", "-o", tmp_path / "nowhere" / "i.faiss"])
    assert_one_line(
        result,
        f"{tmp_path / 'nowhere' / 'i.faiss'}: cannot write the index (No such file or directory); "
        "check that the folder exists and is writable",
    )


# -- index: kills between the renames ------------------------------------------------------


def _search(store, index_file, queries):
    """``(exit status, (rows, scores) of shape (q, 5), or the error message)`` of ``clipcache search --vectors``."""
    np.save(index_file.parent / "q.npy", queries)
    result = run("search", store, "--index", index_file, "--vectors", index_file.parent / "q.npy", "-k", "5", "--json")
    if result.exit_code != 0:
        return result.exit_code, result.stderr
    import json

    doc = json.loads(result.stdout)
    hits = [r["hits"] for r in doc["results"]]
    return 0, (np.array([[h["row"] for h in hs] for hs in hits]), np.array([[h["score"] for h in hs] for hs in hits]))


def _assert_answer(answer, expected) -> None:
    rows, scores = answer
    np.testing.assert_array_equal(rows, expected.rows)
    np.testing.assert_allclose(scores, expected.scores, rtol=1e-6, atol=1e-6)


# (call of os.replace, when) -> what search serves afterwards: the old index, the new one, or a refusal
_KILLS = {
    (1, "before"): "old",  # nothing renamed yet
    (1, "after"): "refused",  # the new index file under the old sidecar
    (2, "after"): "refused",  # new index and rows, old sidecar
    (3, "before"): "refused",
    (3, "after"): "new",  # the sidecar, last, commits the set
}


# Two rebuilds of one index file: another metric (the case), and a scalar quantizer
# replacing a flat index (same metric, counts and IVF/HNSW structure: only the hashes tell them apart).
_BUILDS = {
    "metric": (({"metric": "ip"}, ["--metric", "ip"]), ({"metric": "l2"}, ["--metric", "l2"])),
    "quantizer": (({"factory": "Flat"}, ["--factory", "Flat"]), ({"factory": "SQ8"}, ["--factory", "SQ8"])),
}


@pytest.mark.parametrize("builds", list(_BUILDS))
@pytest.mark.parametrize(("call", "when"), list(_KILLS), ids=[f"{w}-{c}" for c, w in _KILLS])
def test_a_kill_between_the_renames_never_serves_a_mixed_index(store, tmp_path, call, when, builds):
    (old_kwargs, old_flags), (new_kwargs, new_flags) = _BUILDS[builds]
    out = tmp_path / "out"
    out.mkdir()
    index_file = out / "i.faiss"
    assert run("index", store, "--split", "test", *old_flags, "-o", index_file).exit_code == 0
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(20, 24)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with FeatureStore(store) as fs:
        old = build_index(fs, "test", "clip", **old_kwargs).search(queries, 5)
        new = build_index(fs, "test", "clip", **new_kwargs).search(queries, 5)
    assert not np.allclose(old.scores, new.scores)  # the two builds are told apart by their answers

    fault = Fault("os.replace", call, when)
    killed = run_cli(["index", store, "--split", "test", *new_flags, "-o", index_file], fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    status, answer = _search(store, index_file, queries)
    expected = _KILLS[(call, when)]
    if expected == "refused":
        assert status == 1, answer
        assert answer == (
            f"Error: {index_file}: the index file does not match its sidecar (content hash differs; an interrupted "
            "build?); rebuild it with build_index and StoreIndex.save (clipcache index)\n"
        )
    else:
        assert status == 0, answer
        _assert_answer(answer, old if expected == "old" else new)
    rebuilt = run("index", store, "--split", "test", *new_flags, "-o", index_file)  # the way out: build again
    assert rebuilt.exit_code == 0, rebuilt.output
    status, answer = _search(store, index_file, queries)
    assert status == 0
    _assert_answer(answer, new)


# -- fit: disk full and kills --------------------------------------------------------------

_FIT = ("--method", "knn", "--shots", "0")


@pytest.fixture
def old_model(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    models = {}
    for suffix in (".h5", ".npz"):
        assert run("fit", store, "--method", "ncm", "--shots", "1", "-o", out / f"m{suffix}").exit_code == 0
        models[suffix] = out / f"m{suffix}"
    return models


@pytest.mark.parametrize(
    ("suffix", "fault"),
    [
        (".h5", Fault("h5py.Group.create_dataset", call=2, action="enospc")),
        (".h5", Fault("os.replace", action="enospc")),
        (".npz", Fault("numpy.lib.format.write_array", action="enospc")),
        (".npz", Fault("os.replace", action="enospc")),
    ],
    ids=["h5-dataset", "h5-rename", "npz-write", "npz-rename"],
)
def test_fit_disk_full_is_one_line_and_keeps_the_previous_model(store, old_model, suffix, fault):
    model = old_model[suffix]
    before = files(model.parent)
    result = run_cli(["fit", store, *_FIT, "-o", model], fault)
    assert_one_line(result, f"{model}: cannot write the model file ({ENOSPC}); free disk space or write it elsewhere")
    assert files(model.parent) == before


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_fit_on_a_really_full_disk_keeps_the_previous_model(store, tmp_path, suffix):
    with small_tmpfs(tmp_path / "tiny", "48k") as tiny:
        model = tiny / f"m{suffix}"
        assert run("fit", store, "--method", "ncm", "--shots", "1", "-o", model).exit_code == 0
        before = files(tiny)
        big = tmp_path / "big.h5"
        write_store(big, aux=False, d=64, per_class={"train": 200, "val": 4, "test": 2})
        result = run_cli(["fit", big, *_FIT, "-o", model])
        assert_one_line(result, f"{model}: cannot write the model file ({ENOSPC}); free disk space or write it elsewhere")
        assert files(tiny) == before


def test_fit_killed_before_the_rename_keeps_the_previous_model(store, old_model):
    model = old_model[".h5"]
    before = model.read_bytes()
    killed = run_cli(["fit", store, *_FIT, "-o", model], Fault("os.replace"))
    assert killed.returncode == -signal.SIGKILL
    assert model.read_bytes() == before
    predicted = run("predict", store, model, "-o", model.parent / "p.csv")
    assert predicted.exit_code == 0, predicted.output


# -- predict and evaluate: disk full ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["predict", "{store}", "{model}", "-o", "{out}/p.csv"], "p.csv"),
        (["evaluate", "{store}", "--methods", "ncm", "--shots", "1", "--seeds", "1", "-o", "{out}/r.json"], "r.json"),
        (["evaluate", "{store}", "--methods", "ncm", "--shots", "1", "--seeds", "1", "--plot", "{out}/r.png"], "r.png"),
    ],
    ids=["predict", "evaluate-report", "evaluate-plot"],
)
def test_predict_and_evaluate_disk_full_name_the_file(store, old_model, args, name, monkeypatch):
    out = old_model[".h5"].parent
    (out / name).write_bytes(b"previous")  # not of the command's kind: --overwrite below
    before = files(out)

    def full(*_args, **_kwargs):
        raise OSError(28, ENOSPC)

    monkeypatch.setattr(os, "replace", full)
    values = {"store": store, "model": old_model[".h5"], "out": out}
    result = run(*[a.format(**values) for a in args], "--overwrite")
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith(f"Error: {out / name}: cannot write the file ({ENOSPC}); free disk space or write it elsewhere\n")
    assert files(out) == before
