"""LoRA fine-tuning (icc_utils.finetune): answer-only labels, answer-only loss, training, adapters, resume,
the run identity that decides reuse, progress, and the command line."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from collections import Counter

import pandas as pd
import pytest
import torch

from icc_utils.data import generate_episode, make_training_set
from icc_utils.finetune import (IGNORE_INDEX, CurriculumStage, EpisodeDataset, FinetuneConfig, answer_only_loss,
                                augment_permutations, collate, curriculum_curve, curriculum_from_params,
                                encode_training_example, train, train_curriculum)
from icc_utils.prompts import answer_text, episode_messages, render_chat


def episodes(k: int, seed: int = 0, length_range=(5, 14)):
    return [generate_episode(seed * 1000 + i, "t", 2 + i % 3, 1 + i % 2, 5.0, length_range=length_range,
                             episode_id=f"ep{seed}-{i}") for i in range(k)]


def tiny_config(model_dir, **kw) -> FinetuneConfig:
    base = dict(model=str(model_dir), lora_r=4, lora_alpha=8, lora_dropout=0.05, learning_rate=5e-3,
                per_device_batch_size=2, gradient_accumulation_steps=2, save_steps=2, logging_steps=1, seed=3)
    return FinetuneConfig(**{**base, **kw})


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def lora_model(model_dir, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():  # non-zero B so the adapter matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def adapter_tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


# ---------------------------------------------------------------- labels

@pytest.mark.parametrize("which", ["llama", "qwen2", "embedded"])
def test_only_answer_tokens_carry_labels(which, request):
    path = request.getfixturevalue({"llama": "tiny_llama_dir", "qwen2": "tiny_qwen2_dir",
                                    "embedded": "embedded_dir"}[which])
    tok = load_tokenizer(path)
    eot = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "embedded": "<|im_end|>"}[which]
    for ep in episodes(4, seed=1):
        for fmt in ("paper", "indexed"):   # indexed: the labelled answer-format ablation
            ex = encode_training_example(tok, ep, answer_format=fmt)
            ids, labels = ex["input_ids"], ex["labels"]
            assert len(ids) == len(labels)
            prompt = render_chat(tok, episode_messages(ep, answer_format=fmt))
            prompt_ids = tok(prompt, add_special_tokens=False).input_ids
            n_prompt = len(prompt_ids)
            assert ids[:n_prompt] == prompt_ids
            assert all(l == IGNORE_INDEX for l in labels[:n_prompt])           # no prompt token is labelled
            assert labels[n_prompt:] == ids[n_prompt:]                          # every answer token is
            assert tok.decode(labels[n_prompt:]) == answer_text(ep.labels, fmt) + eot
            assert labels[-1] == tok.convert_tokens_to_ids(eot)
        assert ex["input_ids"] != encode_training_example(tok, ep)["input_ids"]


def test_non_prefix_template_is_an_error(tiny_qwen2_dir):
    tok = load_tokenizer(tiny_qwen2_dir)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}|{% endfor %}"
                         "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    with pytest.raises(ValueError, match="not a prefix"):
        encode_training_example(tok, episodes(1)[0])


def test_collate_pads_right():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [-100]}],
                    pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# ---------------------------------------------------------------- loss

@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_answer_only_loss_equals_full_masked_loss(which, request):
    path = request.getfixturevalue(which)
    tok = load_tokenizer(path)
    model = lora_model(path)
    batch = collate([encode_training_example(tok, ep) for ep in episodes(3, seed=2)], pad_token_id=0)
    full = model(**batch).loss                                   # standard shifted, masked loss, all logits
    ours = answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert torch.allclose(ours, full, atol=1e-5, rtol=1e-5), (ours.item(), full.item())
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    summed = answer_only_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], num_items=2 * n)
    assert torch.allclose(summed, full / 2, atol=1e-5)
    # gradients agree too
    g_full = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad])
    g_ours = torch.autograd.grad(answer_only_loss(model, **batch), [p for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_full, g_ours))


# ---------------------------------------------------------------- data

def test_permutation_augmentation():
    eps = episodes(5, seed=4)
    aug = augment_permutations(eps, 3, seed=7)
    assert len(aug) == 15
    for i, ep in enumerate(eps):
        copies = aug[3 * i:3 * i + 3]
        orders = {tuple(map(tuple, c.points)) for c in copies}
        assert len(orders) == 3                                          # k distinct orders
        for c in copies:
            assert Counter(map(tuple, c.points)) == Counter(map(tuple, ep.points))   # same multiset
            # labels follow their points and are canonical (first appearance order)
            first = []
            for l in c.labels:
                if l not in first:
                    first.append(l)
            assert first == list(range(len(first)))
            # same partition as the original
            orig = {tuple(p): l for p, l in zip(ep.points, ep.labels)}
            mapping = {}
            assert all(mapping.setdefault(orig[tuple(p)], l) == l for p, l in zip(c.points, c.labels))
    assert augment_permutations(eps, 3, seed=7)[4].points == aug[4].points    # explicit seeds: reproducible
    assert augment_permutations(eps, 1, seed=7) == eps
    # a 3-point episode can still give 3 distinct orders
    tiny = generate_episode(5, "t", 2, 1, 5.0, n_points=3)
    assert len({tuple(map(tuple, e.points)) for e in augment_permutations([tiny], 3, seed=0)}) == 3


def test_dataset_order_is_seeded(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    eps = episodes(6)
    a = EpisodeDataset(eps, tok, n_permutations=2, seed=1, n_epochs=2)
    b = EpisodeDataset(eps, tok, n_permutations=2, seed=1, n_epochs=2)
    assert len(a) == 24 and a.order.tolist() == b.order.tolist()
    assert sorted(a.order[:12].tolist()) == list(range(12))              # each pass visits every item once
    assert a[5] == b[5]
    assert EpisodeDataset(eps, tok, 2, seed=2).order.tolist() != a.order[:12].tolist()


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("field,value", [
    ("lora_r", 0), ("lora_alpha", -1), ("lora_dropout", 1.5), ("target_modules", []), ("learning_rate", 0),
    ("lr_schedule", "step"), ("warmup_ratio", 1.0), ("per_device_batch_size", 0),
    ("gradient_accumulation_steps", 1.5), ("n_epochs", 0), ("max_steps", 0), ("n_permutations", 0),
    ("seed", -1), ("bf16", "yes"), ("gradient_checkpointing", 1), ("save_steps", 0), ("logging_steps", 0),
    ("max_train_seconds", -5), ("dtype", "float16"), ("model", ""), ("lora_alpha", float("inf")),
    ("max_train_seconds", float("inf")), ("learning_rate", 1.5), ("kernels", "fast"),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}="):
        FinetuneConfig(**{field: value})


def test_config_defaults_are_the_paper_recipe():
    cfg = FinetuneConfig()
    assert cfg.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert (cfg.learning_rate, cfg.lr_schedule, cfg.n_epochs, cfg.effective_batch_size) == (5e-4, "cosine", 1, 32)
    assert FinetuneConfig(target_modules="q_proj, v_proj").target_modules == ("q_proj", "v_proj")
    assert FinetuneConfig(bf16=True).weights_dtype == "bfloat16" and not FinetuneConfig(bf16=True).autocast
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown FinetuneConfig fields"):
        FinetuneConfig.from_dict({"lr": 1})
    with pytest.raises(ValueError, match=r"^target_modules\[1\]=''"):
        FinetuneConfig(target_modules=["q_proj", ""])
    assert type(FinetuneConfig(lora_alpha=16).to_dict()["lora_alpha"]) is int   # checked, never converted


# ---------------------------------------------------------------- run identity: what decides reuse

#: What train() wrote to train_config.json for the two stages of ``IDENTITY_STAGES`` before the package was split
#: (the finished runs of an earlier checkout must be reused by this one, byte for byte).
IDENTITY_CONFIG = {"bf16": False, "dtype": None, "gradient_accumulation_steps": 2, "gradient_checkpointing": False,
                   "kernels": "auto", "learning_rate": 0.0005, "logging_steps": 1, "lora_alpha": 16, "lora_dropout": 0.05,
                   "lora_r": 4, "lr_schedule": "cosine", "max_steps": None, "max_train_seconds": None,
                   "model": "embedded", "n_epochs": 1, "n_permutations": 1, "per_device_batch_size": 1, "save_steps": 50,
                   "seed": 3, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "warmup_ratio": 0.0}
IDENTITY_SHA256 = ("bab17e3e4b4c47e3cd2eead4be7f7b563ae4fbdf24368fc1118fba52d20af696",
                   "762c9d75c224814226ae0143747b7d194d05a0dd56b795e0b75484940d3dbb42")
IDENTITY_STAGES = [CurriculumStage("easy", 2, 1, 4, points=(4, 8)), CurriculumStage("hard", 3, 2, 4, points=(6, 10))]


def test_a_curriculum_trained_by_the_earlier_code_is_reused(tmp_path):
    """Two finished stages as the code before the split recorded them (train_config.json, an adapter, the last
    checkpoint, in <out>_stages/1-easy and <out>) are reused as they are, without loading a model: the same
    defaults, data sha256, starting adapter's sha256, kernels and folder layout; and this code writes the same
    bytes for the same run."""
    from icc_utils.finetune import run_identity, stage_dirs
    from icc_utils.io import write_json

    config = FinetuneConfig(lora_r=4, per_device_batch_size=1, gradient_accumulation_steps=2, seed=3)
    out = tmp_path / "run" / "adapter"
    dirs = stage_dirs(IDENTITY_STAGES, out)
    assert dirs == [tmp_path / "run" / "adapter_stages" / "1-easy", out]
    assert stage_dirs([*IDENTITY_STAGES, IDENTITY_STAGES[-1]], out, first_stage=3)[:2] == [
        tmp_path / "run" / "adapter_stages" / f"{k}-{s.name}" for k, s in zip((3, 4), IDENTITY_STAGES)]
    weights = b"stage 1 weights"
    texts = []
    for k, (d, sha) in enumerate(zip(dirs, IDENTITY_SHA256)):
        meta = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "config": IDENTITY_CONFIG, "data_sha256": sha,
                "episodes_seen": 4, "final_loss": 0.25, "finished": True, "global_step": 2, "kernels": "torch",
                "max_steps": 2, "n_episodes": 4, "n_examples_per_epoch": 4, "train_seconds": 1.5}
        if k == 1:
            meta["init_adapter"] = {"name": "1-easy", "sha256": hashlib.sha256(weights).hexdigest()}
        texts.append(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (d / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        (d / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
        (d / "adapter_model.safetensors").write_bytes(weights if k == 0 else b"stage 2 weights")
        (d / "train_config.json").write_text(texts[-1])

    run = train_curriculum(config, IDENTITY_STAGES, out)
    assert run.finished and run.reused and [r.reused for r in run.stages] == [True, True]
    assert [(d / "train_config.json").read_text() for d in dirs] == texts            # untouched
    progress = {"episodes_seen": 4, "final_loss": 0.25, "finished": True, "global_step": 2, "max_steps": 2,
                "train_seconds": 1.5}
    for k, d in enumerate(dirs):
        ours = run_identity(config, IDENTITY_STAGES[k].episodes(3), init_adapter=dirs[0] if k else None)
        assert write_json(tmp_path / f"ours{k}.json", {**ours, **progress}).read_text() == texts[k]
    # a weight-changing field or other data is another run; a bookkeeping field is not
    assert train(replace(config, save_steps=7, max_train_seconds=60.0), IDENTITY_STAGES[0].episodes(3), dirs[0]).reused
    with pytest.raises(ValueError, match="different config or training data"):
        train(replace(config, lora_dropout=0.1), IDENTITY_STAGES[0].episodes(3), dirs[0])
    with pytest.raises(ValueError, match="different config or training data"):
        train(config, IDENTITY_STAGES[0].episodes(4), dirs[0])


# ---------------------------------------------------------------- training

def fixed_batch_loss(model, tok, eps) -> float:
    batch = collate([encode_training_example(tok, ep) for ep in eps], pad_token_id=0)
    with torch.no_grad():
        return float(answer_only_loss(model, **batch))


def test_training_reduces_loss_and_adapter_round_trips(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_llama_dir)
    eps = episodes(4, seed=5)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    before = fixed_batch_loss(base, tok, eps)
    seen = []

    def on_eval(model, tokenizer, step, episodes_seen):
        assert not model.training and not torch.is_grad_enabled()
        seen.append(step)
        return {"fixed_loss": fixed_batch_loss(model, tokenizer, eps)}

    cfg = tiny_config(tiny_llama_dir, max_steps=8, lora_dropout=0.0, learning_rate=1e-2)
    res = train(cfg, eps, tmp_path / "run", on_eval=on_eval, eval_every_steps=4)
    assert res.finished and not res.reused and res.global_step == 8 and res.episodes_seen == 32
    out = tmp_path / "run"
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.json", "loss_curve.csv",
                 "loss_curve.png", "eval_curve.csv", "tokenizer_config.json"):
        assert (out / name).exists(), name
    curve = pd.read_csv(out / "loss_curve.csv")
    assert list(curve.columns) == ["step", "episodes_seen", "loss", "learning_rate", "elapsed_s"]
    assert curve["step"].tolist() == list(range(1, 9)) and curve["episodes_seen"].iloc[-1] == 32
    assert curve["learning_rate"].iloc[0] > curve["learning_rate"].iloc[-1]          # cosine decays
    assert seen == [0, 4, 8]
    evals = pd.read_csv(out / "eval_curve.csv")
    assert evals["fixed_loss"].iloc[-1] < evals["fixed_loss"].iloc[0]
    meta = json.loads((out / "train_config.json").read_text())
    assert meta["finished"] and meta["n_episodes"] == 4 and len(meta["data_sha256"]) == 64

    trained = res.model.eval()
    after = fixed_batch_loss(trained, tok, eps)
    assert after < 0.9 * before, (before, after)

    # round trip: the written adapter reproduces the in-memory model's logits
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                                       out).eval()
    batch = collate([encode_training_example(tok, ep) for ep in eps], pad_token_id=0)
    with torch.no_grad():
        a = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)

    # a finished run with the same config and data is reused; bookkeeping fields do not matter
    again = train(tiny_config(tiny_llama_dir, max_steps=8, lora_dropout=0.0, learning_rate=1e-2, logging_steps=3),
                  eps, out)
    assert again.reused and again.global_step == 8
    # a published copy (the adapter and its curves, no checkpoints: a fresh clone) is trained again, to the same adapter
    published = tmp_path / "published"
    shutil.copytree(out, published, ignore=shutil.ignore_patterns("checkpoints"))
    retrained = train(cfg, eps, published)
    assert retrained.finished and not retrained.reused and retrained.global_step == 8
    assert not (published / "eval_curve.csv").exists()   # the copied curve was not this run's (no on_eval here)
    assert pd.read_csv(published / "loss_curve.csv")["step"].tolist() == list(range(1, 9))
    assert (published / "checkpoints").is_dir() and train(cfg, eps, published).reused   # now trained here
    a, b = adapter_tensors(out), adapter_tensors(published)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7, rtol=0) for k in a)
    with pytest.raises(ValueError, match="different config or training data"):
        train(cfg, episodes(4, seed=6), out)


def test_init_adapter_starts_the_next_stage_from_an_earlier_adapter(tiny_llama_dir, tmp_path):
    """A curriculum's second stage starts from the first stage's weights (its step-0 model is that adapter),
    the starting adapter is part of the run's identity, and one that does not fit is a clear error."""
    tok = load_tokenizer(tiny_llama_dir)
    eps = episodes(4, seed=11)
    cfg = tiny_config(tiny_llama_dir, max_steps=4, lora_dropout=0.0, learning_rate=1e-2)
    first = train(cfg, eps, tmp_path / "stage1")
    end_of_first = fixed_batch_loss(first.model.eval(), tok, eps)
    at_start = []

    def on_eval(model, tokenizer, step, episodes_seen):
        if step == 0:
            at_start.append(fixed_batch_loss(model, tokenizer, eps))

    second_cfg = tiny_config(tiny_llama_dir, max_steps=2, lora_dropout=0.0, learning_rate=1e-2)
    second = train(second_cfg, episodes(4, seed=12), tmp_path / "stage2", on_eval=on_eval, eval_every_steps=2,
                   init_adapter=tmp_path / "stage1")
    assert at_start == [pytest.approx(end_of_first, abs=1e-6)]
    fresh = []
    train(second_cfg, episodes(4, seed=12), tmp_path / "fresh", on_eval=lambda m, t, s, e: fresh.append(
        fixed_batch_loss(m, t, eps)) if s == 0 else None, eval_every_steps=2)
    assert fresh[0] != pytest.approx(end_of_first, abs=1e-3)      # without it, step 0 is the fresh LoRA
    meta = json.loads((tmp_path / "stage2" / "train_config.json").read_text())
    assert meta["init_adapter"] == {"name": "stage1", "sha256": hashlib.sha256(
        (tmp_path / "stage1" / "adapter_model.safetensors").read_bytes()).hexdigest()} and second.finished
    assert train(second_cfg, episodes(4, seed=12), tmp_path / "stage2", init_adapter=tmp_path / "stage1").reused
    with pytest.raises(ValueError, match="different config or training data"):
        train(second_cfg, episodes(4, seed=12), tmp_path / "stage2")             # same dir, no starting adapter
    with pytest.raises(ValueError, match="init_adapter=.*adapter_model.safetensors"):
        train(second_cfg, eps, tmp_path / "other", init_adapter=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="init_adapter=.*does not fit"):
        train(tiny_config(tiny_llama_dir, max_steps=1, lora_r=8), eps, tmp_path / "rank8",
              init_adapter=tmp_path / "stage1")
    with pytest.raises(ValueError, match="init_adapter=.*does not fit"):
        train(tiny_config(tiny_llama_dir, max_steps=1, target_modules=("q_proj",)), eps, tmp_path / "q_only",
              init_adapter=tmp_path / "stage1")


