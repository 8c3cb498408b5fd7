"""Saving and loading fitted classifiers as HDF5 or npz, never pickle.

A model file holds one JSON document (format name and version, the estimator
tree, free metadata) and the estimator's arrays. The tree records, for each
estimator, its class name, its parameters and its learned attributes (names
ending in ``_``), with nested estimators and lists of them (SelectByValidation's
candidates) as subtrees; arrays are stored under their path in the tree
(``est/params/text_embeddings``, ``est/attrs/base_/attrs/coef_``). Loading
rebuilds the estimators from a fixed table of clipcache classes, so a file can
only ever create those classes, and reads npz with ``allow_pickle=False``.

A damaged file (truncated, edited, arrays of the wrong shape) is refused when
it is loaded, with one :class:`~clipcache.errors.ModelFileError` naming it:
loading checks the document's structure, and the rebuilt estimator must compute
logits of shape (1, C) for one row of its ``n_features_in_`` features.
:func:`is_model_file` recognises a model file cheaply, without loading it.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import h5py
import numpy as np
from sklearn.base import BaseEstimator

from clipcache._io import atomic_output
from clipcache.classifiers.ensemble import LogitEnsemble
from clipcache.classifiers.fusion import LogitBiasFusion
from clipcache.classifiers.gda import GDAClassifier
from clipcache.classifiers.knn import KNNClassifier
from clipcache.classifiers.product import ProductOfExperts
from clipcache.classifiers.prototypes import ClassMeanClassifier
from clipcache.classifiers.selection import SelectByValidation
from clipcache.classifiers.tip import TipAdapter
from clipcache.classifiers.transductive import TransductiveGDA
from clipcache.classifiers.zeroshot import ZeroShotClassifier
from clipcache.errors import ModelFileError

__all__ = ["ModelFileError", "save_model", "load_model", "is_model_file", "MODEL_FORMAT", "MODEL_VERSION"]

MODEL_FORMAT = "clipcache.model"
MODEL_VERSION = 1
_META = "__clipcache_model__"
_DTYPE = "numpy_dtype"  # HDF5 attribute: the numpy dtype of a string array (e.g. "<U3")
_ZIP_MAGIC = b"PK\x03\x04"  # npz
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: The fix that messages about an unreadable or damaged model file name.
_REFIT = "give a file written by save_model (clipcache fit)"

#: The only classes a model file can create, by name.
_CLASSES = {
    cls.__name__: cls
    for cls in (ZeroShotClassifier, ClassMeanClassifier, GDAClassifier, LogitEnsemble, TipAdapter,
                LogitBiasFusion, KNNClassifier, TransductiveGDA, ProductOfExperts, SelectByValidation)
}


def _holds_estimators(value) -> bool:
    """A list or tuple with an estimator in it, at any depth (e.g. SelectByValidation's candidates)."""
    return isinstance(value, list | tuple) and any(
        isinstance(v, BaseEstimator) or _holds_estimators(v) for v in value
    )


def _encode_value(value, path: str, arrays: dict):
    if getattr(value, "transient", False) is True:  # a run-time cache (GramCache): not part of the model
        return {"value": None}
    if isinstance(value, BaseEstimator):
        return {"estimator": _encode(value, path, arrays)}
    if _holds_estimators(value):
        items = [_encode_value(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if isinstance(value, np.ndarray | list | tuple) and not isinstance(value, str):
        arr = np.asarray(value)
        if arr.dtype == object:
            arr = arr.astype(str)
        arrays[path] = arr
        return {"array": path}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise ModelFileError(f"cannot save {path}: values of type {type(value).__name__} are not supported")


def _encode(est: BaseEstimator, path: str, arrays: dict) -> dict:
    name = type(est).__name__
    if name not in _CLASSES:
        raise ModelFileError(f"cannot save a {name}; only clipcache classifiers can be saved")
    params = {k: _encode_value(v, f"{path}/params/{k}", arrays) for k, v in est.get_params(deep=False).items()}
    attrs = {
        k: _encode_value(v, f"{path}/attrs/{k}", arrays)
        for k, v in vars(est).items()
        if k.endswith("_") and not k.startswith("_")
    }
    return {"class": name, "params": params, "attrs": attrs}


def _decode_value(spec: dict, arrays):
    if "estimator" in spec:
        return _decode(spec["estimator"], arrays)
    if "list" in spec or "tuple" in spec:
        items = [_decode_value(v, arrays) for v in spec.get("list", spec.get("tuple"))]
        return items if "list" in spec else tuple(items)
    if "array" in spec:
        return np.asarray(arrays[spec["array"]])
    return spec["value"]


class _Damaged(ValueError):
    """What is wrong in a damaged model file, in words (no exception type is shown)."""


def _decode(tree: dict, arrays) -> BaseEstimator:
    cls = _CLASSES.get(tree.get("class"))
    if cls is None:
        raise _Damaged(f"it names an unknown classifier {tree.get('class')!r}")
    est = cls(**{k: _decode_value(v, arrays) for k, v in tree["params"].items()})
    for k, v in tree["attrs"].items():
        setattr(est, k, _decode_value(v, arrays))
    if hasattr(est, "_restore"):
        est._restore()
    return est


def save_model(estimator: BaseEstimator, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write a fitted classifier to ``path`` (``.h5``/``.hdf5`` or ``.npz``), atomically.

    Parameters
    ----------
    estimator : fitted clipcache classifier
    path : str or PathLike
        The suffix picks the format.
    metadata : dict, optional
        JSON-serialisable facts kept beside the model (store, feature set
        provenance, shots, seed, support ids ...).

    Returns
    -------
    Path

    Raises
    ------
    ModelFileError
        A suffix other than ``.h5``, ``.hdf5`` or ``.npz``, or an estimator that is not a clipcache classifier.
    OutputWriteError
        The disk is full, or the folder is missing or read-only; ``path`` is left as it was.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from clipcache.classifiers import KNNClassifier, load_model, save_model
    >>> X = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    >>> y = np.array(["cat", "cat", "dog", "dog"])
    >>> knn = KNNClassifier(n_neighbors=1).fit(X, y)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_model(knn, os.path.join(tmp, "knn.h5"), {"shots": 2})
    ...     loaded, metadata = load_model(path)
    >>> metadata
    {'shots': 2}
    >>> loaded.predict(np.array([[0.2, 0.8]], dtype=np.float32))
    array(['dog'], dtype='<U3')
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".npz"):
        raise ModelFileError(f"{path}: the model file name must end in .h5, .hdf5 or .npz")
    arrays: dict = {}
    doc = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "estimator": _encode(estimator, "est", arrays),
        "metadata": metadata or {},
    }
    text = json.dumps(doc, sort_keys=True)
    with atomic_output(path, "the model file") as tmp:
        if suffix == ".npz":
            _write_npz(tmp, {_META: np.array(text), **arrays})
        else:
            with h5py.File(tmp, "w") as h5:
                h5.attrs[_META] = text
                for key, arr in arrays.items():
                    if arr.dtype.kind == "U":  # HDF5 has no UCS-4 strings: UTF-8, with the numpy dtype beside
                        h5.create_dataset(key, data=arr.astype(h5py.string_dtype())).attrs[_DTYPE] = arr.dtype.str
                    else:
                        h5.create_dataset(key, data=arr)
    return path


def _write_npz(path: Path, arrays: dict) -> None:
    """What ``np.savez`` writes, with the zip file closed even when a write fails (numpy < 1.24 leaves it to
    the garbage collector, which then prints an ignored exception on a full disk)."""
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def _read_npz(path: Path) -> tuple[str, dict]:
    with np.load(path, allow_pickle=False) as z:
        if _META not in z.files:
            raise ModelFileError(f"{path}: not a clipcache model file (no {_META} entry)")
        return str(z[_META][()]), {k: z[k] for k in z.files if k != _META}


def _read_dataset(obj: h5py.Dataset) -> np.ndarray:
    """A dataset as numpy; UTF-8 strings come back as the numpy str dtype they were saved from."""
    if _DTYPE in obj.attrs:
        try:
            saved = np.dtype(str(obj.attrs[_DTYPE]))
        except TypeError:
            raise ValueError(f"dataset {obj.name} records an unknown dtype {obj.attrs[_DTYPE]!r}") from None
        if saved.kind == "U":
            return np.asarray(obj.asstr()[()], dtype=saved)
    string = h5py.check_string_dtype(obj.dtype)
    if string is not None and string.length is None:  # written before the dtype was recorded
        return np.asarray(obj.asstr()[()], dtype=str)
    return obj[()]


def _read_h5(path: Path) -> tuple[str, dict]:
    with h5py.File(path, "r") as h5:
        if _META not in h5.attrs:
            raise ModelFileError(f"{path}: not a clipcache model file (no {_META} attribute)")
        arrays: dict = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                arrays[name] = _read_dataset(obj)

        h5.visititems(visit)
        return str(h5.attrs[_META]), arrays


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by :func:`save_model`, judged cheaply.

    An npz archive with the model document entry, or an HDF5 file with the
    model document attribute, whatever the suffix; the arrays are not read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_HDF5_MAGIC))
        if head.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(path) as z:
                return f"{_META}.npy" in z.namelist()
        if head == _HDF5_MAGIC:
            with h5py.File(path, "r") as h5:
                return _META in h5.attrs
    except (OSError, zipfile.BadZipFile):
        return False
    return False


