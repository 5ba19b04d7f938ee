"""What pyproject promises to ship exists in the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_named_package_data_file_exists():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    named = [(package, item) for package, items in data.items() for item in items if "*" not in item]
    assert named  # py.typed at least
    for package, item in named:
        assert (ROOT / "src" / package.replace(".", "/") / item).is_file(), f"{package}: {item}"


def test_py_typed_marks_the_package_as_typed():
    assert (ROOT / "src" / "zscir" / "py.typed").is_file()
