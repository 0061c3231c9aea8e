"""Which tokens belong to which data point, and which token is each answer label.

Each data point is written as an inner list ``[x1, x2, ...]`` inside the prompt's data string
(:func:`icc_utils.prompts.format_points`). :func:`encode_episode` renders the prompt with the
model's chat template, finds the data string in it, parses the character span of every inner
list (bracket to bracket, both included) and maps tokens to points with the tokenizer's offset
mapping (fast tokenizers only). No bracket token ids, no assumption of a BOS token.

*Tokens that straddle a boundary* (``'],'``, ``' ['``, ``' [-'``, ``'[['``): a token belongs to
point ``i`` if its character span overlaps point ``i``'s span; a token that overlaps two points
(only possible for merged tokens such as ``'], ['``) goes to the point it shares most characters
with, ties to the earlier point. Tokens with an empty span (special tokens) belong to no point.
Every point must own at least one token, otherwise we raise. So ``' [-'`` belongs to the point it
opens, ``'],'`` to the point it closes, and the outer ``'[['`` to the first point.

*Label tokens.* For ``A^OI`` and ``A^OO`` (eq. 3) the prompt is followed by an answer
``[l0, l1, ...]`` (rendered with the chat template as an assistant turn). Label ``i``'s token is
the one token whose offsets cover the label's digits; a label split over several tokens, or one
token covering two labels, raises :class:`LabelTokenError` (the paper's definition needs one
token per label).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["LabelTokenError", "EpisodeTokens", "point_char_spans", "label_char_spans", "assign_tokens_to_points",
           "label_token_positions", "encode_episode"]


class LabelTokenError(ValueError):
    """A cluster label of the answer is not exactly one token (eq. 3 needs one token per label)."""


# ---------------------------------------------------------------- character spans

def point_char_spans(data: str, offset: int = 0) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of every inner list of a data string ``[[..], [..], ...]``.

    The string is parsed by bracket depth: an inner list runs from a ``[`` at depth 1 to its
    matching ``]`` (both included). ``offset`` is added to every span (the data string's position
    in the rendered prompt). Raises ``ValueError`` if the string is not a list of lists.
    """
    spans, depth, start = [], 0, None
    for i, ch in enumerate(data):
        if ch == "[":
            depth += 1
            if depth == 2:
                start = i
            elif depth > 2:
                raise ValueError(f"data string nests deeper than a list of lists at character {i}: {data[:60]!r}")
        elif ch == "]":
            if depth == 2:
                spans.append((offset + start, offset + i + 1))
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' at character {i} of the data string {data[:60]!r}")
    if depth != 0 or not data.lstrip().startswith("["):
        raise ValueError(f"the data string is not a list of lists: {data[:60]!r}")
    return spans


def label_char_spans(answer: str, offset: int = 0) -> list[tuple[int, int]]:
    """Character spans of the integers of an answer ``[0, 1, 0, ...]`` (plus ``offset``)."""
    return [(offset + m.start(), offset + m.end()) for m in re.finditer(r"-?\d+", answer)]


def _overlaps(token_spans: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """``overlap[t, i]`` = number of characters token ``t`` shares with span ``i`` (T x m)."""
    a, b = token_spans[:, :1], token_spans[:, 1:2]
    s, e = spans[None, :, 0], spans[None, :, 1]
    return np.clip(np.minimum(b, e) - np.maximum(a, s), 0, None)


def assign_tokens_to_points(offsets: Sequence[Sequence[int]], spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Point index of every token (``-1``: no point), by the overlap rule of this module's docstring.

    ``offsets``: the tokenizer's ``(start, end)`` character offsets per token; ``spans``: the
    points' character spans. Raises ``ValueError`` if some point owns no token.
    """
    tok = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    ov = _overlaps(tok, sp)
    owner = np.where(ov.max(axis=1) > 0, ov.argmax(axis=1), -1)  # argmax: ties go to the earlier point
    counts = np.bincount(owner[owner >= 0], minlength=len(sp))
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"points {missing} own no token: the offsets do not cover their character spans "
                         "(is the tokenizer a fast tokenizer with offsets?)")
    return owner


def label_token_positions(offsets: Sequence[Sequence[int]], label_spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Token index of every label: the single token covering the label's characters.

    Raises :class:`LabelTokenError` if a label spans several tokens or shares a token with another label.
    """
    tok = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    sp = np.asarray(label_spans, dtype=np.int64).reshape(-1, 2)
    ov = _overlaps(tok, sp)
    out = []
    for i in range(len(sp)):
        hits = np.flatnonzero(ov[:, i] > 0)
        if len(hits) != 1 or ov[hits[0], i] != sp[i, 1] - sp[i, 0]:
            raise LabelTokenError(f"label {i} (characters {tuple(sp[i])}) is split over tokens {hits.tolist()}: "
                                  "A^OI/A^OO need each cluster label to be one token")
        if (ov[hits[0]] > 0).sum() != 1:
            raise LabelTokenError(f"token {hits[0]} covers label {i} and another label: "
                                  "A^OI/A^OO need one token per label")
        out.append(int(hits[0]))
    return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------- one episode's tokens

@dataclass
class EpisodeTokens:
    """A rendered episode: token ids, the point of every token and the label tokens."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    point_of_token: np.ndarray  # (T,) point index or -1
    label_positions: np.ndarray | None  # (m,) token index of each label, or None (prompt only)
    n_points: int

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def point_tokens(self, i: int) -> np.ndarray:
        """Token indices of point ``i`` (contiguous)."""
        return np.flatnonzero(self.point_of_token == i)

    def segments(self) -> list[tuple[int, int]]:
        """``(s_i, e_i)`` first and last token index of every point (the paper's notation)."""
        return [(int(t[0]), int(t[-1])) for t in (self.point_tokens(i) for i in range(self.n_points))]


def encode_episode(tokenizer, points: Sequence[Sequence[float]], n_clusters: int | None,
                   labels: Sequence[int] | None = None) -> EpisodeTokens:
    """Render the paper's prompt with the tokenizer's chat template (plus the answer ``labels`` as the
    assistant turn, if given), tokenize it with offsets and locate points and labels.

    ``n_clusters=None`` gives the unknown-k prompt. Needs a fast tokenizer (offset mapping).
    """
    from ..prompts import answer_text, build_messages, format_points, render_chat

    messages = build_messages(points, n_clusters)
    prompt = render_chat(tokenizer, messages)
    data = format_points(points)
    starts = [m.start() for m in re.finditer(re.escape(data), prompt)]
    if len(starts) != 1:
        raise ValueError(f"the data string occurs {len(starts)} times in the rendered prompt (expected once); "
                         "the chat template must keep the user's text verbatim")
    spans = point_char_spans(data, starts[0])
    if len(spans) != len(points):
        raise ValueError(f"parsed {len(spans)} inner lists from the data string, expected {len(points)}")
    text, lab_spans = prompt, None
    if labels is not None:
        answer = answer_text(labels)
        text = render_chat(tokenizer, messages, answer=answer)
        pos = text.find(answer, len(prompt))
        if not text.startswith(prompt) or pos < 0:
            raise ValueError("the chat template does not render prompt + answer as prompt followed by the answer")
        lab_spans = label_char_spans(answer, pos)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: offsets are needed")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(map(int, o)) for o in enc["offset_mapping"]]
    owner = assign_tokens_to_points(offsets, spans)
    lab_pos = label_token_positions(offsets, lab_spans) if lab_spans is not None else None
    return EpisodeTokens(text=text, input_ids=list(enc["input_ids"]), offsets=offsets, point_of_token=owner,
                         label_positions=lab_pos, n_points=len(points))
