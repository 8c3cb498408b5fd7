"""nvJPEG's hardware batched JPEG decode, called through ctypes on a stream of the caller's choosing.

An experiment of ``benchmarks/nvjpeg_contention.py``, kept for the next one.
``torchvision.io.decode_jpeg(list, device="cuda")`` decodes on a stream that it
takes from torch's pool at the default priority, CUDA's lowest, and on an H200
its batched decode ran 17 to 25 times slower beside busy bf16 matrix products
than on an idle GPU. :class:`HardwareDecoder` calls the same library (the
``libnvjpeg`` that torchvision loaded) with the same hardware backend and batched
call that torchvision uses, so its pixels are torchvision's (equal on an H200),
but on a stream of the highest priority, and optionally with the library's
memory taken from torch's caching allocators.

Measured on an H200 (docs/benchmarks.md, "Why nvJPEG is slow here"): neither
helps. Beside 8192 x 8192 products it decoded 1,238 img/s at the highest
priority, 1,184 at the default one and 895 with torch's memory (the library
made no memory calls after its first batch), against torchvision's 1,212;
beside 4096 x 4096 products torchvision's decode ran at 4,373 img/s. The wait
grows with the length of the kernels beside it, and not with their priority.

A JPEG that the hardware backend does not take (``nvjpegDecodeBatchedSupported``:
progressive ones, for example) is None, as is every JPEG of a batch the library
fails on. :meth:`HardwareDecoder.open` gives None where there is no such
decoder: no CUDA, no ``libnvjpeg`` in reach, or a GPU without a hardware JPEG
decoder (the A100, H100 and H200 have one).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import glob
import logging
import os
import sys
import threading

import torch

__all__ = ["HardwareDecoder", "NvjpegImage"]

logger = logging.getLogger(__name__)

_MAX_COMPONENT = 4  # NVJPEG_MAX_COMPONENT
_BACKEND_HARDWARE = 3  # NVJPEG_BACKEND_HARDWARE
_OUTPUT_RGB = 3  # NVJPEG_OUTPUT_RGB: planar RGB, one plane per channel
_SUCCESS = 0  # NVJPEG_STATUS_SUCCESS


class NvjpegImage(ctypes.Structure):
    """``nvjpegImage_t``: where the decoder writes one image's planes, and their row pitches in bytes."""

    _fields_ = [("channel", ctypes.c_void_p * _MAX_COMPONENT), ("pitch", ctypes.c_size_t * _MAX_COMPONENT)]


def _library_paths() -> list[str]:
    """Where a ``libnvjpeg`` may be: the one already mapped into this process (torchvision's), then the usual places."""
    paths = []
    try:
        import torchvision.io.image  # noqa: F401 - on CUDA builds, its extension is linked against libnvjpeg
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(" ")[-1]
                if os.path.basename(path).startswith("libnvjpeg") and path not in paths:
                    paths.append(path)
    except OSError:  # not Linux
        pass
    for root in sys.path:
        for pattern in ("nvidia/*/lib/libnvjpeg.so*", "nvidia/*/*/lib/libnvjpeg.so*", "torchvision.libs/libnvjpeg*.so*"):
            paths.extend(sorted(p for p in glob.glob(os.path.join(root, pattern)) if p not in paths))
    found = ctypes.util.find_library("nvjpeg")
    if found:
        paths.append(found)
    return paths


