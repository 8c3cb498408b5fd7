"""``clipcache`` commands of the classify stage: fit, predict, evaluate.

Each command parses its flags, rejects conflicting combinations before any work,
calls one library function (``clipcache.evaluation``), and prints the result.
The method, base and metric lists come from :mod:`clipcache.evaluation.options`,
which does not import scikit-learn, so ``clipcache --help`` stays fast.
"""

from __future__ import annotations

import click

from clipcache._io import check_output, same_file
from clipcache.cli.deprecation import Command, FlagWithOldValue, warn_deprecated
from clipcache.cli.outputs import EVALUATION_REPORT, MODEL_FILE, PNG_IMAGE, PREDICTIONS_CSV
from clipcache.cli.params import (
    aux_feature_set_option,
    checked,
    feature_set_option,
    non_negative,
    output_option,
    overwrite_option,
    stack_options,
)
from clipcache.evaluation.options import (
    BASE_TO_NEW_METRICS,
    BASES,
    CENTERS,
    METHODS,
    METRICS,
    TRANSDUCTIVE_METHOD,
    ProtocolOptions,
    check_methods,
    check_shots,
    format_hyperparameters,
)

__all__ = ["COMMANDS", "evaluate_command", "fit_command", "predict_command"]

_PRINT_JSON = "-"  # what ``--json`` takes when it is given without a value


def _int_list(value: str, flag: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint=[flag]) from None
    if not out:
        raise click.BadParameter("give at least one value", param_hint=[flag])
    return out


_store_options = stack_options(  # the options that make a ProtocolOptions, but --test-split
    feature_set_option("Feature set to classify (the store's only one by default)."),
    aux_feature_set_option("Auxiliary feature set (fusion)."),
    click.option("--text", help="Text embeddings for zero-shot weights (the store's only set by default)."),
    click.option("--base", type=click.Choice(BASES), default="auto", show_default=True,
                 help="Base logits of gda-zs, tip and fusion: zero-shot, or nearest class mean (no text)."),
    click.option("--train-split", default="train", show_default=True, help="Split the support set is drawn from."),
    click.option("--val-split", help="Validation split (default: 'val' if present, else carved from train)."),
    click.option("--val-per-class", type=int, default=10, show_default=True,
                 help="Rows per class carved from train when there is no validation split."),
    click.option("--center", type=click.Choice(CENTERS), default="none", show_default=True,
                 help="CL2N centring: subtract the mean of each support set, of --pool-split (labels unused), "
                      "or of the test features (--transductive only), then L2-normalise."),
    click.option("--pool-split", help="Unlabelled pool of --center pool (default: the train split)."),
)


@click.command("fit", cls=Command)
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--method", type=click.Choice(METHODS), required=True)
@_store_options
@click.option("--shots", type=int, required=True, help="Support samples per class (0: every training row).")
@click.option("--seed", type=int, default=1, show_default=True, callback=non_negative,
              help="Seed of the support sampling (0 or more).")
@output_option("Model file: .h5, .hdf5 or .npz.", required=True)
@overwrite_option(MODEL_FILE.name)
def fit_command(store, method, feature_set, aux_feature_set, text, base, train_split, val_split, val_per_class,
                center, pool_split, shots, seed, output, overwrite):
    """Fit a closed-form classifier on a few-shot support set of STORE and save it (no pickle)."""
    from clipcache.evaluation import fit_from_store

    checked(check_shots, [shots])
    if aux_feature_set and method != "fusion":
        raise click.UsageError("--aux-feature-set is only used by --method fusion")
    if not output.lower().endswith((".h5", ".hdf5", ".npz")):
        raise click.BadParameter("the model file name must end in .h5, .hdf5 or .npz", param_hint=["--output"])
    options = checked(
        ProtocolOptions, feature_set=feature_set, aux_feature_set=aux_feature_set, text=text, base=base,
        train_split=train_split, val_split=val_split, test_split=None, val_per_class=val_per_class,
        center=center, pool_split=pool_split,
    )
    check_output(output, [store], kind=MODEL_FILE, overwrite=overwrite)
    meta = fit_from_store(store, method, output, shots=shots, seed=seed, options=options)
    hp = format_hyperparameters(meta["hyperparameters"])
    click.echo(
        f"fitted {method} on {meta['support']['n']} samples of {train_split!r} "
        f"({f'{shots}-shot, seed {seed}' if shots else 'every row'}); validation: {meta['val']['split']!r}"
        f"{' (carved)' if meta['val']['carved'] else ''}; hyper-parameters: {hp}; saved {output}"
    )


@click.command("predict", cls=Command)
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--split", default="test", show_default=True)
@output_option("CSV of predictions.", required=True)
@overwrite_option(PREDICTIONS_CSV.name)
def predict_command(store, model, split, output, overwrite):
    """Predict every row of a split of STORE with a saved MODEL; write a CSV."""
    from clipcache.evaluation import predict_to_csv

    check_output(output, [store, model], kind=PREDICTIONS_CSV, overwrite=overwrite)
    n = predict_to_csv(store, model, output, split=split)
    click.echo(f"wrote {n} predictions of {split!r} to {output}")


@click.command("evaluate", cls=Command)
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--methods", default="gda,tip,knn", show_default=True,
              help=f"Comma list of: {', '.join(METHODS)} (auto: chosen on validation).")
