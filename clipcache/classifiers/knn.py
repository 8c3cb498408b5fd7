"""k-nearest-neighbour classification on an exact inner-product index (faiss, or torch on a GPU)."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from clipcache.classifiers._centering import CENTER_CONSTRAINT
from clipcache.classifiers._params import Interval, Options
from clipcache.classifiers.base import InvalidParameterError, LogitClassifier, l2_normalize
from clipcache.retrieval.backends import BACKENDS, flat_index

__all__ = ["KNNClassifier", "METRICS", "SMALL_SEARCH", "WEIGHTS", "vote"]

METRICS = ("cosine", "ip")
WEIGHTS = ("uniform", "distance")
_EPS = 1e-6
#: Below this many query x key products, the search is one numpy product: FAISS's thread start-up costs
#: more than the search itself on few-shot support sets (e.g. 40 validation rows x 160 keys).
SMALL_SEARCH = 1 << 20


def vote(sims: np.ndarray, neighbour_codes: np.ndarray, n_classes: int, weights: str) -> np.ndarray:
    """Class vote fractions from the k nearest neighbours.

    Parameters
    ----------
    sims : ndarray of shape (n, k), float32
        Similarities of the neighbours (cosine or inner product).
    neighbour_codes : ndarray of shape (n, k), int64
        Class column of each neighbour.
    n_classes : int
    weights : {"uniform", "distance"}
        ``"distance"`` weighs a neighbour by 1 / max(1 - sim, 1e-6), the inverse cosine distance.

    Returns
    -------
    ndarray of shape (n, C), float32, rows summing to 1
    """
    w = np.ones_like(sims, dtype=np.float64) if weights == "uniform" else 1.0 / np.maximum(1.0 - sims, _EPS)
    votes = np.zeros((len(sims), n_classes))
    np.add.at(votes, (np.arange(len(sims))[:, None], neighbour_codes), w)
    return (votes / votes.sum(axis=1, keepdims=True)).astype(np.float32)


class KNNClassifier(LogitClassifier):
    """k-NN on an exact inner-product index of the support features (``faiss.IndexFlatIP`` or the torch backend).

    Parameters
    ----------
    n_neighbors : int >= 1, default=5
        k; capped at the number of support samples.
    metric : {"cosine", "ip"}, default="cosine"
        Cosine normalises features and queries; "ip" uses raw inner products.
    weights : {"uniform", "distance"}, default="uniform"
        "distance" (cosine metric only) weighs votes by inverse cosine distance.
    center : None, "support" or array-like of shape (d,), default=None
        CL2N centring (:class:`LogitClassifier`).
    backend : {"auto", "faiss", "torch"}, default="auto"
        Who searches (:func:`clipcache.retrieval.backends.choose_backend`): auto takes
        faiss-gpu when it passes a probe search, then torch on CUDA, then faiss on the CPU.
        Searches of fewer than :data:`SMALL_SEARCH` products are one numpy product whatever the backend.

    Attributes
    ----------
    keys_ : ndarray of shape (n, d), float32
        The indexed support features (normalised for cosine).
    key_codes_ : ndarray of shape (n,), int64
    n_neighbors_ : int
    classes_ : ndarray of shape (C,)
    center_, temperature_ : the CL2N mean and the softmax temperature (:class:`LogitClassifier`)
    n_features_in_ : int
    backend_ : dict
        The backend chosen (:meth:`BackendChoice.to_dict`), logged when the index is made.

    Notes
    -----
    ``logits`` are the log vote fractions (floored at 1e-12), so ``predict_proba``
    returns the vote fractions.

    Examples
    --------
    >>> import numpy as np
    >>> from clipcache.classifiers import KNNClassifier
    >>> X = np.array([[1, 0], [1, 0.2], [0.9, -0.1], [0, 1], [0.2, 1]], dtype=np.float32)
    >>> y = np.array(["cat", "cat", "cat", "dog", "dog"])
    >>> knn = KNNClassifier(n_neighbors=3).fit(X, y)
    >>> queries = np.array([[1, 0.1], [0.1, 1]], dtype=np.float32)
    >>> knn.predict(queries)
    array(['cat', 'dog'], dtype='<U3')
    >>> knn.predict_proba(queries).round(3)
    array([[1.   , 0.   ],
           [0.333, 0.667]], dtype=float32)
    """

    _parameter_constraints = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "metric": [Options(*METRICS)],
        "weights": [Options(*WEIGHTS)],
        "center": CENTER_CONSTRAINT,
        "backend": [Options(*BACKENDS)],
    }

    def __init__(self, *, n_neighbors=5, metric="cosine", weights="uniform", center=None, backend="auto"):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.weights = weights
        self.center = center
        self.backend = backend

    def _validate_params(self) -> None:
        super()._validate_params()
        if self.weights == "distance" and self.metric != "cosine":
            raise InvalidParameterError(
                f"KNNClassifier got weights='distance' with metric={self.metric!r}; weights='distance' "
                "needs metric='cosine', so use weights='uniform' with that metric",
                param="weights",
            )

    def _fit(self, X: np.ndarray, codes: np.ndarray) -> None:
        self.key_codes_ = codes
        self.keys_ = np.ascontiguousarray(l2_normalize(X) if self.metric == "cosine" else X)
        self.n_neighbors_ = min(int(self.n_neighbors), len(X))
        self._restore()

    def _restore(self) -> None:
        """(Re)build the index of ``keys_`` on the chosen backend; called by ``fit`` and by model loading."""
        self._index, self._choice = flat_index(self.keys_, backend=self.backend)

    @property
    def backend_(self) -> dict:
        return self._choice.to_dict()

    def _search(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``n_neighbors_`` largest inner products (n, k) and their key rows (n, k), best first."""
        if len(q) * len(self.keys_) > SMALL_SEARCH:
            return self._index.search(q, self.n_neighbors_)
        sims = q @ self.keys_.T
        k = self.n_neighbors_
        ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # exact; ties by key row, as IndexFlatIP
        return np.take_along_axis(sims, ids, axis=1), ids

    def _logits(self, X: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(l2_normalize(X) if self.metric == "cosine" else X)
        sims, ids = self._search(q)
        p = vote(sims, self.key_codes_[ids], len(self.classes_), self.weights)
        return np.log(np.maximum(p, np.float32(1e-12)))
