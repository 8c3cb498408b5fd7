"""``clipcache`` commands of the extract stage: extract, text, merge, demo-data.

Each command parses its flags, rejects conflicting combinations before any work,
calls one library function, and prints a summary. Library modules (and torch)
are imported inside the commands so that ``clipcache --help`` stays fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from clipcache._io import check_output
from clipcache.cli.deprecation import Command, warn_deprecated
from clipcache.cli.params import output_option
from clipcache.feature_store.schema import DECODES

if TYPE_CHECKING:
    from clipcache.extract.loop import ExtractReport, RunOptions

__all__ = ["COMMANDS", "demo_data_command", "extract_command", "merge_command", "text_command"]

_MAX_SKIPPED_SHOWN = 20


def _parse_limits(values: tuple[str, ...]) -> dict[str, int] | None:
    limits: dict[str, int] = {}
    for value in values:
        split, sep, count = value.rpartition("=")
        key = split if sep else "*"
        try:
            limits[key] = int(count)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not N or SPLIT=N", param_hint=["--max-per-class"]) from None
        if limits[key] < 1:
            raise click.BadParameter(f"{value!r} must be at least 1", param_hint=["--max-per-class"])
    return limits or None


def _resolve_device(device: str, local_rank: int | None) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank}" if local_rank is not None else "cuda"
    return "cpu"


def _check_flags(model, pretrained, aux, resume, overwrite, templates) -> None:
    """Reject conflicting flag combinations before anything is loaded."""
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other; pass one")
    if not model and not aux:
        raise click.UsageError("give a backbone: --model NAME --pretrained TAG|FILE|none, and/or --aux SPEC")
    if model and pretrained is None and not model.startswith(("hf-hub:", "local-dir:")):
        raise click.UsageError(f"--model {model} needs --pretrained: a tag (e.g. openai), a local weights file, or none for random weights")
    if pretrained is not None and not model:
        raise click.UsageError("--pretrained applies to --model; auxiliary weights go in --aux timm:NAME=WEIGHTS")
    if templates and not model:
        raise click.UsageError("--templates needs a text tower; add an open_clip --model")


#: The extract flags whose value, with --add-splits, comes from the store's recorded config unless given.
_RECORDED_FLAGS = ("model", "pretrained", "aux", "dtype", "normalize", "image_size", "augment_views", "seed")


def _recorded_settings(store: str, given: dict) -> dict:
    """With --add-splits: the backbones and settings of STORE's own extraction, for each flag not given on the command line."""
    from clipcache.extract.loop import recorded_config

    if not os.path.isfile(store):
        raise click.UsageError(f"{store}: no such store; --add-splits adds splits to an existing store")
    recorded = recorded_config(store)
    if recorded is None:
        missing = [f"--{name.replace('_', '-')}" for name in ("model", "aux") if not given[name]]
        if len(missing) == 2:
            raise click.UsageError(f"{store}: records no extraction settings; give its backbones with --model and/or --aux")
        return {}
    ctx = click.get_current_context()
    settings = {
        name: getattr(recorded, name)
        for name in _RECORDED_FLAGS
        if ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT
    }
    if not recorded.model:  # weights of no CLIP model (the library's default "none")
        settings.pop("pretrained", None)
    return settings


def _amp_request(amp: tuple[str, ...]) -> tuple[str, ...] | None:
    """The ``--amp`` values for ``RunOptions.amp`` (None: every backbone's default); the old value none is deprecated."""
    values = [part.rpartition("=")[2].strip().lower() for spec in amp for part in spec.split(",")]
    if "none" in values:
        warn_deprecated("--amp none", "--amp fp32")
    return amp or None


def _input_files(source, classes, pretrained, aux, templates) -> list[str]:
    """The files extract reads (a folder SOURCE, a class list given inline or a weights tag are not files)."""
    candidates = [source, classes, pretrained, templates, *(spec.partition("=")[2] for spec in aux)]
    return [path for path in candidates if path and os.path.isfile(path)]


