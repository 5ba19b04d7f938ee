"""Download throughput, concurrent vs sequential, against a local server with a per-request delay.

Both runs fetch the same N small JPEGs from a threaded http.server on 127.0.0.1 that sleeps
DELAY seconds before each answer (a stand-in for a slow CDN), through the full path of
`zscir.data.download.download_images` (HTTP, image check, atomic write, report). Prints one line:

    bench_download n=48 delay=200ms sequential 9.9s (4.8 img/s) workers=16 0.8s (60 img/s) ratio 12.4x

Usage: python benchmarks/bench_download.py [--n 48] [--delay 0.2] [--workers 16]
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from zscir.data.download import DownloadItem, download_images


def _jpeg(seed: int, size: int = 64) -> bytes:
    im = Image.frombytes("RGB", (size, size), random.Random(seed).randbytes(size * size * 3))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops SYNs under 16 workers (1 s retransmit stalls)


def _serve(images: list[bytes], delay: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            time.sleep(delay)
            body = images[int(self.path.rsplit("/", 1)[-1].split(".")[0])]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _timed(items: list[DownloadItem], workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = download_images(items, out, workers=workers, timeout=10, retries=0, progress=False)
        elapsed = time.perf_counter() - t0
        assert report["downloaded"] == len(items), report
        assert len(list(Path(out).glob("*.jpg"))) == len(items)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="images to fetch per run")
    ap.add_argument("--delay", type=float, default=0.2, help="server delay per request, seconds")
    ap.add_argument("--workers", type=int, default=16, help="threads of the concurrent run")
    args = ap.parse_args()

    images = [_jpeg(i) for i in range(args.n)]
    httpd = _serve(images, args.delay)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    items = [DownloadItem(f"B{i:08d}", [f"{base}/{i}.jpg"], ["dress"]) for i in range(args.n)]
    try:
        seq = _timed(items, 1)
        par = _timed(items, args.workers)
    finally:
        httpd.shutdown()
        httpd.server_close()
    print(
        f"bench_download n={args.n} delay={args.delay * 1000:.0f}ms "
        f"sequential {seq:.2f}s ({args.n / seq:.1f} img/s) "
        f"workers={args.workers} {par:.2f}s ({args.n / par:.1f} img/s) ratio {seq / par:.1f}x"
    )


if __name__ == "__main__":
    main()
