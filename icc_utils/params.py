"""The notebooks' parameters, declared once: what each allows, which notebooks use it, what it means.

:data:`PARAMS` maps every parameter to a :class:`Param` (a constraint from :mod:`icc_utils.validation`,
the notebooks that declare it, a one-line doc); ``notebooks/profiles/default.yml`` holds the values.
A notebook's check cell (the code cell after its ``parameters`` cell) is::

    from icc_utils import params as P
    globals().update(P.validated("01", globals()))

It checks every parameter the notebook declares (one ValueError naming each bad parameter and what it
allows), then the checks that span parameters (e.g. a per-cell count above what notebook 00 generated),
and returns the values, normalised (``dtype="auto"`` resolved), with what the notebook derives from them
(e.g. notebook 04's ``config``).

``python -m icc_utils.params_sync sync-notebooks [NN ...]`` writes the parameters and check cells from
``default.yml``; ``sync-files`` writes ``notebooks/parameters/<profile>/<NN>.yml`` for ``papermill -f``;
``check`` lists what is out of sync; ``doc`` prints the table (:mod:`icc_utils.params_sync`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import DATA_DIR, PROJECT_ROOT
from .validation import (Adapter, Bool, Check, Choice, Constraint, Dtype, Int, Ints, LengthRange, Model, Models,
                         Num, Nums, Strs, Subset, Text, check_model_folder)

__all__ = ["Param", "Notebook", "PARAMS", "NOTEBOOKS", "declared", "check_values", "validated"]


@dataclass(frozen=True)
class Param:
    """One parameter: its constraint, the notebooks that declare it, a one-line doc."""
    rule: Constraint
    notebooks: tuple[str, ...]
    doc: str


def _p(rule: Constraint, notebooks: str, doc: str) -> Param:
    return Param(rule, tuple(notebooks.split()), doc)


def _profile(name, value):
    from .profiles import check_profile

    check_profile(value)


def _curriculum(name, value):
    from .finetune import curriculum_from_params

    curriculum_from_params(value, name)


def _image_curriculum(name, value):
    from .vision.curriculum import image_curriculum_from_params

    image_curriculum_from_params(value, name)


def _tower_objective(name, value):
    from .vision.tower import check_objective

    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} is not allowed; it must be text such as 'classify' or 'reconstruct'")
    check_objective(value, name)


def _vlm(name, value):
    from .vision.vlm import check_vlm

    check_vlm(value)
    check_model_folder(name, value)


BOOL, MODES = Bool(), Subset([False, True], "[false, true]")
N_CLUSTERS, N_CLUSTERS_LIST = Int(2, 10), Ints(2, 10)
DIM, DIMS = Int(1, 16), Ints(1, 16)
DFS, PER_CELL, DTYPE, TEXT = Nums(0.01), Int(1), Dtype(), Text()
KERNEL_SIZES = Ints(1, 64, nonempty=True)
LOCAL_MODEL = Model(["local"], "notebooks 02-04 need a local transformers model ('embedded', a hub id or a folder)")
PROFILE = Check(_profile, "a profile name (notebooks/profiles/<name>.yml)")
CURRICULUM = Check(_curriculum, "a list of stages (icc_utils.finetune.STAGE_KEYS); []: no curriculum",
                   example="[{name: easy, n_clusters: 2, dim: 1, n_episodes: 100}]")
IMAGE_CURRICULUM = Check(_image_curriculum, "a non-empty list of stages (icc_utils.vision.curriculum.IMAGE_STAGE_KEYS)",
                         example="[{name: c2, n_clusters: [2], n_episodes: 100}]")
VLM = Check(_vlm, "'embedded-llava', a LLaVA hub id or a LLaVA model folder (config.json)")
RUN, FT, IMG, COND = "00 01 02 03 04 05 06", "04", "05", "06"

#: Every notebook parameter, in the order of ``default.yml`` (and of the notebooks' parameters cells).
PARAMS: dict[str, Param] = {
    "profile": _p(PROFILE, RUN + " 07", "names data/<profile>/ and results/<profile>/"),
    "seed": _p(Int(0), RUN, "root seed of every random draw"),
    # 00_data
    "test_n_clusters": _p(N_CLUSTERS_LIST, "00", "test split: numbers of clusters c"),
    "test_dims": _p(DIMS, "00", "test split: dimensions d"),
    "test_dfs": _p(DFS, "00", "test split: Student-t degrees of freedom (100: near-Gaussian)"),
    "test_n_per_cell": _p(PER_CELL, "00", "test split: episodes per (c, d, df) cell"),
    "lognormal_n_clusters": _p(N_CLUSTERS_LIST, "00", "log-normal test split (Table 4): clusters"),
    "lognormal_dims": _p(DIMS, "00", "log-normal test split: dimensions"),
    "length_range": _p(LengthRange(), "00", "points per episode, [lo, hi]"),
    "train_n_episodes": _p(Int(0), "00", "training split (notebook 04): episodes"),
    "train_n_clusters": _p(N_CLUSTERS_LIST, "00", "training split: clusters"),
    "train_dims": _p(DIMS, "00", "training split: dimensions"),
    "train_dfs": _p(DFS, "00", "training split: degrees of freedom"),
    # 01_zero_shot_numeric
    "models": _p(Models(), "01", "models and baselines compared"),
    "dtype": _p(DTYPE, "01 02 03 04", "weights dtype of local language models"),
    "batch_size": _p(Int(1, 256), "01 02 03 04 05 06", "episodes per generation batch"),
    "constrained_modes": _p(MODES, "01", "Figure 2: free (false) and/or constrained (true) decoding"),
    "n_per_cell": _p(PER_CELL, "01", "Figure 2: episodes per df"),
    "section_n_per_cell": _p(PER_CELL, "01", "Figure 6, Tables 4 and 5: episodes per cell"),
    "fig2_n_clusters": _p(N_CLUSTERS, "01", "Figure 2: clusters"),
    "fig2_dim": _p(DIM, "01", "Figure 2: dimension"),
    "fig2_dfs": _p(DFS, "01", "Figure 2: degrees of freedom"),
    "grid_n_clusters": _p(N_CLUSTERS_LIST, "01", "Figure 6 grid: clusters"),
    "grid_dims": _p(DIMS, "01", "Figure 6 grid: dimensions"),
    "grid_dfs": _p(DFS, "01", "Figure 6 grid: degrees of freedom"),
    "logn_n_clusters": _p(N_CLUSTERS_LIST, "01", "Table 4 (log-normal): clusters"),
    "logn_dims": _p(DIMS, "01", "Table 4: dimensions"),
    "grid_constrained_modes": _p(MODES, "01", "Figure 6 and Table 4: decoding modes"),
    "perm_n_clusters": _p(N_CLUSTERS, "01", "Table 5 (point order): clusters"),
    "perm_dim": _p(DIM, "01", "Table 5: dimension"),
    "perm_dfs": _p(DFS, "01", "Table 5: degrees of freedom"),
    "perm_n_permutations": _p(Int(2, 100), "01", "Table 5: orders per episode"),
    "perm_constrained_modes": _p(MODES, "01", "Table 5: decoding modes"),
    "budget_max_new_tokens": _p(Int(1, 4096), "01", "token budget of free decoding compared with the automatic one"),
    "budget_n_episodes": _p(PER_CELL, "01", "episodes (df 1) for that comparison"),
    "unknown_k_dfs": _p(DFS, "01", "unknown-k prompt: degrees of freedom (Figure 2's cells)"),
    "unknown_k_n_per_cell": _p(PER_CELL, "01", "unknown-k prompt: episodes per df (of Figure 2's)"),
    # 02_attention_visualization, 03_attention_spectral_clustering
    "model": _p(LOCAL_MODEL, "02 03 04", "the local model of attention and fine-tuning"),
    "finetuned_adapter": _p(Adapter(PROJECT_ROOT), "02 03 04",
                            "the fine-tuned adapter beside the pretrained model: a published name (models/<name>), "
                            "a folder, or ''"),
    "attn_layer": _p(Int(0, optional=True), "02", "layer of Figures 3, 9, 10; null: the middle layer"),
    "attn_episode_index": _p(Int(0), "02", "which example episode of each cell"),
    "attn_n_points": _p(Int(4, 200), "02", "points of the example episodes"),
    "attn_dim": _p(DIM, "02", "dimension of the example episodes"),
    "attn_answer": _p(Choice(module="icc_utils.attention", attr="ANSWER_MODES"), "02",
                      "the answer whose attention is shown"),
    "attn_fig9_dfs": _p(DFS, "02", "Figure 9: degrees of freedom"),
    "attn_exclude_diagonal": _p(BOOL, "02", "drop each point's attention to itself"),
    "attn_log_scale": _p(BOOL, "02", "log colour scale"),
    "sc_n_clusters": _p(N_CLUSTERS, "03", "Table 6: clusters"),
    "sc_dims": _p(Ints(1, 16, nonempty=True), "03", "Table 6: dimensions"),
    "sc_dfs": _p(Nums(0.01, nonempty=True), "03", "Table 6: degrees of freedom"),
    "sc_n_per_cell": _p(PER_CELL, "03", "Table 6: test episodes per cell"),
    "sc_val_n_per_cell": _p(Int(1, 1000), "03", "validation episodes per cell, for choosing SC(l*)"),
    "sc_fixed_layer": _p(Int(0, optional=True), "03", "SC(l_fixed)'s layer; null: the paper's l23 at equal depth"),
    "sc_exclude_diagonal": _p(BOOL, "03", "drop each point's attention to itself"),
    "sc_gen_constrained_modes": _p(MODES, "03", "Gen row: free decoding (required), plus constrained"),
    # 04_lora_finetune_numeric
    "second_seed_adapter": _p(Adapter(PROJECT_ROOT), FT, "the same recipe with another seed, scored beside it ('' none)"),
    "aug_adapter": _p(Adapter(PROJECT_ROOT), FT, "the order-augmented adapter of Table 5 ('' none)"),
    "ft_n_train_episodes": _p(Int(0), FT, "training episodes of notebook 00's split; 0: all"),
    "ft_curriculum": _p(CURRICULUM, FT, "curriculum stages, easy to hard; []: notebook 00's split"),
    "ft_lora_r": _p(Int(1), FT, "LoRA rank"),
    "ft_lora_alpha": _p(Num(0, lo_open=True), FT, "LoRA alpha"),
    "ft_lora_dropout": _p(Num(0, 0.999), FT, "LoRA dropout"),
    "ft_target_modules": _p(Strs(nonempty=True), FT, "linear layers that LoRA adapts"),
    "ft_learning_rate": _p(Num(0, 1, lo_open=True), FT, "peak learning rate"),
    "ft_lr_schedule": _p(Choice(module="icc_utils.finetune", attr="LR_SCHEDULES"), FT, "learning-rate schedule"),
    "ft_warmup_ratio": _p(Num(0, 0.999), FT, "warm-up share of the steps"),
    "ft_per_device_batch_size": _p(Int(1), FT, "episodes per forward pass"),
    "ft_gradient_accumulation_steps": _p(Int(1), FT, "forward passes per optimiser step"),
    "ft_bf16": _p(Choice(["auto", True, False]), FT, "bf16 frozen weights; auto: where native"),
    "ft_kernels": _p(Choice(module="icc_utils.finetune", attr="KERNELS"), FT, "matmul kernels of bf16 training"),
    "ft_save_steps": _p(Int(1), FT, "checkpoint every this many steps"),
    "ft_max_train_minutes": _p(Num(0), FT, "training time limit; 0: none"),
    "ft_aug_permutations": _p(Int(2, 100), FT, "orders per episode of the augmented adapter"),
    "ft_train_aug": _p(BOOL, FT, "also train the order-augmented adapter (Table 5)"),
    "ft_curve_every_steps": _p(Int(1), FT, "learning curve: evaluate every this many steps"),
    "ft_curve_n_per_df": _p(Int(0, 1000), FT, "learning curve: validation episodes per df"),
    "ft_curve_dfs": _p(DFS, FT, "learning curve: degrees of freedom"),
    "eval_constrained_modes": _p(MODES, FT, "decoding modes of the evaluations"),
    "verdict_start": _p(Int(0), FT, "first test episode of each cell in the verdict block (earlier ones: development)"),
    "t1_n_clusters": _p(N_CLUSTERS, FT, "Table 1: clusters"),
    "t1_dim": _p(DIM, FT, "Table 1: dimension"),
    "t1_dfs": _p(DFS, FT, "Table 1: degrees of freedom"),
    "t1_n_per_df": _p(Ints(1), FT, "Table 1: episodes per df of t1_dfs (verdict block)"),
    "fig7_n_clusters": _p(N_CLUSTERS_LIST, FT, "Figure 7 grid: clusters"),
    "fig7_dims": _p(DIMS, FT, "Figure 7 grid: dimensions"),
    "fig7_dfs": _p(DFS, FT, "Figure 7 grid: degrees of freedom"),
    "fig7_n_per_cell": _p(PER_CELL, FT, "Figure 7: episodes per cell"),
    "t4_n_clusters": _p(N_CLUSTERS_LIST, FT, "Table 4 (log-normal): clusters"),
    "t4_dims": _p(DIMS, FT, "Table 4: dimensions"),
    "t4_n_per_cell": _p(PER_CELL, FT, "Table 4: episodes per cell"),
    "t5_n_clusters": _p(N_CLUSTERS, FT, "Table 5 (point order): clusters"),
    "t5_dim": _p(DIM, FT, "Table 5: dimension"),
    "t5_dfs": _p(DFS, FT, "Table 5: degrees of freedom"),
    "t5_n_per_cell": _p(PER_CELL, FT, "Table 5: episodes per df"),
    "t5_n_permutations": _p(Int(2, 100), FT, "Table 5: orders per episode"),
    "vlm_dtype": _p(DTYPE, "05 06", "weights dtype of the multimodal model"),
    # 05_image_clustering
    "vlm": _p(VLM, "05 06", "the multimodal model"),
    "img_root": _p(TEXT, IMG, "'': scikit-learn's digits; else an ImageFolder root/<class>/<image>"),
    "img_train_classes": _p(Strs(), IMG, "classes seen in training"),
    "img_test_classes": _p(Strs(), IMG, "unseen test classes"),
    "img_ood_shifts": _p(Subset(["invert", "rotate", "noise"], "[invert]"), IMG, "out-of-domain test shifts"),
    "img_length_range": _p(LengthRange(), IMG, "images per episode, [lo, hi]"),
    "img_train_n_clusters": _p(N_CLUSTERS_LIST, IMG, "training episodes: clusters"),
    "img_test_n_clusters": _p(N_CLUSTERS_LIST, IMG, "test episodes: clusters"),
    "img_ood_n_clusters": _p(N_CLUSTERS_LIST, IMG, "out-of-domain episodes: clusters"),
    "img_train_n_episodes": _p(Ints(1, nonempty=True), IMG, "training episodes per pooling size"),
    "img_test_n_per_c": _p(PER_CELL, IMG, "test episodes per c and test set"),
    "img_tower_epochs": _p(Int(1), IMG, "epochs of the stand-in's vision tower"),
    "img_tower_objective": _p(Check(_tower_objective, "'+'-joined parts of classify, contrastive, reconstruct"), IMG,
                              "what the stand-in's tower learns (icc_utils.vision.tower.pretrain_tower)"),
    "img_pool_names": _p(Strs(nonempty=True), IMG, "pooling sizes' names (Table 2 columns)"),
    "img_pool_kernels": _p(KERNEL_SIZES, IMG, "pooling kernel per pooling size"),
    "img_table7_kernels": _p(KERNEL_SIZES, IMG, "Table 7: pooling kernels"),
    "img_gpt_models": _p(Models(), IMG, "OpenAI models for the image rows"),
    "img_gpt_image_size": _p(Int(8), IMG, "image side sent to OpenAI models, pixels"),
    "img_ft_lora_r": _p(Int(1), IMG, "LoRA rank"),
    "img_ft_lora_alpha": _p(Num(0, lo_open=True), IMG, "LoRA alpha"),
    "img_ft_learning_rate": _p(Num(0, 1, lo_open=True), IMG, "peak learning rate"),
    "img_ft_per_device_batch_size": _p(Int(1), IMG, "episodes per forward pass"),
    "img_ft_gradient_accumulation_steps": _p(Int(1), IMG, "forward passes per optimiser step"),
    "img_ft_save_steps": _p(Int(1), IMG, "checkpoint every this many steps"),
    "img_ft_max_train_minutes": _p(Num(0.01), IMG, "training time limit per run"),
    "img_model": _p(TEXT, IMG, "a published image model to evaluate (models/<name>[/stages/<k>-<stage>]); "
                    "'': train the pooling sizes here"),
    "img_size_models": _p(Strs(), IMG, "published models of other pooling sizes, evaluated beside img_model (its tower)"),
    "img_curriculum": _p(IMAGE_CURRICULUM, IMG, "make train-images: stages, easy to hard"),
    "img_size_stages": _p(IMAGE_CURRICULUM, IMG, "make train-images: one more stage per other pooling size, each from "
                                                  "the curriculum's final adapter (img_size_models)"),
    "img_curriculum_learning_rate": _p(Num(0, 1, lo_open=True), IMG, "make train-images: peak learning rate"),
    "img_curriculum_accumulation_steps": _p(Int(1), IMG, "make train-images: episodes per optimiser step"),
    "img_val_fraction": _p(Num(0, 0.9, lo_open=True), IMG, "make train-images: share of each training class held out"),
    "img_curve_n_per_c": _p(PER_CELL, IMG, "make train-images: validation episodes per c of the learning curve"),
    "img_curve_every_steps": _p(Int(1), IMG, "make train-images: optimiser steps between curve points (and checkpoints)"),
    "img_curriculum_max_minutes": _p(Num(0), IMG, "make train-images: time limit of the curriculum (0: none)"),
    "img_attn_n_layers": _p(Int(1), IMG, "layers shown in the image-attention figure"),
    "img_grid_n_episodes": _p(Int(1), IMG, "episodes shown in the example grid"),
    # 06_conditional_image_clustering
    "cond_dataset": _p(Choice(module="icc_utils.vision.conditional", attr="CONDITIONAL_DATASETS"), COND, "data set"),
    "cond_data_root": _p(TEXT, COND, "folder of the data set; '' for the drawn shapes"),
    "cond_n_images": _p(Int(10), COND, "drawn shapes: images"),
    "cond_image_size": _p(Int(4), COND, "image side, pixels"),
    "cond_test_fraction": _p(Num(0.01, 0.99), COND, "share of objects held out for testing"),
    "cond_conditions": _p(Strs(nonempty=True), COND, "conditions (attributes) clustered on"),
    "cond_length_range": _p(LengthRange(), COND, "images per episode, [lo, hi]"),
    "cond_train_n_clusters": _p(N_CLUSTERS_LIST, COND, "training episodes: clusters"),
    "cond_test_n_clusters": _p(N_CLUSTERS_LIST, COND, "test episodes: clusters"),
    "cond_test_n_per_c": _p(PER_CELL, COND, "test episodes per c and condition"),
    "cond_tower_patch_size": _p(Int(1), COND, "stand-in tower's patch size"),
    "cond_tower_epochs": _p(Int(1), COND, "stand-in tower's epochs"),
    "cond_align_epochs": _p(Int(0), COND, "projector alignment epochs (LLaVA stage 1)"),
    "cond_pool_names": _p(Strs(nonempty=True), COND, "pooling sizes' names"),
    "cond_pool_kernels": _p(KERNEL_SIZES, COND, "pooling kernel per pooling size"),
    "cond_train_n_episodes": _p(Ints(1, nonempty=True), COND, "training episodes per pooling size"),
    "cond_uncond_kernel": _p(Int(1, 64), COND, "pooling kernel of the unconditioned adapter"),
    "cond_uncond_n_episodes": _p(Int(0), COND, "training episodes of the unconditioned adapter"),
    "cond_captioner": _p(Choice(["probes", "vlm"]), COND, "who captions the test images for ICTC"),
    "cond_caption_template": _p(TEXT, COND, "caption template over the conditions"),
    "cond_ictc_chat_model": _p(Model(), COND, "chat model of the ICTC baseline"),
    "cond_gpt_models": _p(Models(), COND, "OpenAI models for the image rows"),
    "cond_gpt_image_size": _p(Int(8), COND, "image side sent to OpenAI models, pixels"),
    "cond_ft_lora_r": _p(Int(1), COND, "LoRA rank"),
    "cond_ft_lora_alpha": _p(Num(0, lo_open=True), COND, "LoRA alpha"),
    "cond_ft_learning_rate": _p(Num(0, 1, lo_open=True), COND, "peak learning rate"),
    "cond_ft_per_device_batch_size": _p(Int(1), COND, "episodes per forward pass"),
    "cond_ft_gradient_accumulation_steps": _p(Int(1), COND, "forward passes per optimiser step"),
    "cond_ft_save_steps": _p(Int(1), COND, "checkpoint every this many steps"),
    "cond_ft_max_train_minutes": _p(Num(0.01), COND, "training time limit per run"),
    "cond_figure_conditions": _p(Strs(nonempty=True), COND, "conditions shown in the figure"),
    "cond_figure_n_images": _p(Int(2), COND, "images shown per condition"),
    "cond_model": _p(TEXT, COND, "the published conditional model to evaluate (models/<name>[/stages/<k>-<stage>]); "
                                 "'': fine-tune the pooling sizes here"),
    "cond_uncond_model": _p(TEXT, COND, "the published unconditional baseline to evaluate beside it ('': none)"),
    "cond_curriculum": _p(IMAGE_CURRICULUM, COND, "make train-conditional: the conditional model's stages"),
    "cond_uncond_curriculum": _p(IMAGE_CURRICULUM, COND, "make train-conditional: the unconditional baseline's stages"),
    "cond_curriculum_learning_rate": _p(Num(0, 1, lo_open=True), COND, "make train-conditional: peak learning rate"),
    "cond_curriculum_align_epochs": _p(Int(0), COND, "make train-conditional: projector captioning epochs before the "
                                                     "curriculum (LLaVA stage 1; 0: none)"),
    "cond_val_fraction": _p(Num(0, 0.9, lo_open=True), COND,
                            "make train-conditional: share of each training object's images held out"),
    "cond_curve_n_per_c": _p(PER_CELL, COND, "make train-conditional: validation episodes per condition and c"),
    "cond_curve_every_steps": _p(Int(1), COND, "make train-conditional: optimiser steps between curve points"),
    "cond_curriculum_max_minutes": _p(Num(0), COND, "make train-conditional: time limit of one curriculum (0: none)"),
    # 07_reproduction_report
    "verdict_z": _p(Num(0, to_float=True), "07", "standard errors a difference needs to count as reproduced"),
}


# ---------------------------------------------------------------- checks across parameters

def _manifest(values: Mapping, notebook: str) -> dict:
    """notebook 00's manifest of the profile (cell counts of each split)."""
    path = DATA_DIR / values["profile"] / "manifest.json"
    if not path.is_file():
        raise ValueError(f"notebook {notebook} reads the episodes of notebook 00, but data/{values['profile']}/"
                         f"manifest.json does not exist: run notebook 00 first "
                         f"(python -m icc_utils.run --profile {values['profile']} --only 00)")
    return json.loads(path.read_text(encoding="utf-8"))


