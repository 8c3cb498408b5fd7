"""Helpers shared by the extraction tests."""

from __future__ import annotations

from clipcache import FeatureStore


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
