"""Constrained decoding: force a reply to be exactly ``[l0, l1, ..., l_{n-1}]`` then end of turn.

The valid replies are the canonical answers of :func:`icc_utils.prompts.answer_text`: ``n``
labels from ``0..c-1`` (no leading zeros), separated by ``", "``, inside square brackets.
Unknown k (``c=None``) allows the labels ``0..min(n, 10)-1``.

The constraint is tokenizer-agnostic. Once per tokenizer we collect the vocabulary tokens
whose text consists only of characters from ``"[], 0123456789"`` (SmolLM2 writes ``", "`` as
``','`` + ``' '``; Llama-3 BPE has multi-digit tokens and tokens such as ``'[['`` or ``' ['``;
Qwen2 splits digits). At every step a token is allowed iff the text generated so far plus the
token's text is still a prefix of some valid answer; end of sequence is allowed only once the
answer is complete. The allowed set depends only on a small canonical state of a
deterministic automaton (phase, digits of the label being written, labels still to write,
capped), so it is computed once per state and reused across steps, rows and episodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ANSWER_CHARS = frozenset("[], 0123456789")
_DIGITS = frozenset("0123456789")

# automaton phases
START, LABEL_START, IN_LABEL, AFTER_COMMA, DONE = range(5)


def max_label(n_points: int, n_clusters: int | None) -> int:
    """The largest allowed label: ``c-1``, or ``min(n, 10)-1`` when k is unknown (``c=None``)."""
    if n_clusters is None:
        return max(min(int(n_points), 10), 1) - 1
    if int(n_clusters) < 1:
        raise ValueError(f"n_clusters={n_clusters!r} is out of range; it must be >= 1 (or None for unknown k)")
    return int(n_clusters) - 1


def longest_answer_chars(n_points: int, n_clusters: int | None) -> int:
    """Characters of the longest valid answer (an upper bound on its number of tokens)."""
    n = int(n_points)
    width = len(str(max_label(n, n_clusters)))
    return 2 + n * width + max(n - 1, 0) * 2


def _label_ok(digits: str, top: int) -> bool:
    """Whether ``digits`` is a (complete) label in ``0..top``; canonical, so no leading zeros.

    Every valid prefix of a label is itself a label (``"1"`` before ``"12"``), so prefix
    validity and completeness coincide.
    """
    if digits == "0":
        return True
    return digits[0] != "0" and int(digits) <= top


@dataclass(frozen=True)
class AnswerState:
    """Where a partial answer stands: phase, labels completed, digits of the current label."""

    phase: int = START
    done_labels: int = 0
    digits: str = ""


def advance(state: AnswerState | None, text: str, n_points: int, top: int) -> AnswerState | None:
    """The state after reading ``text`` from ``state``; None once the text leaves the valid answers."""
    if state is None:
        return None
    phase, k, digits = state.phase, state.done_labels, state.digits
    n = n_points
    for ch in text:
        if phase == START:
            if ch != "[":
                return None
            phase = LABEL_START
        elif phase == LABEL_START:
            if ch in _DIGITS and k < n:
                if not _label_ok(ch, top):
                    return None
                phase, digits = IN_LABEL, ch
            elif ch == "]" and k == n:  # only for n == 0: "[]"
                phase = DONE
            else:
                return None
        elif phase == IN_LABEL:
            if ch in _DIGITS:
                if digits == "0" or not _label_ok(digits + ch, top):
                    return None
                digits += ch
            elif ch == "," and k + 1 < n:
                phase, k, digits = AFTER_COMMA, k + 1, ""
            elif ch == "]" and k + 1 == n:
                phase, k, digits = DONE, k + 1, ""
            else:
                return None
        elif phase == AFTER_COMMA:
            if ch != " ":
                return None
            phase = LABEL_START
        else:  # DONE: nothing may follow
            return None
    return AnswerState(phase, k, digits)


def is_valid_answer_prefix(text: str, n: int, c: int | None) -> bool:
    """Whether ``text`` is a prefix of some valid answer: ``n`` labels in ``0..c-1`` written
    ``[l0, l1, ...]`` exactly as :func:`icc_utils.prompts.answer_text` writes them.

    ``c=None`` (unknown k) allows the labels ``0..min(n, 10)-1``. The empty string is a prefix.
    """
    if not isinstance(text, str) or int(n) < 0:
        return False
    return advance(AnswerState(), text, int(n), max_label(n, c)) is not None


def is_complete_answer(text: str, n: int, c: int | None) -> bool:
    """Whether ``text`` is exactly a valid answer (the constrained decoder ends only there)."""
    if not isinstance(text, str) or int(n) < 0:
        return False
    st = advance(AnswerState(), text, int(n), max_label(n, c))
    return st is not None and st.phase == DONE


# ---------------------------------------------------------------- vocabulary

def token_texts(tokenizer) -> list[str]:
    """Text of every token id ``0..len(tokenizer)-1`` as it reads inside a longer reply.

    A token is decoded after an anchor token and the anchor's own text is removed, so that
    SentencePiece-style tokenizers keep a token's leading space (``decode([id])`` drops it);
    for byte-level BPE (Llama-3, Qwen2, SmolLM2) this equals ``decode([id])``.
    """
    size = len(tokenizer)
    kw = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)
    anchor_ids = tokenizer.encode("0", add_special_tokens=False)
    plain = tokenizer.batch_decode([[i] for i in range(size)], **kw)
    if not anchor_ids:
        return plain
    anchor = anchor_ids[-1]
    prefix = tokenizer.decode([anchor], **kw)
    paired = tokenizer.batch_decode([[anchor, i] for i in range(size)], **kw)
    return [p[len(prefix):] if p.startswith(prefix) else t for p, t in zip(paired, plain)]


@dataclass
class AnswerVocabulary:
    """The candidate tokens of one tokenizer and the memoised allowed sets per automaton state."""

    vocab_size: int
    candidates: list[tuple[int, str]]
    eos_ids: tuple[int, ...]
    _memo: dict = field(default_factory=dict, repr=False)
    _tensors: dict = field(default_factory=dict, repr=False)

    @property
    def max_token_chars(self) -> int:
        return max((len(t) for _, t in self.candidates), default=1)

    def _key(self, state: AnswerState, n: int, top: int) -> tuple:
        # A token of m characters completes at most m labels, so the number of labels still to
        # write only matters up to max_token_chars + 1: the state is canonical beyond that.
        remaining = min(n - state.done_labels, self.max_token_chars + 1)
        return (state.phase, state.digits, remaining, top)

    def allowed_ids(self, state: AnswerState, n: int, top: int) -> list[int]:
        """Token ids allowed from ``state`` (EOS ids only once the answer is complete)."""
        key = self._key(state, n, top)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        if state.phase == DONE:
            ids = list(self.eos_ids)
        else:
            ids = [tid for tid, text in self.candidates if advance(state, text, n, top) is not None]
            if not ids:  # a vocabulary that cannot continue: end rather than emit garbage
                ids = list(self.eos_ids)
        self._memo[key] = ids
        return ids

    def allowed_tensor(self, state: AnswerState, n: int, top: int, device):
        import torch

        key = (self._key(state, n, top), str(device))
        t = self._tensors.get(key)
        if t is None:
            t = torch.tensor(self.allowed_ids(state, n, top), dtype=torch.long, device=device)
            self._tensors[key] = t
        return t


_VOCABS: dict[int, tuple[object, AnswerVocabulary]] = {}


def answer_vocabulary(tokenizer, eos_ids=None) -> AnswerVocabulary:
    """The (memoised) :class:`AnswerVocabulary` of a tokenizer."""
    if eos_ids is None:
        eos_ids = [tokenizer.eos_token_id]
    eos = tuple(sorted({int(e) for e in eos_ids if e is not None}))
    key = id(tokenizer)
    hit = _VOCABS.get(key)
    if hit is not None and hit[0] is tokenizer and hit[1].eos_ids == eos:
        return hit[1]
    texts = token_texts(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    candidates = [(i, t) for i, t in enumerate(texts) if t and i not in special and set(t) <= ANSWER_CHARS]
    vocab = AnswerVocabulary(vocab_size=len(texts), candidates=candidates, eos_ids=eos)
    _VOCABS[key] = (tokenizer, vocab)  # keeps the tokenizer alive so its id cannot be reused
    return vocab


# ---------------------------------------------------------------- logits processor

try:  # transformers is a dependency of the package, but keep this module importable without it
    from transformers import LogitsProcessor as _LogitsProcessorBase
except Exception:  # pragma: no cover
    _LogitsProcessorBase = object


class AnswerConstraintProcessor(_LogitsProcessorBase):
    """A ``transformers.LogitsProcessor`` forcing each row to a valid answer for its own (n, c).

    Use one instance per ``generate`` call: it remembers the prompt length at its first call
    and follows each row's state incrementally from the tokens generated since.
    """

    def __init__(self, tokenizer, n_points, n_clusters=None, eos_ids=None):
        n_points = [int(n) for n in n_points]
        if n_clusters is None:
            n_clusters = [None] * len(n_points)
        if len(n_clusters) != len(n_points):
            raise ValueError("n_points and n_clusters must have one entry per row")
        self.vocab = answer_vocabulary(tokenizer, eos_ids)
        self.eos_set = set(self.vocab.eos_ids)
        self.texts = dict(self.vocab.candidates)
        self.n = n_points
        self.top = [max_label(n, c) for n, c in zip(n_points, n_clusters)]
        self.states: list[AnswerState | None] = [AnswerState() for _ in n_points]
        self.finished = [False] * len(n_points)
        self._seen: int | None = None

    def _update(self, input_ids) -> None:
        length = input_ids.shape[1]
        if self._seen is None:
            self._seen = length
            return
        new = input_ids[:, self._seen:length].tolist()
        self._seen = length
        for row, toks in enumerate(new):
            for tok in toks:
                if self.finished[row]:
                    break
                if tok in self.eos_set and (self.states[row] is None or self.states[row].phase == DONE
                                            or tok not in self.texts):
                    self.finished[row] = True
                    break
                self.states[row] = advance(self.states[row], self.texts.get(tok, "\x00"), self.n[row],
                                           self.top[row])

    def __call__(self, input_ids, scores):
        import torch

        self._update(input_ids)
        if input_ids.shape[0] != len(self.n):
            raise ValueError(f"the constraint was built for {len(self.n)} rows, got {input_ids.shape[0]}")
        mask = torch.full_like(scores, float("-inf"))
        eos = torch.tensor(list(self.vocab.eos_ids), dtype=torch.long, device=scores.device)
        for row in range(len(self.n)):
            st = self.states[row]
            if self.finished[row] or st is None:
                mask[row, eos] = 0.0
            else:
                idx = self.vocab.allowed_tensor(st, self.n[row], self.top[row], scores.device)
                mask[row, idx] = 0.0
        return scores + mask
