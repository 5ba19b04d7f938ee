"""Limits on what one request may cost, and the bounded pool that runs searches.

    limits = ServerLimits(max_pixels=40_000_000)        # the defaults are safe for a public machine
    pool = SearchPool(service, limits)
    result = pool.run(image, text, "phi", 10)            # blocking; from any thread

Every search runs on one of `limits.workers` threads. A search that decodes a reference image first takes
one of `workers - 1` image slots (in the caller's thread, before it occupies a worker), so at least one
worker is always free for text-only searches: a huge upload never makes a text query wait. Requests
beyond `max_pending` (running + waiting) are refused at once with 503 instead of piling up.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from zscir.errors import DataError, ZscirError

MiB = 2**20


class RequestTooLarge(DataError):
    """A request or upload above the server's limits (HTTP 413)."""


class ServerBusy(ZscirError):
    """More searches in flight than the server accepts (HTTP 503)."""


@dataclass(frozen=True)
class ServerLimits:
    """What one request may cost.

    Attributes:
        max_body_bytes: largest request body (JSON with a base64 image, or multipart); 413 above.
        max_upload_bytes: largest image file (upload or decoded base64); 413 above.
        max_pixels: largest decoded image (width × height); 400 above, checked on the header before decoding.
        workers: threads running searches (model forward passes).
        max_pending: searches running or waiting at once; 503 above.
    """

    max_body_bytes: int = 24 * MiB
    max_upload_bytes: int = 16 * MiB
    max_pixels: int = 40_000_000
    workers: int = 4
    max_pending: int = 64

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ZscirError(f"server limit {name} must be a positive integer, got {value!r}")
        if self.max_upload_bytes > self.max_body_bytes:
            raise ZscirError(f"server limit max_upload_bytes ({self.max_upload_bytes}) exceeds max_body_bytes "
                             f"({self.max_body_bytes}): an upload that large could never arrive")

    @property
    def image_slots(self) -> int:
        """Searches that may decode an image at once (one worker stays free for text-only searches)."""
        return max(1, self.workers - 1)

    def to_dict(self) -> dict:
        """JSON-ready dict (for /api/info)."""
        return asdict(self)


def check_image(image, limits: ServerLimits):
    """Refuse a reference image above the limits without decoding it (only the header is read).

    Args:
        image: bytes, or a path of a file the server received; None and other types pass unchanged.
        limits: the server's limits.
    Returns:
        The image unchanged.
    Raises:
        RequestTooLarge: the file is larger than `max_upload_bytes`.
        DataError: more pixels than `max_pixels`, or not an image.
    """
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        size, source = len(image), io.BytesIO(image)
    elif isinstance(image, (str, os.PathLike)):
        size, source = os.path.getsize(image), image
    else:
        return image
    if size > limits.max_upload_bytes:
        raise RequestTooLarge(f"the image is {size / MiB:.1f} MiB; this server accepts up to "
                              f"{limits.max_upload_bytes / MiB:g} MiB")
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the pixel limit below is the real check
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:  # lazy: reads the header only
                width, height = opened.size
    except Exception as exc:  # PIL raises many kinds on non-images
        raise DataError(f"the uploaded file is not a readable image ({type(exc).__name__}); "
                        "use a JPEG, PNG or WebP") from exc
    if width * height > limits.max_pixels:
        raise DataError(f"the image is {width}×{height} = {width * height / 1e6:.1f} megapixels; this server "
                        f"accepts up to {limits.max_pixels / 1e6:g} megapixels (scale it down)")
    return image


class SearchPool:
    """Runs `service.run` on a bounded pool of threads, with image slots and a cap on pending searches.

    Args:
        service: a `SearchService` (its models are only read, so threads can share them; a CIG generator
            is not thread-safe and runs under a lock).
        limits: `ServerLimits`.
    """

    def __init__(self, service, limits: ServerLimits):
        self.service = service
        self.limits = limits
        self.executor = ThreadPoolExecutor(limits.workers, thread_name_prefix="zscir-search")
        self.image_slots = threading.BoundedSemaphore(limits.image_slots)
        self._pending = 0
        self._count_lock = threading.Lock()
        if service.generator is not None:
            service.generator = _serialised(service.generator)

    def run(self, image, text, method: str = "phi", k: int = 10, exclude_reference: bool = True):
        """Check the image against the limits, then search on a worker (blocking).

        Returns:
            The `SearchResult`.
        Raises:
            ServerBusy: `max_pending` searches are already in flight.
            RequestTooLarge / DataError / ZscirError: from the limits or the search.
        """
        with self._count_lock:
            if self._pending >= self.limits.max_pending:
                raise ServerBusy(f"the server is busy ({self._pending} searches in flight); try again shortly")
            self._pending += 1
        try:
            if method == "text":
                return self._submit(None, text, method, k, exclude_reference)
            check_image(image, self.limits)
            with self.image_slots:
                return self._submit(image, text, method, k, exclude_reference)
        finally:
            with self._count_lock:
                self._pending -= 1

    def _submit(self, *args):
        return self.executor.submit(self.service.run, *args).result()

    def close(self) -> None:
        """Stop the worker threads (waits for running searches)."""
        self.executor.shutdown(wait=True)


def _serialised(generator):
    lock = threading.Lock()

    def generate(reference, caption):
        with lock:
            return generator(reference, caption)

    return generate
