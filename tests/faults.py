"""Run a clipcache command in a child process, and kill it or fail its writes at a named point.

A fault names a function by its dotted path (``"os.replace"``,
``"clipcache.feature_store.store.FeatureStore.create_split"``,
``"h5py.Group.create_dataset"``), which call of it to act on (1 for the first),
whether to act ``"before"`` or ``"after"`` that call, and the action:

- ``"kill"``: the child SIGKILLs itself, as a crash or ``kill -9`` would;
- ``"enospc"``: the call raises ``OSError(ENOSPC)``, as a full disk would
  (``"after"`` lets the call run first, so its effect is on disk).

The child is ``python -m tests.faults ARGS...``: it reads the fault from the
environment, patches the function, and runs ``clipcache.cli.main(ARGS)``.

Examples
--------
>>> result = run_cli(["info", "s.h5"], Fault("os.replace", call=1, when="before"))  # doctest: +SKIP
>>> result.returncode == -signal.SIGKILL                                          # doctest: +SKIP
"""

from __future__ import annotations

import errno
import functools
import importlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["ENV", "Fault", "run_cli"]

ENV = "CLIPCACHE_TEST_FAULT"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Fault:
    """Where and how the child fails."""

    target: str
    call: int = 1
    when: str = "before"
    action: str = "kill"


def run_cli(args, fault: Fault | None = None, *, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``clipcache ARGS`` in a child process with ``fault`` installed; return the finished process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop(ENV, None)
    if fault is not None:
        env[ENV] = json.dumps(asdict(fault))
    return subprocess.run(
        [sys.executable, "-m", "tests.faults", *[str(a) for a in args]],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _resolve(target: str):
    """``(owner, attribute name)`` of a dotted path: the longest importable module, then attributes."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:-1]:
            owner = getattr(owner, name)
        if not hasattr(owner, parts[-1]):
            raise AttributeError(f"{target}: {owner!r} has no attribute {parts[-1]!r}")
        return owner, parts[-1]
    raise ImportError(f"{target}: no importable module in the path")


def _act(action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    else:
        raise ValueError(f"unknown fault action {action!r}")


def install(fault: Fault) -> None:
    """Wrap the target function so that its ``fault.call``-th call triggers ``fault.action``."""
    if fault.when not in ("before", "after") or fault.call < 1:
        raise ValueError(f"bad fault {fault}")
    owner, name = _resolve(fault.target)
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == fault.call and fault.when == "before":
            _act(fault.action)
        result = original(*args, **kwargs)
        if calls == fault.call and fault.when == "after":
            _act(fault.action)
        return result

    if isinstance(owner, type) and isinstance(owner.__dict__.get(name), (staticmethod, classmethod)):
        wrapper = type(owner.__dict__[name])(wrapper)
    setattr(owner, name, wrapper)


def _main(argv: list[str]) -> None:
    spec = os.environ.get(ENV)
    if spec:
        install(Fault(**json.loads(spec)))
    from clipcache.cli import main

    main(argv)


if __name__ == "__main__":
    _main(sys.argv[1:])
