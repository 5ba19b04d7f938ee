"""The search web page (Gradio) and its JSON API (FastAPI), both on one `SearchService`.

    app = build_app(service)                 # FastAPI: "/" = page, "/api/search", "/api/info", "/images/{id}"
    serve(service, host="127.0.0.1", port=7860)
    server = start_server(service, port=0)   # background thread (tests); server.url, server.stop()

JSON API:
    POST /api/search   multipart form (image=<file>, text, method, k, exclude_reference) or JSON
                       {"image": "<base64 or data: URL>", "text": "...", "method": "phi", "k": 10,
                        "exclude_reference": true}
                       → 200 {"method", "k", "excluded": [ids], "hits": [{rank, id, row, score, url}, ...]}
                       → 400 {"error": "<one clear line>"} for bad input (non-image, empty caption, too many
                         pixels, ...); 413 body or image above the limits; 503 too many searches in flight
    GET  /api/info     → what is loaded, by name (no server paths), the limits and the image URL pattern
    GET  /images/{id}  → an indexed image by its relative id (every hit's "url"); 404 for anything else
`exclude_reference` (default true) leaves the reference image itself out of the hits, as CIRR's protocol does.
Bad input never produces a traceback: the page shows the message above the results and keeps serving.
What a stranger may send is limited by `ServerLimits` (zscir.web.limits) and checked by `RequestGuard`
(zscir.web.guard) before any route runs.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from dataclasses import dataclass

from zscir.errors import DataError, ZscirError, require
from zscir.web.guard import RequestGuard, private_upload_dir
from zscir.web.limits import RequestTooLarge, SearchPool, ServerBusy, ServerLimits
from zscir.web.page import CSS, build_page, image_url, short_name

log = logging.getLogger(__name__)
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".bmp": "image/bmp"}  # every suffix of zscir.data.images.IMAGE_EXTENSIONS


def _decode_base64_image(value: str, limits: ServerLimits) -> bytes:
    """Bytes of a base64 string or a `data:image/...;base64,` URL (DataError when it is neither)."""
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) * 3 // 4 > limits.max_upload_bytes + 3:
        raise RequestTooLarge(f"the image is larger than this server's limit of "
                              f"{limits.max_upload_bytes / 2**20:g} MiB")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError("field 'image' is not valid base64 (send the file as multipart or base64)") from exc


def _form_k(value, default: int = 10) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"field 'k' must be an integer, got {value!r}") from exc


def _form_bool(value, name: str, default: bool = True) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise DataError(f"field {name!r} must be true or false, got {value!r}")


def public_info(service, limits: ServerLimits) -> dict:
    """What /api/info shows: names, counts and limits, never a server path."""
    info = service.describe()
    return {"index": short_name(info["index"]), "count": info["count"], "backbone": short_name(info["backbone"]),
            "backend": info["backend"], "methods": info["methods"], "phi": info["phi"],
            "text_encoder": short_name(info["text_encoder"]), "generator": info["generator"],
            "image_url": "/images/{id}", "limits": limits.to_dict()}


def hit_json(hit, base_url: str) -> dict:
    """One hit for the API: relative id and a URL a client can fetch (no server path)."""
    return {"rank": hit.rank, "id": hit.relpath, "row": hit.row, "score": hit.score,
            "url": base_url.rstrip("/") + image_url(hit.relpath)}


def build_app(service, examples: int = 8, k_default: int = 10, limits: ServerLimits | None = None,
              notice: str | None = None):
    """A FastAPI app serving the Gradio page at "/", the JSON API under "/api" and indexed images.

    Args:
        service: a `zscir.retrieval.service.SearchService`.
        examples: gallery images offered as examples on the page.
        k_default: initial number of results on the page.
        limits: request limits and worker pool size (default `ServerLimits()`).
        notice: a warning shown under the page header (e.g. that the models are untrained).
    Returns:
        The FastAPI application (run it with uvicorn, or use `serve` / `start_server`).
    """
    gr = require("gradio", "web")
    fastapi = require("fastapi", "web")
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    limits = limits or ServerLimits()
    pool = SearchPool(service, limits)
    app = fastapi.FastAPI(title="zscir search API")
    app.state.pool = pool

    @app.get("/api/info")
    def api_info():
        return public_info(service, limits)

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
                image = _decode_base64_image(image, limits) if isinstance(image, str) and image else None
                text, method, k = body.get("text"), body.get("method", "phi"), _form_k(body.get("k"))
                exclude = _form_bool(body.get("exclude_reference"), "exclude_reference")
            else:
                form = await request.form()
                upload = form.get("image")
                image = await upload.read() if hasattr(upload, "read") else (
                    _decode_base64_image(upload, limits) if isinstance(upload, str) and upload else None)
                text, method, k = form.get("text"), form.get("method") or "phi", _form_k(form.get("k"))
                exclude = _form_bool(form.get("exclude_reference"), "exclude_reference")
            result = await run_in_threadpool(pool.run, image, text, method, k, exclude)
        except RequestTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except ServerBusy as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        except ZscirError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception as exc:  # keep serving
            log.exception("API search failed")
            return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)
        base = str(request.base_url)
        return JSONResponse({"method": result.method, "k": k, "excluded": [service.ids[r] for r in result.excluded],
                             "hits": [hit_json(h, base) for h in result.hits]})

    app.add_route("/api/search", api_search, methods=["POST"])
    _add_image_route(app, service)

    upload_dir = private_upload_dir()  # before the page: Gradio components read the folder when built
    page = build_page(pool, examples, k_default, notice)
    # allowed_paths lets Gradio copy the example images (indexed files only) into its private cache; the
    # guard still refuses every file route outside the upload folder.
    app = gr.mount_gradio_app(app, page, path="/", allowed_paths=[str(service.root)], footer_links=["api"],
                              run_history=False, max_file_size=limits.max_upload_bytes, css=CSS)
    # Gradio checks FileData paths only once the Blocks "has launched", which mount_gradio_app never sets
    # (gradio 6.x): set it so its own check runs too (the guard does not rely on it).
    page.has_launched = True
    app.add_middleware(RequestGuard, upload_dir=upload_dir, max_body_bytes=limits.max_body_bytes)
    return app


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
    app: object = None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit, wait for the thread, then stop the search workers."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.app is not None:
            self.app.state.pool.close()


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
    app = build_app(service, **options)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ZscirError(f"the search server did not start on {host}:{sock.getsockname()[1]}")
        time.sleep(0.05)
    return RunningServer(server, thread, f"http://{host}:{sock.getsockname()[1]}", app)
