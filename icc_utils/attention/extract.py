"""Per-layer attention of a causal LM, recomputed by hooks and reduced to data-level blocks.

:func:`extract_attention_blocks` runs one forward pass with the model's own (fast, e.g. SDPA)
attention and a forward *pre-hook* on the attention module of each requested decoder layer. The
hook recomputes that layer's probabilities ``softmax(Q K^T * scaling + causal mask)`` from the
layer input: the module's own ``q_proj``/``k_proj`` (LoRA adapters included), optional
``q_norm``/``k_norm``, the rotary embedding the model passes to the layer
(``position_embeddings``), and the grouped-query repeat of the keys. Only the query rows of
points and labels are computed, and the ``H x R x T`` probabilities are reduced at once to
``2m x 2m`` blocks (:func:`~icc_utils.attention.aggregate.aggregate_blocks`); nothing bigger than
one layer's probabilities exists. The pass stops after the last requested layer (the LM head
never runs). Scores are computed in float32; the tests check them against
``output_attentions=True`` with eager attention on Llama- and Qwen2-family models.

Layers are indexed from 0: :func:`middle_layer` is ``(L-1)//2`` (15 for the 32-layer
Llama-3.1-8B, the paper's Figure 3 layer); :func:`relative_depth_layer` maps the paper's SC(l23)
(layer 23 of 0..31) to ``round(23 * (L-1) / 31)`` (23 for L=32, 22 for SmolLM2's 30).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .aggregate import aggregate_blocks, segment_matrix
from .tokens import EpisodeTokens, encode_episode

__all__ = ["PAPER_SC_LAYER", "PAPER_N_LAYERS", "AttentionBlocks", "decoder_layers", "num_layers", "middle_layer",
           "relative_depth_layer", "resolve_layers", "layer_attention", "extract_attention_blocks",
           "episode_attention"]

PAPER_SC_LAYER = 23
PAPER_N_LAYERS = 32


# ---------------------------------------------------------------- layers

def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> list:
    """The language model's decoder layers (works for CausalLM, PEFT-wrapped and LLaVA-style models)."""
    base = _base(model)
    candidates = []
    if hasattr(base, "get_decoder"):
        try:
            candidates.append(base.get_decoder())
        except Exception:  # pragma: no cover - models without a decoder accessor
            pass
    candidates += [getattr(base, "model", None), getattr(getattr(base, "model", None), "language_model", None),
                   getattr(base, "language_model", None)]
    for c in candidates:
        layers = getattr(c, "layers", None)
        if layers is not None and len(layers) and hasattr(layers[0], "self_attn"):
            return list(layers)
    raise ValueError(f"cannot find the decoder layers of {type(base).__name__} (expected .layers[i].self_attn)")


def num_layers(model) -> int:
    """Number of decoder layers (from the model itself, never hard-coded)."""
    return len(decoder_layers(model))


def middle_layer(n_layers: int) -> int:
    """The middle layer ``(L-1)//2``: 15 of 0..31 (the paper's Figure 3 layer), 14 of SmolLM2's 0..29."""
    return (int(n_layers) - 1) // 2


def relative_depth_layer(n_layers: int, paper_layer: int = PAPER_SC_LAYER, paper_n_layers: int = PAPER_N_LAYERS) -> int:
    """The layer at the paper's relative depth: ``round(paper_layer * (L-1) / (paper_n_layers-1))``.

    Layer 23 of Llama-3.1-8B's 0..31 (SC(l23)) maps to 23 for L=32 and to 22 for L=30.
    """
    return int(round(paper_layer * (int(n_layers) - 1) / (paper_n_layers - 1)))


def resolve_layers(layers, n_layers: int, name: str = "layer") -> list[int]:
    """Layer indices from ``"all"``/``None`` (every layer), ``"middle"``, an int (negative counts from the
    end) or a list of those; sorted, unique. Raises ``ValueError`` naming the allowed range."""
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(n_layers))
    items = layers if isinstance(layers, (list, tuple, range, np.ndarray)) else [layers]
    out = set()
    for x in items:
        if isinstance(x, str):
            if x != "middle":
                raise ValueError(f"{name}={x!r} is not allowed; use an int in [-{n_layers}, {n_layers - 1}], 'middle' or 'all'")
            out.add(middle_layer(n_layers))
            continue
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not -n_layers <= int(x) < n_layers:
            raise ValueError(f"{name}={x!r} is out of range; the model has {n_layers} layers: "
                             f"use an int in [-{n_layers}, {n_layers - 1}], 'middle' or 'all'")
        out.add(int(x) % n_layers)
    return sorted(out)


