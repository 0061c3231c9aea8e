"""The local transformers backend: chat templates, batching, constrained decoding, cache, greedy."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from icc_utils.cache import ReplyCache
from icc_utils.data import generate_episode
from icc_utils.decoding import is_complete_answer
from icc_utils.models import (EMBEDDED_NAME, LocalChatModel, ModelUnavailableError, default_threads, get_backend,
                               physical_cores, set_threads)
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

    def reply_the_truth(self, prompts, n_points=None, n_clusters=None, constrained=False, extra_inputs=None,
                        on_row_done=None):
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


# ---------------------------------------------------------------- threads (issue 39, fault 10)

def test_threads_default_to_the_physical_cores_and_can_be_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == (physical_cores(), "physical cores") and physical_cores() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == (1, "OMP_NUM_THREADS")
    assert default_threads(3) == (3, "threads")           # an explicit value wins
    saved = torch.get_num_threads()
    try:
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        assert set_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
    with pytest.raises(ValueError, match="threads=0"):
        LocalChatModel("embedded", threads=0)


def test_loading_a_local_model_sets_its_threads(tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        LocalChatModel(str(tiny_llama_dir), dtype="float32", threads=1).load()
        assert torch.get_num_threads() == 1
        LocalChatModel(str(tiny_llama_dir), dtype="float32").load()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


# ---------------------------------------------------------------- batch invariance (issue 39, fault 12)

def _step_logits(model, prompts, forced, invariant: bool):
    """Logits of each decoding step of a batch, the next tokens forced (the same for every batching)."""
    from icc_utils.batch_invariance import batch_invariant

    net, tok = model.load()
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    steps = []
    with torch.inference_mode(), batch_invariant(net, invariant):
        out = net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        for t in range(forced.shape[1]):
            steps.append(out.logits[:, -1].float())
            nxt = forced[:, t:t + 1]
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            pos = pos[:, -1:] + 1
            out = net(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=out.past_key_values,
                      use_cache=True)
    return torch.stack(steps, 1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_an_episode_gets_the_same_logits_alone_and_in_any_batch(which, dtype, request):
    """Left padding and the batch's size change no bit of any row's logits (prefill and 12 decoding steps)."""
    model = LocalChatModel(str(request.getfixturevalue(which)), dtype=dtype)
    prompts = [model.render(e) for e in episodes(3, seed=8, length_range=(5, 40))]
    assert len({len(model.tokenizer(p).input_ids) for p in prompts}) == 3     # three lengths: padding happens
    forced = torch.randint(40, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    batched = _step_logits(model, prompts, forced, True)
    for r in range(3):
        alone = _step_logits(model, prompts[r:r + 1], forced[r:r + 1], True)
        assert torch.equal(alone[0], batched[r]), f"row {r}"


def test_batch_invariance_restores_the_model(tiny_llama_dir):
    from icc_utils.batch_invariance import ATTENTION_NAME, batch_invariant

    model = LocalChatModel(str(tiny_llama_dir), dtype="float32")
    net, _ = model.load()
    before = net.config._attn_implementation
    with batch_invariant(net):
        assert net.config._attn_implementation == ATTENTION_NAME
        assert all("forward" in vars(m) for m in net.modules() if isinstance(m, torch.nn.Linear))
    assert net.config._attn_implementation == before
    assert not any("forward" in vars(m) for m in net.modules() if isinstance(m, torch.nn.Linear))
    assert model.decoding_settings()["attention"] == "row-sdpa"
    assert "attention" not in LocalChatModel(str(tiny_llama_dir), batch_invariant=False).decoding_settings()


@pytest.mark.embedded
def test_embedded_bfloat16_replies_do_not_depend_on_the_batch(embedded_dir):
    """The published failure: in bfloat16, replies at batch 1 and batch 4 differed for about half the episodes."""
    from icc_utils.data import episode_seed

    eps = [generate_episode(episode_seed(2024, "test", "t", 3, 2, 5.0, i), "t", 3, 2, 5.0, length_range=(8, 16),
                            episode_id=f"bi-{i}") for i in range(4)]
    model = LocalChatModel("embedded", dtype="bfloat16", batch_size=1, threads=1)
    prompts = [model.render(e) for e in eps]
    ns, cs = [e.n_points for e in eps], [e.n_clusters for e in eps]
    alone = model.generate(prompts, ns, cs)
    model.batch_size = 4
    assert model.generate(prompts, ns, cs) == alone


# ---------------------------------------------------------------- progress per episode (issue 37, item 7)

def test_progress_moves_as_each_row_finishes(tiny_llama):
    eps = [generate_episode(30 + i, "t", 2, 1, 5.0, n_points=n, episode_id=f"p{i}") for i, n in enumerate((4, 9, 15))]
    prompts = [tiny_llama.render(e) for e in eps]
    calls = []
    tiny_llama.generate_batch(prompts, [e.n_points for e in eps], [2, 2, 2], constrained=True, on_row_done=calls.append)
    assert sum(calls) == 3 and len(calls) == 3        # constrained answers of 4, 9, 15 labels end at three steps


def test_cache_keys_follow_content_not_the_checkouts_folder(tiny_llama_dir, tmp_path):
    """A moved checkout reuses its reply caches: a model folder and an adapter are named by content and folder
    name in the model id (the cache key), never by their path on this machine."""
    import shutil

    from icc_utils.models import LocalChatModel

    a, b = tmp_path / "one" / "model", tmp_path / "two" / "model"
    shutil.copytree(tiny_llama_dir, a)
    shutil.copytree(tiny_llama_dir, b)
    for d in (a, b):
        (d.parent / "adapter").mkdir()
        (d.parent / "adapter" / "adapter_model.safetensors").write_bytes(b"same weights")
    ids = [LocalChatModel(str(d), adapter=str(d.parent / "adapter")).model_id for d in (a, b)]
    assert ids[0] == ids[1] and str(tmp_path) not in ids[0]
    (b.parent / "adapter" / "adapter_model.safetensors").write_bytes(b"other weights")
    assert LocalChatModel(str(b), adapter=str(b.parent / "adapter")).model_id != ids[0]
