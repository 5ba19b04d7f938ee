"""Robust, resumable image downloads from URL lists (FashionIQ ships its images this way).

The FashionIQ lists (`{category}.json` = list of {asin, url}, or `asin2url.{category}.txt` = one
`asin<TAB>url` per line) point at Amazon URLs of which many are dead or slow. `download_fashioniq`
fetches them with a thread pool (stdlib urllib), retries transient failures with exponential
backoff, accepts a file only once it decodes as an image, writes it atomically, skips valid files
on a rerun and writes a JSON report of what is dead and why.

File naming: the bytes are kept exactly as served and named by their real format, `{asin}.jpg`
for JPEG and `{asin}.png` for PNG (the FashionIQ loader looks for both). A server answering with
another decodable format (GIF, WebP, BMP, ...) gets its first frame re-encoded losslessly to
`{asin}.png`, so the extension never lies and the loader always finds the file.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import io
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from zscir.data.fashioniq import IMAGE_SUFFIXES  # the files the FashionIQ loader looks for, in this order
from zscir.errors import DataError
from zscir.utils.io import read_json, remove_stale_temps, write_bytes_atomic, write_json_atomic

REPORT_NAME = "download_report.json"
USER_AGENT = "zscir-downloader/0.1 (+https://github.com/zscir)"

# An asin becomes a file name: letters, digits, '_', '-', '.', not starting with '.' (no path tricks).
_SAFE_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
_RETRY_STATUS = {408, 425, 429}  # besides every 5xx; 404/410 and other 4xx are final
_MAX_BYTES = 50 * 1024 * 1024  # refuse bodies larger than this (a product photo is ~50 KB)


@dataclass
class DownloadItem:
    """One image to fetch: its id, the candidate URLs (tried in order) and the lists it came from."""

    asin: str
    urls: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


@dataclass
class ItemResult:
    """Outcome for one id: status is "downloaded", "present" or "dead"; reason says why it is dead."""

    asin: str
    status: str
    path: str | None = None
    url: str | None = None
    reason: str | None = None
    attempts: int = 0


class InvalidImageError(DataError):
    """Bytes that do not decode fully as an image; the message is the report reason."""


class _Final(Exception):
    """A failure that retrying will not fix (404, not an image, ...). The message is the report reason."""


class _Transient(Exception):
    """A failure worth retrying (timeout, connection error, 5xx, truncated body)."""


# --------------------------------------------------------------------------- input lists


def _check_record(path: Path, where: str, asin: object, url: object) -> tuple[str, str]:
    if not isinstance(asin, str) or not _SAFE_ID.fullmatch(asin.strip()):
        raise DataError(f"{path}: {where}: field 'asin' must be a non-empty id of [A-Za-z0-9_.-], got {asin!r}")
    if not isinstance(url, str) or not url.strip():
        raise DataError(f"{path}: {where}: field 'url' must be a non-empty string, got {url!r}")
    return asin.strip(), url.strip()


def parse_url_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read one URL list, in either FashionIQ format.

    Args:
        path: a `.json` file holding a list of {"asin", "url"} objects, or a text file with one
            `asin<TAB>url` per line (whitespace around the fields is ignored; blank lines skipped).
    Returns:
        The (asin, url) pairs in file order (duplicates kept; the caller merges them).
    """
    path = Path(path)
    pairs: list[tuple[str, str]] = []
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of {{asin, url}} objects, got {type(data).__name__}")
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise DataError(f"{path}: record {i}: expected an object with 'asin' and 'url'")
            pairs.append(_check_record(path, f"record {i}", rec.get("asin"), rec.get("url")))
        return pairs
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) != 2:
            raise DataError(f"{path}: line {lineno}: expected 'asin<TAB>url', got {line.strip()[:80]!r}")
        pairs.append(_check_record(path, f"line {lineno}", parts[0], parts[1]))
    return pairs