def _cells(distribution: str, n_clusters, dims, dfs=(None,)) -> list[str]:
    from .data import cell_key

    cs = n_clusters if isinstance(n_clusters, list) else [n_clusters]
    ds = dims if isinstance(dims, list) else [dims]
    return [cell_key(distribution, c, d, None if df is None else float(df)) for c in cs for d in ds for df in dfs]


def _per_cell(manifest: dict, split: str, name: str, value: int, cells: list[str], cap: int | None = None,
              source: str = "") -> None:
    """``value`` episodes must exist in every cell of ``split`` (at most ``cap`` of them are used)."""
    counts = manifest["files"].get(split, {}).get("cells", {})
    available = {k: min(counts.get(k, 0), cap if cap is not None else counts.get(k, 0)) for k in cells}
    if not available:
        return
    cell = min(available, key=available.get)
    generated = manifest.get("params", {}).get("test_n_per_cell")
    if not available[cell]:
        raise ValueError(f"{name}={value}: cell {cell} of {split}{source} has no episodes; notebook 00 generated "
                         f"test_n_per_cell={generated} episodes in each cell of its grid (test_n_clusters, test_dims, "
                         "test_dfs; lognormal_*): choose cells inside it")
    if value > available[cell]:
        raise ValueError(f"{name}={value} is more than the {available[cell]} episode(s) available in cell {cell} "
                         f"of {split}{source} (notebook 00 generated test_n_per_cell={generated} per cell of its grid); "
                         f"use {name} <= {available[cell]}, or rerun notebook 00 with more")


