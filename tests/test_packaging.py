"""What pyproject promises to ship exists in the source tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_named_package_data_file_exists():
    # (no tomllib on Python 3.10): the [tool.setuptools.package-data] table is one `pkg = [...]` line per package
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    lines = re.finditer(r"^(\S+)\s*=\s*\[(.*)\]", section, re.M)
    data = {m.group(1): re.findall(r'"([^"]+)"', m.group(2)) for m in lines}
    named = [(package, item) for package, items in data.items() for item in items if "*" not in item]
    assert named  # py.typed at least
    for package, item in named:
        assert (ROOT / "src" / package.replace(".", "/") / item).is_file(), f"{package}: {item}"


def test_py_typed_marks_the_package_as_typed():
    assert (ROOT / "src" / "zscir" / "py.typed").is_file()
