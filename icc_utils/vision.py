"""Multimodal ICC (Sections 4.2 and 5): LLaVA models with average-pooled image tokens.

Two models behind one interface:

* the paper's ``llava-hf/llava-interleave-qwen-7b-hf`` (SigLIP tower, 27x27 = 729 tokens per
  image), loaded with transformers' Llava classes and its own image processor;
* the embedded stand-in (``"embedded-llava"``): transformers' ``LlavaForConditionalGeneration``
  assembled offline from the embedded SmolLM2-135M-Instruct and a small SigLIP-architecture
  vision tower that :func:`pretrain_tower` trains on the *training* classes only. It is our
  stand-in for SigLIP, not SigLIP.

Pooling (Table 7). Each image's feature grid (g x g) is average-pooled with kernel k, stride k,
no padding, giving ``(g // k)**2`` tokens per image. We pool **before** the projector, as the
upstream code does (the paper's text says after; PROTOCOL.md asks us to pick one): the wrapper
:class:`PooledProjector` replaces the model's ``multi_modal_projector``, so the standard LLaVA
forward and ``generate`` see pooled features, and the prompt carries exactly that many image
tokens per image (:func:`expand_image_placeholders`; transformers checks the count).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import write_json
from .prompts import IMAGE_PLACEHOLDER, image_messages, render_chat

EMBEDDED_VLM = "embedded-llava"
PAPER_VLM = "llava-hf/llava-interleave-qwen-7b-hf"
#: The image token added to the embedded model's tokenizer (LLaVA's own name for it).
IMAGE_TOKEN = "<image>"
#: LoRA only on the language model's attention projections (not the vision tower's q/k/v).
LM_ATTENTION_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
#: IC|TC's captioning request when the multimodal model itself is the captioner.
CAPTION_PROMPT = "Describe the main object in this image in one short sentence."


# ---------------------------------------------------------------- pooling

def pooled_grid(grid: int, kernel: int) -> int:
    """Side of the pooled grid: ``grid // kernel`` (stride = kernel, no padding)."""
    if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or not 1 <= kernel <= grid:
        raise ValueError(f"kernel={kernel!r} is out of range; it must be an integer in 1..{grid} "
                         f"(the image feature grid is {grid}x{grid})")
    return grid // int(kernel)


def pool_features(features, kernel: int):
    """Average-pool per-image features ``(N, g*g, D)`` on their g x g grid: ``(N, (g//k)**2, D)``."""
    import torch.nn.functional as F

    n, p, d = features.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"image features have {p} positions, not a square grid; cannot pool")
    k = int(kernel)
    pooled_grid(g, k)
    if k == 1:
        return features
    x = features.transpose(1, 2).reshape(n, d, g, g)
    x = F.avg_pool2d(x, kernel_size=k, stride=k, padding=0)
    return x.flatten(2).transpose(1, 2)


def _pooled_projector_class():
    import torch.nn as nn

    class PooledProjector(nn.Module):
        """Average-pool each image's feature grid (kernel ``k``), then apply the LLaVA projector."""

        def __init__(self, projector, kernel: int = 1):
            super().__init__()
            self.projector = projector
            self.kernel = int(kernel)

        def forward(self, image_features):
            return self.projector(pool_features(image_features, self.kernel))

    return PooledProjector


def _llava_core(model):
    """The ``LlavaModel`` inside a Llava model (through PEFT wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def set_pooling(model, kernel: int) -> None:
    """Pool image features with ``kernel`` before the projector (wraps it once; later calls change k)."""
    pooled_grid(feature_grid(model), kernel)
    core = _llava_core(model)
    proj = core.multi_modal_projector
    inner = getattr(proj, "modules_to_save", None)   # PEFT's wrapper around a trained projector
    targets = [t for t in [proj] + (list(inner.values()) + [proj.original_module] if inner is not None else [])
               if hasattr(t, "kernel")]
    if not targets:
        core.multi_modal_projector = _pooled_projector_class()(proj, kernel)
    for t in targets:
        t.kernel = int(kernel)


def feature_grid(model) -> int:
    """Side of the vision tower's patch grid, from its config (27 for SigLIP-384/14)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vc = base.config.vision_config
    return int(vc.image_size) // int(vc.patch_size)


