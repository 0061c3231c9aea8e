"""The local transformers backend: chat templates, batching, constrained decoding, cache, greedy."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from icc_utils.cache import ReplyCache
from icc_utils.data import generate_episode
from icc_utils.decoding import is_complete_answer
from icc_utils.models import (EMBEDDED_NAME, LocalChatModel, ModelUnavailableError, get_backend)
from icc_utils.parsing import is_well_formed
from icc_utils.prompts import SYSTEM_PROMPT, episode_messages, render_chat, user_prompt


def episodes(k: int, seed: int = 0, length_range=(5, 30)):
    return [generate_episode(seed * 1000 + i, "t", 2 + i % 4, 1 + i % 3, 5.0, length_range=length_range,
                             episode_id=f"ep{seed}-{i}") for i in range(k)]


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    return LocalChatModel(str(tiny_llama_dir), dtype="float32", batch_size=3)


@pytest.fixture(scope="module")
def tiny_qwen2(tiny_qwen2_dir):
    return LocalChatModel(str(tiny_qwen2_dir), dtype="float32", batch_size=3)


@pytest.fixture(scope="module")
def embedded():
    return LocalChatModel("embedded")


# ---------------------------------------------------------------- chat templates

def test_llama3_template(tiny_llama):
    ep = episodes(1)[0]
    tok = tiny_llama.tokenizer
    text = tiny_llama.render(ep)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                    f"{SYSTEM_PROMPT}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
                    f"{user_prompt(ep.points, ep.n_clusters)}<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # exactly one BOS
    train = render_chat(tok, episode_messages(ep), answer="[0, 1]")
    assert train == text + "[0, 1]<|eot_id|>"


def test_qwen2_template(tiny_qwen2):
    ep = episodes(1)[0]
    tok = tiny_qwen2.tokenizer
    text = tiny_qwen2.render(ep, known_k=False)
    assert text == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
                    f"<|im_start|>user\n{user_prompt(ep.points, None)}<|im_end|>\n<|im_start|>assistant\n")
    assert tok.bos_token_id is None or tok(text, add_special_tokens=False).input_ids[0] != tok.bos_token_id
    assert "1" in tok.convert_ids_to_tokens(tok("12", add_special_tokens=False).input_ids)  # digits split


def test_embedded_template(embedded):
    ep = episodes(1)[0]
    text = embedded.render(ep)
    assert text == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
                    f"<|im_start|>user\n{user_prompt(ep.points, ep.n_clusters)}<|im_end|>\n<|im_start|>assistant\n")
    assert embedded.name == EMBEDDED_NAME and embedded.kind == "local" and embedded.available
    assert embedded.model_id == f"{EMBEDDED_NAME}|float32"
    assert get_backend("embedded").model_id == embedded.model_id
    assert embedded.tokenizer.padding_side == "left"


# ---------------------------------------------------------------- batching

@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen2"])
def test_batched_equals_one_by_one(which, request):
    model = request.getfixturevalue(which)
    eps = episodes(7, seed=1)
    prompts = [model.render(e) for e in eps]
    ns, cs = [e.n_points for e in eps], [e.n_clusters for e in eps]
    model.batch_size = 1
    single = model.generate(prompts, ns, cs)
    model.batch_size = 4
    batched = model.generate(prompts, ns, cs)
    model.batch_size = 3
    assert batched == single
    assert model.generate(prompts[::-1], ns[::-1], cs[::-1]) == single[::-1]  # input order is kept
    # fixed max_new_tokens as well
    fixed = LocalChatModel(model.source, dtype="float32", batch_size=4, max_new_tokens=6)
    fixed._model, fixed._tok, fixed._eos_ids, fixed._pad_id = model.load() + (model._eos_ids, model._pad_id)
    out = fixed.generate(prompts)
    fixed.batch_size = 1
    assert fixed.generate(prompts) == out


def test_automatic_budget(embedded):
    n_tok = len(embedded.tokenizer("[" + ", ".join(["4"] * 50) + "]", add_special_tokens=False).input_ids)
    assert embedded.answer_budget(50, 5) == n_tok + 16
    assert embedded.max_new_tokens_for([10, 50], [3, 5]) == embedded.answer_budget(50, 5)
    with pytest.raises(ValueError, match="n_points"):
        embedded.max_new_tokens_for(None)


# ---------------------------------------------------------------- constrained decoding

def constrained_cases():
    return [generate_episode(11, "t", 5, 4, 1.0, n_points=50, episode_id="c5-n50-d4"),
            generate_episode(12, "t", 2, 1, 100.0, n_points=10, episode_id="c2-n10-d1"),
            generate_episode(13, "gaussian", 3, 2, n_points=21, episode_id="c3-n21-d2")]


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen2", "embedded"])
def test_constrained_answers_are_well_formed(which, request):
    model = request.getfixturevalue(which)
    eps = constrained_cases() + (episodes(5, seed=2) if which != "embedded" else [])
    for known_k in (True, False) if which != "embedded" else (True,):
        preds = model.predict(eps, known_k=known_k, constrained=True)
        for ep, p in zip(eps, preds):
            c = ep.n_clusters if known_k else None
            assert is_complete_answer(p.reply, ep.n_points, c), (ep.id, p.reply)
            assert p.well_formed and len(p.labels) == ep.n_points
            assert all(0 <= l < (c or min(ep.n_points, 10)) for l in p.labels)
            assert p.usage["completion_tokens"] > 0 and p.usage["prompt_tokens"] > 0
    if which == "embedded":  # the unknown-k constraint once, on the shortest episode
        p = model.predict(eps[1:2], known_k=False, constrained=True)[0]
        assert is_complete_answer(p.reply, 10, None) and is_well_formed(p.reply, 10)


# ---------------------------------------------------------------- cache, interruption, determinism

def test_cache_is_used_and_interruption_loses_nothing(tiny_qwen2, tmp_path, monkeypatch):
    eps = episodes(7, seed=3)
    reference = tiny_qwen2.predict(eps, constrained=False)
    path = tmp_path / "replies.jsonl"

    calls = {"n": 0}
    real = LocalChatModel.generate_batch

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill after the first batch")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LocalChatModel, "generate_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        tiny_qwen2.predict(eps, cache=ReplyCache(path))
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(lines) == tiny_qwen2.batch_size  # the first batch is on disk
    assert {"reply", "episode_id", "model", "usage", "key"} <= set(lines[0])
    monkeypatch.setattr(LocalChatModel, "generate_batch", real)

    resumed = tiny_qwen2.predict(eps, cache=ReplyCache(path))
    assert [p.cached for p in resumed].count(True) == tiny_qwen2.batch_size
    assert [(p.episode_id, p.reply, p.labels) for p in resumed] == [(p.episode_id, p.reply, p.labels) for p in reference]

    def boom(*a, **k):
        raise AssertionError("no generation may happen when every reply is cached")

    monkeypatch.setattr(LocalChatModel, "generate_batch", boom)
    monkeypatch.setattr(LocalChatModel, "generate", boom)
    again = tiny_qwen2.predict(eps, cache=ReplyCache(path))
    assert all(p.cached for p in again)
    assert [(p.reply, p.labels, p.usage) for p in again] == [(p.reply, p.labels, p.usage) for p in resumed]
    # constrained decoding is a different cache entry
    with pytest.raises(AssertionError, match="no generation"):
        tiny_qwen2.predict(eps[:1], constrained=True, cache=ReplyCache(path))


def test_greedy_is_explicit(tiny_llama_dir, tmp_path):
    """A generation_config asking for sampling (and a repetition penalty) is ignored: greedy."""
    sampled_dir = tmp_path / "sampling-model"
    shutil.copytree(tiny_llama_dir, sampled_dir)
    cfg = json.loads((sampled_dir / "generation_config.json").read_text())
    cfg.update(do_sample=True, temperature=1.7, top_p=0.8, top_k=5, repetition_penalty=1.8, no_repeat_ngram_size=2)
    (sampled_dir / "generation_config.json").write_text(json.dumps(cfg))

    model = LocalChatModel(str(sampled_dir), dtype="float32", batch_size=2, max_new_tokens=12)
    eps = episodes(3, seed=4)
    prompts = [model.render(e) for e in eps]
    torch.manual_seed(1)
    first = model.generate(prompts)
    torch.manual_seed(2)
    assert model.generate(prompts) == first

    # reference: plain argmax decoding with the raw model, no generation config at all
    net, tok = model.load()
    eos = set(model._eos_ids)
    for prompt, reply in zip(prompts, first):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        out = []
        with torch.no_grad():
            for _ in range(12):
                nxt = int(net(ids).logits[0, -1].argmax())
                if nxt in eos:
                    break
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert reply == tok.decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_predictions_are_deterministic(tiny_llama_dir):
    eps = episodes(4, seed=5)
    a = LocalChatModel(str(tiny_llama_dir), dtype="float32").predict(eps)
    b = LocalChatModel(str(tiny_llama_dir), dtype="float32", batch_size=1).predict(eps)
    assert [(p.reply, p.labels, p.usage) for p in a] == [(p.reply, p.labels, p.usage) for p in b]
    assert all(not p.cached for p in a)


def test_indexed_answer_format(tiny_llama_dir, monkeypatch):
    """The labelled ablation: numbered prompt, a budget for the indexed answer, indexed parsing, its own cache keys."""
    from icc_utils.prompts import answer_text, format_points

    paper = LocalChatModel(str(tiny_llama_dir), dtype="float32")
    indexed = LocalChatModel(str(tiny_llama_dir), dtype="float32", answer_format="indexed")
    ep = episodes(1, seed=6)[0]
    assert format_points(ep.points, "indexed") in indexed.render(ep)
    assert format_points(ep.points) in paper.render(ep) and "1: [" not in paper.render(ep)
    assert indexed.answer_budget(30, 3) > paper.answer_budget(30, 3)
    assert indexed.decoding_settings()["answer_format"] == "indexed" and "answer_format" not in paper.decoding_settings()

    def reply_the_truth(self, prompts, n_points=None, n_clusters=None, constrained=False, extra_inputs=None):
        truth = {self.render(e): e.labels for e in eps}
        return [{"reply": answer_text(truth[p], self.answer_format), "usage": {}} for p in prompts]

    eps = episodes(3, seed=7)
    monkeypatch.setattr(LocalChatModel, "generate_batch", reply_the_truth)
    cache = ReplyCache(None)
    for model in (indexed, paper):
        preds = model.predict(eps, cache=cache)
        assert [p.labels for p in preds] == [e.labels for e in eps] and all(p.well_formed for p in preds)
        assert not any(p.cached for p in preds)            # the two formats never share cached replies
    with pytest.raises(ValueError, match="answer_format"):
        LocalChatModel("embedded", answer_format="pairs")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="constrained decoding writes the paper's answer format"):
        indexed.predict(eps[:1], constrained=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        LocalChatModel("embedded", dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        LocalChatModel("embedded", batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        LocalChatModel("embedded", max_new_tokens=0)


def test_unavailable_hub_model_points_to_embedded(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import huggingface_hub.constants as hub_constants
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    model = LocalChatModel("icc-study-no-such-org/no-such-model-xyz")
    with pytest.raises(ModelUnavailableError, match="embedded"):
        model.load()
