"""The teacher-forced probes (probes.py): the pairing gain and the label-position table.

Research code, not run by ``make test``: ``.venv/bin/python -m pytest experiments/finetune-probes``.
"""
from __future__ import annotations

import pytest
import torch

from probes import answer_nll, label_position_table, pairing_gain, shuffled_pairing, teacher_forced_labels

from icc_utils.data import generate_episode
from icc_utils.finetune import IGNORE_INDEX, collate, encode_training_example


def episodes(k: int, seed: int = 0, length_range=(5, 14)):
    return [generate_episode(seed * 1000 + i, "t", 2 + i % 3, 1 + i % 2, 5.0, length_range=length_range,
                             episode_id=f"ep{seed}-{i}") for i in range(k)]


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


def test_pairing_gain_measures_point_label_pairing(tiny_llama_dir):
    """The pairing probe: the true answer's NLL is the training loss summed over the answer; shuffling the
    points keeps them and the label sequence; with every point equal the shuffled prompt is the true one,
    so the gain is exactly 0, while with distinct points the prompt (and so the NLL) changes."""
    from icc_utils.data import Episode

    tok = load_tokenizer(tiny_llama_dir)
    model = lora_model(tiny_llama_dir)
    ep = episodes(1, seed=4)[0]
    batch = collate([encode_training_example(tok, ep)], pad_token_id=0)
    n_answer = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        full = float(model(**batch).loss) * n_answer
    assert answer_nll(model, tok, ep) == pytest.approx(full, rel=1e-5)

    shuffled = shuffled_pairing(ep, seed=1)
    assert shuffled.labels == ep.labels and sorted(shuffled.points) == sorted(ep.points)
    assert shuffled.points != ep.points

    table = pairing_gain(model, tok, [ep], n_shuffles=3, seed=0)
    assert table.loc[0, "nll_per_point"] == pytest.approx(full / ep.n_points, rel=1e-5)
    assert table.loc[0, "gain"] != 0.0
    assert pairing_gain(model, tok, [ep], n_shuffles=3, seed=0).equals(table)     # seeded

    same = Episode(id="same", seed=7, params={**ep.params, "n_clusters": 2, "dim": 2, "n_points": 8},
                   points=[[1.5, -2.0]] * 8, labels=[0, 0, 1, 0, 1, 1, 0, 1])
    assert pairing_gain(model, tok, [same], n_shuffles=2).loc[0, "gain"] == 0.0
    with pytest.raises(ValueError, match="n_shuffles"):
        pairing_gain(model, tok, [ep], n_shuffles=0)


class NextTokenStub(torch.nn.Module):
    """A stand-in causal LM whose last hidden state at position t is the one-hot of token t + ``shift``
    (shift 1: it always knows the next token; shift 0: it repeats the current one), with an identity LM head."""

    def __init__(self, vocab_size: int, shift: int):
        super().__init__()
        self.shift, self.head = shift, torch.nn.Linear(vocab_size, vocab_size, bias=False)
        torch.nn.init.eye_(self.head.weight)

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, **kw):
        ids = torch.roll(input_ids, -self.shift, dims=1)
        hidden = torch.nn.functional.one_hot(ids, self.head.in_features).float()
        return type("Out", (), {"hidden_states": (hidden,)})()


def test_teacher_forced_labels_read_each_label_place(tiny_llama_dir):
    """Teacher-forced guesses at each label's place: all right for a model that knows the next token, none for
    one that repeats the current token (a bracket or comma precedes every label); the table's repeat baseline
    is whether a label equals its predecessor."""
    tok = load_tokenizer(tiny_llama_dir)
    ep = episodes(3, seed=5)[2]
    true, guess = teacher_forced_labels(lora_model(tiny_llama_dir), tok, ep)
    assert true == list(ep.labels) and len(guess) == ep.n_points
    assert all(-1 <= g for g in guess)
    oracle, copier = NextTokenStub(len(tok), shift=1), NextTokenStub(len(tok), shift=0)
    assert teacher_forced_labels(oracle, tok, ep)[1] == list(ep.labels)
    assert teacher_forced_labels(copier, tok, ep)[1] == [-1] * ep.n_points
    table = label_position_table(oracle, tok, [ep])
    assert table["right"].all() and table["position"].tolist() == list(range(1, ep.n_points + 1))
    assert table["repeat_right"].tolist() == [False] + [a == b for a, b in zip(ep.labels[1:], ep.labels[:-1])]
    assert table["shuffled_right"].all()          # the oracle reads the answer, not the points
    assert not label_position_table(copier, tok, [ep])["right"].any()
    model = lora_model(tiny_llama_dir)
    real = label_position_table(model, tok, [ep], seed=1)
    assert real["right"].tolist() == [g == t for t, g in zip(true, guess)]
    assert label_position_table(model, tok, [ep], seed=1).equals(real)   # the shuffle is seeded
