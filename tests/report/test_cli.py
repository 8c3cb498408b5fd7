"""``clipcache report`` and ``clipcache search --html`` through the real command group."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from clipcache.cli.main import cli
from clipcache.retrieval import index_store
from tests.report.conftest import parse


def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_report_writes_the_page_and_says_what_it_holds(image_store, evaluation, tmp_path):
    out = tmp_path / "r.html"
    result = _run("report", image_store[0], "--evaluation", evaluation[0], "--wrong", 2, "--correct", 1,
                  "--neighbors", 1, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: ")
    doc = parse(out)
    distinct = {img.attrs["src"] for img in doc.find("section", id="examples").iter("img")}
    assert 1 < len(distinct) <= 6  # 3 examples and their neighbours; a repeated image is embedded once per use
    assert f"sections store, accuracy, model, examples; {len(distinct)} thumbnails;" in result.stdout
    wrong = len(list(doc.iter("div", css="card-wrong")))
    assert wrong <= 2 and f"Most confidently wrong ({wrong})" in doc.text
    assert len(list(doc.iter("div", css="card-correct"))) == 1


def test_report_refits_the_method_and_shots_asked_for(image_store, evaluation, tmp_path):
    out = tmp_path / "r.html"
    result = _run("report", image_store[0], "--evaluation", evaluation[0], "--method", "ncm", "--shots", 1, "-o", out)
    assert result.exit_code == 0, result.output
    assert "ncm, 1-shot" in parse(out).find("section", id="model").find("h2").text


def test_report_rejects_bad_flag_combinations_before_any_work(image_store, evaluation, tmp_path):
    out = tmp_path / "r.html"
    model = tmp_path / "m.h5"
    model.write_bytes(b"")
    cases = [
        (["--model", model, "--method", "gda"], "do not apply to --model"),
        (["--shots", 2], "--method and --shots need --evaluation"),
        (["--test-split", "val"], "--test-split applies to --model"),
        (["--thumb-size", 8], "--thumb-size"),
        (["--wrong", -1], "--wrong"),
    ]
    for extra, message in cases:
        result = _run("report", image_store[0], *extra, "-o", out)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output
    result = _run("report", image_store[0], "-o", tmp_path / "r.txt")
    assert result.exit_code == 2 and "must end in .html" in result.output
    assert not out.exists()


def test_report_refuses_to_overwrite_an_input_and_names_the_flag(image_store, evaluation, tmp_path):
    named_html = tmp_path / "eval.html"
    shutil.copy(evaluation[0], named_html)
    result = _run("report", image_store[0], "--evaluation", named_html, "-o", named_html)
    assert result.exit_code == 1
    assert f"{named_html}: is the input {named_html}; write the output to another file (--output)" in result.output
    assert json.loads(named_html.read_text()) == evaluation[1]


def test_search_html_writes_the_neighbour_grid_and_keeps_json_clean(image_store, tmp_path):
    store = image_store[0]
    index_store(store, "train", "clip")
    out = tmp_path / "s.html"
    result = _run("search", store, "--id", "test/class002/0003.jpg", "-k", 4, "--json", "--html", out)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["results"][0]["hits"]
    doc = parse(out)
    figures = list(doc.iter("figure", css="hit"))
    assert [float(f.attrs["data-score"]) for f in figures] == [h["score"] for h in hits]
    assert [f.find("span", css="path").text for f in figures] == [h["path"] for h in hits]
    query = doc.find("div", css="qhead")
    assert query.find("img") is not None and "test/class002/0003.jpg" in query.text


def test_search_html_of_a_text_query_shows_the_text(image_store, tmp_path):
    from clipcache.report import write_search_html
    from clipcache.retrieval import search_store

    store = image_store[0]
    index_store(store, "train", "clip")
    report = search_store(store, k=3, vectors=[[1.0] + [0.0] * 15])
    out = write_search_html(report, store, tmp_path / "v.html", kind="vectors")
    doc = parse(out)
    assert doc.find("div", css="querytext").text == "vector 0"
    assert len(list(doc.iter("img", css="thumb"))) == 3


def test_report_over_a_file_that_is_not_a_page_needs_overwrite(image_store, tmp_path):
    out = tmp_path / "notes.html"
    out.write_text("<html>my own notes</html>")
    result = _run("report", image_store[0], "--wrong", 0, "--correct", 0, "-o", out)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {out}: exists and is not a clipcache HTML page; give another file name or overwrite it (--overwrite)\n"
    )
    assert out.read_text() == "<html>my own notes</html>"
    assert _run("report", image_store[0], "--wrong", 0, "--correct", 0, "-o", out, "--overwrite").exit_code == 0
    before = out.read_bytes()
    assert b'<meta name="generator" content="clipcache">' in before
    again = _run("report", image_store[0], "--wrong", 0, "--correct", 0, "-o", out)  # its own page: no flag needed
    assert again.exit_code == 0, again.output


def test_search_html_over_a_file_that_is_not_a_page_needs_overwrite_before_any_search(image_store, tmp_path, monkeypatch):
    out = tmp_path / "grid.html"
    out.write_text("keep me")
    index_store(image_store[0], "train")
    import clipcache.retrieval

    monkeypatch.setattr(clipcache.retrieval, "search_store", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    result = _run("search", image_store[0], "--id", "train-00000", "-k", 2, "--html", out)
    assert result.exit_code == 1
    assert result.stderr.endswith("give another file name or overwrite it (--overwrite)\n")
    assert out.read_text() == "keep me"
