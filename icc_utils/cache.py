"""Reply cache: every model reply is appended to a JSON Lines file the moment it arrives.

The key is a sha256 of (backend, model, prompt, decoding settings). Rerunning a notebook reuses
cached replies; a run killed half-way loses nothing already answered and, rerun, gives the same
tables.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .io import append_jsonl, read_jsonl


def cache_key(backend: str, model: str, prompt, decoding: dict) -> str:
    """sha256 of the canonical JSON of (backend, model, prompt, decoding)."""
    blob = json.dumps({"backend": backend, "model": model, "prompt": prompt, "decoding": decoding},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyCache:
    """Append-only reply store backed by one JSON Lines file (``None`` path: in memory only)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._store: dict[str, dict] = {}
        if self.path is not None:
            for rec in read_jsonl(self.path):
                if "key" in rec:
                    self._store[rec["key"]] = rec

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def get(self, key: str) -> dict | None:
        """The cached record for ``key`` (with at least ``reply``), or None."""
        return self._store.get(key)

    def put(self, key: str, record: dict) -> None:
        """Store a record (must hold ``reply``) and append it to the file at once."""
        rec = {**record, "key": key}
        self._store[key] = rec
        if self.path is not None:
            append_jsonl(self.path, rec)
