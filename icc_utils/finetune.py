"""LoRA fine-tuning on clustering episodes with next-token loss on the answer only (paper Section 4).

PROTOCOL.md, "Fine-tuning": LoRA on the attention projections (q, k, v, o), loss on the answer
tokens only, one epoch, effective batch 32, learning rate 5e-4, cosine schedule; permutation
augmentation repeats each episode with k random point orders (Table 5).

The pieces, in the order they run:

* :func:`encode_training_example` renders one episode with the model's chat template and masks
  every prompt token with ``-100``; only the assistant's reply (and its end-of-turn token) carry labels.
* :class:`EpisodeDataset` is the training set: (episode, permutation) items in an order fixed by
  the seed, tokenised lazily; :func:`collate` pads on the right.
* :func:`answer_only_loss` runs the decoder, keeps the final hidden states only where the next
  token is an answer token and applies the LM head there (not over the whole vocabulary at every
  prompt position).
* :func:`train` wraps it all in a transformers ``Trainer`` (CPU, one GPU, or several with
  ``accelerate launch``), checkpoints, resumes, and writes a standard PEFT adapter.
* :func:`train_curriculum` runs :func:`train` once per :class:`CurriculumStage` (notebook 04's
  ``ft_curriculum``), each stage starting from the previous stage's adapter, under one time budget.

Files written under ``output_dir``: ``adapter_config.json`` + ``adapter_model.safetensors``
(``PeftModel.from_pretrained(base, output_dir)``), the tokenizer, ``train_config.json``,
``loss_curve.csv`` / ``loss_curve.png``, ``eval_curve.csv`` (with ``on_eval``) and ``checkpoints/``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import DEFAULT_LENGTH_RANGE, TRAIN_DFS, Episode, permute_episode
from .io import write_csv, write_json
from .prompts import answer_text, check_answer_format, episode_messages

IGNORE_INDEX = -100
LR_SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")
DTYPES = ("float32", "bfloat16")
KERNELS = ("auto", "torch", "blocked")
#: Config fields that do not change the trained weights (ignored when deciding to reuse a finished run).
_BOOKKEEPING_FIELDS = ("save_steps", "logging_steps", "max_train_seconds")


# ---------------------------------------------------------------- config

@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (defaults: the paper's recipe, PROTOCOL.md).

    Effective batch = ``per_device_batch_size * gradient_accumulation_steps`` (x the number of
    processes). ``bf16=True``: frozen base weights stored in bfloat16, LoRA weights and optimiser
    state in float32 (with ``kernels="torch"`` PEFT casts the LoRA branch's input to float32), no autocast. ``dtype``
    overrides the base weights' dtype (``None``: bfloat16 when ``bf16`` else float32);
    ``bf16=True`` with ``dtype="float32"`` is plain ``torch.autocast(bfloat16)``.

    ``kernels``: ``"torch"`` trains with PyTorch's own attention (``sdpa``) and ``nn.Dropout``;
    ``"blocked"`` with :mod:`icc_utils.kernels` (causal attention in query blocks, 16-bit dropout
    masks, LoRA products in bf16 with float32 weights: 1.3-1.4x faster bf16 steps on the 2-core AMD,
    ``benchmarks/finetune.py``); ``"auto"`` picks ``"blocked"`` for bf16 weights on a CPU and
    ``"torch"`` elsewhere (float32 runs, GPUs), see :meth:`resolved_kernels`.

    Use ``bf16=True`` on a GPU or a CPU with native bf16 matmuls (notebook 04's ``ft_bf16: auto``
    decides by the machine). On the AVX2-only AMD EPYC CPUs every bf16 variant measured ~20x
    *slower* than fp32 (bf16 matmul 0.3-34 GFLOP/s vs ~130 in fp32); on a 2-core Xeon with AMX
    (bf16 matmul 655 GFLOP/s vs 161 in fp32) bf16 steps were 1.36x faster (benchmarks/finetune.py).
    """

    model: str = "embedded"
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 5e-4
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.0
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    n_epochs: int = 1
    max_steps: int | None = None
    n_permutations: int = 1
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 50
    logging_steps: int = 1
    max_train_seconds: float | None = None
    dtype: str | None = None
    kernels: str = "auto"

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(m.strip() for m in self.target_modules.split(",") if m.strip())
        elif isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and what it allows."""
        def bad(name, why):
            raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; {why}")

        def int_at_least(name, lo, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                bad(name, f"it must be {'None or ' if optional else ''}an integer >= {lo}")

        def number_in(name, lo, hi, lo_open=False, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            ok = (not isinstance(v, bool) and isinstance(v, (int, float, np.floating, np.integer))
                  and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi)
            if not ok:
                bad(name, f"it must be {'None or ' if optional else ''}a number in "
                          f"{'(' if lo_open else '['}{lo}, {hi}]")

        if not isinstance(self.model, str) or not self.model:
            bad("model", "it must be a model name ('embedded', a hub id or a local directory)")
        int_at_least("lora_r", 1)
        number_in("lora_alpha", 0, math.inf, lo_open=True)
        number_in("lora_dropout", 0, 0.999)
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            bad("target_modules", "it must be a non-empty list of module names, e.g. "
                                  "['q_proj', 'k_proj', 'v_proj', 'o_proj']")
        number_in("learning_rate", 0, 1, lo_open=True)
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"choose one of {list(LR_SCHEDULES)}")
        number_in("warmup_ratio", 0, 0.999)
        int_at_least("per_device_batch_size", 1)
        int_at_least("gradient_accumulation_steps", 1)
        int_at_least("n_epochs", 1)
        int_at_least("max_steps", 1, optional=True)
        int_at_least("n_permutations", 1)
        int_at_least("seed", 0)
        for name in ("bf16", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "it must be True or False")
        int_at_least("save_steps", 1)
        int_at_least("logging_steps", 1)
        number_in("max_train_seconds", 0, math.inf, lo_open=True, optional=True)
        if self.dtype is not None and self.dtype not in DTYPES:
            bad("dtype", f"choose None (automatic) or one of {list(DTYPES)}")
        if self.kernels not in KERNELS:
            bad("kernels", f"choose one of {list(KERNELS)}")

    @property
    def effective_batch_size(self) -> int:
        """Episodes per optimiser step on one process."""
        return self.per_device_batch_size * self.gradient_accumulation_steps

    @property
    def weights_dtype(self) -> str:
        """dtype of the frozen base weights."""
        return self.dtype or ("bfloat16" if self.bf16 else "float32")

    @property
    def autocast(self) -> bool:
        """Whether the forward runs under ``torch.autocast(bfloat16)`` (only bf16 with fp32 weights)."""
        return self.bf16 and self.weights_dtype == "float32"

    def resolved_kernels(self, cuda: bool | None = None) -> str:
        """``kernels`` with ``"auto"`` decided: ``"blocked"`` for bf16 weights on a CPU, else ``"torch"``."""
        if self.kernels != "auto":
            return self.kernels
        if cuda is None:
            import torch
            cuda = torch.cuda.is_available()
        return "blocked" if self.weights_dtype == "bfloat16" and not cuda else "torch"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FinetuneConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------- data

def permutation_seeds(episode: Episode, k: int, seed: int) -> list[int]:
    """``k`` explicit seeds for :func:`~icc_utils.data.permute_episode` giving ``k`` distinct point orders.

    Seeds come from (``seed``, the episode's own seed, j); a candidate whose order repeats an
    earlier one is skipped (only possible for very small ``n``).
    """
    if k > math.factorial(min(episode.n_points, 20)):
        raise ValueError(f"n_permutations={k} is out of range for an episode of {episode.n_points} points")
    seeds, orders, j = [], set(), 0
    while len(seeds) < k:
        s = int(np.random.SeedSequence([int(seed), int(episode.seed), j]).generate_state(1, np.uint64)[0])
        order = tuple(np.random.default_rng(s).permutation(episode.n_points).tolist())
        if order not in orders:
            orders.add(order)
            seeds.append(s)
        j += 1
    return seeds


def augment_permutations(episodes: Sequence[Episode], k: int, seed: int) -> list[Episode]:
    """Permutation augmentation: each episode repeated with ``k`` random point orders (``k=1``: unchanged)."""
    if k == 1:
        return list(episodes)
    return [permute_episode(ep, s, suffix=f"perm{j}")
            for ep in episodes for j, s in enumerate(permutation_seeds(ep, k, seed))]


def data_sha256(episodes: Sequence[Episode]) -> str:
    """A fingerprint of the training episodes (ids, points, labels, in order)."""
    h = hashlib.sha256()
    for ep in episodes:
        content = ep.points if hasattr(ep, "points") else ep.indices   # numeric or image episode
        h.update(json.dumps([ep.id, content, ep.labels], separators=(",", ":")).encode())
    return h.hexdigest()


def _end_of_turn_ids(tokenizer) -> set[int]:
    """Ids that end an assistant turn: the eos token and every special added token."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def encode_training_example(tokenizer, episode: Episode, known_k: bool = True, answer_format: str = "paper") -> dict:
    """Token ids and labels for one numeric episode (see :func:`encode_chat_example`); ``answer_format``
    (prompt and answer) as in :func:`icc_utils.prompts.user_prompt`."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template; "
                         "fine-tuning uses the model's own chat template (use an -Instruct model)")
    messages = episode_messages(episode, known_k, answer_format)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": answer_text(episode.labels, answer_format)}], tokenize=False)
    return encode_chat_example(tokenizer, prompt, full, episode.id)


def encode_chat_example(tokenizer, prompt: str, full: str, name: str = "?") -> dict:
    """Token ids and labels for one rendered example: ``-100`` on every prompt token, ids on the answer.

    ``prompt`` is the chat template with the generation prompt; ``full`` is the chat template with
    the answer as the assistant turn. The prompt's tokens must be a prefix of the full text's
    tokens (else ``ValueError``). The labelled part is the continuation up to and including the
    first end-of-turn token (``<|eot_id|>``, ``<|im_end|>``, ...); whatever the template writes
    after it (e.g. ChatML's newline) is dropped, as generation stops there. If the template
    writes no end-of-turn token, the eos token is appended.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    full_ids = tokenizer(full, add_special_tokens=False).input_ids
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError(f"chat template of {getattr(tokenizer, 'name_or_path', '?')!r}: the tokens of the prompt "
                         "(add_generation_prompt=True) are not a prefix of the tokens of prompt + answer, so the "
                         "answer span cannot be found")
    answer = full_ids[len(prompt_ids):]
    eot = _end_of_turn_ids(tokenizer)
    cut = next((i for i, t in enumerate(answer) if t in eot), None)
    if cut is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the chat template writes no end-of-turn token and the tokenizer has no eos token")
        answer = answer + [int(tokenizer.eos_token_id)]
    else:
        answer = answer[:cut + 1]
    if len(answer) < 2:
        raise ValueError(f"episode {name}: empty answer span after the chat template")
    return {"input_ids": prompt_ids + answer, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer}


class EpisodeDataset:
    """The training examples: ``n_permutations`` orders of each episode, for ``n_epochs`` passes.

    Each pass visits every (episode, permutation) once in an order drawn from
    ``numpy.random.default_rng([seed, pass])``; items are tokenised when read, in ``answer_format``.
    """

    def __init__(self, episodes: Sequence[Episode], tokenizer, n_permutations: int = 1, seed: int = 0,
                 n_epochs: int = 1, answer_format: str = "paper"):
        self.episodes, self.tokenizer = list(episodes), tokenizer
        self.answer_format = check_answer_format(answer_format)
        self.k, self.seed = int(n_permutations), int(seed)
        n_items = len(self.episodes) * self.k
        self.order = np.concatenate([np.random.default_rng([self.seed, e]).permutation(n_items)
                                     for e in range(n_epochs)]) if n_items else np.zeros(0, int)

    def __len__(self) -> int:
        return len(self.order)

    def episode(self, i: int) -> Episode:
        """The (possibly permuted) episode behind item ``i``."""
        item = int(self.order[i])
        ep = self.episodes[item // self.k]
        if self.k == 1:
            return ep
        j = item % self.k
        return permute_episode(ep, permutation_seeds(ep, self.k, self.seed)[j], suffix=f"perm{j}")

    def __getitem__(self, i: int) -> dict:
        return encode_training_example(self.tokenizer, self.episode(i), answer_format=self.answer_format)


def collate(examples: Sequence[dict], pad_token_id: int = 0) -> dict:
    """Right-pad a list of examples: ``input_ids`` with ``pad_token_id``, labels with -100, attention_mask 0."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), int(pad_token_id), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"])
        labels[r, :n] = torch.tensor(e["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------- loss

def _base_model(model):
    """The transformers ``*ForCausalLM`` under PEFT / DDP / DeepSpeed wrappers."""
    while hasattr(model, "module"):  # DDP, DeepSpeed engine
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def next_token_logits(model, input_ids, attention_mask, keep, **inputs):
    """Float logits of the next token at the positions ``keep`` selects, with the LM head applied only there.

    ``keep`` is a (B, T-1) boolean mask: ``keep[b, t]`` asks for the prediction of token ``t + 1``. The model runs
    through its own ``forward`` with an empty ``logits_to_keep`` (its own LM head runs on no position: with
    ``logits_to_keep=1`` a bf16 CPU step spent 185 ms copying the transposed vocabulary matrix for a logit it did not
    use); its final (normed) hidden states go through the LM head here.
    """
    import torch

    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device), use_cache=False, **inputs)
    hidden = out.hidden_states[-1][:, :-1]          # (B, T-1, H): position t predicts token t+1
    lm_head = _base_model(model).get_output_embeddings()
    return lm_head(hidden[keep].to(lm_head.weight.dtype)).float()


def answer_only_loss(model, input_ids, attention_mask, labels, num_items: int | None = None, **inputs):
    """Next-token cross-entropy on the answer tokens, with logits computed only there.

    The model runs through its own ``forward`` (so DDP / DeepSpeed hooks fire), via
    :func:`next_token_logits` at the positions whose *next* label is not -100. Returns the sum of token losses divided by ``num_items``
    (the number of answer tokens in the whole accumulated batch) or, if ``None``, by this
    batch's answer-token count: the same value as the standard shifted, masked loss. Further
    ``inputs`` (a multimodal model's ``pixel_values``) go to the model's forward.
    """
    import torch.nn.functional as F

    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = next_token_logits(model, input_ids, attention_mask, keep, **inputs)
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    denom = num_items if num_items is not None else keep.sum()
    return loss / denom


# ---------------------------------------------------------------- training

@dataclass
class TrainResult:
    """What :func:`train` did: where the adapter is, how far it got, whether it was reused."""

    output_dir: Path
    global_step: int
    max_steps: int
    episodes_seen: int
    finished: bool
    reused: bool
    train_seconds: float
    final_loss: float | None
    model: object = field(default=None, repr=False)  #: the in-memory PeftModel (None when reused)
    stages: tuple = field(default=(), repr=False)    #: a curriculum's per-stage results (train_curriculum)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _identity(cfg: dict) -> dict:
    """The fields of a saved config that change the trained weights; fields it predates take their defaults."""
    full = {f.name: f.default for f in fields(FinetuneConfig) if f.default is not MISSING}
    full.update(cfg)
    return {k: v for k, v in full.items() if k not in _BOOKKEEPING_FIELDS}


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    cands = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(cands, key=lambda p: int(p.name.split("-")[-1])) if cands else None


def _checkpoint_step(checkpoint: Path | None) -> int | None:
    """The global step of ``checkpoint`` (a ``checkpoint-*`` directory; None for None)."""
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] if checkpoint else None


def _adapter_identity(adapter_dir: str | Path) -> dict:
    """The weights' sha256 of a PEFT adapter directory (a clear error when it holds none), and its folder's
    name for readers; never its path, so that a chain of stages can move to another checkout."""
    path = Path(adapter_dir).expanduser().resolve() / "adapter_model.safetensors"
    if not path.is_file():
        raise ValueError(f"init_adapter={str(adapter_dir)!r} is not allowed; it must be a PEFT adapter directory "
                         f"holding adapter_model.safetensors (the output_dir of an earlier train())")
    return {"name": path.parent.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _portable_adapter_config(adapter_dir: Path, base_model: str) -> None:
    """PEFT writes the base model's local path into ``adapter_config.json``; name the model instead."""
    path = adapter_dir / "adapter_config.json"
    if path.exists():
        cfg = json.loads(path.read_text())
        cfg["base_model_name_or_path"] = base_model
        write_json(path, cfg)


def _load_adapter_weights(model, adapter_dir: str | Path) -> None:
    """Copy an earlier adapter's LoRA weights into ``model`` (a fresh PeftModel of the same LoRA shape)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(adapter_dir).expanduser().resolve() / "adapter_model.safetensors"))
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as err:   # a shape mismatch (another rank)
        raise ValueError(f"init_adapter={str(adapter_dir)!r} does not fit this run's LoRA: {err}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"init_adapter={str(adapter_dir)!r} does not fit this run's LoRA (other target modules): "
                         f"{len(result.unexpected_keys)} of its tensors unused, {len(missing)} of ours not set")


def plot_loss_curve(df, path: str | Path) -> Path:
    """Training loss against episodes seen, saved as a PNG."""
    from .plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(df["episodes_seen"], df["loss"], lw=1.2)
    ax.set_xlabel("training episodes seen")
    ax.set_ylabel("answer-token loss (nats)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    save_figure(fig, tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _make_trainer_class():
    from transformers import Trainer

    class AnswerOnlyTrainer(Trainer):
        """``Trainer`` with :func:`answer_only_loss`, normalised over the whole accumulated batch,
        and the training data in the dataset's own (seeded) order."""

        loss_is_scaled_for_ga = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = True   # makes Trainer count answer tokens per optimiser step
            self._loss_shifts_labels = True

        def _get_train_sampler(self, train_dataset=None):
            from torch.utils.data import SequentialSampler

            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "labels")}
            loss = answer_only_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                    num_items_in_batch, **extra)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
            return (loss, None) if return_outputs else loss

    return AnswerOnlyTrainer


def _per_step(config: FinetuneConfig) -> int:
    """Training examples per optimiser step, over every process (``WORLD_SIZE``: set by accelerate launch / torchrun)."""
    return config.effective_batch_size * max(1, int(os.environ.get("WORLD_SIZE", 1)))


def _n_epochs(config: FinetuneConfig, n_items: int) -> int:
    """Passes over ``n_items`` examples: ``config.n_epochs``, or as many as ``config.max_steps`` needs."""
    if config.max_steps is None:
        return config.n_epochs
    return max(1, math.ceil(config.max_steps * _per_step(config) / n_items))


def _planned_steps(config: FinetuneConfig, n_items: int) -> int:
    """Optimiser steps of a run on ``n_items`` examples (episodes x permutations) of the text dataset."""
    return config.max_steps or math.ceil(n_items * _n_epochs(config, n_items) / _per_step(config))


def _make_callback(output_dir: Path, cfg: FinetuneConfig, n_examples: int, start_offset_s: float,
                   rows: list, eval_rows: list, on_eval, eval_every_steps, tokenizer):
    """Loss-curve writer, wall-clock budget, and the ``on_eval`` hook, as one TrainerCallback."""
    import pandas as pd
    import torch
    from transformers import TrainerCallback

    per_step = _per_step(cfg)

    def seen(state) -> int:
        return min(state.global_step * per_step, n_examples)

    class Recorder(TrainerCallback):
        def __init__(self):
            self.t0 = time.perf_counter()
            self.stopped_for_time = False

        def elapsed(self) -> float:
            return start_offset_s + time.perf_counter() - self.t0

        def _eval(self, state, model):
            if on_eval is None or not state.is_world_process_zero:
                return
            rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    rec = on_eval(model, tokenizer, state.global_step, seen(state))
            finally:
                model.train(was_training)
                random.setstate(rng[0]); np.random.set_state(rng[1]); torch.set_rng_state(rng[2])
            if isinstance(rec, dict):
                eval_rows.append({"step": state.global_step, "episodes_seen": seen(state),
                                  "elapsed_s": self.elapsed(), **rec})
                write_csv(output_dir / "eval_curve.csv", pd.DataFrame(eval_rows))

        def on_train_begin(self, args, state, control, model=None, **kw):
            if eval_every_steps and state.global_step == 0:
                self._eval(state, model)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            rows.append({"step": state.global_step, "episodes_seen": seen(state),
                         "loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", float("nan"))),
                         "elapsed_s": round(self.elapsed(), 3)})
            write_csv(output_dir / "loss_curve.csv", pd.DataFrame(rows))

        def on_step_end(self, args, state, control, model=None, **kw):
            if eval_every_steps and state.global_step % eval_every_steps == 0:
                self._eval(state, model)
            if cfg.max_train_seconds is not None and self.elapsed() >= cfg.max_train_seconds \
                    and state.global_step < state.max_steps:
                self.stopped_for_time = True
                control.should_save = True
                control.should_training_stop = True
            return control

    return Recorder()


