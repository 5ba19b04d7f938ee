"""Stable hashes: cache keys and per-item seeds that every process and Python version agree on.

sha256, never Python's `hash()` (salted per process).
"""

from __future__ import annotations

import hashlib
import json


def hash_parts(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (used as cache keys)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


def derived_seed(seed: int, key: str) -> int:
    """A 63-bit integer seed from (seed, key), stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:8], "little") >> 1