def _reason(exc: BaseException) -> str:
    """One line describing what is wrong in a damaged model file."""
    if isinstance(exc, KeyError):
        return f"missing entry {exc.args[0]!r}" if exc.args else "missing entry"
    if isinstance(exc, _Damaged):
        return str(exc)
    text = " ".join(str(exc).split()).rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_consistent(est: BaseEstimator) -> None:
    """Raise ValueError unless ``est`` computes logits of shape (1, C) for one row of its features."""
    d, classes = getattr(est, "n_features_in_", None), getattr(est, "classes_", None)
    name = type(est).__name__
    if isinstance(d, bool) or not isinstance(d, int) or d < 1 or classes is None:
        raise _Damaged(f"its {name} lacks n_features_in_ or classes_")
    try:
        z = est.logits(np.full((1, d), d**-0.5, dtype=np.float32))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, RuntimeError, AssertionError) as exc:
        # faiss (kNN) checks shapes with assert and raises RuntimeError; numpy raises ValueError
        raise _Damaged(f"its {name} cannot compute logits for {d} features: {_reason(exc)}") from None
    if np.shape(z) != (1, len(classes)):
        raise _Damaged(f"its {name} computes logits of shape {np.shape(z)} for {len(classes)} classes")


def load_model(path: str | os.PathLike) -> tuple[BaseEstimator, dict]:
    """Read a model written by :func:`save_model`.

    Parameters
    ----------
    path : str or PathLike
        A ``.h5``, ``.hdf5`` or ``.npz`` model file.

    Returns
    -------
    estimator : fitted clipcache classifier
        Predicts exactly as the saved one, with labels of the same dtype.
    metadata : dict

    Raises
    ------
    ModelFileError
        The file is missing, unreadable (truncated, not npz/HDF5), not a
        clipcache model file, of a newer format version, or damaged: its
        document lacks an entry or has one of the wrong type, or its arrays
        do not fit together (a coefficient matrix of the wrong shape).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from clipcache.classifiers import GDAClassifier, load_model, save_model
    >>> X = np.array([[0, 0], [0.2, 0.1], [1, 1], [0.9, 1.2]], dtype=np.float32)
    >>> gda = GDAClassifier().fit(X, [1.0, 1.0, 2.0, 2.0])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     loaded, _ = load_model(save_model(gda, os.path.join(tmp, "gda.npz")))
    >>> loaded.classes_
    array([1., 2.])
    >>> bool((loaded.logits(X) == gda.logits(X)).all())
    True
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        text, arrays = _read_npz(path) if path.suffix.lower() == ".npz" else _read_h5(path)
        doc = json.loads(text)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({' '.join(str(exc).split()).rstrip('.')}); {_REFIT}") from None
    if not isinstance(doc, dict):
        raise ModelFileError(f"{path}: the model file is damaged (its document is a JSON {type(doc).__name__}); {_REFIT}")
    if doc.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a clipcache model file")
    try:
        version = doc.get("version", -1)
        if isinstance(version, int) and version > MODEL_VERSION:
            raise ModelFileError(
                f"{path}: model format version {version} is newer than this clipcache reads "
                f"({MODEL_VERSION}); upgrade clipcache"
            )
        metadata = doc.get("metadata", {})
        if not isinstance(metadata, dict):
            raise _Damaged(f"its metadata is a JSON {type(metadata).__name__}, not an object")
        estimator = _decode(doc["estimator"], arrays)
        _check_consistent(estimator)
    except (KeyError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise ModelFileError(f"{path}: the model file is damaged ({_reason(exc)}); {_REFIT}") from None
    return estimator, metadata
