"""The FashionIQ downloader against a local HTTP server on 127.0.0.1 (never an outside address)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import stale_temp
from PIL import Image

from zscir.cli import main as cli_main
from zscir.data.download import (
    REPORT_NAME,
    InvalidImageError,
    check_image_bytes,
    collect_items,
    download_fashioniq,
    fetch_image,
    find_url_files,
    parse_url_file,
)
from zscir.errors import DataError

FAST = {"timeout": 0.5, "retries": 2, "backoff": 0.01, "progress": False}


def _image_bytes(fmt: str, seed: int = 0, size: int = 32) -> bytes:
    # Seeded noise so a JPEG is several KB, a cut-off body really is truncated, and bytes are reproducible.
    im = Image.frombytes("RGB", (size, size), random.Random(seed).randbytes(size * size * 3))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


JPEG = _image_bytes("JPEG")
PNG = _image_bytes("PNG", seed=1)
GIF = _image_bytes("GIF", seed=2)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request, client_address):  # a client that timed out and left: expected here
        pass


class _Server:
    """A threaded HTTP server whose paths act out the ways a URL can fail; it counts hits per path."""

    def __init__(self, slow_delay: float = 1.5, image_delay: float = 0.0):
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.slow_delay = slow_delay
        self.image_delay = image_delay
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, code, body=b"", ctype="image/jpeg", length=None, close=False):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                if close:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if close:
                    self.close_connection = True

            def do_GET(self):
                path = self.path
                with server.lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                    n = server.hits[path]
                if path.startswith("/img/"):  # good JPEG, optionally slow (interrupt test)
                    time.sleep(server.image_delay)
                    seed = int(path.split("/")[-1].split(".")[0])
                    body = _image_bytes("JPEG", seed=seed)
                    self._send(200, body, length=len(body))
                elif path == "/png":
                    self._send(200, PNG, "image/png", len(PNG))
                elif path == "/gif":
                    self._send(200, GIF, "image/gif", len(GIF))
                elif path in ("/404", "/410"):
                    self._send(int(path[1:]), b"gone", "text/plain", 4)
                elif path == "/flaky":  # 500 first, then the image
                    if n == 1:
                        self._send(500, b"oops", "text/plain", 4)
                    else:
                        self._send(200, JPEG, length=len(JPEG))
                elif path == "/always500":
                    self._send(503, b"busy", "text/plain", 4)
                elif path == "/slow":  # slower than the client timeout
                    time.sleep(server.slow_delay)
                    self._send(200, JPEG, length=len(JPEG))
                elif path == "/truncated":  # announces the full length, sends half, hangs up
                    self._send(200, JPEG[: len(JPEG) // 2], length=len(JPEG), close=True)
                elif path == "/truncated-nolength":  # no Content-Length: only decoding can tell
                    self._send(200, JPEG[: len(JPEG) // 2], close=True)
                elif path == "/html":
                    body = b"<html><body>Robot check</body></html>"
                    self._send(200, body, "text/html", len(body))
                elif path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/png")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(404, b"none", "text/plain", 4)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    srv = _Server()
    yield srv
    srv.close()


def _write_json_list(path: Path, pairs):
    path.write_text(json.dumps([{"asin": a, "url": u} for a, u in pairs]))


def _assert_all_valid(folder: Path):
    for p in folder.iterdir():
        assert not p.name.endswith(".tmp"), f"leftover temp file {p.name}"
        if p.suffix in (".jpg", ".png"):
            check_image_bytes(p.read_bytes())


# ----------------------------------------------------------------------------- pure parts


def test_parse_both_formats_and_merge_duplicates(tmp_path):
    _write_json_list(tmp_path / "dress.json", [("A1", "http://x/a"), ("B2", "http://x/b")])
    (tmp_path / "asin2url.shirt.txt").write_text("B2 \t http://x/b\n\nC3\thttp://x/c\nA1\thttp://y/a2\n")
    (tmp_path / REPORT_NAME).write_text("{}")  # a report is never taken for a category
    assert parse_url_file(tmp_path / "asin2url.shirt.txt") == [
        ("B2", "http://x/b"), ("C3", "http://x/c"), ("A1", "http://y/a2")]
    files = find_url_files(tmp_path)
    assert list(files) == ["dress", "shirt"]
    items = {it.asin: it for it in collect_items(files)}
    assert sorted(items) == ["A1", "B2", "C3"]
    assert items["A1"].urls == ["http://x/a", "http://y/a2"]  # a second URL is a fallback
    assert items["B2"].urls == ["http://x/b"] and items["B2"].categories == ["dress", "shirt"]
    assert list(find_url_files(tmp_path, ["shirt"])) == ["shirt"]
    with pytest.raises(DataError, match="toptee"):
        find_url_files(tmp_path, ["toptee"])


def test_malformed_lists_name_file_and_record(tmp_path):
    _write_json_list(tmp_path / "dress.json", [("A1", "http://x/a"), ("../etc", "http://x/b")])
    with pytest.raises(DataError, match=r"dress.json: record 1: field 'asin'"):
        parse_url_file(tmp_path / "dress.json")
    (tmp_path / "asin2url.toptee.txt").write_text("A1\thttp://x/a\nonly-one-field\n")
    with pytest.raises(DataError, match="line 2"):
        parse_url_file(tmp_path / "asin2url.toptee.txt")


def test_check_image_bytes():
    assert check_image_bytes(JPEG) == "JPEG" and check_image_bytes(PNG) == "PNG"
    with pytest.raises(InvalidImageError, match="truncated"):
        check_image_bytes(JPEG[: len(JPEG) // 2])
    with pytest.raises(InvalidImageError, match="truncated"):
        check_image_bytes(JPEG[:-10])  # verify() alone accepts this one; only a real load() sees it
    with pytest.raises(InvalidImageError, match="not an image"):
        check_image_bytes(b"<html></html>")
    with pytest.raises(InvalidImageError):
        check_image_bytes(PNG[:-20])  # cut inside the last chunk


# ----------------------------------------------------------------------------- HTTP behaviour


def test_fetch_retries_and_final_errors(server):
    body, reason, n = fetch_image(server.base + "/flaky", timeout=0.5, retries=2, backoff=0.01)
    assert body == JPEG and reason is None and n == 2 and server.hits["/flaky"] == 2
    body, reason, n = fetch_image(server.base + "/404", timeout=0.5, retries=3, backoff=0.01)
    assert body is None and reason == "http 404" and n == 1 and server.hits["/404"] == 1  # no retry
    body, reason, n = fetch_image(server.base + "/410", timeout=0.5, retries=3, backoff=0.01)
    assert reason == "http 410" and server.hits["/410"] == 1
    body, reason, n = fetch_image(server.base + "/always500", timeout=0.5, retries=2, backoff=0.01)
    assert reason == "http 503" and n == 3 and server.hits["/always500"] == 3
    t0 = time.monotonic()
    body, reason, n = fetch_image(server.base + "/slow", timeout=0.3, retries=1, backoff=0.01)
    assert reason == "timeout" and n == 2 and time.monotonic() - t0 < 1.5
    body, reason, n = fetch_image(server.base + "/truncated", timeout=0.5, retries=1, backoff=0.01)
    assert reason == "truncated" and n == 2
    body, reason, n = fetch_image(server.base + "/truncated-nolength", timeout=0.5, retries=1, backoff=0.01)
    assert reason == "truncated" and n == 2
    body, reason, n = fetch_image(server.base + "/html", timeout=0.5, retries=3, backoff=0.01)
    assert reason == "not an image (text/html)" and n == 1
    body, reason, n = fetch_image(server.base + "/redirect", timeout=0.5, retries=0, backoff=0.01)
    assert body == PNG and server.hits["/png"] == 1
    assert fetch_image("file:///etc/passwd")[1] == "unsupported url scheme"


def test_download_fashioniq_end_to_end_and_resume(server, tmp_path):
    urls, out = tmp_path / "urls", tmp_path / "images"
    urls.mkdir()
    b = server.base
    _write_json_list(urls / "dress.json", [
        ("D1", b + "/img/1.jpg"), ("D2", b + "/img/2.jpg"), ("DPNG", b + "/png"), ("DGIF", b + "/gif"),
        ("D404", b + "/404"), ("DFLAKY", b + "/flaky"), ("DSLOW", b + "/slow"), ("DTRUNC", b + "/truncated"),
        ("DHTML", b + "/html"), ("DREDIR", b + "/redirect"),
    ])
    # same asin D1 in another list (fetched once); DALT has a dead first URL and a good fallback
    (urls / "asin2url.shirt.txt").write_text(f"D1\t{b}/img/1.jpg\nS3\t{b}/img/3.jpg\nDALT\t{b}/404\n")
    (urls / "toptee.json").write_text(json.dumps([{"asin": "DALT", "url": b + "/img/4.jpg"}]))

    report = download_fashioniq(urls, out, workers=4, **FAST)
    assert server.hits["/img/1.jpg"] == 1  # D1 is in two lists, fetched once
    assert report["total"] == 12 and report["present"] == 0
    assert report["downloaded"] == 8 and report["dead"] == 4
    dead = {d["asin"]: d["reason"] for d in report["dead_items"]}
    assert dead == {"D404": "http 404", "DSLOW": "timeout", "DTRUNC": "truncated", "DHTML": "not an image (text/html)"}
    assert server.hits["/flaky"] == 2 and server.hits["/404"] == 2  # D404 once, DALT's first URL once
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["D1.jpg", "D2.jpg", "DPNG.png", "DGIF.png", "DFLAKY.jpg", "DREDIR.png", "S3.jpg",
                            "DALT.jpg", REPORT_NAME])
    assert (out / "D1.jpg").read_bytes() == _image_bytes("JPEG", seed=1)  # bytes kept as served
    assert (out / "DPNG.png").read_bytes() == PNG
    with Image.open(out / "DGIF.png") as im:  # GIF re-encoded losslessly as PNG
        assert im.format == "PNG"
        with Image.open(io.BytesIO(GIF)) as ref:
            assert list(im.convert("RGB").getdata()) == list(ref.convert("RGB").getdata())
    assert json.loads((out / REPORT_NAME).read_text())["dead_by_reason"] == report["dead_by_reason"]
    assert report["per_category"] == {"dress": {"downloaded": 6, "present": 0, "dead": 4},
                                      "shirt": {"downloaded": 3, "present": 0, "dead": 0},
                                      "toptee": {"downloaded": 1, "present": 0, "dead": 0}}

    # Resume: damage one file, corrupt another, leave a stale temp; rerun refetches only those.
    (out / "D2.jpg").write_bytes(_image_bytes("JPEG", seed=2)[:300])
    (out / "S3.jpg").write_bytes(b"garbage")
    stale_temp(out / "D1.jpg").write_bytes(b"half")
    before = dict(server.hits)
    report2 = download_fashioniq(urls, out, workers=4, **FAST)
    assert report2["downloaded"] == 2 and report2["present"] == 6 and report2["dead"] == 4
    assert server.hits["/img/2.jpg"] == before["/img/2.jpg"] + 1
    assert server.hits["/img/1.jpg"] == before["/img/1.jpg"]  # valid file not refetched
    _assert_all_valid(out)


def test_report_reasons_exact(server, tmp_path):
    urls, out = tmp_path / "urls", tmp_path / "images"
    urls.mkdir()
    b = server.base
    _write_json_list(urls / "dress.json", [
        ("A", b + "/404"), ("B", b + "/slow"), ("C", b + "/truncated"), ("D", b + "/html"), ("E", b + "/flaky"),
        ("F", b + "/always500"),
    ])
    report = download_fashioniq(urls, out, workers=6, **FAST)
    dead = {d["asin"]: (d["reason"], d["attempts"]) for d in report["dead_items"]}
    assert dead == {"A": ("http 404", 1), "B": ("timeout", 3), "C": ("truncated", 3),
                    "D": ("not an image (text/html)", 1), "F": ("http 503", 3)}
    assert report["downloaded"] == 1 and (out / "E.jpg").is_file()
    assert report["dead_by_reason"] == {"http 404": 1, "timeout": 1, "truncated": 1, "not an image": 1, "http 503": 1}


# ----------------------------------------------------------------------------- CLI and interruption


def test_cli_errors_and_summary(server, tmp_path, capsys):
    assert cli_main(["download", "cirr", "--urls", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no downloader for dataset 'cirr'" in capsys.readouterr().err
    assert cli_main(["download", "fashioniq", "--urls", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no URL lists found" in capsys.readouterr().err
    _write_json_list(tmp_path / "dress.json", [("X", server.base + "/img/5.jpg"), ("Y", server.base + "/404")])
    code = cli_main(["download", "fashioniq", "--urls", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--categories", "dress", "--timeout", "0.5", "--backoff", "0.01"])
    out = capsys.readouterr().out
    assert code == 0 and "2 images: 1 downloaded, 0 already present, 1 dead (http 404: 1)" in out


def test_kill_midway_then_rerun_completes(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = _Server(image_delay=0.15)
    try:
        urls, out = tmp_path / "urls", tmp_path / "images"
        urls.mkdir()
        n = 24
        _write_json_list(urls / "dress.json", [(f"I{i:02d}", f"{srv.base}/img/{i}.jpg") for i in range(n)])
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        proc = subprocess.Popen(
            [sys.executable, "-m", "zscir.cli", "download", "fashioniq", "--urls", str(urls), "--out", str(out),
             "--workers", "2", "--timeout", "5"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(list(out.glob("*.jpg"))) < 4:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no cleanup code runs: the hardest interruption
        proc.wait(5)
        got = len(list(out.glob("*.jpg")))
        assert 4 <= got < n, f"kill did not land mid-way ({got} files); stderr: {proc.stderr.read()[-500:]!r}"
        for p in out.glob("*.jpg"):
            check_image_bytes(p.read_bytes())  # nothing under a final name is half-written
        srv.image_delay = 0.0
        report = download_fashioniq(urls, out, workers=4, **FAST)
        assert report["present"] == got and report["downloaded"] == n - got and report["dead"] == 0
        assert sorted(p.name for p in out.glob("*.jpg")) == [f"I{i:02d}.jpg" for i in range(n)]
        _assert_all_valid(out)
    finally:
        srv.close()