def _cross_01(v: dict) -> None:
    m = _manifest(v, "01")
    _per_cell(m, "test_t", "n_per_cell", v["n_per_cell"], _cells("t", v["fig2_n_clusters"], v["fig2_dim"], v["fig2_dfs"]))
    n = v["section_n_per_cell"]
    _per_cell(m, "test_t", "section_n_per_cell", n, _cells("t", v["grid_n_clusters"], v["grid_dims"], v["grid_dfs"]))
    _per_cell(m, "test_lognormal", "section_n_per_cell", n, _cells("lognormal", v["logn_n_clusters"], v["logn_dims"]))
    _per_cell(m, "test_t", "section_n_per_cell", n, _cells("t", v["perm_n_clusters"], v["perm_dim"], v["perm_dfs"]))
    if v["budget_n_episodes"] > v["n_per_cell"] or 1.0 not in {float(df) for df in v["fig2_dfs"]}:
        raise ValueError(f"budget_n_episodes={v['budget_n_episodes']} must be at most n_per_cell={v['n_per_cell']} "
                         f"and fig2_dfs={v['fig2_dfs']!r} must hold df 1: the token-budget episodes are Figure 2's at df 1")
    fig2 = {float(df) for df in v["fig2_dfs"]}
    for df in v["unknown_k_dfs"]:  # the unknown-k episodes are Figure 2's
        _per_cell(m, "test_t", "unknown_k_n_per_cell", v["unknown_k_n_per_cell"],
                  _cells("t", v["fig2_n_clusters"], v["fig2_dim"], [df]), cap=v["n_per_cell"] if float(df) in fig2 else 0,
                  source=" among Figure 2's episodes (n_per_cell, fig2_dfs)")


