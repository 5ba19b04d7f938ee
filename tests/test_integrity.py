"""Integrity of what zscir writes and reads: file modes, stale temp files, strict JSON, the feature-cache key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import stale_temp
from test_evaluate import make_cirr

from zscir.cli import main
from zscir.errors import DataError
from zscir.utils.io import atomic_path, read_json, remove_stale_temps, write_json_atomic


@pytest.fixture()
def umask():
    """Set the process umask for one test, restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path):
    return path.stat().st_mode & 0o777


def test_written_files_get_the_umask_mode(tmp_path, umask):
    umask(0o022)
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "a.json") == 0o644 and _mode(tmp_path / "b.bin") == 0o644
    umask(0o077)
    write_json_atomic(tmp_path / "c.json", {"x": 1})
    assert _mode(tmp_path / "c.json") == 0o600
    umask(0o002)
    write_json_atomic(tmp_path / "d.json", {"x": 1})
    assert _mode(tmp_path / "d.json") == 0o664


def test_cli_outputs_are_readable_by_the_group_under_umask_022(tmp_path, tiny_clip_dir, umask):
    umask(0o022)
    root = make_cirr(tmp_path / "cirr")
    out = tmp_path / "out"
    assert main(["evaluate", "--dataset", "cirr", "--root", str(root), "--method", "image", "--backbone",
                 str(tiny_clip_dir), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    written = [p for p in [*out.rglob("*"), *(tmp_path / "cache").rglob("*")] if p.is_file()]
    assert written and all(_mode(p) == 0o644 for p in written), {p.name: oct(_mode(p)) for p in written}


def test_checkpoints_and_trained_models_get_the_umask_mode(tmp_path, umask):
    from test_training_loop import ToyTask, _config

    from zscir.training.loop import train

    umask(0o022)
    train(ToyTask(), _config(tmp_path, "run", max_steps=2, checkpoint_every=1))
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in written)
    assert all(_mode(p) == 0o644 for p in written), {p.name: oct(_mode(p)) for p in written}


def test_json_with_nan_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"metrics\.loss"):
        write_json_atomic(tmp_path / "m.json", {"metrics": {"loss": float("nan")}})
    with pytest.raises(ValueError, match=r"rows\[1\]"):
        write_json_atomic(tmp_path / "m.json", {"rows": [1.0, float("inf")]})
    assert not (tmp_path / "m.json").exists() and not list(tmp_path.iterdir())  # no temp file left either


def test_read_json_refuses_non_utf8_and_deep_nesting_with_one_line(tmp_path):
    latin = tmp_path / "latin.json"
    latin.write_bytes('[{"caption": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.json: not UTF-8 text \(byte 17"):
        read_json(latin)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"deep\.json: JSON nested deeper than 64 levels"):
        read_json(deep)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": "[not nesting]"}).encode())
    assert read_json(bom) == {"a": "[not nesting]"}  # brackets inside strings do not count


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead = stale_temp(tmp_path / "x.png")
    dead.write_bytes(b"half")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = stale_temp(tmp_path / "x2.png", pid=sleeper.pid)
        live.write_bytes(b"being written")
        mine = tmp_path / f".y.png.{os.getpid()}-x-0badf00d.tmp"  # another host: kept while fresh
        mine.write_bytes(b"")
        old = tmp_path / ".z.png.abcd1234.tmp"  # the older mkstemp form: removed once an hour old
        old.write_bytes(b"")
        os.utime(old, (0, 0))
        fresh_old_form = tmp_path / ".w.png.abcd1234.tmp"
        fresh_old_form.write_bytes(b"")
        keep = tmp_path / "notes.tmp"  # not a zscir temp name
        keep.write_bytes(b"")
        assert remove_stale_temps(tmp_path) == 2
        assert not dead.exists() and not old.exists()
        assert live.exists() and mine.exists() and fresh_old_form.exists() and keep.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temps(tmp_path) == 1 and not live.exists()


def _evaluate(root, cache, out, clip_dir, *extra):
    assert main(["evaluate", "--dataset", "cirr", "--root", str(root), "--method", "image", "--backbone",
                 str(clip_dir), "--cache-dir", str(cache), "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())["metrics"]


@pytest.mark.parametrize("hash_images", [False, True])
def test_images_replaced_in_place_are_reencoded(tmp_path, tiny_clip_dir, hash_images):
    extra = ["--hash-images"] if hash_images else []
    root = make_cirr(tmp_path / "cirr")
    cache = tmp_path / "cache"
    before = _evaluate(root, cache, tmp_path / "a", tiny_clip_dir, *extra)
    records = json.loads((root / "captions" / "cap.rc2.val.json").read_text())
    for r in records:  # each reference becomes a copy of its target: the image method then finds it first
        ref, target = root / "val" / f"{r['reference']}.png", root / "val" / f"{r['target_hard']}.png"
        if ref.exists() and r["reference"] not in {x["target_hard"] for x in records}:
            stat = ref.stat()
            shutil.copyfile(target, ref)
            os.utime(ref, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime restored
    stale = _evaluate(root, cache, tmp_path / "b", tiny_clip_dir, *extra)
    fresh = _evaluate(root, tmp_path / "fresh-cache", tmp_path / "c", tiny_clip_dir, *extra)
    assert stale == fresh
    assert fresh != before  # the replacement changes the metrics, so a stale cache would be caught


def test_content_hash_keeps_the_key_when_only_the_time_changes(tmp_path):
    from PIL import Image

    from zscir.retrieval.features import FeatureCache

    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), "red").save(path)
    images = {"a": path}
    keys = {h: FeatureCache.image_key("fp", images, None, content_hash=h) for h in (False, True)}
    os.utime(path, ns=(1, 10**9))
    assert FeatureCache.image_key("fp", images, None, content_hash=True) == keys[True]
    assert FeatureCache.image_key("fp", images, None) != keys[False]
    Image.new("RGB", (4, 4), "blue").save(path)
    assert FeatureCache.image_key("fp", images, None, content_hash=True) != keys[True]
