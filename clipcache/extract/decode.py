"""Decoding and resizing a batch of images on the device (``RunOptions.decode``).

Three decode paths turn an image file into the uint8 model input of a
:class:`~clipcache.extract.transforms.Preprocess`:

* ``cpu``: the DataLoader workers decode with PIL and resize with PIL
  (:func:`~clipcache.extract.transforms.eval_transform_uint8`);
* ``gpu``: the workers only read the file's bytes; the main process decodes the
  whole batch with nvJPEG (``torchvision.io.decode_jpeg(list, device=...)``),
  resizes each image as PIL does, byte for byte, and cuts the window of
  :func:`~clipcache.extract.transforms.plan_geometry` on the device;
* ``hybrid``: the workers decode with PIL at the image's own size (any format
  PIL reads) and send the pixels; the main process resizes and cuts them on the
  run's device as the ``gpu`` path does. For small images (CIFAR's 32 x 32) the
  PIL resize is most of the ``cpu`` path's work and nvJPEG's chroma differs from
  PIL's; this path keeps PIL's decode and moves the resize to the device, so
  its bilinear and bicubic model inputs equal the ``cpu`` path's byte for byte.

On the ``gpu`` path, a file that nvJPEG is not given (:func:`device_decodable`
says no: PNG and other formats, grayscale, CMYK/YCCK, arithmetic-coded,
lossless, 12-bit or truncated JPEGs) is decoded by the worker on the CPU path,
and a file nvJPEG fails on is decoded on the CPU path by the main process, one
at a time. A file neither path reads carries the CPU path's error and is
recorded as skipped, as on the ``cpu`` path.

The path is recorded in each feature set's provenance (``schema.DECODE``):
nvJPEG's pixels are close to PIL's but not equal, so features from two paths are
never mixed under one name (see ``docs/extraction.md``, "Decoding on the GPU").
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from clipcache.errors import InvalidParameterError
from clipcache.extract.images import load_image
from clipcache.extract.resample import PIL_INTERPOLATIONS, pil_resize
from clipcache.extract.transforms import crop_or_pad, eval_transform_uint8, plan_geometry
from clipcache.feature_store.schema import DECODES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from clipcache.extract.transforms import Preprocess

__all__ = [
    "AUTO_HYBRID_PIXELS",
    "DECODE_CHOICES",
    "DEVICE_INTERPOLATIONS",
    "DecodedImage",
    "EncodedImage",
    "PackedPayloads",
    "decode_batch",
    "device_decodable",
    "resolve_decode",
    "tensor_preprocess",
]

logger = logging.getLogger(__name__)

DECODE_CHOICES = ("auto", *DECODES)
"""Values of ``RunOptions.decode``; ``auto`` resolves to ``gpu``, ``hybrid`` or ``cpu`` (:func:`resolve_decode`)."""

#: ``auto`` on a CUDA device takes ``hybrid`` instead of ``gpu`` when the typical image has at most this many times
#: the largest model input's pixels (S x S). Such images are enlarged, and on them the ``hybrid`` path was both faster
#: and faithful to the ``cpu`` path: ViT-B-32 on the 50,000 CIFAR-10 training JPEGs (32 x 32) on an H200 ran at
#: 10,299 img/s against the ``gpu`` path's 8,041, with EfficientNet-lite0 features at a cosine of 1.000000 to the
#: ``cpu`` path's where nvJPEG's were at 0.856. On 500 x 375 JPEGs, shrunk, ``gpu`` was faster (docs/benchmarks.md).
AUTO_HYBRID_PIXELS = 1.0

DEVICE_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
"""The :data:`~clipcache.extract.transforms.INTERPOLATIONS` applied to tensors on the device: bilinear and bicubic as
PIL does them, byte for byte (:func:`~clipcache.extract.resample.pil_resize`), nearest by torchvision."""

#: Tests set this to run the byte path (``decode="gpu"``) with torchvision's CPU
#: JPEG decoder on a cpu device; the public ``gpu`` choice needs CUDA.
_TENSOR_PATH_ON_CPU = False

_SOF_DEVICE = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive Huffman
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """The bytes of one JPEG file that a worker passes on for decoding on the device.

    Attributes
    ----------
    data : torch.Tensor, uint8, shape (n_bytes,)
    path : str
        The file, which the CPU path reopens if the device decoder fails on it.
    """

    data: torch.Tensor
    path: str


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """The pixels of one image that a worker decoded on the ``hybrid`` path, at the image's own size.

    Attributes
    ----------
    data : torch.Tensor, uint8, shape (3, H, W)
        RGB, as :func:`~clipcache.extract.transforms.to_rgb` makes it.
    """

    data: torch.Tensor


@dataclasses.dataclass
class PackedPayloads:
    """A ``gpu``- or ``hybrid``-path part of a batch as a worker sends it: the bytes of all its device JPEGs, or the
    pixels of all its decoded images, in one buffer.

    A numpy array crosses from a DataLoader worker to the main process inside the
    pickle, through the worker's pipe, and is copied on both sides; a tensor in
    shared memory crosses as a file descriptor, which costs more per part but
    copies nothing. Small buffers go as numpy arrays, large ones as tensors
    (``shared_bytes``; :data:`clipcache.extract.loop.SHARED_BUFFER_BYTES`, 4 MiB).
    Measured with ``benchmarks/worker_transfer.py`` on 2 CPU cores, 2 workers,
    32-image parts: numpy passed 1.76 times as many CIFAR-10 JPEGs per second
    as tensors (about 30 KB a part), 1.34 times as many 500 x 375 JPEGs (1.6 MB)
    and 1.46 times as many decoded CIFAR-10 images (98 KB); tensors passed 3.1
    times as many decoded 500 x 375 images (18 MB). :meth:`unpack` gives back
    the payloads that :func:`decode_batch` takes, as tensor views of the buffer.

    Attributes
    ----------
    buffer : numpy.ndarray or torch.Tensor, uint8, shape (n_bytes,)
        The device JPEGs' bytes, or the decoded images' pixels, one after another.
    entries : list
        Per item: ``(start, stop, path)`` of a device JPEG in ``buffer``,
        ``(start, stop, (3, H, W))`` of a decoded image, or the list of uint8
        tensors that the worker made on the CPU path.
    """

    buffer: np.ndarray | torch.Tensor
    entries: list

    @classmethod
    def pack(cls, payloads: Sequence, shared_bytes: float = float("inf")) -> PackedPayloads:
        """Pack per-item payloads: :class:`EncodedImage`, :class:`DecodedImage` or a list of tensors, as
        :func:`decode_batch` takes them. A buffer of at least ``shared_bytes`` bytes is a tensor in shared memory
        (see the class docstring); a smaller one a numpy array."""
        packed = [p.data.reshape(-1) for p in payloads if isinstance(p, EncodedImage | DecodedImage)]
        total = sum(p.numel() for p in packed)
        if total >= shared_bytes:
            buffer = torch.cat(packed, out=torch.empty(total, dtype=torch.uint8).share_memory_())
        else:
            buffer = np.concatenate([p.numpy() for p in packed]) if packed else np.zeros(0, dtype=np.uint8)
        entries, start = [], 0
        for p in payloads:
            if isinstance(p, EncodedImage | DecodedImage):
                stop = start + p.data.numel()
                entries.append((start, stop, p.path if isinstance(p, EncodedImage) else tuple(p.data.shape)))
                start = stop
            else:
                entries.append(p)
        return cls(buffer, entries)

    def unpack(self) -> list:
        """The payloads that were packed, each device JPEG's bytes or decoded image's pixels a tensor view of ``buffer``."""
        buffer = self.buffer if isinstance(self.buffer, torch.Tensor) else torch.from_numpy(self.buffer)
        out: list = []
        run: list[tuple] = []  # consecutive entries of one kind (and, decoded, of one shape), cut in one call
        for e in [*self.entries, None]:
            if run and (e is None or not isinstance(e, tuple) or _kind(e) != _kind(run[0])):
                start, stop = run[0][0], run[-1][1]
                if isinstance(run[0][2], str):
                    views = buffer[start:stop].split([stop_ - start_ for start_, stop_, _ in run])
                    out += [EncodedImage(view, path) for view, (_, _, path) in zip(views, run, strict=True)]
                else:
                    out += [DecodedImage(view) for view in buffer[start:stop].view(len(run), *run[0][2]).unbind(0)]
                run = []
            if isinstance(e, tuple):
                run.append(e)
            elif e is not None:
                out.append(e)
        return out


def _kind(entry: tuple):
    """What :meth:`PackedPayloads.unpack` cuts alike: every device JPEG, or decoded images of one shape."""
    return "jpeg" if isinstance(entry[2], str) else entry[2]


def _torchvision_decodes_on(device: torch.device) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` takes a list of JPEGs on ``device``."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and _TENSOR_PATH_ON_CPU


def resolve_decode(
    decode: str,
    device: str | torch.device,
    preprocesses: Sequence[Preprocess],
    *,
    augment: bool,
    image_pixels: float | None = None,
) -> str:
    """The decode path a run takes: ``"cpu"``, ``"gpu"`` or ``"hybrid"``.

    Parameters
    ----------
    decode : {"auto", "cpu", "gpu", "hybrid"}
    device : str or torch.device
        The run's device.
    preprocesses : sequence of Preprocess
        The backbones' preprocessing.
    augment : bool
        Whether the run stores augmented views (those are made on the CPU path).
    image_pixels : float, optional
        The pixels (width x height) of the run's typical image, where known.

    Returns
    -------
    str
        ``auto`` decodes on the device when the device is CUDA, torchvision
        decodes there, no views are augmented and every interpolation is one of
        :data:`DEVICE_INTERPOLATIONS`, and on the ``cpu`` path otherwise. On the
        device it takes ``hybrid`` when ``image_pixels`` is at most the largest
        model input's (thumbnails that are enlarged, see
        :data:`AUTO_HYBRID_PIXELS`), and ``gpu`` otherwise. ``hybrid`` runs on
        any device under the last two conditions.

    Raises
    ------
    InvalidParameterError
        On an unknown value, or ``gpu`` or ``hybrid`` where it cannot run.
    """
    if decode not in DECODE_CHOICES:
        raise InvalidParameterError(f"decode {decode!r} is not one of {', '.join(DECODE_CHOICES)}", param="decode")
    if decode == "cpu":
        return "cpu"
    device = torch.device(device)
    blockers = []
    if decode != "hybrid" and not _torchvision_decodes_on(device):
        blockers.append(f"the device is {device}, not a visible CUDA GPU")
    if augment:
        blockers.append("augmented views are made on the CPU")
    bad = sorted({pp.interpolation for pp in preprocesses if pp.interpolation not in DEVICE_INTERPOLATIONS})
    if bad:
        blockers.append(f"torch cannot resize tensors with {', '.join(bad)} interpolation")
    if not blockers:
        if decode != "auto":
            return decode
        largest = max((pp.image_size for pp in preprocesses), default=0) ** 2
        return "hybrid" if image_pixels is not None and image_pixels <= AUTO_HYBRID_PIXELS * largest else "gpu"
    if decode != "auto":
        raise InvalidParameterError(
            f"decode {decode!r} cannot run because {'; '.join(blockers)}; use decode 'cpu'", param="decode"
        )
    return "cpu"


# --------------------------------------------------------------------------- which files the device takes


def device_decodable(data: bytes) -> bool:
    """Whether a file's bytes are a JPEG that the device decoder is given.

    Reads the markers up to the frame header: a complete (ending in EOI), 8-bit,
    3-component, Huffman-coded (baseline, extended or progressive) JPEG whose
    Adobe marker, if any, does not say RGB. Everything else (other formats,
    grayscale, CMYK/YCCK, arithmetic or lossless coding, truncated files) goes
    to the CPU path.

    Parameters
    ----------
    data : bytes
        The whole file.

    Returns
    -------
    bool
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8 or data.rstrip(b"\x00\r\n\t ")[-2:] != b"\xff\xd9":
        return False
    pos = 2
    adobe_rgb = False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > n:
            return False
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe_rgb = segment[11] == 0
        if marker in _SOF_OTHER:
            return False
        if marker in _SOF_DEVICE:
            if len(segment) < 6:
                return False
            precision, components = segment[0], segment[5]
            return precision == 8 and components == 3 and not adobe_rgb
        if marker == 0xDA:  # scan before any frame header
            return False
        pos += 2 + length
    return False


