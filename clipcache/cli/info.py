"""``clipcache info`` and ``clipcache drop-split``: describe a feature store, and remove a split from it."""

from __future__ import annotations

import json

import click

from clipcache.cli.params import json_option
from clipcache.feature_store import FeatureStore
from clipcache.feature_store.schema import (
    COMPILED,
    DECODE,
    METADATA_SHARD,
    MODEL_KEYS,
    PRECISION,
    compiled_of,
    decode_of,
    precision_of,
)

__all__ = ["COMMANDS", "drop_split", "format_description", "info"]


def _provenance_line(prov: dict) -> str:
    parts = [f"{k}={str(prov[k])[:16] if k == 'weights_sha256' else prov[k]}" for k in MODEL_KEYS if prov.get(k)]
    return ", ".join(parts) or "no provenance"


def _precision_line(prov: dict) -> str:
    """The precision a feature set was computed in, or how one that records none is read."""
    if PRECISION in prov:
        return f"    precision: {prov[PRECISION]}"
    return f"    precision: not recorded (an older release wrote it; read as {precision_of(prov)})"


def format_description(d: dict) -> str:
    """Render :meth:`FeatureStore.describe` as the human-readable ``info`` text."""
    lines = [
        f"{d['path']}  ({d['format']}, created {d['created']} by clipcache {d['clipcache_version']})",
        f"classes ({len(d['classes'])}): {', '.join(d['classes'][:10])}{' ...' if len(d['classes']) > 10 else ''}",
        "splits:",
    ]
    if not d["splits"]:
        lines.append("  (none)")
    extracted = (d["metadata"].get(METADATA_SHARD) or {}).get("items", {})
    for name, s in d["splits"].items():
        lines.extend(_split_lines(d["path"], name, s, name in extracted))
    lines.append("feature sets:")
    if not d["feature_sets"]:
        lines.append("  (none)")
    for name, f in d["feature_sets"].items():
        norm = "L2-normalised" if f["normalized"] else "not normalised"
        lines.append(f"  {name}: dim {f['dim']}, {f['dtype']}, {norm}; {_provenance_line(f['provenance'])}")
        lines.append(_precision_line(f["provenance"]))
        if f["provenance"].get(DECODE) or f["provenance"].get(COMPILED):
            tower = "compiled" if compiled_of(f["provenance"]) else "eager"
            lines.append(f"    decoded on the {decode_of(f['provenance'])} path; {tower} image tower")
        pre = f["provenance"].get("preprocess")
        if pre:
            lines.append(f"    preprocess: {json.dumps(pre, sort_keys=True)}")
        libs = f["provenance"].get("library_versions")
        if libs:
            lines.append("    versions: " + ", ".join(f"{k} {v}" for k, v in sorted(libs.items())))
    lines.append("text embeddings:")
    if not d["text"]:
        lines.append("  (none)")
    for name, t in d["text"].items():
        kind = f"{t['templates']} templates" if t["templates"] is not None else "per-class descriptions"
        lines.append(f"  {name}: {t['prompts']} prompts ({kind}), dim {t['dim']}; {_provenance_line(t['provenance'])}")
    return "\n".join(lines)


def _split_lines(path: str, name: str, s: dict, extracted: bool) -> list[str]:
    """The lines of one split, with the way out of an incomplete, damaged or unreadable one."""
    drop = f"clipcache drop-split {path} {name}"
    if "damaged" in s:
        return [f"  {name}: DAMAGED, cannot be read; drop it: {drop}"]
    state = "complete" if s["complete"] else "INCOMPLETE"
    extra = f", {s['skipped']} skipped" if s["skipped"] else ""
    extra += f", {s['views']} views" if s["views"] > 1 else ""
    lines = [f"  {name}: {s['rows']} rows ({s['labelled']} labelled{extra}), {state}"]
    missing = s.get("missing_sources", {})
    for fs, rows in s["features"].items():
        gone = f", UNREADABLE: shard files missing beside the store: {', '.join(missing[fs])}" if fs in missing else ""
        lines.append(f"    {fs}: {rows} rows{gone}")
    if not s["complete"]:
        finish = "finish it with clipcache extract --resume (the same flags)" if extracted else "resume the command that wrote it"
        lines.append(f"    {finish}, or drop it: {drop}")
    return lines


@click.command()
@click.argument("store", type=click.Path(dir_okay=False))
@json_option("Print the description as JSON.")
def info(store: str, as_json: bool) -> None:
    """Show the splits, classes, feature sets (with their provenance and precision) and completion state of STORE."""
    with FeatureStore(store, "r") as fs:
        description = fs.describe()
    if as_json:
        click.echo(json.dumps(description, indent=2, sort_keys=True))
    else:
        click.echo(format_description(description))


@click.command("drop-split")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.argument("split")
@click.option("--force", is_flag=True, help="Also drop a complete split.")
def drop_split(store: str, split: str, force: bool) -> None:
    """Delete SPLIT of STORE, such as one an interrupted command left incomplete, so that its name can be used again.

    A complete split is dropped only with --force. The file does not shrink.
    """
    with FeatureStore(store, "a") as fs:
        rows = fs.drop_split(split, force=force)
    click.echo(f"Dropped split {split!r} ({rows} rows) from {store}")


COMMANDS = [info, drop_split]