STAGE = {"name": "easy", "n_clusters": 2, "dim": 1, "n_episodes": 4}


@pytest.mark.parametrize("change,match", [
    ({"n_episodes": None}, r"missing keys \['n_episodes'\]"),
    ({"size": 3}, r"unknown keys \['size'\]"),
    ({"n_clusters": 1}, r"ft_curriculum\[0\]\.n_clusters=1"),
    ({"dim": 0}, r"ft_curriculum\[0\]\.dim=0"),
    ({"n_episodes": 0}, r"ft_curriculum\[0\]\.n_episodes=0"),
    ({"points": [1, 5]}, r"ft_curriculum\[0\]\.points=\[1, 5\].*n_clusters=2"),
    ({"points": [9, 5]}, r"ft_curriculum\[0\]\.points=\[9, 5\]"),
    ({"dfs": []}, r"ft_curriculum\[0\]\.dfs=\[\]"),
    ({"dfs": [0]}, r"ft_curriculum\[0\]\.dfs\[0\]=0"),
    ({"separated": "yes"}, r"ft_curriculum\[0\]\.separated='yes'"),
    ({"name": "a/b"}, r"ft_curriculum\[0\]\.name='a/b'"),
])
def test_curriculum_stage_errors_name_the_stage_and_key(change, match):
    stage = {k: v for k, v in {**STAGE, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        curriculum_from_params([stage])


def test_curriculum_from_params_defaults_and_list_errors():
    (stage,) = curriculum_from_params([STAGE])
    assert stage == CurriculumStage("easy", 2, 1, 4, (10, 50), (1.0, 2.0, 5.0, 100.0), False)
    assert curriculum_from_params([]) == []
    with pytest.raises(ValueError, match=r"ft_curriculum=.*must be a list of stages"):
        curriculum_from_params(STAGE)
    with pytest.raises(ValueError, match="must be distinct"):
        curriculum_from_params([STAGE, STAGE])


def test_train_curriculum_chains_stages_shares_the_budget_and_resumes(tiny_llama_dir, tmp_path):
    """Each stage starts from the previous stage's adapter; the learning curve counts every stage's episodes and
    skips a later stage's step 0; a budget that runs out stops the curriculum, and calling again finishes it with
    the same adapter as an uninterrupted run."""
    stages = [CurriculumStage("easy", 2, 1, 4, points=(4, 8)), CurriculumStage("hard", 3, 2, 4, points=(6, 10))]
    cfg = tiny_config(tiny_llama_dir, per_device_batch_size=1, gradient_accumulation_steps=2)
    seen = []

    def on_eval(model, tokenizer, step, episodes_seen):
        seen.append((step, episodes_seen))
        return {"accuracy": 0.5}

    full = train_curriculum(cfg, stages, tmp_path / "a" / "adapter", on_eval=on_eval, eval_every_steps=1)
    assert full.finished and len(full.stages) == 2 and full.episodes_seen == 8 and full.global_step == 4
    assert seen == [(0, 0), (1, 2), (2, 4), (1, 6), (2, 8)]
    first = tmp_path / "a" / "adapter_stages" / "1-easy"
    meta = json.loads((tmp_path / "a" / "adapter" / "train_config.json").read_text())
    assert meta["init_adapter"]["name"] == first.name and meta["n_episodes"] == 4
    curve = curriculum_curve(stages, tmp_path / "a" / "adapter", stages[1].episodes(0)[:2])
    assert curve["stage"].tolist() == ["easy"] * 3 + ["hard"] * 2
    assert curve["episodes_seen"].tolist() == [0, 2, 4, 6, 8] and curve["kmeans_accuracy"].between(0, 1).all()
    assert train_curriculum(cfg, stages, tmp_path / "a" / "adapter").reused

    stopped = train_curriculum(replace(cfg, max_train_seconds=1e-3), stages, tmp_path / "b" / "adapter")
    assert not stopped.finished and len(stopped.stages) == 1 and (stopped.global_step, stopped.max_steps) == (1, 4)
    assert not (tmp_path / "b" / "adapter" / "adapter_model.safetensors").exists()   # stage 2 did not start
    done = train_curriculum(cfg, stages, tmp_path / "b" / "adapter")
    assert done.finished and [r.global_step for r in done.stages] == [2, 2]
    a, b = adapter_tensors(tmp_path / "a" / "adapter"), adapter_tensors(tmp_path / "b" / "adapter")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7, rtol=0) for k in a)

    # a stage that has not started is planned with its epochs: 2 x 4 episodes / 2 per step = 4 steps each
    two = train_curriculum(replace(cfg, n_epochs=2, max_train_seconds=1e-3), stages, tmp_path / "c" / "adapter")
    assert (two.global_step, two.max_steps) == (1, 8)
    # and evaluated at its last step only, not at every step after its first epoch
    seen.clear()
    train_curriculum(replace(cfg, n_epochs=2), stages, tmp_path / "d" / "adapter", on_eval=on_eval, eval_every_steps=100)
    assert seen == [(0, 0), (4, 8), (4, 16)]


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("variant", [{}, {"bf16": True, "kernels": "blocked", "per_device_batch_size": 1}],
                         ids=["fp32", "bf16-blocked"])
