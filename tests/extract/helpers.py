"""Helpers shared by the extraction tests."""

from __future__ import annotations

import contextlib

import pytest

from clipcache import FeatureStore
from clipcache.extract import precision


def interrupt_append(monkeypatch, at: int) -> None:
    """Make call number ``at`` of ``FeatureStore.append`` raise KeyboardInterrupt (an interrupt between batches).

    ``monkeypatch.undo()`` (or the end of the test) restores the real method.
    """
    real_append, calls = FeatureStore.append, [0]

    def append(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            raise KeyboardInterrupt
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "append", append)


def interrupted_extract(path, config, options, at: int = 2) -> None:
    """Run ``extract`` and interrupt it at append number ``at`` (``at - 1`` batches committed).

    The interrupt is patched in for this run alone: the test's other patches stay.
    """
    from clipcache.extract.loop import extract

    with pytest.MonkeyPatch.context() as patch:
        interrupt_append(patch, at=at)
        with pytest.raises(KeyboardInterrupt):
            extract(path, config, options)


def snapshot(path) -> dict:
    """Everything a store holds about its rows, for exact comparison."""
    out = {}
    with FeatureStore(path) as store:
        out["classes"] = store.classes
        for split in store.splits:
            out[split] = {
                "ids": list(store.ids(split)),
                "paths": list(store.paths(split)),
                "labels": store.labels(split).tolist(),
                "views": store.views(split).tolist(),
                "skipped": store.skipped(split),
                "complete": store.is_complete(split),
            }
            for name in store.split_feature_sets(split):
                out[split][name] = store.features(split, name).tobytes()
    return out


@contextlib.contextmanager
def simulated_gpu():
    """Within the block, the CPU takes the GPU path of the precision rules: reduced precisions apply on ``cpu``.

    Resolution, provenance and autocast behave as they do on a cuda device
    (``clipcache.extract.precision.AUTOCAST_DEVICE`` is ``"cpu"``), and autocast
    runs on the CPU, so a store records bf16 where a GPU run would, without CUDA.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "AUTOCAST_DEVICE", "cpu")
        yield
