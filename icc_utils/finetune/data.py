"""Training data: episodes rendered with the chat template and labelled on the answer only, the seeded
dataset over (episode, point order) items, padding, permutation augmentation, and the data's fingerprint.

:func:`encode_training_example` masks every prompt token with ``-100``; only the assistant's reply (and
its end-of-turn token) carry labels. :class:`EpisodeDataset` visits the items in an order fixed by the
seed and tokenises them when read; :func:`collate` pads on the right.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Sequence

import numpy as np

from ..data import Episode, permute_episode
from ..prompts import answer_text, check_answer_format, episode_messages

IGNORE_INDEX = -100


# ---------------------------------------------------------------- point orders

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
    """A fingerprint of the training episodes (ids, points, labels, in order): part of a run's identity."""
    h = hashlib.sha256()
    for ep in episodes:
        content = ep.points if hasattr(ep, "points") else ep.indices   # numeric or image episode
        h.update(json.dumps([ep.id, content, ep.labels], separators=(",", ":")).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- one example: ids and answer-only labels

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


# ---------------------------------------------------------------- the dataset and its batches

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


def training_episodes(profile: str, n_episodes: int = 0) -> list[Episode]:
    """Notebook 00's training split of a profile (the first ``n_episodes``; 0: all)."""
    from .. import data_dir
    from ..data import load_episodes

    path = data_dir(profile) / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebook 00_data with profile={profile!r} first "
                                f"(python -m icc_utils.run --profile {profile} --only 00)")
    episodes = load_episodes(path)
    return episodes[:n_episodes] if n_episodes else episodes
