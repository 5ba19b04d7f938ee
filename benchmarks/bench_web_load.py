"""The search server under load from a bounded loopback client: latency, errors and peak memory, with the
server's limits off ("before": one worker, no size or pixel limit, like the former global lock) and on
("after": `ServerLimits()` defaults), in one run.

Each configuration starts the server in its own subprocess on 127.0.0.1 (so its peak RSS, VmHWM, is its
own), over a gallery of small PNGs indexed with a tiny CLIP built from a config. Then CLIENTS threads send
REQUESTS each, mixed: half text-only searches, half image searches (an uploaded gallery image, methods
image / sum / phi). While they run, OVERSIZED hostile requests go in at once: PNGs of 12000×12000 pixels
(a few KiB each, 144 megapixels decoded) and one 40 MiB JSON body. Prints one line per configuration and
the after/before ratios:

    bench_web_load before: text p50 ... p95 ... | image p50 ... p95 ... | errors 0/200 | oversized ... | peak ...

Usage: python benchmarks/bench_web_load.py [--clients 8] [--requests 25] [--oversized 3] [--images 64]
Loopback only; every loop is bounded (clients × requests); the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CAPTIONS = ["make the circle green", "is red and has two squares", "turn the star into a triangle",
            "change the background to black", "a small blue square at the top left"]


def _build(root: Path, images: int) -> Path:
    """A tiny CLIP, a gallery of random PNGs and its index under `root`; returns the index folder."""
    import numpy as np
    from PIL import Image

    from zscir.models.backbone import Backbone
    from zscir.models.factory import ClipSize, build_clip, save_clip_folder
    from zscir.models.tokenizer import train_clip_tokenizer
    from zscir.retrieval.indexer import index_folder

    corpus = CAPTIONS + ["a photo of $ that is blue", "a photo of a red circle on a white background"]
    tokenizer = train_clip_tokenizer(corpus * 8, vocab_size=600, model_max_length=24)
    size = ClipSize(projection_dim=64, text_hidden=64, text_layers=2, text_heads=2, context_length=24,
                    vision_hidden=64, vision_layers=2, vision_heads=2, image_size=64, patch_size=16)
    save_clip_folder(build_clip(tokenizer, size, seed=0), tokenizer, root / "clip", size)
    rng = np.random.default_rng(0)
    (root / "gallery").mkdir()
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(root / "gallery" / f"{i:04d}.png")
    index_folder(root / "gallery", Backbone.load(str(root / "clip")), root / "index", progress=False)
    return root / "index"


def _serve(root: str, config: str) -> None:
    """Subprocess entry: serve the index with the configuration's limits until stdin closes."""
    import torch

    from zscir.models.backbone import Backbone
    from zscir.models.phi import Phi
    from zscir.retrieval.service import SearchService
    from zscir.web.app import start_server
    from zscir.web.limits import ServerLimits

    torch.manual_seed(0)
    backbone = Backbone.load(str(Path(root) / "clip"))
    phi = Phi(64, 64, 64).eval()  # the ClipSize of _build: projection 64, text hidden 64
    service = SearchService(Path(root) / "index", backbone=backbone, phi=phi)
    unlimited = 1 << 40
    limits = (ServerLimits(max_body_bytes=unlimited, max_upload_bytes=unlimited, max_pixels=unlimited, workers=1,
                           max_pending=1 << 20) if config == "before" else ServerLimits())
    server = start_server(service, port=0, limits=limits)
    print(server.url, flush=True)
    sys.stdin.read()  # the parent closes stdin to stop us
    server.stop()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _oversized_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, "PNG")
    return out.getvalue()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _run(root: Path, config: str, clients: int, requests: int, oversized: int) -> dict:
    import httpx

    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(root), config], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the {config} server did not start")
    gallery = sorted((root / "gallery").glob("*.png"))
    methods = ["image", "sum", "phi"]
    latencies: dict[str, list[float]] = {"text": [], "image": []}
    errors: list[str] = []
    hostile: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=600) as c:
            for _ in range(requests):
                kind = "text" if rng.random() < 0.5 else "image"
                start = time.perf_counter()
                try:
                    if kind == "text":
                        answer = c.post("/api/search", json={"text": rng.choice(CAPTIONS), "method": "text",
                                                             "k": 10})
                    else:
                        ref = rng.choice(gallery)
                        answer = c.post("/api/search", files={"image": (ref.name, ref.read_bytes(), "image/png")},
                                        data={"text": rng.choice(CAPTIONS), "method": rng.choice(methods),
                                              "k": "10"})
                    error = None if answer.status_code == 200 else f"{answer.status_code} {answer.text[:80]}"
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    latencies[kind].append(elapsed)
                    if error is not None:
                        errors.append(error)

    def attacker(what: str, send) -> None:
        start = time.perf_counter()
        try:
            status = send().status_code
        except httpx.HTTPError as exc:  # the server may close the connection on an unread body
            status = type(exc).__name__
        with lock:
            hostile.append((what, status, time.perf_counter() - start))

    bomb = _oversized_png()
    big_body = json.dumps({"image": base64.b64encode(b"\0" * (30 << 20)).decode(), "method": "image"}).encode()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads += [threading.Thread(target=attacker, args=("12000x12000 png", lambda: httpx.post(
        f"{url}/api/search", files={"image": ("bomb.png", bomb, "image/png")}, data={"method": "image"},
        timeout=300))) for _ in range(oversized)]
    threads.append(threading.Thread(target=attacker, args=("40 MiB json", lambda: httpx.post(
        f"{url}/api/search", content=big_body, headers={"content-type": "application/json"}, timeout=300))))
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    peak = _peak_rss_mib(proc.pid)
    proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return {"config": config, "latencies": latencies, "errors": errors, "hostile": hostile, "peak": peak,
            "wall": wall, "total": clients * requests}


def _line(r: dict) -> str:
    lat = r["latencies"]
    hostile = ", ".join(f"{what}→{status} {secs:.1f}s" for what, status, secs in sorted(r["hostile"], key=str))
    ms = {kind: (statistics.median(v) * 1e3, _percentile(v, 0.95) * 1e3) for kind, v in lat.items()}
    return (f"bench_web_load {r['config']}: text p50 {ms['text'][0]:.0f} ms p95 {ms['text'][1]:.0f} ms | "
            f"image p50 {ms['image'][0]:.0f} ms p95 {ms['image'][1]:.0f} ms | "
            f"errors {len(r['errors'])}/{r['total']} | "
            f"wall {r['wall']:.1f}s | peak RSS {r['peak']:.0f} MiB | hostile: {hostile}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        return _serve(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--oversized", type=int, default=3, help="12000×12000 PNG uploads sent during the load")
    parser.add_argument("--images", type=int, default=64, help="gallery size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zscir-bench-web-") as tmp:
        root = Path(tmp)
        _build(root, args.images)
        results = [_run(root, config, args.clients, args.requests, args.oversized) for config in ("before", "after")]
    for r in results:
        print(_line(r))
        for error in sorted(set(r["errors"]))[:5]:
            print(f"    error: {error}")
    before, after = results
    ratio = {kind: _percentile(before["latencies"][kind], 0.95) / _percentile(after["latencies"][kind], 0.95)
             for kind in ("text", "image")}
    print(f"bench_web_load ratio before/after: text p95 {ratio['text']:.1f}x, image p95 {ratio['image']:.1f}x, "
          f"peak RSS {before['peak'] / after['peak']:.1f}x")


if __name__ == "__main__":
    main()