def find_url_files(urls_dir: str | os.PathLike, categories: list[str] | None = None) -> dict[str, list[Path]]:
    """Find the URL list files of each category in a folder.

    Args:
        urls_dir: folder with `{category}.json` and/or `asin2url.{category}.txt` files.
        categories: the categories wanted; None takes every category found.
    Returns:
        category -> list of its files (both formats when both exist), in sorted category order.
    """
    urls_dir = Path(urls_dir)
    if not urls_dir.is_dir():
        raise DataError(f"{urls_dir}: URL folder not found (expected {{category}}.json or asin2url.{{category}}.txt)")
    found: dict[str, list[Path]] = {}
    for p in sorted(urls_dir.iterdir()):
        if not p.is_file() or p.name == REPORT_NAME or p.name.startswith("."):
            continue
        if p.suffix == ".json":
            found.setdefault(p.stem, []).append(p)
        elif p.name.startswith("asin2url.") and p.suffix == ".txt":
            found.setdefault(p.name[len("asin2url.") : -len(".txt")], []).append(p)
    if categories is None:
        if not found:
            expected = "{category}.json or asin2url.{category}.txt"
            raise DataError(f"{urls_dir}: no URL lists found (expected {expected})")
        return dict(sorted(found.items()))
    missing = [c for c in categories if c not in found]
    if missing:
        raise DataError(
            f"{urls_dir}: no URL list for categor{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} "
            f"(expected {missing[0]}.json or asin2url.{missing[0]}.txt; found: {', '.join(sorted(found)) or 'none'})"
        )
    return {c: found[c] for c in categories}


def collect_items(files: dict[str, list[Path]]) -> list[DownloadItem]:
    """Merge the URL lists of several categories into one item per asin (duplicates fetched once).

    Args:
        files: category -> its URL list files (see `find_url_files`).
    Returns:
        One DownloadItem per distinct asin, in first-seen order; an asin listed with several
        distinct URLs keeps them all as fallbacks, in first-seen order.
    """
    items: dict[str, DownloadItem] = {}
    for category, paths in files.items():
        for path in paths:
            for asin, url in parse_url_file(path):
                item = items.setdefault(asin, DownloadItem(asin))
                if url not in item.urls:
                    item.urls.append(url)
                if category not in item.categories:
                    item.categories.append(category)
    return list(items.values())


# --------------------------------------------------------------------------- image checks


def check_image_bytes(data: bytes) -> str:
    """Check that bytes decode fully as an image: PIL `verify` and then a real `load`.

    Args:
        data: the file content.
    Returns:
        The PIL format name ("JPEG", "PNG", "GIF", ...).
    Raises:
        InvalidImageError with message "empty body", "not an image", "truncated" or "corrupt image: ...".
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidImageError("empty body")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()  # structure / checksums; the image must be reopened afterwards
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode every pixel: catches truncated JPEG bodies that verify() lets through
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not an image") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        msg = str(exc)
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise InvalidImageError("truncated") from exc
        raise InvalidImageError(f"corrupt image: {type(exc).__name__}: {msg[:80]}") from exc
    return fmt or "unknown"


def _to_png_bytes(data: bytes) -> bytes:
    """Re-encode the first frame of a non-JPEG/PNG image losslessly as PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        frame = im.convert("RGBA" if ("A" in im.getbands() or "transparency" in im.info) else "RGB")
    buf = io.BytesIO()
    frame.save(buf, format="PNG")
    return buf.getvalue()


def find_valid_image(out_dir: str | os.PathLike, asin: str) -> Path | None:
    """Return the existing `{asin}.jpg` / `{asin}.png` that decodes fully, deleting corrupt ones.

    Args:
        out_dir: the images folder.
        asin: the image id.
    Returns:
        The path of a valid file, or None when no valid file is there (corrupt files are removed).
    """
    out_dir = Path(out_dir)
    valid = None
    for ext in IMAGE_SUFFIXES:
        p = out_dir / f"{asin}{ext}"
        if not p.is_file():
            continue
        try:
            check_image_bytes(p.read_bytes())
        except InvalidImageError:
            p.unlink(missing_ok=True)  # truncated or corrupt leftover: refetch it
            continue
        if valid is None:
            valid = p
    return valid


# --------------------------------------------------------------------------- HTTP


def _read_body(resp, timeout: float) -> bytes:
    """Read the body in chunks with a total deadline (a trickling server cannot hang a worker)."""
    deadline = time.monotonic() + max(timeout * 10, 30.0)
    chunks, size = [], 0
    while True:
        chunk = resp.read(64 * 1024)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_BYTES:
            raise _Final(f"too large (> {_MAX_BYTES} bytes)")
        if time.monotonic() > deadline:
            raise _Transient("timeout")
    body = b"".join(chunks)
    expected = resp.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and int(expected) != len(body):
        raise _Transient("truncated")
    return body


