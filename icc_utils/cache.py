"""Reply cache: every model reply is appended to a JSON Lines file the moment it arrives.

The key is a sha256 of (backend, model, prompt, decoding settings). Rerunning a notebook reuses
cached replies; a run killed half-way loses nothing already answered and, rerun, gives the same
tables. A line that cannot be read (cut short by a kill, invalid UTF-8, JSON that is not a record
with a key and a reply) is skipped with a warning naming the file and the line; the rest is kept.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Iterator

from .io import append_jsonl


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
            for rec in read_records(self.path):
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


def _line_problem(raw: bytes) -> tuple[dict | None, str]:
    """The record on one line of a cache file, or None and why it is not one."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 ({exc.reason} at byte {exc.start})"
    except ValueError:
        return None, "not JSON (cut short by a kill?)"
    if not isinstance(rec, dict):
        return None, f"JSON {type(rec).__name__}, not a record"
    if not isinstance(rec.get("key"), str) or "reply" not in rec:
        return None, "a record without a string 'key' and a 'reply'"
    return rec, ""


def read_records(path: str | Path) -> Iterator[dict]:
    """The records of a reply cache file, in order; each unreadable line is skipped with a warning
    naming the file and the line (1-based). A missing file has none."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            rec, problem = _line_problem(raw.strip())
            if rec is None:
                warnings.warn(f"{path}, line {number}: skipped, {problem}; the other lines are kept", stacklevel=3)
                continue
            yield rec