#: Share of the encoding time spent waiting for the workers above which extract suggests more of them.
WORKERS_HINT_SHARE = 0.5


def _print_report(report: ExtractReport, options: RunOptions) -> None:
    rows = ", ".join(f"{split} {n}" for split, n in report.rows.items())
    skipped = [(split, s) for split, items in report.skipped.items() for s in items]
    sets = ", ".join(f"{name} ({report.precisions[name]})" if name in report.precisions else name for name in report.feature_sets)
    click.echo(
        f"Wrote {report.path}: {rows} rows of {sets}; "
        f"{report.encoded} images encoded in {report.seconds:.1f} s ({report.images_per_second:.1f} img/s)"
    )
    share = report.waits["workers"] / report.seconds if report.seconds > 0 else 0.0
    if share > WORKERS_HINT_SHARE:
        gpu = " or --decode gpu" if options.device.startswith("cuda") and options.decode != "gpu" else ""
        click.echo(
            f"Hint: the encoding waited {share:.0%} of its time for images to be decoded; "
            f"more --workers (now {options.workers}){gpu} may make it faster.",
            err=True,
        )
    if skipped:
        click.echo(f"Skipped {len(skipped)} unreadable images:", err=True)
        for split, (sid, _, reason) in skipped[:_MAX_SKIPPED_SHOWN]:
            click.echo(f"  [{split}] {sid}: {reason}", err=True)
        if len(skipped) > _MAX_SKIPPED_SHOWN:
            click.echo(f"  ... and {len(skipped) - _MAX_SKIPPED_SHOWN} more (see clipcache info)", err=True)


@click.command("extract")
@click.argument("source", type=click.Path(exists=True))
@click.argument("store", type=click.Path(dir_okay=False))
@click.option("--model", help="open_clip model name (open_clip.list_models(), hf-hub:..., local-dir:...), or clipcache-tiny-vit.")
@click.option("--pretrained", help="Pretrained tag (openai), local weights file or directory, or none for random weights.")
@click.option("--aux", multiple=True, help="Auxiliary image backbone: efficientnet-lite0 or timm:NAME[=WEIGHTS]; repeatable.")
@click.option("--classes", help="Class names in label order: a comma list or a file with one per line.")
@click.option("--split", "splits", multiple=True, help="Extract only this split (repeatable); all by default.")
@click.option("--max-per-class", multiple=True, help="Keep the first N images of each class: N, or SPLIT=N (repeatable).")
@click.option("--val-per-class", type=int, default=0, show_default=True, help="Move the next N per class of train into a 'val' split.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=lambda: max(1, min(8, (os.cpu_count() or 2) // 2)),
              show_default="half the CPUs, 1 to 8", help="DataLoader worker processes (0 decodes in the main process).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp", multiple=True, metavar="[FEATURE_SET=]PRECISION",
              help="Autocast precision on cuda: fp32, bf16 or fp16 for every backbone, or FEATURE_SET=PRECISION for one "
                   "(clip=bf16); repeatable or comma-separated. Default per backbone: bf16 for open_clip ViTs, fp32 for "
                   "the others. Other devices compute fp32.")
