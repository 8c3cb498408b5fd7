"""Closed-form classifiers on cached features (scikit-learn estimators).

- :class:`ZeroShotClassifier`: CLIP prompt-ensemble zero-shot weights.
- :class:`ClassMeanClassifier`: nearest class mean (cosine prototypes).
- :class:`GDAClassifier`: shared-covariance Gaussian discriminant, streamable.
- :class:`LogitEnsemble`: ``base + alpha * model`` (zero-shot + GDA).
- :class:`TipAdapter`: training-free key-value cache.
- :class:`LogitBiasFusion`: uncertainty-gated bias from auxiliary features.
- :class:`KNNClassifier`: k-NN on FAISS.
- :class:`TransductiveGDA`: GDA fitted by EM on labelled and unlabelled rows (-1), guarded on validation.
- :class:`ProductOfExperts`: several classifiers' calibrated probabilities multiplied (GDA x nearest class mean).
- :class:`SelectByValidation`: picks an estimator on validation with a paired one-standard-error rule.

Every estimator takes ``center`` (SimpleShot's CL2N) and is calibrated by
temperature scaling with ``calibrate(X_val, y_val)`` (``temperature_``).

They share :class:`LogitClassifier` (declared parameter rules, checked when
``fit`` starts; keyword-only parameters); the three whose hyper-parameters are
searched on validation data share :class:`ValidatedLogitClassifier`.

Fitted models are saved with :func:`save_model` and read with :func:`load_model`.
"""

from clipcache.classifiers.base import (
    InvalidFeaturesError,
    InvalidParameterError,
    LogitClassifier,
    ValidatedLogitClassifier,
)
from clipcache.classifiers.ensemble import LogitEnsemble
from clipcache.classifiers.fusion import LogitBiasFusion
from clipcache.classifiers.gda import GDAClassifier
from clipcache.classifiers.io import ModelFileError, load_model, save_model
from clipcache.classifiers.knn import KNNClassifier
from clipcache.classifiers.product import ProductOfExperts
from clipcache.classifiers.prototypes import ClassMeanClassifier
from clipcache.classifiers.selection import SelectByValidation
from clipcache.classifiers.tip import TipAdapter
from clipcache.classifiers.transductive import TransductiveGDA
from clipcache.classifiers.zeroshot import MissingTextError, ZeroShotClassifier, prompt_ensemble

__all__ = [
    "ClassMeanClassifier",
    "GDAClassifier",
    "InvalidFeaturesError",
    "InvalidParameterError",
    "KNNClassifier",
    "LogitBiasFusion",
    "LogitClassifier",
    "LogitEnsemble",
    "MissingTextError",
    "ModelFileError",
    "ProductOfExperts",
    "SelectByValidation",
    "TipAdapter",
    "TransductiveGDA",
    "ValidatedLogitClassifier",
    "ZeroShotClassifier",
    "load_model",
    "prompt_ensemble",
    "save_model",
]