def train(config: FinetuneConfig, train_episodes: Sequence[Episode], output_dir: str | Path, resume: bool = True,
          on_eval: Callable | None = None, eval_every_steps: int | None = None,
          callbacks: Sequence = (), model_loader: Callable | None = None, make_dataset: Callable | None = None,
          collate_fn: Callable | None = None, lora_overrides: dict | None = None,
          init_adapter: str | Path | None = None) -> TrainResult:
    """Fine-tune ``config.model`` with LoRA on ``train_episodes``; the adapter goes to ``output_dir``.

    * A finished run with the same config (bookkeeping fields aside) and data is reused as is, when it
      was trained here: its last checkpoint is in ``output_dir/checkpoints``. A finished adapter
      without its checkpoints (a published one, in a fresh clone) is trained again from step 0, so
      ``make reproduce`` re-derives the adapter instead of reading back the published one.
    * ``resume=True`` continues from the last checkpoint in ``output_dir/checkpoints``; the result
      is the same adapter as an uninterrupted run. ``resume=False`` discards earlier outputs.
    * ``on_eval(model, tokenizer, step, episodes_seen)`` is called at step 0 and every
      ``eval_every_steps`` steps with the model in eval mode (under ``no_grad``; the RNG state is
      restored afterwards, so evaluating does not change training); a returned dict becomes a row
      of ``eval_curve.csv``.
    * ``max_train_seconds`` stops cleanly (checkpoint + adapter, ``finished=False``); call
      again to continue.
    * Other models and data (notebook 05's multimodal model): ``model_loader(config) -> (model,
      tokenizer)`` replaces the text-model loader, ``make_dataset(episodes, tokenizer, n_epochs)``
      the text dataset, ``collate_fn(examples, pad_id)`` the text collator, and ``lora_overrides``
      (e.g. ``target_modules`` as a regex, ``modules_to_save``) update the ``LoraConfig`` (keys
      starting with ``_`` are only recorded, as part of the run's identity).
    * ``init_adapter``: a PEFT adapter directory of an earlier run (same LoRA shape) whose weights
      start this run instead of the fresh LoRA initialisation (with a new optimiser and schedule): the
      next stage of a curriculum. Its path and weights' sha256 are part of the run's identity.
    """
    import pandas as pd
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from .models import load_model_and_tokenizer, model_id

    if not isinstance(config, FinetuneConfig):
        raise ValueError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    config.validate()
    train_episodes = list(train_episodes)
    if not train_episodes:
        raise ValueError("train_episodes is empty; pass at least one Episode")
    if eval_every_steps is not None and (isinstance(eval_every_steps, bool) or not isinstance(eval_every_steps, int)
                                         or eval_every_steps < 1):
        raise ValueError(f"eval_every_steps={eval_every_steps!r} is not allowed; it must be None or an integer >= 1")
    output_dir = Path(output_dir).expanduser().resolve()
    ckpt_dir = output_dir / "checkpoints"
    meta_path = output_dir / "train_config.json"
    meta = {"config": config.to_dict(), "n_episodes": len(train_episodes),
            "n_examples_per_epoch": len(train_episodes) * config.n_permutations,
            "data_sha256": data_sha256(train_episodes), "base_model": model_id(config.model),
            "kernels": config.resolved_kernels()}
    if lora_overrides:
        meta["lora_overrides"] = dict(lora_overrides)
    if init_adapter is not None:
        meta["init_adapter"] = _adapter_identity(init_adapter)

    old = json.loads(meta_path.read_text()) if meta_path.exists() else None
    same = old is not None and _identity(old["config"]) == _identity(meta["config"]) \
        and old["data_sha256"] == meta["data_sha256"] and old.get("lora_overrides") == meta.get("lora_overrides") \
        and (old.get("init_adapter") or {}).get("sha256") == (meta.get("init_adapter") or {}).get("sha256") and old.get("kernels", "torch") == meta["kernels"]
    if resume and same and old.get("finished") and (output_dir / "adapter_model.safetensors").exists() \
            and _checkpoint_step(_last_checkpoint(ckpt_dir)) == old["global_step"]:
        return TrainResult(output_dir, old["global_step"], old["max_steps"], old["episodes_seen"], True, True,
                           old["train_seconds"], old.get("final_loss"))
    if resume and old is not None and not same:
        raise ValueError(f"{output_dir} holds a run with a different config or training data; "
                         "use another output_dir, or resume=False to discard it")
    if not resume:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for name in ("train_config.json", "adapter_model.safetensors", "adapter_config.json"):  # curves: below
            (output_dir / name).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    # ---- model: frozen base (fp32 or bf16) + LoRA in fp32, seeded
    _seed_everything(config.seed)
    if model_loader is not None:
        model, tok = model_loader(config)
    else:
        model, tok = load_model_and_tokenizer(config.model, dtype=config.weights_dtype)
    model.config.use_cache = False
    lora_kwargs = {"target_modules": list(config.target_modules),
                   **{k: v for k, v in (lora_overrides or {}).items() if not k.startswith("_")}}
    lora = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, **lora_kwargs)
    model = get_peft_model(model, lora)   # adapter weights are float32 (autocast_adapter_dtype)
    if init_adapter is not None:
        _load_adapter_weights(model, init_adapter)
    if meta["kernels"] == "blocked":
        from .kernels import use_blocked_kernels
        use_blocked_kernels(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    # ---- data and schedule
    per_step = _per_step(config)
    n_epochs = _n_epochs(config, len(train_episodes) * config.n_permutations)
    dataset = (make_dataset(train_episodes, tok, n_epochs) if make_dataset is not None
               else EpisodeDataset(train_episodes, tok, config.n_permutations, config.seed, n_epochs))
    max_steps = config.max_steps or math.ceil(len(dataset) / per_step)

    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_steps=max_steps,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_schedule,
        warmup_steps=config.warmup_ratio, weight_decay=0.0, max_grad_norm=1.0,
        bf16=config.autocast, activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=2, seed=config.seed, data_seed=config.seed, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        optim="adamw_torch", use_cpu=not torch.cuda.is_available())

    # ---- resume bookkeeping: curves up to the checkpoint's step
    last = _last_checkpoint(ckpt_dir) if resume else None
    resumed_step = _checkpoint_step(last) or 0
    rows, eval_rows, offset = [], [], 0.0
    if last is None:   # from step 0: curves left by an earlier (e.g. published) run are not this run's
        for name in ("loss_curve.csv", "loss_curve.png", "eval_curve.csv"):
            (output_dir / name).unlink(missing_ok=True)
    for name, store in (("loss_curve.csv", rows), ("eval_curve.csv", eval_rows)):
        if last and (output_dir / name).exists():
            df = pd.read_csv(output_dir / name)
            store.extend(df[df["step"] <= resumed_step].to_dict("records"))
    if rows:
        offset = float(rows[-1]["elapsed_s"])

    write_json(meta_path, {**meta, "finished": False, "global_step": resumed_step, "max_steps": max_steps,
                           "episodes_seen": resumed_step * per_step, "train_seconds": offset})
    recorder = _make_callback(output_dir, config, len(dataset), offset, rows, eval_rows, on_eval,
                              eval_every_steps, tok)
    trainer = _make_trainer_class()(model=model, args=args, train_dataset=dataset,
                                    data_collator=lambda ex: (collate_fn or collate)(ex, pad_id),
                                    callbacks=[recorder, *callbacks])
    trainer.train(resume_from_checkpoint=str(last) if last else None)

    # ---- outputs
    state = trainer.state
    finished = state.global_step >= max_steps
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(output_dir)
        tok.save_pretrained(output_dir)
        _portable_adapter_config(output_dir, model_id(config.model))
        if rows:
            plot_loss_curve(pd.DataFrame(rows), output_dir / "loss_curve.png")
        final_loss = float(rows[-1]["loss"]) if rows else None
        write_json(meta_path, {**meta, "finished": finished, "global_step": state.global_step,
                               "max_steps": max_steps, "episodes_seen": min(state.global_step * per_step,
                                                                            len(dataset)),
                               "train_seconds": recorder.elapsed(), "final_loss": final_loss})
    else:
        final_loss = None
    return TrainResult(output_dir, state.global_step, max_steps, min(state.global_step * per_step, len(dataset)),
                       finished, False, recorder.elapsed(), final_loss, trainer.model)