def tokens_per_image(model, kernel: int) -> int:
    """Image tokens per image after pooling with ``kernel``: ``(grid // kernel)**2`` (Table 7)."""
    return pooled_grid(feature_grid(model), kernel) ** 2


# ---------------------------------------------------------------- prompts

def expand_image_placeholders(text: str, n_tokens: int, image_token: str = IMAGE_TOKEN) -> str:
    """Replace each :data:`~icc_utils.prompts.IMAGE_PLACEHOLDER` with ``n_tokens`` image tokens."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens={n_tokens!r} is out of range; it must be >= 1")
    return text.replace(IMAGE_PLACEHOLDER, image_token * int(n_tokens))


def image_prompt(tokenizer, episode, n_tokens: int, answer: str | None = None) -> str:
    """An image episode's chat prompt (with ``answer``: prompt + answer for training), image tokens expanded."""
    msgs = image_messages(episode.n_points, episode.n_clusters, episode.params.get("condition"))
    return expand_image_placeholders(render_chat(tokenizer, msgs, answer), n_tokens)


def images_hash(images: np.ndarray) -> str:
    """sha256 of image arrays (shape and bytes): part of a reply's cache key."""
    arr = np.ascontiguousarray(images)
    return hashlib.sha256(json.dumps(list(arr.shape)).encode() + arr.tobytes()).hexdigest()


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N,H,W)`` grayscale or ``(N,H,W,3)`` RGB as ``(N,H,W,3)``."""
    images = np.asarray(images)
    if images.ndim == 3:
        return np.repeat(images[..., None], 3, axis=-1)
    if images.ndim == 4 and images.shape[-1] == 3:
        return images
    raise ValueError(f"images have shape {images.shape}; expected (N,H,W) grayscale or (N,H,W,3) RGB")


# ---------------------------------------------------------------- the embedded stand-in

@dataclass(frozen=True)
class TowerConfig:
    """The embedded vision tower (SigLIP architecture) and its supervised pretraining."""

    image_size: int = 8            # digits are 8x8
    patch_size: int = 2            # a 4x4 feature grid: k = 1/2/4 give 16/4/1 tokens per image
    hidden_size: int = 96
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 192
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0

    def siglip_config(self):
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(image_size=self.image_size, patch_size=self.patch_size, num_channels=3,
                                  hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                                  num_attention_heads=self.num_attention_heads,
                                  intermediate_size=self.intermediate_size)


def image_processor_for(image_size: int):
    """A SigLIP image processor for the embedded tower: nearest resize, [0,1] scale, mean/std 0.5."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(do_resize=True, size={"height": image_size, "width": image_size}, resample=0,
                                do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=False)


def pixel_values(processor, images: np.ndarray):
    """``(N, 3, S, S)`` float pixels for uint8 images through the model's image processor."""
    rgb = to_rgb(images)
    return processor(images=list(rgb), return_tensors="pt")["pixel_values"]


