"""The extraction run: images -> backbones -> feature store, resumable and shardable.

:func:`extract` reads a dataset, encodes each planned item (sample x view) with
every backbone in fixed batches, and appends one committed batch at a time to
the store. Unreadable images are recorded as skipped. ``resume=True`` continues
a killed or failed run (a full disk, say) from its last committed batch with
the same batches, so the result equals an uninterrupted run bit for bit on CPU.
``overwrite=True`` writes the new store beside the old one and moves it over
the old one only when it is complete, so a failed or killed overwrite leaves
the old store as it was. Every input is checked before any work starts.

Each backbone computes in the precision :mod:`clipcache.extract.precision`
resolves for it (autocast on cuda, fp32 elsewhere); the precision is recorded in
its feature set's provenance, and a resume that would compute an existing feature
set in another precision is refused.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import logging
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, default_collate
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from clipcache.errors import (
    DatasetError,
    InvalidParameterError,
    StoreError,
    StoreMismatchError,
    StoreWriteError,
)
from clipcache.extract.backbones import CLIP_FEATURE_SET, build_backbones, parse_aux_spec
from clipcache.extract.datasets import open_dataset
from clipcache.extract.decode import (
    DecodedImage,
    EncodedImage,
    PackedPayloads,
    decode_batch,
    device_decodable,
    resolve_decode,
    side_stream,
)
from clipcache.extract.images import to_rgb
from clipcache.extract.plan import build_plans, parse_limits, select_samples
from clipcache.extract.precision import (
    applies_on,
    check_amp_names,
    parse_amp,
    resolve_precisions,
)
from clipcache.extract.prompts import embed_prompt_set, load_prompts
from clipcache.extract.transforms import (
    AUG_SCALE,
    Preprocess,
    augmented_view_uint8,
    eval_transform_uint8,
    normalize_batch,
    to_uint8_tensor,
    view_params,
)
from clipcache.extract.writer import writing
from clipcache.feature_store import FeatureStore, replace_store, schema

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from clipcache.extract.backbones import Backbone
    from clipcache.extract.plan import SplitPlan

__all__ = ["ADD_SPLITS_FREE", "WAIT_STAGES", "ExtractConfig", "ExtractReport", "RunOptions", "extract", "recorded_config"]

logger = logging.getLogger(__name__)

#: The :class:`ExtractConfig` fields that splits added to a store (``extract(..., add_splits=True)``) may set
#: apart from the store's own extraction: which images, and how they are batched. The others decide the
#: stored values and must be the store's.
ADD_SPLITS_FREE = ("source", "classes", "splits", "max_per_class", "val_per_class", "batch_size", "shard")

#: The stages whose waits :class:`ExtractReport` times (``ExtractReport.waits``).
WAIT_STAGES = ("workers", "decode", "device", "writer")

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides what an extraction run stores.

    Attributes
    ----------
    source : str
        ImageFolder tree, CSV/TSV manifest, or folder of idx files.
    model, pretrained : str or None
        open_clip model and weights (tag, file, directory or ``"none"``); no
        CLIP features when ``model`` is None.
    aux : tuple of str
        Auxiliary backbone specs (``efficientnet-lite0``, ``timm:NAME[=WEIGHTS]``).
    classes : tuple of str, optional
        Class names in label order (idx sources, or to fix the order).
    splits : tuple of str, optional
        Store splits to extract; all by default.
    max_per_class : dict of str to int, or int, optional
        Keep the first N samples per class (per split, ``"*"`` for all).
    val_per_class : int
        Carve the next N per class of ``train`` into a ``val`` split.
    batch_size : int
        Items per batch; batch boundaries are part of the result.
    augment_views : int
        0 stores the plain image; N > 0 stores N seeded RandomResizedCrop+flip views.
    seed : int
        Seed of augmentation and of random initialisation.
    dtype : {"float32", "float16"}
        On-disk feature dtype.
    normalize : bool
        L2-normalise stored features.
    image_size : int, optional
        Input size of auxiliary backbones (their default when None).
    shard : tuple of (int, int)
        ``(index, count)``; ``(0, 1)`` is the whole dataset.
    """

    source: str
    model: str | None = None
    pretrained: str | None = "none"
    aux: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None
    splits: tuple[str, ...] | None = None
    max_per_class: dict | int | None = None
    val_per_class: int = 0
    batch_size: int = 64
    augment_views: int = 0
    seed: int = 0
    dtype: str = "float32"
    normalize: bool = True
    image_size: int | None = None
    shard: tuple[int, int] = (0, 1)

    @classmethod
    def from_json(cls, data: dict) -> ExtractConfig:
        """The config :meth:`to_json` recorded (lists back to tuples; keys this release does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("aux", "classes", "splits", "shard"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_json(self) -> dict:
        """Return the config as JSON-able values (recorded in the store's metadata)."""
        data = dataclasses.asdict(self)
        data["source"] = os.path.abspath(self.source)
        for key in ("aux", "classes", "splits", "shard"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run executes; on CPU none of these change the stored values but ``compile``.

    On a cuda device ``amp`` and ``decode`` do too. The precision each backbone
    computes in, the decode path and ``compile`` are recorded in the feature
    set's provenance and checked on resume.

    Attributes
    ----------
    workers : int
        DataLoader worker processes (0 decodes in the main process).
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    amp : str, mapping of str to str, sequence of str, or None
        Autocast precision on a cuda device, per backbone: None for each
        backbone's default (bf16 for open_clip ViTs, fp32 otherwise), ``"bf16"``
        for every backbone, ``"clip=bf16"`` or ``{"clip": "bf16"}`` for one
        feature set, ``"fp32,clip=bf16"`` for both (see
        :func:`clipcache.extract.precision.parse_amp`). Ignored, with a warning,
        on other devices, which compute in fp32.
    strict : bool
        Make an unreadable image fatal instead of skipping it.
    progress : bool or None
        Show a progress bar; None shows it when stderr is a terminal.
    decode : {"auto", "cpu", "gpu", "hybrid"}
        Where images are decoded and resized (see :mod:`clipcache.extract.decode`):
        ``"cpu"`` in the workers with PIL; ``"gpu"`` on the device with nvJPEG
        and a tensor resize, the workers only reading the files' bytes (images
        nvJPEG does not take fall back to the CPU path one at a time);
        ``"hybrid"``, decoded in the workers with PIL and resized on the device;
        ``"auto"`` is ``"gpu"`` on a CUDA device where torchvision decodes there
        (``"hybrid"`` when the typical image has at most the model input's pixels,
        :func:`typical_pixels`), and ``"cpu"`` otherwise. The paths' pixels differ slightly, so the path
        is recorded in each feature set's provenance and a run that would mix
        two in one feature set is refused.
    compile : bool
        ``torch.compile`` each backbone's image tower. A partial last batch is
        padded to the batch size, so that it does not trigger a recompile. The
        compiled kernels round differently from eager ones (on an H200, one
        image of a test model moved to a cosine of 0.9946), so the setting is
        recorded in each feature set's provenance and a run that would mix
        compiled and eager features in one feature set is refused.
    cuda_graphs : bool
        On a CUDA device, and unless ``compile``, encode each full batch by
        replaying a CUDA graph of each backbone, captured once before the loop,
        instead of launching its few hundred kernels one by one from the loop's
        thread. The stored features are the same bit for bit (checked on an
        H100 by ``tests/extract/test_gpu.py``), so the setting is not recorded.
        A backbone that cannot be captured is encoded eagerly, with a warning.
        Each graph keeps its batch's activations allocated for the run.
    """

    workers: int = 0
    device: str = "cpu"
    amp: str | Mapping[str, str] | Sequence[str] | None = None
    strict: bool = False
    progress: bool | None = None
    decode: str = "auto"
    compile: bool = False
    cuda_graphs: bool = True


@dataclasses.dataclass
class ExtractReport:
    """What a run did.

    Attributes
    ----------
    path : str
        The store.
    rows : dict of str to int
        Committed rows per split after the run.
    encoded : int
        Items encoded by this run (not counting rows resumed from).
    skipped : dict of str to list of (id, path, reason)
        Every skipped sample of each split (including earlier runs').
    seconds : float
        Wall time of the encoding loop.
    waits : dict of str to float
        Seconds of ``seconds`` that the loop's thread spent waiting, by stage:
        ``workers`` (for the DataLoader workers' decoded parts), ``decode`` (for
        the decode thread of the ``gpu`` and ``hybrid`` decode paths: nvJPEG and
        the resizes),
        ``device`` (for the features of the batch before, while the device
        computes) and ``writer`` (for room in the store writer's queue). The stage
        with the largest share bounds the run; little waiting in all of them means
        the loop's own work does. On a CPU the forward pass runs in the loop's
        thread and counts in none of them.
    feature_sets : list of str
    precisions : dict of str to str
        The precision each feature set was computed in (``"fp32"``, ``"bf16"``, ``"fp16"``).
    """

    path: str
    rows: dict = dataclasses.field(default_factory=dict)
    encoded: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    waits: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(WAIT_STAGES, 0.0))
    feature_sets: list = dataclasses.field(default_factory=list)
    precisions: dict = dataclasses.field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Encoded items per second of this run."""
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- decoding


#: On the ``hybrid`` decode path, an image of more than this many times the largest model input's pixels (S x S)
#: is resized by its worker on the CPU path instead of travelling decoded: a part of 32 such images stays under
#: 32 * 3 * 4 * 224 ** 2 bytes (19 MiB) for a 224 px model, and a large photo costs more to send than to resize.
HYBRID_MAX_PIXELS = 4


class _ItemDataset(TorchDataset):
    """Decode and preprocess items of one split plan for every distinct preprocessing.

    With ``decode="gpu"``, an image file that :func:`device_decodable` accepts is
    only read: its item carries an :class:`EncodedImage` instead of tensors, for
    :func:`decode_batch` to decode on the device. Other items are decoded here,
    on the CPU path (``plan.source.load``, which reads the file again). With
    ``decode="hybrid"``, every item is decoded here, and one of at most
    :data:`HYBRID_MAX_PIXELS` times the model input's pixels carries a
    :class:`DecodedImage` at its own size, for :func:`decode_batch` to resize on
    the device; a larger one is resized here, on the CPU path.
    """

    def __init__(self, plan: SplitPlan, preprocesses: Sequence[Preprocess], augment: bool, seed: int, decode: str = "cpu"):
        self.plan = plan
        self.preprocesses = list(preprocesses)
        self.transforms = [eval_transform_uint8(pp) for pp in self.preprocesses]
        self.augment = augment
        self.seed = seed
        self.root = getattr(plan.source, "root", None) if decode == "gpu" and not augment else None
        # on the hybrid path, images of at most this many pixels travel decoded (HYBRID_MAX_PIXELS)
        self.hybrid_pixels = HYBRID_MAX_PIXELS * max(pp.image_size for pp in self.preprocesses) ** 2 if (
            decode == "hybrid" and not augment) else 0

    def __len__(self) -> int:
        return self.plan.n_items

    def __getitem__(self, item: int):
        sample = self.plan.sample_of(item)
        try:
            if self.root is not None:
                path = os.path.join(self.root, self.plan.source.keys[sample])
                with open(path, "rb") as f:
                    data = f.read()
                if device_decodable(data):
                    return item, EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), path), ""
            image = self.plan.source.load(sample)  # the CPU path (its reasons name the file)
            if image.width * image.height <= self.hybrid_pixels:
                return item, DecodedImage(to_uint8_tensor(to_rgb(image))), ""
            tensors = self._tensors(image, item, sample)
            error = ""
        except _DECODE_ERRORS as exc:
            tensors = [torch.zeros(3, pp.image_size, pp.image_size, dtype=torch.uint8) for pp in self.preprocesses]
            error = f"{type(exc).__name__}: {exc}".strip()
        return item, tensors, error

    def _tensors(self, image, item: int, sample: int) -> list[torch.Tensor]:
        if not self.augment:
            return [t(image) for t in self.transforms]
        view = item % self.plan.views
        rng = np.random.default_rng([self.seed, sample, view])
        params = view_params(image.width, image.height, rng)
        return [augmented_view_uint8(image, params, pp) for pp in self.preprocesses]


#: A worker's :class:`PackedPayloads` of at least this many bytes is sent as a tensor in shared memory, a smaller one
#: as a numpy array inside the pickle (see :class:`PackedPayloads`).
SHARED_BUFFER_BYTES = 1 << 22


def _collate(part, shared_bytes: float | None = None):
    """A worker's part of a batch: item numbers, then the stacked uint8 tensors of each preprocessing or, on the
    ``gpu`` and ``hybrid`` paths, the :class:`PackedPayloads` of its items, then the reasons of the items it could
    not read.

    The item numbers travel to the main process inside the pickle, as does a
    :class:`PackedPayloads` buffer under ``shared_bytes`` (None:
    :data:`SHARED_BUFFER_BYTES`); every tensor travels as a shared-memory block
    and a file descriptor.
    """
    items = np.array([b[0] for b in part], dtype=np.int64)
    errors = [b[2] for b in part]
    if any(isinstance(b[1], EncodedImage | DecodedImage) for b in part):  # gpu and hybrid: decode_batch stacks them
        shared = SHARED_BUFFER_BYTES if shared_bytes is None else shared_bytes
        return items, PackedPayloads.pack([b[1] for b in part], shared), errors
    # default_collate stacks a worker's tensors straight into shared memory, saving the copy that sending makes
    return items, [default_collate([b[1][k] for b in part]) for k in range(len(part[0][1]))], errors


def _assemble(parts: list) -> tuple[np.ndarray, list, list[str], bool]:
    """One batch from the parts the workers made of it, in order.

    Returns the item numbers; per preprocessing, the list of its parts' uint8
    tensors (or, when ``payloads``, the per-item payloads of :func:`decode_batch`);
    the reasons; and ``payloads``.
    """
    items = np.concatenate([p[0] for p in parts])
    errors = [e for p in parts for e in p[2]]
    if not any(isinstance(p[1], PackedPayloads) for p in parts):
        return items, [[p[1][k] for p in parts] for k in range(len(parts[0][1]))], errors, False
    payloads = []
    for _, tensors, _ in parts:
        if isinstance(tensors, PackedPayloads):
            payloads += tensors.unpack()
        else:  # a part with no device JPEG: its items' rows, as decode_batch takes them
            payloads += [[t[i] for t in tensors] for i in range(len(tensors[0]))]
    return items, payloads, errors, True


def _batches(start: int, stop: int, batch_size: int) -> list[list[int]]:
    return [list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)]


