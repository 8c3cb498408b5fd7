"""Exact (Flat) nearest-neighbour search with torch, on any torch device, block by block.

:class:`TorchFlatIndex` holds the database as blocks of ``block_rows`` vectors
in a storage dtype (float32, float16 or bfloat16). Blocks stay on the device
while they fit in ``device_memory`` bytes; the rest wait in host memory (pinned
when the device is CUDA) and stream through the device at every search, so a
database larger than the GPU's memory still completes. :func:`knn_blocks` is
the search loop itself; it also scans blocks read straight from a store.

The search loop: the queries go to the device once; for each database block,
and each batch of ``query_rows`` queries, the scores of the batch against the
block are one matrix product, their top k (``torch.topk``) are merged with the
batch's running top k. Each block therefore crosses to the device once per
search, whatever the number of queries.

Scores, stated exactly:

* metric ``"ip"``: the inner product, as ``faiss.IndexFlatIP``;
* metric ``"l2"``: the squared distance ``|q|^2 + |x|^2 - 2 q.x``, clipped at 0,
  as ``faiss.IndexFlatL2``'s BLAS path computes it;
* float32 storage: float32 products, so results equal faiss's apart from ties
  and the last bits of the scores (summation order);
* float16 / bfloat16 storage: the database and the queries are rounded to the
  storage dtype and their products accumulated and returned in float32 (on
  CUDA one ``torch.mm(..., out_dtype=torch.float32)``, tensor cores; on the CPU
  each block is widened to float32 first, which gives the same values). The
  recall lost to the rounding is measured in ``docs/benchmarks.md``.

Ties come back in no particular order, as with faiss. float32 products on CUDA
run at ``torch.set_float32_matmul_precision("highest")`` during the search
(no TF32), so that they stay exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from clipcache.errors import InvalidParameterError, QueryError

logger = logging.getLogger(__name__)

__all__ = [
    "check_torch_sizes",
    "TorchFlatIndex",
    "default_block_rows",
    "default_query_rows",
    "knn_blocks",
]

_METRICS = ("ip", "l2")
#: Score scratch of one (query batch x database block) product: 64 MiB on the CPU
#: (faiss's fastest BLAS blocks here, 1024 x 16384), 1 GiB on a GPU.
_SCRATCH = {"cpu": 64 << 20, "cuda": 1 << 30}
_BLOCK_ROWS = {"cpu": 16384, "cuda": 262144}
#: Share of the free device memory that resident vectors may take by default.
_RESIDENT_SHARE = 0.75
_OUT_DTYPE_MM: dict = {}


def check_torch_sizes(*, block_rows=None, query_rows=None, device_memory=None) -> None:
    """Refuse torch-backend sizes that cannot work: rows must be positive integers, ``device_memory`` bytes >= 0.

    Raises
    ------
    InvalidParameterError
        With ``param`` naming the value at fault.
    """
    for name, value, least in (("block_rows", block_rows, 1), ("query_rows", query_rows, 1), ("device_memory", device_memory, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least):
            what = "a positive integer" if least else "a number of bytes of 0 or more"
            raise InvalidParameterError(f"{name} must be {what}, not {value!r}", param=name)


def default_block_rows(device) -> int:
    """Database rows per block on ``device``: 16384 on the CPU, 262144 on a GPU."""
    return _BLOCK_ROWS["cpu" if _kind(device) == "cpu" else "cuda"]


def default_query_rows(device, block_rows: int) -> int:
    """Queries per batch so that one (batch x block) float32 score matrix takes 64 MiB (CPU) or 1 GiB (GPU)."""
    scratch = _SCRATCH["cpu" if _kind(device) == "cpu" else "cuda"]
    return max(1, scratch // (4 * int(block_rows)))


def _kind(device) -> str:
    return str(device).split(":")[0]


def _torch():
    import torch

    return torch


@contextmanager
def _exact_fp32(torch, device):
    """float32 products at full precision on CUDA for the duration of a search (TF32 off), then restore."""
    if _kind(device) != "cuda":
        yield
        return
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _mm_out_float32(torch, q, x):
    """``q @ x.T`` of half-precision q (m, d) and x (b, d) as float32 (m, b) in one CUDA ``mm``; None when unsupported."""
    if not _OUT_DTYPE_MM.get(x.device.type, True):
        return None
    try:
        return torch.mm(q, x.T, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError) as exc:
        _OUT_DTYPE_MM[x.device.type] = False
        logger.info("torch.mm(out_dtype=float32) is not available here (%s); widening blocks to float32", exc)
        return None


def knn_blocks(
    queries: np.ndarray,
    blocks: Iterable,
    k: int,
    *,
    metric: str = "ip",
    device="cpu",
    dtype: str = "float32",
    query_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query over a database given as blocks, on ``device``.

    Parameters
    ----------
    queries : ndarray of shape (q, d), float32
    blocks : iterable of (offset, vectors, norms)
        ``offset`` (int) is the id of the block's first vector; ``vectors`` is a
        torch tensor or ndarray of shape (b, d) (any device, converted to
        ``dtype`` on ``device``); ``norms`` is None or a float32 tensor (b,) of
        the squared norms of the vectors as stored (computed when None and
        ``metric="l2"``).
    k : int
        Neighbours per query; the blocks must hold at least k vectors in all.
    metric : {"ip", "l2"}
    device : str or torch.device
    dtype : {"float32", "float16", "bfloat16"}
        Precision of the products (see the module notes).
    query_rows : int, optional
        Queries per batch; default :func:`default_query_rows` of the first block.

    Returns
    -------
    scores : ndarray of shape (q, k), float32
        Inner products (largest first) or squared L2 distances (smallest first).
    ids : ndarray of shape (q, k), int64
        ``offset + position`` in the block of each neighbour; -1 where fewer than
        k vectors were seen.
    """
    torch = _torch()
    dev = torch.device(device)
    store_dtype = getattr(torch, dtype)
    nq = len(queries)
    with torch.inference_mode(), _exact_fp32(torch, dev):
        q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32)).to(dev)
        if store_dtype != torch.float32:
            q = q.to(store_dtype)  # queries rounded like the database: both paths compute the same products
        q_norms = q.float().square().sum(dim=1) if metric == "l2" else None
        best = torch.full((nq, k), -float("inf"), dtype=torch.float32, device=dev)
        best_ids = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
        half = store_dtype != torch.float32
        q_wide = q.float() if half else q
        scratch = None
        for offset, vectors, norms in blocks:
            x = torch.as_tensor(vectors).to(device=dev, dtype=store_dtype, non_blocking=True)
            kk = min(k, len(x))
            if kk == 0:
                continue
            if metric == "l2":
                norms = x.float().square().sum(dim=1) if norms is None else norms.to(dev, non_blocking=True)
            rows = query_rows or default_query_rows(dev, len(x))
            x_wide = None  # x as float32, made once per block when needed
            for start in range(0, nq, rows):
                stop = min(nq, start + rows)
                s = _mm_out_float32(torch, q[start:stop], x) if half and dev.type == "cuda" else None
                if s is None:
                    if x_wide is None:
                        x_wide = x.float() if half else x
                    if scratch is None or scratch.numel() < (stop - start) * len(x):
                        scratch = torch.empty((stop - start) * len(x), dtype=torch.float32, device=dev)
                    s = torch.mm(q_wide[start:stop], x_wide.T, out=scratch[: (stop - start) * len(x)].view(stop - start, len(x)))
                if metric == "l2":
                    s.mul_(2).sub_(norms)  # 2 q.x - |x|^2: larger is nearer; |q|^2 is added at the end
                top, where = torch.topk(s, kk, dim=1, sorted=False)
                merged = torch.cat([best[start:stop], top], dim=1)
                merged_ids = torch.cat([best_ids[start:stop], where + int(offset)], dim=1)
                values, pick = torch.topk(merged, k, dim=1)
                best[start:stop] = values
                best_ids[start:stop] = torch.gather(merged_ids, 1, pick)
        if metric == "l2":
            best = torch.where(best_ids >= 0, (q_norms[:, None] - best).clamp_min_(0), torch.inf)
        return best.cpu().numpy(), best_ids.cpu().numpy()


