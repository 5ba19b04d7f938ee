"""The JSON API and the server's limits, on 127.0.0.1 (issue 13 item 3, issue 16 item 7's API part)."""

from __future__ import annotations

import base64
import io
import json
import threading

import pytest
import torch

CAPTION = "make the circle green"


def _png_bytes(seed: int, size: int = 20) -> bytes:
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("webapi") / "photos"
    for i, name in enumerate(["a.png", "b.png", "c.png", "sub/d.png", "sub/with space #1.png"]):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png_bytes(i))
    return root


@pytest.fixture(scope="module")
def service(gallery, tiny_clip_dir, tiny_size):
    from zscir.models.backbone import Backbone
    from zscir.models.phi import Phi
    from zscir.retrieval.indexer import index_folder
    from zscir.retrieval.service import SearchService

    backbone = Backbone.load(str(tiny_clip_dir))
    index_folder(gallery, backbone, gallery.parent / "index", progress=False)
    torch.manual_seed(0)
    return SearchService(gallery.parent / "index", phi=Phi(tiny_size.projection_dim, tiny_size.text_hidden, 48),
                         backbone=backbone)


@pytest.fixture(scope="module")
def client(service):
    import httpx

    from zscir.web.app import start_server

    server = start_server(service, port=0)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
    server.stop()