def test_resume_after_kill_equals_uninterrupted(variant, tiny_qwen2_dir, tmp_path):
    from transformers import TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 4:
                raise Killed("simulated kill after checkpoint 4")

    eps = episodes(10, seed=7)
    cfg = tiny_config(tiny_qwen2_dir, max_steps=6, **variant)   # dropout 0.05: RNG state must resume too
    full = train(cfg, eps, tmp_path / "full")
    assert full.finished
    with pytest.raises(Killed):
        train(cfg, eps, tmp_path / "killed", callbacks=[KillAfterSave()])
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-4").exists()
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    class CountSteps(TrainerCallback):
        steps = []

        def on_step_end(self, args, state, control, **kw):
            self.steps.append(state.global_step)

    counter = CountSteps()
    resumed = train(cfg, eps, tmp_path / "killed", callbacks=[counter])
    assert counter.steps == [5, 6]                         # it resumed from checkpoint 4, not from scratch
    assert resumed.finished and not resumed.reused and resumed.global_step == 6
    a, b = adapter_tensors(tmp_path / "full"), adapter_tensors(tmp_path / "killed")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.allclose(a[k], b[k], atol=1e-7, rtol=0) for k in a)
    ca, cb = pd.read_csv(tmp_path / "full" / "loss_curve.csv"), pd.read_csv(tmp_path / "killed" / "loss_curve.csv")
    assert cb["step"].tolist() == list(range(1, 7))
    assert ca["loss"].tolist() == pytest.approx(cb["loss"].tolist(), rel=1e-5)


