"""The report page's content: every section, with the numbers of its inputs and of straight recomputations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipcache import FeatureStore
from clipcache.classifiers import load_model
from clipcache.errors import InvalidParameterError, ReportInputError
from clipcache.evaluation import fit_from_store
from clipcache.evaluation.metrics import expected_calibration_error
from clipcache.evaluation.options import METRICS
from clipcache.feature_store.schema import METADATA_EXTRACT
from clipcache.report import ReportLimits, write_report
from clipcache.report.model import best_run, nearest_rows
from clipcache.report.stats import reliability_bins, top_confusions
from tests.report.conftest import parse, table_rows, write_evaluation, write_image_store

SECTIONS = ["store", "accuracy", "model", "examples", "shift"]


def _values(cells) -> list[float]:
    return [float(c.attrs["data-value"]) for c in cells]


def _saved_model(store, tmp_path, shots=4, seed=3):
    path = tmp_path / "gda.h5"
    fit_from_store(store, "gda", path, shots=shots, seed=seed)
    return path


def _model_predictions(store, model):
    """Straight recomputation: the saved model's probabilities on the labelled test rows."""
    estimator, _ = load_model(model)
    with FeatureStore(store) as s:
        rows = np.flatnonzero(s.labels("test") >= 0)
        return estimator.predict_proba(s.features("test", "clip", rows)), s.labels("test", rows), rows


def test_every_section_is_present_in_order(image_store, evaluation, tmp_path):
    out = tmp_path / "r.html"
    result = write_report(image_store[0], out, evaluation=evaluation[0])
    doc = parse(out)
    assert [s.attrs["id"] for s in doc.iter("section")] == SECTIONS
    assert result.sections == ["store", "accuracy", "model", "examples"]
    assert result.bytes == len(out.read_bytes())
    assert [a.attrs["href"] for a in doc.find("nav").iter("a")] == [f"#{s}" for s in SECTIONS]
    text = out.read_text()
    assert doc.find("script") is None
    assert not any(f'{attr}="{scheme}' in text for attr in ("src", "href") for scheme in ("http", "//", "file"))
    assert "url(http" not in text and "@import" not in text


def test_store_section_shows_what_info_shows(image_store, tmp_path):
    out = tmp_path / "r.html"
    write_report(image_store[0], out)
    section = parse(out).find("section", id="store")
    with FeatureStore(image_store[0]) as s:
        d = s.describe()
    assert section.find("p", id="classes").text == ", ".join(d["classes"])
    rows = table_rows(section.find("table", css="splits"))
    assert [r[0].text for r in rows] == list(d["splits"])
    assert [[int(c.attrs["data-value"]) for c in r[1:5]] for r in rows] == [
        [v["rows"], v["labelled"], v["skipped"], v["views"]] for v in d["splits"].values()
    ]
    fs = table_rows(section.find("table", css="featuresets"))
    assert [(r[0].text, int(r[1].attrs["data-value"])) for r in fs] == [("clip", 16)]
    assert "model=synthetic" in fs[0][4].text


def test_accuracy_table_has_the_summary_numbers_and_marks_the_best(image_store, evaluation, tmp_path):
    path, doc_json = evaluation
    out = tmp_path / "r.html"
    write_report(image_store[0], out, evaluation=path)
    section = parse(out).find("section", id="accuracy")
    assert section.find("svg") is not None
    rows = table_rows(section.find("table", css="accuracy"))
    summary = doc_json["summary"]
    assert len(rows) == 4  # 2 methods x 2 shots
    for row in rows:
        method, shots = row[0].text, row[1].attrs["data-value"]
        for cell, metric in zip(row[2:], METRICS, strict=True):
            want = summary[metric][method][str(int(float(shots)))]
            assert float(cell.attrs["data-value"]) == want["mean"]
            assert float(cell.attrs["data-ci"]) == want["ci95"]
    for k in (1, 4):
        means = {m: summary["top1"][m][str(k)]["mean"] for m in summary["top1"]}
        marked = {r[0].text for r in rows if r[1].attrs["data-value"] == str(k) and "best" in r[2].classes}
        assert marked == {m for m, v in means.items() if v == max(means.values())}


