"""Training the multimodal stand-in, reusing :mod:`icc_utils.finetune`.

* :func:`align_projector`: LLaVA's stage 1, only the projector learns to caption images;
* :func:`train_image_icc`: LoRA on the language model (+ the projector) on image episodes,
  tower frozen, through :func:`icc_utils.finetune.train` with :class:`ImageEpisodeDataset`
  and :func:`collate_images`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..io import write_json
from .images import ImageSet, images_hash
from .tower import pixel_values
from .vlm import caption_prompt, image_prompt, llava_core, load_vlm, set_pooling, tokens_per_image

if TYPE_CHECKING:
    import torch

    from ..finetune import FinetuneConfig, TrainResult


#: LoRA only on the language model's attention projections (not the vision tower's q/k/v).
LM_ATTENTION_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


def align_projector(base_dir: str | Path, imageset: ImageSet, captions: Sequence[str], out_dir: str | Path,
                    kernels: Sequence[int] = (1,), epochs: int = 2, batch_size: int = 16,
                    learning_rate: float = 1e-3, seed: int = 0) -> dict:
    """LLaVA's stage 1 for the stand-in: train ONLY the projector to caption images; save the model.

    Each image of ``imageset`` is paired with ``captions[i]`` (for the stand-in: its attribute
    values in words, training images only). Tower and language model stay frozen; next-token
    loss on the caption tokens; AdamW, seeded order; batches cycle through ``kernels`` so the
    projector sees every pooling size. Without it the new projector is random and the language
    model cannot read the image tokens (notebook 05's fine-tunes learned the answer format only).
    The aligned model goes to ``out_dir`` (reused when the record matches). Returns the record.
    """
    import time

    import torch

    from ..finetune import answer_only_loss, collate, encode_chat_example

    out_dir = Path(out_dir)
    captions = [str(c) for c in captions]
    if len(captions) != imageset.n_images:
        raise ValueError(f"captions has {len(captions)} entries for {imageset.n_images} images; give one per image")
    stamp = {"base": str(base_dir), "data_sha256": images_hash(imageset.images),
             "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest(),
             "kernels": [int(k) for k in kernels], "epochs": int(epochs), "batch_size": int(batch_size),
             "learning_rate": float(learning_rate), "seed": int(seed)}
    record_path = out_dir / "projector_alignment.json"
    if record_path.exists() and (out_dir / "config.json").exists():
        rec = json.loads(record_path.read_text())
        if rec.get("stamp") == stamp:
            return rec
    model, tok, proc = load_vlm(str(base_dir), kernel=int(kernels[0]))
    core = llava_core(model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(core.multi_modal_projector.parameters())
    for p in params:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(params, lr=learning_rate)
    px = pixel_values(proc, imageset.images)
    examples = {}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    history, step, t0 = [], 0, time.perf_counter()
    for epoch in range(int(epochs)):
        order = rng.permutation(imageset.n_images)
        for b in range(0, len(order), batch_size):
            k = int(kernels[step % len(kernels)])
            set_pooling(model, k)
            n_tok = tokens_per_image(model, k)
            batch = []
            for i in order[b:b + batch_size]:
                key = (int(i), n_tok)
                if key not in examples:
                    examples[key] = encode_chat_example(tok, caption_prompt(tok, n_tok),
                                                        caption_prompt(tok, n_tok, answer=captions[i]), f"image {i}")
                batch.append(examples[key])
            inputs = collate(batch, tok.pad_token_id or 0)
            loss = answer_only_loss(model, **inputs, pixel_values=px[order[b:b + batch_size]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append({"step": step, "epoch": epoch + 1, "kernel": k, "loss": float(loss.detach())})
            step += 1
    model.eval()
    set_pooling(model, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    proj = core.multi_modal_projector
    core.multi_modal_projector = proj.projector      # save the plain LLaVA layout (no pooling wrapper)
    model.save_pretrained(out_dir)
    core.multi_modal_projector = proj
    tok.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    rec = {"stamp": stamp, "history": history, "seconds": round(time.perf_counter() - t0, 2),
           "final_loss": history[-1]["loss"] if history else None}
    write_json(record_path, rec)
    return rec


class ImageEpisodeDataset:
    """Training examples for image ICC: token ids (image tokens expanded), answer labels, pixels."""

    def __init__(self, episodes: Sequence, imageset: ImageSet, tokenizer, processor, n_tokens: int, seed: int = 0,
                 n_epochs: int = 1):
        self.episodes, self.imageset, self.tokenizer = list(episodes), imageset, tokenizer
        self.processor, self.n_tokens = processor, int(n_tokens)
        n = len(self.episodes)
        self.order = np.concatenate([np.random.default_rng([int(seed), e]).permutation(n) for e in range(n_epochs)]) \
            if n else np.zeros(0, int)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        from ..finetune import encode_chat_example
        from ..prompts import answer_text

        ep = self.episodes[int(self.order[i])]
        ex = encode_chat_example(self.tokenizer, image_prompt(self.tokenizer, ep, self.n_tokens),
                                 image_prompt(self.tokenizer, ep, self.n_tokens, answer=answer_text(ep.labels)),
                                 ep.id)
        ex["pixel_values"] = pixel_values(self.processor, self.imageset.images[ep.indices])
        return ex


def collate_images(examples: Sequence[dict], pad_token_id: int = 0) -> dict[str, "torch.Tensor"]:
    """Text collation of :func:`icc_utils.finetune.collate` plus every example's pixels, in order."""
    import torch

    from ..finetune import collate

    batch = collate([{k: e[k] for k in ("input_ids", "labels")} for e in examples], pad_token_id)
    batch["pixel_values"] = torch.cat([e["pixel_values"] for e in examples])
    return batch


def train_image_icc(config: "FinetuneConfig", base_dir: str | Path, kernel: int, train_episodes: Sequence,
                    imageset: ImageSet, output_dir: str | Path, train_projector: bool = True, resume: bool = True,
                    **kwargs) -> "TrainResult":
    """LoRA on the language model (+ the new projector) for image ICC; tower frozen.

    ``config`` is a :class:`~icc_utils.finetune.FinetuneConfig` whose ``model`` is ignored in favour of
    ``base_dir`` (a LLaVA directory). The adapter directory is a standard PEFT adapter; with
    ``train_projector`` the projector's weights are saved in it (``modules_to_save``).
    """
    from dataclasses import replace

    from ..finetune import train

    cfg = replace(config, model=str(base_dir))
    holder = {}

    def model_loader(c):
        model, tok, proc = load_vlm(str(base_dir), kernel=kernel, dtype=c.weights_dtype)
        model.train()
        for p in llava_core(model).vision_tower.parameters():
            p.requires_grad_(False)
        holder.update(tok=tok, proc=proc, n_tokens=tokens_per_image(model, kernel))
        return model, tok

    def make_dataset(episodes, tok, n_epochs):
        return ImageEpisodeDataset(episodes, imageset, tok, holder["proc"], holder["n_tokens"], cfg.seed, n_epochs)

    overrides = {"target_modules": LM_ATTENTION_REGEX, "_pooling_kernel": int(kernel)}  # "_": recorded only
    if train_projector:
        overrides["modules_to_save"] = ["multi_modal_projector"]
    return train(cfg, train_episodes, output_dir, resume=resume, model_loader=model_loader,
                 make_dataset=make_dataset, collate_fn=collate_images, lora_overrides=overrides, **kwargs)
