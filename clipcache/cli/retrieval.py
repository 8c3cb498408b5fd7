"""``clipcache`` commands of the retrieval stage: index, search, support.

Each command parses its flags, rejects conflicting combinations before any work,
calls one library function from :mod:`clipcache.retrieval`, and prints a table
or, with ``--json``, JSON. faiss is imported inside the commands so that
``clipcache --help`` stays fast.
"""

from __future__ import annotations

import json

import click

from clipcache._io import check_output
from clipcache.cli.deprecation import Command, deprecated_alias
from clipcache.cli.params import (
    feature_set_option,
    json_option,
    non_negative,
    output_option,
    overwrite_option,
    positive,
    stack_options,
)

__all__ = ["COMMANDS", "index", "search", "support"]

# The lists of clipcache.retrieval.backends (BACKENDS, DTYPES), spelled here so that
# `clipcache --help` does not import faiss; tests/retrieval/test_cli.py checks they agree.
_BACKENDS = ("auto", "faiss", "torch")
_DTYPES = ("float32", "float16", "bfloat16")


_AUTO = "auto takes faiss-gpu when it passes a probe search, then torch on CUDA (Flat indexes), then faiss on the CPU"


def _backend_options(what: str, *, auto: str = _AUTO, faiss_cuda: str = "cuda means faiss-gpu", dtype: bool = True):
    """--backend, --device and (``dtype``) --dtype; the help says who ``what``, what ``auto`` and faiss on cuda mean."""
    options = [
        click.option("--backend", type=click.Choice(_BACKENDS), default="auto", show_default=True,
                     help=f"Who {what}: {auto}; torch searches Flat indexes only."),
        click.option("--device", help="Torch device of the torch backend (cpu, cuda, cuda:N; default cuda when "
                                      f"torch sees a GPU); with faiss, {faiss_cuda}; with auto, cpu keeps to the CPU."),
    ]
    if dtype:
        options.append(click.option(
            "--dtype", type=click.Choice(_DTYPES), default="float32", show_default=True,
            help="Storage dtype of the torch backend's vectors (float16/bfloat16: half the memory, a little recall)."))
    return stack_options(*options)


@click.command("index", cls=Command)
@click.argument("store", type=click.Path(dir_okay=False, exists=True))
@feature_set_option("Feature set to index (the split's only one by default).")
@click.option("--split", required=True, help="Split to index.")
@click.option("--factory", default="Flat", show_default=True, help="faiss index factory string, e.g. 'IVF1024,Flat', 'IVF1024,PQ64', 'HNSW32'.")
@click.option("--metric", type=click.Choice(["ip", "l2"]), default="ip", show_default=True, help="Inner product (cosine on normalised features) or L2.")
@click.option("--gpu", is_flag=True, help="Ask for a GPU: faiss-gpu with --backend faiss (CPU otherwise, with a warning).")
@_backend_options("builds and searches", dtype=False)
@output_option("Index file; default STORE_STEM.SPLIT.FEATURE_SET.faiss beside the store (the torch backend writes "
               "only OUTPUT.json and OUTPUT.rows.npy: its vectors stay in the store).")
@click.option("--train-size", type=int, callback=positive, help="Rows sampled to train IVF/PQ (default max(64 nlist, 20000)).")
@click.option("--nprobe", type=int, callback=positive, help="IVF lists searched (default nlist/16).")
@click.option("--ef-search", type=int, callback=positive, help="HNSW efSearch (default 128).")
@click.option("--seed", type=int, default=0, show_default=True, callback=non_negative,
              help="Seed of the training sample (0 or more).")
