"""Fixtures of the report tests: a synthetic store whose paths point at real image files, and its inputs."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipcache import FeatureStore
from clipcache.feature_store.schema import METADATA_EXTRACT

D = 16


class Node:
    """One element of a parsed page: tag, attributes, children and text."""

    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        """All text below this element, whitespace collapsed."""
        out = list(self.parts)
        for child in self.children:
            out.append(child.text)
        return " ".join(" ".join(out).split())

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def iter(self, tag: str | None = None, css: str | None = None):
        """Descendants with the tag and/or class, in document order."""
        for child in self.children:
            if (tag is None or child.tag == tag) and (css is None or css in child.classes):
                yield child
            yield from child.iter(tag, css)

    def find(self, tag: str | None = None, css: str | None = None, **attrs) -> Node | None:
        for node in self.iter(tag, css):
            if all(node.attrs.get(k) == v for k, v in attrs.items()):
                return node
        return None


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Parser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.parts.append(data)


def parse(path_or_text) -> Node:
    """Parse an HTML page (a path or its text) with the standard library's html.parser."""
    text = Path(path_or_text).read_text(encoding="utf-8") if isinstance(path_or_text, Path) else path_or_text
    parser = _Parser()
    parser.feed(text)
    return parser.root


def table_rows(table: Node) -> list[list[Node]]:
    """The ``<td>``/``<th>`` cells of each body row of a table."""
    body = table.find("tbody")
    return [[c for c in row.children if c.tag in ("td", "th")] for row in body.children if row.tag == "tr"]


def _image(rng: np.random.Generator, colour: np.ndarray, size: int, noise: float) -> Image.Image:
    pixels = colour[None, None, :] + noise * rng.normal(size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image_store(
    tmp_path: Path,
    *,
    n_classes: int = 5,
    per_class: dict | None = None,
    d: int = D,
    image_size: int = 32,
    noise: float = 30.0,
    spread: float = 0.8,
    seed: int = 0,
    name: str = "store.h5",
) -> tuple[Path, Path]:
    """An ImageFolder tree of JPEGs and a store of clustered features whose paths are its files.

    Returns
    -------
    store_path, image_root
    """
    per_class = per_class or {"train": 12, "val": 3, "test": 8}
    rng = np.random.default_rng(seed)
    root = tmp_path / f"{Path(name).stem}-images"
    centres = rng.normal(size=(n_classes, d))
    colours = rng.uniform(30, 225, size=(n_classes, 3))
    path = tmp_path / name
    with FeatureStore(path, "w") as store:
        store.set_classes([f"class{i:03d}" for i in range(n_classes)])
        store.add_feature_set("clip", d, provenance={"backbone": "open_clip", "model": "synthetic", "pretrained": "none",
                                                     "dataset": str(root)})
        for split, n in per_class.items():
            y = np.repeat(np.arange(n_classes), n)
            x = centres[y] + spread * rng.normal(size=(len(y), d))
            x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
            keys = []
            for c, i in zip(y.tolist(), np.tile(np.arange(n), n_classes).tolist(), strict=True):
                key = f"{split}/class{c:03d}/{i:04d}.jpg"
                (root / key).parent.mkdir(parents=True, exist_ok=True)
                _image(rng, colours[c], image_size, noise).save(root / key, quality=90)
                keys.append(key)
            store.create_split(split, ["clip"])
            store.append(split, ids=keys, paths=keys, labels=y, features={"clip": x})
            store.mark_complete(split)
        store.set_metadata(METADATA_EXTRACT, {"source": str(root), "max_per_class": None, "seed": 0})
    return path, root


def write_evaluation(store: Path, out: Path, *, methods=("ncm", "gda"), shots=(1, 4), seeds=(1, 2)) -> dict:
    """Run the protocol on ``store`` and write its JSON to ``out``; return the JSON document."""
    from clipcache.evaluation import run_evaluation

    report = run_evaluation(store, list(methods), list(shots), list(seeds))
    report.write_json(out)
    return json.loads(out.read_text())


@pytest.fixture
def image_store(tmp_path) -> tuple[Path, Path]:
    """A 5-class store (train 12, val 3, test 8 per class, d=16) whose paths are real JPEG files."""
    return write_image_store(tmp_path)


@pytest.fixture
def evaluation(image_store, tmp_path) -> tuple[Path, dict]:
    """The evaluation JSON of ``image_store`` (ncm and gda, 1 and 4 shots, seeds 1 and 2): (path, document)."""
    out = tmp_path / "eval.json"
    return out, write_evaluation(image_store[0], out)