def test_wall_clock_budget_stops_and_resumes(tiny_llama_dir, tmp_path):
    eps = episodes(6, seed=8)
    cfg = tiny_config(tiny_llama_dir, max_steps=5, max_train_seconds=1e-3)
    first = train(cfg, eps, tmp_path / "run")
    assert not first.finished and first.global_step == 1
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()
    assert not json.loads((tmp_path / "run" / "train_config.json").read_text())["finished"]
    done = train(tiny_config(tiny_llama_dir, max_steps=5), eps, tmp_path / "run")
    assert done.finished and done.global_step == 5


def test_training_shows_progress_with_the_time_left(tiny_llama_dir, tmp_path, capfd):
    """A progress bar of optimiser steps on stderr, named after the output folder, with the rate and the time left
    and the last loss; transformers' per-step log dicts are not printed; a resumed run's bar starts at its
    checkpoint's step."""
    import re

    eps = episodes(6, seed=8)
    cfg = tiny_config(tiny_llama_dir, max_steps=3, max_train_seconds=1e-3)
    assert train(cfg, eps, tmp_path / "progress-run").global_step == 1         # stopped by the time budget
    first = capfd.readouterr()
    assert train(replace(cfg, max_train_seconds=None), eps, tmp_path / "progress-run").finished
    second = capfd.readouterr()
    assert re.search(r"progress-run: +33%.*1/3 \[", first.err), first.err
    assert re.search(r"progress-run: +100%.*3/3 \[\d\d:\d\d<\d\d:\d\d, .*step.*loss=", second.err), second.err
    assert not re.search(r"0/3", second.err)                                   # resumed at step 1, not 0
    assert "{'loss'" not in first.out + second.out + first.err + second.err