def test_refit_reproduces_the_recorded_run(image_store, evaluation, tmp_path):
    path, doc_json = evaluation
    out = tmp_path / "r.html"
    write_report(image_store[0], out, evaluation=path)
    run = best_run(doc_json)
    section = parse(out).find("section", id="model")
    assert f"{run['method']}, {run['shots']}-shot, seed {run['seed']}" in section.find("h2").text
    mine, recorded = table_rows(section.find("table", css="model-metrics"))
    want = [run[m] for m in ("top1", "top5", "recall", "ece_calibrated")]  # the refit is calibrated, as scored
    assert _values(recorded[1:]) == want
    assert _values(mine[1:]) == pytest.approx(want, abs=1e-6)
    assert "differs" not in section.text


def test_best_run_is_the_best_seed_of_the_best_mean():
    runs = [
        {"method": "a", "shots": 1, "seed": 1, "top1": 0.9}, {"method": "a", "shots": 1, "seed": 2, "top1": 0.1},
        {"method": "b", "shots": 1, "seed": 1, "top1": 0.6}, {"method": "b", "shots": 1, "seed": 2, "top1": 0.7},
        {"method": "b", "shots": 2, "seed": 1, "top1": 0.2},
    ]
    assert best_run({"runs": runs}) == runs[3]
    assert best_run({"runs": runs}, method="a") == runs[0]
    assert best_run({"runs": runs}, shots=2) == runs[4]
    with pytest.raises(InvalidParameterError):
        best_run({"runs": runs}, method="a", shots=2)


def test_saved_model_recall_and_confusion_match_a_recomputation(image_store, tmp_path):
    store = image_store[0]
    model = _saved_model(store, tmp_path)
    proba, y, _ = _model_predictions(store, model)
    pred = proba.argmax(axis=1)
    cm = np.zeros((5, 5), dtype=int)
    np.add.at(cm, (y, pred), 1)
    out = tmp_path / "r.html"
    write_report(store, out, model=model)
    section = parse(out).find("section", id="model")
    assert "4-shot, seed 3" in section.find("h2").text
    rows = table_rows(section.find("table", css="recall"))
    recall = {r[0].text: float(r[2].attrs["data-value"]) for r in rows}
    assert recall == pytest.approx({f"class{c:03d}": cm[c, c] / cm[c].sum() for c in range(5)})
    shown = [float(r[2].attrs["data-value"]) for r in rows]
    assert shown == sorted(shown)  # worst first
    grid = table_rows(section.find("table", css="confusion"))
    assert [[int(c.attrs["data-value"]) for c in r[1:]] for r in grid] == cm.tolist()
    metrics = table_rows(section.find("table", css="model-metrics"))[0]
    assert float(metrics[1].attrs["data-value"]) == pytest.approx(np.mean(pred == y))
    assert float(metrics[4].attrs["data-value"]) == pytest.approx(expected_calibration_error(proba, y))


