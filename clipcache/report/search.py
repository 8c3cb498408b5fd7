"""``clipcache search --html``: the neighbour grid of a batch of queries, as one self-contained page."""

from __future__ import annotations

import os
import time
from pathlib import Path

from clipcache._io import atomic_output, check_output
from clipcache._version import __version__
from clipcache.errors import InvalidParameterError
from clipcache.feature_store import FeatureStore
from clipcache.report._html import HTML_PAGE, esc, page
from clipcache.report.sections import thumb_html
from clipcache.report.thumbnails import Thumbnails
from clipcache.retrieval.query import find_ids

__all__ = ["QUERY_KINDS", "write_search_html"]

#: The kinds of query a search page shows: the parameter of :func:`clipcache.retrieval.search_store` that holds them.
QUERY_KINDS = ("ids", "images", "texts", "vectors")


def _query_head(store, report, q: int, kind: str, thumbs: Thumbnails, size: int) -> str:

    label = str(report.queries[q])
    if kind == "images":
        return thumb_html(thumbs.of_file(label), size, label) + f'<div class="path">{esc(label)}</div>'
    if kind == "ids":
        split = report.index.get("split")
        for name in [split, *[s for s in store.splits if s != split]]:
            row = int(find_ids(store, name, [label])[0]) if name in store.splits else -1
            if row >= 0:
                path = str(store.paths(name, [row])[0])
                where = f"id {label} of {name}" + (f": {path}" if path != label else "")
                return thumb_html(thumbs.get(path), size, label) + f'<div class="path">{esc(where)}</div>'
        return f'<div class="querytext">id {esc(label)}</div>'
    return f'<div class="querytext">{esc(label)}</div>'


def write_search_html(
    report,
    store_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    kind: str,
    image_root: str | os.PathLike | None = None,
    thumb_px: int = 96,
    inputs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the neighbour grid of a search (the query, then its hits with scores, classes and paths).

    Parameters
    ----------
    report : SearchReport
        What :func:`clipcache.retrieval.search_store` returned.
    store_path : path
        The store that was searched.
    output : path
        The HTML file, written through :func:`clipcache._io.atomic_output`.
    kind : {"ids", "images", "texts", "vectors"}
        What the queries are: an image query shows the image file, an id query
        the stored sample's image, a text or vector query its text.
    image_root : path, optional
        Folder the store's sample paths are relative to (default: the recorded dataset root).
    thumb_px : int, default=96
        Longest side of a thumbnail; the page embeds at most ``queries x (k + 1)`` thumbnails.
    inputs : dict of str to path, optional
        Other input files (index, query images) that ``output`` must not overwrite.
    overwrite : bool, default=False
        Replace an existing ``output`` that is not a clipcache page (a page is replaced without it).

    Returns
    -------
    Path
    """

    if kind not in QUERY_KINDS:
        raise InvalidParameterError(f"kind={kind!r} is not one of {', '.join(QUERY_KINDS)}", param="kind")
    if isinstance(thumb_px, bool) or not isinstance(thumb_px, int) or not 16 <= thumb_px <= 256:
        raise InvalidParameterError(f"thumb_px={thumb_px!r} must be an integer from 16 to 256", param="thumb_px")
    check_output(output, [store_path, *(inputs or {}).values()], kind=HTML_PAGE, overwrite=overwrite)
    k = max((len(h) for h in report.hits), default=0)
    index = report.index
    metric = index.get("metric", "ip")
    score_name = "inner product" if metric == "ip" else "squared L2 distance"
    blocks = []
    with FeatureStore(store_path, "r") as store:
        thumbs = Thumbnails.for_store(store, image_root=image_root, size=thumb_px, limit=len(report.hits) * (k + 1))
        for q, found in enumerate(report.hits):
            figures = "".join(
                f'<figure class="hit" data-rank="{h.rank}" data-score="{h.score!r}">'
                f"{thumb_html(thumbs.get(h.path), thumb_px, h.class_name or h.id)}<figcaption><b>#{h.rank + 1}</b> "
                f'{h.score:.4f}<br>{esc(h.class_name or "unlabelled")}<br><span class="path">{esc(h.path)}</span>'
                "</figcaption></figure>"
                for h in found
            )
            blocks.append(
                f'<div class="query" data-query="{q}"><div class="qhead" style="width:{thumb_px + 60}px">'
                f"<h3>Query {q + 1}</h3>{_query_head(store, report, q, kind, thumbs, thumb_px)}</div>"
                f'<div class="hits">{figures}</div></div>'
            )
        store_name = str(store.path)
    missing = thumbs.missing
    note = ""
    if missing:
        note = '<ul class="notes">' + "".join(f"<li>{esc(p)}: {esc(r)}</li>" for p, r in list(missing.items())[:20]) + "</ul>"
    lead = (f'<p class="lead">{len(report.hits)} {kind[:-1] if kind != "texts" else "text"} quer'
            f'{"y" if len(report.hits) == 1 else "ies"}, top {k} of {esc(index.get("ntotal", "?"))} vectors of '
            f'{esc(index.get("split", "?"))}/{esc(index.get("feature_set", "?"))} ({esc(index.get("factory", "?"))}); '
            f"score: {score_name}.</p>")
    text = page(
        f"clipcache search: {Path(store_name).name}", f"{store_name} · {index.get('split')}/{index.get('feature_set')}",
        [("results", "Nearest neighbours", lead + "".join(blocks) + note)],
        f"Written by clipcache {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')}. A static page: no script, no network.",
    )
    with atomic_output(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(output)
