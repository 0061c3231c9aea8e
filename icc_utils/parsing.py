"""Robust parsing of model replies into cluster labels (PROTOCOL.md, "Parsing and metrics")."""
from __future__ import annotations

import re

INVALID = -1
_INT_LIST = re.compile(r"\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*,?\s*\]")
#: A list cut off by the token budget: it opens, holds integers, and the reply ends inside it.
_CUT_LIST = re.compile(r"\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*,?\s*\Z")


def _first_list(reply) -> list[str] | None:
    """The items of the reply's first list of integers (closed, or cut off at the end), or None."""
    match = _INT_LIST.search(reply) or _CUT_LIST.search(reply)
    return None if match is None else match.group(1).split(",")


def parse_labels(reply, n_points: int) -> list[int]:
    """Labels from the first list of integers in ``reply``; never raises.

    Too short: padded with -1 (counted wrong, never matched to a true cluster); too long:
    truncated; nothing parseable (or not a string): all -1. Negative labels become -1.
    If the reply holds no closed list but ends inside one (``"[0, 1, 0, 1, 1"``: the token budget
    ran out while the model was still writing labels), that list is read and padded or truncated
    the same way; :func:`is_well_formed` still counts such a reply as malformed.
    """
    try:
        n = max(int(n_points), 0)
    except (TypeError, ValueError):
        return []
    if not isinstance(reply, str):
        return [INVALID] * n
    items = _first_list(reply)
    if items is None:
        return [INVALID] * n
    labels = []
    for tok in items:
        try:
            v = int(tok.strip())
        except ValueError:  # pragma: no cover - the regex only admits integers
            v = INVALID
        labels.append(v if v >= 0 else INVALID)
    labels = labels[:n]
    return labels + [INVALID] * (n - len(labels))


def n_labels_written(reply) -> int:
    """How many integers the reply's first list holds (closed, or cut off at the end as in
    :func:`parse_labels`); 0 if it has none. Compared with the number of points, it tells a reply that
    lost count from one that got the count right and the labels wrong."""
    if not isinstance(reply, str):
        return 0
    items = _first_list(reply)
    return 0 if items is None else len(items)


def is_well_formed(reply, n_points: int, n_clusters: int | None = None) -> bool:
    """Whether the reply holds a list of exactly ``n_points`` labels (in ``0..n_clusters-1`` if given)."""
    if not isinstance(reply, str):
        return False
    match = _INT_LIST.search(reply)
    if match is None:
        return False
    vals = [int(t.strip()) for t in match.group(1).split(",")]
    if len(vals) != n_points:
        return False
    return all(0 <= v < n_clusters for v in vals) if n_clusters is not None else all(v >= 0 for v in vals)