class TorchFlatIndex:
    """An exact (Flat) index on a torch device, with the vectors in blocks (see the module notes).

    Parameters
    ----------
    dim : int
        Vector dimension d.
    metric : {"ip", "l2"}
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    dtype : {"float32", "float16", "bfloat16"}
        Storage dtype of the vectors.
    block_rows : int, optional
        Vectors per block; default :func:`default_block_rows`.
    query_rows : int, optional
        Queries per batch; default :func:`default_query_rows`.
    device_memory : int, optional
        Bytes of device memory the resident blocks may take; blocks beyond it
        stay in host memory and stream through the device at each search.
        Default: three quarters of the free memory of a CUDA device when the
        index is made; unlimited on the CPU.

    Attributes
    ----------
    ntotal : int
        Vectors added.
    d : int
    resident_bytes, streamed_bytes : int
        Bytes of vectors kept on the device, and held on the host.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "ip",
        *,
        device="cpu",
        dtype: str = "float32",
        block_rows: int | None = None,
        query_rows: int | None = None,
        device_memory: int | None = None,
    ):
        if metric not in _METRICS:
            raise InvalidParameterError(f"metric must be one of {', '.join(_METRICS)}, not {metric!r}", param="metric")
        check_torch_sizes(block_rows=block_rows, query_rows=query_rows, device_memory=device_memory)
        torch = _torch()
        self.d = int(dim)
        self.metric = metric
        self.device = torch.device(device)
        self.dtype = dtype
        self._store_dtype = getattr(torch, dtype)
        self.block_rows = int(block_rows or default_block_rows(self.device))
        self.query_rows = query_rows
        if device_memory is None:
            device_memory = (
                int(_RESIDENT_SHARE * torch.cuda.mem_get_info(self.device)[0]) if self.device.type == "cuda" else None
            )
        self.device_memory = device_memory
        self.ntotal = 0
        self._resident_bytes = 0
        self._streamed_bytes = 0
        self._blocks: list = []  # (vectors (b, d) storage dtype, squared norms (b,) float32 or None)
        self._pending: list = []  # host tensors not yet gathered into a block
        self._pending_rows = 0

    def __repr__(self) -> str:
        return (
            f"TorchFlatIndex(ntotal={self.ntotal}, d={self.d}, metric={self.metric!r}, device={str(self.device)!r}, "
            f"dtype={self.dtype!r}, resident_bytes={self.resident_bytes}, streamed_bytes={self.streamed_bytes})"
        )

    @property
    def resident_bytes(self) -> int:
        """Bytes of vectors kept on the device."""
        self._flush()
        return self._resident_bytes

    @property
    def streamed_bytes(self) -> int:
        """Bytes of vectors held on the host, which cross to the device at each search."""
        self._flush()
        return self._streamed_bytes

    def add(self, x) -> None:
        """Append vectors; ids continue from ``ntotal``.

        Parameters
        ----------
        x : array-like or torch.Tensor of shape (n, d), floating point
            Converted to the storage dtype on the host, then gathered into
            blocks of ``block_rows`` that go to the device while they fit.
        """
        torch = _torch()
        t = torch.as_tensor(x)
        if t.ndim != 2 or t.shape[1] != self.d:
            raise QueryError(f"vectors must have shape (n, {self.d}), not {tuple(t.shape)}")
        if not t.is_floating_point():
            raise QueryError(f"vectors must be floating point, not {t.dtype}")
        t = t.detach().to(device="cpu", dtype=self._store_dtype)
        if t.shape[0] == 0:
            return
        self._pending.append(t)
        self._pending_rows += t.shape[0]
        self.ntotal += t.shape[0]
        while self._pending_rows >= self.block_rows:
            self._gather(self.block_rows)

    def _gather(self, rows: int) -> None:
        """Move the first ``rows`` pending vectors into a new block."""
        torch = _torch()
        pending = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
        block, rest = pending[:rows], pending[rows:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        self._place(block.clone() if len(rest) else block)

    def _place(self, block) -> None:
        size = block.element_size() * block.numel()
        norms = block.float().square().sum(dim=1) if self.metric == "l2" else None
        if self.device_memory is None or self._resident_bytes + size <= self.device_memory:
            block = block.to(self.device)
            norms = norms.to(self.device) if norms is not None else None
            self._resident_bytes += size
        else:
            if self.device.type == "cuda":
                block = _pinned(block)
            self._streamed_bytes += size
        self._blocks.append((block, norms))

    def _flush(self) -> None:
        if self._pending_rows:
            self._gather(self._pending_rows)

    def iter_blocks(self) -> Iterator[tuple[int, object, object]]:
        """The blocks as :func:`knn_blocks` takes them: (offset, vectors (b, d), squared norms (b,) or None)."""
        self._flush()
        offset = 0
        for vectors, norms in self._blocks:
            yield offset, vectors, norms
            offset += len(vectors)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest vectors of each query, as ``faiss.Index.search`` returns them.

        Parameters
        ----------
        x : ndarray of shape (q, d), float32
        k : int
            ``1 <= k <= ntotal``.

        Returns
        -------
        scores : ndarray of shape (q, k), float32
            Inner products, largest first, or squared L2 distances, smallest first.
        ids : ndarray of shape (q, k), int64
            Positions of the neighbours in the order the vectors were added.
        """
        if not 1 <= int(k) <= self.ntotal:
            raise QueryError(f"k must lie between 1 and the {self.ntotal} indexed vectors, not {k!r}", param="k")
        return knn_blocks(
            x, self.iter_blocks(), int(k), metric=self.metric, device=self.device, dtype=self.dtype,
            query_rows=self.query_rows or default_query_rows(self.device, self.block_rows),
        )


def _pinned(block):
    """``block`` in page-locked host memory (fast, asynchronous copies to the GPU); as is when it cannot be pinned."""
    try:
        return block.pin_memory()
    except RuntimeError as exc:
        logger.warning("cannot pin %d bytes of host memory (%s); streaming from pageable memory", block.nbytes, exc)
        return block
