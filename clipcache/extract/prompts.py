"""Class prompts: template ensembles (data files) and per-class descriptions (CuPL).

A prompt source is a built-in template set (``imagenet80``: CLIP's 80 ImageNet
templates; ``simple``: ``"a photo of a {}."``) or a JSON file holding either a
list of templates (each with one ``{}`` for the class name), an object with a
``"templates"`` list, or an object mapping every class name to a list of
sentences (CuPL style).
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from clipcache.errors import ClipCacheError, DatasetError
from clipcache.extract.backbones import load_backbone

if TYPE_CHECKING:
    from collections.abc import Sequence

    from clipcache.extract.backbones import Backbone
    from clipcache.feature_store import FeatureStore

__all__ = [
    "BUILTIN_TEMPLATES",
    "PromptSet",
    "builtin_templates",
    "class_display_name",
    "embed_prompt_set",
    "embed_prompts",
    "from_descriptions",
    "from_templates",
    "load_prompts",
]

BUILTIN_TEMPLATES = ("imagenet80", "simple")


@dataclasses.dataclass
class PromptSet:
    """Prompts of every class, one row per (class, prompt).

    Attributes
    ----------
    name : str
        Name under which the embeddings are stored.
    prompts : list of str, length M
    class_index : numpy.ndarray, int64, shape (M,)
        Class of each prompt.
    templates : list of str or None
        The templates of a template ensemble; None for per-class descriptions.
    """

    name: str
    prompts: list[str]
    class_index: np.ndarray
    templates: list[str] | None


def builtin_templates(name: str) -> list[str]:
    """Return a built-in template set (``imagenet80`` or ``simple``)."""
    if name not in BUILTIN_TEMPLATES:
        raise DatasetError(
            f"templates {name!r} are not built in; use {' or '.join(BUILTIN_TEMPLATES)} or a JSON file", param="templates"
        )
    text = resources.files("clipcache.extract").joinpath("templates", f"{name}.json").read_text(encoding="utf-8")
    return list(json.loads(text)["templates"])


def class_display_name(name: str) -> str:
    """The class name as written in a prompt (underscores become spaces)."""
    return name.replace("_", " ")


def from_templates(name: str, templates: Sequence[str], classes: Sequence[str]) -> PromptSet:
    """Fill every template with every class name.

    Returns
    -------
    PromptSet
        Class-major: the prompts of class 0 first.
    """
    bad = [t for t in templates if not isinstance(t, str) or "{}" not in t]
    if bad or not templates:
        raise DatasetError(
            f"templates of {name!r}: each must be a string containing '{{}}' for the class name (bad: {bad[:1]})", param="templates"
        )
    prompts = [t.replace("{}", class_display_name(c)) for c in classes for t in templates]
    index = np.repeat(np.arange(len(classes), dtype=np.int64), len(templates))
    return PromptSet(name, prompts, index, list(templates))


def from_descriptions(name: str, descriptions: dict, classes: Sequence[str]) -> PromptSet:
    """Per-class sentences (CuPL): ``{class name: [sentence, ...]}``, every class present."""
    missing = [c for c in classes if not descriptions.get(c)]
    if missing:
        raise DatasetError(
            f"descriptions {name!r} have no sentences for class {missing[0]!r}; add a non-empty list for every class",
            param="templates",
        )
    prompts, index = [], []
    for k, cls in enumerate(classes):
        sentences = descriptions[cls]
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise DatasetError(f"descriptions {name!r}: class {cls!r} must map to a list of strings", param="templates")
        prompts.extend(sentences)
        index.extend([k] * len(sentences))
    return PromptSet(name, prompts, np.asarray(index, dtype=np.int64), None)


def load_prompts(spec: str, classes: Sequence[str], name: str | None = None) -> PromptSet:
    """Read a prompt source and fill it for ``classes``.

    Parameters
    ----------
    spec : str
        ``imagenet80``, ``simple`` or a JSON file (see the module docstring).
    classes : sequence of str
        The store's class names, in label order.
    name : str, optional
        Storage name; the built-in name or the file's stem by default.
    """
    if spec in BUILTIN_TEMPLATES:
        return from_templates(name or spec, builtin_templates(spec), classes)
    if not os.path.isfile(spec):
        raise DatasetError(
            f"templates {spec!r} are neither {' nor '.join(BUILTIN_TEMPLATES)} nor an existing JSON file", param="templates"
        )
    try:
        with open(spec, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"{spec}: not readable JSON ({exc}); give a list of templates or a class -> sentences object", param="templates"
        ) from None
    name = name or os.path.splitext(os.path.basename(spec))[0]
    if isinstance(data, dict) and isinstance(data.get("templates"), list):
        return from_templates(name, data["templates"], classes)
    if isinstance(data, list):
        return from_templates(name, data, classes)
    if isinstance(data, dict):
        return from_descriptions(name, data, classes)
    raise DatasetError(
        f"{spec}: holds a JSON {type(data).__name__}; give a list of templates or a class -> sentences object", param="templates"
    )


def embed_prompts(
    store: FeatureStore,
    spec: str,
    *,
    backbone: Backbone | None = None,
    feature_set: str = "clip",
    name: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> PromptSet:
    """Embed class prompts with the CLIP text tower and store them.

    Parameters
    ----------
    store : FeatureStore
        Opened for writing, with classes set.
    spec : str
        Prompt source for :func:`load_prompts`.
    backbone : Backbone, optional
        The text tower; rebuilt from ``feature_set``'s provenance by default.
    feature_set : str
        Feature set whose model embeds the text (its provenance is recorded).
    name, overwrite
        Storage name and whether to replace an existing set.
    device : str

    Returns
    -------
    PromptSet
        What was embedded. The stored text provenance is the backbone's (without
        ``preprocess``), plus ``feature_set``, ``prompt_source`` and ``logit_scale``:
        the model's own zero-shot temperature, ``exp(logit_scale)``.
    """
    classes = store.classes
    if not classes:
        raise ClipCacheError(f"{store.path}: has no class names yet; extract image features into it first")
    prompt_set = load_prompts(spec, classes, name)
    if not overwrite and prompt_set.name in store.text_names:  # before the text tower is loaded
        raise ClipCacheError(
            f"{store.path}: text embeddings {prompt_set.name!r} exist; set overwrite to replace them, or give another name",
            param="overwrite",
        )
    if backbone is None:
        sets = store.feature_sets
        if feature_set not in sets:
            raise ClipCacheError(
                f"{store.path}: no feature set {feature_set!r} (it has {sorted(sets)}); name its open_clip feature set",
                param="feature_set",
            )
        backbone = load_backbone(sets[feature_set].provenance, device=device)
    embed_prompt_set(store, prompt_set, backbone, source=spec, overwrite=overwrite)
    return prompt_set


def embed_prompt_set(store: FeatureStore, prompt_set: PromptSet, backbone: Backbone, *, source: str, overwrite: bool) -> None:
    """Embed the prompts of ``prompt_set`` with ``backbone``'s text tower and store them (see :func:`embed_prompts`).

    Parameters
    ----------
    store : FeatureStore
        Opened for writing.
    prompt_set : PromptSet
        From :func:`load_prompts`, for ``store.classes``.
    backbone : Backbone
        An open_clip backbone.
    source : str
        The prompt source, recorded as ``prompt_source``.
    overwrite : bool
        Replace an existing set of that name.
    """
    embeddings = backbone.encode_text(prompt_set.prompts)
    provenance = {k: v for k, v in backbone.provenance().items() if k != "preprocess"}
    provenance.update(feature_set=backbone.name, prompt_source=source)
    if backbone.logit_scale is not None:
        provenance["logit_scale"] = backbone.logit_scale
    store.write_text(
        prompt_set.name,
        embeddings,
        prompt_set.class_index,
        prompt_set.prompts,
        provenance=provenance,
        normalized=True,
        templates=prompt_set.templates,
        overwrite=overwrite,
    )