def _fetch_once(opener: urllib.request.OpenerDirector, url: str, timeout: float) -> bytes:
    """One HTTP GET; returns the body or raises _Final / _Transient with the report reason."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    try:
        with opener.open(req, timeout=timeout) as resp:
            body = _read_body(resp, timeout)
            ctype = resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code >= 500 or exc.code in _RETRY_STATUS:
            raise _Transient(f"http {exc.code}") from exc
        raise _Final(f"http {exc.code}") from exc
    except http.client.IncompleteRead as exc:
        raise _Transient("truncated") from exc
    except TimeoutError as exc:
        raise _Transient("timeout") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _Transient("timeout") from exc
        raise _Transient(f"connection error: {exc.reason}") from exc
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Transient(f"connection error: {type(exc).__name__}") from exc
    try:
        check_image_bytes(body)
    except InvalidImageError as exc:
        if str(exc) == "truncated":  # body cut short without a Content-Length: a dropped connection
            raise _Transient("truncated") from None
        reason = f"not an image ({ctype})" if str(exc) == "not an image" else str(exc)
        raise _Final(reason) from None
    return body


def fetch_image(
    url: str,
    *,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    opener: urllib.request.OpenerDirector | None = None,
    stop: threading.Event | None = None,
) -> tuple[bytes | None, str | None, int]:
    """Fetch one URL as a checked image, retrying transient failures with exponential backoff.

    Timeouts, connection errors, truncated bodies, 5xx (and 408/425/429) are retried after
    backoff * 2**k seconds (k = 0, 1, ...; times a random factor in [0.5, 1.5) so workers do not
    retry in lockstep). 404, 410, other 4xx and bodies that are not images are final at once.

    Args:
        url: http(s) URL.
        timeout: socket timeout in seconds for connecting and for each read.
        retries: extra attempts after the first one for transient failures.
        backoff: base delay in seconds of the exponential backoff.
        opener: urllib opener to reuse (default: urllib's, which follows redirects and honours proxies).
        stop: when set, pending retries are abandoned (used on Ctrl-C).
    Returns:
        (body, None, attempts) on success, or (None, reason, attempts) on failure.
    """
    if not url.lower().startswith(("http://", "https://")):
        return None, "unsupported url scheme", 0
    opener = opener or urllib.request.build_opener()
    attempt = 0
    while True:
        attempt += 1
        try:
            return _fetch_once(opener, url, timeout), None, attempt
        except _Final as exc:
            return None, str(exc), attempt
        except _Transient as exc:
            reason = str(exc)
        if attempt > retries:
            return None, reason, attempt
        delay = backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
        if stop is not None and stop.wait(delay):
            return None, "interrupted", attempt
        if stop is None:
            time.sleep(delay)


def _save(out_dir: Path, asin: str, body: bytes) -> Path:
    """Write a checked image as {asin}.jpg / {asin}.png (see module docstring) and drop the other name."""
    from PIL import Image

    with Image.open(io.BytesIO(body)) as im:
        fmt = im.format
    if fmt == "JPEG":
        ext, data = ".jpg", body
    elif fmt == "PNG":
        ext, data = ".png", body
    else:
        ext, data = ".png", _to_png_bytes(body)
    path = out_dir / f"{asin}{ext}"
    write_bytes_atomic(path, data)
    for other in IMAGE_SUFFIXES:
        if other != ext:
            (out_dir / f"{asin}{other}").unlink(missing_ok=True)
    return path


def _process(
    item: DownloadItem, out_dir: Path, opener, timeout: float, retries: int, backoff: float, stop: threading.Event
) -> ItemResult:
    """Skip a valid existing file, else try the item's URLs in order until one gives an image."""
    existing = find_valid_image(out_dir, item.asin)
    if existing is not None:
        return ItemResult(item.asin, "present", path=str(existing))
    reasons, attempts = [], 0
    for url in item.urls:
        if stop.is_set():
            return ItemResult(item.asin, "dead", url=url, reason="interrupted", attempts=attempts)
        body, reason, n = fetch_image(url, timeout=timeout, retries=retries, backoff=backoff, opener=opener, stop=stop)
        attempts += n
        if body is not None:
            path = _save(out_dir, item.asin, body)
            return ItemResult(item.asin, "downloaded", path=str(path), url=url, attempts=attempts)
        reasons.append(reason)
    return ItemResult(item.asin, "dead", url=item.urls[0] if item.urls else None, reason="; ".join(reasons),
                      attempts=attempts)


# --------------------------------------------------------------------------- driver


def _reason_key(reason: str) -> str:
    """Group reasons for the summary: 'http 404', 'timeout', 'not an image', 'corrupt image', ..."""
    first = reason.split(";")[-1].strip()
    for prefix in ("not an image", "corrupt image", "connection error", "too large"):
        if first.startswith(prefix):
            return prefix
    return first


def download_images(
    items: list[DownloadItem],
    out_dir: str | os.PathLike,
    *,
    workers: int = 16,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    progress: bool | None = None,
    report_extra: dict | None = None,
) -> dict:
    """Download images concurrently into `out_dir`, resumably, and write `download_report.json` there.

    Args:
        items: what to fetch, one DownloadItem per id (see `collect_items`).
        out_dir: images folder; created if missing.
        workers: number of download threads.
        timeout: per-request socket timeout in seconds.
        retries: extra attempts per URL for timeouts, connection errors, truncated bodies and 5xx.
        backoff: base delay (s) of the exponential backoff between attempts.
        progress: tqdm bar; None shows it only on a terminal.
        report_extra: extra fields stored in the report (e.g. the categories).
    Returns:
        The report dict: counts (total, downloaded, present, dead), dead reasons grouped
        (`dead_by_reason`), the dead items with their URL and reason, and run parameters.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)  # temp files of a killed run
    opener = urllib.request.build_opener()
    stop = threading.Event()
    results: list[ItemResult] = []
    counts = {"downloaded": 0, "present": 0, "dead": 0}
    t0 = time.monotonic()
    bar = tqdm(total=len(items), desc="download", unit="img", disable=None if progress is None else not progress)
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zscir-dl")
    interrupted = False
    try:
        futures = [pool.submit(_process, it, out_dir, opener, timeout, retries, backoff, stop) for it in items]
        for fut in cf.as_completed(futures):
            res = fut.result()
            results.append(res)
            counts[res.status] += 1
            bar.update(1)
            bar.set_postfix(counts, refresh=False)
    except BaseException:
        interrupted = True
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
        if not interrupted:
            pool.shutdown(wait=True)
        report = _make_report(items, results, counts, time.monotonic() - t0, interrupted,
                              {"workers": workers, "timeout": timeout, "retries": retries, "backoff": backoff},
                              report_extra or {})
        write_json_atomic(out_dir / REPORT_NAME, report)
    return report


def _make_report(items, results, counts, elapsed, interrupted, params, extra) -> dict:
    cats = {it.asin: it.categories for it in items}
    dead = sorted((r for r in results if r.status == "dead"), key=lambda r: r.asin)
    by_reason: dict[str, int] = {}
    for r in dead:
        by_reason[_reason_key(r.reason or "")] = by_reason.get(_reason_key(r.reason or ""), 0) + 1
    per_category: dict[str, dict[str, int]] = {}
    for r in results:
        for c in cats.get(r.asin, []):
            per_category.setdefault(c, {"downloaded": 0, "present": 0, "dead": 0})[r.status] += 1
    return {
        "total": len(items),
        **counts,
        "complete": not interrupted and len(results) == len(items),
        "dead_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "per_category": dict(sorted(per_category.items())),
        "elapsed_s": round(elapsed, 3),
        **params,
        **extra,
        "dead_items": [
            {"asin": r.asin, "url": r.url, "reason": r.reason, "attempts": r.attempts, "categories": cats.get(r.asin)}
            for r in dead
        ],
    }


def summary_line(report: dict) -> str:
    """One line for the terminal: counts, dead reasons and time."""
    reasons = ", ".join(f"{k}: {v}" for k, v in report["dead_by_reason"].items())
    line = (
        f"{report['total']} images: {report['downloaded']} downloaded, {report['present']} already present, "
        f"{report['dead']} dead" + (f" ({reasons})" if reasons else "") + f" in {report['elapsed_s']:.1f} s"
    )
    return line if report.get("complete", True) else line + " [interrupted]"


def download_fashioniq(
    urls_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    categories: list[str] | None = None,
    **kwargs,
) -> dict:
    """Download the FashionIQ images of some categories into `out_dir` (`images/{asin}.jpg|png`).

    Args:
        urls_dir: folder with `{category}.json` ([{asin, url}]) and/or `asin2url.{category}.txt` lists.
        out_dir: the FashionIQ `images/` folder.
        categories: e.g. ["dress", "shirt"]; None takes every category found in `urls_dir`.
        **kwargs: passed to `download_images` (workers, timeout, retries, backoff, progress).
    Returns:
        The report dict also written to `out_dir/download_report.json` (see `download_images`).
    """
    files = find_url_files(urls_dir, categories)
    items = collect_items(files)
    extra = {"categories": list(files), "url_files": [str(p) for ps in files.values() for p in ps]}
    return download_images(items, out_dir, report_extra=extra, **kwargs)
