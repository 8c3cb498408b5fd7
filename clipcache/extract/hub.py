"""Fail fast, in one line, when weights must be downloaded and there is no network.

open_clip and timm fetch weights through the Hugging Face hub, whose client
retries for about a minute before it gives up. Before asking them, clipcache
looks for the file in the local cache, and otherwise checks in a few seconds
that the download host can be reached at all.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import open_clip
import timm.models
from huggingface_hub import try_to_load_from_cache

from clipcache.errors import ModelLoadError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "cached_hub_file",
    "hub_host",
    "open_clip_tag_source",
    "reachable",
    "require_download",
    "timm_hub_source",
]

CONNECT_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_host() -> str:
    """The Hugging Face hub host (``HF_ENDPOINT`` when set)."""
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def cached_hub_file(repo_id: str, filenames: list[str], cache_dir: str | os.PathLike | None = None) -> str | None:
    """Path of the first of ``filenames`` of ``repo_id`` in the local hub cache, or None.

    ``cache_dir`` is the hub cache folder (the hub's default, ``~/.cache/huggingface/hub``, when None).
    """
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def reachable(host: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:443`` opens within ``timeout`` (always True behind a proxy)."""
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def require_download(host: str, what: str, fix: str, *, param: str | None = None) -> None:
    """Raise :class:`ModelLoadError` unless ``host`` can be reached.

    Parameters
    ----------
    host : str
    what : str
        What must be downloaded, as the start of the message.
    fix : str
        What to do instead, as the end of the message (no final period).
    param : str, optional
        The API parameter that asked for the download (``ClipCacheError.param``).
    """
    if not reachable(host):
        raise ModelLoadError(f"{what} must be downloaded from {host}, which cannot be reached from this machine; {fix}", param=param)


def open_clip_tag_source(model: str, tag: str) -> tuple[str | None, str | None]:
    """Download host and cached weights file (if any) of an open_clip pretrained tag."""
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if cfg.get("file"):
        return None, cfg["file"]
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        names = [filename.replace("open_clip_pytorch_model.bin", "open_clip_model.safetensors"), filename]
        return hub_host(), cached_hub_file(repo, list(dict.fromkeys(names)))
    url = cfg.get("url", "")
    path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return urlparse(url).hostname, path if url and os.path.isfile(path) else None


def timm_hub_source(arch: str) -> tuple[str | None, str | None]:
    """Download host and cached weights file (if any) of timm's default pretrained weights."""
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        return hub_host(), cached_hub_file(hub_id, ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])
    url = getattr(cfg, "url", None) if cfg is not None else None
    return (urlparse(url).hostname if url else None), None