def pretrain_tower(imageset, classes: Sequence[str], out_dir: str | Path, config: TowerConfig = TowerConfig(),
                   attribute_keys: Sequence[str] = ()) -> dict:
    """Train the embedded SigLIP-architecture tower to classify ``classes`` (training classes only).

    Mean-pooled last hidden state -> linear head, cross-entropy, AdamW, seeded. With
    ``attribute_keys`` the tower learns those attributes instead, one head each (summed losses;
    ``train_accuracy`` is then the mean over heads): features that name each attribute
    separately carry over to unseen attribute combinations, where a head over the combinations
    themselves memorises them (notebook 06). The tower (without the heads) is saved to
    ``out_dir`` with its image processor; a finished run with the same config, data and targets
    is reused. Returns the run's record (train accuracy per epoch, seconds).
    """
    import time

    import torch
    from transformers import SiglipVisionModel

    out_dir = Path(out_dir)
    keep = [i for i in range(imageset.n_images) if imageset.class_names[int(imageset.labels[i])] in set(classes)]
    data_id = images_hash(imageset.images[keep])
    targets = list(attribute_keys) or ["class"]
    record_path = out_dir / "tower_training.json"
    if record_path.exists():
        rec = json.loads(record_path.read_text())
        if rec.get("config") == asdict(config) and rec.get("data_sha256") == data_id and \
                rec.get("targets", ["class"]) == targets:
            return rec
    torch.manual_seed(config.seed)
    tower = SiglipVisionModel(config.siglip_config())
    proc = image_processor_for(config.image_size)
    x = pixel_values(proc, imageset.images[keep])
    if attribute_keys:
        columns = [[str(imageset.attributes[k][i]) for i in keep] for k in attribute_keys]
    else:
        columns = [[imageset.class_names[int(imageset.labels[i])] for i in keep]]
    names = [sorted(set(col)) for col in columns]
    ys = [torch.tensor([n.index(v) for v in col]) for n, col in zip(names, columns)]
    heads = torch.nn.ModuleList(torch.nn.Linear(config.hidden_size, len(n)) for n in names)
    opt = torch.optim.AdamW(list(tower.parameters()) + list(heads.parameters()), lr=config.learning_rate)
    gen = torch.Generator().manual_seed(config.seed)
    history, t0 = [], time.perf_counter()
    n = len(keep)
    for epoch in range(config.epochs):
        tower.train()
        order = torch.randperm(n, generator=gen)
        correct = 0
        for s in range(0, n, config.batch_size):
            idx = order[s:s + config.batch_size]
            feats = tower(pixel_values=x[idx]).last_hidden_state.mean(1)
            loss = 0
            for head, y in zip(heads, ys):
                logits = head(feats)
                loss = loss + torch.nn.functional.cross_entropy(logits, y[idx])
                correct += int((logits.argmax(-1) == y[idx]).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
        history.append({"epoch": epoch + 1, "loss": loss.item(), "train_accuracy": correct / (n * len(heads))})
    tower.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    tower.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    rec = {"config": asdict(config), "targets": targets, "classes": names[0] if not attribute_keys else
           dict(zip(attribute_keys, names)), "n_images": n, "data_sha256": data_id,
           "history": history, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(record_path, rec)
    return rec


def build_embedded_llava(tower_dir: str | Path, out_dir: str | Path, language_model: str = "embedded",
                         seed: int = 0) -> Path:
    """Assemble ``LlavaForConditionalGeneration`` from a pretrained tower and the embedded LM; save it.

    The projector (2-layer MLP, GELU) is new, initialised from ``seed``; the LM's vocabulary gets
    one special token, :data:`IMAGE_TOKEN`. Vision feature strategy ``full`` (SigLIP has no CLS
    token), last tower layer. Reused if ``out_dir`` already holds the model built from this tower.
    """
    import torch
    from transformers import (AutoImageProcessor, LlavaConfig, LlavaForConditionalGeneration,
                              SiglipVisionModel)

    from .models import _file_fingerprint, load_model_and_tokenizer, resolve_local_model

    tower_dir, out_dir = Path(tower_dir), Path(out_dir)
    tower_id = json.loads((tower_dir / "tower_training.json").read_text())["data_sha256"]
    stamp = {"tower": str(tower_dir), "tower_data_sha256": tower_id,
             "tower_weights": _file_fingerprint(tower_dir / "model.safetensors"),
             "language_model": resolve_local_model(language_model), "seed": seed}
    stamp_path = out_dir / "icc_build.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp and (out_dir / "config.json").exists():
        return out_dir
    lm, tok = load_model_and_tokenizer(language_model)
    tower = SiglipVisionModel.from_pretrained(tower_dir)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    lm.resize_token_embeddings(len(tok))
    text_config = lm.config
    config = LlavaConfig(vision_config=tower.config.to_dict(), text_config=text_config.to_dict(),
                         image_token_id=image_token_id, projector_hidden_act="gelu",
                         vision_feature_select_strategy="full", vision_feature_layer=-1,
                         tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)))
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight.data.copy_(lm.lm_head.weight.data)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    AutoImageProcessor.from_pretrained(tower_dir).save_pretrained(out_dir)
    write_json(stamp_path, stamp)
    return out_dir


