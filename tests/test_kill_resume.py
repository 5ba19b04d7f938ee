"""kill -9 each long job at a random point of its work, rerun it, and compare with an uninterrupted run.

Each job runs as `python -m zscir.cli ...` in a subprocess that the test SIGKILLs once a randomly chosen
amount of work is on disk (N checkpoints, PNGs or chunks) plus a random few milliseconds, i.e. somewhere
inside the next unit of work. The rerun goes through `zscir.cli.main` in this process; its result must
equal a run that was never interrupted: training weights bit for bit, generated PNGs pixel for pixel,
index and cached features up to float noise of other batch compositions. The kill points come from a
seeded generator (ZSCIR_KILL_SEED, default 0), so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cig import SIZE, sdxl_dir, second_clip_dir  # noqa: F401  (fixtures)
from test_evaluate import make_cirr
from test_rtd import TRIPLETS

from zscir.cli import main

SEED = int(os.environ.get("ZSCIR_KILL_SEED", "0"))


def _rng(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


def _kill_during(argv: list[str], progress, target: int, rng: random.Random, tmp_path: Path,
                 command: list[str] | None = None) -> None:
    """Run `zscir argv` (or `command`) in a subprocess; SIGKILL it once `progress()` reaches `target`, plus a
    random delay."""
    # the same thread count as this process: float reductions then add up in the same order, bit for bit
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "ZSCIR_CACHE": str(tmp_path / "zc")}
    proc = subprocess.Popen(command or [sys.executable, "-m", "zscir.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900  # a loaded CI machine can be very slow
    try:
        while progress() < target:
            if proc.poll() is not None:
                pytest.fail(f"the job ended (code {proc.returncode}) before the kill point: "
                            f"{proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the job did not reach the kill point in 900 s")
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.01))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it was killed: the test tested nothing"


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


def _latest_step(run: Path) -> int:
    """Step of the newest complete checkpoint (older ones are deleted as the run goes)."""
    folder = run / "checkpoints"
    steps = [int(p.name.split("-")[1]) for p in folder.glob("step-*")] if folder.is_dir() else []
    return max(steps, default=0)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.rglob("*.safetensors")):
        out.update({f"{path.relative_to(folder)}:{k}": v for k, v in load_file(str(path)).items()})
    return out


def _assert_same_training(resumed: Path, straight: Path) -> None:
    a, b = _tensors(resumed / "final"), _tensors(straight / "final")
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert json.loads((resumed / "final" / "metrics.json").read_text()) == \
        json.loads((straight / "final" / "metrics.json").read_text())


def _train_args(clip_dir, steps=8):
    return ["--backbone", str(clip_dir), "--batch-size", "4", "--max-steps", str(steps), "--checkpoint-every", "1",
            "--keep-checkpoints", "1", "--no-progress", "--report-to", "none", "--cpu"]


def test_kill_train_phi(tiny_clip_dir, tmp_path):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(["a red circle on a white background", "a small blue square", "a green star",
                                 "two yellow triangles"] * 3))
    argv = ["train-phi", "--corpus", str(corpus), *_train_args(tiny_clip_dir)]
    run = tmp_path / "killed"
    rng = _rng("train-phi")
    _kill_during([*argv, "--output-dir", str(run)], lambda: _latest_step(run), rng.randint(1, 5), rng, tmp_path)
    assert not (run / "final").exists()
    assert main([*argv, "--output-dir", str(run), "--resume"]) == 0
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".tmp-*"))  # the kill's leftovers are gone
    assert main([*argv, "--output-dir", str(tmp_path / "straight")]) == 0
    _assert_same_training(run, tmp_path / "straight")


def test_kill_train_rtd(tiny_clip_dir, tiny_size, tmp_path):
    from zscir.models.phi import Phi, save_pretrained

    torch.manual_seed(0)
    phi = save_pretrained(Phi(tiny_size.projection_dim, tiny_size.text_hidden), tmp_path / "phi")
    triplets = tmp_path / "t.jsonl"
    triplets.write_text("\n".join(json.dumps({"reference_caption": t.reference, "conditioning_caption": t.conditioning,
                                              "target_caption": t.target}) for t in TRIPLETS))
    argv = ["train-rtd", "--triplets", str(triplets), "--phi", str(phi), *_train_args(tiny_clip_dir, steps=6)]
    run = tmp_path / "killed"
    rng = _rng("train-rtd")
    _kill_during([*argv, "--output-dir", str(run)], lambda: _latest_step(run), rng.randint(1, 3), rng, tmp_path)
    assert not (run / "final").exists()
    assert main([*argv, "--output-dir", str(run), "--resume"]) == 0
    assert main([*argv, "--output-dir", str(tmp_path / "straight")]) == 0
    _assert_same_training(run, tmp_path / "straight")


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))}


def test_kill_generate(tiny_clip_dir, second_clip_dir, sdxl_dir, tmp_path):  # noqa: F811
    from zscir.models.backbone import Backbone
    from zscir.models.phi import Phi, save_pretrained

    root = make_cirr(tmp_path / "cirr", n_images=8, n_queries=6)
    for name, clip in (("phi1", tiny_clip_dir), ("phi2", second_clip_dir)):
        b = Backbone.load(str(clip), load_vision=False)
        torch.manual_seed(1)
        save_pretrained(Phi(b.projection_dim, b.hidden_size), tmp_path / name)

    def argv(out):
        return ["generate", "--dataset", "cirr", "--root", str(root), "--split", "val", "--out", str(out),
                "--backbone", str(tiny_clip_dir), "--phi", str(tmp_path / "phi1"), "--backbone-2",
                str(second_clip_dir), "--phi-2", str(tmp_path / "phi2"), "--generator", str(sdxl_dir), "--steps", "3",
                "--size", str(SIZE), "--batch-size", "1", "--dark-threshold", "-1", "--device", "cpu"]

    out = tmp_path / "killed"
    rng = _rng("generate")
    _kill_during(argv(out), lambda: _count(out, "*.png"), rng.randint(1, 4), rng, tmp_path)
    done_before = _count(out, "*.png")
    assert 1 <= done_before < 6
    assert main(argv(out)) == 0
    assert not list(out.glob("*.tmp"))
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["skipped"] == done_before and counts["generated"] == 6 - done_before
    assert main(argv(tmp_path / "straight")) == 0
    a, b = _pixels(out), _pixels(tmp_path / "straight")
    assert len(a) == 6 and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _gallery(folder: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def test_kill_index(tiny_clip_dir, tmp_path):
    from test_search import _assert_same_index

    images = _gallery(tmp_path / "images")

    def argv(out):
        return ["index", "--images", str(images), "--out", str(out), "--backbone", str(tiny_clip_dir),
                "--chunk-size", "1", "--batch-size", "1", "--workers", "1"]

    out = tmp_path / "killed"
    rng = _rng("index")
    _kill_during(argv(out), lambda: _count(out / "chunks", "chunk-*.safetensors"), rng.randint(1, 8), rng, tmp_path)
    assert not (out / "manifest.json").exists()
    assert main(argv(out)) == 0
    assert not list(out.rglob("*.tmp"))
    assert main(argv(tmp_path / "straight")) == 0
    _assert_same_index(out, tmp_path / "straight")


FEATURE_SCRIPT = """
import sys
from pathlib import Path
from zscir.models.backbone import Backbone
from zscir.retrieval.features import FeatureCache
clip, images, cache = sys.argv[1:4]
paths = {p.stem: p for p in sorted(Path(images).glob("*.png"))}
FeatureCache(cache, chunk_size=1, workers=1, progress=False).image_features(Backbone.load(clip), paths, batch_size=1)
"""


def test_kill_feature_caching(tiny_clip_dir, tiny_backbone, tmp_path):
    from zscir.retrieval.features import FeatureCache

    images = _gallery(tmp_path / "images")
    paths = {p.stem: p for p in sorted(images.glob("*.png"))}
    cache = tmp_path / "cache"
    rng = _rng("features")
    target = rng.randint(1, 8)
    _kill_during([], lambda: _count(cache, "images/*/chunk-*.safetensors"), target, rng, tmp_path,
                 command=[sys.executable, "-c", FEATURE_SCRIPT, str(tiny_clip_dir), str(images), str(cache)])
    resumed = FeatureCache(cache, chunk_size=1, workers=1, progress=False).image_features(tiny_backbone, paths,
                                                                                           batch_size=1)
    assert resumed.num_encoded <= len(paths) - target and not resumed.failed  # finished chunks were reused
    assert not list(cache.rglob("*.tmp"))
    fresh = FeatureCache(enabled=False, progress=False).image_features(tiny_backbone, paths, batch_size=1)
    torch.testing.assert_close(resumed.features, fresh.features, atol=1e-5, rtol=1e-5)