def test_reliability_bins_add_up_to_the_ece():
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(6) * 0.4, size=300)
    y = rng.integers(0, 6, 300)
    bins = reliability_bins(proba, y)
    assert sum(b["count"] for b in bins) == 300
    ece = sum(b["count"] / 300 * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert ece == pytest.approx(expected_calibration_error(proba, y), abs=1e-12)
    conf = proba.max(axis=1)
    assert bins[14]["count"] == int(np.sum(conf > 14 / 15))


def test_top_confusions_are_the_largest_off_diagonal_counts():
    cm = np.array([[5, 3, 0], [1, 4, 7], [2, 0, 9]])
    assert top_confusions(cm, 3) == [(1, 2, 7), (0, 1, 3), (2, 0, 2)]
    assert top_confusions(np.eye(3, dtype=int), 5) == []


def test_nearest_rows_match_a_full_cosine_ranking(image_store):
    with FeatureStore(image_store[0]) as s:
        candidates = np.arange(0, s.n_rows("train"), 2)
        queries = s.features("test", "clip", [0, 7, 19])
        scores, rows = nearest_rows(s, "train", "clip", candidates, queries, 4)
        X = s.features("train", "clip", candidates)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (X / np.linalg.norm(X, axis=1, keepdims=True)).T
    order = np.argsort(-sims, axis=1)[:, :4]
    assert rows.tolist() == candidates[order].tolist()
    assert scores == pytest.approx(np.take_along_axis(sims, order, axis=1), abs=1e-6)


def test_examples_show_the_most_confidently_wrong_with_their_support_neighbours(image_store, tmp_path):
    store = image_store[0]
    model = _saved_model(store, tmp_path, shots=1, seed=1)
    proba, y, rows = _model_predictions(store, model)
    pred, conf = proba.argmax(axis=1), proba.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    assert len(wrong) > 3  # one shot on noisy clusters: some mistakes to show
    want = rows[wrong[np.argsort(-conf[wrong], kind="stable")][:3]]
    out = tmp_path / "r.html"
    limits = ReportLimits(wrong=3, correct=2, n_neighbors=2)
    write_report(store, out, model=model, limits=limits)
    section = parse(out).find("section", id="examples")
    cards = list(section.iter("div", css="card-wrong"))
    assert [int(c.attrs["data-row"]) for c in cards] == want.tolist()
    assert len(list(section.iter("div", css="card-correct"))) == 2
    support = load_model(model)[1]["support"]["ids"]
    for card in cards:
        neighbours = list(card.iter("figure"))
        assert len(neighbours) == 2
        assert all(n.find("img").attrs["src"].startswith("data:image/jpeg;base64,") for n in neighbours)
    with FeatureStore(store) as s:
        support_paths = set(s.paths("train", np.flatnonzero(np.isin(s.ids("train"), support))))
    shown = {img.attrs["alt"] for card in cards for img in card.iter("img")}
    assert shown <= {f"class{c:03d}" for c in range(5)}
    assert len(list(section.iter("img", css="thumb"))) <= limits.max_thumbnails
    assert len(support_paths) == 5


def test_a_missing_or_unreadable_image_gets_a_placeholder_and_a_note(image_store, tmp_path):
    store, root = image_store
    model = _saved_model(store, tmp_path, shots=1, seed=1)
    for path in (root / "test").rglob("*.jpg"):
        if path.name == "0000.jpg":
            path.unlink()
        elif path.name == "0001.jpg":
            path.write_bytes(b"not a jpeg")
    out = tmp_path / "r.html"
    result = write_report(store, out, model=model, limits=ReportLimits(wrong=40, correct=40))
    section = parse(out).find("section", id="examples")
    placeholders = list(section.iter("div", css="ph"))
    assert placeholders
    reasons = {key.rsplit("/", 1)[-1]: why for key, why in result.missing.items()}
    assert reasons == {"0000.jpg": "file not found", "0001.jpg": "unreadable (UnidentifiedImageError)"}
    assert "image(s) shown as placeholders" in section.text
    assert all(p.attrs["title"].split("/")[-1].startswith(("0000.jpg", "0001.jpg")) for p in placeholders)


def test_without_a_dataset_root_every_image_is_a_placeholder(tmp_path):
    store, _ = write_image_store(tmp_path)
    with FeatureStore(store, "a") as s:
        s.set_metadata(METADATA_EXTRACT, {"source": str(tmp_path / "gone")})
    model = _saved_model(store, tmp_path)
    out = tmp_path / "r.html"
    result = write_report(store, out, model=model)
    section = parse(out).find("section", id="examples")
    assert section.find("img") is None and section.find("div", css="ph") is not None
    assert result.thumbnails == 0
    assert "is not a folder here" in next(iter(result.missing.values()))


def test_image_root_overrides_the_recorded_root(tmp_path):
    store, root = write_image_store(tmp_path)
    moved = root.rename(tmp_path / "moved")
    model = _saved_model(store, tmp_path)
    result = write_report(store, tmp_path / "r.html", model=model, image_root=moved)
    assert result.missing == {} and result.thumbnails > 0


def test_missing_inputs_and_optional_parts_are_said_not_failed(image_store, evaluation, tmp_path):
    out = tmp_path / "r.html"
    write_report(image_store[0], out)
    doc = parse(out)
    assert "No evaluation was given" in doc.find("section", id="accuracy").text
    assert "Nothing to show" in doc.find("section", id="model").text
    assert "No OOD or accuracy-estimation results" in doc.find("section", id="shift").text
    old = dict(evaluation[1])
    old["summary"] = {k: v for k, v in old["summary"].items() if k not in ("ece", "ece_calibrated")}
    old["ood"] = [{"method": "mahalanobis", "out": "far", "auroc": 0.75}]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    write_report(image_store[0], out, evaluation=path)
    section = parse(out).find("section", id="accuracy")
    assert "This evaluation has no ECE." in section.text
    assert "This evaluation has no ECE calibrated." in section.text
    assert len(table_rows(section.find("table", css="accuracy"))[0]) == 5  # method, shots, top-1, top-5, recall
    extra = table_rows(section.find("table", css="extra-ood"))
    assert float(extra[0][2].attrs["data-value"]) == 0.75


def test_the_page_refuses_to_overwrite_an_input(image_store, evaluation, tmp_path):
    before = evaluation[0].read_bytes()
    with pytest.raises(InvalidParameterError, match=f"is the input {evaluation[0]}") as info:
        write_report(image_store[0], evaluation[0], evaluation=evaluation[0])
    assert info.value.param == "output"
    with pytest.raises(InvalidParameterError, match=f"is the input {image_store[0]}"):
        write_report(image_store[0], image_store[0])
    assert evaluation[0].read_bytes() == before


def test_a_bad_json_input_is_a_report_input_error(image_store, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportInputError, match="not a JSON evaluation") as info:
        write_report(image_store[0], tmp_path / "r.html", evaluation=bad)
    assert info.value.param == "evaluation"
    bad.write_text(json.dumps({"results": []}))
    with pytest.raises(ReportInputError, match="no 'feature_set'"):
        write_report(image_store[0], tmp_path / "r.html", ood=bad)
    assert not (tmp_path / "r.html").exists()


def test_an_evaluation_of_another_store_is_refused(image_store, evaluation, tmp_path):
    other, _ = write_image_store(tmp_path, n_classes=4, name="other.h5")
    with pytest.raises(ReportInputError, match="classes differ"):
        write_report(other, tmp_path / "r.html", evaluation=evaluation[0])


def test_a_hundred_class_page_stays_under_the_size_bound(tmp_path):
    """Worst case for the bound: 100 classes, noisy 96 px images (they compress badly), default limits."""
    store, _ = write_image_store(tmp_path, n_classes=100, per_class={"train": 4, "val": 1, "test": 3},
                                 image_size=96, noise=60.0)
    path = tmp_path / "eval.json"
    write_evaluation(store, path, methods=("ncm", "gda"), shots=(2, 4), seeds=(1,))
    out = tmp_path / "r.html"
    result = write_report(store, out, evaluation=path)
    limits = ReportLimits()
    assert result.bytes < 5_000_000
    assert 0 < result.thumbnails <= limits.max_thumbnails
    doc = parse(out)
    assert doc.find("img", css="heatmap") is not None  # 100 classes: a PNG heat map, not a table
    assert len(table_rows(doc.find("table", css="confusions"))) == limits.top_confusions
    assert len(table_rows(doc.find("table", css="recall"))) == 100


def test_ood_and_estimate_panels_show_their_json(image_store, tmp_path):
    from clipcache.estimate import estimate_store
    from clipcache.ood import evaluate_ood

    store = image_store[0]
    ood = evaluate_ood(store, out_sets=[(None, "val")], methods=["msp", "mahalanobis", "knn"], in_split="test",
                       val_split=None)
    (tmp_path / "ood.json").write_text(json.dumps(ood))
    model = _saved_model(store, tmp_path)
    est = estimate_store(store, model, ["test", "val"], methods=["ac", "nuclear"], val_split=None)
    (tmp_path / "est.json").write_text(json.dumps(est))
    out = tmp_path / "r.html"
    result = write_report(store, out, ood=tmp_path / "ood.json", estimate=tmp_path / "est.json")
    assert "shift" in result.sections
    section = parse(out).find("section", id="shift")
    rows = table_rows(section.find("table", css="ood"))
    assert [(r[0].text, r[1].text) for r in rows] == [(r["method"], r["out"]) for r in ood["results"]]
    assert _values([r[3] for r in rows]) == [r["auroc"] for r in ood["results"]]
    assert _values([r[5] for r in rows]) == [r["fpr95"] for r in ood["results"]]
    best = max(ood["results"], key=lambda r: r["auroc"])["method"]
    assert [r[0].text for r in rows if "best" in r[3].classes] == [best]
    assert len(section.find("div", css="plot").find("svg").attrs) > 0  # the histograms
    assert "differs from the recorded" not in section.text  # rescored AUROCs equal the JSON's
    est_rows = table_rows(section.find("table", css="estimates"))
    assert [r[0].text for r in est_rows] == ["test", "val"]
    assert _values([r[2] for r in est_rows]) == [r["accuracy"] for r in est["splits"]]
    assert _values([r[3] for r in est_rows]) == [r["estimates"]["ac"] for r in est["splits"]]


def test_a_saved_index_gives_the_neighbours_instead_of_the_support_set(image_store, tmp_path):
    from clipcache.retrieval import index_store, search_store

    store = image_store[0]
    meta = index_store(store, "val", "clip")
    model = _saved_model(store, tmp_path)
    out = tmp_path / "r.html"
    write_report(store, out, model=model, index=meta["path"], limits=ReportLimits(wrong=2, correct=2, n_neighbors=3))
    section = parse(out).find("section", id="examples")
    assert "nearest images of the index of 'val'" in section.text
    card = next(section.iter("div", css="card"))
    with FeatureStore(store) as s:
        query_id = s.ids("test", [int(card.attrs["data-row"])])[0]
    hits = search_store(store, k=3, index_file=meta["path"], ids=[query_id]).hits[0]
    captions = [f.find("figcaption").text for f in card.find("div", css="neigh").iter("figure")]
    assert captions == [f"{h.class_name} {h.score:.3f}" for h in hits]


def test_a_recorded_auroc_the_store_does_not_reproduce_is_noted(image_store, tmp_path):
    from clipcache.ood import evaluate_ood

    ood = evaluate_ood(image_store[0], out_sets=[(None, "val")], methods=["mahalanobis"], in_split="test", val_split=None)
    ood["results"][0]["auroc"] -= 0.1
    (tmp_path / "ood.json").write_text(json.dumps(ood))
    write_report(image_store[0], tmp_path / "r.html", ood=tmp_path / "ood.json")
    text = parse(tmp_path / "r.html").find("section", id="shift").text
    assert f"differs from the recorded {ood['results'][0]['auroc']:.4f}" in text


def test_bad_parameters_are_refused_before_anything_is_written(image_store, tmp_path):
    out = tmp_path / "r.html"
    cases = [
        (lambda: write_report(image_store[0], out, method="gda"), "evaluation"),
        (lambda: write_report(image_store[0], out, test_split="val"), "test_split"),
        (lambda: write_report(image_store[0], out, model=tmp_path / "m.h5", shots=2), "shots"),
        (lambda: ReportLimits(thumb_px=8), "thumb_px"),
        (lambda: ReportLimits(wrong=-1), "wrong"),
        (lambda: ReportLimits(n_neighbors=1.5), "n_neighbors"),
    ]
    for call, param in cases:
        with pytest.raises(InvalidParameterError) as info:
            call()
        assert info.value.param == param
    assert not out.exists()