# ---------------------------------------------------------------- curriculum: stages of train()

@dataclass(frozen=True)
class CurriculumStage:
    """One stage of a curriculum: ``n_episodes`` training episodes of one setting (c, d), with ``points``
    = [lo, hi] points each and t noise drawn from ``dfs``; ``separated``: only well-separated episodes
    (:func:`icc_utils.data.one_setting_training_set`). Stages run in order, each starting from the
    previous stage's adapter with a fresh optimiser and schedule (:func:`train_curriculum`)."""

    name: str
    n_clusters: int
    dim: int
    n_episodes: int
    points: tuple = DEFAULT_LENGTH_RANGE
    dfs: tuple = TRAIN_DFS
    separated: bool = False

    @classmethod
    def from_dict(cls, d, where: str = "stage") -> "CurriculumStage":
        """A stage from a mapping (a profile's ``ft_curriculum`` item); a ValueError names ``where`` and the key."""
        from .data import normalise_distribution
        from .profiles import check_choice, check_int, check_length_range, check_numbers

        if not isinstance(d, dict):
            raise ValueError(f"{where}={d!r} must be a mapping with keys {list(STAGE_KEYS)}")
        unknown = sorted(set(d) - set(STAGE_KEYS))
        missing = [k for k, v in STAGE_KEYS.items() if v is None and k not in d]
        if unknown or missing:
            raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}; a stage has the keys "
                             f"{list(STAGE_KEYS)} (required: {[k for k, v in STAGE_KEYS.items() if v is None]})")
        d = {**{k: v for k, v in STAGE_KEYS.items() if v is not None}, **d}
        name = d["name"]
        if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise ValueError(f"{where}.name={name!r} is not allowed; it must be a non-empty folder name "
                             "(letters, digits, '-', '_', '.')")
        c = check_int(f"{where}.n_clusters", d["n_clusters"], 2, 10)
        lo, hi = check_length_range(f"{where}.points", d["points"])
        if lo < c:
            raise ValueError(f"{where}.points={d['points']!r} is not allowed; every episode needs at least "
                             f"n_clusters={c} points (no empty cluster)")
        dfs = check_numbers(f"{where}.dfs", d["dfs"], lo=0.01)
        if not dfs:
            raise ValueError(f"{where}.dfs=[] is not allowed; give at least one df")
        for df in dfs:
            normalise_distribution("t", df)
        return cls(name=name, n_clusters=c, dim=check_int(f"{where}.dim", d["dim"], 1, 16),
                   n_episodes=check_int(f"{where}.n_episodes", d["n_episodes"], 1), points=(lo, hi),
                   dfs=tuple(dfs), separated=check_choice(f"{where}.separated", d["separated"], [True, False]))

    def episodes(self, seed: int) -> list[Episode]:
        """The stage's training episodes (``train`` seed split, root ``seed``)."""
        from .data import one_setting_training_set

        return one_setting_training_set(self.n_episodes, seed, self.n_clusters, self.dim, dfs=self.dfs,
                                        length_range=self.points, separated=self.separated)


