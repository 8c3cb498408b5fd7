"""``clipcache info``: describe a feature store."""

from __future__ import annotations

import json

import click

from clipcache.cli.params import json_option
from clipcache.feature_store import FeatureStore
from clipcache.feature_store.schema import MODEL_KEYS

__all__ = ["COMMANDS", "format_description", "info"]


def _provenance_line(prov: dict) -> str:
    parts = [f"{k}={str(prov[k])[:16] if k == 'weights_sha256' else prov[k]}" for k in MODEL_KEYS if prov.get(k)]
    return ", ".join(parts) or "no provenance"


def format_description(d: dict) -> str:
    """Render :meth:`FeatureStore.describe` as the human-readable ``info`` text."""
    lines = [
        f"{d['path']}  ({d['format']}, created {d['created']} by clipcache {d['clipcache_version']})",
        f"classes ({len(d['classes'])}): {', '.join(d['classes'][:10])}{' ...' if len(d['classes']) > 10 else ''}",
        "splits:",
    ]
    if not d["splits"]:
        lines.append("  (none)")
    for name, s in d["splits"].items():
        state = "complete" if s["complete"] else "INCOMPLETE"
        extra = f", {s['skipped']} skipped" if s["skipped"] else ""
        extra += f", {s['views']} views" if s["views"] > 1 else ""
        lines.append(f"  {name}: {s['rows']} rows ({s['labelled']} labelled{extra}), {state}")
        for fs, rows in s["features"].items():
            lines.append(f"    {fs}: {rows} rows")
    lines.append("feature sets:")
    if not d["feature_sets"]:
        lines.append("  (none)")
    for name, f in d["feature_sets"].items():
        norm = "L2-normalised" if f["normalized"] else "not normalised"
        lines.append(f"  {name}: dim {f['dim']}, {f['dtype']}, {norm}; {_provenance_line(f['provenance'])}")
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


@click.command()
@click.argument("store", type=click.Path(dir_okay=False))
@json_option("Print the description as JSON.")
def info(store: str, as_json: bool) -> None:
    """Show the splits, classes, feature sets, provenance and completion state of STORE."""
    with FeatureStore(store, "r") as fs:
        description = fs.describe()
    if as_json:
        click.echo(json.dumps(description, indent=2, sort_keys=True))
    else:
        click.echo(format_description(description))


COMMANDS = [info]
