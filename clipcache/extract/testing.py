"""A tiny randomly initialised open_clip architecture for tests and demos.

The model is available to :func:`clipcache.extract.build_open_clip` and to
``clipcache extract --model clipcache-tiny-vit --pretrained none``. It is built
directly from :func:`tiny_clip_config`; open_clip's global model registry is
never touched.
"""

from __future__ import annotations

__all__ = ["TINY_CLIP_NAME", "tiny_clip_config"]

TINY_CLIP_NAME = "clipcache-tiny-vit"


def tiny_clip_config() -> dict:
    """Return the open_clip model config of ``clipcache-tiny-vit``.

    Returns
    -------
    dict
        A fresh dict (``embed_dim``, ``vision_cfg``, ``text_cfg``) accepted by
        ``open_clip.CLIP(**config)``: 32 px images, 8 px patches, width 64,
        2 layers, embedding dim 32, text context 16 with the standard 49,408
        token vocabulary.
    """
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    }