#: Keys of one curriculum stage (notebook 04's ``ft_curriculum`` items) and their defaults (None: required).
STAGE_KEYS = {f.name: None if f.default is MISSING else f.default for f in fields(CurriculumStage)}


def curriculum_from_params(stages: Sequence, name: str = "ft_curriculum") -> list[CurriculumStage]:
    """The stages of notebook 04's ``ft_curriculum`` (a list of mappings; ``[]``: no curriculum), checked."""
    if isinstance(stages, (str, bytes, dict)) or not isinstance(stages, (list, tuple)):
        raise ValueError(f"{name}={stages!r} must be a list of stages (mappings with keys {list(STAGE_KEYS)}), "
                         "or [] for no curriculum")
    out = [CurriculumStage.from_dict(s, f"{name}[{i}]") for i, s in enumerate(stages)]
    names = [s.name for s in out]
    if len(set(names)) < len(names):
        raise ValueError(f"{name}: stage names {names} must be distinct (each stage has its own folder)")
    return out


def stage_dirs(stages: Sequence[CurriculumStage], output_dir: str | Path) -> list[Path]:
    """Where each stage's adapter goes: ``<output_dir>_stages/<k>-<name>`` for the earlier stages and
    ``output_dir`` itself for the last, so that the curriculum's result sits where a single run's would."""
    output_dir = Path(output_dir)
    return [output_dir.with_name(f"{output_dir.name}_stages") / f"{k}-{s.name}" for k, s in enumerate(stages[:-1], 1)] \
        + [output_dir]


