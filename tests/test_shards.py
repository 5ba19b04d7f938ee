"""Sharded image encoding and OTI: 2 CPU processes under `accelerate launch` give what 1 process gives, and resume.

The launched run executes this file itself (see `_worker`): the feature cache, `zscir index`,
`zscir evaluate` and `zscir invert` (SEARLE OTI) each under the 2-process group. Before it, this
process replays killed 2-process runs (feature cache: rank 1 dies after its first chunk; OTI: a run
that left 2 of 7 token chunks); the launched rerun must redo only the chunks that were not written,
and every result must be bit-identical to a one-process run in this test process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.retrieval.shards import ProcessGroup

NUM_IMAGES = 13  # + 1 corrupt file: 7 chunks of 2, shared unevenly by 2 processes
CHUNK = 2


def test_share_is_round_robin_over_the_agreed_list():
    assert ProcessGroup(1, 3).share(list(range(8))) == [1, 4, 7]
    assert ProcessGroup(0, 1).share([5, 6]) == [5, 6]


def test_the_process_group_is_destroyed_at_exit_once(monkeypatch):
    """A launched process tears its group down before Python finalises (a gloo thread aborts it otherwise)."""
    import atexit

    import torch._dynamo  # noqa: F401  (the hook imports it; its own exit hooks are not this test's)
    import torch.distributed as dist

    from zscir.retrieval import shards

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    shards.tear_down_process_group_at_exit.cache_clear()
    shards.tear_down_process_group_at_exit()
    shards.tear_down_process_group_at_exit()  # the commands call it each time; it registers once
    assert registered == [shards._destroy_process_group]
    shards.tear_down_process_group_at_exit.cache_clear()

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()
    registered[0]()
    assert not dist.is_initialized()
    registered[0]()  # nothing left to destroy: a no-op


def _images(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for i in range(NUM_IMAGES):
        path = folder / f"im{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)).save(path)
        images[path.stem] = path
    (folder / "im99.png").write_bytes(b"not an image")
    images["im99"] = folder / "im99.png"
    return images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NoWait:
    """Stands in for accelerate's state when one test process plays one rank of a group."""

    def wait_for_everyone(self):
        pass