@click.option("--decode", type=click.Choice(["auto", *DECODES]), default="auto", show_default=True,
              help="Where images are decoded and resized: cpu (PIL, in the workers), gpu (nvJPEG on the CUDA device; "
                   "other images fall back to the CPU one at a time), hybrid (decoded by PIL in the workers, resized on "
                   "the device: for small images) or auto (on a CUDA device hybrid when the images are no larger than "
                   "the model input, else gpu; cpu elsewhere; on --resume or "
                   "--add-splits, the path the store records). Recorded per feature set; features of two paths "
                   "are never mixed.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the image towers (off by default). Recorded per feature set; compiled and eager "
                   "features are never mixed.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="On a CUDA device (without --compile), encode each full batch by replaying a CUDA graph of each "
                   "image tower, captured once, instead of launching its kernels one by one. The features are the same "
                   "bit for bit; each graph keeps a batch's activations allocated for the run.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True, help="On-disk feature dtype.")
@click.option("--normalize/--no-normalize", default=True, show_default=True, help="L2-normalise stored features.")
@click.option("--image-size", type=int, help="Input size of auxiliary backbones (their default otherwise).")
@click.option("--augment-views", type=int, default=0, show_default=True, help="Store N seeded RandomResizedCrop+flip views per image.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of augmentation and random initialisation.")
@click.option("--shard", help="Extract shard i/n of every split into STORE (merge shards with clipcache merge).")
@click.option("--templates", help="Also embed class prompts: imagenet80, simple or FILE.json.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run into the same STORE.")
@click.option("--add-splits", is_flag=True,
              help="Add the splits of SOURCE (e.g. the copies `clipcache corrupt` writes) to the existing STORE, encoded "
                   "as its own splits were: backbones and settings default to the store's, and any given must match "
                   "them. Run it again to finish an interrupted add.")
@click.option("--overwrite", is_flag=True,
              help="Replace STORE if it exists; the new store is written beside it and replaces it only when complete.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option("--threads", type=int, help="torch CPU threads (torch.set_num_threads).")
@click.option("--progress/--no-progress", default=None, help="Progress bar; on by default when stderr is a terminal.")
def extract_command(source, store, model, pretrained, aux, classes, splits, max_per_class, val_per_class,
                    batch_size, workers, device, amp, decode, compile_, cuda_graphs, dtype, normalize, image_size, augment_views, seed, shard,
                    templates, resume, add_splits, overwrite, strict, threads, progress):
    """Encode the images of SOURCE into the feature store STORE.

    SOURCE is an ImageFolder tree (one folder per class, optionally inside
    train/val/test folders), a CSV/TSV manifest with columns path,label[,split],
    or a folder of idx files (MNIST, Fashion-MNIST). Every input is checked
    before any work. A run stopped by a kill, an interrupt or a full disk keeps
    its committed batches: run it again with --resume. --add-splits adds the
    splits of SOURCE to an existing STORE instead.
    """
    from clipcache.extract.datasets import read_class_names
    from clipcache.extract.loop import ExtractConfig, RunOptions, extract
    from clipcache.extract.plan import parse_shard, shard_from_env, shard_path

    if add_splits:
        if resume or overwrite:
            raise click.UsageError("--add-splits continues an interrupted add by itself; drop --resume and --overwrite")
        recorded = _recorded_settings(store, {"model": model, "aux": aux})
        model, pretrained, aux = (recorded.pop(k, v) for k, v in (("model", model), ("pretrained", pretrained), ("aux", aux)))
        dtype, normalize, image_size, augment_views, seed = (
            recorded.get(k, v) for k, v in (("dtype", dtype), ("normalize", normalize), ("image_size", image_size),
                                            ("augment_views", augment_views), ("seed", seed))
        )
    _check_flags(model, pretrained, aux, resume, overwrite, templates)
    check_output(store, _input_files(source, classes, pretrained, aux, templates), param="store")
    env_shard = shard_from_env()
    if shard and env_shard:
        raise click.UsageError("--shard cannot be combined with a torchrun launch; torchrun assigns one shard per rank")
    shard_pair = parse_shard(shard) if shard else env_shard or (0, 1)
    if env_shard:
        store = shard_path(store, *env_shard)
    local_rank = int(os.environ["LOCAL_RANK"]) if env_shard and "LOCAL_RANK" in os.environ else None
    if threads:
        import torch

        torch.set_num_threads(threads)
    config = ExtractConfig(
        source=source,
        model=model,
        pretrained=pretrained,
        aux=tuple(aux),
        classes=tuple(read_class_names(classes)) if classes else None,
        splits=tuple(splits) or None,
        max_per_class=_parse_limits(max_per_class),
        val_per_class=val_per_class,
        batch_size=batch_size,
        augment_views=augment_views,
        seed=seed,
        dtype=dtype,
        normalize=normalize,
        image_size=image_size,
        shard=shard_pair,
    )
    options = RunOptions(
        workers=workers, device=_resolve_device(device, local_rank), amp=_amp_request(amp), strict=strict, progress=progress,
        decode=decode, compile=compile_, cuda_graphs=cuda_graphs,
    )
    report = extract(store, config, options, resume=resume, overwrite=overwrite, templates=templates, add_splits=add_splits)
    _print_report(report, options)


@click.command("text")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--templates", required=True, help="imagenet80, simple, or FILE.json (templates list, or class -> sentences for CuPL).")
@click.option("--name", help="Name of the stored text embeddings (the template set or file name by default).")
@click.option("--feature-set", default="clip", show_default=True, help="Feature set whose open_clip model embeds the text.")
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace text embeddings of the same name.")
def text_command(store, templates, name, feature_set, device, overwrite):
    """Embed class names x prompt templates (or CuPL descriptions) with the CLIP text tower of STORE."""
    from clipcache.extract.prompts import embed_prompts
    from clipcache.feature_store import FeatureStore

    with FeatureStore(store, "a") as fs:
        prompts = embed_prompts(
            fs, templates, feature_set=feature_set, name=name, overwrite=overwrite, device=_resolve_device(device, None)
        )
    n_classes = int(prompts.class_index.max()) + 1 if len(prompts.class_index) else 0
    click.echo(f"Wrote text embeddings {prompts.name!r} to {store}: {len(prompts.prompts)} prompts for {n_classes} classes")


@click.command("merge", cls=Command)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@output_option("The merged store.")
@click.option("--layout", type=click.Choice(["copy", "virtual"]), default="copy", show_default=True,
              help="Copy the features, or reference the shard files through HDF5 virtual datasets.")
@click.option("--overwrite", is_flag=True,
              help="Replace OUTPUT if it exists; the merged store is written beside it and replaces it only when complete.")
def merge_command(inputs, output, layout, overwrite):
    """Merge the shard stores INPUTS of one extraction run into the store -o OUTPUT.

    The old form "merge OUTPUT INPUTS..." (without -o) still works for one release.
    """
    from clipcache.extract.merge import merge_stores

    if output is None:
        if len(inputs) < 2:
            raise click.UsageError("give the merged store with -o OUTPUT")
        warn_deprecated("merge OUTPUT INPUTS...", "merge INPUTS... -o OUTPUT")
        output, inputs = inputs[0], inputs[1:]
    ctx = click.get_current_context()
    argument = next(p for p in ctx.command.params if p.name == "inputs")
    inputs = [click.Path(exists=True, dir_okay=False).convert(path, argument, ctx) for path in inputs]
    if os.path.exists(output) and not overwrite:
        raise click.UsageError(f"{output} already exists; pass --overwrite to replace it")
    report = merge_stores(inputs, output, layout=layout, overwrite=overwrite)
    rows = ", ".join(f"{split} {n}" for split, n in report.rows.items())
    click.echo(f"Merged {report.shards} shards into {report.path} ({report.layout}): {rows} rows")


@click.command("demo-data")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--train-per-class", type=int, default=12, show_default=True)
@click.option("--test-per-class", type=int, default=6, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the train and test folders if DIRECTORY has them.")
def demo_data_command(directory, train_per_class, test_per_class, seed, overwrite):
    """Draw a tiny built-in dataset of shapes (circle, square, star, triangle) into DIRECTORY."""
    from clipcache.extract.demo import DEMO_CLASSES, write_demo_dataset

    counts = write_demo_dataset(
        directory, train_per_class=train_per_class, test_per_class=test_per_class, seed=seed, overwrite=overwrite
    )
    click.echo(
        f"Wrote {sum(counts.values())} images of {len(DEMO_CLASSES)} classes to {directory} "
        f"(train {counts['train']}, test {counts['test']})"
    )


COMMANDS: list = [extract_command, text_command, merge_command, demo_data_command]
