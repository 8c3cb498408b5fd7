"""``clipcache`` commands for distribution shift: corrupt, ood, estimate.

Each command parses its flags, rejects bad combinations before any work, calls
one library function (:func:`clipcache.corrupt.corrupt_folder`,
:func:`clipcache.ood.evaluate_ood`, :func:`clipcache.estimate.estimate_store`) and
prints the result. Library modules are imported inside the commands so that
``clipcache --help`` stays fast.
"""

from __future__ import annotations

import json
import os

import click

from clipcache._io import atomic_output, check_output
from clipcache.cli.deprecation import Command
from clipcache.cli.outputs import ESTIMATE_REPORT, OOD_REPORT
from clipcache.cli.params import feature_set_option, json_option, output_option, overwrite_option

__all__ = ["COMMANDS", "corrupt_command", "estimate_command", "ood_command"]


def _emit(report: dict, text: str, as_json: bool, output: str | None) -> None:
    """Print the report (as JSON with ``--json``, else ``text``) and write its JSON to ``output``."""
    document = json.dumps(report, indent=2)
    click.echo(document if as_json else text)
    if output:
        with atomic_output(output) as tmp:
            tmp.write_text(document + "\n", encoding="utf-8")
        click.echo(f"wrote {output}", err=as_json)


def _names(value: str | None, flag: str) -> list[str] | None:
    """A comma list (checked by the library, which names the choices), or None for "all"."""
    if value is None or value.strip() == "all":
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give at least one name, or all", param_hint=flag)
    return list(dict.fromkeys(items))


def _severities(value: str) -> list[int]:
    """``1-5``, ``3`` or ``1,3,5`` -> sorted severities from 1 to 5."""
    out: set[int] = set()
    try:
        for part in value.split(","):
            lo, sep, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a range like 1-5 or a list like 1,3,5", param_hint="--severities") from None
    if not out or min(out) < 1 or max(out) > 5:
        raise click.BadParameter(f"{value!r}: severities run from 1 to 5", param_hint="--severities")
    return sorted(out)


@click.command("corrupt")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--corruptions", default="all", show_default=True,
              help="Comma list of corruptions (gaussian_noise, fog, jpeg_compression ...; see docs/shift.md), or all.")
@click.option("--severities", default="1-5", show_default=True, help="Severities: a range (1-5) or a comma list (1,3,5).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-image noise.")
@click.option("--split", help="Source split folder to corrupt (e.g. test) when SOURCE has split folders.")
@click.option("--workers", type=int, default=0, show_default=True, help="Worker processes (0: this process).")
@click.option("--overwrite", is_flag=True, help="Replace the splits and manifests of an earlier run in OUT.")
def corrupt_command(source, out, corruptions, severities, seed, split, workers, overwrite):
    """Write CIFAR-10-C-style corrupted copies of the ImageFolder tree SOURCE into OUT.

    Each (corruption, severity) becomes a split folder test-CORRUPTION-SEVERITY of PNG
    files; OUT/manifest.json records every parameter, and OUT/images.csv lets
    `clipcache extract OUT/images.csv STORE` read each copy as a split. OUT must not
    be SOURCE or a folder inside it.
    """
    from clipcache.corrupt import corrupt_folder

    names = _names(corruptions, "--corruptions")
    levels = _severities(severities)
    if workers < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--workers")
    check_output(out, [source], param="out", folder=True)
    report = corrupt_folder(source, out, corruptions=names, severities=levels, seed=seed, split=split,
                            workers=workers, overwrite=overwrite)
    m = report.manifest
    click.echo(
        f"wrote {report.written} images ({m['n_images']} source images x {len(m['splits'])} splits: "
        f"{len({s['corruption'] for s in m['splits']})} corruptions x severities {','.join(map(str, levels))}, seed {seed}) to {out}"
    )


def _out_sets(values: tuple[str, ...]) -> list[tuple[str | None, str]]:
    """``SPLIT`` or ``OTHER_STORE:SPLIT`` (OTHER_STORE an existing file) -> (store or None, split)."""
    out = []
    for value in values:
        path, sep, split = value.rpartition(":")
        if sep and path and os.path.isfile(path):
            out.append((path, split))
        elif sep and path:
            raise click.BadParameter(f"{value!r}: no store file {path!r}", param_hint="--out")
        else:
            out.append((None, value))
    return out


def _format_ood(report: dict) -> str:
    val = repr(report["val_split"]) if report["val_split"] else "held out of the fit split"
    lines = [
        f"{report['feature_set']}: fitted on {report['fit_split']!r} ({report['n_fit']} rows), in-distribution "
        f"{report['in_split']!r} ({report['n_in']} rows), validation {val}",
        f"{'method':<14} {'OOD set':<28} {'AUROC':>7} {'AUPR-in':>8} {'FPR@95':>7}",
    ]
    for r in report["results"]:
        lines.append(f"{r['method']:<14} {r['out']:<28} {r['auroc']:7.4f} {r['aupr_in']:8.4f} {r['fpr95']:7.4f}")
    return "\n".join(lines)