def train_curriculum(config: FinetuneConfig, stages: Sequence[CurriculumStage], output_dir: str | Path,
                     on_eval: Callable | None = None, eval_every_steps: int | None = None,
                     stage_episodes: Sequence[Sequence[Episode]] | None = None) -> TrainResult:
    """Train the stages in order with :func:`train`, each from the previous stage's adapter (``init_adapter``).

    ``config.max_train_seconds`` is the budget of the whole curriculum: a stage gets what the earlier stages
    left, and a stage that runs out stops cleanly (``finished=False``), as do the stages after it; call again to
    continue (finished stages are reused, the stopped one resumes from its checkpoint). ``on_eval`` is called as
    in :func:`train` every ``eval_every_steps`` steps of each stage, at each stage's last step, and at step 0 of
    the first stage only (a later stage's step 0 is the previous stage's end); ``episodes_seen`` counts the
    episodes of the earlier stages too. ``stage_episodes`` (default: each stage's :meth:`~CurriculumStage.episodes`
    at ``config.seed``) are the training sets. Returns the totals, with each stage's :class:`TrainResult` in
    ``stages``.
    """
    stages = list(stages)
    if not stages:
        raise ValueError("stages is empty; give at least one CurriculumStage (or call train() for one run)")
    if stage_episodes is None:
        stage_episodes = [s.episodes(config.seed) for s in stages]
    if len(stage_episodes) != len(stages):
        raise ValueError(f"stage_episodes has {len(stage_episodes)} training sets for {len(stages)} stages")
    if eval_every_steps is not None and (isinstance(eval_every_steps, bool) or not isinstance(eval_every_steps, int)
                                         or eval_every_steps < 1):
        raise ValueError(f"eval_every_steps={eval_every_steps!r} is not allowed; it must be None or an integer >= 1")
    results, before, spent, init = [], 0, 0.0, None
    for k, (stage, episodes, out) in enumerate(zip(stages, stage_episodes, stage_dirs(stages, output_dir))):
        budget = config.max_train_seconds
        if budget is not None and budget - spent <= 0:   # nothing left: the later stages do not start
            break
        last_step = _planned_steps(config, len(episodes) * config.n_permutations)

        def stage_eval(model, tokenizer, step, seen, k=k, before=before, last_step=last_step, name=stage.name):
            due = (step == 0 and k == 0) or (step > 0 and (step % eval_every_steps == 0 or step >= last_step))
            if not due:
                return None
            row = on_eval(model, tokenizer, step, before + seen)
            return None if row is None else {**row, "episodes_seen": before + seen, "stage": name}

        cfg = replace(config, max_train_seconds=None if budget is None else budget - spent)
        run = train(cfg, episodes, out, on_eval=stage_eval if on_eval and eval_every_steps else None,
                    eval_every_steps=1 if on_eval and eval_every_steps else None, init_adapter=init)
        results.append(run)
        before, spent, init = before + run.episodes_seen, spent + run.train_seconds, out
        if not run.finished:
            break
    last = results[-1]
    finished = len(results) == len(stages) and last.finished
    max_steps = sum(r.max_steps for r in results) + sum(
        _planned_steps(config, len(eps) * config.n_permutations) for eps in stage_episodes[len(results):])
    return TrainResult(last.output_dir, sum(r.global_step for r in results), max_steps,
                       before, finished, all(r.reused for r in results) and finished, spent, last.final_loss,
                       last.model if finished else None, stages=tuple(results))


