"""Which library searches: faiss (on the CPU or faiss-gpu) or the exact torch backend, on any torch device.

``backend="auto"`` (the default everywhere) picks, in this order:

1. faiss-gpu, when faiss has GPU support, sees a GPU and answers a probe search
   with the CPU's result (:func:`faiss_gpu_status`);
2. the torch backend (:mod:`clipcache.retrieval.torch_flat`) on CUDA, for an
   exact ``"Flat"`` index, when torch sees a CUDA GPU;
3. faiss on the CPU.

``device="cpu"`` makes ``auto`` stay on the CPU (faiss), and a ``dtype`` other
than ``"float32"`` makes it choose torch (faiss keeps float32 vectors). IVF, PQ
and HNSW indexes are faiss-only: asking ``backend="torch"`` for them raises
:class:`~clipcache.errors.InvalidParameterError`. Each choice is logged (INFO)
with its reason, and :class:`BackendChoice` records it for the JSON outputs.

torch is imported only when the torch backend runs, or when ``auto`` has to ask
torch whether it sees a GPU on a machine with an NVIDIA or AMD GPU driver; on a
machine without one, ``auto`` answers without importing torch (seconds saved on
every command).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np

from clipcache.errors import ClipCacheError, InvalidParameterError
from clipcache.retrieval.torch_flat import TorchFlatIndex

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "DTYPES",
    "BackendChoice",
    "check_backend",
    "choose_backend",
    "faiss_gpu_status",
    "flat_index",
    "is_flat",
    "torch_cuda_available",
    "torch_device",
]

BACKENDS = ("auto", "faiss", "torch")
#: Storage dtypes of the torch backend's vectors; faiss keeps float32.
DTYPES = ("float32", "float16", "bfloat16")
#: Files whose presence tells that a GPU driver is installed (NVIDIA, then AMD ROCm).
_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


@dataclass(frozen=True)
class BackendChoice:
    """The backend a build, load or scan runs on, and why.

    Attributes
    ----------
    requested : {"auto", "faiss", "torch"}
    name : {"faiss", "torch"}
    device : str
        faiss: ``"cpu"`` or ``"gpu"`` (faiss-gpu); torch: a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    dtype : {"float32", "float16", "bfloat16"}
        Storage dtype of the vectors (always ``"float32"`` for faiss).
    reason : str
        Why ``auto`` chose it, or ``"asked for"``.
    """

    requested: str
    name: str
    device: str
    dtype: str
    reason: str

    def to_dict(self) -> dict:
        """The choice as a JSON-serialisable dict (the ``backend`` field of the JSON outputs)."""
        return asdict(self)

    def on(self, device: str, reason: str) -> BackendChoice:
        """The same choice on another device (a faiss index type without a GPU implementation falls back to the CPU)."""
        return BackendChoice(self.requested, self.name, device, self.dtype, reason)


def is_flat(factory: str) -> bool:
    """Whether ``factory`` is the exact ``"Flat"`` index, the one the torch backend implements."""
    return isinstance(factory, str) and factory.strip() == "Flat"


def torch_device(device):
    """``(torch, torch.device)`` of a device name; InvalidParameterError (``param="device"``) when torch cannot parse it."""
    import torch  # the torch backend was asked for

    try:
        return torch, torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidParameterError(
            f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'", param="device"
        ) from None


def check_backend(backend: str = "auto", *, factory: str = "Flat", device=None, dtype: str = "float32") -> None:
    """Refuse a backend, device or dtype that cannot work, before any data is read.

    Raises
    ------
    InvalidParameterError
        ``param="backend"``: an unknown backend, or torch for an index that is
        not exact (IVF, PQ, HNSW); ``param="dtype"``: an unknown dtype, or a
        half-precision dtype with faiss; ``param="device"``: not a device name.
    """
    if backend not in BACKENDS:
        raise InvalidParameterError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}", param="backend")
    if dtype not in DTYPES:
        raise InvalidParameterError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}", param="dtype")
    if backend == "torch" and not is_flat(factory):
        raise InvalidParameterError(
            f"the torch backend searches exact 'Flat' indexes only, not {factory!r}; "
            "use backend='faiss' or 'auto' for IVF, PQ and HNSW",
            param="backend",
        )
    if dtype != "float32" and (backend == "faiss" or not is_flat(factory)):
        raise InvalidParameterError(
            f"dtype={dtype!r} needs the torch backend and a 'Flat' index (faiss keeps float32 vectors); "
            "use dtype='float32' or backend='torch'",
            param="dtype",
        )
    if device is not None and not isinstance(device, str) and type(device).__name__ != "device":
        raise InvalidParameterError(f"device must be a name such as 'cpu' or 'cuda', not {device!r}", param="device")


@functools.lru_cache(maxsize=1)
def faiss_gpu_status() -> str | None:
    """None when faiss-gpu works here, otherwise why not (one phrase).

    Works means: faiss has GPU support, sees a GPU, and a probe search on the GPU
    (64 random vectors, exact L2) returns the CPU's neighbours. The answer is
    cached for the process; ``faiss_gpu_status.cache_clear()`` forgets it.
    """
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return "faiss has no GPU support (faiss-cpu)"
    try:
        if faiss.get_num_gpus() < 1:
            return "faiss sees no GPU"
        rng = np.random.default_rng(0)
        xb = rng.standard_normal((64, 8), dtype=np.float32)
        cpu = faiss.IndexFlatL2(8)
        cpu.add(xb)
        _, want = cpu.search(xb[:4], 3)
        _, got = faiss.index_cpu_to_all_gpus(cpu).search(xb[:4], 3)
    except Exception as exc:  # a broken CUDA runtime raises many kinds; any of them means "not usable"
        return f"the faiss-gpu probe search failed ({str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__})"
    if not np.array_equal(np.asarray(got), np.asarray(want)):
        return "the faiss-gpu probe search returned wrong neighbours"
    return None


def _gpu_driver_present() -> bool:
    return any(os.path.exists(path) for path in _GPU_DRIVER_FILES)


def torch_cuda_available() -> bool:
    """Whether torch sees a CUDA (or ROCm) GPU; without a GPU driver on the machine, answered without importing torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        if not _gpu_driver_present():
            return False
        import torch
    return bool(torch.cuda.is_available())