# --------------------------------------------------------------------------- the batch on the device


def tensor_preprocess(image: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """Resize and crop/pad decoded images on their device, as the CPU path does with PIL.

    Parameters
    ----------
    image : torch.Tensor, uint8, shape (3, H, W) or (b, 3, H, W)
        Images of one size, on any device.
    pp : Preprocess
        Its ``interpolation`` must be one of :data:`DEVICE_INTERPOLATIONS`.

    Returns
    -------
    torch.Tensor, uint8, shape (..., 3, S, S), same device
        The geometry of :func:`~clipcache.extract.transforms.plan_geometry`. Bilinear and
        bicubic resizes are PIL's byte for byte (:func:`~clipcache.extract.resample.pil_resize`),
        computed for the window's pixels only.
    """
    from torchvision.transforms.v2 import functional as F2

    from clipcache.extract.transforms import INTERPOLATIONS

    height, width = image.shape[-2:]
    geometry = plan_geometry(pp, int(width), int(height))
    (new_h, new_w), size = geometry.resize_hw, geometry.size
    if pp.interpolation in PIL_INTERPOLATIONS:  # the window's part of the resized image (a centred window meets it)
        top, left = max(geometry.top, 0), max(geometry.left, 0)
        bottom, right = min(geometry.top + size, new_h), min(geometry.left + size, new_w)
        image = pil_resize(image, (new_h, new_w), pp.interpolation, (top, left, bottom - top, right - left))
        return crop_or_pad(image, geometry.top - top, geometry.left - left, size, geometry.fill).contiguous()
    if (new_h, new_w) != (height, width):
        image = F2.resize(image, [new_h, new_w], interpolation=INTERPOLATIONS[pp.interpolation], antialias=True)
    return crop_or_pad(image, geometry.top, geometry.left, size, geometry.fill).contiguous()


def _decode_many(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors on ``device``: as one batch, then one at a time if the batch fails; None where one fails."""
    if not datas:
        return []
    if device.type != "cuda":
        return _decode_on(datas, device)
    # torchvision allocates the decoded images on the current stream but writes them on its own decoder stream,
    # unordered with the current one (it waits for its own stream on the host before it returns). Allocated on
    # the caller's stream, they could take a block that the caller's queued work (the batch being encoded)
    # still reads: measured on an H200, NaN features and a feature cosine of 0.39 to the CPU path. So they are
    # allocated on a stream of their own, which runs no kernels, and recorded on the caller's stream where they
    # are used: the allocator then hands their blocks out again only once that stream's work on them is done.
    # The caller's stream goes on encoding while the decoder decodes.
    caller = torch.cuda.current_stream(device)
    side = side_stream(device, "nvjpeg")
    with torch.cuda.stream(side):
        images = _decode_on(datas, device)
    caller.wait_stream(side)
    for image in images:
        if image is not None:
            image.record_stream(caller)
    return images


_SIDE_STREAMS: dict = {}


def side_stream(device: torch.device, purpose: str):
    """A CUDA stream of ``device`` of its own for ``purpose``, made once: "nvjpeg", where the device decoder's
    images are allocated, or "preprocess", where the loop's decode thread resizes a batch while the device still
    encodes the one before."""
    key = (purpose, torch.cuda.current_device() if device.index is None else device.index)
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device=key[1])
    return _SIDE_STREAMS[key]


def _decode_on(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """:func:`_decode_many`'s decoding on the current stream."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision >= 0.29 points to torchcodec, which has no batched nvJPEG call
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | None] = []
        for data in datas:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as exc:
                logger.info("the device decoder failed on an image (%s); decoding it on the CPU", exc)
                out.append(None)
        return out


def decode_batch(
    payloads: Sequence,
    errors: Sequence[str],
    preprocesses: Sequence[Preprocess],
    device: str | torch.device,
    decode_errors: tuple[type[BaseException], ...],
) -> tuple[list[torch.Tensor], list[str]]:
    """Turn a batch of the ``gpu`` or ``hybrid`` path into uint8 model inputs on ``device``.

    Parameters
    ----------
    payloads : sequence, length b
        Per item: an :class:`EncodedImage` (bytes for the device decoder), a
        :class:`DecodedImage` (pixels a worker decoded, to resize on the device),
        or the list of uint8 tensors (3, S_k, S_k) a worker made on the CPU path
        (one per preprocessing; zeros when ``errors`` has the item's reason).
    errors : sequence of str, length b
        The workers' reasons ("" when the item was read).
    preprocesses : sequence of Preprocess, length k
    device : str or torch.device
    decode_errors : tuple of exception types
        What a failed CPU decode raises (recorded, not raised).

    Returns
    -------
    tensors : list of torch.Tensor, uint8, shape (b, 3, S_k, S_k), on ``device``
        One per preprocessing; rows of failed items are zeros.
    errors : list of str, length b
        ``errors`` plus the reasons of images that neither the device nor the CPU read.
    """
    device = torch.device(device)
    errors = list(errors)
    b = len(payloads)
    encoded = [i for i, p in enumerate(payloads) if isinstance(p, EncodedImage)]
    decoded = _decode_many([payloads[i].data for i in encoded], device)
    # (whether the images are on the host, height, width) -> [(row, image)]
    by_size: dict[tuple[bool, int, int], list[tuple[int, torch.Tensor]]] = {}
    fallbacks = []  # the rows the device decoder did not read
    for i, image in zip(encoded, decoded, strict=True):
        if image is None:
            fallbacks.append(i)
        else:
            by_size.setdefault((False, *image.shape[-2:]), []).append((i, image))
    for i, payload in enumerate(payloads):
        if isinstance(payload, DecodedImage):  # the hybrid path: decoded by a worker
            by_size.setdefault((True, *payload.data.shape[-2:]), []).append((i, payload.data))
    if len(by_size) == 1 and [i for i, _ in next(iter(by_size.values()))] == list(range(b)):
        # every item one image size, in order (CIFAR's thumbnails): the resize's output is the batch itself
        ((on_host, *_), members), = by_size.items()
        stacked = _stacked([image for _, image in members], on_host, device)
        return [tensor_preprocess(stacked, pp) for pp in preprocesses], errors
    outs = [torch.zeros((b, 3, pp.image_size, pp.image_size), dtype=torch.uint8, device=device) for pp in preprocesses]
    for i in fallbacks:
        _cpu_fallback(i, payloads[i].path, preprocesses, outs, errors, decode_errors)
    for (on_host, *_), members in by_size.items():  # one resize per image size: photo sets share a few sizes
        # copied without waiting: a blocking copy would wait for the batch the device is still encoding
        rows = torch.tensor([i for i, _ in members]).to(device, non_blocking=True)
        stacked = _stacked([image for _, image in members], on_host, device)
        for out, pp in zip(outs, preprocesses, strict=True):
            out[rows] = tensor_preprocess(stacked, pp)
    for i, payload in enumerate(payloads):
        if not isinstance(payload, EncodedImage | DecodedImage) and not errors[i]:
            for out, tensor in zip(outs, payload, strict=True):
                out[i].copy_(tensor, non_blocking=True)
    return outs, errors


def _stacked(images: list[torch.Tensor], on_host: bool, device: torch.device) -> torch.Tensor:
    """Images of one size as one (n, 3, H, W) tensor on ``device``; from the host through pinned memory on a GPU,
    copied there in one go and without waiting (a blocking copy would wait for the batch the device still encodes)."""
    if not on_host:
        return torch.stack(images)
    stacked = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=device.type == "cuda")
    return torch.stack(images, out=stacked).to(device, non_blocking=True)


def _cpu_fallback(i, path: str, preprocesses, outs, errors, decode_errors) -> None:
    """Decode item ``i``'s file with PIL on the CPU path into row ``i`` of ``outs``, or record why it cannot be read."""
    try:
        image = load_image(path)
        for out, pp in zip(outs, preprocesses, strict=True):
            out[i].copy_(eval_transform_uint8(pp)(image))
    except decode_errors as exc:
        errors[i] = f"{type(exc).__name__}: {exc}".strip()
