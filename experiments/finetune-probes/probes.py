"""Teacher-forced probes of a fine-tuned model: do the points inform their labels, and where in the answer?

Research code of the fine-tuning exploration (``experiments/``), moved out of :mod:`icc_utils.finetune`; the
scripts beside it (``pairing_probe.py``, ``position_probe.py``) and those of other experiments
(``experiments/curriculum/table1_check.py``, ``experiments/blocked-kernels/rescore_validation.py``) import it:

* :func:`pairing_gain`: the true answer's NLL with the true prompt against prompts whose points were shuffled
  (:func:`shuffled_pairing`): about 0 for a model that answers from the label sequence alone.
* :func:`label_position_table`: the model's teacher-forced guess at each label's place
  (:func:`teacher_forced_labels`), with the points true and shuffled.
* :func:`parse_adapters`, :func:`add_probe_args`, :func:`probe_setup`: the command-line options and set-up the
  scripts share (adapters as ``NAME=DIR``, validation episodes of one setting, a label rule).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icc_utils import data as D  # noqa: E402
from icc_utils.data import Episode, permute_episode  # noqa: E402
from icc_utils.finetune import IGNORE_INDEX, answer_only_loss, encode_training_example, next_token_logits  # noqa: E402
from icc_utils.profiles import load_profile  # noqa: E402


# ---------------------------------------------------------------- the pairing probe

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


# ---------------------------------------------------------------- the position probe

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




# ---------------------------------------------------------------- what the scripts share

def parse_adapters(specs: list[str]) -> list[tuple[str, str | None]]:
    """``("pretrained", None)`` then one ``(name, dir)`` per ``--adapter NAME=DIR``; a clear error for a bad one."""
    models = [("pretrained", None)]
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not (Path(path) / "adapter_config.json").exists():
            raise SystemExit(f"--adapter={spec!r} is not allowed; it must be NAME=DIR with DIR holding a PEFT "
                             "adapter (adapter_config.json)")
        models.append((name, path))
    return models


def add_probe_args(ap: argparse.ArgumentParser) -> None:
    """The options every teacher-forced probe shares: the adapters, the validation setting, the label rule."""
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                    help="an adapter to probe (repeatable); the pretrained model is always probed")
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--dims", type=int, default=3)
    ap.add_argument("--eval-dfs", type=float, nargs="+", default=[1.0])
    ap.add_argument("--eval-n", type=int, default=20, help="validation episodes per df")
    ap.add_argument("--labels", default="clusters", choices=D.LABEL_RULES, help="label rule of the episodes")
    ap.add_argument("--out", required=True, help="CSV path")


def probe_setup(args: argparse.Namespace) -> tuple[list, dict, list, Path]:
    """The models to probe (:func:`parse_adapters`), the default profile, the validation episodes of ``args``'
    setting (``val`` seed split) labelled by ``args.labels``, and the output path."""
    params = load_profile("default")
    val = [D.rule_labelled(ep, args.labels) for ep in
           D.validation_episodes(params["seed"], args.clusters, args.dims, args.eval_dfs, args.eval_n)]
    return parse_adapters(args.adapter), params, val, Path(args.out)
