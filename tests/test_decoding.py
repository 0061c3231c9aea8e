"""Constrained decoding: the answer automaton and the logits processor (no model needed)."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icc_utils.decoding import (AnswerConstraintProcessor, answer_vocabulary, is_complete_answer,
                                is_valid_answer_prefix, longest_answer_chars, max_label)
from icc_utils.parsing import is_well_formed, parse_labels
from icc_utils.prompts import answer_text


def all_answers(n: int, c: int | None) -> list[str]:
    top = max_label(n, c)
    return [answer_text(labels) for labels in itertools.product(range(top + 1), repeat=n)]


def oracle_prefix(text: str, n: int, c: int | None) -> bool:
    return any(a.startswith(text) for a in all_answers(n, c))


# ---------------------------------------------------------------- the pure automaton

def test_examples():
    assert is_valid_answer_prefix("", 3, 2)
    assert is_valid_answer_prefix("[", 3, 2)
    assert is_valid_answer_prefix("[0, 1, 1]", 3, 2)
    assert is_complete_answer("[0, 1, 1]", 3, 2)
    assert not is_complete_answer("[0, 1", 3, 2)
    assert not is_valid_answer_prefix("[0, 2", 3, 2)  # label out of range
    assert not is_valid_answer_prefix("[0,1", 3, 2)  # separator must be ", "
    assert not is_valid_answer_prefix("[0, 1, 1, ", 3, 2)  # too many labels
    assert not is_valid_answer_prefix("[0, 1]", 3, 2)  # too few
    assert not is_valid_answer_prefix(" [0", 3, 2)
    assert not is_valid_answer_prefix("[0, 1, 1]]", 3, 2)
    assert not is_valid_answer_prefix("[0, 1, 1] ", 3, 2)
    assert not is_valid_answer_prefix("[00", 3, 2)  # no leading zeros
    assert not is_valid_answer_prefix("[-1", 3, 2)
    assert not is_valid_answer_prefix(None, 3, 2)


def test_multi_digit_labels():
    assert is_valid_answer_prefix("[1", 2, 12)
    assert is_valid_answer_prefix("[11, 10]", 2, 12)
    assert not is_valid_answer_prefix("[12", 2, 12)
    assert not is_valid_answer_prefix("[01", 2, 12)
    assert is_complete_answer("[0, 11]", 2, 12)


def test_unknown_k_labels():
    assert max_label(3, None) == 2 and max_label(50, None) == 9 and max_label(1, None) == 0
    assert is_valid_answer_prefix("[2, 0, 1]", 3, None)
    assert not is_valid_answer_prefix("[3", 3, None)
    assert is_complete_answer("[" + ", ".join(["9"] * 50) + "]", 50, None)
    assert not is_valid_answer_prefix("[10", 50, None)


def test_zero_points():
    assert is_complete_answer("[]", 0, 3)
    assert not is_valid_answer_prefix("[0", 0, 3)


@given(st.integers(1, 12), st.integers(1, 13), st.data())
def test_every_prefix_of_a_canonical_answer_is_valid(n, c, data):
    labels = data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    text = answer_text(labels)
    assert len(text) <= longest_answer_chars(n, c)
    for i in range(len(text) + 1):
        assert is_valid_answer_prefix(text[:i], n, c)
    assert is_complete_answer(text, n, c)
    assert is_well_formed(text, n, c) and parse_labels(text, n) == labels
    assert not is_valid_answer_prefix(text + " ", n, c)


@settings(max_examples=400)
@given(st.text(alphabet="[], 0123456789x-", max_size=14), st.integers(0, 3),
       st.sampled_from([1, 2, 3, None]))
def test_prefix_matches_brute_force(text, n, c):
    assert is_valid_answer_prefix(text, n, c) == oracle_prefix(text, n, c)
    assert is_complete_answer(text, n, c) == (text in all_answers(n, c))


@given(st.text(alphabet="[], 0123456789", max_size=40), st.integers(1, 20), st.integers(1, 12))
def test_complete_answers_are_well_formed(text, n, c):
    if is_complete_answer(text, n, c):
        assert is_well_formed(text, n, c)
        assert all(0 <= l < c for l in parse_labels(text, n))


# ---------------------------------------------------------------- vocabulary and processor

class FakeTokenizer:
    """A tokenizer with a hand-made vocabulary: multi-char tokens like Llama-3's."""

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.eos_token_id = len(self.pieces)
        self.pieces.append("<eos>")
        self.all_special_ids = [self.eos_token_id]

    def __len__(self):
        return len(self.pieces)

    def encode(self, text, add_special_tokens=False):
        return [self.pieces.index(text)] if text in self.pieces else []

    def decode(self, ids, **kw):
        return "".join(self.pieces[i] for i in ids)

    def batch_decode(self, seqs, **kw):
        return [self.decode(s) for s in seqs]


