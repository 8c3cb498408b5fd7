"""The kinds of file the commands write, and how an existing one is recognised.

A command replaces an existing output file of its own kind without asking (a
rerun), and any other file only with ``--overwrite``
(:func:`clipcache._io.check_output`). Recognition is cheap: a header, an
attribute or a few top-level keys are read, never the whole content.

========================  ==========================================================
kind                      recognised by
========================  ==========================================================
model file (fit)          the model document entry of an npz or HDF5 file
                          (:func:`clipcache.classifiers.io.is_model_file`)
predictions CSV           its first line is the header that predict writes
evaluation report         a JSON object with the keys ``config``, ``summary``, ``runs``
OOD report (ood -o)       a JSON object with the keys ``fit_split``, ``in_split``, ``results``
estimate report           a JSON object with the keys ``model``, ``splits``, ``summary``
PNG plot                  the 8-byte PNG signature
index (``index``)         its JSON sidecar is a clipcache index sidecar
                          (:func:`clipcache.retrieval.index.is_index`)
========================  ==========================================================
"""

from __future__ import annotations

import json
from pathlib import Path

from clipcache._io import OutputKind

__all__ = ["ESTIMATE_REPORT", "EVALUATION_REPORT", "MODEL_FILE", "OOD_REPORT", "PNG_IMAGE", "PREDICTIONS_CSV"]

#: The header line of ``clipcache predict``'s CSV (written by :func:`clipcache.evaluation.predict_to_csv`).
_PREDICTIONS_HEADER = b"id,path,label,pred,pred_name,confidence"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_model_file(path: Path) -> bool:
    from clipcache.classifiers.io import is_model_file  # imports scikit-learn: only when fit runs

    return is_model_file(path)


def _is_predictions(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.readline(len(_PREDICTIONS_HEADER) + 2).rstrip(b"\r\n") == _PREDICTIONS_HEADER


def _is_png(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE


def _json_object_with(keys: set[str]):
    """A recogniser of JSON files holding an object with at least ``keys`` at the top level."""

    def recognise(path: Path) -> bool:
        with open(path, "rb") as fh:
            if fh.read(64).lstrip()[:1] != b"{":
                return False
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            return False
        return isinstance(doc, dict) and keys <= set(doc)

    return recognise


MODEL_FILE = OutputKind("a clipcache model file", _is_model_file)
PREDICTIONS_CSV = OutputKind("a predictions CSV", _is_predictions)
EVALUATION_REPORT = OutputKind("an evaluation report", _json_object_with({"config", "summary", "runs"}))
OOD_REPORT = OutputKind("an OOD report", _json_object_with({"fit_split", "in_split", "results"}))
ESTIMATE_REPORT = OutputKind("an accuracy-estimation report", _json_object_with({"model", "splits", "summary"}))
PNG_IMAGE = OutputKind("a PNG image", _is_png)
