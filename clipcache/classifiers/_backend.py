"""Array back ends: numpy on CPU by default, torch on any device when asked.

``device=None`` runs numpy/scipy. A torch device string (``"cpu"``, ``"cuda"``,
``"cuda:1"``) runs the heavy products in torch on that device and returns
numpy float32 arrays, so estimators never hold torch tensors.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.blas

from clipcache.errors import ClipCacheError, InvalidParameterError

__all__ = ["check_device", "gram", "matmul", "torch_device"]


def torch_device(device: str):
    """``(torch, torch.device)`` for a device name; InvalidParameterError or ClipCacheError when unusable."""
    import torch  # only when a device is asked for: numpy users never import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidParameterError(
            f"device {device!r} is not a torch device; use None (numpy), 'cpu' or 'cuda'", param="device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClipCacheError(
            f"device {device!r} was asked for but torch sees no CUDA GPU; use device=None for the CPU", param="device"
        )
    return torch, dev


def check_device(device) -> None:
    """Raise unless ``device`` is None or a torch device that is available here."""
    if device is not None:
        torch_device(device)


def matmul(a: np.ndarray, b: np.ndarray, device: str | None) -> np.ndarray:
    """``a @ b`` for float32 arrays, on ``device``; returns numpy float32."""
    if device is None:
        return a @ b
    torch, dev = torch_device(device)
    out = torch.as_tensor(a, device=dev) @ torch.as_tensor(b, device=dev)
    return out.cpu().numpy()


def gram(x: np.ndarray, device: str | None) -> np.ndarray:
    """``x.T @ x`` for x (n, d) float32, returned as float64 (d, d).

    On numpy this is one BLAS ``ssyrk`` (the upper triangle only, half a
    matrix product's work) in float32, mirrored; callers keep blocks to at
    most a few ten thousand rows and sum the blocks in float64.
    """
    if device is None:
        a = np.asarray(x, dtype=np.float32)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        upper = scipy.linalg.blas.ssyrk(1.0, a.T, lower=0).astype(np.float64)
        return np.triu(upper) + np.triu(upper, 1).T
    torch, dev = torch_device(device)
    t = torch.as_tensor(x, device=dev)
    return (t.T @ t).double().cpu().numpy()
