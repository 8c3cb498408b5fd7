"""``clipcache report``: one self-contained HTML page about a store, its evaluation and one model.

The command parses its flags, rejects bad combinations before any work, calls
:func:`clipcache.report.write_report` and prints what it wrote. The report
package (and matplotlib) is imported inside the command so that
``clipcache --help`` stays fast.
"""

from __future__ import annotations

import click

from clipcache.cli.deprecation import Command
from clipcache.cli.params import checked, output_option, overwrite_option

__all__ = ["COMMANDS", "report_command"]

_INPUT = click.Path(exists=True, dir_okay=False)


def _non_negative(ctx: click.Context, param: click.Parameter, value):
    if value is not None and value < 0:
        raise click.BadParameter(f"must be 0 or more, not {value}")
    return value


@click.command("report", cls=Command)
@click.argument("store", type=_INPUT)
@click.option("--evaluation", type=_INPUT, help="JSON of clipcache evaluate -o: accuracy against shots, and the run to refit.")
@click.option("--model", type=_INPUT, help="A model from clipcache fit, shown in detail instead of refitting the best run.")
@click.option("--method", help="Refit the best run of this method of the evaluation (default: the best method).")
@click.option("--shots", type=int, callback=_non_negative, help="Refit the best run at this number of shots.")
@click.option("--test-split", help="Split a saved --model is shown on (default: the evaluation's test split, else test).")
@click.option("--index", "index_file", type=_INPUT,
              help="A saved FAISS index of STORE, searched for the neighbours of the examples instead of the support set.")
@click.option("--ood", type=_INPUT, help="JSON of clipcache ood --json: detector metrics and score histograms.")
@click.option("--estimate", type=_INPUT, help="JSON of clipcache estimate --json: estimated against true accuracy.")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False),
              help="Folder the stored paths are relative to (default: the dataset root recorded in STORE).")
@click.option("--wrong", type=int, default=24, show_default=True, callback=_non_negative,
              help="Most confidently wrong test images shown.")
@click.option("--correct", type=int, default=12, show_default=True, callback=_non_negative,
              help="Correct test images shown (a seeded sample).")
@click.option("--neighbors", "n_neighbors", type=int, default=3, show_default=True, callback=_non_negative,
              help="Nearest support images beside each example.")
@click.option("--thumb-size", "thumb_px", type=int, default=64, show_default=True,
              help="Longest side of a thumbnail in pixels (16-256).")
@output_option("The HTML page to write.", required=True)
@overwrite_option("a clipcache HTML page")
def report_command(store, evaluation, model, method, shots, test_split, index_file, ood, estimate, image_root,
                   wrong, correct, n_neighbors, thumb_px, output, overwrite):
    """Write one self-contained HTML page about STORE: the store, accuracy against shots, one model in
    detail (per-class recall, confusion matrix, reliability), its examples with their nearest support
    images, and OOD / accuracy-estimation panels. No network, no script; thumbnails are embedded.
    """
    from clipcache.report import ReportLimits, write_report

    if model and (method or shots is not None):
        raise click.UsageError("--method and --shots choose a run of --evaluation to refit; they do not apply to --model")
    if (method or shots is not None) and not evaluation:
        raise click.UsageError("--method and --shots need --evaluation")
    if test_split and not model:
        raise click.UsageError("--test-split applies to --model; a refit scores the evaluation's own test split")
    if not output.lower().endswith((".html", ".htm")):
        raise click.BadParameter("the page's file name must end in .html or .htm", param_hint=["--output"])
    limits = checked(ReportLimits, wrong=wrong, correct=correct, n_neighbors=n_neighbors, thumb_px=thumb_px)
    result = write_report(
        store, output, evaluation=evaluation, model=model, index=index_file, ood=ood, estimate=estimate,
        method=method, shots=shots, test_split=test_split, image_root=image_root, limits=limits, overwrite=overwrite,
    )
    missing = f", {len(result.missing)} shown as placeholders" if result.missing else ""
    click.echo(
        f"wrote {output}: {result.bytes / 1e6:.2f} MB, sections {', '.join(result.sections)}; "
        f"{result.thumbnails} thumbnails{missing}; {result.seconds:.1f} s"
    )
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


COMMANDS = [report_command]