@click.command("ood", cls=Command)
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--fit-split", default="train", show_default=True, help="Split the detectors are fitted on.")
@click.option("--in", "in_split", default="test", show_default=True, help="In-distribution split to score.")
@click.option("--out", "out_sets", multiple=True, required=True,
              help="OOD set: SPLIT of STORE, or OTHER_STORE:SPLIT (same model); repeatable.")
@click.option("--methods", default="msp,energy,mahalanobis,rmds,vim,knn", show_default=True,
              help="Comma list of detectors (msp, maxlogit, energy, gen, mcm, mahalanobis, rmds, mahalanobis++, "
                   "vim, knn, fdbd, nnguide), or all.")
@feature_set_option("Feature set to score (the store's only one by default).")
@click.option("--val-split", help="In-distribution validation split (default: val if present, else held out of --fit-split).")
@click.option("--text", help="Text embeddings for mcm (the store's only set by default).")
@json_option("Print the results as JSON.")
@output_option("Also write the results as JSON to this file.")
@overwrite_option("an OOD report")
def ood_command(store, fit_split, in_split, out_sets, methods, feature_set, val_split, text, as_json, output,
                overwrite):
    """Score OOD detectors fitted on STORE: AUROC, AUPR-in and FPR@95 per method and OOD set."""
    from clipcache.ood import METHODS, evaluate_ood

    method_list = _names(methods, "--methods") or list(METHODS)
    outs = _out_sets(out_sets)
    if fit_split == in_split:
        raise click.UsageError("--in must differ from --fit-split: score in-distribution data the detectors did not see")
    if val_split is not None and val_split in (fit_split, in_split):
        raise click.UsageError("--val-split must differ from --fit-split and --in")
    if output:
        check_output(output, [store, *(path for path, _ in outs)], kind=OOD_REPORT, overwrite=overwrite)
    report = evaluate_ood(
        store, out_sets=outs, methods=method_list, fit_split=fit_split, in_split=in_split,
        val_split=val_split if val_split is not None else "auto", feature_set=feature_set, text=text,
    )
    _emit(report, _format_ood(report), as_json, output)


def _cell(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _format_estimate(report: dict) -> str:
    methods = report["methods"]
    lines = [
        f"validation: {report['val_split']!r}" if report["val_split"] else "validation: none (uncalibrated logits)",
        f"{'split':<28} {'n':>6} {'true':>7} " + " ".join(f"{m:>8}" for m in methods),
    ]
    for r in report["splits"]:
        cells = " ".join(f"{r['estimates'][m]:8.4f}" for m in methods)
        lines.append(f"{r['split']:<28} {r['n']:>6} {_cell(r['accuracy']):>7} {cells}")
    summary = report["summary"]
    n = summary[methods[0]]["n_splits"]
    if n >= 3:
        for key, label in (("r2", "R² (linear fit)"), ("spearman", "Spearman ρ"), ("mae", "MAE")):
            lines.append(f"{label:<43} " + " ".join(f"{_cell(summary[m][key]):>8}" for m in methods))
    else:
        lines.append(f"({n} split(s) with labels; R² and Spearman ρ need at least 3)")
    return "\n".join(lines)


@click.command("estimate")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False), help="A model from clipcache fit.")
@click.option("--splits", required=True, help="Comma list of splits to estimate.")
@click.option("--methods", help="Comma list of: ac, doc, atc-mc, atc-ne, nuclear, mano; or all "
                                "(default: all with validation data, else ac, nuclear, mano).")
@click.option("--val-split", help="Labelled validation split (default: the model's own, when it is a split of STORE).")
@json_option("Print the results as JSON.")
@output_option("Also write the results as JSON to this file.")
@overwrite_option("an accuracy-estimation report")
def estimate_command(store, model, splits, methods, val_split, as_json, output, overwrite):
    """Estimate a saved model's accuracy on unlabelled splits of STORE, beside the truth where labels exist."""
    from clipcache.estimate import METHODS, estimate_store

    split_list = _names(splits, "--splits")
    if not split_list:
        raise click.BadParameter("name the splits to estimate", param_hint="--splits")
    method_list = None if methods is None else (_names(methods, "--methods") or list(METHODS))
    if val_split is not None and val_split in split_list:
        raise click.UsageError("--val-split must not be one of the estimated --splits")
    if output:
        check_output(output, [store, model], kind=ESTIMATE_REPORT, overwrite=overwrite)
    report = estimate_store(store, model, split_list, methods=method_list,
                            val_split=val_split if val_split is not None else "auto")
    _emit(report, _format_estimate(report), as_json, output)


COMMANDS = [corrupt_command, ood_command, estimate_command]