LLAMA_LIKE = ["[", "]", ",", " ", "[[", " [", "],", "]]", ", ", "0", "1", "2", "3", "4", "5", "6", "7", "8",
              "9", "10", "11", "12", "100", "00", "a", " a", "x0", "0,", "1, 2", "<s>", "  "]


def test_vocabulary_candidates():
    tok = FakeTokenizer(LLAMA_LIKE)
    vocab = answer_vocabulary(tok)
    texts = {t for _, t in vocab.candidates}
    assert {"[", "]", ",", " ", "[[", " [", "10", "1, 2", "0,"} <= texts
    assert not texts & {"a", " a", "x0", "<s>", "<eos>"}
    assert answer_vocabulary(tok) is vocab  # memoised per tokenizer


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 15), st.sampled_from([1, 2, 3, 5, 12, None]), st.integers(0, 10**6))
def test_allowed_sets_match_brute_force(n, c, seed):
    """Along random constrained walks, the allowed set is exactly the tokens that keep a valid prefix."""
    tok = FakeTokenizer(LLAMA_LIKE)
    vocab = answer_vocabulary(tok)
    rng = random.Random(seed)
    proc = AnswerConstraintProcessor(tok, [n], [c])
    ids = torch.zeros((1, 3), dtype=torch.long)  # a 3-token "prompt"
    text = ""
    for _ in range(longest_answer_chars(n, c) + 2):
        scores = torch.randn(1, len(tok), generator=torch.Generator().manual_seed(rng.randrange(10**6)))
        masked = proc(ids, scores)
        allowed = set(torch.nonzero(torch.isfinite(masked[0])).flatten().tolist())
        expect = {i for i, t in vocab.candidates if is_valid_answer_prefix(text + t, n, c)}
        if is_complete_answer(text, n, c):
            expect = {tok.eos_token_id}
        assert allowed == expect
        nxt = rng.choice(sorted(allowed))
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        if nxt == tok.eos_token_id:
            break
        text += tok.pieces[nxt]
    assert is_complete_answer(text, n, c), text


def test_processor_rows_follow_their_own_constraints():
    """Greedy decoding of random scores under the constraint: every row ends well formed."""
    tok = FakeTokenizer(LLAMA_LIKE)
    rows = [(5, 2), (12, 12), (1, 3), (30, None)]
    proc = AnswerConstraintProcessor(tok, [n for n, _ in rows], [c for _, c in rows])
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros((len(rows), 4), dtype=torch.long)
    done = [False] * len(rows)
    steps = max(longest_answer_chars(n, c) for n, c in rows) + 1
    for _ in range(steps):
        nxt = proc(ids, torch.randn(len(rows), len(tok), generator=g)).argmax(-1)
        nxt = torch.where(torch.tensor(done), torch.tensor(tok.eos_token_id), nxt)  # finished rows pad with eos
        done = [d or int(t) == tok.eos_token_id for d, t in zip(done, nxt)]
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if all(done):
            break
    assert all(done)
    for row, (n, c) in enumerate(rows):
        gen = [t for t in ids[row, 4:].tolist()]
        text = tok.decode(gen[:gen.index(tok.eos_token_id)])
        assert is_complete_answer(text, n, c) and is_well_formed(text, n, c), (row, text)


@pytest.mark.parametrize("fixture", ["embedded_dir", "tiny_llama_dir", "tiny_qwen2_dir"])
def test_real_tokenizers_can_always_finish(fixture, request):
    """For real vocabularies, random constrained walks always reach a complete answer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    vocab = answer_vocabulary(tok)
    texts = dict(vocab.candidates)
    assert {"[", "]", ",", " "} <= set(texts.values())
    rng = random.Random(0)
    for n, c in [(50, 5), (7, 2), (13, None), (3, 12)]:
        from icc_utils.decoding import AnswerState, advance

        state, text = AnswerState(), ""
        top = max_label(n, c)
        while state.phase != 4:
            ids = vocab.allowed_ids(state, n, top)
            assert ids and set(ids).isdisjoint(vocab.eos_ids)
            tid = rng.choice(ids)
            text += texts[tid]
            state = advance(state, texts[tid], n, top)
            assert is_valid_answer_prefix(text, n, c)
        assert is_complete_answer(text, n, c)
        assert vocab.allowed_ids(state, n, top) == list(vocab.eos_ids)