def test_the_command_line_trains_the_profiles_adapter(monkeypatch, tmp_path):
    """``python -m icc_utils.finetune --profile X [--seed N] [--out DIR] [--augmented]``: the profile's curriculum
    (or notebook 00's training split) with the profile's recipe, the seed and folder given."""
    import subprocess
    import sys

    from icc_utils import PROJECT_ROOT, RESULTS_DIR
    from icc_utils.finetune import cli
    from icc_utils.profiles import load_profile

    calls = []
    monkeypatch.setattr(cli, "train_curriculum",
                        lambda config, stages, out, init_adapter=None, first_stage=1:
                        calls.append((config, stages, out, init_adapter, first_stage)))
    monkeypatch.setattr(cli, "train", lambda config, episodes, out: calls.append((config, len(episodes), out)))
    monkeypatch.setattr(cli, "training_episodes", lambda profile, n: [profile] * n)
    cli.main(["--profile", "default", "--seed", "1", "--out", str(tmp_path / "a")])
    config, stages, out, init, first = calls[-1]
    profile = load_profile("default")
    assert [s.name for s in stages] == [s["name"] for s in profile["ft_curriculum"]] and out == tmp_path / "a"
    assert config.seed == 1 and config.learning_rate == profile["ft_learning_rate"] and config.n_permutations == 1
    assert init is None and first == 1
    cli.main(["--profile", "default", "--augmented", "--from-stage", "5", "--init-adapter", "stage4"])
    config, stages, out, init, first = calls[-1]
    assert [s.name for s in stages] == [profile["ft_curriculum"][-1]["name"]] and init == "stage4" and first == 5
    assert config.seed == profile["seed"] and config.n_permutations == profile["ft_aug_permutations"]
    assert out == RESULTS_DIR / "default" / "04" / "adapter_aug"
    cli.main(["--profile", "smoke"])          # no curriculum: notebook 00's training split
    config, n, out = calls[-1]
    assert n == load_profile("smoke")["ft_n_train_episodes"] and out == RESULTS_DIR / "smoke" / "04" / "adapter"
    with pytest.raises(SystemExit):
        cli.main(["--profile", "default", "--from-stage", "3"])          # no --init-adapter
    usage = subprocess.run([sys.executable, "-m", "icc_utils.finetune", "--help"], cwd=PROJECT_ROOT, text=True,
                           capture_output=True, check=True).stdout
    assert all(option in usage for option in ("--profile", "--seed", "--out", "--augmented"))


