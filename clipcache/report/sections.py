"""The body of each section of the report page, as HTML strings.

Each function takes what it shows (the store description, an evaluation report,
a :class:`~clipcache.report.model.ModelDetail`, OOD and estimation reports) and
returns HTML. Where an input lacks an optional part, the section shows what it
has and says what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from clipcache.evaluation.metrics import all_metrics, expected_calibration_error
from clipcache.evaluation.options import METRICS, format_hyperparameters
from clipcache.feature_store.schema import METADATA_EXTRACT, MODEL_KEYS
from clipcache.report import plots
from clipcache.report._html import Cell, esc, notes, num_cell, pct, table, text_cell
from clipcache.report.stats import (
    confusion_matrix,
    per_class_recall,
    reliability_bins,
    top_confusions,
)

__all__ = [
    "METRIC_LABELS",
    "accuracy_section",
    "estimate_section",
    "examples_section",
    "model_section",
    "ood_section",
    "store_section",
    "thumb_html",
]

#: How the page names the evaluation's metrics; a metric not listed is shown under its key.
METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "recall": "mean recall", "ece": "ECE", "ece_calibrated": "ECE calibrated"}
_PERCENT_METRICS = ("top1", "top5", "recall")
_EXTRACT_KEYS = ("source", "max_per_class", "val_per_class", "image_size", "augment_views", "seed", "dtype",
                 "normalize", "batch_size")


def _fmt(metric: str, value: float | None, ci: float | None = None) -> str:
    if value is None:
        return "n/a"
    if metric in _PERCENT_METRICS:
        return pct(value) + (f" ± {pct(ci)}" if ci else "")
    return f"{value:.4f}" + (f" ± {ci:.4f}" if ci else "")


def _plain(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


# --------------------------------------------------------------------------- 1. the store


def store_section(d: dict) -> str:
    """Section 1: what ``clipcache info`` shows (:meth:`FeatureStore.describe`)."""
    classes = d.get("classes", [])
    out = [
        f'<p class="lead"><code>{esc(d["path"])}</code> &middot; {esc(d["format"])} &middot; created '
        f'{esc(d.get("created", ""))} by clipcache {esc(d.get("clipcache_version", ""))} &middot; uuid '
        f'<code>{esc(d.get("uuid", ""))}</code></p>',
        f'<h3>Classes ({len(classes)})</h3><p id="classes">{esc(", ".join(classes))}</p>',
    ]
    sets = list(d.get("feature_sets", {}))
    rows = []
    for name, s in d.get("splits", {}).items():
        rows.append([
            text_cell(name), num_cell(s["rows"], str(s["rows"])), num_cell(s["labelled"], str(s["labelled"])),
            num_cell(s["skipped"], str(s["skipped"])), num_cell(s["views"], str(s["views"])),
            text_cell("complete" if s["complete"] else "INCOMPLETE", css="" if s["complete"] else "bad"),
            *[num_cell(s["features"].get(f), str(s["features"].get(f, "-"))) for f in sets],
        ])
    head = ["split", "rows", "labelled", "skipped", "views", "state", *[f"rows of {f}" for f in sets]]
    splits = "<h3>Splits</h3>" + (table(head, rows, css="splits", num_cols=range(1, 5)) if rows else "<p>none</p>")
    extract = (d.get("metadata") or {}).get(METADATA_EXTRACT)
    settings = ""
    if extract:
        erows = [[k, _plain(extract.get(k))] for k in _EXTRACT_KEYS if extract.get(k) is not None]
        settings = "<h3>Extraction</h3>" + table(["setting", "value"], erows, css="extract")
    out.append(f'<div class="row"><div>{splits}</div><div>{settings}</div></div>')
    frows = []
    for name, f in d.get("feature_sets", {}).items():
        prov = f.get("provenance", {})
        model = ", ".join(f"{k}={str(prov[k])[:16] if k == 'weights_sha256' else prov[k]}" for k in MODEL_KEYS if prov.get(k))
        frows.append([text_cell(name), num_cell(f["dim"], str(f["dim"])), f["dtype"],
                      "yes" if f["normalized"] else "no", model or "none recorded", prov.get("dataset", "")])
    out.append("<h3>Feature sets and provenance</h3>"
               + table(["feature set", "dim", "dtype", "L2-normalised", "model", "dataset"], frows, css="featuresets"))
    trows = [[name, t["prompts"], "per-class descriptions" if t["templates"] is None else t["templates"], t["dim"]]
             for name, t in d.get("text", {}).items()]
    out.append("<h3>Text embeddings</h3>"
               + (table(["name", "prompts", "templates", "dim"], trows) if trows else "<p>none</p>"))
    return "".join(out)


# --------------------------------------------------------------------------- 2. accuracy against shots


def _curves(summary: dict, metric: str, order: Sequence[str] = ()) -> dict:
    """``{method: {shots: (mean, ci95)}}`` of one metric of an evaluation summary, methods in ``order`` first."""
    by_method = summary.get(metric, {})
    methods = [m for m in order if m in by_method] + [m for m in by_method if m not in order]
    return {m: {int(k): (v["mean"], v["ci95"]) for k, v in by_method[m].items()} for m in methods}


def best_per_shot(summary: dict) -> dict:
    """``{shots: [method, ...]}``: the methods with the highest mean top-1 at each shot count (all of them on a tie)."""
    means: dict = {}
    for method, by in _curves(summary, "top1").items():
        for k, (mean, _) in by.items():
            means.setdefault(k, {})[method] = mean
    return {k: [m for m, v in by.items() if v == max(by.values())] for k, by in means.items()}


def accuracy_section(evaluation: dict | None) -> str:
    """Section 2: accuracy against shots with 95% CI bands, and the metrics table; best per shot marked."""
    if evaluation is None:
        return ('<p class="note">No evaluation was given. Write one with <code>clipcache evaluate STORE -o '
                'eval.json</code> and pass it with <code>--evaluation eval.json</code>.</p>')
    config, summary = evaluation.get("config", {}), evaluation.get("summary", {})
    if not summary.get("top1"):
        return '<p class="note">The evaluation holds no top-1 summary, so there is nothing to plot.</p>'
    metrics = [m for m in METRICS if m in summary] + sorted(m for m in summary if m not in METRICS)
    missing = [m for m in METRICS if m not in summary]
    best = best_per_shot(summary)
    val = config.get("val") or {}
    lead = (
        f'<p class="lead">Feature set <b>{esc(config.get("feature_set", "?"))}</b>, base {esc(config.get("base", "?"))}; '
        f'test split <b>{esc(config.get("test_split", "?"))}</b> ({esc(config.get("n_test", "?"))} images); validation '
        f'{esc(val.get("split", "?"))}{" (carved from train)" if val.get("carved") else ""}, {esc(val.get("n", "?"))} '
        f'images; mean &plusmn; 95% CI over seeds {esc(", ".join(map(str, config.get("seeds", []))) or "?")}.</p>'
    )
    curves = _curves(summary, "top1", config.get("methods") or ())
    figure = plots.svg(plots.accuracy_figure(curves, best, "top-1 accuracy"))
    rows = []
    for k in sorted(best):
        for method in curves:
            cells = summary["top1"][method].get(str(k))
            if cells is None:
                continue
            row: list = [text_cell(method), num_cell(k, str(k))]
            for metric in metrics:
                v = summary.get(metric, {}).get(method, {}).get(str(k))
                mean, ci = (v["mean"], v["ci95"]) if v else (None, None)
                extra = "" if ci is None else f' data-ci="{float(ci)!r}"'
                row.append(num_cell(mean, _fmt(metric, mean, ci), best=metric == "top1" and method in best[k], extra=extra))
            rows.append(row)
    head = ["method", "shots", *[METRIC_LABELS.get(m, m) + (" (%)" if m in _PERCENT_METRICS else "") for m in metrics]]
    note_list = [f"This evaluation has no {METRIC_LABELS.get(m, m)}." for m in missing]
    note_list.append("★ marks the best top-1 at each shot count (every method on a tie); in the plot, a ring marks it. Mean recall is the "
                     "mean over classes of the per-class recall (balanced accuracy).")
    extras = _extra_parts(evaluation)
    return (
        lead + '<div class="row"><div class="plot">' + figure + "</div><div>"
        + table(head, rows, css="accuracy", num_cols=range(1, len(head))) + notes(note_list) + "</div></div>" + extras
    )


def _extra_parts(evaluation: dict) -> str:
    """Parts of an evaluation beyond config, summary, runs and supports (newer releases add some), as tables."""
    out = []
    for key, value in evaluation.items():
        if key in ("config", "summary", "runs", "supports"):
            continue
        records = value if isinstance(value, list) else [value] if isinstance(value, dict) else None
        if records and all(isinstance(r, dict) for r in records):
            head = list(dict.fromkeys(k for r in records for k in r))
            body = [[_cell_of(r.get(h)) for h in head] for r in records]
            out.append(f"<h3>{esc(key)}</h3>" + table(head, body, css=f"extra-{esc(key)}"))
        else:
            out.append(f"<h3>{esc(key)}</h3><p><code>{esc(_plain(value))}</code></p>")
    return "".join(out)


def _cell_of(value) -> Cell | str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _plain(value)
    return num_cell(value, f"{value:.4f}" if isinstance(value, float) else str(value))


# --------------------------------------------------------------------------- 3. one model in detail


def model_section(detail, limits) -> str:
    """Section 3: the model's metrics, per-class recall (worst first), confusion heat map, reliability diagram."""

    classes, n_classes = detail.classes, len(detail.classes)
    metrics = all_metrics(detail.proba, detail.y)
    hp = format_hyperparameters(detail.hyperparameters, " = ")
    out = [
        f'<p class="lead"><b>{esc(detail.title)}</b>: {esc(detail.origin)}. Feature set {esc(detail.feature_set)}, '
        f'support from {esc(detail.train_split)!s} ({len(detail.support_rows)} rows), scored on '
        f'<b>{esc(detail.test_split)}</b> ({len(detail.y)} labelled images); hyper-parameters: {esc(hp)}.</p>'
    ]
    head = ["", *[METRIC_LABELS[m] + (" (%)" if m in _PERCENT_METRICS else "") for m in METRICS if m in metrics]]
    rows = [[text_cell("this model"), *[num_cell(metrics[m], _fmt(m, metrics[m])) for m in METRICS if m in metrics]]]
    if detail.recorded:
        rows.append([text_cell("recorded by the evaluation"),
                     *[num_cell(detail.recorded.get(m), _fmt(m, detail.recorded.get(m))) for m in METRICS if m in metrics]])
    out.append(table(head, rows, css="model-metrics", num_cols=range(1, len(head))))
    cm = confusion_matrix(detail.y, detail.pred, n_classes)
    recall = per_class_recall(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = sorted((c for c in range(n_classes) if cm[c].sum()), key=lambda c: (recall[c], c))
    rrows = []
    for c in order:
        j = int(off[c].argmax())
        confused = f"{classes[j]} ({off[c, j]})" if off[c, j] else "-"
        rrows.append([text_cell(classes[c]), num_cell(int(cm[c].sum()), str(int(cm[c].sum()))),
                      num_cell(float(recall[c]), pct(recall[c])), confused])
    recall_table = table(["class", "test images", "recall (%)", "most often predicted instead"], rrows,
                         css="recall", num_cols=(1, 2))
    bins = reliability_bins(detail.proba, detail.y)
    ece = expected_calibration_error(detail.proba, detail.y)
    out.append(
        '<div class="row"><div><h3>Per-class recall, worst first</h3><div class="scroll">' + recall_table
        + '</div></div><div class="plot"><h3>Reliability</h3>' + plots.svg(plots.reliability_figure(bins, ece))
        + '<p class="note">15 equal-width confidence bins; bars are the accuracy in each bin, the hatched part '
        "the gap to the mean confidence; a calibrated model follows the diagonal.</p></div></div>"
    )
    out.append(_confusion(cm, classes, limits))
    out.append(notes(detail.notes))
    return "".join(out)


def _confusion(cm: np.ndarray, classes: Sequence[str], limits) -> str:
    n = len(classes)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    pairs = top_confusions(cm, limits.top_confusions)
    listing = ""
    if pairs:
        rows = [[text_cell(classes[i]), text_cell(classes[j]), num_cell(c, str(c)), num_cell(rates[i, j], pct(rates[i, j]))]
                for i, j, c in pairs]
        listing = ("<h3>Top confusions</h3>"
                   + table(["true class", "predicted as", "images", "share of the class (%)"], rows,
                           css="confusions", num_cols=(2, 3)))
    if n <= limits.table_confusion_max:
        head = '<tr><th>true \\ predicted</th>' + "".join(f'<th class="col">{esc(c)}</th>' for c in classes) + "</tr>"
        body = []
        for i in range(n):
            cells = []
            for j in range(n):
                shade = rates[i, j] ** 0.5
                ink = "#fff" if shade > 0.6 else "#1d2330"
                rgb = tuple(int(round(255 - shade * (255 - t))) for t in (35, 88, 196))
                cells.append(f'<td data-value="{int(cm[i, j])}" style="background:rgb{rgb};color:{ink}">{int(cm[i, j])}</td>')
            body.append(f"<tr><th>{esc(classes[i])}</th>{''.join(cells)}</tr>")
        grid = f'<table class="confusion"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
        caption = "Counts of test images; rows are the true class, columns the predicted one; shade: share of the row."
        return ('<div class="row"><div><h3>Confusion matrix</h3>' + grid + f'<p class="note">{caption}</p></div><div>'
                + listing + "</div></div>")
    image = plots.png_uri(plots.confusion_figure(rates, classes), dpi=100)
    caption = (f"{n} classes: the heat map shows the share of each true class (rows) given to each predicted class "
               "(columns), on a square-root scale; the largest confusions are listed below it.")
    return (f'<h3>Confusion matrix</h3><div class="plot"><img class="heatmap" alt="confusion matrix heat map" src="{image}"></div>'
            f'<p class="note">{esc(caption)}</p>' + listing)


# --------------------------------------------------------------------------- 4. examples


def thumb_html(thumb, size: int, alt: str) -> str:
    """An ``<img>`` of a :class:`~clipcache.report.thumbnails.Thumbnail`, or a placeholder box with its note."""
    if thumb.uri is None:
        return (f'<div class="ph" style="width:{size}px;height:{size}px" title="{esc(thumb.key)}: {esc(thumb.note)}">'
                f"no image<br>{esc(thumb.note)}</div>")
    return f'<img class="thumb" width="{size}" height="{size}" alt="{esc(alt)}" src="{thumb.uri}">'


def examples_section(examples: dict, limits, neighbour_source: str) -> str:
    """Section 4: grids of the most confidently wrong test images and of a sample of correct ones.

    Parameters
    ----------
    examples : dict
        ``{"wrong": [card, ...], "correct": [...], "bound": str, "missing": {key: reason}}``,
        each card ``{"row", "id", "path", "true", "pred", "confidence", "thumb", "neighbours":
        [(thumb, class name, score), ...]}`` (built by :func:`clipcache.report.page.collect_examples`).
    limits : ReportLimits
    neighbour_source : str
        What the neighbours were searched in, in words.
    """
    size = limits.thumb_px
    out = [f'<p class="lead">Each card: the test image, its true and predicted class with the confidence, then its '
           f"{limits.n_neighbors} nearest {esc(neighbour_source)} with the cosine similarity: green where a neighbour "
           f"has the true class, red where it has the wrongly predicted one. {esc(examples['bound'])}</p>"]
    for key, title, empty in (
        ("wrong", "Most confidently wrong", "The model gets every test image right."),
        ("correct", "A sample of correct predictions", "The model gets no test image right."),
    ):
        cards = examples[key]
        out.append(f'<h3>{title} ({len(cards)})</h3>')
        if not cards:
            out.append(f'<p class="note">{empty}</p>')
            continue
        grid = []
        for card in cards:
            verdict = "ok" if card["true"] == card["pred"] else "bad"
            neigh = "".join(
                f'<figure>{thumb_html(t, size * 3 // 4, name)}<figcaption class="{_neighbour_class(name, card)}">'
                f"{esc(name)}<br>{score:.3f}</figcaption></figure>"
                for t, name, score in card["neighbours"]
            )
            grid.append(
                f'<div class="card card-{key}" data-row="{card["row"]}"><div class="main">'
                f'{thumb_html(card["thumb"], size, card["true"])}</div>'
                f'<div class="facts">true: <b>{esc(card["true"])}</b><br>predicted: <span class="{verdict}">'
                f'{esc(card["pred"])}</span> ({card["confidence"]:.3f})<div class="path">{esc(card["path"])}</div>'
                f'<div class="neigh">{neigh}</div></div></div>'
            )
        out.append(f'<div class="grid">{"".join(grid)}</div>')
    missing = examples.get("missing") or {}
    if missing:
        shown = list(missing.items())[:10]
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        out.append(notes([f"{len(missing)} image(s) shown as placeholders{more}:"]
                         + [f"{k}: {v}" for k, v in shown]))
    return "".join(out)


def _neighbour_class(name: str, card: dict) -> str:
    """Green for a neighbour of the true class, red for one of the wrongly predicted class."""
    if name == card["true"]:
        return "ok"
    return "bad" if name == card["pred"] else ""


# --------------------------------------------------------------------------- 6. OOD and estimation


def ood_section(ood: dict, panels: list, extra_notes: list[str]) -> str:
    """Section 6a: the OOD detectors' metrics per OOD set (best AUROC marked), and their score histograms."""
    results = ood.get("results", [])
    best: dict = {}
    for r in results:
        if r.get("auroc") is not None and r["auroc"] > best.get(r["out"], (None, -1.0))[1]:
            best[r["out"]] = (r["method"], r["auroc"])
    rows = []
    for r in results:
        is_best = best.get(r["out"], (None,))[0] == r["method"]
        rows.append([text_cell(r["method"]), text_cell(r["out"]), num_cell(r.get("n_out"), str(r.get("n_out", "?"))),
                     num_cell(r.get("auroc"), _fmt("auroc", r.get("auroc")), best=is_best),
                     num_cell(r.get("aupr_in"), _fmt("aupr", r.get("aupr_in"))),
                     num_cell(r.get("fpr95"), _fmt("fpr", r.get("fpr95"))),
                     num_cell(r.get("in_kept"), _fmt("kept", r.get("in_kept")))])
    lead = (f'<p class="lead">Detectors fitted on <b>{esc(ood.get("fit_split", "?"))}</b> ({esc(ood.get("n_fit", "?"))} '
            f'rows) of {esc(ood.get("feature_set", "?"))}; in-distribution <b>{esc(ood.get("in_split", "?"))}</b> '
            f'({esc(ood.get("n_in", "?"))} rows); validation {esc(ood.get("val_split") or "held out of the fit split")}.</p>')
    head = ["detector", "OOD set", "OOD images", "AUROC", "AUPR-in", "FPR@95", "in kept at threshold"]
    body = lead + table(head, rows, css="ood", num_cols=range(2, 7))
    if panels:
        body += '<div class="plot">' + plots.svg(plots.ood_figure(panels, ood.get("in_split", "in"))) + "</div>"
    return body + notes(["★ marks the best AUROC per OOD set.", *extra_notes])


def estimate_section(estimate: dict) -> str:
    """Section 6b: label-free accuracy estimates against the true accuracy, per split and per method."""
    methods = list(estimate.get("methods", []))
    rows = []
    for r in estimate.get("splits", []):
        rows.append([text_cell(r["split"]), num_cell(r.get("n"), str(r.get("n", "?"))),
                     num_cell(r.get("accuracy"), pct(r.get("accuracy"))),
                     *[num_cell(r["estimates"].get(m), pct(r["estimates"].get(m))) for m in methods]])
    split_table = table(["split", "images", "true (%)", *[f"{m} (%)" for m in methods]], rows, css="estimates",
                        num_cols=range(1, 3 + len(methods)))
    summary = estimate.get("summary", {})
    srows = []
    for m in methods:
        s = summary.get(m, {})
        srows.append([text_cell(m), num_cell(s.get("n_splits"), str(s.get("n_splits", "?"))),
                      num_cell(s.get("r2"), "n/a" if s.get("r2") is None else f"{s['r2']:.3f}"),
                      num_cell(s.get("spearman"), "n/a" if s.get("spearman") is None else f"{s['spearman']:.3f}"),
                      num_cell(s.get("mae"), pct(s.get("mae")))])
    summary_table = table(["method", "labelled splits", "R²", "Spearman ρ", "MAE (points)"], srows,
                          css="estimate-summary", num_cols=range(1, 5))
    points = {m: ([r["accuracy"] for r in estimate.get("splits", []) if r.get("accuracy") is not None],
                  [r["estimates"][m] for r in estimate.get("splits", []) if r.get("accuracy") is not None])
              for m in methods}
    note_list = [f"validation split: {estimate.get('val_split') or 'none (uncalibrated logits)'}; model: "
                 f"{estimate.get('model', '?')}."]
    figure = ""
    if any(t for t, _ in points.values()):
        figure = '<div class="plot">' + plots.svg(plots.estimate_figure(points)) + "</div>"
    else:
        note_list.append("No estimated split has labels, so estimates cannot be set against the truth.")
    return ('<div class="row"><div>' + split_table + summary_table + notes(note_list) + "</div>" + figure + "</div>")