def _is_cuda(device) -> bool:
    return device is not None and str(device).split(":")[0] == "cuda"


def _torch_on(device, requested: str, dtype: str, reason: str, *, gpu: bool) -> BackendChoice:
    """The torch backend on ``device`` (None: CUDA when torch sees it, else the CPU)."""
    if device is None:
        if torch_cuda_available():
            device = "cuda"
        else:
            if gpu:
                logger.warning("a GPU was asked for, but torch sees no CUDA GPU; the torch backend runs on the CPU")
            device = "cpu"
    torch, dev = torch_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClipCacheError(
            f"device {str(device)!r} was asked for but torch sees no CUDA GPU; use device='cpu' or backend='auto'",
            param="device",
        )
    return BackendChoice(requested, "torch", str(dev), dtype, reason)


def _faiss_on(gpu: bool, requested: str, reason: str) -> BackendChoice:
    if not gpu:
        return BackendChoice(requested, "faiss", "cpu", "float32", reason)
    status = faiss_gpu_status()
    if status is None:
        return BackendChoice(requested, "faiss", "gpu", "float32", reason)
    logger.warning("a GPU was asked for, but faiss-gpu is not usable (%s); using faiss on the CPU", status)
    return BackendChoice(requested, "faiss", "cpu", "float32", f"{reason}; {status}")


