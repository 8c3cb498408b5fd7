"""The maths of the shared-covariance Gaussian fit, one small function per step.

A fit needs class sums (C, d), the within-class scatter S = R^T R of the
residuals R (N, d), ``r_i = x_i - mu_{y_i}`` (rows weighted for the
``"shrinkage"`` precision), and three numbers of S: its trace, its squared
Frobenius norm and sum_i ||r_i||^4 (the last two for Ledoit-Wolf). Every
precision estimator of :class:`~clipcache.classifiers.GDAClassifier` is then a
ridge on S::

    P = c (a S + t I)^-1          (a, t, c from :func:`covariance_form`)

and the linear rule is ``W = mu P``. Two solvers give the same W:

- :func:`solve_covariance`: the (d, d) system by Cholesky (least squares when it is
  singular), from S accumulated block by block (streamable, O(d^2) memory);
- :func:`solve_woodbury`: when N < d, the Woodbury identity
  ``(a R^T R + t I)^-1 = (I - a R^T (t I_N + a R R^T)^-1 R) / t`` works in the
  N x N space, O(N^2 d) instead of O(d^3) (an LU solve: the N x N matrix is positive definite).

The accumulation runs on numpy (:class:`NumpyOps`) or on a torch device
(:class:`TorchOps`: blocks go through pinned memory to the GPU, and the sums,
the scatter and the Cholesky solve stay on the device).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.sparse

from clipcache.classifiers import _backend

__all__ = [
    "BLOCK_ROWS",
    "CovarianceForm",
    "NumpyOps",
    "ScatterStats",
    "TorchOps",
    "class_sums",
    "covariance_form",
    "ledoit_wolf_shrinkage",
    "make_ops",
    "solve_covariance",
    "solve_woodbury",
    "woodbury_stats",
]

BLOCK_ROWS = 16384


@dataclass(frozen=True)
class ScatterStats:
    """The numbers of S = R^T R that the precision estimators need.

    n : int, samples; d : int, dimensions; trace : tr(S); frob2 : ||S||_F^2;
    sum_r4 : sum_i ||r_i||^4.
    """

    n: int
    d: int
    trace: float
    frob2: float
    sum_r4: float


@dataclass(frozen=True)
class CovarianceForm:
    """P = c (a S + t I)^-1; ``used`` is the ridge (iclr2024), Ledoit-Wolf intensity or fixed shrinkage."""

    a: float
    t: float
    c: float
    used: float


def ledoit_wolf_shrinkage(s: ScatterStats) -> float:
    """Ledoit-Wolf intensity of the residual covariance S/n (as scikit-learn's, ``assume_centered=True``)."""
    trace = s.trace / s.n
    mu = trace / s.d
    delta_ = s.frob2 / s.n**2
    beta = (s.sum_r4 / s.n - delta_) / (s.d * s.n)
    delta = (delta_ - 2.0 * mu * trace + s.d * mu**2) / s.d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def covariance_form(s: ScatterStats, precision: str, shrinkage: float) -> CovarianceForm:
    """The ridge form of each precision estimator.

    - ``"iclr2024"``: P = d (S + tr(S)/(N-1) I)^-1;
    - ``"ledoit-wolf"``: P = ((1-delta) S/N + delta tr(S/N)/d I)^-1;
    - ``"shrinkage"``: P = ((1-s) S + s tr(S)/d I)^-1, S being the prior-weighted scatter.
    """
    if precision == "iclr2024":
        ridge = s.trace / (s.n - 1)
        return CovarianceForm(1.0, ridge, float(s.d), float(ridge))
    if precision == "ledoit-wolf":
        delta = ledoit_wolf_shrinkage(s)
        return CovarianceForm((1 - delta) / s.n, delta * s.trace / (s.n * s.d), 1.0, delta)
    return CovarianceForm(1.0 - shrinkage, shrinkage * s.trace / s.d, 1.0, float(shrinkage))


def _solve_psd(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``a^-1 rhs`` for symmetric PSD ``a``: Cholesky, or least squares when singular."""
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, lower=True, check_finite=False), rhs)
    except np.linalg.LinAlgError:
        return scipy.linalg.lstsq(a, rhs)[0]


def solve_covariance(ops, scatter, form: CovarianceForm, means: np.ndarray) -> np.ndarray:
    """W = c mu (a S + t I)^-1 from the (d, d) scatter (on the ops' device): (C, d) float64."""
    return form.c * ops.solve_ridge(scatter, form.a, form.t, means).T


def woodbury_stats(R: np.ndarray) -> tuple[ScatterStats, np.ndarray]:
    """The :class:`ScatterStats` of S = R^T R, and the Gram K = R R^T (N, N) float64, from R (N, d).

    R may be float32 (the in-memory fit: one float32 product, half the memory
    traffic of float64) or float64; K and the statistics are float64.
    """
    K = np.asarray(R @ R.T, dtype=np.float64)
    diag = np.diag(K)
    return ScatterStats(len(R), R.shape[1], float(diag.sum()), float(np.sum(K * K)), float(diag @ diag)), K


def solve_woodbury(R: np.ndarray, K: np.ndarray, form: CovarianceForm, means: np.ndarray) -> np.ndarray:
    """W = c mu (a R^T R + t I)^-1 in the N x N space (t > 0): (C, d) float64.

    (a R^T R + t I)^-1 mu^T = (mu^T - a R^T (t I + a K)^-1 R mu^T) / t, with K = R R^T.
    The products with R (N, d) run in its dtype; the N x N solve in float64.
    """
    inner = form.t * np.eye(len(K)) + form.a * K  # positive definite (t > 0): LU is safe, and cheaper than scipy here
    coeff = np.linalg.solve(inner, np.asarray(R @ means.T.astype(R.dtype), dtype=np.float64))  # (N, C)
    correction = np.asarray(R.T @ coeff.astype(R.dtype), dtype=np.float64).T
    return (form.c / form.t) * (means - form.a * correction)


#: Up to this many rows, class sums use a dense one-hot product (few-shot support sets).
DENSE_ROWS = 4096


def class_sums(X: np.ndarray, codes: np.ndarray, n_classes: int, dtype=np.float32) -> np.ndarray:
    """Per-class sums of the rows of X: one product of a one-hot matrix with X (no sort, no row gather).

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
    codes : ndarray of shape (n,), int64
        Class index of each row, in ``[0, n_classes)``.
    n_classes : int
    dtype : numpy dtype, default=float32
        Precision of the sparse product used above :data:`DENSE_ROWS` rows (a
        float64 one costs a float64 copy of X). Up to :data:`DENSE_ROWS` rows the
        one-hot matrix is dense and the product float32 (at most 4,096 terms a sum).

    Returns
    -------
    ndarray of shape (n_classes, d), float64
    """
    rows = np.arange(len(codes))
    if len(codes) <= DENSE_ROWS:
        onehot = np.zeros((n_classes, len(codes)), dtype=np.float32)
        onehot[codes, rows] = 1.0
        return np.asarray(onehot @ X, dtype=np.float64)
    onehot = scipy.sparse.csr_matrix((np.ones(len(codes), dtype=dtype), (codes, rows)), shape=(n_classes, len(codes)))
    return np.asarray(onehot @ X.astype(dtype, copy=False), dtype=np.float64)


class NumpyOps:
    """Block accumulation in numpy: a sparse one-hot product for class sums, BLAS ``ssyrk`` for the scatter."""

    device = None

    def put(self, X: np.ndarray) -> np.ndarray:
        return X

    def all_finite(self) -> bool:
        """True: numpy's caller checks its blocks on the host (torch checks them on its device)."""
        return True

    def resident(self, chunks):
        """``chunks`` itself: numpy re-reads the stream at every pass (see :meth:`TorchOps.resident`)."""
        return chunks

    def zeros(self, shape) -> np.ndarray:
        return np.zeros(shape)

    def add_class_sums(self, sums: np.ndarray, X: np.ndarray, codes: np.ndarray) -> None:
        """``sums[k] += sum of the rows of X with code k`` (:func:`class_sums`)."""
        sums += class_sums(X, codes, len(sums))

    def add_scatter(self, scatter, X: np.ndarray, codes: np.ndarray, means32, root_w, fourth: bool) -> float:
        """``scatter += R^T R`` for the block's residuals; return sum ||r||^4 when ``fourth`` (else 0)."""
        r = X - means32[codes]
        r4 = 0.0
        if fourth:
            sq = np.einsum("ij,ij->i", r, r, dtype=np.float64)
            r4 = float(sq @ sq)
        if root_w is not None:
            r *= root_w[codes][:, None]
        scatter += _backend.gram(r, None)
        return r4

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a, dtype=np.float64)

    def trace_frob2(self, scatter: np.ndarray, frob: bool) -> tuple[float, float]:
        """tr(S) and, when ``frob``, ||S||_F^2 (else 0)."""
        return float(np.trace(scatter)), (float(np.sum(scatter * scatter)) if frob else 0.0)

    def solve_ridge(self, scatter: np.ndarray, a: float, t: float, means: np.ndarray) -> np.ndarray:
        """``(a S + t I)^-1 mu^T``, (d, C) float64."""
        return _solve_psd(a * scatter + t * np.eye(len(scatter)), means.T)


#: Share of a GPU's free memory that :meth:`TorchOps.resident` may fill with a stream's blocks.
RESIDENT_SHARE = 0.5


class TorchOps:
    """The same accumulation in torch on ``device``: blocks are pinned and copied asynchronously to a GPU.

    Sums and the scatter accumulate in float64 on the device, each block's
    products in float32; the ridge system is solved by a float64 Cholesky on the
    device (a singular system falls back to numpy least squares on the host).
    """

    def __init__(self, device):
        self.torch, self.dev = _backend.torch_device(device)
        self.device = device
        self._finite = None  # on the device: whether every block put there so far was finite

    def resident_budget(self) -> int:
        """Bytes of blocks :meth:`resident` may keep on the device: a share of a GPU's free memory, 0 elsewhere."""
        if self.dev.type != "cuda":
            return 0
        free, _ = self.torch.cuda.mem_get_info(self.dev)
        return int(free * RESIDENT_SHARE)

    def resident(self, chunks):
        """A replayable ``chunks``: the first pass keeps its blocks on the device, later passes replay them.

        The GPU then reads the stream (a store's chunks) once instead of once per
        pass. Once the kept blocks would pass :meth:`resident_budget`, they are
        dropped and every pass reads ``chunks()`` again, as numpy does. On a GPU,
        one thread reads the stream ahead and another pins its blocks
        (:func:`_prepared_ahead`), while the blocks before are copied to the device
        and summed.
        """
        budget = self.resident_budget()
        if self.dev.type == "cuda":
            read = chunks

            def chunks():  # one thread reads blocks ahead, another pins those not read into pinned memory
                read_ahead = _prepared_ahead(read(), lambda X: X)
                return _prepared_ahead(read_ahead, self._pinned)

        if budget <= 0:
            return chunks
        kept: list = []
        complete = False

        def replay():
            nonlocal complete
            if complete:
                yield from kept
                return
            kept.clear()
            size, keeping = 0, True
            for X, codes in chunks():
                if keeping:
                    size += X.nbytes
                    keeping = size <= budget
                    if keeping:
                        X = self.put(X)
                        kept.append((X, codes))
                    else:
                        kept.clear()
                yield X, codes
            complete = keeping

        return replay

    def _pinned(self, X):
        """Host block ``X`` as a pinned tensor: the one :func:`host_allocator` made when X views it, else a pinned copy.

        A copy to the GPU must start from that pinned tensor itself, not from a
        new tensor over its memory: torch records the copy's stream on the
        pinned block it copies from, and reuses the block only once the copy
        has finished.
        """
        base = getattr(X, "base", None)
        if (
            isinstance(base, self.torch.Tensor)
            and base.is_pinned()
            and base.data_ptr() == X.ctypes.data
            and tuple(base.shape) == X.shape
        ):
            return base
        t = self._host_tensor(X)
        return t if t.is_pinned() else t.pin_memory()

    def _host_tensor(self, X):
        """Host block ``X`` (numpy or a torch tensor) as a torch tensor, without a copy where it can."""
        return X if isinstance(X, self.torch.Tensor) else self.torch.from_numpy(np.ascontiguousarray(X))

    def put(self, X):
        """Block ``X`` (numpy, or a torch tensor on the host or the device) on the device; checks a block from the host."""
        if isinstance(X, self.torch.Tensor) and X.device.type == self.dev.type:
            return X
        t = self._pinned(X) if self.dev.type == "cuda" else self._host_tensor(X)
        t = t.to(self.dev, non_blocking=True)
        finite = self.torch.isfinite(t).all()
        self._finite = finite if self._finite is None else self._finite & finite
        return t

    def all_finite(self) -> bool:
        """Whether every block :meth:`put` took from the host was finite (waits for the device)."""
        return self._finite is None or bool(self._finite)

    def zeros(self, shape):
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.dev)

    def _codes(self, codes: np.ndarray):
        return self.torch.as_tensor(codes, dtype=self.torch.int64).to(self.dev, non_blocking=True)

    def add_class_sums(self, sums, X: np.ndarray, codes: np.ndarray) -> None:
        block = self.torch.zeros(sums.shape, dtype=self.torch.float32, device=self.dev)
        block.index_add_(0, self._codes(codes), self.put(X))
        sums += block.double()

    def add_scatter(self, scatter, X: np.ndarray, codes: np.ndarray, means32, root_w, fourth: bool):
        c = self._codes(codes)
        r = self.put(X) - self.torch.as_tensor(means32, device=self.dev)[c]
        r4 = 0.0
        if fourth:
            sq = (r.double() ** 2).sum(dim=1)
            r4 = sq @ sq
        if root_w is not None:
            r *= self.torch.as_tensor(root_w, device=self.dev)[c][:, None]
        scatter += (r.T @ r).double()
        return r4

    def to_numpy(self, a) -> np.ndarray:
        if isinstance(a, float | int):
            return np.asarray(a, dtype=np.float64)
        return a.double().cpu().numpy()

    def trace_frob2(self, scatter, frob: bool) -> tuple[float, float]:
        return float(scatter.trace()), (float((scatter * scatter).sum()) if frob else 0.0)

    def solve_ridge(self, scatter, a: float, t: float, means: np.ndarray) -> np.ndarray:
        torch = self.torch
        system = a * scatter + t * torch.eye(scatter.shape[0], dtype=torch.float64, device=self.dev)
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) != 0:
            return _solve_psd(system.cpu().numpy(), means.T)
        rhs = torch.as_tensor(means.T, dtype=torch.float64, device=self.dev)
        return torch.cholesky_solve(rhs, factor).cpu().numpy()


