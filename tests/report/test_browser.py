"""The pages in a real browser: headless Chromium renders them, every image decodes, the console stays clean.

Outside CI the tests skip when chromium is absent; in CI (``CLIPCACHE_CI=1``, set
by .ci/run, which installs Debian's ``chromium`` with apt) a missing chromium fails.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from clipcache.evaluation import fit_from_store
from clipcache.report import write_report, write_search_html
from clipcache.retrieval import index_store, search_store
from tests.report.browser import Browser, find_chromium
from tests.report.conftest import parse, write_evaluation, write_image_store

_IMAGES = "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.className])"


@pytest.fixture
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CLIPCACHE_CI") == "1":
            pytest.fail("CLIPCACHE_CI=1 but chromium is not installed; .ci/run installs it with apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return exe


def _variance(path) -> float:
    """Grey-level variance of a screenshot: about 0 for a blank page."""
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    return float(pixels.var())


@pytest.mark.slow
def test_the_report_renders_with_every_image_decoded_and_no_console_error(chromium, tmp_path):
    from clipcache.estimate import estimate_store
    from clipcache.ood import evaluate_ood

    store, root = write_image_store(tmp_path)
    (root / "test/class001/0000.jpg").unlink()  # a placeholder must not be a broken <img>
    evaluation = tmp_path / "eval.json"
    write_evaluation(store, evaluation)
    (tmp_path / "ood.json").write_text(json.dumps(
        evaluate_ood(store, out_sets=[(None, "val")], methods=["msp", "knn"], in_split="test", val_split=None)))
    model = tmp_path / "m.h5"
    fit_from_store(store, "gda", model, shots=4, seed=1)
    (tmp_path / "est.json").write_text(json.dumps(estimate_store(store, model, ["test", "val"], methods=["ac"], val_split=None)))
    out = tmp_path / "report.html"
    write_report(store, out, evaluation=evaluation, ood=tmp_path / "ood.json", estimate=tmp_path / "est.json")
    n_img = len(list(parse(out).iter("img")))
    with Browser(chromium, width=1280, height=1000) as browser:
        browser.open(out.as_uri())
        images = browser.evaluate(_IMAGES)
        svgs = browser.evaluate("document.querySelectorAll('svg').length")
        shot = browser.screenshot(tmp_path / "report.png")
        browser.call("Emulation.setEmulatedMedia", {"media": "print"})
        printed_nav = browser.evaluate("getComputedStyle(document.querySelector('nav')).display")
        errors = list(browser.errors)
    assert len(images) == n_img and n_img > 20
    assert [i for i in images if not (i[0] and i[1] > 0 and i[2] > 0)] == []
    assert svgs >= 4  # accuracy, reliability, OOD histograms, estimates
    assert errors == []
    width, height = Image.open(shot).size
    assert width == 1280 and height > 2000
    assert _variance(shot) > 200.0
    assert printed_nav == "none"  # the print stylesheet applies


@pytest.mark.slow
def test_the_search_page_renders(chromium, tmp_path):
    store, _ = write_image_store(tmp_path)
    index_store(store, "train", "clip")
    report = search_store(store, k=5, ids=["test/class000/0001.jpg", "test/class003/0002.jpg"])
    out = write_search_html(report, store, tmp_path / "search.html", kind="ids")
    with Browser(chromium, width=1100, height=700) as browser:
        browser.open(out.as_uri())
        images = browser.evaluate(_IMAGES)
        shot = browser.screenshot(tmp_path / "search.png", full_page=False)
        errors = list(browser.errors)
    assert len(images) == 2 * (5 + 1)
    assert all(i[0] and i[1] > 0 for i in images)
    assert errors == []
    assert _variance(shot) > 200.0


@pytest.mark.slow
def test_the_checks_catch_a_broken_image_a_console_error_and_a_blank_page(chromium, tmp_path):
    """The harness itself: what the two tests above assert can fail."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom")</script></body></html>')
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    with Browser(chromium, width=400, height=300) as browser:
        browser.open(page.as_uri())
        images = browser.evaluate(_IMAGES)
        errors = list(browser.errors)
        browser.open(blank.as_uri())
        shot = browser.screenshot(tmp_path / "blank.png", full_page=False)
    assert images[0][1] == 0
    assert any("boom" in e for e in errors)
    assert _variance(shot) < 1.0