def choose_backend(
    backend: str = "auto",
    *,
    factory: str = "Flat",
    device=None,
    dtype: str = "float32",
    gpu: bool = False,
    faiss_gpu: bool = True,
) -> BackendChoice:
    """Resolve ``backend`` to the library and device that will search, and log the choice.

    Parameters
    ----------
    backend : {"auto", "faiss", "torch"}
        See the module notes for the order ``auto`` follows.
    factory : str
        The faiss factory string of the index; only ``"Flat"`` can run on torch.
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. With torch, where it runs (default:
        CUDA when torch sees a GPU, else the CPU). With faiss, a CUDA device
        means faiss-gpu. With auto, ``"cpu"`` keeps the search on the CPU.
    dtype : {"float32", "float16", "bfloat16"}
        Storage dtype of the torch backend's vectors.
    gpu : bool
        Ask for a GPU: faiss-gpu with ``backend="faiss"``; with every backend, a
        warning is logged when the search ends up on the CPU.
    faiss_gpu : bool
        Whether faiss-gpu may be chosen (False for the block-by-block scans,
        which run ``faiss.knn`` on the CPU).

    Returns
    -------
    BackendChoice

    Raises
    ------
    InvalidParameterError
        As :func:`check_backend`.
    ClipCacheError
        ``param="device"``: the torch backend on a CUDA device that torch does not see.
    """
    check_backend(backend, factory=factory, device=device, dtype=dtype)
    wants_gpu = gpu or _is_cuda(device)
    if backend == "torch":
        choice = _torch_on(device, backend, dtype, "asked for", gpu=gpu)
    elif backend == "faiss":
        choice = _faiss_on(wants_gpu and faiss_gpu, backend, "asked for")
    elif dtype != "float32":
        choice = _torch_on(device, backend, dtype, f"dtype {dtype} needs torch (faiss keeps float32)", gpu=gpu)
    elif device is not None and str(device) == "cpu":
        choice = BackendChoice(backend, "faiss", "cpu", "float32", "device 'cpu' was asked for")
    else:
        status = faiss_gpu_status() if faiss_gpu else "faiss-gpu is not used for block-by-block scans"
        if status is None:
            choice = BackendChoice(backend, "faiss", "gpu", "float32", "faiss-gpu passed its probe search")
        elif not is_flat(factory):
            choice = _faiss_on(False, backend, f"{status}; {factory!r} is faiss-only")
        elif torch_cuda_available():
            choice = _torch_on(device or "cuda", backend, dtype, f"{status}; torch sees a CUDA GPU", gpu=gpu)
        else:
            choice = _faiss_on(False, backend, f"{status}; torch sees no CUDA GPU")
        if wants_gpu and choice.device == "cpu":
            logger.warning("a GPU was asked for, but neither faiss-gpu nor torch can use one here; searching on the CPU")
    logger.info("search backend: %s on %s (%s; %s)", choice.name, choice.device, choice.dtype, choice.reason)
    return choice


def flat_index(keys: np.ndarray, *, backend: str = "auto", device=None):
    """An exact inner-product index of ``keys`` on the chosen backend, for in-memory estimators (kNN, OOD).

    Parameters
    ----------
    keys : ndarray of shape (n, d), float32
    backend : {"auto", "faiss", "torch"}
    device : str, optional
        As in :func:`choose_backend`.

    Returns
    -------
    index
        ``faiss.IndexFlatIP`` (on the GPU when faiss-gpu was chosen) or a
        :class:`~clipcache.retrieval.torch_flat.TorchFlatIndex`; either answers
        ``search(q (m, d) float32, k) -> (scores (m, k) float32, ids (m, k) int64)``.
    choice : BackendChoice
    """
    choice = choose_backend(backend, device=device)
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    if choice.name == "torch":
        index = TorchFlatIndex(keys.shape[1], "ip", device=choice.device)
        index.add(keys)
        return index, choice
    import faiss

    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(keys)
    if choice.device == "gpu":
        index = faiss.index_cpu_to_all_gpus(index)
    return index, choice