def _prepared_ahead(blocks, prepare, ahead: int = 2):
    """Iterate ``(prepare(X), codes)`` for the ``(X, codes)`` of ``blocks``, read and prepared by a thread ``ahead`` blocks early.

    On a GPU, ``prepare`` pins a block: reading a store (``preadv``) and pinning
    (a copy) release the GIL, so the thread's work overlaps the caller's copies
    to the device. An exception of the thread is raised in the caller; a caller
    that stops early stops the thread.
    """
    out: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    end = object()

    def offer(item) -> bool:
        """Queue ``item`` unless the caller has stopped; whether it was queued."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for X, codes in blocks:
                if not offer((prepare(X), codes)):
                    return
            item = end
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            item = exc
        offer(item)

    thread = threading.Thread(target=read, name="clipcache-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
        if hasattr(blocks, "close"):  # a generator (another _prepared_ahead, say) stops its own work too
            blocks.close()


def host_allocator(device):
    """For a CUDA ``device``, ``allocate(shape, dtype)``: a numpy view of a new pinned tensor, for a store to read a
    block into (``FeatureStore.iter_chunks(allocate=...)``), which :class:`TorchOps` then copies to the device without
    pinning it again; None for other devices."""
    if device is None:
        return None
    torch, dev = _backend.torch_device(device)
    if dev.type != "cuda":
        return None

    def allocate(shape, dtype) -> np.ndarray:
        return torch.empty(tuple(shape), dtype=torch.from_numpy(np.empty(0, dtype=dtype)).dtype, pin_memory=True).numpy()

    return allocate


def make_ops(device) -> NumpyOps | TorchOps:
    """:class:`NumpyOps` for ``device=None``, else :class:`TorchOps` on that torch device."""
    return NumpyOps() if device is None else TorchOps(device)
