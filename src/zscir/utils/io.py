"""Atomic file writes, stale-temp cleanup and small JSON helpers shared by every long job.

Temp files are created with the mode `open()` would give (0666 minus the umask), not mkstemp's 0600,
so colleagues on a shared machine can read what zscir writes when the umask allows it. Their names
carry the writing process (`.{name}.{pid}-{host}-{random}.tmp`), so the next run can tell the temp
files of a killed writer (stale: removed by `remove_stale_temps`) from those of a live one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zscir.errors import DataError

TEMP_SUFFIX = ".tmp"
# .{name}.{pid}-{host}-{8 hex}.tmp (atomic_path) and the older mkstemp form .{name}.{8 chars}.tmp
_TEMP_RE = re.compile(r"^\..+\.(?:(?P<pid>\d+)-(?P<host>.*)-[0-9a-f]{8}|[A-Za-z0-9_]{8})\.tmp$")
# temp folders of the training loop and the demo: .tmp-{name}, .old-{name}, .{name}.tmp
_TEMP_DIR_RE = re.compile(r"^\.(?:tmp-.+|old-.+|.+\.tmp)$")
STALE_AFTER_S = 3600.0  # a temp file of another host (or without an owner) untouched this long is stale
PID_REUSE_AFTER_S = 86400.0  # past this age a live pid on this host is taken for a reused one


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def temp_name(path: Path) -> str:
    """The temp-file name atomic_path uses for `path` (owner pid and host in it)."""
    return f".{path.name}.{os.getpid()}-{_host()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it is renamed onto `path`.

    An interrupted writer leaves no half-written file under the final name (and the next run's
    `remove_stale_temps` removes its temp file). The file gets the umask's mode (0666 & ~umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp_path = path.parent / temp_name(path)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode: 0666 minus the umask
            break
        except FileExistsError:  # 32 random bits collided: draw again
            continue
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        yield tmp_path
        if tmp_path.exists() and (tmp_path.stat().st_mode & 0o777) != mode:
            os.chmod(tmp_path, mode)  # writers that replace the file (safetensors: always 0600) lose the mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def umask_file_mode(folder: str | os.PathLike) -> int:
    """The mode a new file gets in `folder` under the current umask (probed: reading the umask is not thread-safe)."""
    probe = Path(folder) / temp_name(Path("mode-probe"))
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def apply_umask_modes(folder: str | os.PathLike) -> None:
    """Give every file under a folder zscir just wrote the umask's mode.

    Library writers zscir calls (safetensors, hence every `save_pretrained`) create 0600 files whatever the
    umask; call this on the finished temp folder before it is renamed into place.
    """
    folder = Path(folder)
    mode = umask_file_mode(folder)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale_temp(path: Path, now: float | None = None, stale_after: float = STALE_AFTER_S) -> bool:
    """True for a temp file that no live writer owns.

    A temp file of this host is stale when its writer's pid is gone; one of another host (a shared
    file system) or of the older unnamed form when it was not modified for `stale_after` seconds (as is
    one of this host untouched for a day: its pid is then taken for a reused one).
    """
    match = _TEMP_RE.match(path.name)
    if match is None:
        return False
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    pid, host = match.group("pid"), match.group("host")
    if pid is not None and host == _host() and age <= PID_REUSE_AFTER_S:
        return int(pid) != os.getpid() and not _pid_alive(int(pid))
    return age > stale_after


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False, temp_dirs: bool = False) -> int:
    """Delete the temp files that killed runs left in `folder` (see `is_stale_temp`); live writers' stay.

    Args:
        folder: the output folder of a long job (missing folders are fine).
        recursive: also look in sub-folders.
        temp_dirs: also delete temp folders (`.tmp-*`, `.old-*`, `.*.tmp`) directly in `folder`, whatever
            their age: only for a folder that one run writes at a time (a training run's own folder).
    Returns:
        How many files and folders were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    candidates = folder.rglob(f"*{TEMP_SUFFIX}") if recursive else folder.glob(f"*{TEMP_SUFFIX}")
    stale = [p for p in candidates if p.is_file() and is_stale_temp(p)]
    if temp_dirs:
        stale += [p for p in folder.iterdir() if p.is_dir() and _TEMP_DIR_RE.match(p.name)]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(stale)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _first_non_finite(obj: Any, where: str = "") -> str | None:
    """JSON path of the first NaN/inf float in `obj`, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    if isinstance(obj, dict):
        children = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    return next((found for path, v in children if (found := _first_non_finite(v, path))), None)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as strict JSON to `path` atomically.

    Raises:
        ValueError: `obj` holds NaN or infinity (not valid JSON; the message names the field). Callers
            record such a value as null (or leave it out) explicitly.
    """
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path}: refusing to write a non-finite number at {_first_non_finite(obj)} "
                         "(NaN/inf is not JSON)") from None
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))


MAX_JSON_DEPTH = 64  # real annotation files nest 3 levels; a deeper file is refused before json recurses


def _check_depth(text: str, limit: int) -> int | None:
    """Position where bracket nesting (outside strings) exceeds `limit`, else None. Linear scan."""
    depth, in_string, escape = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return i
        elif ch in "]}":
            depth -= 1
    return None


def parse_json_text(text: str, source: str | os.PathLike, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text, refusing nesting deeper than `max_depth` (json would hit the recursion limit).

    Raises:
        DataError: malformed or too deeply nested (the message names `source` and the position).
    """
    deep = _check_depth(text, max_depth)
    if deep is not None:
        line = text.count("\n", 0, deep) + 1
        raise DataError(f"{source}: JSON nested deeper than {max_depth} levels (at line {line}); "
                        "expected an annotation file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except RecursionError:
        raise DataError(f"{source}: JSON nested too deeply") from None


def read_text_utf8(path: str | os.PathLike) -> str:
    """Read a text file as UTF-8 (a BOM is accepted).

    Raises:
        DataError: missing file, or bytes that are not UTF-8 (the message names the byte offset).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                        "save the file as UTF-8") from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing, non-UTF-8, malformed or absurdly nested file raises DataError naming it."""
    return parse_json_text(read_text_utf8(path), path)
