"""The registry of element encodings: one writer of the encoding attributes, a reader per version."""

from pathlib import Path

import h5py
import pytest

from clipcache import StoreFormatError, StoreVersionError
from clipcache.feature_store import schema
from clipcache.feature_store.elements import REGISTRY
from clipcache.feature_store.registry import Encoding, Registry

ROOT = Path(__file__).resolve().parents[2]


def _demo() -> Encoding:
    """An element type at version 2 that still reads version 1."""
    def write(group, value):
        group.attrs["value"] = value
        return value

    return Encoding("demo", 2, write=write, readers={1: lambda g, p: ("v1", int(g.attrs["value"])),
                                                     2: lambda g, p: ("v2", int(g.attrs["value"]))})


def test_this_release_writes_version_1_of_every_element():
    assert REGISTRY.versions() == {"split": 1, "feature-set": 1, "text-embeddings": 1, "string-column": 1}
    assert set(REGISTRY) == {schema.SPLIT, schema.FEATURE_SET, schema.TEXT_EMBEDDINGS, schema.STRING_COLUMN}


def test_create_marks_the_newest_version_and_open_dispatches_on_the_version_found(tmp_path):
    demo = _demo()
    with h5py.File(tmp_path / "d.h5", "w") as f:
        assert demo.create(f, "new", 5) == 5
        assert (f["new"].attrs["encoding_type"], f["new"].attrs["encoding_version"]) == ("demo", 2)
        assert demo.open(tmp_path, f["new"]) == ("v2", 5)
        f["new"].attrs["encoding_version"] = 1
        assert demo.open(tmp_path, f["new"]) == ("v1", 5)
        f["new"].attrs["encoding_version"] = 3
        with pytest.raises(StoreVersionError, match="/new is a 'demo' element of encoding version 3, but this clipcache reads versions 1 to 2; upgrade"):
            demo.open(tmp_path, f["new"])
        f.create_group("other").attrs["encoding_type"] = "split"
        with pytest.raises(StoreFormatError, match="/other is not a 'demo' element \\(found 'split'\\)"):
            demo.open(tmp_path, f["other"])


def test_an_encoding_must_read_what_it_writes_and_appear_once():
    with pytest.raises(TypeError, match="writes version 2 but cannot read it"):
        Encoding("demo", 2, write=print, readers={1: print})
    with pytest.raises(TypeError, match="'demo' is given twice"):
        Registry([_demo(), _demo()])
    with pytest.raises(TypeError):
        REGISTRY["demo"] = _demo()  # the table is immutable


def test_encoding_attributes_are_written_in_one_place():
    writers = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "clipcache").rglob("*.py"))
               if '"encoding_version"] =' in p.read_text() or "encoding_version=" in p.read_text()]
    assert writers == ["clipcache/feature_store/registry.py"]


def test_the_format_spec_lists_every_encoding_and_shared_metadata_key():
    spec = (ROOT / "docs" / "file-format.md").read_text()
    for kind, version in REGISTRY.versions().items():
        assert f"`{kind}` {version}" in spec
    for key in (schema.METADATA_EXTRACT, schema.METADATA_SHARD, schema.METADATA_SUPPORT_SETS):
        assert f"#### `{key}`" in spec