def _cross_03(v: dict) -> None:
    if False not in v["sc_gen_constrained_modes"]:
        raise ValueError(f"sc_gen_constrained_modes={v['sc_gen_constrained_modes']!r} must include false: the paper's "
                         "Gen row is free greedy generation (true adds constrained decoding beside it)")
    _per_cell(_manifest(v, "03"), "test_t", "sc_n_per_cell", v["sc_n_per_cell"],
              _cells("t", v["sc_n_clusters"], v["sc_dims"], v["sc_dfs"]))


def _cross_04(v: dict) -> None:
    m, start = _manifest(v, "04"), v["verdict_start"]
    if len(v["t1_n_per_df"]) != len(v["t1_dfs"]):
        raise ValueError(f"t1_n_per_df={v['t1_n_per_df']!r} must give one count per df of t1_dfs={v['t1_dfs']!r}")
    for df, n in zip(v["t1_dfs"], v["t1_n_per_df"]):
        _per_cell(m, "test_t", "verdict_start + t1_n_per_df", start + n, _cells("t", v["t1_n_clusters"], v["t1_dim"], [df]))
    _per_cell(m, "test_t", "fig7_n_per_cell", v["fig7_n_per_cell"],
              _cells("t", v["fig7_n_clusters"], v["fig7_dims"], v["fig7_dfs"]))
    _per_cell(m, "test_lognormal", "verdict_start + t4_n_per_cell", start + v["t4_n_per_cell"],
              _cells("lognormal", v["t4_n_clusters"], v["t4_dims"]))
    _per_cell(m, "test_t", "verdict_start + t5_n_per_cell", start + v["t5_n_per_cell"],
              _cells("t", v["t5_n_clusters"], v["t5_dim"], v["t5_dfs"]))


