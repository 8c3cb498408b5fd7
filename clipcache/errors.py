"""Exceptions raised by clipcache.

Every error a user can cause is a :class:`ClipCacheError`. Its message is one
sentence that names the file or field at fault and, where there is one, the fix.
The command line prints that message on one line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "ClipCacheError",
    "DatasetError",
    "IndexMismatchError",
    "InvalidFeaturesError",
    "InvalidParameterError",
    "MissingTextError",
    "ModelFileError",
    "ModelLoadError",
    "NotFittedError",
    "OutputPathError",
    "OutputWriteError",
    "ProtocolError",
    "QueryError",
    "ReportInputError",
    "StoreError",
    "StoreFormatError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreVersionError",
    "StoreWriteError",
]


class ClipCacheError(Exception):
    """Base class of every error that clipcache raises on bad input or state.

    Parameters
    ----------
    message : str
        One sentence in the words of the Python API (parameter names, not
        command-line flags), with no final period.
    param : str, optional
        The API parameter at fault (``"feature_set"``, ``"pretrained"`` ...).
        The command line names the matching flag after the message, so the
        library never has to.
    """

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.param = param


class StoreError(ClipCacheError):
    """A feature store cannot be opened, read or written."""


class StoreFormatError(StoreError):
    """A file is not a clipcache store, or is truncated or corrupt."""


class StoreVersionError(StoreFormatError):
    """A store, or one element of it, has a format version this release cannot read."""


class StoreMismatchError(StoreError):
    """Features from a different model, preprocessing or class list would be mixed."""


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class StoreWriteError(StoreError):
    """A write to a store failed (a full disk, an I/O error); what was committed before it is kept."""


class NotFittedError(ClipCacheError, ValueError):
    """An estimator was used before ``fit``."""


class ModelLoadError(ClipCacheError):
    """A backbone or its weights cannot be loaded."""


class DatasetError(ClipCacheError):
    """An image dataset or manifest cannot be read."""


class IndexMismatchError(ClipCacheError):
    """A saved index does not match its feature store."""


class InvalidParameterError(ClipCacheError, ValueError):
    """A parameter value is outside what the function accepts."""


class InvalidFeaturesError(ClipCacheError, ValueError):
    """Features or labels given to an estimator are unusable (NaN, inf, wrong shape, too few)."""


class OutputPathError(InvalidParameterError):
    """An output path names an input of the same call, or an existing file of another kind.

    Raised by :func:`clipcache._io.check_output` before any work: ``param`` is
    the output parameter when the output is an input, and ``"overwrite"`` when
    the existing file may only be replaced on request.
    """


class OutputWriteError(ClipCacheError):
    """An output file cannot be written: the disk is full, the folder is missing or read-only.

    The file it would have replaced is left as it was, and no temporary file is left behind.
    """


class ModelFileError(ClipCacheError):
    """A fitted-model file cannot be written or read."""


class MissingTextError(ClipCacheError, ValueError):
    """Zero-shot weights were asked for but no text embeddings were given."""


class ProtocolError(ClipCacheError):
    """The evaluation protocol cannot run on the given store, splits or options."""


class QueryError(ClipCacheError, ValueError):
    """A query or a search argument is invalid (dimension, k, unknown id, empty index)."""


class ReportInputError(ClipCacheError, ValueError):
    """An input of a report (evaluation, OOD or estimation JSON, model) cannot be read or does not fit the store."""