@_store_options
@click.option("--test-split", default="test", show_default=True)
@click.option("--transductive", is_flag=True,
              help=f"Also report {TRANSDUCTIVE_METHOD}, fitted with the test features (never their labels).")
@click.option("--test-store", type=click.Path(exists=True, dir_okay=False),
              help="Score the test split of this other store (same classes and feature-set models).")
@click.option("--base-to-new", is_flag=True,
              help="Base-to-new protocol: shots from the first half of the classes, the rest zero-shot.")
@click.option("--shots", "shots", default="1,2,4,8,16", show_default=True, help="Comma list of shots per class.")
@click.option("--seeds", default="1,2,3", show_default=True, help="Comma list of sampling seeds (0 or more).")
@click.option("--metric", type=click.Choice(METRICS + BASE_TO_NEW_METRICS), default="top1", show_default=True,
              help="Metric of the printed table (the JSON has all); base-to-new runs have base, new and hm.")
@output_option("Write every run and the summary as JSON to this file.")
@click.option("--json", "as_json", cls=FlagWithOldValue, is_flag=False, flag_value=_PRINT_JSON, default=None,
              help="Print every run and the summary as JSON on stdout, instead of the table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG of the metric against shots.")
@click.option("--ood", "ood_splits", multiple=True, metavar="OUT_SPLIT",
              help="OOD split of STORE: OOD detectors fitted on each support set score the test split against it "
                   "(AUROC, AUPR-in, FPR@95 in the JSON); repeatable.")
@overwrite_option("an evaluation report (-o) or a PNG image (--plot)")
def evaluate_command(store, methods, feature_set, aux_feature_set, text, base, train_split, val_split, val_per_class,
                     center, pool_split, test_split, transductive, test_store, base_to_new, shots, seeds, metric,
                     output, as_json, plot_path, ood_splits, overwrite):
    """Evaluate methods x shots over seeds on STORE: mean ± 95% CI on the test split."""
    from clipcache.evaluation import format_table, plot_accuracy, run_evaluation

    if as_json not in (None, _PRINT_JSON):  # the old meaning: --json FILE
        warn_deprecated("--json FILE", "-o FILE (--json alone prints the JSON)")
        if output is not None:
            raise click.UsageError("--json FILE is the old spelling of -o FILE; give only -o")
        output, as_json = as_json, None
    print_json = as_json == _PRINT_JSON
    methods_list = checked(check_methods, [m.strip() for m in methods.split(",") if m.strip()])
    shots_list = _int_list(shots, "--shots")
    seeds_list = _int_list(seeds, "--seeds")
    if any(k < 1 for k in shots_list):
        raise click.BadParameter("shots must be positive", param_hint=["--shots"])
    if any(s < 0 for s in seeds_list):
        raise click.BadParameter(f"seeds must be 0 or more, not {min(seeds_list)}", param_hint=["--seeds"])
    if plot_path and not plot_path.lower().endswith(".png"):
        raise click.BadParameter("the plot file name must end in .png", param_hint=["--plot"])
    if output and plot_path and same_file(output, plot_path):
        raise click.UsageError("-o and --plot name the same file; give two files")
    options = checked(
        ProtocolOptions, feature_set=feature_set, aux_feature_set=aux_feature_set, text=text, base=base,
        train_split=train_split, val_split=val_split, test_split=test_split, val_per_class=val_per_class,
        center=center, pool_split=pool_split, transductive=transductive, test_store=test_store,
        base_to_new=base_to_new,
    )
    if base_to_new and metric == "top1":
        metric = "hm"  # the default metric of a base-to-new table
    if (metric in BASE_TO_NEW_METRICS) != base_to_new:
        raise click.BadParameter(
            f"--metric {metric} {'needs' if not base_to_new else 'is not reported with'} --base-to-new "
            f"(its metrics: {', '.join(BASE_TO_NEW_METRICS)})", param_hint=["--metric"],
        )
    if output:
        check_output(output, [store, test_store], kind=EVALUATION_REPORT, overwrite=overwrite)
    if plot_path:
        check_output(plot_path, [store, test_store], param="plot_path", kind=PNG_IMAGE, overwrite=overwrite)
    report = run_evaluation(store, methods_list, shots_list, seeds_list, options, ood_splits=ood_splits)
    if print_json:
        click.echo(report.to_json())
    else:
        cfg = report.config
        click.echo(
            f"{cfg['feature_set']} on {cfg['test_split']!r} ({cfg['n_test']} rows), base {cfg['base']}, "
            f"validation {cfg['val']['split']!r}{' (carved)' if cfg['val']['carved'] else ''}; "
            f"{metric}, mean ± 95% CI over {len(seeds_list)} seed(s)"
        )
        click.echo(format_table(report, metric))
        if report.ood:
            from clipcache.evaluation.ood_report import format_ood_table

            click.echo(format_ood_table(report.ood))
    if output:
        report.write_json(output)
        click.echo(f"wrote {output}", err=print_json)
    if plot_path:
        plot_accuracy(report, plot_path, metric)
        click.echo(f"wrote {plot_path}", err=print_json)


COMMANDS = [fit_command, predict_command, evaluate_command]
