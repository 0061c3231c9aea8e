"""The multimodal model (Sections 4.2 and 5): LLaVA models with average-pooled image tokens.

Two models behind one interface:

* the paper's ``llava-hf/llava-interleave-qwen-7b-hf`` (SigLIP tower, 27x27 = 729 tokens per
  image), loaded with transformers' Llava classes and its own image processor;
* the embedded stand-in (``"embedded-llava"``): transformers' ``LlavaForConditionalGeneration``
  assembled offline (:func:`build_embedded_llava`) from the embedded SmolLM2-135M-Instruct and
  the small tower of :mod:`icc_utils.vision.tower`.

Pooling (Table 7). Each image's feature grid (g x g) is average-pooled with kernel k, stride k,
no padding, giving ``(g // k)**2`` tokens per image. We pool **before** the projector, as the
upstream code does (the paper's text says after): the wrapper ``PooledProjector`` replaces the
model's ``multi_modal_projector``, so the standard LLaVA forward and ``generate`` see pooled
features, and the prompt carries exactly that many image tokens per image
(:func:`expand_image_placeholders`; transformers checks the count).

:class:`VisionICC` runs image ICC (greedy, batched, cached replies) and captions images;
:func:`image_attention_blocks` gives the attention between an episode's images (Figure 13).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..io import sha256_file, write_json
from ..prompts import IMAGE_PLACEHOLDER, image_messages, render_chat
from .images import ImageSet, images_hash
from .tower import pixel_values

if TYPE_CHECKING:
    import torch

    from ..attention import AttentionBlocks, EpisodeTokens
    from ..cache import ReplyCache


EMBEDDED_VLM = "embedded-llava"
PAPER_VLM = "llava-hf/llava-interleave-qwen-7b-hf"
#: The image token added to the embedded model's tokenizer (LLaVA's own name for it).
IMAGE_TOKEN = "<image>"
#: IC|TC's captioning request when the multimodal model itself is the captioner.
CAPTION_PROMPT = "Describe the main object in this image in one short sentence."


# ---------------------------------------------------------------- pooling

def pooled_grid(grid: int, kernel: int) -> int:
    """Side of the pooled grid: ``grid // kernel`` (stride = kernel, no padding)."""
    if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or not 1 <= kernel <= grid:
        raise ValueError(f"kernel={kernel!r} is out of range; it must be an integer in 1..{grid} "
                         f"(the image feature grid is {grid}x{grid})")
    return grid // int(kernel)


def pool_features(features: "torch.Tensor", kernel: int) -> "torch.Tensor":
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


def _pooled_projector_class() -> type:
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


def llava_core(model):
    """The ``LlavaModel`` inside a Llava model (through PEFT wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def set_pooling(model, kernel: int) -> None:
    """Pool image features with ``kernel`` before the projector (wraps it once; later calls change k)."""
    pooled_grid(feature_grid(model), kernel)
    core = llava_core(model)
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


def caption_prompt(tokenizer, n_tokens: int, prompt: str | None = None, answer: str | None = None) -> str:
    """A one-image captioning chat prompt (with ``answer``: prompt + answer), image tokens expanded."""
    msgs = [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{prompt or CAPTION_PROMPT}"}]
    return expand_image_placeholders(render_chat(tokenizer, msgs, answer), n_tokens)


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

    from ..models import load_model_and_tokenizer, resolve_local_model

    tower_dir, out_dir = Path(tower_dir), Path(out_dir)
    tower_id = json.loads((tower_dir / "tower_training.json").read_text())["data_sha256"]
    stamp = {"tower": str(tower_dir), "tower_data_sha256": tower_id,
             "tower_weights": sha256_file(tower_dir / "model.safetensors")[:16],
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


def load_vlm(path: str, adapter: str | None = None, kernel: int = 1, dtype: str = "float32") -> tuple:
    """Load a LLaVA model, tokenizer and image processor; pool with ``kernel``; apply a PEFT adapter.

    The pooling wrapper goes on before the adapter, so a trained projector saved in the adapter
    (``modules_to_save``) finds its place. Model in eval mode.
    """
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from ..models import ModelUnavailableError, resolve_dtype

    torch_dtype = getattr(torch, resolve_dtype(dtype))
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
        from ..models import LocalChatModel

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

    def predict(self, episodes: Sequence, imageset: ImageSet, constrained: bool = False,
                cache: "ReplyCache | None" = None, desc: str | None = None) -> list:
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

    def caption(self, imageset: ImageSet, indices: Sequence[int] | None = None, prompt: str = CAPTION_PROMPT,
                max_new_tokens: int = 32, cache: "ReplyCache | None" = None) -> list[str]:
        """One greedy caption per image (IC|TC's first stage, with this model as the captioner).

        Replies are cached per (model, prompt, image pixels); ``indices`` default to every image.
        """
        from ..cache import ReplyCache, cache_key

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
    files = [f for d in [Path(path)] + ([Path(adapter)] if adapter else []) if d.is_dir()
             for f in sorted(d.glob("*.safetensors"))]
    return hashlib.sha256("".join(sha256_file(f)[:16] for f in files).encode()).hexdigest()[:12]


def check_vlm(vlm: object) -> str:
    """``vlm`` must be ``"embedded-llava"``, a hub id (e.g. the paper's) or a local LLaVA directory."""
    if not isinstance(vlm, str) or not vlm.strip():
        raise ValueError(f"vlm={vlm!r} is not allowed; use '{EMBEDDED_VLM}' (offline stand-in), "
                         f"'{PAPER_VLM}' (the paper's) or a local LLaVA model directory")
    return vlm


# ---------------------------------------------------------------- attention between images (Figure 13)

def image_episode_tokens(tokenizer, episode, n_tokens: int, image_token_id: int) -> "EpisodeTokens":
    """An :class:`~icc_utils.attention.EpisodeTokens` whose segments are the images' token spans."""
    from ..attention import EpisodeTokens

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


def image_attention_blocks(model, tokenizer, processor, episode, imageset: ImageSet, kernel: int,
                           layers: str | Sequence[int] = "all") -> "AttentionBlocks":
    """``A^II`` between the images of one episode (each image's tokens are its segment)."""
    from ..attention import extract_attention_blocks

    toks = image_episode_tokens(tokenizer, episode, tokens_per_image(model, kernel),
                                llava_core(model).config.image_token_id)
    px = pixel_values(processor, imageset.images[episode.indices])
    return extract_attention_blocks(model, toks, layers=layers, extra_inputs={"pixel_values": px})
