"""Finding weights in the local Hugging Face hub cache without touching the network."""

from __future__ import annotations

from clipcache.extract.hub import cached_hub_file


def _cache(root, repo: str, files: list[str], revision: str = "0123abcd"):
    """Lay out ``files`` of ``repo`` as the hub client caches them: refs/main -> snapshots/<revision>/."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_bytes(b"weights")
    return snapshot


def test_cached_hub_file_returns_the_first_cached_name(tmp_path):
    snapshot = _cache(tmp_path, "org/model", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
    names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    assert cached_hub_file("org/model", names, cache_dir=tmp_path) == str(snapshot / "open_clip_model.safetensors")
    assert cached_hub_file("org/model", names[1:], cache_dir=tmp_path) == str(snapshot / "open_clip_pytorch_model.bin")


def test_uncached_file_or_repo_is_none(tmp_path):
    _cache(tmp_path, "org/model", ["config.json"])
    assert cached_hub_file("org/model", ["model.safetensors"], cache_dir=tmp_path) is None
    assert cached_hub_file("org/other", ["config.json"], cache_dir=tmp_path) is None
