"""LoRA fine-tuning on clustering episodes with next-token loss on the answer only (paper Section 4).

docs/protocol.md, "Fine-tuning": LoRA on the attention projections (q, k, v, o), loss on the answer
tokens only, one epoch, effective batch 32, learning rate 5e-4, cosine schedule; permutation
augmentation repeats each episode with k random point orders (Table 5).

The modules, in the order a run uses them:

* :mod:`~icc_utils.finetune.config`: :class:`FinetuneConfig` (the recipe) and
  :func:`config_from_params` (notebook 04's ``ft_*`` parameters).
* :mod:`~icc_utils.finetune.data`: :func:`encode_training_example` (``-100`` on every prompt token),
  :class:`EpisodeDataset` (seeded order, lazy tokenisation), :func:`collate`, permutation augmentation,
  :func:`data_sha256`.
* :mod:`~icc_utils.finetune.loss`: :func:`answer_only_loss`, the LM head applied on answer tokens only.
* :mod:`~icc_utils.finetune.training`: :func:`train`, one run with transformers' ``Trainer`` (CPU, one GPU,
  or several with ``accelerate launch``): reuse, resume, checkpoints, a progress bar, a standard PEFT adapter.
* :mod:`~icc_utils.finetune.curriculum`: :func:`train_curriculum`, :func:`train` once per
  :class:`CurriculumStage`, each from the previous stage's adapter.
* :mod:`~icc_utils.finetune.evaluation`: the learning curve (:func:`curve_evaluator`) and notebook 04's
  before/after rows.
* :mod:`~icc_utils.finetune.cli`: ``python -m icc_utils.finetune --profile X``.

``from icc_utils import finetune as F`` gives every public name below (``F.train``, ``F.FinetuneConfig``, ...).
"""
from __future__ import annotations

from .config import DTYPES, KERNELS, LR_SCHEDULES, FinetuneConfig, config_from_params
from .curriculum import (STAGE_KEYS, CurriculumStage, curriculum_curve, curriculum_from_params, stage_dirs,
                         stage_loss_curves, train_curriculum)
from .data import (IGNORE_INDEX, EpisodeDataset, augment_permutations, collate, data_sha256, encode_chat_example,
                   encode_training_example, permutation_seeds, training_episodes)
from .evaluation import curve_evaluator, evaluate_before_after, kmeans_reference, learning_curve_table
from .loss import answer_only_loss, next_token_logits
from .training import TrainResult, _identity, run_identity, same_run, train  # noqa: F401  (_identity: tests)

__all__ = [
    "DTYPES", "KERNELS", "LR_SCHEDULES", "FinetuneConfig", "config_from_params",
    "IGNORE_INDEX", "EpisodeDataset", "augment_permutations", "collate", "data_sha256", "encode_chat_example",
    "encode_training_example", "permutation_seeds", "training_episodes",
    "answer_only_loss", "next_token_logits",
    "TrainResult", "run_identity", "same_run", "train",
    "STAGE_KEYS", "CurriculumStage", "curriculum_curve", "curriculum_from_params", "stage_dirs", "stage_loss_curves",
    "train_curriculum",
    "curve_evaluator", "evaluate_before_after", "kmeans_reference", "learning_curve_table",
]