@overwrite_option("a file of a saved index (OUTPUT, OUTPUT.rows.npy, OUTPUT.json)")
@json_option("Print the index description as JSON.")
def index(store, feature_set, split, factory, metric, gpu, backend, device, output, train_size, nprobe, ef_search, seed,
          overwrite, as_json) -> None:
    """Build an index of one feature set of one split of STORE and save it beside the store.

    The index, its row mapping and its sidecar are replaced as a set: a failed
    build leaves the previous index whole, and search refuses a set that a
    crash left half-replaced.
    """
    from clipcache.retrieval import index_store

    meta = index_store(
        store, split, feature_set, factory=factory, metric=metric, gpu=gpu, output=output,
        train_size=train_size, nprobe=nprobe, ef_search=ef_search, seed=seed, overwrite=overwrite,
        backend=backend, device=device,
    )
    if as_json:
        click.echo(json.dumps(meta, indent=2, sort_keys=True))
        return
    params = ", ".join(f"{k}={v}" for k, v in meta["search_params"].items()) or "exact"
    trained = f", trained on {meta['train_rows']} rows" if meta["train_rows"] else ""
    click.echo(
        f"indexed {meta['ntotal']} vectors of {split}/{meta['feature_set']} (dim {meta['dim']}) with {meta['factory']} "
        f"({meta['metric']}, {params}{trained}) on {meta['backend']['name']} {meta['device']} in {meta['seconds']:.1f} s"
    )
    if meta["vectors"] == "store":
        rows, sidecar = meta["files"]
        click.echo(f"wrote {sidecar} and {rows} (no .faiss file: the vectors are read from the store at load time)")
    else:
        click.echo(f"wrote {meta['path']}")


def _format_hits(report) -> str:
    lines = []
    for query, hits in zip(report.queries, report.hits, strict=True):
        lines.append(f"query: {query}")
        lines.append(f"  {'rank':>4}  {'score':>8}  {'row':>7}  {'class':<16}  {'id':<24}  path")
        for hit in hits:
            name = hit.class_name if hit.class_name is not None else "-"
            lines.append(f"  {hit.rank:>4}  {hit.score:>8.4f}  {hit.row:>7}  {name:<16}  {hit.id:<24}  {hit.path}")
    return "\n".join(lines)


_NPY_MAGIC = b"\x93NUMPY"


def _read_vectors(path: str):
    """The query vectors of a ``.npy`` file, or a usage error naming ``--vectors`` (not a .npy file, no rows)."""
    import numpy as np

    def bad(message: str):
        return click.BadParameter(f"{path}: {message}", param_hint=["--vectors"])

    with open(path, "rb") as fh:
        if fh.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise bad("not a .npy file (it lacks the NumPy header); save the vectors with numpy.save")
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise bad(f"not a readable .npy array ({str(exc).rstrip('.')})") from None
    if raw.size == 0:
        raise bad(f"holds no vectors (shape {raw.shape}); give at least one row")
    return raw


@click.command("search", cls=Command)
@click.argument("store", type=click.Path(dir_okay=False, exists=True))
@click.option("--id", "ids", multiple=True, help="Query by a stored sample id (repeatable).")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False, exists=True), help="Query by an image file (repeatable).")
@click.option("--text", "texts", multiple=True, help="Query by free text through the CLIP text tower (repeatable).")
@click.option("--vectors", type=click.Path(dir_okay=False, exists=True), help="Query by raw vectors: a .npy file of shape (q, d) or (d,).")
@click.option("-k", "k", type=int, default=10, show_default=True, callback=positive, help="Neighbours per query.")
@click.option("--split", help="Split of the index to search (needed when several are saved).")
@feature_set_option("Feature set of the index to search (needed when several are saved).")
@click.option("--index", "index_file", type=click.Path(dir_okay=False),
              help="Index, when not beside the store: its .faiss file, or its sidecar .faiss.json.")