@pytest.mark.parametrize("kernels", ["torch", "blocked"])
def test_bf16_path_trains(kernels, tiny_llama_dir, tmp_path):
    eps = episodes(4, seed=9)
    res = train(tiny_config(tiny_llama_dir, max_steps=6, bf16=True, lora_dropout=0.0, learning_rate=1e-2,
                            per_device_batch_size=1, kernels=kernels), eps, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "train_config.json").read_text())["kernels"] == kernels
    assert (res.model.config._attn_implementation == "icc_blocked_causal") == (kernels == "blocked")
    model = res.model.eval()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    frozen = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert all(p.dtype == torch.float32 for p in lora) and all(p.dtype == torch.bfloat16 for p in frozen)
    curve = pd.read_csv(tmp_path / "bf16" / "loss_curve.csv")
    assert curve["loss"].iloc[-2:].mean() < curve["loss"].iloc[:2].mean()


def test_training_set_examples_fit(tiny_llama_dir):
    """The default training distribution (n 10-50, d 1-4) encodes with labels on the answer only."""
    tok = load_tokenizer(tiny_llama_dir)
    for ep in make_training_set(6, root_seed=0):
        ex = encode_training_example(tok, ep)
        n_lab = sum(l != IGNORE_INDEX for l in ex["labels"])
        assert n_lab == len(tok(answer_text(ep.labels), add_special_tokens=False).input_ids) + 1