def _same_lengths(prefix: str, v: dict) -> None:
    names = [f"{prefix}_pool_names", f"{prefix}_pool_kernels", f"{prefix}_train_n_episodes"]
    if len({len(v[n]) for n in names}) > 1:
        raise ValueError(", ".join(f"{n}={v[n]!r}" for n in names) + " must be lists of the same length "
                         "(one kernel and one training-set size per named pooling size)")


def _cross_05(v: dict) -> None:
    _same_lengths("img", v)
    both = sorted(set(v["img_train_classes"]) & set(v["img_test_classes"]))
    if both:
        raise ValueError(f"img_train_classes and img_test_classes overlap ({both}); the test classes must be "
                         "unseen in training")


def _cross_06(v: dict) -> None:
    from .validation import check_subset
    from .vision import conditional as C

    check_subset("cond_conditions", v["cond_conditions"], C.CONDITIONAL_DATASETS[v["cond_dataset"]][1])
    check_subset("cond_figure_conditions", v["cond_figure_conditions"], v["cond_conditions"])
    if v["cond_captioner"] == "probes" or (v["vlm"] == "embedded-llava" and v["cond_align_epochs"]):
        C.check_caption_template(v["cond_caption_template"], v["cond_conditions"])
    _same_lengths("cond", v)