def test_hits_have_ids_and_fetchable_urls_never_server_paths(client, service, gallery):
    ref = gallery / "sub" / "d.png"
    expected = service.search(ref, CAPTION, "phi", k=4, exclude_reference=True)
    multipart = client.post("/api/search", files={"image": ("d.png", ref.read_bytes(), "image/png")},
                            data={"text": CAPTION, "method": "phi", "k": "4"})
    assert multipart.status_code == 200, multipart.text
    b64 = base64.b64encode(ref.read_bytes()).decode()
    as_json = client.post("/api/search", json={"image": f"data:image/png;base64,{b64}", "text": CAPTION,
                                               "method": "phi", "k": 4})
    assert as_json.json() == multipart.json()
    hits = multipart.json()["hits"]
    assert [(h["rank"], h["id"], h["row"]) for h in hits] == [(h.rank, h.relpath, h.row) for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert str(gallery) not in multipart.text and str(gallery.parent) not in multipart.text
    for hit in hits:  # each URL is absolute and gives the indexed file's bytes
        assert hit["url"].startswith(str(client.base_url).rstrip("/") + "/images/")
        fetched = client.get(hit["url"])
        assert fetched.status_code == 200 and fetched.content == (gallery / hit["id"]).read_bytes()


def test_info_names_what_is_served_without_paths(client, gallery):
    info = client.get("/api/info")
    assert info.status_code == 200
    body = info.json()
    assert body["count"] == 5 and body["index"] == "index" and body["image_url"] == "/images/{id}"
    assert body["limits"]["max_pixels"] == 40_000_000 and body["methods"] == ["image", "text", "sum", "phi"]
    assert str(gallery.parent) not in info.text and "/tmp" not in info.text


def test_an_id_with_spaces_and_hash_is_served_by_its_url(client):
    hits = client.post("/api/search", json={"text": "a photo of a red circle", "method": "text", "k": 5}).json()
    [odd] = [h for h in hits["hits"] if h["id"] == "sub/with space #1.png"]
    assert "%20" in odd["url"] and "%23" in odd["url"]
    assert client.get(odd["url"]).status_code == 200


def test_reference_is_left_out_by_default_with_a_toggle(client):
    b64 = base64.b64encode(_png_bytes(0)).decode()  # the pixels of a.png
    default = client.post("/api/search", json={"image": b64, "method": "image", "k": 3}).json()
    assert default["excluded"] == ["a.png"] and "a.png" not in [h["id"] for h in default["hits"]]
    assert len(default["hits"]) == 3
    kept = client.post("/api/search", json={"image": b64, "method": "image", "k": 3,
                                            "exclude_reference": False}).json()
    assert kept["excluded"] == [] and kept["hits"][0]["id"] == "a.png"
    assert kept["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["id"] for h in kept["hits"][1:]] == [h["id"] for h in default["hits"][:2]]
    form = client.post("/api/search", files={"image": ("a.png", _png_bytes(0), "image/png")},
                       data={"method": "image", "k": "3", "exclude_reference": "false"}).json()
    assert form["hits"][0]["id"] == "a.png"
    bad = client.post("/api/search", json={"image": b64, "method": "image", "exclude_reference": "maybe"})
    assert bad.status_code == 400 and "exclude_reference" in bad.json()["error"]


def test_bad_input_is_one_line_and_the_server_keeps_serving(client, gallery):
    b64 = base64.b64encode((gallery / "b.png").read_bytes()).decode()
    bad = [
        ({"files": {"image": ("x.png", b"not an image", "image/png")}, "data": {"text": CAPTION}},
         "not a readable image"),
        ({"json": {"image": b64, "text": "", "method": "phi"}}, "empty caption"),
        ({"json": {"image": b64, "text": "and the", "method": "sum"}}, "no content words"),
        ({"json": {"image": "%%%", "text": CAPTION}}, "not valid base64"),
        ({"json": {"text": CAPTION, "method": "sum"}}, "no reference image"),
        ({"json": {"image": b64, "text": CAPTION, "k": "ten"}}, "'k' must be an integer"),
    ]
    for request, message in bad:
        answer = client.post("/api/search", **request)
        assert answer.status_code == 400 and message in answer.json()["error"], answer.text
        assert "\n" not in answer.json()["error"]
    assert client.get("/").status_code == 200
    assert client.post("/api/search", json={"image": b64, "method": "image", "k": 2}).status_code == 200


# ---- limits -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_limits_client(service):
    import httpx

    from zscir.web.app import start_server
    from zscir.web.limits import ServerLimits

    limits = ServerLimits(max_body_bytes=2**20, max_upload_bytes=256 * 2**10, max_pixels=100 * 100)
    server = start_server(service, port=0, limits=limits)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
    server.stop()


def _one_line_error(answer, status, fragment):
    assert answer.status_code == status, (answer.status_code, answer.text[:200])
    message = answer.json()["error"]
    assert fragment in message and "\n" not in message
    return message


def test_body_above_the_limit_is_413(small_limits_client):
    big = json.dumps({"image": "A" * (2**20 + 10), "text": CAPTION}).encode()
    answer = small_limits_client.post("/api/search", content=big, headers={"content-type": "application/json"})
    _one_line_error(answer, 413, "request body larger than the server's limit of 1 MiB")

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"x" * 2**16

    chunked = small_limits_client.post("/gradio_api/upload", content=chunks())
    _one_line_error(chunked, 413, "request body larger")


def test_upload_above_the_limit_is_413(small_limits_client):
    import numpy as np
    from PIL import Image

    out = io.BytesIO()  # 300 KiB of noise as PNG: within the body limit, above the upload limit
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(out, "PNG")
    data = out.getvalue()
    assert 256 * 2**10 < len(data) < 2**20
    answer = small_limits_client.post("/api/search", files={"image": ("n.png", data, "image/png")},
                                      data={"method": "image"})
    _one_line_error(answer, 413, "accepts up to 0.25 MiB")
    b64 = base64.b64encode(data[: 200 * 2**10]).decode()  # the base64 itself is checked before decoding
    assert len(b64) < 2**20
    as_json = small_limits_client.post("/api/search", json={"image": b64 + "A" * 80_000, "method": "image"})
    _one_line_error(as_json, 413, "limit of 0.25 MiB")
    gradio = small_limits_client.post("/gradio_api/upload", files={"files": ("n.png", data, "image/png")})
    assert gradio.status_code == 413


def test_too_many_pixels_is_400_before_decoding(small_limits_client, monkeypatch):
    from PIL import Image

    import zscir.retrieval.service as service_module

    decoded = []
    real = service_module.open_reference
    monkeypatch.setattr(service_module, "open_reference", lambda image: decoded.append(1) or real(image))
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, "PNG")  # 144 megapixels in a few KiB
    answer = small_limits_client.post("/api/search", files={"image": ("bomb.png", out.getvalue(), "image/png")},
                                      data={"method": "image"})
    _one_line_error(answer, 400, "12000×12000 = 144.0 megapixels; this server accepts up to 0.01 megapixels")
    assert decoded == []
    ok = small_limits_client.post("/api/search", files={"image": ("a.png", _png_bytes(0), "image/png")},
                                  data={"method": "image"})
    assert ok.status_code == 200 and decoded == [1]


def test_limits_refuse_nonsense():
    from zscir.errors import ZscirError
    from zscir.web.limits import ServerLimits

    with pytest.raises(ZscirError, match="max_pixels must be a positive integer"):
        ServerLimits(max_pixels=0)
    with pytest.raises(ZscirError, match="exceeds max_body_bytes"):
        ServerLimits(max_body_bytes=10, max_upload_bytes=20)


# ---- the worker pool ----------------------------------------------------------------------------------
class _BlockingService:
    """A service whose image searches wait for `release`; text searches answer at once."""

    generator = None

    def __init__(self):
        self.release = threading.Event()
        self.started = []
        self.lock = threading.Lock()

    def run(self, image, text, method, k, exclude_reference):
        with self.lock:
            self.started.append(method)
        if method != "text":
            assert self.release.wait(30)
        return method


def test_a_text_search_never_waits_behind_image_decodes():
    from zscir.web.limits import SearchPool, ServerBusy, ServerLimits

    service = _BlockingService()
    pool = SearchPool(service, ServerLimits(workers=3, max_pending=6))
    try:
        images = [threading.Thread(target=pool.run, args=(None, CAPTION, "image")) for _ in range(4)]
        for t in images:
            t.start()
        # two image slots (workers - 1): two run, two wait outside the workers
        deadline = threading.Event()
        for _ in range(300):
            if len(service.started) == 2:
                break
            deadline.wait(0.01)
        assert sorted(service.started) == ["image", "image"]
        assert pool.run(None, CAPTION, "text") == "text"  # answered while both image searches still block
        assert service.started.count("text") == 1 and not service.release.is_set()
        # 4 image searches in flight + 2 more = max_pending: the next is refused at once
        extra = [threading.Thread(target=pool.run, args=(None, CAPTION, "image")) for _ in range(2)]
        for t in extra:
            t.start()
        for _ in range(300):
            if pool._pending == 6:
                break
            deadline.wait(0.01)
        with pytest.raises(ServerBusy, match="busy"):
            pool.run(None, CAPTION, "text")
        service.release.set()
        for t in images + extra:
            t.join(30)
        assert service.started.count("image") == 6
    finally:
        service.release.set()
        pool.close()