# ---------------------------------------------------------------- per-layer attention from a hook

class _StopForward(Exception):
    """Raised by the last hook: the rest of the forward pass is not needed."""


def _rotary_fn(module):
    fn = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
    if fn is not None:
        return fn

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        import torch
        return torch.cat((-x2, x1), dim=-1)

    def apply(q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    return apply


def _attention_probs(module, hidden, position_embeddings, query_index=None):
    """One layer's attention probabilities ``(H, R, T)`` (float32) recomputed from the layer input.

    ``query_index``: the query rows to compute (all if None). Batch size must be 1.
    """
    import torch

    if position_embeddings is None:
        raise ValueError(f"{type(module).__name__} did not receive position_embeddings: only models that pass the "
                         "rotary embedding to their attention layers (Llama, Qwen2, Mistral, ...) are supported")
    if hidden.shape[0] != 1:
        raise ValueError("attention extraction runs one episode at a time (batch size 1)")
    T = hidden.shape[1]
    hd = module.head_dim
    q = module.q_proj(hidden).view(1, T, -1, hd)
    k = module.k_proj(hidden).view(1, T, -1, hd)
    if getattr(module, "q_norm", None) is not None:
        q = module.q_norm(q)
    if getattr(module, "k_norm", None) is not None:
        k = module.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = position_embeddings
    q, k = _rotary_fn(module)(q, k, cos, sin)
    q, k = q[0].float(), k[0].float()  # (H, T, d), (KV, T, d)
    n_rep = q.shape[0] // k.shape[0]
    if n_rep > 1:  # grouped-query attention: every key head serves n_rep query heads
        k = k.repeat_interleave(n_rep, dim=0)
    rows = torch.arange(T) if query_index is None else torch.as_tensor(query_index, dtype=torch.long)
    q = q[:, rows]
    scale = getattr(module, "scaling", hd ** -0.5)
    scores = (q @ k.transpose(1, 2)) * scale
    scores.masked_fill_(torch.arange(T)[None, :] > rows[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1)


def _run_with_hooks(model, input_ids, layers: Sequence[int], on_layer, query_index=None,
                    extra_inputs: dict | None = None) -> None:
    """One forward pass; for each layer in ``layers`` call ``on_layer(layer, probs)`` with that layer's
    probabilities ``(H, R, T)``; stops after the last requested layer. ``extra_inputs`` (a
    multimodal model's ``pixel_values``) go to the forward too."""
    import torch

    mods = decoder_layers(model)
    last = max(layers)
    handles = []

    def make_hook(idx):
        def hook(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            probs = _attention_probs(module, hidden, kwargs.get("position_embeddings"), query_index)
            on_layer(idx, probs)
            if idx == last:
                raise _StopForward
        return hook

    for idx in layers:
        handles.append(mods[idx].self_attn.register_forward_pre_hook(make_hook(idx), with_kwargs=True))
    device = next(model.parameters()).device
    ids = torch.as_tensor([list(input_ids)], dtype=torch.long, device=device)
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, **{k: v.to(device) for k, v in (extra_inputs or {}).items()})
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


def layer_attention(model, input_ids, layer: int):
    """Full attention probabilities ``(H, T, T)`` of one layer (float32), recomputed by the hook.

    For tests and small examples; the analyses use :func:`extract_attention_blocks`.
    """
    n = num_layers(model)
    (layer,) = resolve_layers(layer, n)
    box = {}
    _run_with_hooks(model, input_ids, [layer], lambda i, p: box.__setitem__(i, p.clone()))
    return box[layer]


@dataclass
class AttentionBlocks:
    """Data-level attention of one episode.

    ``ii``: ``A^II`` with shape ``(n_layers, m, m)`` (heads averaged) or ``(n_layers, H, m, m)``
    (``heads="all"``); ``oi``/``oo``: ``A^OI``/``A^OO`` of the same shape, or None when no answer
    was given. ``layers``: the model layer of each entry.
    """

    ii: np.ndarray
    oi: np.ndarray | None
    oo: np.ndarray | None
    layers: list[int]
    n_tokens: int
    segments: list[tuple[int, int]] = field(default_factory=list)
    label_positions: list[int] | None = None

    def index(self, layer: int) -> int:
        """Position of model layer ``layer`` in the arrays."""
        return self.layers.index(int(layer))

    def head_mean(self) -> "AttentionBlocks":
        """The same blocks averaged over heads (no-op if already averaged)."""
        if self.ii.ndim == 3:
            return self
        f = lambda a: None if a is None else a.mean(axis=1)  # noqa: E731
        return AttentionBlocks(f(self.ii), f(self.oi), f(self.oo), list(self.layers), self.n_tokens,
                               list(self.segments), self.label_positions)

    def block_matrix(self, layer: int) -> np.ndarray:
        """``[[A^II, 0], [A^OI, A^OO]]`` (2m x 2m, or H x 2m x 2m) at a model layer (eq. 1)."""
        k = self.index(layer)
        ii = self.ii[k]
        if self.oi is None:
            raise ValueError("no answer was given: only A^II is available")
        top = np.concatenate([ii, np.zeros_like(ii)], axis=-1)
        bottom = np.concatenate([self.oi[k], self.oo[k]], axis=-1)
        return np.concatenate([top, bottom], axis=-2)

    def save_npz(self, path: str | Path, **extra) -> Path:
        """Save the raw blocks (and ``extra`` arrays) as a compressed ``.npz``."""
        arrays = {"ii": self.ii, "layers": np.asarray(self.layers), "n_tokens": np.asarray(self.n_tokens),
                  "segments": np.asarray(self.segments, dtype=np.int64).reshape(-1, 2)}
        if self.oi is not None:
            arrays.update(oi=self.oi, oo=self.oo, label_positions=np.asarray(self.label_positions))
        arrays.update({k: np.asarray(v) for k, v in extra.items()})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return path


def extract_attention_blocks(model, tokens: EpisodeTokens, layers="all", heads: str = "mean",
                             extra_inputs: dict | None = None) -> AttentionBlocks:
    """``A^II`` (and ``A^OI``, ``A^OO`` when ``tokens`` has label positions) at the requested layers.

    One forward pass; per layer only the query rows of points and labels are recomputed and reduced
    at once to ``2m x 2m`` blocks (see the module docstring). ``heads``: ``"mean"`` (average over
    heads) or ``"all"`` (one block matrix per head). ``extra_inputs``: e.g. ``pixel_values`` when the
    segments are images (notebook 05, Figure 13).
    """
    import torch

    if heads not in ("mean", "all"):
        raise ValueError(f"heads={heads!r} is not allowed; choose one of ['mean', 'all']")
    n = num_layers(model)
    layers = resolve_layers(layers, n)
    m = tokens.n_points
    P = segment_matrix(tokens.point_of_token, m, tokens.label_positions, tokens.n_tokens)
    rows = np.flatnonzero(P.abs().sum(dim=1).numpy() > 0)  # only point and label tokens are query rows we need
    P_rows = P[torch.as_tensor(rows)]
    out: dict[int, np.ndarray] = {}

    def on_layer(idx, probs):
        blocks = aggregate_blocks(probs, P_rows.to(probs.device), P.to(probs.device))  # (H, K, K)
        if heads == "mean":
            blocks = blocks.mean(dim=0)
        out[idx] = blocks.cpu().numpy().astype(np.float32)

    _run_with_hooks(model, tokens.input_ids, layers, on_layer, query_index=rows, extra_inputs=extra_inputs)
    stacked = np.stack([out[i] for i in layers])
    ii = stacked[..., :m, :m]
    oi = oo = None
    if tokens.label_positions is not None:
        oi, oo = stacked[..., m:, :m], stacked[..., m:, m:]
    return AttentionBlocks(ii=np.ascontiguousarray(ii), oi=None if oi is None else np.ascontiguousarray(oi),
                           oo=None if oo is None else np.ascontiguousarray(oo), layers=layers,
                           n_tokens=tokens.n_tokens, segments=tokens.segments(),
                           label_positions=None if tokens.label_positions is None else tokens.label_positions.tolist())


def episode_attention(model, tokenizer, episode, layers="all", labels: Sequence[int] | None = None,
                      heads: str = "mean", known_k: bool = True) -> AttentionBlocks:
    """:func:`extract_attention_blocks` for an :class:`~icc_utils.data.Episode`; ``labels`` (e.g. the true
    labels or the model's own answer) add the answer for ``A^OI``/``A^OO``."""
    toks = encode_episode(tokenizer, episode.points, episode.n_clusters if known_k else None, labels)
    return extract_attention_blocks(model, toks, layers=layers, heads=heads)