# ---------------------------------------------------------------- what notebooks derive

def _derive_adapter(v: dict) -> dict:
    from .validation import check_adapter

    return {"finetuned_dir": check_adapter("finetuned_adapter", v["finetuned_adapter"], PROJECT_ROOT)}


def _derive_04(v: dict) -> dict:
    from . import finetune as F
    from .validation import check_adapter

    config = F.config_from_params({k: x for k, x in v.items() if k.startswith("ft_")}, v["model"], v["seed"])
    return {"curriculum": F.curriculum_from_params(v["ft_curriculum"]), "config": config,
            **{f"{k}_dir": check_adapter(f"{k}_adapter", v[f"{k}_adapter"], PROJECT_ROOT)
               for k in ("finetuned", "second_seed", "aug")}}


def _derive_vlm_dtype(v: dict) -> dict:
    return {"dtype": v["vlm_dtype"]}


@dataclass(frozen=True)
class Notebook:
    """A notebook's check cell: its imports (names the later cells use), cross checks, derived values."""
    file: str
    imports: str = "from icc_utils import params as P"
    cross: Callable[[dict], None] | None = None
    derive: Callable[[dict], dict] | None = None


NOTEBOOKS: dict[str, Notebook] = {
    "00": Notebook("00_data.ipynb"),
    "01": Notebook("01_zero_shot_numeric.ipynb", cross=_cross_01),
    "02": Notebook("02_attention_visualization.ipynb",
                   "from icc_utils import attention as A, params as P", derive=_derive_adapter),
    "03": Notebook("03_attention_spectral_clustering.ipynb", "from icc_utils import attention as A, params as P",
                   _cross_03, _derive_adapter),
    "04": Notebook("04_lora_finetune_numeric.ipynb", "from icc_utils import finetune as F, params as P",
                   _cross_04, _derive_04),
    "05": Notebook("05_image_clustering.ipynb", "from icc_utils import params as P\nfrom icc_utils.vision import vlm as V",
                   _cross_05, _derive_vlm_dtype),
    "06": Notebook("06_conditional_image_clustering.ipynb",
                   "from icc_utils import params as P\nfrom icc_utils.vision import conditional as C, vlm as V", _cross_06,
                   _derive_vlm_dtype),
    "07": Notebook("07_reproduction_report.ipynb"),
}


