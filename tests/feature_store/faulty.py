"""Helpers of the reliability tests (``tests/reliability/test_store_*.py``).

Stores to break, a snapshot of everything a reader sees, a read-only view of a
file (permissions, and a read-only bind mount when running as root, where
permissions do not bind), and small tmpfs mounts for real full-disk runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from clipcache import FeatureStore
from tests.conftest import unit_rows
from tests.faults import run_cli

D, N_CLASSES, K = 16, 4, 5
PROVENANCE = {"backbone": "open_clip", "model": "synthetic", "pretrained": "none"}


def write_pool_store(path: Path, seed: int = 0) -> None:
    """A complete store: an unlabelled ``pool`` (200 rows), a labelled ``test`` (40) and text ``prompts``."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng, N_CLASSES, D)
    with FeatureStore(path, "w") as store:
        store.set_classes([f"class{i}" for i in range(N_CLASSES)])
        store.add_feature_set("clip", D, provenance=PROVENANCE)
        for split, n in (("pool", 200), ("test", 40)):
            y = rng.integers(0, N_CLASSES, n)
            x = centres[y] + 0.5 * rng.normal(size=(n, D)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            ids = [f"{split}-{i:04d}" for i in range(n)]
            store.create_split(split, ["clip"])
            store.append(split, ids=ids, paths=ids, labels=np.full(n, -1) if split == "pool" else y, features={"clip": x})
            store.mark_complete(split)
        index = np.repeat(np.arange(N_CLASSES), 2)
        text = centres[index] + 0.1 * rng.normal(size=(2 * N_CLASSES, D)).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        store.write_text("prompts", text, index, [f"a photo of class{c}" for c in index], provenance=PROVENANCE)


def support_args(path) -> list:
    """The ``clipcache support`` arguments that copy K rows per class of a pool store's ``pool`` into split ``sup``."""
    return ["support", path, "--pool", "pool", "-k", K, "--to-split", "sup"]


def pool_states(folder: Path) -> tuple[Path, dict, dict]:
    """A pool store in ``folder``, its state, and the state of the same store after an uninterrupted ``support`` run."""
    template, done = folder / "pool.h5", folder / "done.h5"
    write_pool_store(template)
    shutil.copyfile(template, done)
    result = run_cli(support_args(done))
    assert result.returncode == 0, result.stderr
    return template, state_of(template), state_of(done)


def state_of(path: Path) -> dict:
    """Everything a read-only reader sees: per split its counts, columns and features; every text set."""
    out: dict = {"splits": {}, "text": {}}
    with FeatureStore(path) as store:
        out["classes"] = store.classes
        for split in store.splits:
            entry = {
                "rows": store.n_rows(split),
                "complete": store.is_complete(split),
                "ids": list(store.ids(split)),
                "labels": store.labels(split).tolist(),
                "views": store.views(split).tolist(),
            }
            for name in store.split_feature_sets(split):
                entry[name] = store.features(split, name).tobytes()
            out["splits"][split] = entry
        for name in store.text_names:
            text = store.text(name)
            out["text"][name] = (text.embeddings.tobytes(), text.prompts)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(path: Path):
    """Yield ``path`` as a reader without write access sees it.

    The file is made 0444 and its folder 0555. As root, which ignores
    permissions, the folder is also bind-mounted read-only and the path inside
    that mount is yielded, so a write would fail with EROFS.
    """
    path = Path(path)
    folder = path.parent
    modes = (path.stat().st_mode, folder.stat().st_mode)
    path.chmod(0o444)
    folder.chmod(0o555)
    view = None
    try:
        if os.geteuid() == 0:
            view = Path(tempfile.mkdtemp(prefix="clipcache-ro-"))
            if _mount("--bind", str(folder), str(view)) and _mount("-o", "remount,bind,ro", str(view)):
                yield view / path.name
                return
            subprocess.run(["umount", str(view)], capture_output=True)
        yield path
    finally:
        if view is not None:
            subprocess.run(["umount", str(view)], capture_output=True)
            shutil.rmtree(view, ignore_errors=True)
        folder.chmod(modes[1])
        path.chmod(modes[0])


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """Mount a tmpfs of ``size`` (e.g. ``"400k"``) on ``folder``, or skip the test when this process cannot."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the simulated ENOSPC tests cover this without it")
    folder.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("mount -t tmpfs failed here; the simulated ENOSPC tests cover this without it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def resize_tmpfs(folder: Path, size: str) -> None:
    """Give a mounted tmpfs a new size (freeing space, as a user would)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)