def test_one_label_reference_scores_the_largest_share_and_fails_the_cluster_guard():
    """The one-label reference scores the largest cluster's share (ARI 0); an adapter that answers one label
    for all points beats malformed replies (scored 0) on accuracy, but fails the guard that a method clusters
    (ARI above 0 by two standard errors) on which every fine-tuning verdict rests (icc_utils.verdicts)."""
    import numpy as np

    from icc_utils.evaluate import one_label_rows
    from icc_utils.metrics import score
    from icc_utils.verdicts import clusters, compare, decide

    eps = [generate_episode(50 + i, "t", 3, 3, [1.0, 100.0][i % 2], episode_id=f"t{i}") for i in range(30)]
    ref = one_label_rows(eps)
    share = [np.bincount(ep.labels).max() / ep.n_points for ep in eps]
    assert np.allclose(ref["accuracy"], share) and np.allclose(ref["ari"], 0) and (ref["n_pred_clusters"] == 1).all()

    def rows(preds):
        return pd.DataFrame([{"episode_id": ep.id, **score(ep.labels, p)} for ep, p in zip(eps, preds)])

    constant = rows([np.full(ep.n_points, 2) for ep in eps]).set_index("episode_id")    # the format, not the clustering
    malformed = rows([np.full(ep.n_points, -1) for ep in eps]).set_index("episode_id")  # scored 0
    better = compare("constant - malformed", constant["accuracy"], malformed["accuracy"])
    assert decide([better])[0] == "reproduced"                       # the accuracy gap alone would pass
    verdict, reason = decide([better], guards=[clusters("constant", constant["ari"])])
    assert verdict == "not testable at this profile" and "clusters" in reason   # the guard: it does not cluster


