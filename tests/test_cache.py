"""Reply cache (icc_utils.cache): put/get, reload, resume after a kill mid-write."""
from __future__ import annotations

import json

from icc_utils.cache import ReplyCache, cache_key
from icc_utils.io import append_jsonl, read_jsonl


def test_cache_key_is_deterministic_and_sensitive():
    k = cache_key("local", "m", [{"role": "user", "content": "x"}], {"max_new_tokens": 8, "greedy": True})
    assert k == cache_key("local", "m", [{"role": "user", "content": "x"}], {"greedy": True, "max_new_tokens": 8})
    assert len(k) == 64
    others = [cache_key("openai", "m", [{"role": "user", "content": "x"}], {"max_new_tokens": 8, "greedy": True}),
              cache_key("local", "m2", [{"role": "user", "content": "x"}], {"max_new_tokens": 8, "greedy": True}),
              cache_key("local", "m", [{"role": "user", "content": "y"}], {"max_new_tokens": 8, "greedy": True}),
              cache_key("local", "m", [{"role": "user", "content": "x"}], {"max_new_tokens": 9, "greedy": True})]
    assert len({k, *others}) == 5


def test_put_get_and_reload(tmp_path):
    path = tmp_path / "replies.jsonl"
    c = ReplyCache(path)
    assert len(c) == 0 and c.get("a") is None and "a" not in c
    c.put("a", {"reply": "[0, 1]", "usage": {"prompt_tokens": 3}})
    c.put("b", {"reply": "ü [1]"})
    assert c.get("a")["reply"] == "[0, 1]" and "a" in c and len(c) == 2
    assert path.read_text(encoding="utf-8").count("\n") == 2  # appended at once, one line each
    again = ReplyCache(path)
    assert len(again) == 2
    assert again.get("a") == {"reply": "[0, 1]", "usage": {"prompt_tokens": 3}, "key": "a"}
    assert again.get("b")["reply"] == "ü [1]"
    # a later put for the same key wins on reload
    again.put("a", {"reply": "[1, 1]"})
    assert ReplyCache(path).get("a")["reply"] == "[1, 1]"


def test_in_memory_cache():
    c = ReplyCache(None)
    c.put("k", {"reply": "x"})
    assert c.get("k")["reply"] == "x" and len(c) == 1


def test_truncated_last_line_is_skipped_and_next_append_starts_on_a_new_line(tmp_path):
    path = tmp_path / "replies.jsonl"
    c = ReplyCache(path)
    c.put("a", {"reply": "[0]"})
    c.put("b", {"reply": "[1]"})
    # a kill in the middle of the third write leaves half a line
    full = json.dumps({"reply": "[2]", "key": "c"})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(full[: len(full) // 2])
    resumed = ReplyCache(path)
    assert len(resumed) == 2 and resumed.get("c") is None
    resumed.put("c", {"reply": "[2]"})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[-1] == json.dumps({"key": "c", "reply": "[2]"}, sort_keys=True)
    assert len(lines) == 4  # a, b, the broken half line, c on its own line
    final = ReplyCache(path)
    assert len(final) == 3 and final.get("c")["reply"] == "[2]"


def test_read_jsonl_skips_blank_and_broken_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n{"a": 2}\n')
    assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}]
    assert list(read_jsonl(tmp_path / "missing.jsonl")) == []
    append_jsonl(path, {"a": 3})
    assert list(read_jsonl(path))[-1] == {"a": 3}


def test_atomic_writes_have_ordinary_permissions(tmp_path):
    """Files written atomically are readable by others like any file the user writes (not mkstemp's 0600)."""
    import os
    import stat

    from icc_utils.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "table.csv", "a,b\n")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_bad_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    """Invalid UTF-8, JSON that is not a record, a record without key or reply: each line is skipped, the rest kept."""
    import pytest

    path = tmp_path / "replies.jsonl"
    good = [json.dumps({"key": k, "reply": f"[{i}]"}) for i, k in enumerate("abc")]
    lines = [good[0].encode(), b'{"key": "x", "reply": "\xff\xfe"}', b"[1, 2, 3]", b"42", b'"text"',
             good[1].encode(), b'{"reply": "[9]"}', b'{"key": "y"}', good[2].encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.warns(UserWarning) as caught:
        cache = ReplyCache(path)
    assert len(cache) == 3 and [cache.get(k)["reply"] for k in "abc"] == ["[0]", "[1]", "[2]"]
    messages = [str(w.message) for w in caught]
    assert [m.split(": skipped")[0] for m in messages] == [f"{path}, line {n}" for n in (2, 3, 4, 5, 7, 8)]
    assert "invalid UTF-8" in messages[0] and "not a record" in messages[1]
    cache.put("d", {"reply": "[3]"})  # appending still works, and the file reads back
    with pytest.warns(UserWarning):
        assert len(ReplyCache(path)) == 4
