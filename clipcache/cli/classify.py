"""``clipcache`` commands of the classify stage: fit, predict, evaluate.

Each command parses its flags, rejects conflicting combinations before any work,
calls one library function (``clipcache.evaluation``), and prints the result.
"""

from __future__ import annotations

import click

_METHODS = ("zeroshot", "ncm", "gda", "gda-zs", "tip", "fusion", "knn")


def _int_list(value: str, flag: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint=flag) from None
    if not out:
        raise click.BadParameter("give at least one value", param_hint=flag)
    return out


def _method_list(value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in methods if m not in _METHODS]
    if bad or not methods:
        raise click.BadParameter(f"{bad[0] if bad else value!r} is not one of {', '.join(_METHODS)}", param_hint="--methods")
    return methods


def _store_options(f):
    options = [
        click.option("--features", help="Feature set to classify (the store's only one by default)."),
        click.option("--aux-features", help="Auxiliary feature set (fusion)."),
        click.option("--text", help="Text embeddings for zero-shot weights (the store's only set by default)."),
        click.option("--base", type=click.Choice(["auto", "zeroshot", "ncm"]), default="auto", show_default=True,
                     help="Base logits of gda-zs, tip and fusion: zero-shot, or nearest class mean (no text)."),
        click.option("--train-split", default="train", show_default=True, help="Split the support set is drawn from."),
        click.option("--val-split", help="Validation split (default: 'val' if present, else carved from train)."),
        click.option("--val-per-class", type=int, default=10, show_default=True,
                     help="Rows per class carved from train when there is no validation split."),
    ]
    for option in reversed(options):  # click lists options in decoration order, outermost first
        f = option(f)
    return f


@click.command("fit")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--method", type=click.Choice(_METHODS), required=True)
@_store_options
@click.option("--shots", type=int, required=True, help="Support samples per class (0: every training row).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the support sampling.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file: .h5 or .npz.")
def fit_command(store, method, features, aux_features, text, base, train_split, val_split, val_per_class,
                shots, seed, output):
    """Fit a closed-form classifier on a few-shot support set of STORE and save it (no pickle)."""
    from clipcache.evaluation import fit_from_store

    if shots < 0:
        raise click.BadParameter("must be 0 (all rows) or a positive number of samples per class", param_hint="--shots")
    if aux_features and method != "fusion":
        raise click.UsageError("--aux-features is only used by --method fusion")
    if not output.lower().endswith((".h5", ".hdf5", ".npz")):
        raise click.BadParameter("the model file name must end in .h5, .hdf5 or .npz", param_hint="--output")
    meta = fit_from_store(
        store, method, output, shots=shots, seed=seed, features=features, aux_features=aux_features, text=text,
        base=base, train_split=train_split, val_split=val_split, val_per_class=val_per_class,
    )
    hp = ", ".join(f"{k}={v:g}" for k, v in meta["hyperparameters"].items()) or "none"
    click.echo(
        f"fitted {method} on {meta['support']['n']} samples of {train_split!r} "
        f"({f'{shots}-shot, seed {seed}' if shots else 'every row'}); validation: {meta['val']['split']!r}"
        f"{' (carved)' if meta['val']['carved'] else ''}; hyper-parameters: {hp}; saved {output}"
    )


@click.command("predict")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--split", default="test", show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="CSV of predictions.")
def predict_command(store, model, split, output):
    """Predict every row of a split of STORE with a saved MODEL; write a CSV."""
    from clipcache.evaluation import predict_to_csv

    n = predict_to_csv(store, model, output, split=split)
    click.echo(f"wrote {n} predictions of {split!r} to {output}")


@click.command("evaluate")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--methods", default="gda,tip,knn", show_default=True, help=f"Comma list of: {', '.join(_METHODS)}.")
@_store_options
@click.option("--test-split", default="test", show_default=True)
@click.option("--shots", "shots", default="1,2,4,8,16", show_default=True, help="Comma list of shots per class.")
@click.option("--seeds", default="1,2,3", show_default=True, help="Comma list of sampling seeds.")
@click.option("--metric", type=click.Choice(["top1", "top5", "recall", "ece"]), default="top1", show_default=True,
              help="Metric of the printed table (the JSON has all).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every run and the summary as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG of the metric against shots.")
def evaluate_command(store, methods, features, aux_features, text, base, train_split, val_split, val_per_class,
                     test_split, shots, seeds, metric, json_path, plot_path):
    """Evaluate methods x shots over seeds on STORE: mean ± 95% CI on the test split."""
    from clipcache.evaluation import format_table, plot_accuracy, run_evaluation

    methods_list = _method_list(methods)
    shots_list = _int_list(shots, "--shots")
    seeds_list = _int_list(seeds, "--seeds")
    if any(k < 1 for k in shots_list):
        raise click.BadParameter("shots must be positive", param_hint="--shots")
    if test_split in (train_split, val_split):
        raise click.UsageError("--test-split must differ from --train-split and --val-split")
    if plot_path and not plot_path.lower().endswith(".png"):
        raise click.BadParameter("the plot file name must end in .png", param_hint="--plot")
    report = run_evaluation(
        store, methods_list, shots_list, seeds_list, features=features, aux_features=aux_features, text=text,
        base=base, train_split=train_split, val_split=val_split, test_split=test_split, val_per_class=val_per_class,
    )
    cfg = report.config
    click.echo(
        f"{cfg['features']} on {cfg['test_split']!r} ({cfg['n_test']} rows), base {cfg['base']}, "
        f"validation {cfg['val']['split']!r}{' (carved)' if cfg['val']['carved'] else ''}; "
        f"{metric}, mean ± 95% CI over {len(seeds_list)} seed(s)"
    )
    click.echo(format_table(report, metric))
    if json_path:
        report.write_json(json_path)
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot_accuracy(report, plot_path, metric)
        click.echo(f"wrote {plot_path}")


COMMANDS = [fit_command, predict_command, evaluate_command]

__all__ = ["COMMANDS"]