@click.option("--nprobe", type=int, callback=positive, help="Override the IVF lists searched.")
@click.option("--ef-search", type=int, callback=positive, help="Override the HNSW efSearch.")
@click.option("--gpu", is_flag=True, help="Ask for a GPU: faiss-gpu with --backend faiss (CPU otherwise, with a warning).")
@_backend_options("searches")
@json_option("Print the results as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write the neighbour grid (thumbnails, scores, classes, paths) as one self-contained HTML page.")
@overwrite_option("a clipcache HTML page (--html)")
def search(store, ids, images, texts, vectors, k, split, feature_set, index_file, nprobe, ef_search, gpu, backend, device,
           dtype, as_json, html_path, overwrite) -> None:
    """Find the K nearest samples of STORE to stored ids, images, text or vectors."""
    given = [flag for flag, value in (("--id", ids), ("--image", images), ("--text", texts), ("--vectors", vectors)) if value]
    if len(given) != 1:
        raise click.UsageError(f"give exactly one of --id, --image, --text or --vectors (got {', '.join(given) or 'none'})")
    html_inputs = {"index_file": index_file, "vectors": vectors, **{f"images[{i}]": p for i, p in enumerate(images)}}
    if html_path:
        from clipcache.report import HTML_PAGE  # matplotlib and PIL: only for --html

        check_output(html_path, [store, *html_inputs.values()], param="html_path", kind=HTML_PAGE, overwrite=overwrite)
    raw = _read_vectors(vectors) if vectors else None
    from clipcache.retrieval import search_store

    report = search_store(
        store, k=k, split=split, feature_set=feature_set, index_file=index_file,
        ids=list(ids) or None, images=list(images) or None, texts=list(texts) or None, vectors=raw,
        nprobe=nprobe, ef_search=ef_search, gpu=gpu, backend=backend, device=device, dtype=dtype,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(_format_hits(report))
    if html_path:
        from clipcache.report import write_search_html

        kind = {"--id": "ids", "--image": "images", "--text": "texts", "--vectors": "vectors"}[given[0]]
        write_search_html(report, store, html_path, kind=kind, inputs=html_inputs, overwrite=overwrite)
        click.echo(f"wrote {html_path}", err=as_json)


@click.command("support", cls=Command)
@click.argument("store", type=click.Path(dir_okay=False, exists=True))
@click.option("--pool", required=True, help="Unlabelled pool split to retrieve from.")
@click.option("-k", "k", type=int, required=True, callback=positive, help="Images per class.")
@click.option("--to-split", required=True, help="Name of the new support split.")
@feature_set_option("Feature set to search (default: the pool's only one).")
@click.option("--text", help="Stored text embeddings naming the classes (default: the only one of matching dimension).")
@click.option("--exclusive/--no-exclusive", default=True, show_default=True,
              help="Give each image to at most one class, or let one image serve several classes.")
@deprecated_alias("--shared", "exclusive", value=False, instead="--no-exclusive")
@click.option("--use-index", is_flag=True, help="Search the pool's saved index instead of an exact scan.")
@_backend_options("scans the pool, or loads --use-index's index",
                  auto="for the scan, auto takes torch on CUDA, else faiss on the CPU; for an index, as in search",
                  faiss_cuda="cuda means faiss-gpu for --use-index's index (the scan runs faiss on the CPU)")
@json_option("Print the summary as JSON.")
def support(store, pool, k, to_split, feature_set, text, exclusive, use_index, backend, device, dtype, as_json) -> None:
    """Retrieve the K pool images nearest to each class's text embedding and write them as a new split."""
    from clipcache.retrieval import build_support_split

    summary = build_support_split(
        store, pool, to_split, k, feature_set=feature_set, text=text, exclusive=exclusive, use_index=use_index,
        backend=backend, device=device, dtype=dtype,
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"wrote split {summary['split']}: {summary['rows']} images from pool {pool} "
        f"({summary['feature_set']}, classes named by {summary['text']})"
    )
    if summary["rows"]:
        click.echo(f"scores: min {summary['min_score']:.4f}, mean {summary['mean_score']:.4f}")
    for name, count in summary["per_class"].items():
        mark = "" if count >= k else f"  (fewer than {k})"
        click.echo(f"  {name:<24} {count}{mark}")


COMMANDS = [index, search, support]