def curriculum_curve(stages: Sequence[CurriculumStage], output_dir: str | Path,
                     episodes: Sequence[Episode]) -> "pd.DataFrame":
    """The learning curve of a curriculum: each stage's ``eval_curve.csv`` (``episodes_seen`` counting the
    earlier stages' episodes), one table, with k-means on the same episodes as a reference column."""
    import pandas as pd

    parts = [pd.read_csv(d / "eval_curve.csv") for d in stage_dirs(stages, output_dir) if (d / "eval_curve.csv").exists()]
    curve = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", "episodes_seen", "accuracy"])
    return curve.assign(kmeans_accuracy=kmeans_reference(episodes))


# ---------------------------------------------------------------- notebook 04: evaluation around training

def curve_evaluator(episodes: Sequence[Episode], batch_size: int = 8, answer_format: str = "paper") -> Callable:
    """An ``on_eval`` for :func:`train`: greedy free-decoding accuracy of the model being trained on
    ``episodes`` (one row per df: accuracy, well-formed share), plus the overall mean, the mean ARI
    (about 0 for a model that answers one label for every point, whatever its accuracy) and
    ``length_ratio``, the mean of labels written / points (1 when the model keeps count).
    ``answer_format`` as in :class:`~icc_utils.models.LocalChatModel` (``indexed``: a labelled ablation)."""
    from .metrics import ari, clustering_accuracy
    from .models import LocalChatModel
    from .parsing import is_well_formed, n_labels_written

    episodes = list(episodes)
    check_answer_format(answer_format)

    def on_eval(model, tokenizer, step, episodes_seen):
        backend = LocalChatModel.from_loaded(model, tokenizer, name=f"in-training-step{step}", batch_size=batch_size,
                                             answer_format=answer_format)
        preds = backend.predict(episodes, desc=f"learning curve, step {step}")
        acc = np.array([clustering_accuracy(ep.labels, p.labels) for ep, p in zip(episodes, preds)])
        wf = np.array([is_well_formed(p.reply, ep.n_points, ep.n_clusters, answer_format)
                       for ep, p in zip(episodes, preds)])
        ar = np.array([ari(ep.labels, p.labels) for ep, p in zip(episodes, preds)])
        ratio = np.array([n_labels_written(p.reply, answer_format) / ep.n_points for ep, p in zip(episodes, preds)])
        row = {"accuracy": float(acc.mean()), "well_formed": float(wf.mean()), "ari": float(ar.mean()),
               "length_ratio": float(ratio.mean())}
        dfs = np.array([ep.params["df"] for ep in episodes], dtype=float)
        for df in np.unique(dfs):
            row[f"accuracy_df{df:g}"] = float(acc[dfs == df].mean())
        return row

    return on_eval


def learning_curve_table(adapter_dir: str | Path, episodes: Sequence[Episode]) -> "pd.DataFrame":
    """The learning curve written by :func:`train` (``eval_curve.csv``) with k-means on the same
    episodes as a reference column."""
    import pandas as pd

    path = Path(adapter_dir) / "eval_curve.csv"
    curve = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "episodes_seen", "accuracy"])
    return curve.assign(kmeans_accuracy=kmeans_reference(episodes))


def kmeans_reference(episodes: Sequence[Episode]) -> float:
    """Mean k-means accuracy on ``episodes`` (NaN for none): a learning curve's reference line."""
    from .baselines import cluster_points
    from .metrics import clustering_accuracy

    km = [clustering_accuracy(ep.labels, cluster_points("kmeans", ep.points, ep.n_clusters)) for ep in episodes]
    return float(np.mean(km)) if km else float("nan")