def caption_prompt(tokenizer, n_tokens: int, prompt: str = None, answer: str | None = None) -> str:
    """A one-image captioning chat prompt (with ``answer``: prompt + answer), image tokens expanded."""
    msgs = [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{prompt or CAPTION_PROMPT}"}]
    return expand_image_placeholders(render_chat(tokenizer, msgs, answer), n_tokens)


def align_projector(base_dir: str | Path, imageset, captions: Sequence[str], out_dir: str | Path,
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

    from .finetune import answer_only_loss, collate, encode_chat_example

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
    core = _llava_core(model)
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


def load_vlm(path: str, adapter: str | None = None, kernel: int = 1, dtype: str = "float32"):
    """Load a LLaVA model, tokenizer and image processor; pool with ``kernel``; apply a PEFT adapter.

    The pooling wrapper goes on before the adapter, so a trained projector saved in the adapter
    (``modules_to_save``) finds its place. Model in eval mode.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from .models import ModelUnavailableError, _torch_dtype

    torch_dtype = _torch_dtype(dtype)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch_dtype)
        proc = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        if Path(path).is_dir():
            raise
        raise ModelUnavailableError(
            f"vision model {path!r} could not be loaded offline (not in the local Hugging Face cache, or gated). "
            f"Download it where you have access, or use model='{EMBEDDED_VLM}'. Original error: {exc}") from exc
    set_pooling(model, kernel)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, tok, proc


# ---------------------------------------------------------------- inference

class VisionICC:
    """Image ICC with a local LLaVA model: greedy, batched, cached replies; one row per episode."""

    kind = "local-vision"
    available = True
    unavailable_reason = ""

    def __init__(self, path: str, kernel: int = 1, adapter: str | None = None, name: str | None = None,
                 batch_size: int = 4, dtype: str = "float32"):
        from .models import LocalChatModel

        self.path, self.kernel, self.adapter = str(path), int(kernel), adapter
        model, tok, self.processor = load_vlm(self.path, adapter, kernel, dtype)
        self.name = name or f"{Path(self.path).name}-k{kernel}" + ("+adapter" if adapter else "")
        self.chat = LocalChatModel.from_loaded(model, tok, name=self.name, batch_size=batch_size)
        self.chat.model_id = f"{self.name}|{_fingerprint(self.path, adapter)}|k{kernel}"
        self.n_tokens = tokens_per_image(model, kernel)

    @property
    def model(self):
        return self.chat.model

    @property
    def tokenizer(self):
        return self.chat.tokenizer

    def render(self, episode) -> str:
        return image_prompt(self.tokenizer, episode, self.n_tokens)

    def predict(self, episodes: Sequence, imageset, constrained: bool = False, cache=None, desc: str | None = None):
        """Predictions for image episodes (indices into ``imageset``)."""
        import torch

        episodes = list(episodes)
        prompts = [self.render(ep) for ep in episodes]
        salts = [images_hash(imageset.images[ep.indices]) for ep in episodes]

        def batch_inputs(idx):
            imgs = np.concatenate([imageset.images[episodes[i].indices] for i in idx])
            return {"pixel_values": pixel_values(self.processor, imgs).to(torch.float32)}

        return self.chat.predict_prompts(episodes, prompts, [ep.n_clusters for ep in episodes], constrained,
                                         cache, desc or self.name, key_salts=salts, batch_inputs=batch_inputs)


    def caption(self, imageset, indices: Sequence[int] | None = None, prompt: str = CAPTION_PROMPT,
                max_new_tokens: int = 32, cache=None) -> list[str]:
        """One greedy caption per image (IC|TC's first stage, with this model as the captioner).

        Replies are cached per (model, prompt, image pixels); ``indices`` default to every image.
        """
        from .cache import ReplyCache, cache_key

        idx = list(range(imageset.n_images)) if indices is None else [int(i) for i in indices]
        text = caption_prompt(self.tokenizer, self.n_tokens, prompt)
        decoding = {"max_new_tokens": int(max_new_tokens), "greedy": True}
        keys = [cache_key("local", self.chat.model_id, [text, images_hash(imageset.images[[i]])], decoding)
                for i in idx]

        def batch_inputs(rows):
            return {"pixel_values": pixel_values(self.processor, imageset.images[[idx[r] for r in rows]])}

        replies = self.chat.generate_cached([text] * len(idx), keys, cache if cache is not None else ReplyCache(None),
                                            max_new_tokens, {"method": "caption", "model": self.chat.model_id},
                                            batch_inputs=batch_inputs)
        return [r.strip() for r in replies]


def _fingerprint(path: str, adapter: str | None) -> str:
    """Short hash of the weights' contents (model directory and adapter), so cached replies follow the weights."""
    from .models import _file_fingerprint

    files = [f for d in [Path(path)] + ([Path(adapter)] if adapter else []) if d.is_dir()
             for f in sorted(d.glob("*.safetensors"))]
    return hashlib.sha256("".join(_file_fingerprint(f) for f in files).encode()).hexdigest()[:12]


def mean_pooled_features(model, processor, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The frozen tower's features averaged over the patch grid, one vector per image (the k-means baseline)."""
    import torch

    tower = _llava_core(model).vision_tower
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            px = pixel_values(processor, images[s:s + batch_size]).to(next(tower.parameters()).dtype)
            out.append(tower(pixel_values=px).last_hidden_state.mean(1).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------- fine-tuning (reuses icc_utils.finetune)

class ImageEpisodeDataset:
    """Training examples for image ICC: token ids (image tokens expanded), answer labels, pixels."""

    def __init__(self, episodes: Sequence, imageset, tokenizer, processor, n_tokens: int, seed: int = 0,
                 n_epochs: int = 1):
        self.episodes, self.imageset, self.tokenizer = list(episodes), imageset, tokenizer
        self.processor, self.n_tokens = processor, int(n_tokens)
        n = len(self.episodes)
        self.order = np.concatenate([np.random.default_rng([int(seed), e]).permutation(n) for e in range(n_epochs)]) \
            if n else np.zeros(0, int)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        from .finetune import encode_chat_example
        from .prompts import answer_text

        ep = self.episodes[int(self.order[i])]
        ex = encode_chat_example(self.tokenizer, image_prompt(self.tokenizer, ep, self.n_tokens),
                                 image_prompt(self.tokenizer, ep, self.n_tokens, answer=answer_text(ep.labels)),
                                 ep.id)
        ex["pixel_values"] = pixel_values(self.processor, self.imageset.images[ep.indices])
        return ex


def collate_images(examples: Sequence[dict], pad_token_id: int = 0) -> dict:
    """Text collation of :func:`icc_utils.finetune.collate` plus every example's pixels, in order."""
    import torch

    from .finetune import collate

    batch = collate([{k: e[k] for k in ("input_ids", "labels")} for e in examples], pad_token_id)
    batch["pixel_values"] = torch.cat([e["pixel_values"] for e in examples])
    return batch


def train_image_icc(config, base_dir: str | Path, kernel: int, train_episodes: Sequence, imageset,
                    output_dir: str | Path, train_projector: bool = True, resume: bool = True, **kwargs):
    """LoRA on the language model (+ the new projector) for image ICC; tower frozen.

    ``config`` is a :class:`~icc_utils.finetune.FinetuneConfig` whose ``model`` is ignored in favour of
    ``base_dir`` (a LLaVA directory). The adapter directory is a standard PEFT adapter; with
    ``train_projector`` the projector's weights are saved in it (``modules_to_save``).
    """
    from dataclasses import replace

    from .finetune import train

    cfg = replace(config, model=str(base_dir))
    holder = {}

    def model_loader(c):
        model, tok, proc = load_vlm(str(base_dir), kernel=kernel, dtype=c.weights_dtype)
        model.train()
        for p in _llava_core(model).vision_tower.parameters():
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


# ---------------------------------------------------------------- attention between images (Figure 13)

def image_episode_tokens(tokenizer, episode, n_tokens: int, image_token_id: int):
    """An :class:`~icc_utils.attention.EpisodeTokens` whose segments are the images' token spans."""
    from .attention import EpisodeTokens

    text = image_prompt(tokenizer, episode, n_tokens)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc.input_ids)
    pos = np.flatnonzero(ids == int(image_token_id))
    if len(pos) != n_tokens * episode.n_points:
        raise ValueError(f"episode {episode.id}: {len(pos)} image tokens in the prompt, expected "
                         f"{n_tokens} x {episode.n_points} images")
    point = np.full(len(ids), -1, dtype=np.int64)
    point[pos] = np.repeat(np.arange(episode.n_points), n_tokens)
    return EpisodeTokens(text, ids.tolist(), [tuple(o) for o in enc.offset_mapping], point, None, episode.n_points)


def image_attention_blocks(model, tokenizer, processor, episode, imageset, kernel: int, layers="all"):
    """``A^II`` between the images of one episode (each image's tokens are its segment)."""
    from .attention import extract_attention_blocks

    toks = image_episode_tokens(tokenizer, episode, tokens_per_image(model, kernel),
                                _llava_core(model).config.image_token_id)
    px = pixel_values(processor, imageset.images[episode.indices])
    return extract_attention_blocks(model, toks, layers=layers, extra_inputs={"pixel_values": px})


# ---------------------------------------------------------------- notebook 05: scores and tables

ROW_COLUMNS = ["model", "method", "test_set", "episode_id", "n_clusters", "n_points", "accuracy", "ari", "nmi",
               "well_formed"]


def score_image_rows(episodes: Sequence, predicted: Sequence, model: str, method: str, test_set: str) -> "pd.DataFrame":
    """One row per episode: accuracy, ARI, NMI. ``predicted``: label lists or Predictions (same order)."""
    import pandas as pd

    from .metrics import score

    rows = []
    for ep, p in zip(episodes, predicted):
        labels = getattr(p, "labels", p)
        rows.append({"model": model, "method": method, "test_set": test_set, "episode_id": ep.id,
                     "n_clusters": ep.n_clusters, "n_points": ep.n_points, **score(ep.labels, labels),
                     "well_formed": bool(getattr(p, "well_formed", True))})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def chance_image_rows(episodes: Sequence, test_set: str, seed: int = 0) -> "pd.DataFrame":
    """Chance level on image episodes: uniformly random labels in 0..c-1 (20 seeded draws per episode)."""
    import pandas as pd

    from .evaluate import chance_scores

    rows = [{"model": "chance", "method": "chance (random labels)", "test_set": test_set, "episode_id": ep.id,
             "n_clusters": ep.n_clusters, "n_points": ep.n_points, **chance_scores(ep, i, seed=seed), "well_formed": True}
            for i, ep in enumerate(episodes)]
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def kmeans_on_features(features: np.ndarray, episodes: Sequence, seed: int = 0) -> list[list[int]]:
    """k-means (the paper's baseline) on each episode's mean-pooled frozen image features."""
    from .baselines import cluster_points

    return [cluster_points("kmeans", features[ep.indices], ep.n_clusters, random_state=seed) for ep in episodes]


def table2(summary: "pd.DataFrame", paper: "pd.DataFrame | None" = None) -> "pd.DataFrame":
    """Table 2 layout: one row per method, one column per (test set, c), "mean ± se"; paper rows beside."""
    import pandas as pd

    from .metrics import fmt_mean_se

    s = summary.copy()
    s["column"] = s["test_set"] + ", c=" + s["n_clusters"].astype(int).astype(str)
    s["value"] = [fmt_mean_se(m, e) for m, e in zip(s["accuracy"], s["accuracy_se"])]
    wide = s.pivot_table(index="method", columns="column", values="value", aggfunc="first", sort=False)
    if paper is not None and len(paper):
        p = paper.copy()
        p["column"] = "(paper) " + p["dataset"] + ", c=" + p["n_clusters"].astype(int).astype(str)
        p["value"] = [fmt_mean_se(m, e) for m, e in zip(p["accuracy"], p["stderr"])]
        p["method"] = p["method"].replace({"kmeans": "k-means (frozen features)"})
        wide = wide.join(p.pivot_table(index="method", columns="column", values="value", aggfunc="first",
                                       sort=False), how="outer")
    return wide.reset_index()


def target_check(summary: "pd.DataFrame", test_set: str, cs: Sequence[int] = (4, 5),
                 baseline: str = "k-means (frozen features)") -> "pd.DataFrame":
    """Issue 5's target: does fine-tuned ICC beat k-means on the same frozen features at c=4 and c=5?

    One row per (ICC method, c): both means, the difference, its standard error (independent
    episodes' errors combined) and ``beats`` = difference > 0.
    """
    import pandas as pd

    s = summary[summary["test_set"] == test_set]
    rows = []
    for c in cs:
        base = s[(s["method"] == baseline) & (s["n_clusters"] == c)]
        for _, r in s[s["method"].str.startswith("ICC") & (s["n_clusters"] == c)].iterrows():
            if base.empty:
                continue
            b = base.iloc[0]
            diff = float(r["accuracy"] - b["accuracy"])
            se = float(np.hypot(r["accuracy_se"], b["accuracy_se"]))
            rows.append({"method": r["method"], "n_clusters": c, "icc": float(r["accuracy"]), "kmeans": float(b["accuracy"]),
                         "difference": diff, "difference_se": se, "beats": diff > 0})
    return pd.DataFrame(rows, columns=["method", "n_clusters", "icc", "kmeans", "difference", "difference_se", "beats"])


def check_vlm(vlm) -> str:
    """``vlm`` must be ``"embedded-llava"``, a hub id (e.g. the paper's) or a local LLaVA directory."""
    if not isinstance(vlm, str) or not vlm.strip():
        raise ValueError(f"vlm={vlm!r} is not allowed; use '{EMBEDDED_VLM}' (offline stand-in), "
                         f"'{PAPER_VLM}' (the paper's) or a local LLaVA model directory")
    return vlm


def findings(summary: "pd.DataFrame", check: "pd.DataFrame", episodes_seen: dict, seconds: float,
             stand_in: bool = True) -> str:
    """The notebook's closing paragraph, computed from the numbers (never typed in)."""
    from .metrics import fmt_mean_se

    lines = []
    s = summary[summary["test_set"] == "unseen classes"]
    for c in sorted(s["n_clusters"].unique()):
        cell = s[s["n_clusters"] == c].sort_values("accuracy", ascending=False)
        parts = [f"{r['method']} {fmt_mean_se(r['accuracy'], r['accuracy_se'])}" for _, r in cell.iterrows()]
        lines.append(f"- unseen classes, c={c}: " + "; ".join(parts))
    for _, r in check.iterrows():
        word = "beats" if r["beats"] else "does not beat"
        lines.append(f"- {r['method']} {word} k-means at c={r['n_clusters']}: {r['icc']:.3f} vs {r['kmeans']:.3f} "
                     f"(difference {r['difference']:+.3f} ± {r['difference_se']:.3f})")
    paper = ("The paper (Table 2, ImageNet, 7B model, full training) has every ICC size above k-means at c=4 and "
             "c=5 (e.g. Large 0.93 vs 0.79 at c=4, 0.85 vs 0.78 at c=5).")
    setting = (f"Ours: the offline stand-in (SmolLM2-135M + a tower trained on the training digits only), fine-tuned "
               f"on {episodes_seen} episodes per size on a CPU; the notebook ran {seconds / 60:.1f} minutes. "
               "Where our numbers differ from the paper's, the gap is between this stand-in and the paper's "
               "model and budget, not a measurement of the paper's claim.") if stand_in else \
        f"Fine-tuned on {episodes_seen} episodes per size; the notebook ran {seconds / 60:.1f} minutes."
    return "\n".join(lines + ["", paper, setting])
