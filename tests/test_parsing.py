"""Label parsing (icc_utils.parsing): never raises, first list wins, pad/truncate rules."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icc_utils.metrics import score
from icc_utils.parsing import INVALID, is_well_formed, n_labels_written, parse_labels

ANY_REPLY = st.one_of(
    st.none(), st.text(), st.integers(), st.floats(allow_nan=True), st.binary(), st.booleans(),
    st.lists(st.integers(-5, 5)),
    # text that looks like a list of labels, with noise around it
    st.builds(lambda pre, xs, post, sep: pre + "[" + sep.join(map(str, xs)) + "]" + post,
              st.text(max_size=20), st.lists(st.integers(-10**30, 10**30), max_size=60), st.text(max_size=20),
              st.sampled_from([",", ", ", " , ", ",\n"])),
)


@settings(max_examples=500, deadline=None)
@given(reply=ANY_REPLY, n=st.integers(0, 60))
def test_parse_never_raises_and_returns_n_labels(reply, n):
    labels = parse_labels(reply, n)
    assert isinstance(labels, list) and len(labels) == n
    assert all(type(l) is int and l >= INVALID for l in labels)
    is_well_formed(reply, n, 3)  # never raises either


@settings(max_examples=300, deadline=None)
@given(reply=ANY_REPLY, y=st.lists(st.integers(0, 4), min_size=1, max_size=40))
def test_scoring_a_parsed_reply_never_raises(reply, y):
    s = score(y, parse_labels(reply, len(y)))
    assert 0.0 <= s["accuracy"] <= 1.0


@pytest.mark.parametrize("n", [None, "x", -3, 2.5])
def test_odd_lengths(n):
    out = parse_labels("[0, 1]", n)
    assert isinstance(out, list)
    if n == 2.5:
        assert out == [0, 1]
    else:
        assert out == []


def test_first_list_wins():
    assert parse_labels("Labels: [0, 1, 1] or maybe [1, 0, 0]", 3) == [0, 1, 1]
    assert parse_labels("[[0, 1], [1, 0]]", 2) == [0, 1]
    # a list of numbers that are not integers (the data echoed back) is not a list of labels
    assert parse_labels("Data: [1.5, 2.25] Labels: [1, 0]", 2) == [1, 0]


def test_pad_truncate_and_invalid():
    assert parse_labels("[0, 1]", 4) == [0, 1, -1, -1]
    assert parse_labels("[0, 1, 2, 3]", 2) == [0, 1]
    assert parse_labels("[0, -2, 1]", 3) == [0, -1, 1]
    assert parse_labels("I cannot cluster this.", 3) == [-1, -1, -1]
    assert parse_labels("", 2) == [-1, -1]
    assert parse_labels(None, 2) == [-1, -1]
    assert parse_labels(b"[0, 1]", 2) == [-1, -1]
    assert parse_labels("[0,1,]", 2) == [0, 1]
    assert parse_labels("```python\n[ 0 ,\n 1 ]\n```", 2) == [0, 1]
    assert parse_labels("[]", 2) == [-1, -1]
    # a list cut off by the token budget (the reply ends inside it) is read, then padded / truncated
    assert parse_labels("[0, 1", 2) == [0, 1]
    assert parse_labels("[0, 1, 1, 0, 1, ", 3) == [0, 1, 1]
    assert parse_labels("[1", 3) == [1, -1, -1]
    assert not is_well_formed("[0, 1", 2)
    # ... but not a list that stops before the end of the reply, and a closed list comes first
    assert parse_labels("[0, 1 and then some text", 2) == [-1, -1]
    assert parse_labels("[0, 1, 1] then [1, 0", 3) == [0, 1, 1]
    assert parse_labels("[1, 0 garbage [0, 1]", 2) == [0, 1]


def test_is_well_formed():
    assert is_well_formed("[0, 1, 2]", 3)
    assert is_well_formed("[0, 1, 2]", 3, 3)
    assert not is_well_formed("[0, 1, 3]", 3, 3)
    assert not is_well_formed("[0, 1]", 3)
    assert not is_well_formed("[0, -1, 1]", 3)
    assert not is_well_formed(None, 3)


def test_n_labels_written_counts_the_list_parse_labels_reads():
    assert n_labels_written("Labels: [0, 1, 1, 0, 2, 2, 2] and [0]") == 7   # first list, before padding
    assert n_labels_written("[0, 0, 0, 0, 0") == 5                          # cut off by the token budget
    assert n_labels_written("[0, -1, 1]") == 3
    assert n_labels_written("no list") == 0 and n_labels_written(None) == 0


@settings(max_examples=200, deadline=None)
@given(ANY_REPLY, st.integers(0, 40))
def test_n_labels_written_agrees_with_parse_labels(reply, n):
    """Below the number of points, the count is where parse_labels starts padding with -1."""
    k = n_labels_written(reply)
    if isinstance(reply, str) and k < n:
        assert parse_labels(reply, n)[k:] == [INVALID] * (n - k)


def test_parsing_is_fast_on_long_garbage():
    text = "[" + ", ".join("1" for _ in range(20000))  # unclosed list: no catastrophic backtracking
    t0 = time.perf_counter()
    assert parse_labels(text + " [0]", 1) == [0]
    assert parse_labels("[" * 20000, 3) == [-1, -1, -1]
    assert time.perf_counter() - t0 < 2.0


# ---------------------------------------------------------------- the indexed ablation (issue 4)

def test_indexed_replies():
    reply = "[1: 0, 2: 1, 3: 0]"
    assert parse_labels(reply, 3, "indexed") == [0, 1, 0]
    assert is_well_formed(reply, 3, 2, "indexed") and n_labels_written(reply, "indexed") == 3
    # the index, not the position, says which point a label belongs to; the first pair for an index wins
    assert parse_labels("[2: 1, 1: 0, 2: 0]", 3, "indexed") == [0, 1, INVALID]
    assert not is_well_formed("[2: 1, 1: 0, 3: 0]", 3, 2, "indexed")
    # cut off by the budget: read what is there, malformed; too many pairs: malformed, extra ignored
    assert parse_labels("[1: 0, 2: 1, 3:", 4, "indexed") == [0, 1, INVALID, INVALID]
    assert not is_well_formed("[1: 0, 2: 1, 3: 0", 3, 2, "indexed")
    assert n_labels_written("[1: 0, 2: 0, 3: 0, 4: 0, 5: 0", "indexed") == 5
    assert parse_labels("[1: 0, 2: 0, 3: 0, 4: 1]", 3, "indexed") == [0, 0, 0]
    assert not is_well_formed("[1: 0, 2: 0, 3: 0, 4: 1]", 3, 2, "indexed")
    # labels out of range, negative labels, and decimals (an echoed coordinate) are not labels
    assert not is_well_formed("[1: 0, 2: 5]", 2, 3, "indexed")
    assert parse_labels("[1: -1, 2: 0.93]", 2, "indexed") == [INVALID, INVALID]
    # a paper-format reply holds no pairs; an indexed reply is no paper list
    assert parse_labels("[0, 1, 0]", 3, "indexed") == [INVALID] * 3 and n_labels_written("[0, 1]", "indexed") == 0
    assert not is_well_formed(reply, 3, 2)
    with pytest.raises(ValueError, match="answer_format='idx'"):
        parse_labels(reply, 3, "idx")


@settings(max_examples=300, deadline=None)
@given(reply=ANY_REPLY, n=st.integers(0, 60))
def test_indexed_parse_never_raises(reply, n):
    labels = parse_labels(reply, n, "indexed")
    assert len(labels) == n and all(type(l) is int and l >= INVALID for l in labels)
    is_well_formed(reply, n, 3, "indexed")
    assert n_labels_written(reply, "indexed") >= 0


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(st.integers(0, 9), min_size=1, max_size=60))
def test_indexed_answer_round_trips(labels):
    from icc_utils.prompts import answer_text

    reply = answer_text(labels, "indexed")
    assert parse_labels(reply, len(labels), "indexed") == labels
    assert is_well_formed(reply, len(labels), 10, "indexed") and n_labels_written(reply, "indexed") == len(labels)


# ---------------------------------------------------------------- long and hostile replies (issue 39, fault 7)

def test_numbers_beyond_the_int_digit_limit_never_raise():
    huge = "9" * 4301
    assert is_well_formed("[" + huge + "]", 10, 3) is False
    assert is_well_formed("[" + huge + "]", 1, None) is False
    assert parse_labels("[" + huge + ", 1]", 2) == [-1, 1]
    assert parse_labels(f"[1: {huge}, 2: 0]", 2, "indexed") == [-1, 0]
    assert parse_labels(f"[{huge}: 1, 1: 0]", 1, "indexed") == [0]
    assert is_well_formed(f"[1: {huge}]", 1, 3, "indexed") is False
    assert n_labels_written("[" + huge + "]") == 1


HOSTILE = ["[0" + " " * 100_000 + "x", "[" * 100_000, "[0, " * 25_000, "1" * 100_000, "1:" + " " * 100_000,
           "[" + "9" * 100_000 + "]", "[0," + " ," * 50_000, "1: 2" + "0" * 99_996 + ".5"]


@pytest.mark.parametrize("reply", HOSTILE, ids=range(len(HOSTILE)))
def test_a_100k_character_reply_parses_in_well_under_100_ms(reply):
    assert len(reply) >= 100_000
    t0 = time.process_time()
    for fmt in ("paper", "indexed"):
        parse_labels(reply, 50, fmt)
        is_well_formed(reply, 50, 3, fmt)
        n_labels_written(reply, fmt)
    assert time.process_time() - t0 < 0.1