def _load_library():
    """The first ``libnvjpeg`` of :func:`_library_paths` that loads, with its functions' signatures; None if none does."""
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        vp, size, cint = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        signatures = {
            "nvjpegCreateEx": [cint, vp, vp, ctypes.c_uint, ctypes.POINTER(vp)],
            "nvjpegJpegStateCreate": [vp, ctypes.POINTER(vp)],
            "nvjpegJpegStreamCreate": [vp, ctypes.POINTER(vp)],
            "nvjpegJpegStreamParseHeader": [vp, vp, size, vp],
            "nvjpegDecodeBatchedSupported": [vp, vp, ctypes.POINTER(cint)],
            "nvjpegGetImageInfo": [vp, vp, size, ctypes.POINTER(cint), ctypes.POINTER(cint), ctypes.POINTER(cint),
                                   ctypes.POINTER(cint)],
            "nvjpegDecodeBatchedInitialize": [vp, vp, cint, cint, cint],
            "nvjpegDecodeBatched": [vp, vp, ctypes.POINTER(vp), ctypes.POINTER(size), ctypes.POINTER(NvjpegImage), vp],
        }
        try:
            for name, argtypes in signatures.items():
                function = getattr(lib, name)
                function.argtypes, function.restype = argtypes, cint
        except AttributeError:
            continue
        logger.debug("nvJPEG from %s", path)
        return lib
    return None


