"""What a stranger may send to the server: an ASGI middleware in front of the whole app.

It enforces, before any route (ours or Gradio's) sees the request:
- the body size limit (413 with one line), on the Content-Length and on what really arrives;
- file references: any JSON object with a "path" (a `gradio.FileData`, with or without its meta) must name
  a file inside this server's private upload folder, i.e. a file Gradio itself received as an upload or
  wrote there; anything else (an absolute server path, `..`, a symlink out, a missing file) gets the same
  403 line, so the answer does not tell whether a path exists. `data:` URLs in file objects are refused too
  (Gradio would decode them without our pixel limit);
- Gradio's file routes (`/gradio_api/file=...`) serve only files inside that folder (404 otherwise): the
  gallery itself is served by our own `/images/{id}` route, by indexed id only.

Why here and not in Gradio: Gradio's own check (`processing_utils._check_allowed`) returns early unless
the Blocks "has launched", which `mount_gradio_app` never sets (gradio 6.x; tested in
tests/test_web_security.py). `build_app` sets it as a second line of defence, but this guard does not
depend on it.
"""

from __future__ import annotations

import json
import os
import tempfile

GRADIO_PREFIX = "/gradio_api"
FILE_ROUTES = (f"{GRADIO_PREFIX}/file=", f"{GRADIO_PREFIX}/file/")
REFUSED_FILE = "file references must name a file uploaded to this server"
_private_upload_dir: str | None = None


def private_upload_dir() -> str:
    """This process's Gradio upload folder: `GRADIO_TEMP_DIR` when the user set one, else a fresh private
    folder (mode 0700, removed at exit) so that uploads are not world-readable in the shared /tmp/gradio.

    Must be called before any Gradio component is built (components read the folder when created).
    """
    global _private_upload_dir
    if os.environ.get("GRADIO_TEMP_DIR"):
        return os.path.realpath(os.environ["GRADIO_TEMP_DIR"])
    if _private_upload_dir is None:
        import atexit
        import shutil

        _private_upload_dir = os.path.realpath(tempfile.mkdtemp(prefix="zscir-gradio-"))
        atexit.register(shutil.rmtree, _private_upload_dir, True)
    os.environ["GRADIO_TEMP_DIR"] = _private_upload_dir
    return _private_upload_dir


def is_inside(path: str, folder: str) -> bool:
    """True when `path`, with symlinks and `..` resolved, is a regular file inside `folder` (a realpath)."""
    try:
        real = os.path.realpath(path)
        return os.path.commonpath([real, folder]) == folder and real != folder and os.path.isfile(real)
    except (OSError, ValueError):  # NUL bytes, mixed absolute/relative, ...
        return False


def file_references(value) -> list:
    """Every "path" value (and every `data:` URL) of the objects nested in a JSON value."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "path" in item:
                found.append(item["path"])
            url = item.get("url")
            if isinstance(url, str) and url.strip().lower().startswith("data:"):
                found.append(url)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class RequestGuard:
    """ASGI middleware: body size limit, file-reference check, Gradio file routes restricted to uploads.

    Args:
        app: the ASGI app to protect.
        upload_dir: the private upload folder (`private_upload_dir()`).
        max_body_bytes: the largest request body accepted (413 above).
        own_prefixes: path prefixes of our own routes, whose bodies are not scanned for file references.
    """

    def __init__(self, app, upload_dir: str, max_body_bytes: int, own_prefixes: tuple[str, ...] = ("/api/",)):
        self.app = app
        self.upload_dir = os.path.realpath(upload_dir)
        self.max_body_bytes = int(max_body_bytes)
        self.own_prefixes = own_prefixes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path.startswith(FILE_ROUTES):
            target = path.split("=", 1)[1] if path.startswith(FILE_ROUTES[0]) else path[len(FILE_ROUTES[1]):]
            if not is_inside(target, self.upload_dir):
                return await _answer(send, 404, "not found")
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)

        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            return await _answer(send, 413, self._too_large())
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await _answer(send, 413, self._too_large())
        if not path.startswith(self.own_prefixes) and _is_json(scope):
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None  # the route answers malformed JSON itself
            for reference in file_references(parsed):
                if not (isinstance(reference, str) and is_inside(reference, self.upload_dir)):
                    return await _answer(send, 403, REFUSED_FILE)

        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # a disconnect, eventually
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"request body larger than the server's limit of {_size(self.max_body_bytes)}"


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _is_json(scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return b"json" in value.lower()
    return True  # no content type: Gradio's routes still parse JSON bodies


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


async def _answer(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

