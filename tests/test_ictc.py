"""IC|TC baseline (icc_utils.vision.ictc): prompts, fallback rules, backends and caching, with a scripted
fake chat model; one test (marked ``embedded``) runs the real embedded model."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icc_utils.cache import ReplyCache, cache_key
from icc_utils.models import LocalChatModel
from icc_utils.vision import ictc
from icc_utils.vision.episodes import ImageEpisode
from icc_utils.vision.ictc import (ASSIGN_MAX_TOKENS, LABEL_MAX_TOKENS, assign_captions, assign_index,
                                   ictc_cluster, ictc_episodes, label_captions, local_chat_fn, merge_labels,
                                   merge_max_tokens, normalize_label, openai_chat_fn, parse_names)

# ---------------------------------------------------------------- a scripted fake chat model

#: Words the fake model "sees" in a caption, per condition, and the category each belongs to.
VOCAB = {
    "color": {"red": "red", "crimson": "red", "scarlet": "red", "blue": "blue", "navy": "blue", "azure": "blue",
              "green": "green"},
    "shape": {"circle": "circle", "square": "square", "triangle": "triangle", "cross": "cross"},
}
TOY = ["a red circle on a grey background", "a crimson square", "a scarlet striped triangle", "a red cross",
       "a blue circle", "a navy square", "a blue dotted triangle", "an azure cross"]
TOY_BY_COLOR = [0, 0, 0, 0, 1, 1, 1, 1]
TOY_BY_SHAPE = [0, 1, 2, 3, 0, 1, 2, 3]


def _caption(text: str) -> str:
    return re.search(r'Image description: "(.*)"', text).group(1)


def _condition(text: str) -> str:
    for cond in VOCAB:
        if cond in text:
            return cond
    return "color"


def _word(caption: str, cond: str) -> str | None:
    return next((w for w in caption.lower().split() if w in VOCAB[cond]), None)


class FakeChat:
    """A deterministic function of the prompt text; records every batch and token cap.

    ``merge`` / ``assign`` replace the sensible answers of those stages (a fixed string, or a
    function of the prompt text).
    """

    def __init__(self, merge=None, assign=None, label=None):
        self.merge, self.assign, self.label = merge, assign, label
        self.calls: list[tuple[list[list[dict]], int]] = []

    @property
    def prompts(self) -> list[str]:
        return [m[-1]["content"] for batch, _ in self.calls for m in batch]

    def __call__(self, batch, max_tokens):
        self.calls.append((batch, max_tokens))
        return [self.answer(messages[-1]["content"]) for messages in batch]

    @staticmethod
    def _custom(rule, text):
        return rule(text) if callable(rule) else rule

    def answer(self, text: str) -> str:
        cond = _condition(text)
        if "What is the" in text:  # stage 1: the caption's word, in a chatty format
            if self.label is not None:
                return self._custom(self.label, text)
            word = _word(_caption(text), cond)
            return f'"{word.capitalize()}."\nIt is clearly {word}.' if word else "I cannot tell."
        if "Group these labels" in text:  # stage 2: the categories of the listed labels
            if self.merge is not None:
                return self._custom(self.merge, text)
            labels = re.findall(r"^- (.+) \(\d+\)$", text, flags=re.M)
            cats = list(dict.fromkeys(VOCAB[cond].get(label, label) for label in labels))
            return ", ".join(c.capitalize() for c in cats)
        if "Which of these" in text:  # stage 3: the category of the caption's word
            if self.assign is not None:
                return self._custom(self.assign, text)
            word = _word(_caption(text), cond)
            return f"The answer is {VOCAB[cond][word].capitalize()}." if word else "none of them"
        raise AssertionError(f"unexpected prompt: {text!r}")


# ---------------------------------------------------------------- fake backends for the adapters

class FakeTokenizer:
    chat_template = "fake"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + ("<|assistant|>" if add_generation_prompt else "")


class FakeLocalModel:
    """Duck-types the parts of LocalChatModel that local_chat_fn uses (no torch): the real
    ``generate_cached`` over a fake ``plan_batches`` / ``generate_batch``."""

    generate_cached = LocalChatModel.generate_cached

    def __init__(self, batch_size=3, fail_on_call=None):
        self.tokenizer = FakeTokenizer()
        self.model_id = "fake-local|float32"
        self.max_new_tokens = None
        self.batch_size = batch_size
        self.fail_on_call = fail_on_call
        self.batches: list[list[str]] = []
        self.caps: list[int | None] = []
        self.brain = FakeChat()

    def plan_batches(self, prompts):
        order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def generate_batch(self, prompts, n_points=None, n_clusters=None, constrained=False, extra_inputs=None):
        if self.max_new_tokens is None:
            raise ValueError("max_new_tokens is automatic (None): pass n_points")
        if self.fail_on_call is not None and len(self.batches) == self.fail_on_call:
            raise RuntimeError("simulated crash")
        self.batches.append(list(prompts))
        self.caps.append(self.max_new_tokens)
        out = []
        for p in prompts:
            user = re.search(r"<\|user\|>(.*?)<\|end\|>", p, flags=re.S).group(1)
            out.append({"reply": self.brain.answer(user), "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
        return out


class FakeClient:
    """Duck-types OpenAIChatModel.chat (and its server/name/max_workers/cache_model_id)."""

    def __init__(self, max_workers=1):
        self.name, self.server, self.max_workers = "gpt-fake", "openai", max_workers
        self.cache_model_id = f"{self.server}/{self.name}"
        self.requests: list[tuple[list[dict], int]] = []
        self.brain = FakeChat()

    def chat(self, messages, max_tokens=None):
        self.requests.append((messages, max_tokens))
        return self.brain.answer(messages[-1]["content"]), {"prompt_tokens": 3, "completion_tokens": 2}


# ---------------------------------------------------------------- prompts

@pytest.mark.parametrize("condition", ["color", "shape", "mood"])
def test_every_stage_prompt_names_the_condition(condition):
    fake = FakeChat(label="happy", merge="happy, sad", assign="happy")
    out = ictc_cluster(TOY, condition, 2, fake)
    assert [len(batch) for batch, _ in fake.calls] == [len(TOY), 1, len(TOY)]
    assert [cap for _, cap in fake.calls] == [LABEL_MAX_TOKENS, merge_max_tokens(2), ASSIGN_MAX_TOKENS]
    for text in fake.prompts:
        assert condition in text
    label_prompts, merge_prompt, assign_prompts = fake.prompts[:8], fake.prompts[8], fake.prompts[9:]
    assert all(f"What is the {condition} of the main subject" in p for p in label_prompts)
    assert all(f'"{cap}"' in p for cap, p in zip(TOY, label_prompts))
    assert f"exactly 2 {condition} categories" in merge_prompt and "- happy (8)" in merge_prompt
    assert all("happy, sad" in p and f'"{cap}"' in p for cap, p in zip(TOY, assign_prompts))
    assert out["names"] == ["happy", "sad"] and out["labels"] == [0] * 8
    # every message list is a system turn and a user turn
    assert all([m["role"] for m in msgs] == ["system", "user"] for batch, _ in fake.calls for msgs in batch)


def test_label_normalisation():
    assert normalize_label('"Red."\nIt is red.') == "red"
    assert normalize_label("  \n Color: 'Dark Blue'!  ") == "dark blue"
    assert normalize_label("") == "unknown" and normalize_label("?!\n") == "unknown"
    assert label_captions(["a red circle", "a cat"], "color", FakeChat()) == ["red", "i cannot tell"]
    assert parse_names("1. Red\n2) Blue; and GREEN (3 images)\nunknown") == ["red", "blue", "green"]


# ---------------------------------------------------------------- merge: always exactly c distinct names

RAW = ["red", "red", "crimson", "blue", "blue", "blue", "navy", "unknown", "unknown", "unknown", "unknown"]


@pytest.mark.parametrize("reply,c,expected", [
    ("Red, Blue, Green, Yellow", 2, ["red", "blue"]),                       # too many: first c
    ("red", 3, ["red", "blue", "crimson"]),                                 # too few: most frequent raw labels
    ("!!! ???", 2, ["blue", "red"]),                                        # garbage: raw labels by count
    ("", 4, ["blue", "red", "crimson", "navy"]),
    ("", 6, ["blue", "red", "crimson", "navy", "cluster 0", "cluster 1"]),  # then "cluster k"
    ("Sure! Here are the 2 categories:\n1. Red\n2. Blue", 2, ["red", "blue"]),
    ("red, Red, RED.", 2, ["red", "blue"]),                                 # duplicates count once
    ("- reds (3)\n- blues (4)", 2, ["reds", "blues"]),                      # echoed list format
    ("warm colours, cool colours, and neutral", 3, ["warm colours", "cool colours", "neutral"]),
])
def test_merge_returns_exactly_c_distinct_names(reply, c, expected):
    fake = FakeChat(merge=reply)
    names = merge_labels(RAW, "color", c, fake)
    assert names == expected
    assert len(names) == c and len(set(names)) == c
    assert [len(batch) for batch, _ in fake.calls] == [1]


def test_merge_without_labels_sends_nothing():
    fake = FakeChat()
    assert merge_labels([], "color", 3, fake) == ["cluster 0", "cluster 1", "cluster 2"]
    assert fake.calls == []


def test_merge_fillers_avoid_names_already_used():
    names = merge_labels(["cluster 0"], "color", 3, FakeChat(merge="cluster 1"))
    assert names == ["cluster 1", "cluster 0", "cluster 2"]


@settings(max_examples=150, deadline=None)
@given(reply=st.text(max_size=80), labels=st.lists(st.sampled_from(["red", "blue", "unknown", "cluster 0", "x y"]),
                                                   max_size=8), c=st.integers(1, 6))
def test_merge_property_exactly_c_distinct_nonempty(reply, labels, c):
    names = merge_labels(labels, "color", c, FakeChat(merge=reply))
    assert len(names) == c and len(set(names)) == c and all(n.strip() for n in names)


def test_merge_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_clusters"):
        merge_labels(RAW, "color", 0, FakeChat())
    with pytest.raises(ValueError, match="condition"):
        merge_labels(RAW, "  ", 2, FakeChat())


# ---------------------------------------------------------------- assign: always a valid index

NAMES = ["red", "light blue", "blue", "green"]


@pytest.mark.parametrize("reply,expected", [
    ("Blue", 2),                           # exact (after normalisation)
    ("  'light blue'.", 1),
    ("Answer: green", 3),
    ("The answer is Blue.", 2),            # name inside the reply (whole words)
    ("It is light blue, not red", 1),      # earliest name in the reply, then the longest
    ("reddish", 0),                        # no whole-word name: difflib closest
    ("gree", 3),                           # reply inside a name
    ("bleu", 2),                           # difflib closest
    ("", 0), ("\n\n", 0), ("purple", None), ("I do not know", None), ("¿¿", 0),
])
def test_assign_index_maps_every_reply(reply, expected):
    i = assign_index(reply, NAMES)
    assert 0 <= i < len(NAMES)
    if expected is not None:
        assert i == expected


@settings(max_examples=200, deadline=None)
@given(reply=st.text(max_size=60), names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6))
def test_assign_index_property_valid(reply, names):
    assert 0 <= assign_index(reply, names) < len(names)


def test_assign_captions_valid_for_unmatched_replies():
    replies = iter(["red", "", "no idea at all", "BLUE!!", "🙂", "cluster", "light", "Green\nred"])
    fake = FakeChat(assign=lambda text: next(replies))
    labels = assign_captions(TOY, NAMES, "color", fake)
    assert len(labels) == len(TOY) and all(0 <= l < len(NAMES) for l in labels)
    assert labels[0] == 0 and labels[3] == 2 and labels[7] == 3
    with pytest.raises(ValueError, match="names is empty"):
        assign_captions(TOY, [], "color", fake)


def test_wrong_number_of_replies_is_an_error():
    with pytest.raises(RuntimeError, match="returned 1 replies for 8 requests"):
        label_captions(TOY, "color", lambda batch, k: ["red"])


# ---------------------------------------------------------------- the whole pipeline

def test_pipeline_clusters_toy_captions_by_color():
    fake = FakeChat()
    out = ictc_cluster(TOY, "color", 2, fake)
    assert out["raw_labels"] == ["red", "crimson", "scarlet", "red", "blue", "navy", "blue", "azure"]
    assert out["names"] == ["red", "blue"]
    assert out["labels"] == TOY_BY_COLOR


def test_pipeline_clusters_the_same_captions_by_shape():
    out = ictc_cluster(TOY, "shape", 4, FakeChat())
    assert out["names"] == ["circle", "square", "triangle", "cross"]
    assert out["labels"] == TOY_BY_SHAPE


def test_pipeline_with_a_useless_model_still_gives_a_valid_clustering():
    fake = FakeChat(label="", merge="", assign="")
    out = ictc_cluster(TOY, "color", 3, fake)
    assert out["raw_labels"] == ["unknown"] * 8
    assert out["names"] == ["cluster 0", "cluster 1", "cluster 2"]
    assert out["labels"] == [0] * 8


def test_ictc_episodes_matches_ictc_cluster():
    captions = TOY + ["a green circle", "a green square"]
    eps = [ImageEpisode(id="e0", seed=0, params={"n_clusters": 2, "condition": "color"},
                        indices=[0, 4, 1, 5], labels=[0, 1, 0, 1]),
           ImageEpisode(id="e1", seed=1, params={"n_clusters": 3, "condition": "color"},
                        indices=[8, 2, 6, 9, 3], labels=[0, 1, 2, 0, 1]),
           ImageEpisode(id="e2", seed=2, params={"n_clusters": 4, "condition": "shape"},
                        indices=list(range(8)), labels=TOY_BY_SHAPE)]
    fake = FakeChat()
    out = ictc_episodes(eps, captions, fake)
    assert len(fake.calls) == 1 + 3 + 1  # labels, one merge batch per token cap (c), assignments
    for ep, res in zip(eps, out):
        single = ictc_cluster([captions[i] for i in ep.indices], ep.params["condition"], ep.n_clusters, FakeChat())
        assert res["episode_id"] == ep.id and res["condition"] == ep.params["condition"]
        assert {k: res[k] for k in ("labels", "raw_labels", "names")} == single
    assert out[1]["names"] == ["green", "red", "blue"] and out[1]["labels"] == [0, 1, 2, 0, 1]
    # episodes clustered by class use class_condition
    cls = ImageEpisode(id="c", seed=0, params={"n_clusters": 2, "condition": None}, indices=[0, 1], labels=[0, 1])
    fake = FakeChat(label="thing", merge="thing, other", assign="thing")
    assert ictc_episodes([cls], captions, fake, class_condition="object")[0]["labels"] == [0, 0]
    assert all("object" in p for p in fake.prompts)


# ---------------------------------------------------------------- backends and the reply cache

def test_local_chat_fn_caches_batch_by_batch_and_restores_max_new_tokens(tmp_path):
    path = tmp_path / "replies.jsonl"
    model = FakeLocalModel(batch_size=3)
    chat = local_chat_fn(model, ReplyCache(path))
    first = ictc_cluster(TOY + [TOY[0]], "color", 2, chat)  # a repeated caption is generated once
    assert first["labels"] == TOY_BY_COLOR + [0]
    assert model.max_new_tokens is None  # restored after every call
    assert sorted(set(model.caps)) == sorted({LABEL_MAX_TOKENS, merge_max_tokens(2), ASSIGN_MAX_TOKENS})
    assert sum(len(b) for b in model.batches) == 8 + 1 + 8
    assert all(len(b) <= 3 for b in model.batches)
    # the key: ("local", model_id, rendered prompt, {"max_new_tokens": k, "greedy": True})
    rendered = FakeTokenizer().apply_chat_template(ictc.label_messages(TOY[1], "color"))
    cache = ReplyCache(path)
    rec = cache.get(cache_key("local", model.model_id, rendered, {"max_new_tokens": LABEL_MAX_TOKENS, "greedy": True}))
    assert rec is not None and normalize_label(rec["reply"]) == "crimson"

    # a second run with the same cache (in memory, and reloaded from the file) makes no calls
    for chat_again in (chat, local_chat_fn(model, ReplyCache(path))):
        n = len(model.batches)
        again = ictc_cluster(TOY + [TOY[0]], "color", 2, chat_again)
        assert again == first and len(model.batches) == n


def test_local_chat_fn_keeps_finished_batches_when_a_later_one_fails(tmp_path):
    path = tmp_path / "replies.jsonl"
    model = FakeLocalModel(batch_size=3, fail_on_call=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        label_captions(TOY, "color", local_chat_fn(model, ReplyCache(path)))
    assert model.max_new_tokens is None
    assert len(ReplyCache(path)) == 6  # two batches of 3 were written before the crash
    model.fail_on_call = None
    labels = label_captions(TOY, "color", local_chat_fn(model, ReplyCache(path)))
    assert labels == ["red", "crimson", "scarlet", "red", "blue", "navy", "blue", "azure"]
    assert [len(b) for b in model.batches] == [3, 3, 2]  # only the missing 2 were generated


def test_local_chat_fn_without_cache_still_deduplicates():
    model = FakeLocalModel()
    assert label_captions([TOY[0]] * 5, "color", local_chat_fn(model)) == ["red"] * 5
    assert sum(len(b) for b in model.batches) == 1
    with pytest.raises(ValueError, match="max_tokens"):
        local_chat_fn(model)([ictc.label_messages("x", "color")], 0)


@pytest.mark.parametrize("workers", [1, 4])
def test_openai_chat_fn_caches_and_second_run_makes_no_requests(tmp_path, workers):
    path = tmp_path / "replies.jsonl"
    client = FakeClient(max_workers=workers)
    first = ictc_cluster(TOY, "color", 2, openai_chat_fn(client, ReplyCache(path)))
    assert first["labels"] == TOY_BY_COLOR
    assert len(client.requests) == 8 + 1 + 8
    assert {k for _, k in client.requests} == {LABEL_MAX_TOKENS, merge_max_tokens(2), ASSIGN_MAX_TOKENS}
    key = cache_key("openai", "openai/gpt-fake", ictc.label_messages(TOY[2], "color"),
                    {"temperature": 0, "max_tokens": LABEL_MAX_TOKENS})
    rec = ReplyCache(path).get(key)
    assert rec["backend"] == "openai" and rec["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
    again = ictc_cluster(TOY, "color", 2, openai_chat_fn(client, ReplyCache(path)))
    assert again == first and len(client.requests) == 17


def test_openai_chat_fn_keys_replies_by_the_full_base_url(tmp_path):
    """Two endpoints on one host (different URL paths) never share cached replies (issue 39, fault 9)."""
    from icc_utils.api import OpenAIChatModel

    path = tmp_path / "replies.jsonl"
    keys = {}
    for url in ("http://127.0.0.1:8000/a/v1", "http://127.0.0.1:8000/b/v1"):
        client = OpenAIChatModel("gpt-fake", base_url=url, api_key="sk-test")
        fake = FakeClient(max_workers=1)
        client.chat = fake.chat
        openai_chat_fn(client, ReplyCache(path))([ictc.label_messages(TOY[0], "color")], LABEL_MAX_TOKENS)
        keys[url] = cache_key("openai", client.cache_model_id, ictc.label_messages(TOY[0], "color"),
                              {"temperature": 0, "max_tokens": LABEL_MAX_TOKENS})
        assert len(fake.requests) == 1, f"{url} reused another endpoint's reply"
    assert len(set(keys.values())) == 2 and all(k in ReplyCache(path) for k in keys.values())


def test_openai_chat_fn_error_is_raised():
    client = FakeClient(max_workers=2)

    def boom(messages, max_tokens=None):
        raise RuntimeError("server down")

    client.chat = boom
    with pytest.raises(RuntimeError, match="server down"):
        label_captions(TOY, "color", openai_chat_fn(client))


# ---------------------------------------------------------------- the real embedded model

@pytest.mark.embedded
def test_embedded_model_gives_a_valid_clustering():
    from icc_utils.models import LocalChatModel

    captions = ["a red circle", "a blue square", "a red triangle", "a blue circle", "a red square", "a blue triangle"]
    out = ictc_cluster(captions, "color", 2, local_chat_fn(LocalChatModel("embedded")))
    assert len(out["labels"]) == 6 and all(l in (0, 1) for l in out["labels"])
    assert len(out["names"]) == 2 and len(set(out["names"])) == 2
    assert len(out["raw_labels"]) == 6