#: Fewest items in a worker's part of a batch (:func:`_parts`). Each part costs the main process a fetch and a
#: shared-memory handover per tensor: with 16-item parts, ViT-B-32 on 32 x 32 JPEGs ran at 3,533 img/s on an H200,
#: against 6,043 with whole batches in an earlier run; with 32-item parts, 6,094 (docs/benchmarks.md).
MIN_PART_ITEMS = 32

#: Batches that the DataLoader workers prepare ahead of the one being encoded.
LOOKAHEAD = 4


def _parts(batch: list[int], workers: int) -> list[list[int]]:
    """Split a batch into one part per worker (at least :data:`MIN_PART_ITEMS` items each).

    Each DataLoader worker decodes a part, so the first batch is ready once every
    worker has decoded its part, not after one worker has decoded a whole batch.
    The parts are joined again in order (:func:`_assemble`): the batches, and so
    the stored values, are those of ``batch_size``.
    """
    n = max(1, min(workers, len(batch) // MIN_PART_ITEMS))
    size = -(-len(batch) // n)
    return [batch[i : i + size] for i in range(0, len(batch), size)]


# --------------------------------------------------------------------------- store setup


def _existing(path: str) -> bool:
    return os.path.exists(path) and os.path.getsize(path) > 0


def _check_store_path(path: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse an existing store without resume or overwrite, and a store where no file can be made."""
    if _existing(path) and not (resume or overwrite):
        raise StoreError(f"{path}: already exists; set resume to continue it, or overwrite to replace it", param="resume")
    if os.path.isdir(path):
        raise StoreError(f"{path}: is a folder; give the store's file name", param="path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):  # as FeatureStore would say, but before any work
        raise StoreError(f"{path}: cannot open the store for writing ({os.strerror(errno.ENOENT)})", param="path")


def recorded_config(path: str | os.PathLike) -> ExtractConfig | None:
    """The :class:`ExtractConfig` that extracted the store at ``path``, or None when it records none."""
    with FeatureStore(path, "r") as store:
        recorded = store.metadata.get(schema.METADATA_EXTRACT)
    return None if recorded is None else ExtractConfig.from_json(recorded)


def _check_add_splits(path: str, config: ExtractConfig) -> tuple[str, ...]:
    """Refuse splits that cannot join the store at ``path``; return the store's classes (the added splits' label order)."""
    if not _existing(path):
        raise StoreError(f"{path}: there is no store to add splits to; extract the store first", param="path")
    with FeatureStore(path, "r") as store:
        recorded = store.metadata.get(schema.METADATA_EXTRACT)
        shard = store.metadata.get(schema.METADATA_SHARD) or {}
        classes = tuple(store.classes)
    if shard.get("count", 1) != 1:
        raise StoreMismatchError(
            f"{path}: is shard {shard.get('index')} of {shard['count']}; add splits to the merged store", param="path"
        )
    if tuple(config.shard) != (0, 1):
        raise InvalidParameterError(f"{path}: splits are added whole; leave shard at (0, 1)", param="shard")
    if recorded is not None:
        now = config.to_json()
        diff = sorted(k for k in now if k not in ADD_SPLITS_FREE and recorded.get(k) != now[k])
        if not now["model"] and not recorded.get("model") and "pretrained" in diff:
            diff.remove("pretrained")  # the weights of no CLIP model
        if diff:
            raise StoreMismatchError(
                f"{path}: was extracted with different {', '.join(diff)}; add splits with the settings the store "
                "was extracted with (recorded_config gives them)",
                param=diff[0],
            )
    if config.classes is not None and tuple(config.classes) != classes:
        raise StoreMismatchError(
            f"{path}: holds the classes {', '.join(classes)}; added splits must use the same classes in the same order",
            param="classes",
        )
    return classes


def _open_store(path: str, config: ExtractConfig, *, resume: bool, fresh: bool, add_splits: bool = False) -> FeatureStore:
    exists = _existing(path)
    store = FeatureStore(path, "w" if fresh else ("a" if resume or add_splits else "x"))
    if resume and exists:
        recorded = store.metadata.get(schema.METADATA_EXTRACT)
        if recorded is not None and recorded != config.to_json():
            diff = sorted(k for k, v in config.to_json().items() if recorded.get(k) != v)
            store.close()
            raise StoreMismatchError(
                f"{path}: was extracted with different {', '.join(diff)}; resume with the same config or write a new store"
            )
    return store


def _set_precisions(store: FeatureStore, backbones, requested: dict, device: torch.device) -> dict[str, str]:
    """Resolve and set each backbone's precision; refuse one that differs from what the store recorded for its feature set."""
    existing = store.feature_sets
    recorded = {name: schema.precision_of(info.provenance) for name, info in existing.items()}
    precisions = resolve_precisions(backbones, requested, device, recorded)
    for backbone in backbones:
        now, info = precisions[backbone.name], existing.get(backbone.name)
        if info is not None and recorded[backbone.name] != now:
            raise StoreMismatchError(_precision_mismatch(store.path, backbone.name, info.provenance, now, device), param="amp")
        backbone.precision = now
    return precisions


def _precision_mismatch(path, name: str, provenance: dict, now: str, device: torch.device) -> str:
    """The message of a resume that would compute feature set ``name`` in ``now``, not in its recorded precision."""
    was = schema.precision_of(provenance)
    if schema.PRECISION not in provenance:
        return (
            f"{path}: feature set {name!r} records no precision (an older release wrote it, and it is read as {was}), "
            f"but this run computes it in {now}; resume with amp {name}={was}, or extract into a new store"
        )
    if not applies_on(device):
        return (
            f"{path}: feature set {name!r} was computed in {was}, but this run computes it in {now} on {device} "
            "(autocast is used on cuda only); resume on a cuda device, or extract into a new store"
        )
    return (
        f"{path}: feature set {name!r} was computed in {was}, but this run computes it in {now}; "
        f"resume with amp {name}={was}, or extract into a new store"
    )


def _prepare_store(store: FeatureStore, config: ExtractConfig, classes, backbones, plans, options: RunOptions) -> None:
    store.set_classes(list(classes))
    for backbone in backbones:
        prov = _feature_set_provenance(store, backbone, options)
        prov["dataset"] = os.path.abspath(config.source)
        prov[schema.PRECISION] = backbone.applied_precision
        if config.augment_views:
            prov["augment"] = {"views": config.augment_views, "seed": config.seed, "crop_scale": list(AUG_SCALE), "hflip": 0.5}
        store.add_feature_set(backbone.name, backbone.dim, dtype=config.dtype, normalized=config.normalize, provenance=prov)
    for plan in plans:
        store.create_split(plan.name, feature_sets=[b.name for b in backbones])
    store.set_metadata(schema.METADATA_EXTRACT, config.to_json())
    store.set_metadata(
        schema.METADATA_SHARD,
        {
            "index": config.shard[0],
            "count": config.shard[1],
            "items": {p.name: [p.start, p.stop, p.n_items] for p in plans},
        },
    )


def _prepare_added_splits(store: FeatureStore, config: ExtractConfig, backbones, plans, options: RunOptions) -> None:
    """Check that the store can take ``plans``' splits, record them, and create them (``extract(..., add_splits=True)``).

    A split of the same name is continued only when an earlier add with the same
    config recorded it (an interrupted add); any other is refused. The record goes
    into the metadata before the splits are made, so that a kill in between leaves
    nothing the next run cannot recognise.
    """
    added = dict(store.metadata.get(schema.METADATA_ADDED_SPLITS) or {})
    now = config.to_json()
    for plan in plans:
        if plan.name in store.splits and added.get(plan.name) != now:
            raise StoreMismatchError(
                f"{store.path}: already holds a split {plan.name!r}; add the new images under other split names, "
                "or drop that split first (drop_split)",
                param="splits",
            )
    for backbone in backbones:
        existing = store.feature_sets.get(backbone.name)
        if existing is None:
            raise StoreMismatchError(
                f"{store.path}: has no feature set {backbone.name!r}; added splits are encoded by the store's own "
                f"backbones ({', '.join(store.feature_sets) or 'none'})",
                param="aux",
            )
        prov = _feature_set_provenance(store, backbone, options)
        prov[schema.PRECISION] = backbone.applied_precision
        store.add_feature_set(backbone.name, backbone.dim, dtype=config.dtype, normalized=config.normalize, provenance=prov)
    store.set_metadata(schema.METADATA_ADDED_SPLITS, {**added, **{plan.name: now for plan in plans}})
    shard = dict(store.metadata.get(schema.METADATA_SHARD) or {"index": 0, "count": 1, "items": {}})
    shard["items"] = {**shard.get("items", {}), **{p.name: [p.start, p.stop, p.n_items] for p in plans}}
    store.set_metadata(schema.METADATA_SHARD, shard)
    for plan in plans:
        store.create_split(plan.name, feature_sets=[b.name for b in backbones])


def _feature_set_provenance(store: FeatureStore, backbone: Backbone, options: RunOptions) -> dict:
    """The backbone's provenance with the run's decode path (and on the ``gpu`` and ``hybrid`` paths, the device
    resize) and ``compiled``, keeping the stored ``preprocess`` dict when it describes the same preprocessing.

    Stores written before ``resize_mode`` and ``fill_color`` were recorded hold a
    ``preprocess`` dict without them; such a dict reads back with the defaults
    (:meth:`Preprocess.from_dict`), and when that equals the backbone's
    preprocessing the run resumes into it. Any real difference is left for
    ``add_feature_set`` to refuse, except another decode path, an earlier
    release's device resize, or another ``compile``, refused here with their own
    messages (a store without the keys was decoded on the CPU by an eager tower).
    """
    prov = backbone.provenance()
    prov[schema.DECODE] = options.decode
    if options.decode != schema.CPU_DECODE:
        prov[schema.DEVICE_RESIZE] = schema.DEVICE_RESIZE_PIL
    prov[schema.COMPILED] = bool(options.compile)
    existing = store.feature_sets.get(backbone.name)
    if existing is not None and schema.decode_of(existing.provenance) != options.decode:
        was = schema.decode_of(existing.provenance)
        raise StoreMismatchError(
            f"{store.path}: feature set {backbone.name!r} was made from images decoded on the {was} path, but this run "
            f"decodes on the {options.decode} path; the two paths' features are never mixed under one name, so run with "
            f"decode {was!r}, or extract into a new store",
            param="decode",
        )
    was = schema.device_resize_of(existing.provenance) if existing is not None else None
    if existing is not None and was != prov.get(schema.DEVICE_RESIZE):
        by = f"with the device resize {was!r}" if was else "by a release before 2026-11-26"
        raise StoreMismatchError(
            f"{store.path}: feature set {backbone.name!r} was made on the {options.decode} path {by}, which differs "
            f"from this release's ({schema.DEVICE_RESIZE_PIL!r}, PIL's byte for byte) by a grey level or more; the two "
            "are never mixed under one name, so extract into a new store"
        )
    if existing is not None and schema.compiled_of(existing.provenance) != bool(options.compile):
        was, now = (("compiled", "eager") if schema.compiled_of(existing.provenance) else ("eager", "compiled"))
        raise StoreMismatchError(
            f"{store.path}: feature set {backbone.name!r} was computed by the {was} image tower, but this run's is "
            f"{now}; their features round differently and are never mixed under one name, so run with "
            f"compile={was == 'compiled'}, or extract into a new store",
            param="compile",
        )
    recorded = existing.provenance.get("preprocess") if existing is not None else None
    if recorded and recorded != prov["preprocess"] and Preprocess.from_dict(recorded) == backbone.preprocess:
        prov["preprocess"] = recorded
    return prov


def _resume_item(store: FeatureStore, plan: SplitPlan, batch_size: int) -> int:
    """First item to encode: the end of the batch of the last committed row."""
    n = store.n_rows(plan.name)
    if n == 0:
        return plan.start
    last_id = str(store.ids(plan.name, rows=slice(n - 1, n))[0])
    last_view = int(store.views(plan.name, rows=slice(n - 1, n))[0])
    position = {key: i for i, key in enumerate(plan.sample_keys.tolist())}
    if last_id not in position:
        raise StoreMismatchError(f"{store.path}: row id {last_id!r} is not in the dataset; resume with the same source", param="source")
    item = position[last_id] * plan.views + (last_view if plan.views > 1 else 0)
    offset = (item - plan.start) // batch_size + 1
    return min(plan.start + offset * batch_size, plan.stop)


# --------------------------------------------------------------------------- the loop


def _encode(backbones, preprocesses, groups, tensors, ok, device):
    """Start encoding a batch; return a function that waits for its features, ``{feature set: (b, dim) float32}``.

    Each preprocessing group's uint8 parts go to ``device`` (from pinned memory,
    asynchronously on a GPU) and are joined, normalised and encoded there, each
    backbone in its precision (``backbones`` may hold their :class:`_GraphedFeatures`).
    On a GPU the features come back to pinned host memory asynchronously too, so
    the caller can prepare the next batch while this one is computed.
    """
    out = {}
    cuda = device.type == "cuda"
    with torch.inference_mode():
        keep = None if ok.all() else torch.from_numpy(np.flatnonzero(ok)).to(device, non_blocking=True)
        inputs = []
        for parts, pp in zip(tensors, preprocesses, strict=True):
            x = torch.cat([t.to(device, non_blocking=True) for t in parts]) if len(parts) > 1 else parts[0].to(device, non_blocking=True)
            inputs.append(normalize_batch(x if keep is None else x.index_select(0, keep), pp))  # drop failed rows there
        for backbone, group in zip(backbones, groups, strict=True):
            features = backbone.features(inputs[group])
            if cuda:
                host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
                features = host.copy_(features, non_blocking=True)
            out[backbone.name] = features
    done = torch.cuda.Event() if cuda else None
    if done is not None:
        done.record(torch.cuda.current_stream(device))

    def wait() -> dict[str, np.ndarray]:
        if done is not None:
            done.synchronize()
        return {name: features.numpy() for name, features in out.items()}

    return wait


def _compile_image_tower(backbone: Backbone) -> None:
    """``torch.compile`` the image tower of ``backbone`` (``RunOptions.compile``), for one static batch shape.

    A batch smaller than the largest seen so far (the last of a split) is padded
    with copies of its first row to that size, and its rows cut back out, so it
    reuses the compiled graph instead of compiling a dynamic one. The backbone
    is changed in place; compiling it again does nothing.
    """
    if getattr(backbone.encode_image, "compiled_by_clipcache", False):
        return
    compiled = torch.compile(backbone.encode_image, dynamic=False)
    largest = [0]

    def encode_image(batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        if n >= largest[0]:
            largest[0] = n
            return compiled(batch)
        pad = batch[:1].expand(largest[0] - n, *batch.shape[1:])
        return compiled(torch.cat([batch, pad]))[:n]

    encode_image.compiled_by_clipcache = True
    backbone.encode_image = encode_image


class _GraphedFeatures:
    """A backbone's :meth:`~clipcache.extract.backbones.Backbone.features` for batches of one size, by replaying a
    graph captured once; batches of other sizes (the last of a split) are encoded by the backbone itself.

    The graph's input is a buffer of its own, which each call fills from the batch
    it is given, and its output is overwritten by the next replay: a call returns
    a copy. The graph replays the kernels that the eager call launched while it
    was captured, on the same shapes, so its features are meant to equal the eager
    ones bit for bit (checked on a GPU by ``tests/extract/test_gpu.py``).

    Parameters
    ----------
    backbone : Backbone
        On its device, in its precision; ``name`` and ``preprocess`` are taken from it.
    batch_size : int
    capture : callable, optional
        ``capture(function, static_input) -> (replay, static_output)``:
        :func:`_capture_cuda_graph` by default. Tests pass one that replays by
        calling ``function`` again.
    """

    def __init__(self, backbone: Backbone, batch_size: int, capture=None):
        self.backbone = backbone
        self.name = backbone.name
        size = backbone.preprocess.image_size
        with torch.inference_mode():
            self.static_input = torch.zeros((batch_size, 3, size, size), device=backbone.device)
            self._replay, self._static_output = (capture or _capture_cuda_graph)(backbone.features, self.static_input)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """The backbone's features of ``batch``: by a replay when it has the graph's batch size."""
        if batch.shape != self.static_input.shape:
            return self.backbone.features(batch)
        self.static_input.copy_(batch)
        self._replay()
        return self._static_output.clone()


def _capture_cuda_graph(function, static_input: torch.Tensor):
    """Capture ``function(static_input)`` in a CUDA graph, after two warm-up calls on a side stream (as torch's
    documentation of CUDA graphs does); return its replay and its output."""
    device = static_input.device
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(2):  # lazy initialisation (cuBLAS workspaces, kernel choices) before the capture
            function(static_input)
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: another thread's device calls (the decode thread's) do not break the capture
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        static_output = function(static_input)
    return graph.replay, static_output


def _encoders(backbones: Sequence[Backbone], batch_size: int, options: RunOptions) -> list:
    """What encodes the batches: each backbone, or on a CUDA device with ``options.cuda_graphs`` (and not
    ``options.compile``) its :class:`_GraphedFeatures`; a backbone whose capture fails is encoded eagerly, with a
    warning."""
    device = torch.device(options.device)
    if not (options.cuda_graphs and not options.compile and device.type == "cuda"):
        return list(backbones)
    encoders = []
    with torch.cuda.device(device):
        for backbone in backbones:
            try:
                encoders.append(_GraphedFeatures(backbone, batch_size))
            except RuntimeError as exc:
                logger.warning("%s: its image tower could not be captured in a CUDA graph (%s); encoding it eagerly",
                               backbone.name, str(exc).splitlines()[0])
                encoders.append(backbone)
    return encoders


def _run_splits(
    store, plans, backbones, config: ExtractConfig, options: RunOptions, report: ExtractReport, encoders: list
) -> None:
    """Encode the items left to do of each split plan, in order, and commit them batch by batch; mark each split
    complete after its last batch.

    One set of DataLoader workers serves every split of the run: they are
    started once, not once per split, and they decode the first batches of the
    next split while the device encodes the last ones of the split before.
    Three stages overlap. The workers decode parts of the batches ahead
    (:func:`_parts`), or on the ``gpu`` decode path read them, for a thread to
    decode on the device (:func:`_decoded_batches`); the device encodes one batch
    while the main thread fetches and joins the next, and queues it behind the first
    before it waits for the first one's features (:func:`_encode` returns before
    the features are ready, and nothing in it waits for the device), so that the
    device always has the next batch queued; and each batch's store calls go to a
    :class:`~clipcache.extract.writer.StoreWriter` thread, in order, so the loop
    never waits on HDF5. The store is touched only by the writer between its start
    and its close; before, the loop reads where each split resumes. A split's
    completion mark is the writer's call after the split's last batch, so it is
    committed after the split's rows and before any row of the next split.
    ``encoders`` (:func:`_encoders`: the backbones, or their graphs) encode the
    batches.
    """
    todo = []  # (plan, first item to encode) of each split with items left
    for plan in plans:
        if store.is_complete(plan.name):
            logger.info("%s: split %s is complete; nothing to do", store.path, plan.name)
            continue
        start = _resume_item(store, plan, config.batch_size)
        if start == plan.stop:  # no item, or every row committed by a run stopped before its mark
            store.mark_complete(plan.name)
        else:
            todo.append((plan, start))
    if not todo:
        return
    preprocesses = list(dict.fromkeys(b.preprocess for b in backbones))
    groups = [preprocesses.index(b.preprocess) for b in backbones]
    dataset = _SplitsDataset(
        [_ItemDataset(plan, preprocesses, config.augment_views > 0, config.seed, decode=options.decode) for plan, _ in todo]
    )
    device = torch.device(options.device)
    splits, batches = [], []  # per batch: the number of its split in todo, and its parts (indices into dataset)
    for k, (plan, start) in enumerate(todo):
        for batch in _batches(dataset.offsets[k] + start, dataset.offsets[k] + plan.stop, config.batch_size):
            splits.append(k)
            batches.append(_parts(batch, options.workers))
    per_batch = max(len(b) for b in batches)

    loader = DataLoader(
        dataset,
        batch_sampler=[part for batch in batches for part in batch],
        num_workers=options.workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        # about LOOKAHEAD batches in flight, whatever the number of parts
        prefetch_factor=max(2, -(-LOOKAHEAD * per_batch // options.workers)) if options.workers else None,
    )
    recorded = [{sid for sid, _, _ in store.skipped(plan.name)} for plan, _ in todo]
    # each split's progress bar, until its completion mark; the first's from the start, the others' from their first
    # finished batch, after the bar before is closed
    bars = {0: _progress_bar(*todo[0], options)}
    parts = iter(loader)
    # On "cuda:N" the run's GPU is the current device: events and streams then refer to it, as a torchrun rank
    # needs (the decode thread works on this thread's current stream, so on the same GPU).
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()

    def finish(writer, pending) -> None:  # pending: (split number, launched batch) or None
        if pending is not None:
            k, launched = pending
            plan, start = todo[k]
            if k not in bars:
                bars[k] = _progress_bar(plan, start, options)
            _finish_batch(writer, store, plan, launched, report, bars[k])

    def complete(writer, k: int) -> None:
        writer.submit(store.mark_complete, todo[k][0].name)
        bars.pop(k).close()

    try:
        with on_device, writing() as writer, contextlib.closing(
            _decoded_batches(parts, batches, preprocesses, device, options.decode, report.waits)
        ) as decoded:
            pending = None  # the batch the device encodes while the next one is fetched and decoded
            for j, (items, tensors, errors) in enumerate(decoded):
                k = splits[j]
                try:  # queued behind the batch before, so that the device never runs dry
                    launched = _launch_batch(
                        todo[k][0], encoders, (preprocesses, groups), items, tensors, errors, recorded[k], device, options
                    )
                except DatasetError:  # strict: the batch before is committed first, as a serial loop would
                    finish(writer, pending)
                    raise
                finish(writer, pending)
                if pending is not None and pending[0] != k:  # the batch finished was its split's last
                    complete(writer, pending[0])
                pending = (k, launched)
            finish(writer, pending)
            complete(writer, pending[0])
    finally:
        for bar in bars.values():
            bar.close()
        _stop_workers(parts)


class _SplitsDataset(ConcatDataset):
    """The items of several splits' :class:`_ItemDataset`, one split after the other (torch's ``ConcatDataset``):
    index ``offsets[k] + item`` is item ``item`` of split ``k`` (and its item number is ``item``)."""

    @property
    def offsets(self) -> list[int]:
        """Where each split's items start, and the end of the last."""
        return [0, *self.cumulative_sizes]


def _stop_workers(parts) -> None:
    """Stop the DataLoader iterator's worker processes now, on every way out of the loop.

    An exception's traceback keeps the iterator alive until the garbage collector
    finds it, and its workers with it: processes that an interrupted run in a
    notebook would leave behind, holding the store's file open.
    """
    shutdown = getattr(parts, "_shutdown_workers", None)  # the multiprocessing iterator's; it runs once
    if shutdown is not None:
        shutdown()


def typical_pixels(plans: Sequence[SplitPlan], n: int = 32) -> float | None:
    """The median pixels (width x height) of up to ``n`` images spread evenly over the first plan's items.

    The items are those of the whole split, whatever the shard, so that every
    rank of a torchrun launch resolves the same decode path. Image files are
    opened for their header only; None when no plan has items
    or none of the sampled images can be read (``decode="auto"`` then takes
    ``gpu`` on a CUDA device, see :func:`resolve_decode`).
    """
    plan = next((p for p in plans if p.n_items), None)
    if plan is None:
        return None
    root = getattr(plan.source, "root", None)
    sizes = []
    for item in np.unique(np.linspace(0, plan.n_items - 1, min(n, plan.n_items)).astype(np.int64)):
        try:
            if root is not None:
                with Image.open(os.path.join(root, plan.key(int(item)))) as image:
                    width, height = image.size
            else:
                width, height = plan.source.load(plan.sample_of(int(item))).size
        except _DECODE_ERRORS:
            continue
        sizes.append(width * height)
    return float(np.median(sizes)) if sizes else None


#: Batches that the decode thread of the ``gpu`` and ``hybrid`` decode paths decodes ahead of the one being launched.
DECODE_AHEAD = 1

#: Whether the decode thread of the ``gpu`` and ``hybrid`` paths resizes each batch on a CUDA stream of its own
#: (:func:`~clipcache.extract.decode.side_stream`), so that the device can resize one batch while it still encodes
#: the one before, instead of after it on the loop's stream. The kernels are the same, so are the features. Off
#: until measured on a GPU: on an H100 the ``hybrid`` path's :func:`decode_batch` of 256 CIFAR-10 images (the copy,
#: the resize, the crop) took 3.16 ms of the device's time, against 12.6 ms for ViT-B-32's graphed forward pass
#: (docs/benchmarks.md, "Tenth run"); whether the two overlap, or slow each other as nvJPEG and the model's kernels
#: do, is not known. The normalisation (0.59 ms) stays on the loop's stream, in :func:`_encode`.
PREPROCESS_STREAM = False

def _decoded_batches(parts, batches, preprocesses, device, decode: str, waits: dict):
    """Fetch the batches' parts from the DataLoader and yield each batch as ``(items, tensors, errors)``, in order.

    On the ``gpu`` decode path a thread decodes (:func:`decode_batch`)
    :data:`DECODE_AHEAD` batches ahead of the one yielded: nvJPEG's call waits for
    the device's decoder with the GIL released, so this thread meanwhile fetches
    the next batch and launches the one before. Once every part is fetched, the
    same thread stops the DataLoader's workers after the last decode, so that their
    exit overlaps the last batches' encoding (on an H100 it took 0.03 to 0.07 s).
    Closing the generator cancels the decodes not started and waits for the one
    running (and for the workers' stop).
    """
    ahead: collections.deque = collections.deque()  # (items, job or (tensors, errors, None)), in batch order
    depth = DECODE_AHEAD if decode in ("gpu", "hybrid") else 0
    pool = None
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None  # the one the batches are encoded on
    side = side_stream(device, "preprocess") if PREPROCESS_STREAM and stream is not None else None

    def take():
        items, job = ahead.popleft()
        if isinstance(job, Future):
            began = time.perf_counter()
            job = job.result()
            waits["decode"] += time.perf_counter() - began
        tensors, errors, ready = job
        if ready is not None:  # the batch's encoding, queued next on the loop's stream, waits for its resize there
            stream.wait_event(ready)
        return items, tensors, errors

    try:
        for batch in batches:
            began = time.perf_counter()
            fetched = [next(parts) for _ in batch]
            waits["workers"] += time.perf_counter() - began
            items, tensors, errors, payloads = _assemble(fetched)
            if payloads:
                pool = pool or ThreadPoolExecutor(1, thread_name_prefix="clipcache-decode")
                ahead.append((items, pool.submit(_decode_payloads, tensors, errors, preprocesses, device, stream, side)))
            else:
                ahead.append((items, (tensors, errors, None)))
            if len(ahead) > depth:
                yield take()
        if pool is not None:  # every part fetched: the workers stop in the decode thread, after the last decode,
            pool.submit(_stop_workers, parts)  # while the loop's thread launches and finishes the last batches
        while ahead:
            yield take()
    finally:
        if pool is not None:
            for _, job in ahead:
                if isinstance(job, Future):
                    job.cancel()
            pool.shutdown(wait=True)


def _decode_payloads(payloads, errors, preprocesses, device: torch.device, stream, side=None):
    """:func:`decode_batch` in the decode thread, on ``stream`` (the one the batches are encoded on, and its device),
    or on ``side`` (:data:`PREPROCESS_STREAM`); returns ``(tensors, errors, ready)``.

    ``ready``: None, or with ``side`` the event that ``stream`` waits for before it
    encodes the batch. Its tensors are then recorded on ``stream``, so that the
    allocator hands their blocks to ``side`` again only once ``stream`` is done with them.
    """
    with torch.cuda.stream(side or stream) if stream is not None else contextlib.nullcontext():
        tensors, errors = decode_batch(payloads, errors, preprocesses, device, _DECODE_ERRORS)
    ready = None
    if side is not None:
        ready = torch.cuda.Event()
        ready.record(side)
        for tensor in tensors:
            tensor.record_stream(stream)
    return [[t] for t in tensors], errors, ready


def _finish_batch(writer, store, plan, launched, report, bar) -> None:
    """Wait for a launched batch's features (None: nothing to do) and hand its store calls to ``writer``."""
    if launched is None:
        return
    n, skipped, rows, features = launched
    began = time.perf_counter()
    if rows is not None:
        rows["features"] = features()
    submitted = time.perf_counter()
    if skipped is not None or rows is not None:
        writer.submit(_write_batch, store, plan.name, skipped, rows)
    report.waits["device"] += submitted - began
    report.waits["writer"] += time.perf_counter() - submitted
    report.encoded += n
    bar.update(n)


def _launch_batch(plan, backbones, grouping, items, tensors, errors, recorded, device, options):
    """Check one decoded batch and start encoding its readable items.

    Returns ``(n, skipped, rows, features)`` for :func:`_finish_batch`:
    the batch's size, its newly skipped samples (or None), the arguments of its
    append without the features (or None), and the function that waits for them.
    """
    ok = np.fromiter((not e for e in errors), dtype=bool, count=len(errors))
    skipped = None
    if not ok.all():
        bad = np.flatnonzero(~ok)
        keys = plan.keys_of(items[bad]).tolist()
        if options.strict:
            raise DatasetError(f"{keys[0]}: cannot be read ({errors[bad[0]]}); fix or remove it, or set strict=False to skip it", param="strict")
        new = [(key, errors[j]) for key, j in zip(keys, bad.tolist(), strict=True) if key not in recorded]
        if new:
            skipped = ([key for key, _ in new], [reason for _, reason in new])
            recorded.update(skipped[0])
    rows = features = None
    if ok.any():
        good = items[ok]
        features = _encode(backbones, *grouping, tensors, ok, device)
        keys = plan.keys_of(good).tolist()
        rows = {"ids": keys, "paths": keys, "labels": plan.labels_of(good), "views": plan.views_of(good)}
    return len(items), skipped, rows, features


def _write_batch(store: FeatureStore, split: str, skipped: tuple[list, list] | None, rows: dict | None) -> None:
    """The store calls of one batch, run by the writer thread: record its newly skipped samples, then append its rows.

    Parameters
    ----------
    store : FeatureStore
    split : str
    skipped : (list of str, list of str) or None
        Keys and reasons of the samples skipped for the first time.
    rows : dict or None
        The arguments of :meth:`FeatureStore.append` (ids, paths, labels, features, views); None when no item was read.
    """
    if skipped is not None:
        keys, reasons = skipped
        store.record_skipped(split, ids=keys, paths=keys, reasons=reasons)
        for key, reason in zip(keys, reasons, strict=True):
            logger.warning("skipped %s: %s", key, reason)
    if rows is not None:
        store.append(split, **rows)


def _progress_bar(plan: SplitPlan, start: int, options: RunOptions):
    show = sys.stderr.isatty() if options.progress is None else options.progress
    return tqdm(
        total=plan.stop - plan.start,
        initial=start - plan.start,
        desc=plan.name,
        unit="img",
        disable=not show,
        smoothing=0.1,
    )


def extract(
    path: str | os.PathLike,
    config: ExtractConfig,
    options: RunOptions = RunOptions(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    templates: str | None = None,
    backbones: Sequence[Backbone] | None = None,
    add_splits: bool = False,
) -> ExtractReport:
    """Extract features of a dataset into a feature store.

    Parameters
    ----------
    path : str or os.PathLike
        The store to write (a new file unless ``resume`` or ``overwrite``).
    config : ExtractConfig
        What to extract; recorded in the store and checked on resume.
    options : RunOptions
        Workers, device, precision per backbone (``amp``), strictness, progress bar.
    resume : bool
        Continue a store written by an interrupted run with the same config.
    overwrite : bool
        Replace an existing store.
    templates : str, optional
        Also embed class prompts with the CLIP text tower (see :func:`clipcache.extract.prompts.load_prompts`).
    backbones : sequence of Backbone, optional
        Prebuilt backbones (they must match ``config``); built from it by default.
    add_splits : bool
        Add the splits of ``config.source`` to the existing store at ``path``
        (for example the corrupted copies of :func:`clipcache.corrupt.corrupt_folder`),
        encoded as the store's own splits were: every field of ``config`` outside
        :data:`ADD_SPLITS_FREE` must equal the store's recorded config
        (:func:`recorded_config`), the backbones must be the store's feature sets in
        their recorded precision, and labels follow the store's classes. A split
        name the store already holds is refused, unless an earlier add with the
        same config recorded it: an interrupted add continues when run again.
        The added splits' configs are recorded in the metadata key ``added_splits``.

    Returns
    -------
    ExtractReport

    Raises
    ------
    DatasetError, ModelLoadError, StoreError
        Bad source, backbone or store; StoreMismatchError when resuming with other
        flags, or in another precision than a feature set was computed in.
    """
    path = os.fspath(path)
    requested = _check_config(config, options)
    if resume and overwrite:
        raise InvalidParameterError(f"{path}: resume and overwrite contradict each other; pass one of them", param="resume")
    if templates and backbones is None and not config.model:
        raise InvalidParameterError("templates need a text tower; extract with an open_clip model as well", param="templates")
    classes = config.classes
    if add_splits:
        if resume or overwrite:
            raise InvalidParameterError(
                f"{path}: add_splits continues an interrupted add by itself; pass neither resume nor overwrite with it",
                param="add_splits",
            )
        if templates:
            raise InvalidParameterError(
                "add_splits adds image splits only; embed prompts with clipcache.extract.embed_prompts", param="templates"
            )
        classes = _check_add_splits(path, config)
    else:
        _check_store_path(path, resume=resume, overwrite=overwrite)
    dataset = open_dataset(config.source, classes=classes)
    selected = select_samples(
        dataset, splits=list(config.splits or []) or None, max_per_class=config.max_per_class, val_per_class=config.val_per_class
    )
    plans = build_plans(selected, views=max(1, config.augment_views), batch_size=config.batch_size, shard=config.shard)
    prompt_set = load_prompts(templates, dataset.classes) if templates else None  # a bad file fails now, not at the end
    check_amp_names(requested, _feature_set_names(config) if backbones is None else [b.name for b in backbones])
    if backbones is None:
        backbones = build_backbones(config.model, config.pretrained, config.aux, image_size=config.image_size, seed=config.seed)
    # with auto, a resumed or extended store keeps the path it records
    recorded = _recorded_decode(path, backbones) if options.decode == "auto" and (resume or add_splits) else None
    requested_decode = recorded or options.decode
    preprocesses, augment = [b.preprocess for b in backbones], config.augment_views > 0
    decode = resolve_decode(requested_decode, options.device, preprocesses, augment=augment)
    if requested_decode == "auto" and decode == "gpu":  # hybrid instead, for thumbnails
        decode = resolve_decode("auto", options.device, preprocesses, augment=augment, image_pixels=typical_pixels(plans))
    options = dataclasses.replace(options, decode=decode)
    for backbone in backbones:
        backbone.normalize = config.normalize
        backbone.to(options.device)
        if options.compile:
            _compile_image_tower(backbone)
    text_backbone = _text_backbone(backbones) if templates else None
    report = ExtractReport(path=path, feature_sets=[b.name for b in backbones])

    def run(target: str, fresh: bool) -> None:
        with _open_store(target, config, resume=resume, fresh=fresh, add_splits=add_splits) as store:
            report.precisions = _set_precisions(store, backbones, requested, torch.device(options.device))
            if add_splits:
                _prepare_added_splits(store, config, backbones, plans, options)
            else:
                _prepare_store(store, config, dataset.classes, backbones, plans, options)
            encoders = _encoders(backbones, config.batch_size, options)  # in their precisions
            began = time.perf_counter()
            _run_splits(store, plans, backbones, config, options, report, encoders)
            report.seconds = time.perf_counter() - began
            if prompt_set is not None:
                embed_prompt_set(store, prompt_set, text_backbone, source=templates, overwrite=True)
            for plan in plans:
                report.rows[plan.name] = store.n_rows(plan.name)
                report.skipped[plan.name] = store.skipped(plan.name)

    if overwrite and _existing(path):
        try:
            with replace_store(path) as tmp:
                run(os.fspath(tmp), fresh=True)
        except StoreWriteError as exc:
            raise StoreWriteError(f"{path}: the new store could not be written, so the old one is unchanged ({exc})") from None
        return report
    try:
        run(path, fresh=overwrite)
    except StoreWriteError as exc:
        raise StoreWriteError(
            f"{exc}; fix the cause (free some space if the disk is full), then resume the extraction", param="resume"
        ) from None
    return report


def _recorded_decode(path: str, backbones: Sequence[Backbone]) -> str | None:
    """With decode "auto", a resume or an add follows the decode path the store's feature sets record, when they agree."""
    if not _existing(path):
        return None
    with FeatureStore(path, "r") as store:
        recorded = {schema.decode_of(store.feature_sets[b.name].provenance) for b in backbones if b.name in store.feature_sets}
    return recorded.pop() if len(recorded) == 1 else None


def _text_backbone(backbones: Sequence[Backbone]) -> Backbone:
    for backbone in backbones:
        if backbone.has_text:
            return backbone
    raise InvalidParameterError("templates need a text tower; extract with an open_clip model as well", param="templates")


def _feature_set_names(config: ExtractConfig) -> list[str]:
    """The feature-set names the backbones of ``config`` will have (as :func:`build_backbones` names them)."""
    return ([CLIP_FEATURE_SET] if config.model else []) + [parse_aux_spec(spec)[0] for spec in config.aux]


def _check_config(config: ExtractConfig, options: RunOptions) -> dict[str, str]:
    """Check the parameters before any work; return the parsed precision request."""
    if config.image_size is not None and config.image_size < 1:
        raise InvalidParameterError(f"image_size {config.image_size} must be a positive number of pixels", param="image_size")
    if config.val_per_class < 0:
        raise InvalidParameterError(f"val_per_class {config.val_per_class} must be 0 or more", param="val_per_class")
    if config.seed < 0:
        raise InvalidParameterError(f"seed {config.seed} must be 0 or more", param="seed")
    bad = {k: v for k, v in parse_limits(config.max_per_class).items() if v < 1}
    if bad:
        split, value = next(iter(bad.items()))
        where = "" if split == "*" else f" of split {split!r}"
        raise InvalidParameterError(f"max_per_class{where} is {value}; it must be at least 1", param="max_per_class")
    if config.batch_size < 1:
        raise InvalidParameterError(f"batch_size {config.batch_size} must be at least 1", param="batch_size")
    if config.augment_views < 0:
        raise InvalidParameterError(f"augment_views {config.augment_views} must be 0 or more", param="augment_views")
    if config.dtype not in ("float32", "float16"):
        raise InvalidParameterError(f"dtype {config.dtype!r} is not float32 or float16", param="dtype")
    requested = parse_amp(options.amp)
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {options.device!r} was asked for but no CUDA GPU is visible; use cpu", param="device")
    resolve_decode(options.decode, options.device, [], augment=config.augment_views > 0)  # refuse "gpu" where it cannot run
    if options.workers < 0:
        raise InvalidParameterError(f"workers {options.workers} must be 0 or more", param="workers")
    return requested
