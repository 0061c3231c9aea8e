"""The paper's prompt (icc_utils.prompts): exact text, two-decimal data, unknown k, answers."""
from __future__ import annotations

import pytest

from icc_utils.data import generate_episode
from icc_utils.prompts import (SYSTEM_PROMPT, answer_text, build_messages, episode_messages, format_number,
                               format_points, render_chat, user_prompt)

PAPER_USER = ("Cluster the following data into 3 clusters. Only output the cluster labels for each point as a "
              "list of integers. Data: [[-0.93, 9.78], [4.85, 0.01]] Labels:")


def test_exact_paper_prompt():
    assert SYSTEM_PROMPT == "You are a data clustering expert."
    assert user_prompt([[-0.93, 9.78], [4.85, 0.01]], 3) == PAPER_USER
    msgs = build_messages([[-0.93, 9.78], [4.85, 0.01]], 3)
    assert msgs == [{"role": "system", "content": "You are a data clustering expert."},
                    {"role": "user", "content": PAPER_USER}]


def test_unknown_k_variant_has_no_count():
    text = user_prompt([[1.0], [2.5]], None)
    assert text == ("Cluster the following data. Only output the cluster labels for each point as a list of "
                    "integers. Data: [[1.00], [2.50]] Labels:")
    assert "clusters." not in text and "into" not in text
    ep = generate_episode(1, "t", 4, 2, 2.0)
    assert "into 4 clusters" in episode_messages(ep)[1]["content"]
    unknown = episode_messages(ep, known_k=False)[1]["content"]
    assert "4 clusters" not in unknown and format_points(ep.points) in unknown


@pytest.mark.parametrize("x, text", [(0, "0.00"), (1, "1.00"), (-0.93, "-0.93"), (9.781, "9.78"), (-0.0, "0.00"),
                                     (-0.001, "0.00"), (-0.004, "0.00"), (-0.006, "-0.01"), (12.5, "12.50"),
                                     (-10.0, "-10.00"), (3.14159, "3.14")])
def test_two_decimals(x, text):
    assert format_number(x) == text


def test_format_points():
    assert format_points([[-0.93, 9.78], [4.85, 0.01]]) == "[[-0.93, 9.78], [4.85, 0.01]]"
    assert format_points([[1], [-0.0]]) == "[[1.00], [0.00]]"
    assert format_points([]) == "[]"


def test_answer_text():
    assert answer_text([0, 0, 1, 0, 2]) == "[0, 0, 1, 0, 2]"
    assert answer_text([]) == "[]"


class _FakeTokenizer:
    """Enough of a tokenizer to test render_chat: a trivial chat template."""

    chat_template = "fake"
    eos_token = "<eos>"
    name_or_path = "fake"
    rewrites_history = False  # some templates render earlier turns differently once an answer follows

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = "".join(f"<{m['role']}>{m['content']}<end>" for m in messages)
        if self.rewrites_history and messages[-1]["role"] == "assistant":
            text = "<bos>" + text
        return text + ("<assistant>" if add_generation_prompt else "")


def test_render_chat():
    tok = _FakeTokenizer()
    msgs = build_messages([[0.5]], 1)
    prompt = render_chat(tok, msgs)
    assert prompt.endswith("<assistant>") and PAPER_USER.split(" Data:")[0].replace("3", "1") in prompt
    # the template's own rendering of the answer turn (it extends the generation prompt)
    assert render_chat(tok, msgs, answer="[0]") == prompt.removesuffix("<assistant>") + "<assistant>[0]<end>"
    # a template that rewrites earlier turns: falls back to prompt + answer + eos
    tok.rewrites_history = True
    assert render_chat(tok, msgs, answer="[0]") == prompt + "[0]<eos>"
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        render_chat(tok, msgs)


# ---------------------------------------------------------------- the indexed ablation (issue 4)

def test_indexed_format_numbers_points_and_labels():
    from icc_utils.prompts import INDEXED_INSTRUCTION

    pts = [[-0.93, 9.78], [4.85, 0.01]]
    assert format_points(pts, "indexed") == "[1: [-0.93, 9.78], 2: [4.85, 0.01]]"
    assert answer_text([0, 0, 1], "indexed") == "[1: 0, 2: 0, 3: 1]"
    text = user_prompt(pts, 3, "indexed")
    assert text == ("Cluster the following data into 3 clusters. " + INDEXED_INSTRUCTION
                    + " Data: [1: [-0.93, 9.78], 2: [4.85, 0.01]] Labels:")
    assert "into" not in user_prompt(pts, None, "indexed") and INDEXED_INSTRUCTION in user_prompt(pts, None, "indexed")
    # the paper's format is untouched by the option
    assert user_prompt(pts, 3, "paper") == PAPER_USER and answer_text([0, 1], "paper") == "[0, 1]"


@pytest.mark.parametrize("call", [lambda: format_points([[1.0]], "numbered"), lambda: answer_text([0], "Indexed"),
                                  lambda: user_prompt([[1.0]], 2, ""), lambda: episode_messages(
                                      generate_episode(1, "t", 2, 1, 2.0), answer_format="json")])
def test_unknown_answer_format_is_named(call):
    with pytest.raises(ValueError, match=r"answer_format=.*choose from \['paper', 'indexed'\]"):
        call()