def answer_nll(model, tokenizer, episode: Episode, answer_format: str = "paper") -> float:
    """Summed next-token NLL (nats) of ``episode``'s answer (its end-of-turn token included) under
    teacher forcing: the training loss of :func:`encode_training_example`, not averaged."""
    import torch

    ex = encode_training_example(tokenizer, episode, answer_format=answer_format)
    device = next(model.parameters()).device
    ids = torch.tensor([ex["input_ids"]], device=device)
    labels = torch.tensor([ex["labels"]], device=device)
    with torch.no_grad():
        return float(answer_only_loss(model, ids, torch.ones_like(ids), labels, num_items=1))


def shuffled_pairing(episode: Episode, seed: int) -> Episode:
    """``episode`` with its points in a seeded random order and its answer unchanged: the same points
    and the same label sequence, but label i no longer belongs to point i."""
    return replace(permute_episode(episode, seed, suffix=f"unpaired{seed}"), labels=list(episode.labels))


def shuffle_seeds(seed: int, episode: Episode, n: int) -> np.ndarray:
    """``n`` seeds for :func:`shuffled_pairing` of ``episode``, drawn from ``[seed, episode.seed]``."""
    return np.random.SeedSequence([int(seed), int(episode.seed) % 2**63]).generate_state(n)


def pairing_gain(model, tokenizer, episodes: Sequence[Episode], n_shuffles: int = 4, seed: int = 0,
                 answer_format: str = "paper") -> "pd.DataFrame":
    """Does the model use which point carries which label? One row per episode: the answer's NLL per
    point (nats) with the true prompt, the mean over ``n_shuffles`` prompts whose points were shuffled
    (:func:`shuffled_pairing`, seeds from ``[seed, episode.seed]``), and ``gain`` = shuffled - true.

    A model that answers from the label sequence alone (e.g. one label for every point) has a gain of
    about 0 whatever its accuracy; a gain clearly above 0 means the points inform their labels, a
    sign of clustering that greedy accuracy misses while the model still answers one label.
    """
    import pandas as pd

    if n_shuffles < 1:
        raise ValueError(f"n_shuffles={n_shuffles} is not allowed; it must be >= 1")
    model.eval()
    rows = []
    for ep in episodes:
        seeds = shuffle_seeds(seed, ep, n_shuffles)
        true = answer_nll(model, tokenizer, ep, answer_format) / ep.n_points
        shuffled = float(np.mean([answer_nll(model, tokenizer, shuffled_pairing(ep, int(s)), answer_format)
                                  for s in seeds])) / ep.n_points
        rows.append({"episode_id": ep.id, "df": ep.params["df"], "n_points": ep.n_points,
                     "nll_per_point": true, "nll_per_point_shuffled": shuffled, "gain": shuffled - true})
    return pd.DataFrame(rows)


def teacher_forced_labels(model, tokenizer, episode: Episode) -> tuple[list[int], list[int]]:
    """The true labels of ``episode`` and, under teacher forcing (the true answer so far in context),
    the model's most likely token at each label's place, read as a label (-1 where it is not a number).

    Paper format only: the answer's number tokens are its labels, in order (``ValueError`` otherwise).
    Label ``k`` right means the model found point ``k``'s label with every earlier label given; a model
    that answers from the label sequence alone scores about the rate at which a label repeats its predecessor.
    """
    import torch

    ex = encode_training_example(tokenizer, episode)
    ids = torch.tensor([ex["input_ids"]])
    answer = [(j, tokenizer.decode([t]).strip()) for j, (t, lab) in enumerate(zip(ex["input_ids"], ex["labels"]))
              if lab != IGNORE_INDEX]
    places = [j for j, word in answer if word.isdigit()]
    true = [int(word) for _, word in answer if word.isdigit()]
    if true != [int(x) for x in episode.labels]:
        raise ValueError(f"episode {episode.id}: the answer's number tokens are not its labels one by one "
                         "(a label split into several tokens?); teacher_forced_labels needs one token per label")
    keep = torch.zeros(1, ids.shape[1] - 1, dtype=torch.bool)
    keep[0, [j - 1 for j in places]] = True                          # position j-1 predicts token j
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        guesses = next_token_logits(model, ids.to(device), torch.ones_like(ids).to(device), keep.to(device))
    words = [tokenizer.decode([t]).strip() for t in guesses.argmax(-1).tolist()]
    return true, [int(w) if w.isdigit() else -1 for w in words]


def label_position_table(model, tokenizer, episodes: Sequence[Episode], seed: int = 0) -> "pd.DataFrame":
    """One row per label of every episode (:func:`teacher_forced_labels`): its position (1-based), whether the
    model's teacher-forced guess is right, whether it is right with the points shuffled and the answer kept
    (:func:`shuffled_pairing`, seed from ``[seed, episode.seed]``: what the label sequence alone gives this
    model), and whether repeating the previous true label would be."""
    import pandas as pd

    rows = []
    for ep in episodes:
        true, guess = teacher_forced_labels(model, tokenizer, ep)
        _, blind = teacher_forced_labels(model, tokenizer, shuffled_pairing(ep, int(shuffle_seeds(seed, ep, 1)[0])))
        for k, (t, g, b) in enumerate(zip(true, guess, blind)):
            rows.append({"episode_id": ep.id, "df": ep.params["df"], "n_points": ep.n_points, "position": k + 1,
                         "label": t, "guess": g, "right": g == t, "shuffled_right": b == t,
                         "repeat_right": k > 0 and true[k - 1] == t})
    return pd.DataFrame(rows)


def evaluate_before_after(backends: dict, episodes: Sequence[Episode], profile: str,
                          constrained_modes: Sequence[bool] = (False,)) -> "pd.DataFrame":
    """Per-episode rows for each backend (``{"pretrained": ..., "finetuned": ..., "kmeans": ...}``):
    LLMs with method ``zero-shot`` / ``finetuned`` / ``finetuned-aug`` (``+constrained``), k-means once."""
    import pandas as pd

    from .evaluate import evaluate

    frames = []
    for role, backend in backends.items():
        if backend.kind == "classical":
            frames.append(evaluate(backend, episodes, profile))
            continue
        base = "zero-shot" if role == "pretrained" else role
        for c in constrained_modes:
            frames.append(evaluate(backend, episodes, profile, constrained=c,
                                   method=base + ("+constrained" if c else "")))
    return pd.concat(frames, ignore_index=True)


