"""``clipcache report``: one self-contained HTML page about a store and the models fitted on it.

The page has no external reference: its stylesheet is inline, its figures are
inline SVG or PNG data URIs, its thumbnails are JPEG data URIs, and it has no
script. Nothing is re-extracted; the page reads the store's features, labels and
paths, the given JSON reports and model, and the images behind the paths of the
few samples it shows.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipcache._io import atomic_output, check_output
from clipcache._version import __version__
from clipcache.errors import InvalidParameterError, ReportInputError
from clipcache.feature_store import FeatureStore
from clipcache.report import sections
from clipcache.report._html import HTML_PAGE, esc, page
from clipcache.report.model import best_run, detail_from_model, nearest_rows, refit_run
from clipcache.report.shift import ood_panels
from clipcache.report.thumbnails import Thumbnails
from clipcache.retrieval import load_index
from clipcache.retrieval.query import search

__all__ = ["ReportLimits", "ReportResult", "collect_examples", "read_json", "write_report"]

logger = logging.getLogger(__name__)

_CORRECT_SAMPLE_SEED = 0


@dataclass(frozen=True)
class ReportLimits:
    """What bounds the page's size.

    Attributes
    ----------
    wrong : int, default=24
        Most confidently wrong test images shown.
    correct : int, default=12
        Correctly predicted test images shown (a seeded sample).
    n_neighbors : int, default=3
        Nearest support images shown beside each of them.
    thumb_px : int, default=64
        Longest side of a thumbnail, in pixels (16 to 256).
    top_confusions : int, default=15
        Largest confusions listed.
    table_confusion_max : int, default=20
        Up to this many classes the confusion matrix is an HTML table of counts;
        above, a PNG heat map.
    """

    wrong: int = 24
    correct: int = 12
    n_neighbors: int = 3
    thumb_px: int = 64
    top_confusions: int = 15
    table_confusion_max: int = 20

    def __post_init__(self) -> None:
        for name in ("wrong", "correct", "n_neighbors", "top_confusions", "table_confusion_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InvalidParameterError(f"{name}={value!r} must be a non-negative integer", param=name)
        if isinstance(self.thumb_px, bool) or not isinstance(self.thumb_px, (int, np.integer)) or not 16 <= self.thumb_px <= 256:
            raise InvalidParameterError(f"thumb_px={self.thumb_px!r} must be an integer from 16 to 256", param="thumb_px")

    @property
    def max_thumbnails(self) -> int:
        """The most thumbnails a report page embeds: each example and its neighbours."""
        return (self.wrong + self.correct) * (1 + self.n_neighbors)


@dataclass
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes
    ----------
    path : Path
    bytes : int
        Size of the page.
    seconds : float
        Time to write it.
    sections : list of str
        Ids of the sections with content (``store``, ``accuracy``, ``model``, ``examples``, ``shift``).
    thumbnails : int
        Images embedded.
    missing : dict of str to str
        Images shown as placeholders, with the reason.
    notes : list of str
    """

    path: Path
    bytes: int
    seconds: float
    sections: list = field(default_factory=list)
    thumbnails: int = 0
    missing: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def read_json(path: str | os.PathLike, what: str, param: str, required: tuple[str, ...]) -> dict:
    """Read a JSON report and check that it has the keys the page needs.

    Raises
    ------
    ReportInputError
        When the file cannot be read, is not JSON, or lacks one of ``required``.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot read the {what} ({exc.strerror or exc})", param=param) from None
    except ValueError as exc:
        raise ReportInputError(f"{path}: not a JSON {what} ({exc}); write the {what} again", param=param) from None
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: not a {what}: the JSON is not an object", param=param)
    lacking = [k for k in required if k not in data]
    if lacking:
        raise ReportInputError(f"{path}: not a {what}: it has no {', '.join(map(repr, lacking))}", param=param)
    return data


def collect_examples(store, detail, limits: ReportLimits, thumbs: Thumbnails, index=None) -> tuple[dict, str]:
    """The cards of the examples section: wrong and correct test images with their nearest neighbours.

    Parameters
    ----------
    store : FeatureStore
    detail : ModelDetail
    limits : ReportLimits
    thumbs : Thumbnails
    index : StoreIndex, optional
        Search this saved index for the neighbours instead of the support rows.

    Returns
    -------
    examples : dict
        What :func:`clipcache.report.sections.examples_section` shows.
    neighbour_source : str
    """

    pred, conf, y = detail.pred, detail.confidence, detail.y
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][: limits.wrong]
    right = np.flatnonzero(pred == y)
    if len(right) > limits.correct:
        right = np.sort(np.random.default_rng(_CORRECT_SAMPLE_SEED).choice(right, limits.correct, replace=False))
    right = right[np.argsort(-conf[right], kind="stable")]
    chosen = np.concatenate([wrong, right]).astype(np.int64)
    rows = detail.test_rows[chosen]
    split = detail.test_split
    paths = store.paths(split, rows) if len(rows) else []
    ids = store.ids(split, rows) if len(rows) else []
    classes = detail.classes
    k = limits.n_neighbors
    neighbours: list = [[] for _ in chosen]
    if index is not None:

        source = f"images of the index of {index.split!r}"
        if k and len(rows):
            found = search(store, index, k=min(k, index.ntotal), vectors=store.features(split, index.feature_set, rows))
            neighbours = [[(thumbs.get(h.path), h.class_name or "unlabelled", h.score) for h in hs] for hs in found]
    else:
        source = f"support images (of {detail.train_split!r})"
        if k and len(rows) and len(detail.support_rows):
            scores, nrows = nearest_rows(store, detail.train_split, detail.feature_set, detail.support_rows,
                                         store.features(split, detail.feature_set, rows), k)
            flat = np.unique(nrows)
            npaths = dict(zip(flat.tolist(), store.paths(detail.train_split, flat), strict=True))
            nlabels = dict(zip(flat.tolist(), store.labels(detail.train_split, flat).tolist(), strict=True))
            neighbours = [[(thumbs.get(npaths[r]), classes[nlabels[r]] if nlabels[r] >= 0 else "unlabelled", float(s))
                           for r, s in zip(nrows[q].tolist(), scores[q].tolist(), strict=True)] for q in range(len(rows))]
    cards = []
    for q, i in enumerate(chosen.tolist()):
        cards.append({
            "row": int(rows[q]), "id": str(ids[q]), "path": str(paths[q]), "true": classes[int(y[i])],
            "pred": classes[int(pred[i])], "confidence": float(conf[i]), "thumb": thumbs.get(paths[q]),
            "neighbours": neighbours[q],
        })
    bound = (f"At most {limits.wrong} wrong and {limits.correct} correct images, each with {k} neighbours: "
             f"at most {limits.max_thumbnails} thumbnails of at most {limits.thumb_px} px.")
    examples = {"wrong": cards[: len(wrong)], "correct": cards[len(wrong):], "bound": bound}
    return examples, source


def write_report(
    store_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    evaluation: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
    ood: str | os.PathLike | None = None,
    estimate: str | os.PathLike | None = None,
    method: str | None = None,
    shots: int | None = None,
    test_split: str | None = None,
    image_root: str | os.PathLike | None = None,
    limits: ReportLimits | None = None,
    overwrite: bool = False,
) -> ReportResult:
    """Write the report page of a store (``clipcache report``), through :func:`clipcache._io.atomic_output`.

    Sections: 1 the store; 2 accuracy against shots (with ``evaluation``); 3 one
    model in detail (``model``, or the best run of ``evaluation`` refitted); 4
    its most confidently wrong and a sample of its correct test images with their
    nearest support images; 6 OOD detection (``ood``) and label-free accuracy
    estimation (``estimate``). A section whose input is not given says so.

    Parameters
    ----------
    store_path : path
    output : path
        The HTML file; it must not be one of the inputs.
    evaluation : path, optional
        JSON of ``clipcache evaluate -o``.
    model : path, optional
        A model saved by ``clipcache fit``; shown in section 3 instead of a refit.
    index : path, optional
        A saved FAISS index of the store, searched for the neighbours in section 4
        instead of the model's support rows.
    ood, estimate : path, optional
        JSON of ``clipcache ood --json`` and ``clipcache estimate --json``.
    method, shots : optional
        Which (method, shots) of the evaluation to refit (default: the best mean top-1).
    test_split : str, optional
        Split the saved model is shown on (default: the evaluation's test split, else ``"test"``).
    image_root : path, optional
        Folder the store's sample paths are relative to (default: the dataset
        root recorded in the store).
    limits : ReportLimits, optional
    overwrite : bool, default=False
        Replace an existing ``output`` that is not a clipcache page (a page is replaced without it).

    Returns
    -------
    ReportResult

    Raises
    ------
    InvalidParameterError
        ``output`` is an input, or a bad limit (before anything is read).
    ReportInputError
        An input JSON cannot be read or does not fit the store.
    """

    started = time.perf_counter()
    limits = limits if limits is not None else ReportLimits()
    check_output(output, [store_path, evaluation, model, index, ood, estimate], kind=HTML_PAGE, overwrite=overwrite)
    if model is not None and (method is not None or shots is not None):
        raise InvalidParameterError("method and shots choose a run of the evaluation to refit; give them or a model",
                                    param="method" if method is not None else "shots")
    if evaluation is None and (method is not None or shots is not None):
        raise InvalidParameterError("method and shots choose a run of an evaluation; give the evaluation",
                                    param="evaluation")
    if model is None and test_split is not None:
        raise InvalidParameterError("test_split applies to a saved model; a refit scores the evaluation's own test split",
                                    param="test_split")
    eval_doc = read_json(evaluation, "evaluation", "evaluation", ("config", "summary", "runs")) if evaluation else None
    ood_doc = read_json(ood, "OOD report", "ood", ("feature_set", "fit_split", "in_split", "results")) if ood else None
    est_doc = read_json(estimate, "estimation report", "estimate", ("methods", "splits")) if estimate else None
    result = ReportResult(Path(output), 0, 0.0)
    with FeatureStore(store_path, "r") as store:
        description = store.describe()
        parts = [("store", "The store", sections.store_section(description))]
        result.sections.append("store")
        parts.append(("accuracy", "Accuracy against shots", sections.accuracy_section(eval_doc)))
        if eval_doc is not None:
            result.sections.append("accuracy")
        detail = _model_detail(store, eval_doc, model, method, shots, test_split, result.notes)
        thumbs = Thumbnails.for_store(store, image_root=image_root, size=limits.thumb_px, limit=limits.max_thumbnails)
        if detail is None:
            why = "; ".join(result.notes) or "no model and no evaluation were given"
            parts.append(("model", "One model in detail", f'<p class="note">Nothing to show: {esc(why)}.</p>'))
            parts.append(("examples", "Examples", '<p class="note">No model to show examples of.</p>'))
        else:
            parts.append(("model", f"One model in detail: {detail.title}", sections.model_section(detail, limits)))
            saved_index = _load_index(store, index) if index is not None else None
            examples, source = collect_examples(store, detail, limits, thumbs, saved_index)
            examples["missing"] = thumbs.missing
            parts.append(("examples", "Examples", sections.examples_section(examples, limits, source)))
            result.sections += ["model", "examples"]
        shift = _shift_body(store, ood_doc, est_doc)
        if ood_doc is not None or est_doc is not None:
            result.sections.append("shift")
        parts.append(("shift", "Out-of-distribution data and accuracy estimation", shift))
    subtitle = (f"{description['path']} · {len(description['classes'])} classes · "
                f"{', '.join(description['splits']) or 'no splits'}")
    footer = (f"Written by clipcache {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')}. A static page: no "
              "script, no network; figures and thumbnails are embedded.")
    text = page(f"clipcache report: {Path(description['path']).name}", subtitle, parts, footer)
    with atomic_output(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    result.bytes = len(text.encode("utf-8"))
    result.thumbnails = thumbs.made
    result.missing = dict(thumbs.missing)
    result.seconds = time.perf_counter() - started
    logger.info("wrote %s: %d bytes, %d thumbnails in %.2f s", output, result.bytes, result.thumbnails, result.seconds)
    return result


def _model_detail(store, eval_doc, model, method, shots, test_split, notes: list):

    if model is not None:
        split = test_split or (eval_doc or {}).get("config", {}).get("test_split") or "test"
        return detail_from_model(store, model, split)
    if eval_doc is None:
        return None
    if not eval_doc.get("runs"):
        notes.append("the evaluation holds no runs")
        return None
    return refit_run(store, eval_doc, best_run(eval_doc, method, shots))


def _load_index(store, path):

    return load_index(store, path=path)


def _shift_body(store, ood_doc, est_doc) -> str:

    if ood_doc is None and est_doc is None:
        return ('<p class="note">No OOD or accuracy-estimation results were given. Write them with <code>clipcache '
                "ood STORE --out SPLIT --json &gt; ood.json</code> and <code>clipcache estimate STORE --model M "
                "--splits S1,S2 --json &gt; est.json</code>, and pass <code>--ood</code> and <code>--estimate"
                "</code>.</p>")
    body = ""
    if ood_doc is not None:
        panels, extra = ood_panels(store, ood_doc)
        body += "<h3>Out-of-distribution detection</h3>" + sections.ood_section(ood_doc, panels, extra)
    else:
        body += '<h3>Out-of-distribution detection</h3><p class="note">No OOD results were given.</p>'
    if est_doc is not None:
        body += "<h3>Label-free accuracy estimation</h3>" + sections.estimate_section(est_doc)
    else:
        body += '<h3>Label-free accuracy estimation</h3><p class="note">No estimation results were given.</p>'
    return body