def _launch(tmp_path: Path, clip_dir: Path) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(_free_port()), __file__, str(tmp_path), str(clip_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


OTI_STEPS = "3"
CONCEPTS = {"circle": ["a red circle on a white background", "a small blue circle at the top left"],
            "square": ["a small blue square", "turn the red square into a triangle"],
            "star": ["move the star to the middle"]}


def _invert_args(tmp: Path, clip_dir, out: str) -> list[str]:
    """`zscir invert` of the good photos with the phrase loss (tiny recipe), tokens into tmp / out."""
    return ["invert", "--backbone", str(clip_dir), "--images", str(tmp / "oti-photos"), "--output-dir", str(tmp / out),
            "--concepts", str(tmp / "concepts.txt"), "--phrases", str(tmp / "phrases.json"), "--top-k", "2",
            "--steps", OTI_STEPS, "--batch-size", str(CHUNK), "--chunk-size", str(CHUNK),
            "--cache-dir", str(tmp / f"{out}-cache")]


def _chunks(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("chunk-*.safetensors"))


def test_two_processes_equal_one_and_a_killed_run_redoes_only_its_missing_chunks(tmp_path, tiny_clip_dir):
    from test_evaluate import make_cirr

    from zscir.cli import main
    from zscir.models.backbone import Backbone
    from zscir.retrieval.features import FeatureCache

    images = _images(tmp_path / "photos")
    make_cirr(tmp_path / "cirr")
    (tmp_path / "oti-photos").mkdir()
    for name, path in images.items():
        if name != "im99":  # OTI refuses images that do not encode
            (tmp_path / "oti-photos" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n")
    (tmp_path / "phrases.json").write_text(json.dumps(CONCEPTS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the launched processes run one thread each (OMP_NUM_THREADS=1)
    try:
        backbone = Backbone.load(str(tiny_clip_dir))
        single = FeatureCache(tmp_path / "cache-1", chunk_size=CHUNK, progress=False).image_features(
            backbone, images, batch_size=CHUNK)
        common = ["--backbone", str(tiny_clip_dir), "--batch-size", str(CHUNK)]
        assert main(["index", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "index-1"),
                     "--chunk-size", str(CHUNK), *common]) == 0
        assert main(["evaluate", "--dataset", "cirr", "--root", str(tmp_path / "cirr"), "--method", "sum",
                     "--cache-dir", str(tmp_path / "eval-cache-1"), "--out", str(tmp_path / "eval-1"), *common]) == 0
        assert main(_invert_args(tmp_path, tiny_clip_dir, "tok-1")) == 0
    finally:
        torch.set_num_threads(threads)
    assert set(single.failed) == {"im99"}

    # a killed sharded run, replayed in this process: rank 0 finished its chunks (0, 2, 4, 6), rank 1 died
    # after writing chunk 1 (its 3 and 5 are missing). Both scan an empty cache, as they would side by side.
    class Interrupted(Exception):
        pass

    torch.set_num_threads(1)
    try:
        FeatureCache(tmp_path / "cache-r0", chunk_size=CHUNK, progress=False,
                     group=ProcessGroup(0, 2, _NoWait())).image_features(backbone, images, batch_size=CHUNK)
        encode, calls = backbone.encode_pixels, []

        def dying(pixels):
            calls.append(1)
            if len(calls) > 1:
                raise Interrupted
            return encode(pixels)

        backbone.encode_pixels = dying
        with pytest.raises(Interrupted):
            FeatureCache(tmp_path / "cache-2", chunk_size=CHUNK, progress=False,
                         group=ProcessGroup(1, 2, _NoWait())).image_features(backbone, images, batch_size=CHUNK)
    finally:
        torch.set_num_threads(threads)
    for path in (tmp_path / "cache-r0").rglob("chunk-*.safetensors"):  # rank 0's files, in the shared cache
        path.rename(next((tmp_path / "cache-2").rglob("chunk-*.safetensors")).parent / path.name)
    assert [int(n.split("-")[2][:5]) for n in _chunks(tmp_path / "cache-2")] == [0, 1, 2, 4, 6]

    # a killed sharded OTI run left chunks 1 and 4 of 7 (and its meta / phrases): the rerun inverts the other 5
    one_tokens = sorted((tmp_path / "tok-1").glob("tokens-*.safetensors"))
    assert len(one_tokens) == 7
    (tmp_path / "tok-2").mkdir()
    for path in [tmp_path / "tok-1" / "meta.json", tmp_path / "tok-1" / "phrases.json", one_tokens[1], one_tokens[4]]:
        (tmp_path / "tok-2" / path.name).write_bytes(path.read_bytes())
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tok-2").glob("tokens-*.safetensors")}

    done = _launch(tmp_path, tiny_clip_dir)
    assert done.returncode == 0, done.stderr[-4000:]
    report = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # the rerun shares out the missing chunks 3 and 5 only: one each, 2 images each
    assert [r["encoded"] for r in report] == [2, 2]
    for rank in range(2):  # the group's teardown ended gloo's threads in both processes
        threads = json.loads((tmp_path / f"threads{rank}.json").read_text())
        assert "pt_gloo_runloop" in threads["before"], threads
        assert not [t for t in threads["after"] if "gloo" in t], threads
    from safetensors.torch import load_file

    merged = load_file(str(tmp_path / "merged.safetensors"))["features"]
    assert torch.equal(merged, single.features)  # bit-identical to one process
    assert report[0]["failed"] == ["im99"] and report[1]["failed"] == ["im99"]  # reason merged from the chunk

    # zscir index: same ids and the same vectors bit for bit
    for name in ("ids.json", "vectors.safetensors"):
        one = next((tmp_path / "index-1").glob(f"snapshot-*/{name}")).read_bytes()
        two = next((tmp_path / "index-2").glob(f"snapshot-*/{name}")).read_bytes()
        assert one == two, name
    manifest = json.loads((tmp_path / "index-2" / "manifest.json").read_text())
    assert manifest["count"] == NUM_IMAGES and list(manifest["failed"]) == ["im99.png"]
    # zscir evaluate: the main process wrote the same metrics from features both processes encoded
    assert json.loads((tmp_path / "eval-2" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "eval-1" / "metrics.json").read_text())
    assert (tmp_path / "eval-2" / "config.json").is_file()
    # zscir invert: 9 of 13 images inverted, shared as chunks 0, 3, 6 (2 + 2 + 1 images) and 2, 5; the kept
    # chunks untouched; every token file equal to the one-process run's bit for bit (per-image seeds, same batches)
    assert "OTI: 13 images, 9 inverted now by 2 processes (5 + 4), 13 tokens" in done.stdout, done.stdout[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tok-2").glob("tokens-*.safetensors")
            if p.name in kept} == kept
    two_tokens = sorted((tmp_path / "tok-2").glob("tokens-*.safetensors"))
    assert [p.name for p in two_tokens] == [p.name for p in one_tokens]
    for one, two in zip(one_tokens, two_tokens):
        assert one.read_bytes() == two.read_bytes(), one.name


def _worker(folder: str, clip_dir: str) -> None:
    """Under `accelerate launch`: the sharded feature cache (resuming), `zscir index` and `zscir evaluate`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from safetensors.torch import save_file

    from zscir.cli import main
    from zscir.models.backbone import Backbone
    from zscir.retrieval.features import FeatureCache
    from zscir.retrieval.shards import process_group

    tmp = Path(folder)
    group, device = process_group("cpu")
    images = {p.stem: p for p in sorted((tmp / "photos").iterdir())}
    backbone = Backbone.load(clip_dir, device=device)
    cache = FeatureCache(tmp / "cache-2", chunk_size=CHUNK, progress=False, group=group)
    result = cache.image_features(backbone, images, batch_size=CHUNK)
    (tmp / f"rank{group.rank}.json").write_text(json.dumps({"encoded": result.num_encoded,
                                                            "failed": sorted(result.failed)}))
    if group.is_main:
        save_file({"features": result.features}, str(tmp / "merged.safetensors"))
    common = ["--backbone", clip_dir, "--batch-size", str(CHUNK)]
    assert main(["index", "--images", str(tmp / "photos"), "--out", str(tmp / "index-2"),
                 "--chunk-size", str(CHUNK), *common]) == 0
    assert main(["evaluate", "--dataset", "cirr", "--root", str(tmp / "cirr"), "--method", "sum",
                 "--cache-dir", str(tmp / "eval-cache-2"), "--out", str(tmp / "eval-2"), *common]) == 0
    assert main(_invert_args(tmp, clip_dir, "tok-2")) == 0
    # what the exit hook does: after it no gloo thread is left to touch Python while the interpreter finalises
    # (with torch._dynamo imported after the group, by the model loads above, its threads survived it)
    from zscir.retrieval.shards import _destroy_process_group

    before = _thread_names()
    _destroy_process_group()
    (tmp / f"threads{group.rank}.json").write_text(json.dumps({"before": before, "after": _thread_names()}))


def _thread_names() -> list[str]:
    """This process's thread names (Linux): gloo's are `pt_gloo_runloop` and `gloo_tcp_loop`."""
    return sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    _worker(*sys.argv[1:3])