class HardwareDecoder:
    """nvJPEG's hardware backend on one CUDA device, decoding batches of JPEGs on a stream of the highest priority.

    Make one with :meth:`open`. One call of :meth:`decode` at a time (a lock
    serialises them).

    Attributes
    ----------
    device : torch.device
    stream : torch.cuda.Stream
        The stream the decoder runs on, and the decoded images are allocated on.
    """

    def __init__(self, lib, device: torch.device):
        self._lib = lib
        self._handle, self._state, self._jpeg_stream = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        self.device = device
        self.stream = torch.cuda.Stream(device=device, priority=-100)  # clamped to the device's highest priority
        self._lock = threading.Lock()
        self.allocations: collections.Counter = collections.Counter()  # the library's memory calls, by kind
        self._allocators = None
        self._pinned: dict[int, torch.Tensor] = {}

    def _torch_allocators(self):
        """nvJPEG's device and pinned allocators (``nvjpegDevAllocator_t``, ``nvjpegPinnedAllocator_t``) taken from
        torch's caching allocators, which never synchronise the device to free; counted in :attr:`allocations`."""
        dev_malloc_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t)
        dev_free_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
        pinned_malloc_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint)
        pinned_free_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

        def dev_malloc(out, size):
            self.allocations["device malloc"] += 1
            out[0] = torch.cuda.caching_allocator_alloc(max(int(size), 1), self.device, self.stream)
            return 0

        def dev_free(pointer):
            self.allocations["device free"] += 1
            if pointer:
                torch.cuda.caching_allocator_delete(pointer)
            return 0

        def pinned_malloc(out, size, flags):
            self.allocations["pinned malloc"] += 1
            block = torch.empty(max(int(size), 1), dtype=torch.uint8, pin_memory=True)
            self._pinned[block.data_ptr()] = block
            out[0] = block.data_ptr()
            return 0

        def pinned_free(pointer):
            self.allocations["pinned free"] += 1
            self._pinned.pop(pointer, None)
            return 0

        class Dev(ctypes.Structure):
            _fields_ = [("dev_malloc", dev_malloc_t), ("dev_free", dev_free_t)]

        class Pinned(ctypes.Structure):
            _fields_ = [("pinned_malloc", pinned_malloc_t), ("pinned_free", pinned_free_t)]

        # kept on the instance: the library calls them for as long as the handle lives
        self._allocators = (Dev(dev_malloc_t(dev_malloc), dev_free_t(dev_free)),
                            Pinned(pinned_malloc_t(pinned_malloc), pinned_free_t(pinned_free)))
        return [ctypes.byref(a) for a in self._allocators]

    @classmethod
    def open(cls, device: torch.device, *, torch_memory: bool = False) -> HardwareDecoder | None:
        """A decoder on ``device`` (a CUDA device), or None where nvJPEG's hardware backend cannot be had there.
        With ``torch_memory``, the library allocates from torch's caching allocators."""
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return None
        lib = _load_library()
        if lib is None:
            logger.info("no libnvjpeg could be loaded; decoding on the GPU through torchvision")
            return None
        with torch.cuda.device(device):
            decoder = cls(lib, device)
            handle, state, jpeg_stream = decoder._handle, decoder._state, decoder._jpeg_stream
            allocators = decoder._torch_allocators() if torch_memory else [None, None]
            status = lib.nvjpegCreateEx(_BACKEND_HARDWARE, *allocators, 0, ctypes.byref(handle))
            if status != _SUCCESS:  # NVJPEG_STATUS_ARCH_MISMATCH on a GPU without a hardware decoder
                logger.info("nvJPEG has no hardware backend on %s (status %d); decoding through torchvision", device, status)
                return None
            for create, out in ((lib.nvjpegJpegStateCreate, state), (lib.nvjpegJpegStreamCreate, jpeg_stream)):
                status = create(handle, ctypes.byref(out))
                if status != _SUCCESS:
                    logger.info("nvJPEG could not be set up on %s (status %d); decoding through torchvision", device, status)
                    return None
            return decoder

    def takes(self, data: torch.Tensor) -> tuple[int, int] | None:
        """``(height, width)`` of a JPEG (a contiguous uint8 CPU tensor of its bytes) that the hardware backend's
        batched decode takes; None if it does not."""
        lib, pointer, length = self._lib, ctypes.c_void_p(data.data_ptr()), data.numel()
        if lib.nvjpegJpegStreamParseHeader(self._handle, pointer, length, self._jpeg_stream) != _SUCCESS:
            return None
        supported = ctypes.c_int(-1)
        if lib.nvjpegDecodeBatchedSupported(self._handle, self._jpeg_stream, ctypes.byref(supported)) != _SUCCESS:
            return None
        if supported.value != 0:  # 0 means supported
            return None
        components, subsampling = ctypes.c_int(), ctypes.c_int()
        widths, heights = (ctypes.c_int * _MAX_COMPONENT)(), (ctypes.c_int * _MAX_COMPONENT)()
        status = lib.nvjpegGetImageInfo(self._handle, pointer, length, ctypes.byref(components), ctypes.byref(subsampling),
                                        widths, heights)
        if status != _SUCCESS or widths[0] <= 0 or heights[0] <= 0:
            return None
        return heights[0], widths[0]

    def decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Decode JPEGs to RGB on the device in one batched call.

        Parameters
        ----------
        datas : list of torch.Tensor, uint8, shape (n_bytes,), on the CPU
            Each a whole JPEG file.

        Returns
        -------
        list of torch.Tensor or None
            Per JPEG, its pixels, uint8, shape (3, H, W), on :attr:`device`,
            allocated on :attr:`stream` and complete on return; None for a JPEG
            the hardware backend does not take, and for all of them if the call
            fails.
        """
        datas = [d.contiguous() for d in datas]
        out: list[torch.Tensor | None] = [None] * len(datas)
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            taken = [(i, size) for i, size in enumerate(self.takes(d) for d in datas) if size is not None]
            if not taken:
                return out
            n = len(taken)
            pointers = (ctypes.c_void_p * n)(*(datas[i].data_ptr() for i, _ in taken))
            lengths = (ctypes.c_size_t * n)(*(datas[i].numel() for i, _ in taken))
            images = (NvjpegImage * n)()
            decoded = []
            for (_, (height, width)), image in zip(taken, images, strict=True):
                planes = torch.empty((3, height, width), dtype=torch.uint8, device=self.device)
                for c in range(3):
                    image.channel[c] = planes[c].data_ptr()
                    image.pitch[c] = width
                decoded.append(planes)
            lib = self._lib
            status = lib.nvjpegDecodeBatchedInitialize(self._handle, self._state, n, 1, _OUTPUT_RGB)
            if status == _SUCCESS:
                status = lib.nvjpegDecodeBatched(self._handle, self._state, pointers, lengths, images,
                                                 ctypes.c_void_p(self.stream.cuda_stream))
            self.stream.synchronize()  # the decoder reads the host bytes until it is done
            if status != _SUCCESS:
                logger.info("nvJPEG's batched decode failed (status %d); decoding the batch through torchvision", status)
                return [None] * len(datas)
        for (i, _), planes in zip(taken, decoded, strict=True):
            out[i] = planes
        return out
