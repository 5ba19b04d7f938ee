"""`zscir serve` without arguments after `zscir demo --fast` (issue 16 item 1), through `zscir.cli.main`."""

from __future__ import annotations

import shutil

import pytest


def _world(cache, name, tiny_clip_dir, images: int = 4):
    """The layout `zscir demo` leaves: a CIRR-style dev gallery and the tiny CLIP."""
    import numpy as np
    from PIL import Image

    gallery = cache / name / "data" / "cirr" / "dev"
    gallery.mkdir(parents=True)
    for i in range(images):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            gallery / f"dev-{i}.png")
    shutil.copytree(tiny_clip_dir, cache / name / "synthetic-clip")


@pytest.fixture()
def served(monkeypatch):
    """Run `zscir serve` with the blocking server replaced by a recorder of what it would serve."""
    import zscir.web.app

    calls = []
    monkeypatch.setattr(zscir.web.app, "serve", lambda service, **options: calls.append((service, options)))
    return calls


def test_serve_after_demo_fast_finds_the_fast_world_and_says_it_is_untrained(tmp_path, monkeypatch, capsys,
                                                                                 tiny_clip_dir, served):
    from zscir.cli import main
    from zscir.demo.world_index import FAST_NOTICE

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    _world(tmp_path / "cache", "world-fast", tiny_clip_dir, images=3)
    assert main(["serve", "--port", "0"]) == 0
    [(service, options)] = served
    assert service.describe()["count"] == 3 and options["notice"] == FAST_NOTICE
    assert service.index_dir.name == "world-fast-cirr-dev"
    assert "zscir demo --fast" in capsys.readouterr().out
    assert options["limits"].max_pixels == 40_000_000 and options["limits"].workers == 4


def test_serve_prefers_the_full_world_and_takes_limit_flags(tmp_path, monkeypatch, tiny_clip_dir, served):
    from zscir.cli import main

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    _world(tmp_path / "cache", "world-fast", tiny_clip_dir, images=3)
    _world(tmp_path / "cache", "world", tiny_clip_dir, images=5)
    assert main(["serve", "--max-megapixels", "2", "--max-upload-mb", "1", "--workers", "2"]) == 0
    [(service, options)] = served
    assert service.describe()["count"] == 5 and options["notice"] is None
    limits = options["limits"]
    assert (limits.max_pixels, limits.max_upload_bytes, limits.workers) == (2_000_000, 2**20, 2)


def test_serve_without_any_world_says_what_to_run(tmp_path, monkeypatch, capsys, served):
    from zscir.cli import main

    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path / "cache"))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert "run `zscir demo` first (its fast variant is served too)" in err and len(err.splitlines()) == 1
    assert served == []


def test_serve_after_demo_fast_with_the_shipped_clip_in_the_full_world_folder(tmp_path, monkeypatch, tiny_clip_dir,
                                                                              served):
    """The layout `zscir demo --fast` really leaves: the fast world's gallery in world-fast/, and the shipped
    world CLIP unpacked once into world/synthetic-clip (no full-world gallery)."""
    from zscir.cli import main
    from zscir.demo.world_index import FAST_NOTICE

    cache = tmp_path / "cache"
    monkeypatch.setenv("ZSCIR_CACHE", str(cache))
    _world(cache, "world-fast", tiny_clip_dir, images=3)
    shutil.move(cache / "world-fast" / "synthetic-clip", cache / "world" / "synthetic-clip")
    assert main(["serve", "--port", "0"]) == 0
    [(service, options)] = served
    assert service.describe()["count"] == 3 and options["notice"] == FAST_NOTICE
