"""The search web page (Gradio) and its JSON API (FastAPI), both on one `SearchService`.

    app = build_app(service)                 # FastAPI: "/" = Gradio page, "/api/search", "/api/info"
    serve(service, host="127.0.0.1", port=7860)
    server = start_server(service, port=0)   # background thread (tests); server.url, server.stop()

JSON API:
    POST /api/search   multipart form (image=<file>, text, method, k) or JSON
                       {"image": "<base64 or data: URL>", "text": "...", "method": "phi", "k": 10}
                       → 200 {"method", "k", "hits": [{rank, path, relpath, row, score}, ...]}
                       → 400 {"error": "<one clear line>"} for bad input (non-image, empty caption, ...)
    GET  /api/info     → what is loaded (index, backbone, methods, ...)
Bad input never produces a traceback: the page shows the message above the results and keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
from dataclasses import dataclass

from zscir.errors import ZscirError, require
from zscir.web.guard import RequestGuard, private_upload_dir

log = logging.getLogger(__name__)

METHOD_LABELS = {
    "phi": "Phi: compose 'a photo of $ that …' (SEARLE / LinCIR)",
    "sum": "Sum of image and text embeddings",
    "image": "Reference image only",
    "text": "Text only",
}
BAD_UPLOAD_PREFIX = "zscir-bad-upload:"


def _decode_base64_image(value: str) -> bytes:
    """Bytes of a base64 string or a `data:image/...;base64,` URL (DataError when it is neither)."""
    from zscir.errors import DataError

    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError("field 'image' is not valid base64 (send the file as multipart or base64)") from exc


def _form_k(value, default: int = 10) -> int:
    from zscir.errors import DataError

    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"field 'k' must be an integer, got {value!r}") from exc


class _Searcher:
    """Serialises searches (one CPU model) and turns every failure into a message."""

    def __init__(self, service):
        self.service = service
        self.lock = threading.Lock()

    def run(self, image, text, method, k):
        with self.lock:
            return self.service.run(image, text, method, k)


def _page(searcher: _Searcher, examples: int = 8, k_default: int = 10):
    """The Gradio Blocks of the search page."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    gr = require("gradio", "web")
    service = searcher.service

    def tolerant(component):
        """Let an undecodable upload reach the handler as a marker (for a clear message) instead of failing
        inside Gradio's preprocessing with a generic error toast. (An instance attribute, not a subclass:
        Gradio writes a .pyi file next to the module of every component subclass.)"""
        original = component.preprocess

        def preprocess(payload):
            try:
                return original(payload)
            except Exception as exc:  # PIL's UnidentifiedImageError and friends
                return f"{BAD_UPLOAD_PREFIX}{type(exc).__name__}"

        component.preprocess = preprocess
        return component

    info = service.describe()
    methods = sorted(service.methods, key=lambda m: list(METHOD_LABELS).index(m) if m in METHOD_LABELS else 99)
    default_method = "phi" if "phi" in methods else "sum"
    notes = []
    if not info["phi"]:
        notes.append("no Phi configured (start with `--phi PATH` for the composed method)")
    if info["text_encoder"]:
        notes.append(f"fine-tuned text encoder: `{info['text_encoder']}`")
    if info["generator"]:
        notes.append("CIG pseudo targets: on (Phi method)")
    header = (f"# zscir: composed image search\n"
              f"Index `{info['index']}`: **{info['count']}** images from `{info['images_root']}`, "
              f"backbone `{info['backbone']}`, {info['backend']} search.")
    if notes:
        header += "  \n" + "; ".join(notes)

    def handle(image, text, method, k):
        """(gallery items, status markdown, pseudo target) for the page."""
        if isinstance(image, str) and image.startswith(BAD_UPLOAD_PREFIX):
            return [], (f"⚠️ The uploaded file is not a readable image "
                        f"({image[len(BAD_UPLOAD_PREFIX):]}); use a JPEG, PNG or WebP."), None
        try:
            result = searcher.run(image, text, method, int(k))
        except ZscirError as exc:
            return [], f"⚠️ {exc}", None
        except Exception as exc:  # keep serving; the log has the traceback
            log.exception("search failed")
            return [], f"⚠️ internal error ({type(exc).__name__}: {exc})", None
        items = [(hit.path, f"{hit.rank}. {hit.score:.3f} · {hit.relpath}") for hit in result.hits]
        status = f"{len(result.hits)} results · method **{method}** · best `{result.hits[0].relpath}`" \
            if result.hits else "no results"
        return items, status, result.pseudo_target

    with gr.Blocks(title="zscir search") as page:
        gr.Markdown(header)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                reference = tolerant(gr.Image(type="filepath", label="Reference image",
                                              sources=["upload", "clipboard"], elem_id="reference", height=260))
                gallery_examples = service.gallery_paths(examples)
                if gallery_examples:
                    gr.Examples([[p] for p in gallery_examples], inputs=[reference],
                                label="…or pick one from the gallery", examples_per_page=examples)
                caption = gr.Textbox(label="Modification", placeholder="e.g. is red and has two circles",
                                     elem_id="caption", lines=1)
                method = gr.Radio([(METHOD_LABELS.get(m, m), m) for m in methods], value=default_method,
                                  label="Method", elem_id="method")
                k = gr.Slider(1, 50, value=k_default, step=1, label="Results (k)", elem_id="k")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
                pseudo = gr.Image(label="Pseudo target (CIG)", visible=info["generator"], interactive=False,
                                  elem_id="pseudo-target", height=200)
            with gr.Column(scale=2):
                status = gr.Markdown("Upload or pick a reference image, type the modification, press Search.",
                                     elem_id="status")
                results = gr.Gallery(label="Results", columns=5, object_fit="contain", height="auto",
                                     elem_id="results", allow_preview=True)
        inputs, outputs = [reference, caption, method, k], [results, status, pseudo]
        button.click(handle, inputs, outputs, api_name="search_page")
        caption.submit(handle, inputs, outputs, api_name=False)
    return page