def test_reference_scores_are_the_means_of_the_reference_rows():
    """The learning curves' reference columns: k-means and one-label means overall and, with per_df, per df."""
    import numpy as np

    from icc_utils.baselines import cluster_points
    from icc_utils.evaluate import reference_scores
    from icc_utils.metrics import clustering_accuracy

    eps = [generate_episode(70 + i, "t", 3, 2, df, episode_id=f"r{i}") for i, df in enumerate([1.0, 1.0, 100.0])]
    share = [np.bincount(ep.labels).max() / ep.n_points for ep in eps]
    km = [clustering_accuracy(ep.labels, cluster_points("kmeans", ep.points, ep.n_clusters)) for ep in eps]
    assert set(reference_scores(eps)) == {"kmeans_accuracy", "kmeans_ari", "one_label_accuracy"}
    refs = reference_scores(eps, per_df=True)
    assert refs["one_label_accuracy"] == pytest.approx(np.mean(share))
    assert refs["kmeans_accuracy"] == pytest.approx(np.mean(km))
    assert refs["one_label_accuracy_df1"] == pytest.approx(np.mean(share[:2]))
    assert refs["kmeans_accuracy_df100"] == pytest.approx(km[2])


def test_curve_evaluator_scores_accuracy_ari_and_format(monkeypatch):
    """The learning-curve row: accuracy, well-formed share, mean ARI, and accuracy per df. A model that
    answers one label for every point gets the largest cluster's share as accuracy and an ARI of 0."""
    import numpy as np

    from icc_utils import models
    from icc_utils.finetune import curve_evaluator
    from icc_utils.metrics import clustering_accuracy
    from icc_utils.models import Prediction
    from icc_utils.prompts import answer_text

    eps = [generate_episode(70 + i, "t", 3, 2, df, episode_id=f"v{i}") for i, df in enumerate([1.0, 1.0, 100.0])]
    replies = {"v0": list(eps[0].labels), "v1": [0] * eps[1].n_points, "v2": [0] * eps[2].n_points}

    def predict(self, episodes, desc=None):
        return [Prediction(ep.id, replies[ep.id], answer_text(replies[ep.id], self.answer_format)) for ep in episodes]

    monkeypatch.setattr(models.LocalChatModel, "_attach", lambda self, model, tok: None)
    monkeypatch.setattr(models.LocalChatModel, "predict", predict)
    acc = [1.0] + [clustering_accuracy(ep.labels, [0] * ep.n_points) for ep in eps[1:]]
    for fmt in ("paper", "indexed"):   # indexed: the labelled ablation, scored in its own format
        row = curve_evaluator(eps, answer_format=fmt)(None, None, 3, 12)
        assert row["accuracy"] == pytest.approx(np.mean(acc))
        assert row["ari"] == pytest.approx(1 / 3)            # perfect (1), one label (0), one label (0)
        assert row["well_formed"] == 1.0 and row["length_ratio"] == 1.0
        assert row["accuracy_df1"] == pytest.approx(np.mean(acc[:2]))
        assert row["accuracy_df100"] == pytest.approx(acc[2])
    # a reply in the other format is read as no labels at all
    monkeypatch.setattr(models.LocalChatModel, "predict", lambda self, episodes, desc=None: [
        Prediction(ep.id, replies[ep.id], answer_text(replies[ep.id])) for ep in episodes])
    row = curve_evaluator(eps, answer_format="indexed")(None, None, 3, 12)
    assert row["well_formed"] == 0.0 and row["length_ratio"] == 0.0
    with pytest.raises(ValueError, match="answer_format"):
        curve_evaluator(eps, answer_format="pairs")


def test_a_curriculum_continued_from_a_stage_equals_the_uninterrupted_one(tiny_llama_dir, tmp_path):
    """``--from-stage K --init-adapter <stage K-1>`` (a published stage on another machine) trains the remaining
    stages to the same adapter as the whole curriculum; the command line refuses a start without its adapter."""
    from icc_utils.finetune.cli import main

    stages = [CurriculumStage("easy", 2, 1, 4, points=(4, 8)), CurriculumStage("hard", 3, 2, 4, points=(6, 10))]
    cfg = tiny_config(tiny_llama_dir, per_device_batch_size=1, gradient_accumulation_steps=2)
    whole = train_curriculum(cfg, stages, tmp_path / "whole" / "adapter")
    first = tmp_path / "whole" / "adapter_stages" / "1-easy"
    rest = train_curriculum(cfg, stages[1:], tmp_path / "rest" / "adapter", init_adapter=first)
    assert whole.finished and rest.finished and rest.episodes_seen == 4
    a, b = adapter_tensors(tmp_path / "whole" / "adapter"), adapter_tensors(tmp_path / "rest" / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--from-stage", "2"])
