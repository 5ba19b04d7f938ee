"""The web server as an attacker sees it (loopback only): no file is read, copied or served unless it is an
indexed image or a file Gradio itself received as an upload.

Issue 13 item 1: a POST to Gradio's API with a `gradio.FileData` whose `path` is an absolute server path
used to open that file and copy it into Gradio's temporary folder (Gradio's own check is skipped when the
app is mounted with `mount_gradio_app`), and `/gradio_api/file=` served every file under the image root.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

CAPTION = "make the circle green"
FILEDATA = {"_type": "gradio.FileData"}


def _png(path: Path, seed: int, size: int = 20) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_clip_dir):
    """A server on 127.0.0.1 over a gallery that also holds files the index skips, plus a planted secret."""
    from zscir.models.backbone import Backbone
    from zscir.retrieval.indexer import index_folder
    from zscir.retrieval.service import SearchService
    from zscir.web.app import start_server

    root = tmp_path_factory.mktemp("websec")
    gallery = root / "gallery"
    for i, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        _png(gallery / name, i)
    token = secrets.token_hex(16)
    (gallery / "secret.txt").write_text(f"gallery secret {token}\n")
    (gallery / ".hidden").mkdir()
    (gallery / ".hidden" / "id_rsa").write_text(f"-----BEGIN KEY----- {token}\n")
    _png(gallery / ".hidden" / "h.png", 9)  # an image the index skips (hidden folder)
    planted = root / "outside" / "planted.txt"
    planted.parent.mkdir()
    planted.write_text(f"planted secret {token}\n")
    backbone = Backbone.load(str(tiny_clip_dir))
    index_folder(gallery, backbone, root / "index", progress=False)
    service = SearchService(root / "index", backbone=backbone)
    running = start_server(service, port=0)
    running.gallery, running.planted, running.token = gallery, planted, token
    yield running
    running.stop()


def _client(site):
    import httpx

    return httpx.Client(base_url=site.url, timeout=30)


def _copies_of(token: str, extra: bytes | None = None) -> list[str]:
    """Files under Gradio's upload folders (this server's and the default one) holding the token."""
    import tempfile

    from gradio.utils import get_upload_folder

    found = []
    for top in {get_upload_folder(), os.path.join(tempfile.gettempdir(), "gradio")}:
        for directory, _, files in os.walk(top):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    if os.path.getsize(path) > 1 << 20:
                        continue
                    data = Path(path).read_bytes()
                except OSError:
                    continue
                if token.encode() in data or (extra is not None and data == extra):
                    found.append(path)
    return found


def _call(client, path: str, route: str = "call"):
    """The exploit: the reference image given as a FileData with a server path."""
    data = [{"path": path, "meta": FILEDATA}, CAPTION, "image", 3, False]
    if route == "call":
        return client.post("/gradio_api/call/search_page", json={"data": data})
    return client.post("/gradio_api/queue/join", json={"data": data, "fn_index": 0, "session_hash": "attacker1",
                                                        "event_data": None, "trigger_id": None})


@pytest.mark.parametrize("route", ["call", "queue"])
def test_filedata_with_a_server_path_is_refused_and_copied_nowhere(site, route):
    passwd = Path("/etc/passwd").read_bytes() if Path("/etc/passwd").is_file() else None
    targets = [str(site.planted), "/etc/passwd", str(site.gallery / "secret.txt"),
               str(site.gallery / "a.png"),  # even an indexed image: only uploads are accepted as FileData
               str(site.gallery / "sub" / ".." / ".." / "outside" / "planted.txt")]
    with _client(site) as client:
        answers = [_call(client, path, route) for path in targets]
    for path, answer in zip(targets, answers):
        assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text)
        assert site.token not in answer.text and "root:" not in answer.text
    assert _copies_of(site.token, passwd) == []


def test_a_missing_path_answers_exactly_like_an_existing_one(site):
    with _client(site) as client:
        existing = _call(client, str(site.planted))
        missing = _call(client, str(site.planted.with_name("no-such-file.txt")))
    assert existing.status_code == missing.status_code and 400 <= missing.status_code < 500
    assert existing.text == missing.text
    assert "FileNotFound" not in missing.text and "no-such-file" not in missing.text


@pytest.mark.parametrize("relative", ["secret.txt", ".hidden/id_rsa", ".hidden/h.png", "a.png",
                                      "../outside/planted.txt"])
def test_gradio_file_route_serves_nothing_of_the_image_root(site, relative):
    with _client(site) as client:
        for path in (str(site.gallery / relative), "/etc/passwd"):
            answer = client.get(f"/gradio_api/file={path}")
            assert 400 <= answer.status_code < 500, (path, answer.status_code)
            assert site.token not in answer.text


@pytest.mark.parametrize("relative", ["secret.txt", ".hidden/id_rsa", ".hidden/h.png", "../outside/planted.txt",
                                      "%2e%2e/outside/planted.txt", "/etc/passwd", "sub/../secret.txt"])
def test_image_route_serves_only_indexed_ids(site, relative):
    with _client(site) as client:
        answer = client.get(f"/images/{relative}")
        assert answer.status_code == 404, (relative, answer.status_code)
        assert site.token not in answer.text
        good = client.get("/images/sub/c.png")
        assert good.status_code == 200 and good.headers["content-type"] == "image/png"
        assert good.content == (site.gallery / "sub" / "c.png").read_bytes()


def test_a_real_gradio_upload_is_accepted(site):
    """The positive control: a file uploaded through Gradio's own upload route is searched."""
    png = (site.gallery / "b.png").read_bytes()
    with _client(site) as client:
        uploaded = client.post("/gradio_api/upload", files={"files": ("b.png", png, "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        [path] = uploaded.json()
        answer = _call(client, path)
        assert answer.status_code == 200, answer.text
        event = answer.json()["event_id"]
        with client.stream("GET", f"/gradio_api/call/search_page/{event}") as stream:
            body = "".join(stream.iter_text())
    assert "event: complete" in body and "b.png" in body, body[:500]