def build_app(service, examples: int = 8, k_default: int = 10, max_body_bytes: int = 24 * 2**20):
    """A FastAPI app serving the Gradio page at "/" and the JSON API under "/api".

    Args:
        service: a `zscir.search.service.SearchService`.
        examples: gallery images offered as examples on the page.
        k_default: initial number of results on the page.
        max_body_bytes: largest request body accepted (413 above).
    Returns:
        The FastAPI application (run it with uvicorn, or use `serve` / `start_server`).
    """
    gr = require("gradio", "web")
    fastapi = require("fastapi", "web")
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    searcher = _Searcher(service)
    app = fastapi.FastAPI(title="zscir search API")

    @app.get("/api/info")
    def api_info():
        return service.describe()

    async def api_search(request):  # a plain Starlette route: the request object is passed as is
        try:
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                try:
                    body = await request.json()
                except ValueError as exc:
                    raise ZscirError("request body is not valid JSON") from exc
                if not isinstance(body, dict):
                    raise ZscirError("JSON body must be an object with image, text, method, k")
                image = body.get("image")
                image = _decode_base64_image(image) if isinstance(image, str) and image else None
                text, method, k = body.get("text"), body.get("method", "phi"), _form_k(body.get("k"))
            else:
                form = await request.form()
                upload = form.get("image")
                image = await upload.read() if hasattr(upload, "read") else (
                    _decode_base64_image(upload) if isinstance(upload, str) and upload else None)
                text, method, k = form.get("text"), form.get("method") or "phi", _form_k(form.get("k"))
            result = await run_in_threadpool(searcher.run, image, text, method, k)
        except ZscirError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception as exc:  # keep serving
            log.exception("API search failed")
            return JSONResponse({"error": f"internal error ({type(exc).__name__}: {exc})"}, status_code=500)
        return JSONResponse({"method": result.method, "k": k, "hits": [h.to_dict() for h in result.hits]})

    app.add_route("/api/search", api_search, methods=["POST"])
    _add_image_route(app, service)

    upload_dir = private_upload_dir()  # before the page: Gradio components read the folder when built
    page = _page(searcher, examples, k_default)
    # allowed_paths lets Gradio copy result images (indexed files only) into its cache for the gallery;
    # the guard still refuses every file route outside the upload folder.
    app = gr.mount_gradio_app(app, page, path="/", allowed_paths=[str(service.root)], footer_links=["api"],
                              run_history=False)
    # Gradio checks FileData paths only once the Blocks "has launched", which mount_gradio_app never sets
    # (gradio 6.x): set it so its own check runs too (the guard does not rely on it).
    page.has_launched = True
    app.add_middleware(RequestGuard, upload_dir=upload_dir, max_body_bytes=max_body_bytes)
    return app


IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def _add_image_route(app, service) -> None:
    """GET /images/{id}: an indexed image by its relative id (the only way gallery files are served)."""
    from fastapi.responses import FileResponse, JSONResponse

    rows = {rel: row for row, rel in enumerate(service.ids)}

    async def image(request):
        rel = request.path_params["id"]
        path = service.root / rel if rel in rows else None
        if path is None or not path.is_file():
            return JSONResponse({"error": "no indexed image with that id"}, status_code=404)
        return FileResponse(path, media_type=IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})

    app.add_route("/images/{id:path}", image, methods=["GET", "HEAD"])


def serve(service, host: str = "127.0.0.1", port: int = 7860, **options) -> None:
    """Serve the page and API until interrupted (blocking).

    Args:
        service: a `SearchService`.
        host / port: where to listen.
        **options: passed to `build_app`.
    """
    uvicorn = require("uvicorn", "web")
    uvicorn.run(build_app(service, **options), host=host, port=port, log_level="warning")


@dataclass
class RunningServer:
    """A server started in a background thread by `start_server`."""

    server: object
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def start_server(service, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0, **options) -> RunningServer:
    """Start the page and API in a daemon thread and wait until it accepts connections.

    Args:
        service: a `SearchService`.
        host: interface (127.0.0.1 by default: local only).
        port: 0 picks a free port.
        timeout: seconds to wait for the start.
        **options: passed to `build_app`.
    Returns:
        RunningServer with the base URL.
    """
    import socket

    uvicorn = require("uvicorn", "web")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(build_app(service, **options), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ZscirError(f"the search server did not start on {host}:{sock.getsockname()[1]}")
        time.sleep(0.05)
    return RunningServer(server, thread, f"http://{host}:{sock.getsockname()[1]}")