# ---------------------------------------------------------------- checking

def declared(notebook: str) -> list[str]:
    """The parameters ``notebook`` (``"01"``) declares, in table order."""
    if notebook not in NOTEBOOKS:
        raise ValueError(f"notebook={notebook!r} is not one of {list(NOTEBOOKS)}")
    return [name for name, p in PARAMS.items() if notebook in p.notebooks]


def check_values(notebook: str, values: Mapping[str, Any]) -> dict:
    """Each declared parameter of ``notebook`` checked on its own; returns them normalised.

    Every bad parameter is reported in one ValueError (each line names the parameter and what it allows)."""
    names = declared(notebook)
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"notebook {notebook} declares {missing} (icc_utils/params.py) but they are not set; "
                         f"regenerate its parameters cell: python -m icc_utils.params_sync sync-notebooks {notebook}")
    out, errors = {}, []
    for n in names:
        try:
            out[n] = PARAMS[n].rule(n, values[n])
        except ValueError as exc:
            errors.append(str(exc))
    if len(errors) == 1:
        raise ValueError(errors[0])
    if errors:
        raise ValueError(f"{len(errors)} parameters are not allowed:\n" + "\n".join(f"- {e}" for e in errors))
    return out


def validated(notebook: str, namespace: Mapping[str, Any]) -> dict:
    """What a notebook's check cell puts in its namespace: its parameters checked and normalised
    (:func:`check_values`), checked across each other, and the values the notebook derives from them."""
    values = check_values(notebook, namespace)
    spec = NOTEBOOKS[notebook]
    if spec.cross:
        spec.cross(values)
    if spec.derive:
        values.update(spec.derive(values))
    return values
