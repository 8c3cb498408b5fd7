"""The minimum versions that setup.cfg promises, as pins, and a check that they are what Python imports.

``python .ci/min_versions.py pins`` prints one ``name==version`` line per entry of
``install_requires``: every ``>=`` bound becomes an exact pin, and ``==`` pins stay.
setup.cfg is the one source of truth; the minimum-versions job (``.ci/min-versions``)
installs exactly these pins, so a bound cannot drift away from what is tested.

``python .ci/min_versions.py check`` (run with the job's interpreter) fails unless
every pinned distribution is installed at its pinned version, every module it
provides is imported from that installation (not from a newer copy elsewhere on
``sys.path``), clipcache itself is imported from this checkout, and ``pip check`` reports no broken requirement among the
distributions clipcache depends on, directly or through others.

Standard library and ``packaging`` only; no third-party import happens before the check.
"""

from __future__ import annotations

import configparser
import importlib.metadata as metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
_BOUND = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(>=|==)\s*([0-9][^\s,;]*)\s*$")


def pins(setup_cfg: Path = SETUP_CFG) -> dict[str, str]:
    """Map each install requirement to its lower bound (the version the job installs)."""
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    found = {}
    for line in config["options"]["install_requires"].splitlines():
        if not line.strip():
            continue
        match = _BOUND.match(line)
        if match is None:
            sys.exit(
                f"{setup_cfg}: install_requires entry {line.strip()!r} needs exactly one '>=' or '==' bound "
                "for the minimum-versions job to install and test"
            )
        name, _, version = match.groups()
        found[name] = version
    return found


def _closure(roots: list[str]) -> set[str]:
    """Canonical names of ``roots`` and of every installed distribution they require, recursively."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _import_names(dist_name: str) -> list[str]:
    names = [mod for mod, dists in metadata.packages_distributions().items()
             if canonicalize_name(dist_name) in {canonicalize_name(d) for d in dists} and not mod.startswith("_")]
    return sorted(set(names))


def _origin(module_name: str) -> Path | None:
    """Where ``module_name`` would be imported from, found without importing it."""
    spec = importlib.util.find_spec(module_name)
    if spec is None:
        return None
    if spec.has_location and spec.origin:
        return Path(spec.origin).resolve()
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]).resolve() if locations else None


def check(setup_cfg: Path = SETUP_CFG) -> int:
    """Return 0 when the pinned minimums are installed, imported and consistent; print what is wrong otherwise."""
    problems = []
    for name, version in pins(setup_cfg).items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed")
            continue
        if Version(Version(dist.version).public) != Version(version):
            problems.append(f"{name}: {dist.version} is installed first on sys.path, the minimum is {version}")
            continue
        root = Path(dist.locate_file("")).resolve()
        modules = _import_names(name)
        if not modules:
            problems.append(f"{name}: provides no importable module")
        for module_name in modules:
            origin = _origin(module_name)
            if origin is None or root not in origin.parents:
                problems.append(f"{name}: module {module_name} is imported from {origin}, not from {root}")
        print(f"ok  {name}=={dist.version}  ({', '.join(modules)} from {root})")
    checkout = SETUP_CFG.parent
    origin = _origin("clipcache")
    if origin is None or checkout not in origin.parents:
        problems.append(f"clipcache is imported from {origin}, not from this checkout {checkout}")
    ours = _closure(["clipcache"])
    report = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    for line in report.splitlines():
        subject = canonicalize_name(line.split(" ", 1)[0]) if line.strip() else ""
        if subject in ours:
            problems.append(f"pip check: {line}")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["pins"]:
        for name, version in pins().items():
            print(f"{name}=={version}")
        return 0
    if argv[:1] == ["check"]:
        return check()
    print("usage: python .ci/min_versions.py pins|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
