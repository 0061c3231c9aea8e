"""Robust parsing of model replies into cluster labels (docs/protocol.md, "Parsing" and "Metrics").

The parser never raises on a reply and runs in time linear in its length: its patterns use
possessive quantifiers (no backtracking inside a list) and the ``index: label`` pattern starts only
at the first digit of a number, so no part of the reply is rescanned. A number too long to be a
label (more than :data:`MAX_DIGITS` digits) reads as invalid instead of meeting Python's limit on
converting long digit strings.
"""
from __future__ import annotations

import re

from .prompts import check_answer_format

INVALID = -1
#: Digits beyond which an integer in a reply is not converted (it is no cluster label anyway).
MAX_DIGITS = 64
_INT_LIST = re.compile(r"\[\s*+(-?\d++(?:\s*+,\s*+-?\d++)*+)\s*+,?+\s*+\]")
#: A list cut off by the token budget: it opens, holds integers, and the reply ends inside it.
_CUT_LIST = re.compile(r"\[\s*+(-?\d++(?:\s*+,\s*+-?\d++)*+)\s*+,?+\s*+\Z")
#: One ``index: label`` pair of the ``indexed`` answer format (a labelled ablation, see prompts).
_PAIR = re.compile(r"(?<!\d)(\d++)\s*+:\s*+(-?\d++)(?![.\d])")


def _to_int(token: str) -> int | None:
    """``int(token)`` for a ``-?digits`` token (spaces around allowed), or None beyond :data:`MAX_DIGITS` digits."""
    token = token.strip()
    if len(token.lstrip("-").lstrip("0")) > MAX_DIGITS:
        return None
    return int(token)


def _pairs(reply: str) -> list[tuple[int, int]]:
    """The reply's ``(index, label)`` pairs in order (``indexed`` format); a number too long to be an
    index or a label reads as -1."""
    out = []
    for i, l in _PAIR.findall(reply):
        index, label = _to_int(i), _to_int(l)
        out.append((INVALID if index is None else index, INVALID if label is None else label))
    return out


def _lists(reply: str) -> tuple[list[str] | None, list[str] | None]:
    """(items of the first closed list of integers, items of a list the reply ends inside), either None."""
    match = _INT_LIST.search(reply)
    if match is not None:
        return match.group(1).split(","), None
    cut = _CUT_LIST.search(reply)
    return None, (None if cut is None else cut.group(1).split(","))


def _first_list(reply) -> list[str] | None:
    """The items of the reply's first list of integers (closed, or cut off at the end), or None."""
    closed, cut = _lists(reply)
    return closed if closed is not None else cut


def parse_labels(reply, n_points: int, answer_format: str = "paper") -> list[int]:
    """Labels from the first list of integers in ``reply``; never raises on the reply.

    Too short: padded with -1 (counted wrong, never matched to a true cluster); too long:
    truncated; nothing parseable (or not a string): all -1. Negative labels become -1.
    If the reply holds no closed list but ends inside one (``"[0, 1, 0, 1, 1"``: the token budget
    ran out while the model was still writing labels), that list is read and padded or truncated
    the same way; :func:`is_well_formed` still counts such a reply as malformed.
    ``answer_format="indexed"``: point i's label is that of the first ``i: label`` pair (1-based);
    points without a pair get -1.
    """
    check_answer_format(answer_format)
    try:
        n = max(int(n_points), 0)
    except (TypeError, ValueError):
        return []
    if not isinstance(reply, str):
        return [INVALID] * n
    if answer_format == "indexed":
        labels = [INVALID] * n
        for i, label in reversed(_pairs(reply)):   # reversed: the first pair for an index wins
            if 1 <= i <= n:
                labels[i - 1] = label if label >= 0 else INVALID
        return labels
    items = _first_list(reply)
    if items is None:
        return [INVALID] * n
    labels = []
    for tok in items[:n]:
        v = _to_int(tok)
        labels.append(v if v is not None and v >= 0 else INVALID)
    labels = labels[:n]
    return labels + [INVALID] * (n - len(labels))


def n_labels_written(reply, answer_format: str = "paper") -> int:
    """How many integers the reply's first list holds (closed, or cut off at the end as in
    :func:`parse_labels`; ``indexed``: how many ``index: label`` pairs); 0 if it has none. Compared
    with the number of points, it tells a reply that lost count from one that got the count right and
    the labels wrong."""
    check_answer_format(answer_format)
    if not isinstance(reply, str):
        return 0
    if answer_format == "indexed":
        return len(_pairs(reply))
    items = _first_list(reply)
    return 0 if items is None else len(items)


def is_well_formed(reply, n_points: int, n_clusters: int | None = None, answer_format: str = "paper") -> bool:
    """Whether the reply holds a list of exactly ``n_points`` labels (in ``0..n_clusters-1`` if given);
    ``indexed``: the pairs ``1: l1, ..., n: ln`` in order and nothing more, and the list closed."""
    check_answer_format(answer_format)
    if not isinstance(reply, str):
        return False
    if answer_format == "indexed":
        pairs = _pairs(reply)
        if [i for i, _ in pairs] != list(range(1, n_points + 1)) or "]" not in reply:
            return False
        vals = [l for _, l in pairs]
    else:
        items = _lists(reply)[0]
        if items is None:
            return False
        vals = [_to_int(t) for t in items]
        if any(v is None for v in vals):
            return False
    if len(vals) != n_points:
        return False
    return all(0 <= v < n_clusters for v in vals) if n_clusters is not None else all(v >= 0 for v in vals)
