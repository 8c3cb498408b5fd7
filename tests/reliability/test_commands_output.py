"""Output onto input, and writing over a file of another kind: every command that writes.

Each command refuses an output path that resolves to one of its inputs (the same
path, a symlink or a hard link to it) with one line and exit status 1, before
any work, and leaves the input as it was. An existing file that is not of the
command's own output kind is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
from click.testing import CliRunner

from clipcache._io import OutputKind, check_output, same_file
from clipcache.cli.main import cli
from clipcache.errors import OutputPathError
from tests.classifiers.synth import write_store


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result) -> str:
    """The message of a one-line error (exit status 1, nothing else on stderr)."""
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len("Error: "):-1]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s.h5"
    write_store(path, aux=False)
    return path


@pytest.fixture
def model(store, tmp_path):
    path = tmp_path / "m.h5"
    assert run("fit", store, "--method", "ncm", "--shots", "2", "-o", path).exit_code == 0
    return path


def _alias(kind: str, target, link):
    """``link`` made another name of ``target``: the same path, a symlink or a hard link."""
    if kind == "same":
        return target
    os.symlink(target, link) if kind == "symlink" else os.link(target, link)
    return link


# -- the shared check ----------------------------------------------------------------


def test_same_file_sees_through_symlinks_hard_links_and_dot_dot(tmp_path):
    a = tmp_path / "a.h5"
    a.write_bytes(b"x")
    os.symlink(a, tmp_path / "sym.h5")
    os.link(a, tmp_path / "hard.h5")
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.h5").write_bytes(b"x")
    assert same_file(a, tmp_path / "sym.h5") and same_file(a, tmp_path / "hard.h5")
    assert same_file(a, tmp_path / "sub" / ".." / "a.h5")
    assert not same_file(a, tmp_path / "b.h5")  # equal bytes, another file
    assert not same_file(a, tmp_path / "new.h5")  # a file that does not exist is no input


def test_check_output_refuses_an_input_and_names_both(tmp_path):
    a = tmp_path / "a.h5"
    a.write_bytes(b"x")
    os.symlink(a, tmp_path / "sym.h5")
    with pytest.raises(OutputPathError) as err:
        check_output(tmp_path / "sym.h5", [tmp_path / "other.h5", a], param="output")
    assert str(err.value) == f"{tmp_path / 'sym.h5'}: is the input {a}; write the output to another file"
    assert err.value.param == "output" and isinstance(err.value, ValueError)
    assert check_output(tmp_path / "new.h5", [a]) == tmp_path / "new.h5"


def test_check_output_refuses_another_kind_unless_overwrite(tmp_path):
    kind = OutputKind("a report", lambda p: p.read_text() == "report")
    (tmp_path / "mine.txt").write_text("report")
    (tmp_path / "other.txt").write_text("notes")
    check_output(tmp_path / "mine.txt", [], kind=kind)  # own kind: replaced without asking
    check_output(tmp_path / "other.txt", [], kind=kind, overwrite=True)
    with pytest.raises(OutputPathError) as err:
        check_output(tmp_path / "other.txt", [], kind=kind)
    assert str(err.value) == f"{tmp_path / 'other.txt'}: exists and is not a report; give another file name or overwrite it"
    assert err.value.param == "overwrite"


def test_check_output_folder_refuses_the_input_folder_and_folders_inside_it(tmp_path):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    os.symlink(src, tmp_path / "link")
    for out in (src, src / "out", src / "cat" / "deep" / "out", tmp_path / "link" / "out"):
        with pytest.raises(OutputPathError, match="is inside the input folder|is the input"):
            check_output(out, [src], param="out", folder=True)
    check_output(tmp_path / "out", [src], folder=True)
    check_output(tmp_path / "src-c", [src], folder=True)  # a sibling whose name starts alike


# -- fit -----------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_fit_refuses_the_store_as_its_model_file(store, tmp_path, alias):
    before = store.read_bytes()
    out = _alias(alias, store, tmp_path / "link.h5")
    message = one_line_error(run("fit", store, "--method", "ncm", "--shots", "2", "-o", out))
    assert message == f"{out}: is the input {store}; write the output to another file (--output)"
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s.h5"] + (["link.h5"] if alias != "same" else []))


def test_fit_over_another_store_needs_overwrite(store, tmp_path):
    other = tmp_path / "other.h5"
    write_store(other, aux=False, seed=1)
    before = other.read_bytes()
    message = one_line_error(run("fit", store, "--method", "ncm", "--shots", "2", "-o", other))
    assert message == f"{other}: exists and is not a clipcache model file; give another file name or overwrite it (--overwrite)"
    assert other.read_bytes() == before
    result = run("fit", store, "--method", "ncm", "--shots", "2", "-o", other, "--overwrite")
    assert result.exit_code == 0, result.output
    assert other.read_bytes() != before


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_fit_replaces_its_own_model_file_without_asking(store, tmp_path, suffix):
    out = tmp_path / f"m{suffix}"
    assert run("fit", store, "--method", "ncm", "--shots", "2", "-o", out).exit_code == 0
    first = out.read_bytes()
    result = run("fit", store, "--method", "ncm", "--shots", "4", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() != first


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_fit_over_a_file_that_is_not_a_model_needs_overwrite(store, tmp_path, suffix):
    out = tmp_path / f"notes{suffix}"
    out.write_text("my notes")
    message = one_line_error(run("fit", store, "--method", "ncm", "--shots", "2", "-o", out))
    assert message.endswith("exists and is not a clipcache model file; give another file name or overwrite it (--overwrite)")
    assert out.read_text() == "my notes"


# -- predict -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["store", "model"])
@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_predict_refuses_an_input_as_its_csv(store, model, tmp_path, which, alias):
    target = store if which == "store" else model
    before = target.read_bytes()
    out = _alias(alias, target, tmp_path / "link.csv")
    message = one_line_error(run("predict", store, model, "-o", out))
    assert message == f"{out}: is the input {target}; write the output to another file (--output)"
    assert target.read_bytes() == before


def test_predict_over_a_file_that_is_not_its_csv_needs_overwrite(store, model, tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("name,score\nx,1\n")
    message = one_line_error(run("predict", store, model, "-o", out))
    assert message == f"{out}: exists and is not a predictions CSV; give another file name or overwrite it (--overwrite)"
    assert out.read_text() == "name,score\nx,1\n"
    assert run("predict", store, model, "-o", out, "--overwrite").exit_code == 0
    with open(out, newline="") as fh:
        assert next(csv.reader(fh)) == ["id", "path", "label", "pred", "pred_name", "confidence"]
    assert run("predict", store, model, "-o", out, "--split", "val").exit_code == 0  # its own kind: no flag needed
    assert len(out.read_text().splitlines()) == 1 + 40


# -- evaluate ------------------------------------------------------------------------

_EVAL = ("--methods", "ncm", "--shots", "1", "--seeds", "1")


@pytest.mark.parametrize("flag", ["-o", "--json"])
@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_evaluate_refuses_the_store_as_its_report(store, tmp_path, flag, alias):
    before = store.read_bytes()
    out = _alias(alias, store, tmp_path / "link.json")
    result = run("evaluate", store, *_EVAL, flag, out)
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith(f"Error: {out}: is the input {store}; write the output to another file (--output)\n")
    assert store.read_bytes() == before


def test_evaluate_refuses_the_store_as_its_plot(store, tmp_path):
    before = store.read_bytes()
    os.symlink(store, tmp_path / "plot.png")
    message = one_line_error(run("evaluate", store, *_EVAL, "--plot", tmp_path / "plot.png"))
    assert message == f"{tmp_path / 'plot.png'}: is the input {store}; write the output to another file (--plot)"
    assert store.read_bytes() == before


def test_evaluate_refuses_one_file_for_the_report_and_the_plot(store, tmp_path):
    result = run("evaluate", store, *_EVAL, "-o", tmp_path / "r.png", "--plot", tmp_path / "r.png")
    assert result.exit_code == 2
    assert "-o and --plot name the same file" in result.stderr
    assert not (tmp_path / "r.png").exists()


def test_evaluate_over_a_json_that_is_not_a_report_needs_overwrite(store, tmp_path):
    out = tmp_path / "config.json"
    out.write_text('{"lr": 0.1}\n')
    message = one_line_error(run("evaluate", store, *_EVAL, "-o", out))
    assert message == f"{out}: exists and is not an evaluation report; give another file name or overwrite it (--overwrite)"
    assert out.read_text() == '{"lr": 0.1}\n'
    assert run("evaluate", store, *_EVAL, "-o", out, "--overwrite").exit_code == 0
    assert set(json.loads(out.read_text())) == {"config", "summary", "runs", "supports"}
    assert run("evaluate", store, *_EVAL, "-o", out).exit_code == 0  # a report now: replaced without asking


def test_evaluate_over_a_file_that_is_not_a_png_needs_overwrite(store, tmp_path):
    out = tmp_path / "photo.png"
    out.write_bytes(b"not a png")
    message = one_line_error(run("evaluate", store, *_EVAL, "--plot", out))
    assert message == f"{out}: exists and is not a PNG image; give another file name or overwrite it (--overwrite)"
    assert out.read_bytes() == b"not a png"


# -- index ---------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_index_refuses_the_store_as_its_index_file(store, tmp_path, alias):
    before = store.read_bytes()
    out = _alias(alias, store, tmp_path / "link.faiss")
    message = one_line_error(run("index", store, "--split", "test", "-o", out))
    assert message == f"{out}: is the input {store}; write the output to another file (--output)"
    assert store.read_bytes() == before


def test_index_refuses_the_store_as_its_sidecar(store, tmp_path):
    os.symlink(store, tmp_path / "i.faiss.json")
    before = store.read_bytes()
    message = one_line_error(run("index", store, "--split", "test", "-o", tmp_path / "i.faiss"))
    assert message == f"{tmp_path / 'i.faiss.json'}: is the input {store}; write the output to another file (--output)"
    assert store.read_bytes() == before


def test_index_over_files_that_are_not_an_index_needs_overwrite(store, tmp_path):
    (tmp_path / "i.json").write_text('{"mine": 1}')
    message = one_line_error(run("index", store, "--split", "test", "-o", tmp_path / "i"))
    assert message == (
        f"{tmp_path / 'i.json'}: exists and is not a file of a clipcache index; give another file name or "
        "overwrite it (--overwrite)"
    )
    assert (tmp_path / "i.json").read_text() == '{"mine": 1}' and not (tmp_path / "i").exists()
    assert run("index", store, "--split", "test", "-o", tmp_path / "i", "--overwrite").exit_code == 0
    result = run("index", store, "--split", "val", "-o", tmp_path / "i")  # an index now: rebuilt without asking
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "i.json").read_text())["split"] == "val"


# -- corrupt -------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path):
    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    for c in ("cat", "dog"):
        (src / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(src / c / f"{i}.png")
    return src


@pytest.mark.parametrize("where", ["src", "src/out", "link/out"])
def test_corrupt_refuses_an_output_folder_inside_its_source(images, tmp_path, where):
    os.symlink(images, tmp_path / "link")
    before = sorted(p.relative_to(images) for p in images.rglob("*"))
    out = tmp_path / where
    message = one_line_error(run("corrupt", images, out, "--corruptions", "gaussian_noise", "--severities", "1"))
    assert message.startswith(f"{out}: is ") and message.endswith("write the output to another folder (OUT)")
    assert sorted(p.relative_to(images) for p in images.rglob("*")) == before



# -- ood and estimate -o ---------------------------------------------------------------


@pytest.mark.parametrize("alias", ["same", "symlink"])
def test_ood_and_estimate_refuse_an_input_as_their_json(store, model, tmp_path, alias):
    before = store.read_bytes()
    target = _alias(alias, store, tmp_path / "link.json")
    message = one_line_error(run("ood", store, "--out", "test", "--methods", "knn", "-o", target))
    assert message == f"{target}: is the input {store}; write the output to another file (--output)"
    message = one_line_error(run("estimate", store, "--model", model, "--splits", "test", "-o", target))
    assert message == f"{target}: is the input {store}; write the output to another file (--output)"
    assert store.read_bytes() == before


def test_ood_and_estimate_over_another_json_need_overwrite(store, model, tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"config": 1, "summary": 2, "runs": 3}')
    for args in (("ood", store, "--out", "test", "--methods", "knn"), ("estimate", store, "--model", model, "--splits", "test")):
        message = one_line_error(run(*args, "-o", other))
        assert message.endswith("give another file name or overwrite it (--overwrite)"), message
        assert json.loads(other.read_text()) == {"config": 1, "summary": 2, "runs": 3}
    assert run("estimate", store, "--model", model, "--splits", "test", "-o", other, "--overwrite").exit_code == 0
    assert {"model", "splits", "summary"} <= set(json.loads(other.read_text()))