def target_check(summary, finetuned_name: str, pretrained_name: str, k_df: float = 1.0,
                 min_gain: float = 0.25) -> "pd.DataFrame":
    """The issue's target from Table 1's summary: (1) fine-tuned minus its own zero-shot accuracy, mean
    over the df, at least ``min_gain``; (2) fine-tuned above k-means at df=``k_df``; and, when the
    summary has the ``one label`` reference (:func:`icc_utils.evaluate.one_label_rows`), (3) fine-tuned
    above answering one label for every point (mean over the df): a model that learned the format but
    not the clustering fails (3) while it can pass (1) against malformed zero-shot replies. "Met" uses
    the point estimates; the standard errors are shown beside them."""
    import pandas as pd

    from .evaluate import ONE_LABEL

    def cell(model, method, df=None):
        g = summary[(summary["model"] == model) & (summary["method"] == method)]
        if df is not None:
            g = g[g["df"] == df]
        return float(g["accuracy"].mean()), float(np.sqrt((g["accuracy_se"] ** 2).sum()) / max(len(g), 1))

    ft, ft_se = cell(finetuned_name, "finetuned")
    zs, zs_se = cell(pretrained_name, "zero-shot")
    ft1, ft1_se = cell(finetuned_name, "finetuned", k_df)
    km1, km1_se = cell("kmeans", "kmeans", k_df)
    rows = [
        {"target": f"fine-tuned beats its zero-shot by >= {min_gain:.2f} (mean over df)", "ours": ft - zs,
         "ours_se": float(np.hypot(ft_se, zs_se)), "detail": f"fine-tuned {ft:.3f} vs zero-shot {zs:.3f}",
         "met": bool(ft - zs >= min_gain)},
        {"target": f"fine-tuned beats k-means at df={k_df:g}", "ours": ft1 - km1, "ours_se": float(np.hypot(ft1_se, km1_se)),
         "detail": f"fine-tuned {ft1:.3f} vs k-means {km1:.3f}", "met": bool(ft1 > km1)}]
    one, one_se = cell(*ONE_LABEL)
    if not np.isnan(one):   # the summary has the one-label reference
        rows.append({"target": "fine-tuned beats answering one label for every point (mean over df)",
                     "ours": ft - one, "ours_se": float(np.hypot(ft_se, one_se)),
                     "detail": f"fine-tuned {ft:.3f} vs one label {one:.3f}", "met": bool(ft > one)})
    return pd.DataFrame(rows)


def finetune_findings(summary, paper, check, run, config: FinetuneConfig,
                      curriculum: Sequence[CurriculumStage] = ()) -> str:
    """Plain-language summary of Table 1 after fine-tuning, beside the paper's numbers (and the curriculum's
    stages, as far as ``run`` got through them)."""
    stages = "".join(f"{'; ' if i else ', a curriculum of: '}{s.name} ({r.episodes_seen} of {s.n_episodes} episodes)"
                     for i, (s, r) in enumerate(zip(curriculum, run.stages)))
    lines = [f"**Training:** {run.episodes_seen} episodes seen in {run.global_step} optimiser steps{stages} "
             f"({run.train_seconds / 60:.1f} min{'' if run.finished else ', stopped at the time budget'}); "
             f"LoRA r={config.lora_r}, alpha={config.lora_alpha} on {list(config.target_modules)}, "
             f"lr {config.learning_rate:g}, effective batch {config.effective_batch_size}. The paper trained on about "
             "100,000 episodes."]
    for _, r in check.iterrows():
        lines.append(f"- {r['target']}: {r['detail']} (difference {r['ours']:+.3f} ± {r['ours_se']:.3f}): "
                     f"**{'met' if r['met'] else 'NOT met'}**.")
    if len(paper):
        p = paper.groupby(["model", "method"])["accuracy"].mean().reset_index()
        lines.append("**Paper, same setting, mean over the df:** " + "; ".join(
            f"{r['model']} {r['method']} {r['accuracy']:.3f}" for _, r in p.iterrows()) + ".")
    if not check["met"].all():
        lines.append("Our fine-tuned model does **not** reproduce the paper's gain at this budget; the learning curve above "
                     "shows how far the training got. See the README for the budget question.")
    return "\n\n".join(lines)


# ---------------------------------------------------------------- profile parameters and command line

def config_from_params(params: dict, model: str, seed: int) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of notebook 04's ``ft_*`` parameters (a profile or the notebook's
    own variables); ``ft_max_train_minutes`` 0 means no time limit; ``ft_bf16`` may be
    ``"auto"`` (bf16 where this machine runs it natively)."""
    p = {k[3:]: v for k, v in params.items() if k.startswith("ft_")}
    minutes = p.get("max_train_minutes") or 0
    if p["bf16"] == "auto":   # bf16 where this machine runs it natively (models.native_bf16)
        from .models import native_bf16
        p["bf16"] = native_bf16()
    return FinetuneConfig(
        model=model, lora_r=p["lora_r"], lora_alpha=p["lora_alpha"], lora_dropout=p["lora_dropout"],
        target_modules=p["target_modules"], learning_rate=p["learning_rate"], lr_schedule=p["lr_schedule"],
        warmup_ratio=p["warmup_ratio"], per_device_batch_size=p["per_device_batch_size"],
        gradient_accumulation_steps=p["gradient_accumulation_steps"], seed=seed, bf16=p["bf16"],
        save_steps=p["save_steps"], max_train_seconds=60.0 * minutes if minutes else None,
        kernels=p.get("kernels", "auto"))


def training_episodes(profile: str, n_episodes: int = 0) -> list[Episode]:
    """Notebook 00's training split of a profile (the first ``n_episodes``; 0: all)."""
    from . import data_dir
    from .data import load_episodes

    path = data_dir(profile) / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebook 00_data with profile={profile!r} first "
                                f"(python -m icc_utils.run --profile {profile} --only 00)")
    episodes = load_episodes(path)
    return episodes[:n_episodes] if n_episodes else episodes


def main(argv=None) -> None:
    """``python -m icc_utils.finetune --profile paper`` (or under ``accelerate launch``): train notebook
    04's adapter (without the learning curve) into ``results/<profile>/04/adapter``; the notebook then
    reuses it."""
    import argparse

    from . import results_dir
    from .profiles import load_profile

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--augmented", action="store_true", help="train the finetuned-aug adapter (Table 5)")
    ap.add_argument("--seed", type=int, default=None, help="root seed of the training data and LoRA (default: the profile's)")
    ap.add_argument("--out", default=None, help="adapter folder (default: results/<profile>/04/adapter)")
    args = ap.parse_args(argv)
    params = load_profile(args.profile)
    seed = params["seed"] if args.seed is None else args.seed
    config = config_from_params(params, params["model"], seed)
    stages = curriculum_from_params(params.get("ft_curriculum", []))
    name = "adapter"
    if args.augmented:
        config = FinetuneConfig(**{**config.to_dict(), "n_permutations": params["ft_aug_permutations"]})
        name = "adapter_aug"
    out = Path(args.out) if args.out else results_dir(args.profile, "04") / name
    if stages:   # the curriculum replaces notebook 00's training split
        result = train_curriculum(config, stages, out)
    else:
        result = train(config, training_episodes(args.profile, params["ft_n_train_episodes"]), out)
    print(result)


if __name__ == "__main__":
    main()
