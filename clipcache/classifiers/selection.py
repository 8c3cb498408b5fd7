"""Choosing the estimator and its hyper-parameters on validation data, robustly to validation noise.

With a few validation images per class, validation accuracies differ by
chance, and the largest of several noisy accuracies is biased upwards, the more
so for candidates that search a grid on the same validation data.
:class:`SelectByValidation` therefore ranks its candidates by preference
(``level``: 0 is the default choice, higher levels must earn their place) and
applies a paired one-standard-error rule:

1. every candidate is fitted on the support set (those that search
   hyper-parameters or calibrate search on the validation data) and predicts the
   validation rows;
2. ``best`` is the candidate with the highest validation accuracy (the first
   listed on ties);
3. a candidate c is within the noise of ``best`` when
   ``acc(best) - acc(c) <= tolerance * se(c, best)``, where
   ``se(c, best) = sqrt(n_disagree) / m`` is the standard error of the paired
   difference of accuracies under the null of equal accuracy (McNemar's
   statistic: n_disagree rows are right for one and wrong for the other, of m);
4. the chosen candidate is, among those within the noise, one of the lowest
   level, and among those the most accurate (the first listed on ties).

A candidate of a higher level is thus chosen only when its gain over every
lower-level one exceeds ``tolerance`` paired standard errors; the default
``tolerance=1`` is the one-standard-error rule of Breiman et al. (CART) applied
to paired validation predictions.

The default candidates (:func:`default_candidates`) put the product of the
calibrated GDA and nearest-class-mean experts
(:class:`~clipcache.classifiers.ProductOfExperts`) at level 0 and each expert
alone at level 1. Every choice among candidate sets, levels and rules was made
on a development split of the training pool (docs/classifiers.md).

The candidates are fitted from arrays checked once, at ``fit``'s boundary
(:func:`~clipcache.classifiers.base.fit_part`): an expert shared by two
candidates is fitted once, and the chosen candidate's validation logits, already
computed for the choice, calibrate it.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from clipcache.calibration import fit_temperature_checked
from clipcache.classifiers._centering import CENTER_CONSTRAINT
from clipcache.classifiers._params import Interval
from clipcache.classifiers._validation import check_part_classes
from clipcache.classifiers.base import (
    InvalidParameterError,
    LogitClassifier,
    _takes_validation,
    fit_part,
    part_logits,
)
from clipcache.classifiers.ensemble import LogitEnsemble
from clipcache.classifiers.gda import GDAClassifier
from clipcache.classifiers.product import ProductOfExperts
from clipcache.classifiers.prototypes import ClassMeanClassifier
from clipcache.classifiers.tip import TipAdapter

__all__ = ["SelectByValidation", "choose_candidate", "default_candidates", "paired_standard_error"]


def default_candidates(base=None) -> list[tuple[str, object, int]]:
    """The default candidates ``(name, estimator, level)``, the preferred first.

    Without ``base``: level 0, ``gda+ncm``, the product of the calibrated GDA
    (ICLR 2024 precision) and nearest-class-mean experts; level 1, ``gda`` and
    ``ncm`` alone. On the development split (CIFAR-10 and Fashion-MNIST,
    EfficientNet-lite0 features, the training-pool rows outside each support set,
    20 seeds) the product was the most accurate single method at 2 to 8 shots,
    and GDA at 16; ranking the simpler nearest class mean first lost up to 1.4
    points at 16 shots, and the alpha-ensemble, Tip-Adapter, GDA's other
    precisions, a searched GDA ridge and k-NN never raised the accuracy of the
    selection while each extra candidate added selection noise.

    With ``base`` (zero-shot logits from text embeddings), the base joins the
    product as a third expert and stands alone at level 1, and ``base + alpha *
    GDA`` (level 2) and Tip-Adapter (level 3) join; this set is not measured on
    the development split, which has no text embeddings.

    Parameters
    ----------
    base : estimator, optional
        Zero-shot logits (e.g. a :class:`ZeroShotClassifier`); None without text.
    """
    if base is None:
        return [
            ("gda+ncm", ProductOfExperts(experts=[GDAClassifier(), ClassMeanClassifier()]), 0),
            ("gda", GDAClassifier(), 1),
            ("ncm", ClassMeanClassifier(), 1),
        ]
    return [
        ("gda+ncm+zeroshot", ProductOfExperts(experts=[GDAClassifier(), ClassMeanClassifier(), base]), 0),
        ("gda", GDAClassifier(), 1),
        ("ncm", ClassMeanClassifier(), 1),
        ("zeroshot", base, 1),
        ("gda-ensemble", LogitEnsemble(base=base, model=GDAClassifier()), 2),
        ("tip", TipAdapter(base=base), 3),
    ]


def paired_standard_error(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """sqrt(rows where exactly one of a and b is right) / rows: the standard error of acc(a) - acc(b) under H0."""
    return float(np.sqrt(np.count_nonzero(correct_a != correct_b)) / len(correct_a))


def choose_candidate(correct: np.ndarray, levels, tolerance: float) -> tuple[int, int, np.ndarray]:
    """The paired one-standard-error rule.

    Parameters
    ----------
    correct : ndarray of shape (K, m), bool
        Whether candidate k predicts validation row i correctly.
    levels : sequence of int, length K
        Preference of each candidate (lower is preferred).
    tolerance : float
        How many paired standard errors below the best a lower-level candidate may be.

    Returns
    -------
    chosen : int
        Index of the chosen candidate.
    best : int
        Index of the most accurate candidate (first on ties).
    noise : ndarray of shape (K,), float64
        ``se(k, best)`` for every candidate.
    """
    acc = correct.mean(axis=1)
    best = int(np.argmax(acc))
    noise = np.array([paired_standard_error(c, correct[best]) for c in correct])
    within = acc[best] - acc <= tolerance * noise + 1e-12
    levels = np.asarray(levels)
    lowest = levels[within].min()
    eligible = np.flatnonzero(within & (levels == lowest))
    return int(eligible[np.argmax(acc[eligible])]), best, noise


class SelectByValidation(LogitClassifier):
    """Fit every candidate on the support set and keep one, chosen on validation by the paired 1-SE rule.

    Parameters
    ----------
    candidates : list of (name, estimator, level), optional
        Unfitted estimators, cloned for each fit; ``level`` ranks preference
        (0 first). Default :func:`default_candidates`. Candidates that search
        hyper-parameters or calibrate on validation (:class:`ValidatedLogitClassifier`,
        :class:`ProductOfExperts`) get the validation data.
    tolerance : float >= 0, default=1.0
        Paired standard errors a lower-level candidate may lose by and still be chosen;
        0 picks the most accurate candidate.
    center : None, "support" or array-like of shape (d,), default=None
        CL2N centring, applied once before the candidates see the data (leave
        the candidates' own ``center`` at None).

    Attributes
    ----------
    best_estimator_ : fitted estimator
        The chosen candidate.
    best_name_ : str
    candidate_names_ : ndarray of shape (K,), str
    validation_accuracy_ : ndarray of shape (K,), float64
        Every candidate's validation accuracy (empty without validation data).
    noise_ : ndarray of shape (K,), float64
        Paired standard error of each candidate against the most accurate one.
    classes_ : ndarray of shape (C,)
    center_ : ndarray of shape (d,), float32, or None
    temperature_ : float
        Softmax temperature of ``predict_proba``, fitted on the validation data.
    n_features_in_ : int

    Notes
    -----
    Without validation data nothing can be chosen, and the first candidate is used.

    Examples
    --------
    Classes along one direction at different distances, where the cosine
    class mean cannot separate them but GDA can:

    >>> import numpy as np
    >>> from clipcache.classifiers import ClassMeanClassifier, GDAClassifier, SelectByValidation
    >>> rng = np.random.default_rng(0)
    >>> centres = np.array([[1, 1], [2, 2], [3, 3]], dtype=np.float32)
    >>> def draw(n):
    ...     y = np.repeat(np.arange(3), n)
    ...     return (centres[y] + 0.3 * rng.normal(size=(len(y), 2))).astype(np.float32), y
    >>> (X, y), (Xv, yv) = draw(5), draw(10)
    >>> select = SelectByValidation(candidates=[("ncm", ClassMeanClassifier(), 0),
    ...                                         ("gda", GDAClassifier(), 0)]).fit(X, y, Xv, yv)
    >>> select.validation_accuracy_.round(2)
    array([0.23, 0.93])
    >>> select.best_name_
    'gda'
    """

    _parameter_constraints = {
        "candidates": [None, list, tuple],
        "tolerance": [Interval(Real, 0, None, closed="left")],
        "center": CENTER_CONSTRAINT,
    }

    _fit_takes_validation = True

    def __init__(self, *, candidates=None, tolerance=1.0, center=None):
        self.candidates = candidates
        self.tolerance = tolerance
        self.center = center

    def _validate_params(self) -> None:
        super()._validate_params()
        self._candidates()

    def _candidates(self) -> list[tuple[str, object, int]]:
        items = default_candidates() if self.candidates is None else list(self.candidates)
        if not items:
            raise InvalidParameterError("SelectByValidation got no candidates; give at least one", param="candidates")
        out = []
        for item in items:
            if not (isinstance(item, list | tuple) and len(item) == 3 and isinstance(item[0], str)
                    and callable(getattr(item[1], "fit", None)) and isinstance(item[2], int | np.integer)):
                raise InvalidParameterError(
                    f"SelectByValidation got candidate {item!r}; each candidate must be (name, estimator, level)",
                    param="candidates",
                )
            out.append((item[0], item[1], int(item[2])))
        return out

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit the candidates on (X, y) and keep the one the validation data chooses.

        Parameters
        ----------
        X, y : array-like of shape (n, d) and (n,)
            The support set (X is converted to float32).
        X_val, y_val : array-like of shape (m, d) and (m,), optional
            The validation set, labels among ``y``'s classes. Pass both or neither.

        Returns
        -------
        self
        """
        return self._fit_meta(X, y, X_val, y_val, "choose a candidate")

    def _fit_checked(self, X, classes, codes, X_val=None, codes_val=None, cache=None):
        candidates = self._candidates()
        X, Xv = self._start_meta_fit(X, classes, X_val)
        self.candidate_names_ = np.array([name for name, _, _ in candidates])
        self.temperature_ = 1.0
        if Xv is None:
            self.best_name_ = candidates[0][0]
            self.best_estimator_ = fit_part(candidates[0][1], X, classes, codes, cache=cache)[0]
            self.validation_accuracy_ = self.noise_ = np.zeros(0)
            return None
        fitted = [fit_part(estimator, X, classes, codes, Xv, codes_val, cache) for _, estimator, _ in candidates]
        for est, _ in fitted:
            check_part_classes("SelectByValidation", est, classes)
        correct = np.array([z.argmax(axis=1) == codes_val for _, z in fitted])
        chosen, _, self.noise_ = choose_candidate(correct, [level for _, _, level in candidates], float(self.tolerance))
        self.validation_accuracy_ = correct.mean(axis=1)
        self.best_name_, (self.best_estimator_, z) = candidates[chosen][0], fitted[chosen]
        # a candidate that calibrated itself did so on these validation logits already
        self.temperature_ = (float(self.best_estimator_.temperature_) if _takes_validation(self.best_estimator_)
                             else fit_temperature_checked(z, codes_val))
        return z

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return part_logits(self.best_estimator_, X)

