"""Zero-shot classification from prompt-ensemble text embeddings (CLIP)."""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.utils.validation import validate_data

from clipcache.classifiers._centering import CENTER_CONSTRAINT
from clipcache.classifiers._params import Device, Interval
from clipcache.classifiers.base import InvalidFeaturesError, LogitClassifier, l2_normalize
from clipcache.errors import MissingTextError
from clipcache.ops import prompt_ensemble

__all__ = ["MissingTextError", "ZeroShotClassifier", "prompt_ensemble"]


class ZeroShotClassifier(LogitClassifier):
    """CLIP zero-shot classifier: ``logits = logit_scale * normalize(x) @ W.T``.

    Parameters
    ----------
    text_embeddings : ndarray of shape (M, d), float
        Prompt embeddings (e.g. ``FeatureStore.text(name).embeddings``).
    class_index : ndarray of shape (M,), int, optional
        Class of each prompt; None when there is one row per class.
    logit_scale : float, default=100.0
        CLIP's temperature (exp of the learned logit scale; 100 for OpenAI CLIP).
    normalize : bool, default=True
        L2-normalise image features before the product.
    device : str, optional
        None for numpy; a torch device (``"cuda"``) for torch.
    center : None, "support" or array-like of shape (d,), default=None
        CL2N centring (:class:`LogitClassifier`).

    Attributes
    ----------
    coef_ : ndarray of shape (C, d), float32
        Prompt-ensemble class weights (see :func:`prompt_ensemble`).
    classes_ : ndarray of shape (C,), int64
        ``arange(C)``: label i is the class of text row(s) i.
    center_, temperature_ : the CL2N mean and the softmax temperature (:class:`LogitClassifier`)
    n_features_in_ : int

    Examples
    --------
    Two prompts per class, for three classes in 3-D:

    >>> import numpy as np
    >>> from clipcache.classifiers import ZeroShotClassifier
    >>> text = np.array([[1, 0.1, 0], [1, -0.1, 0], [0, 1, 0.1], [0, 1, -0.1], [0, 0, 1], [0.1, 0, 1]])
    >>> zs = ZeroShotClassifier(text_embeddings=text, class_index=[0, 0, 1, 1, 2, 2], logit_scale=10.0)
    >>> X = np.array([[2, 0, 0], [0, 3, 0.5], [0.2, 0.1, 1]], dtype=np.float32)
    >>> zs = zs.fit(X)
    >>> zs.classes_
    array([0, 1, 2])
    >>> zs.logits(X).round(2)
    array([[10.  ,  0.  ,  0.5 ],
           [ 0.  ,  9.86,  1.64],
           [ 1.95,  0.98,  9.84]], dtype=float32)
    >>> zs.predict(X)
    array([0, 1, 2])
    """

    _parameter_constraints = {
        "text_embeddings": [None, "array-like"],
        "class_index": [None, "array-like"],
        "logit_scale": [Interval(Real, 0, None, closed="neither")],
        "normalize": ["boolean"],
        "device": [None, Device()],
        "center": CENTER_CONSTRAINT,
    }

    def __init__(self, *, text_embeddings=None, class_index=None, logit_scale=100.0, normalize=True, device=None,
                 center=None):
        self.text_embeddings = text_embeddings
        self.class_index = class_index
        self.logit_scale = logit_scale
        self.normalize = normalize
        self.device = device
        self.center = center

    def fit(self, X, y=None):
        """Set the class weights from the text embeddings; ``X`` only fixes d, ``y`` is checked.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Image features; only their dimension d is used.
        y : array-like of shape (n,), int, optional
            Labels must lie in ``[0, C)``.

        Returns
        -------
        self
        """
        self._validate_params()
        if self.text_embeddings is None:
            raise MissingTextError(
                "text_embeddings is None: zero-shot classification needs the class prompts' text "
                "embeddings (extract them with a CLIP model, or pick another method)",
                param="text_embeddings",
            )
        if y is None:
            X = self._check_X_unfitted(X)
        else:
            X, y = self._check_Xy(X, y)
        X = self._fit_center(X)
        self.temperature_ = 1.0
        self.coef_ = prompt_ensemble(self.text_embeddings, self.class_index)
        if self.coef_.shape[1] != X.shape[1]:
            raise InvalidFeaturesError(
                f"text embeddings have dimension {self.coef_.shape[1]} but the image features have "
                f"{X.shape[1]}; use text and image features from the same CLIP model"
            )
        self.classes_ = np.arange(len(self.coef_), dtype=np.int64)
        if y is not None:
            y = np.asarray(y)
            if not np.isin(y, self.classes_).all():
                raise InvalidFeaturesError(
                    f"labels must be class indices in [0, {len(self.coef_)}) to match the text embeddings",
                    param="y",
                )
        return self

    def _check_X_unfitted(self, X):
        try:
            return validate_data(self, X, dtype=np.float32)
        except ValueError as exc:
            raise InvalidFeaturesError(str(exc).rstrip(".")) from None

    def _logits(self, X: np.ndarray) -> np.ndarray:
        if self.normalize:
            X = l2_normalize(X)
        return np.float32(self.logit_scale) * self._matmul(X, self.coef_.T)
