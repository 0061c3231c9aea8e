"""Attention as a clustering signal (paper Section 3.2, Appendix B; PROTOCOL.md, "Attention").

What this module computes, for one episode and a causal LM with its own chat template:

* **Point segments.** Each data point is written as an inner list ``[x1, x2, ...]`` inside the
  prompt's data string (:func:`icc_utils.prompts.format_points`). We render the prompt, find
  the data string in it, parse the character span of every inner list (bracket to bracket,
  both included), and map tokens to points with the tokenizer's offset mapping (fast tokenizers
  only). No bracket token ids, no assumption of a BOS token.

  *Rule for tokens that straddle a boundary* (``'],'``, ``' ['``, ``' [-'``, ``'[['``): a token
  belongs to point ``i`` if its character span overlaps point ``i``'s span; a token that
  overlaps two points (only possible for merged tokens such as ``'], ['``) goes to the point it
  shares most characters with, ties to the earlier point. Tokens with an empty span (special
  tokens) belong to no point. Every point must own at least one token, otherwise we raise.
  So ``' [-'`` (space, bracket, minus) belongs to the point it opens, ``'],'`` to the point
  it closes, and the outer ``'[['`` to the first point.

* **Label tokens.** For ``A^OI`` and ``A^OO`` (eq. 3) the prompt is followed by an answer
  ``[l0, l1, ...]`` (rendered with the chat template as an assistant turn) and the forward pass
  runs over prompt + answer. Label ``i``'s token ``t_i`` is the one token whose offsets cover
  the label's digits; if a label is split over several tokens, or one token covers two labels,
  :class:`LabelTokenError` is raised (the paper's definition needs one token per label).
  The row used is the label token's own row (the paper's ``A_{t_i p}``).

* **Attention without holding it all.** :func:`extract_attention_blocks` runs one forward pass
  with the model's own (fast, e.g. SDPA) attention and a forward *pre-hook* on the attention
  module of each requested decoder layer. The hook recomputes that layer's attention
  probabilities ``softmax(Q K^T * scaling + causal mask)`` from the layer input: the module's
  own ``q_proj``/``k_proj`` (LoRA adapters included), optional ``q_norm``/``k_norm``, the rotary
  embedding the model passes to the layer (``position_embeddings``), and the grouped-query
  repeat of the keys. Only the query rows that belong to a point or a label are computed, and
  the ``H x R x T`` probabilities are immediately reduced to ``2m x 2m`` data-level blocks with
  one batched matrix product against a segment-indicator matrix; nothing bigger than one
  layer's probabilities ever exists. The forward pass stops right after the last requested
  layer (the LM head never runs). Scores are computed in float32. Verified equal to
  ``output_attentions=True`` with eager attention on Llama- and Qwen2-family models (tests).

* **Aggregation.** With ``P = [S D^-1 | L]`` (``S``: token-by-point indicator, ``D``: tokens per
  point, ``L``: one-hot label tokens), ``P^T A P`` holds ``A^II`` (eq. 2) top-left, ``A^OI``
  bottom-left and ``A^OO`` bottom-right (eq. 3) in one product.

* **Spectral clustering** (Appendix B.2): drop the diagonal, row-normalise, multiply each row
  by its number of non-zero entries, symmetrise, then
  ``SpectralClustering(affinity="precomputed", random_state=0)``. Dropping the diagonal (a
  point's attention to its own tokens) is not in the paper's text; the authors' code
  (``src/spectral_clustering.py``) uses only the strictly lower triangle, so we do the same by
  default (``exclude_diagonal=False`` keeps it).

Layer conventions: layers are indexed from 0; :func:`middle_layer` is ``(L-1)//2`` (15 for the
32-layer Llama-3.1-8B, the paper's Figure 3 layer); :func:`relative_depth_layer` maps the paper's
SC(l23) (layer 23 of 0..31) to ``round(23 * (L-1) / 31)`` (23 for L=32, 22 for SmolLM2's 30).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "LabelTokenError", "EpisodeTokens", "AttentionBlocks",
    "point_char_spans", "label_char_spans", "assign_tokens_to_points", "label_token_positions",
    "encode_episode", "decoder_layers", "num_layers", "middle_layer", "relative_depth_layer", "resolve_layers",
    "segment_matrix", "segment_runs", "aggregate_blocks", "aggregate_blocks_loop", "layer_attention", "extract_attention_blocks",
    "episode_attention", "drop_diagonal", "row_normalize", "scale_rows_by_nonzero", "symmetrize",
    "preprocess_affinity", "preprocessing_steps", "spectral_cluster_attention", "AttentionSpectralClustering",
    "order_by_cluster", "output_dir",
]

PAPER_SC_LAYER = 23
PAPER_N_LAYERS = 32


class LabelTokenError(ValueError):
    """A cluster label of the answer is not exactly one token (eq. 3 needs one token per label)."""


# ---------------------------------------------------------------- character spans

def point_char_spans(data: str, offset: int = 0) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of every inner list of a data string ``[[..], [..], ...]``.

    The string is parsed by bracket depth: an inner list runs from a ``[`` at depth 1 to its
    matching ``]`` (both included). ``offset`` is added to every span (the data string's position
    in the rendered prompt). Raises ``ValueError`` if the string is not a list of lists.
    """
    spans, depth, start = [], 0, None
    for i, ch in enumerate(data):
        if ch == "[":
            depth += 1
            if depth == 2:
                start = i
            elif depth > 2:
                raise ValueError(f"data string nests deeper than a list of lists at character {i}: {data[:60]!r}")
        elif ch == "]":
            if depth == 2:
                spans.append((offset + start, offset + i + 1))
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' at character {i} of the data string {data[:60]!r}")
    if depth != 0 or not data.lstrip().startswith("["):
        raise ValueError(f"the data string is not a list of lists: {data[:60]!r}")
    return spans


def label_char_spans(answer: str, offset: int = 0) -> list[tuple[int, int]]:
    """Character spans of the integers of an answer ``[0, 1, 0, ...]`` (plus ``offset``)."""
    return [(offset + m.start(), offset + m.end()) for m in re.finditer(r"-?\d+", answer)]


def _overlaps(token_spans: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """``overlap[t, i]`` = number of characters token ``t`` shares with span ``i`` (T x m)."""
    a, b = token_spans[:, :1], token_spans[:, 1:2]
    s, e = spans[None, :, 0], spans[None, :, 1]
    return np.clip(np.minimum(b, e) - np.maximum(a, s), 0, None)


def assign_tokens_to_points(offsets: Sequence[Sequence[int]], spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Point index of every token (``-1``: no point), by the overlap rule of the module docstring.

    ``offsets``: the tokenizer's ``(start, end)`` character offsets per token; ``spans``: the
    points' character spans. Raises ``ValueError`` if some point owns no token.
    """
    tok = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    ov = _overlaps(tok, sp)
    owner = np.where(ov.max(axis=1) > 0, ov.argmax(axis=1), -1)  # argmax: ties go to the earlier point
    counts = np.bincount(owner[owner >= 0], minlength=len(sp))
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"points {missing} own no token: the offsets do not cover their character spans "
                         "(is the tokenizer a fast tokenizer with offsets?)")
    return owner


def label_token_positions(offsets: Sequence[Sequence[int]], label_spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Token index of every label: the single token covering the label's characters.

    Raises :class:`LabelTokenError` if a label spans several tokens or shares a token with another label.
    """
    tok = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    sp = np.asarray(label_spans, dtype=np.int64).reshape(-1, 2)
    ov = _overlaps(tok, sp)
    out = []
    for i in range(len(sp)):
        hits = np.flatnonzero(ov[:, i] > 0)
        if len(hits) != 1 or ov[hits[0], i] != sp[i, 1] - sp[i, 0]:
            raise LabelTokenError(f"label {i} (characters {tuple(sp[i])}) is split over tokens {hits.tolist()}: "
                                  "A^OI/A^OO need each cluster label to be one token")
        if (ov[hits[0]] > 0).sum() != 1:
            raise LabelTokenError(f"token {hits[0]} covers label {i} and another label: "
                                  "A^OI/A^OO need one token per label")
        out.append(int(hits[0]))
    return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------- one episode's tokens

@dataclass
class EpisodeTokens:
    """A rendered episode: token ids, the point of every token and the label tokens."""

    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    point_of_token: np.ndarray  # (T,) point index or -1
    label_positions: np.ndarray | None  # (m,) token index of each label, or None (prompt only)
    n_points: int

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def point_tokens(self, i: int) -> np.ndarray:
        """Token indices of point ``i`` (contiguous)."""
        return np.flatnonzero(self.point_of_token == i)

    def segments(self) -> list[tuple[int, int]]:
        """``(s_i, e_i)`` first and last token index of every point (the paper's notation)."""
        return [(int(t[0]), int(t[-1])) for t in (self.point_tokens(i) for i in range(self.n_points))]


def encode_episode(tokenizer, points: Sequence[Sequence[float]], n_clusters: int | None,
                   labels: Sequence[int] | None = None) -> EpisodeTokens:
    """Render the paper's prompt with the tokenizer's chat template (plus the answer ``labels`` as the
    assistant turn, if given), tokenize it with offsets and locate points and labels.

    ``n_clusters=None`` gives the unknown-k prompt. Needs a fast tokenizer (offset mapping).
    """
    from .prompts import answer_text, build_messages, format_points, render_chat

    messages = build_messages(points, n_clusters)
    prompt = render_chat(tokenizer, messages)
    data = format_points(points)
    starts = [m.start() for m in re.finditer(re.escape(data), prompt)]
    if len(starts) != 1:
        raise ValueError(f"the data string occurs {len(starts)} times in the rendered prompt (expected once); "
                         "the chat template must keep the user's text verbatim")
    spans = point_char_spans(data, starts[0])
    if len(spans) != len(points):
        raise ValueError(f"parsed {len(spans)} inner lists from the data string, expected {len(points)}")
    text, lab_spans = prompt, None
    if labels is not None:
        answer = answer_text(labels)
        text = render_chat(tokenizer, messages, answer=answer)
        pos = text.find(answer, len(prompt))
        if not text.startswith(prompt) or pos < 0:
            raise ValueError("the chat template does not render prompt + answer as prompt followed by the answer")
        lab_spans = label_char_spans(answer, pos)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: offsets are needed")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(map(int, o)) for o in enc["offset_mapping"]]
    owner = assign_tokens_to_points(offsets, spans)
    lab_pos = label_token_positions(offsets, lab_spans) if lab_spans is not None else None
    return EpisodeTokens(text=text, input_ids=list(enc["input_ids"]), offsets=offsets, point_of_token=owner,
                         label_positions=lab_pos, n_points=len(points))


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


# ---------------------------------------------------------------- aggregation

def segment_matrix(point_of_token: np.ndarray, n_points: int, label_positions: np.ndarray | None = None,
                   n_tokens: int | None = None):
    """``P = [S D^-1 | L]`` (T x m or T x 2m, float32 torch tensor): column ``i`` averages the tokens of
    point ``i``; column ``m + i`` picks label ``i``'s token."""
    import torch

    owner = np.asarray(point_of_token)
    T = int(n_tokens if n_tokens is not None else len(owner))
    k = n_points * (2 if label_positions is not None else 1)
    P = torch.zeros((T, k), dtype=torch.float32)
    idx = np.flatnonzero(owner >= 0)
    sizes = np.bincount(owner[idx], minlength=n_points).astype(np.float32)
    P[torch.as_tensor(idx), torch.as_tensor(owner[idx])] = torch.as_tensor(1.0 / sizes[owner[idx]])
    if label_positions is not None:
        P[torch.as_tensor(np.asarray(label_positions)), torch.arange(n_points) + n_points] = 1.0
    return P


def segment_runs(P):
    """The segments of a segment matrix ``P`` (``(T, K)``) as contiguous row runs.

    Returns ``(starts, ends, weights)`` (each of length ``K``; column ``k`` is rows
    ``starts[k]:ends[k]``, all equal to ``weights[k]``), or ``None`` if some column's non-zeros are
    not one contiguous run of equal values (then only the dense product applies).
    """
    import torch

    Pn = P.detach().cpu().float().numpy() if P.dtype == torch.bfloat16 else P.detach().cpu().numpy()
    nz = Pn != 0
    counts = nz.sum(axis=0)
    if (counts == 0).any():
        return None
    starts = nz.argmax(axis=0)
    ends = starts + counts
    cols = np.arange(Pn.shape[1])
    weights = Pn[starts, cols]
    last = Pn.shape[0] - 1 - nz[::-1].argmax(axis=0)
    if not (last == ends - 1).all() or not ((Pn == weights) | ~nz).all():
        return None
    return torch.as_tensor(starts), torch.as_tensor(ends), torch.as_tensor(weights)


def _run_sums(x, starts, ends, dim: int):
    """Sums of ``x`` over the index runs ``starts[k]:ends[k]`` along ``dim`` (runs do not overlap).

    On the CPU, along the last axis: one ``numpy.add.reduceat`` over the run boundaries; along any
    other axis: one vectorised sum of whole slabs per run (K sums, each over all the other axes at
    once; single-index runs are one gather), which is several times faster than ``reduceat`` there.
    On an accelerator: one cumulative sum in float64 (differences of it are exact to ~1e-16 for
    attention probabilities) and two gathers.
    """
    import torch

    if x.device.type == "cpu":
        arr = x.detach()
        arr = (arr if arr.dtype in (torch.float32, torch.float64) else arr.float()).numpy()
        s, e = starts.cpu().numpy(), ends.cpu().numpy()
        axis = dim % arr.ndim
        if axis != arr.ndim - 1:
            shape = list(arr.shape)
            shape[axis] = len(s)
            out = np.empty(shape, dtype=arr.dtype)
            moved, target = np.moveaxis(arr, axis, 0), np.moveaxis(out, axis, 0)  # views
            single = e - s == 1
            target[single] = moved[s[single]]
            for k in np.flatnonzero(~single):
                np.sum(moved[s[k]:e[k]], axis=0, out=target[k])
            return torch.from_numpy(out)
        bounds = np.unique(np.concatenate([s, e]))
        bounds = bounds[bounds < arr.shape[dim]]
        sums = np.add.reduceat(arr, bounds, axis=dim)
        return torch.from_numpy(np.take(sums, np.searchsorted(bounds, s), axis=dim))
    c = torch.cumsum(x.to(torch.float64), dim=dim)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
    return c.index_select(dim, ends) - c.index_select(dim, starts)


def aggregate_blocks(attn, P_rows, P_cols=None):
    """Data-level blocks ``P_rows^T A P_cols`` for every head at once.

    ``attn``: ``(..., R, T)`` attention probabilities (rows may be a subset of the query tokens,
    matching ``P_rows``' rows); ``P_rows``: ``(R, K)``; ``P_cols``: ``(T, K)`` (defaults to ``P_rows``).
    Returns ``(..., K, K)`` in ``attn``'s dtype.

    The segment matrices define the product; because every segment (a point's tokens, a label's
    token) is a contiguous run of tokens, the product is evaluated as run sums along each axis
    (whole tensors at once, no loop over pairs), which needs ``O(R*T)`` work instead of ``O(R*T*K)``. Segment matrices that are not contiguous runs fall back to the dense
    matrix product.
    """
    import torch

    P_cols = P_rows if P_cols is None else P_cols
    runs_r = segment_runs(P_rows)
    runs_c = runs_r if P_cols is P_rows else segment_runs(P_cols)
    if runs_r is None or runs_c is None:
        return P_rows.transpose(0, 1).to(attn.dtype) @ attn @ P_cols.to(attn.dtype)
    (r0, r1, wr), (c0, c1, wc) = runs_r, runs_c
    # rows first: (..., R, T) -> (..., K, T) touches every row once; then the small (..., K, T) along columns
    sums = _run_sums(_run_sums(attn, r0, r1, dim=-2), c0, c1, dim=-1).to(attn.device)  # (..., K, K)
    scale = wr.to(sums.dtype).unsqueeze(1) * wc.to(sums.dtype).unsqueeze(0)
    return (sums * scale.to(sums.device)).to(attn.dtype)


def aggregate_blocks_loop(attn: np.ndarray, point_of_token: np.ndarray, n_points: int,
                          label_positions: np.ndarray | None = None) -> np.ndarray:
    """Reference implementation of eqs. 2-3 with explicit loops over point pairs (for tests and
    the benchmark). ``attn``: ``(T, T)``; returns ``(K, K)`` like :func:`aggregate_blocks`."""
    attn = np.asarray(attn)
    segs = [np.flatnonzero(point_of_token == i) for i in range(n_points)]
    K = n_points * (2 if label_positions is not None else 1)
    out = np.zeros((K, K), dtype=np.float64)
    for i in range(n_points):
        for j in range(n_points):
            out[i, j] = attn[np.ix_(segs[i], segs[j])].mean()
    if label_positions is not None:
        for i in range(n_points):
            for j in range(n_points):
                out[n_points + i, j] = attn[label_positions[i], segs[j]].mean()
                out[i, n_points + j] = attn[segs[i], label_positions[j]].mean()
                out[n_points + i, n_points + j] = attn[label_positions[i], label_positions[j]]
    return out


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


# ---------------------------------------------------------------- Appendix B.2 preprocessing

def drop_diagonal(A: np.ndarray) -> np.ndarray:
    """``A`` with a zero diagonal (a point's attention to its own tokens removed; authors' code)."""
    A = np.array(A, dtype=np.float64, copy=True)
    np.fill_diagonal(A, 0.0)
    return A


def row_normalize(A: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows summing to 0 stay 0)."""
    A = np.asarray(A, dtype=np.float64)
    s = A.sum(axis=1, keepdims=True)
    return np.divide(A, s, out=np.zeros_like(A), where=s > 0)


def scale_rows_by_nonzero(A: np.ndarray) -> np.ndarray:
    """Each row multiplied by its number of non-zero entries (undoes the causal mask's uneven row mass)."""
    A = np.asarray(A, dtype=np.float64)
    return A * np.count_nonzero(A, axis=1)[:, None]


def symmetrize(A: np.ndarray) -> np.ndarray:
    """``(A + A^T) / 2``."""
    A = np.asarray(A, dtype=np.float64)
    return (A + A.T) / 2.0


def preprocessing_steps(A_ii: np.ndarray, exclude_diagonal: bool = True) -> dict[str, np.ndarray]:
    """Every stage of the Appendix B.2 preprocessing, in order (Figure 11); the last is the affinity."""
    A = np.asarray(A_ii, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A_ii must be a square matrix, got shape {A.shape}")
    steps = {"A^II": A}
    if exclude_diagonal:
        A = drop_diagonal(A)
        steps["diagonal removed"] = A
    A = row_normalize(A)
    steps["row-normalised"] = A
    A = scale_rows_by_nonzero(A)
    steps["x non-zeros per row"] = A
    steps["symmetrised"] = symmetrize(A)
    return steps


def preprocess_affinity(A_ii: np.ndarray, exclude_diagonal: bool = True) -> np.ndarray:
    """The affinity matrix for spectral clustering (Appendix B.2)."""
    return preprocessing_steps(A_ii, exclude_diagonal)["symmetrised"]


def spectral_cluster_attention(A_ii: np.ndarray, n_clusters: int, random_state: int = 0,
                               exclude_diagonal: bool = True) -> np.ndarray:
    """Cluster labels from an ``A^II`` matrix: Appendix B.2 preprocessing, then
    ``sklearn.cluster.SpectralClustering(affinity="precomputed", random_state=random_state)``.

    k-means (in the embedding) runs single-threaded: on tiny matrices OpenMP start-up dominates,
    and one thread gives the same labels ~3x faster.
    """
    from sklearn.cluster import SpectralClustering
    from threadpoolctl import threadpool_limits

    W = preprocess_affinity(A_ii, exclude_diagonal)
    if W.shape[0] <= n_clusters:
        return np.arange(W.shape[0])
    with threadpool_limits(1):
        return SpectralClustering(n_clusters=n_clusters, affinity="precomputed",
                                  random_state=random_state).fit_predict(W)


# ---------------------------------------------------------------- estimator

_LOADED: dict = {}


def _load(name: str, adapter: str | None, dtype: str):
    from .models import load_model_and_tokenizer

    key = (name, adapter or None, dtype)
    if key not in _LOADED:
        _LOADED.clear()  # keep at most one model in memory
        _LOADED[key] = load_model_and_tokenizer(name, adapter=adapter or None, dtype=dtype)
    return _LOADED[key]


class AttentionSpectralClustering:
    """Scikit-learn style clustering by spectral clustering on a causal LM's attention.

    ``AttentionSpectralClustering(model="embedded", layer="middle", n_clusters=2).fit_predict(points)``
    writes ``points`` into the paper's prompt, reads ``A^II`` at ``layer`` (heads averaged) from one
    forward pass and clusters it (Appendix B.2).

    Parameters: ``model`` a model name or path (loaded once with
    :func:`icc_utils.models.load_model_and_tokenizer`) or a ``(model, tokenizer)`` pair; ``layer`` an
    int (negative counts from the end) or ``"middle"``; ``n_clusters``; ``head`` None (average over
    heads, the paper's choice) or one head's index; ``adapter`` (PEFT adapter directory, with a model
    name); ``dtype``; ``exclude_diagonal``; ``random_state``.
    Fitted attributes: ``labels_``, ``attention_`` (``A^II``), ``affinity_matrix_``, ``layer_``.
    """

    def __init__(self, model: Any = "embedded", layer: int | str = "middle", n_clusters: int = 2,
                 head: int | None = None, adapter: str | None = None, dtype: str = "float32",
                 exclude_diagonal: bool = True, random_state: int = 0):
        self.model = model
        self.layer = layer
        self.n_clusters = n_clusters
        self.head = head
        self.adapter = adapter
        self.dtype = dtype
        self.exclude_diagonal = exclude_diagonal
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("model", "layer", "n_clusters", "head", "adapter", "dtype",
                                               "exclude_diagonal", "random_state")}

    def set_params(self, **params) -> "AttentionSpectralClustering":
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"{k!r} is not a parameter of AttentionSpectralClustering")
            setattr(self, k, v)
        return self

    def _model_and_tokenizer(self):
        if isinstance(self.model, (tuple, list)) and len(self.model) == 2:
            return self.model
        if isinstance(self.model, str):
            return _load(self.model, self.adapter, self.dtype)
        raise ValueError(f"model={self.model!r} must be a model name/path or a (model, tokenizer) pair")

    def fit(self, X, y=None) -> "AttentionSpectralClustering":
        """Cluster the rows of ``X`` (n x d numbers; written with two decimals, as in the paper)."""
        if isinstance(self.n_clusters, bool) or not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ValueError(f"n_clusters={self.n_clusters!r} is out of range; it must be an integer >= 1")
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2 or len(X) < 1:
            raise ValueError(f"X must be a 2-d array of points (n x d), got shape {X.shape}")
        model, tok = self._model_and_tokenizer()
        (self.layer_,) = resolve_layers(self.layer, num_layers(model))
        tokens = encode_episode(tok, np.round(X, 2).tolist(), int(self.n_clusters))
        blocks = extract_attention_blocks(model, tokens, layers=[self.layer_],
                                          heads="mean" if self.head is None else "all")
        if self.head is None:
            self.attention_ = blocks.ii[0]
        else:
            n_heads = blocks.ii.shape[1]
            if isinstance(self.head, bool) or not isinstance(self.head, (int, np.integer)) or not 0 <= self.head < n_heads:
                raise ValueError(f"head={self.head!r} is out of range; the layer has {n_heads} heads (0..{n_heads - 1}) "
                                 "or use None for the average")
            self.attention_ = blocks.ii[0, int(self.head)]
        self.affinity_matrix_ = preprocess_affinity(self.attention_, self.exclude_diagonal)
        self.labels_ = spectral_cluster_attention(self.attention_, int(self.n_clusters), self.random_state,
                                                  self.exclude_diagonal)
        return self

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit and return ``labels_``."""
        return self.fit(X).labels_


# ---------------------------------------------------------------- helpers for the notebooks

def order_by_cluster(labels: Sequence[int]) -> np.ndarray:
    """Point order that groups points by true cluster (stable within a cluster)."""
    return np.argsort(np.asarray(labels), kind="stable")


def output_dir(profile: str, notebook: str, adapter: str | None = None) -> Path:
    """``results/<profile>/<notebook>/`` for the pretrained model, ``.../<notebook>/adapter-<name>/`` with an adapter
    (so notebook 04's rerun with its adapter does not overwrite the pretrained results)."""
    from . import results_dir

    if adapter:
        return results_dir(profile, notebook, f"adapter-{Path(str(adapter)).name}")
    return results_dir(profile, notebook)


# ---------------------------------------------------------------- notebook 02: answers and cluster contrast

ANSWER_MODES = ("generated", "constrained", "true")


def answers_for(backend, episodes: Sequence, mode: str = "generated", cache=None) -> list[tuple[list[int], str]]:
    """The answer labels to append for ``A^OI``/``A^OO``, one ``(labels, source)`` per episode.

    ``mode``: ``"generated"`` (the model's own greedy reply, as in the paper; a reply that is not a list
    of exactly n labels falls back to constrained decoding, and the source says so), ``"constrained"``
    (the reply under constrained decoding) or ``"true"`` (teacher forcing with the true labels).
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"mode={mode!r} is not allowed; choose one of {list(ANSWER_MODES)}")
    episodes = list(episodes)
    if mode == "true":
        return [(list(ep.labels), "true labels") for ep in episodes]
    out: list = [None] * len(episodes)
    todo = list(range(len(episodes)))
    if mode == "generated":
        preds = backend.predict(episodes, constrained=False, cache=cache)
        for i, p in enumerate(preds):
            if p.well_formed and len(p.labels) == episodes[i].n_points and min(p.labels) >= 0:
                out[i] = (list(p.labels), "generated (free greedy reply)")
        todo = [i for i in todo if out[i] is None]
    if todo:
        preds = backend.predict([episodes[i] for i in todo], constrained=True, cache=cache)
        src = "constrained decoding" if mode == "constrained" else \
            "constrained decoding (the free reply was not a list of n labels)"
        for i, p in zip(todo, preds):
            out[i] = (list(p.labels), src)
    return out


def cluster_contrast(M: np.ndarray, row_labels: Sequence[int], col_labels: Sequence[int] | None = None,
                     strictly_lower: bool = True) -> float:
    """Mean attention between same-cluster pairs / mean between different-cluster pairs (> 1: block structure).

    For ``A^II`` only the strictly lower triangle counts (``strictly_lower``); for ``A^OI``/``A^OO`` pass
    ``strictly_lower=False`` and the labels of rows and columns.
    """
    M = np.asarray(M, dtype=np.float64)
    r = np.asarray(row_labels)
    c = r if col_labels is None else np.asarray(col_labels)
    same = r[:, None] == c[None, :]
    keep = np.tril(np.ones_like(M, dtype=bool), -1) if strictly_lower else (M > 0)
    a, b = M[same & keep], M[~same & keep]
    return float(a.mean() / b.mean()) if a.size and b.size and b.mean() > 0 else float("nan")


def layer_profile(blocks: "AttentionBlocks", labels: Sequence[int], n_clusters: int,
                  exclude_diagonal: bool = True) -> "pd.DataFrame":
    """Per layer of one episode: cluster contrast of ``A^II``/``A^OI``/``A^OO`` and the accuracy of spectral
    clustering on ``A^II`` (heads averaged)."""
    import pandas as pd

    from .metrics import clustering_accuracy

    b = blocks.head_mean()
    lab = np.asarray(labels)
    rows = []
    for k, layer in enumerate(b.layers):
        row = {"layer": layer, "contrast_ii": cluster_contrast(b.ii[k], lab),
               "sc_accuracy": clustering_accuracy(lab, spectral_cluster_attention(b.ii[k], n_clusters,
                                                                                  exclude_diagonal=exclude_diagonal))}
        if b.oi is not None:
            row["contrast_oi"] = cluster_contrast(b.oi[k], lab, lab, strictly_lower=False)
            row["contrast_oo"] = cluster_contrast(np.tril(b.oo[k], -1), lab, lab, strictly_lower=True)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- notebook 03: SC per layer vs generation

def sc_layer_scores(model, tokenizer, episodes: Sequence, model_id: str, exclude_diagonal: bool = True,
                    random_state: int = 0, cache_path: str | Path | None = None, desc: str = "SC on attention"):
    """Spectral clustering on ``A^II`` of every layer for every episode: one row per (episode, layer).

    One forward pass per episode (prompt only, all layers, heads averaged). With ``cache_path`` every
    episode's rows are appended to a JSON Lines file as soon as they are computed, keyed by
    (``model_id``, episode id and seed, settings): a rerun or a resumed run recomputes nothing.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .io import append_jsonl, read_jsonl
    from .metrics import score

    settings = {"model": model_id, "exclude_diagonal": bool(exclude_diagonal), "random_state": int(random_state),
                "heads": "mean", "version": 1}
    done: dict[str, list] = {}
    if cache_path is not None:
        for rec in read_jsonl(cache_path):
            if rec.get("settings") == settings:
                done[rec["key"]] = rec["rows"]
    rows = []
    for ep in tqdm(list(episodes), desc=desc, leave=False):
        key = f"{ep.id}|{ep.seed}"
        if key not in done:
            toks = encode_episode(tokenizer, ep.points, ep.n_clusters)
            blocks = extract_attention_blocks(model, toks, layers="all")
            ep_rows = []
            for k, layer in enumerate(blocks.layers):
                pred = spectral_cluster_attention(blocks.ii[k], ep.n_clusters, random_state, exclude_diagonal)
                ep_rows.append({"layer": layer, **score(ep.labels, pred)})
            done[key] = ep_rows
            if cache_path is not None:
                append_jsonl(cache_path, {"key": key, "settings": settings, "rows": ep_rows})
        df = ep.params["df"]
        for r in done[key]:
            rows.append({"episode_id": ep.id, "distribution": ep.params["distribution"],
                         "df": np.inf if df is None else float(df), "n_clusters": ep.n_clusters, "dim": ep.dim,
                         "n_points": ep.n_points, "layer": r["layer"],
                         **{k: r[k] for k in sorted(r) if k != "layer"}})  # same columns fresh or from the cache
    return pd.DataFrame(rows)


def sc_summary(layer_rows, gen_rows, fixed_layer: int, model_name: str, extra_rows=None):
    """Table 6 rows per (dim, df): SC(opt) (the layer with the best mean accuracy in that cell),
    SC(l<fixed_layer>) and each generation method, mean and standard error over episodes.

    ``gen_rows``/``extra_rows``: per-episode rows of :func:`icc_utils.evaluate.evaluate` (``method``
    names the row, e.g. ``zero-shot`` -> ``Gen``). Columns: dim, df, model, method, layer, accuracy,
    accuracy_se, n.
    """
    import pandas as pd

    from .metrics import sem

    out = []
    per_layer = layer_rows.groupby(["dim", "df", "layer"])["accuracy"].agg(["mean", sem, "size"]).reset_index()
    for (dim, df), g in per_layer.groupby(["dim", "df"]):
        best = g.loc[g["mean"].idxmax()]  # ties: the lowest layer
        fixed = g[g["layer"] == fixed_layer].iloc[0]
        for method, r in (("SC(opt)", best), (f"SC(l{fixed_layer})", fixed)):
            out.append({"dim": dim, "df": df, "model": model_name, "method": method, "layer": int(r["layer"]),
                        "accuracy": float(r["mean"]), "accuracy_se": float(r["sem"]), "n": int(r["size"])})
    for frame in (gen_rows, extra_rows):
        if frame is None or not len(frame):
            continue
        for (dim, df, method), g in frame.groupby(["dim", "df", "method"]):
            name = {"zero-shot": "Gen", "zero-shot+constrained": "Gen+constrained"}.get(method, method)
            out.append({"dim": dim, "df": df, "model": model_name if name.startswith("Gen") else g["model"].iloc[0],
                        "method": name, "layer": -1, "accuracy": float(g["accuracy"].mean()),
                        "accuracy_se": sem(g["accuracy"]), "n": int(len(g))})
    return pd.DataFrame(out)


def table6(summary, paper):
    """Wide Table 6: one row per (dim, model, method), one column per df, "mean ± se"; the paper's rows
    for the same dims and df follow ours, marked ``(paper)``."""
    import pandas as pd

    from .metrics import fmt_mean_se

    s = summary.assign(value=[fmt_mean_se(a, b) for a, b in zip(summary["accuracy"], summary["accuracy_se"])])
    frames = [s[["dim", "df", "model", "method", "value"]]]
    if paper is not None and len(paper):
        p = paper[paper["dim"].isin(s["dim"].unique()) & paper["df"].isin(s["df"].unique())]
        p = p.assign(value=[fmt_mean_se(a, b) for a, b in zip(p["accuracy"], p["stderr"])],
                     model="(paper) " + p["model"])
        frames.append(p[["dim", "df", "model", "method", "value"]])
    long = pd.concat(frames, ignore_index=True)
    order = {k: i for i, k in enumerate(dict.fromkeys(zip(long["model"], long["method"])))}
    wide = long.pivot_table(index=["dim", "model", "method"], columns="df", values="value", aggfunc="first")
    wide.columns = [f"df={c:g}" for c in wide.columns]
    wide = wide.reset_index()
    wide["_o"] = [order[(a, b)] for a, b in zip(wide["model"], wide["method"])]
    return wide.sort_values(["dim", "_o"]).drop(columns="_o").reset_index(drop=True)


def compare_methods(rows, method: str, reference: str = "Gen"):
    """``method`` against ``reference`` over the (dim, df) cells both have, each cell weighted equally:
    ``(mean_method, mean_reference, mean_difference, se_of_difference, cells_where_method_higher, n_cells)``
    (cell standard errors combined), or ``None`` when they share no cell."""
    a = rows[rows["method"] == method].set_index(["dim", "df"])
    b = rows[rows["method"] == reference].set_index(["dim", "df"])
    cells = a.index.intersection(b.index)
    if not len(cells):
        return None
    diff = a.loc[cells, "accuracy"] - b.loc[cells, "accuracy"]
    se = float(np.sqrt((a.loc[cells, "accuracy_se"].fillna(0) ** 2 + b.loc[cells, "accuracy_se"].fillna(0) ** 2).sum())
               / len(cells)) if "accuracy_se" in a else float("nan")
    return (float(a.loc[cells, "accuracy"].mean()), float(b.loc[cells, "accuracy"].mean()), float(diff.mean()), se,
            int((diff > 0).sum()), len(cells))


def verdict_word(difference: float, se: float) -> str:
    """"beats" beyond two standard errors, "is worse than" below minus two, else "is indistinguishable from"."""
    if np.isnan(se):
        return "beats" if difference > 0 else "does not beat"
    return "beats" if difference > 2 * se else ("is worse than" if difference < -2 * se else "is indistinguishable from")


def sc_verdict(summary, paper, model_name: str, fixed_layer: int) -> str:
    """A plain statement, computed from the numbers, of whether spectral clustering on the model's attention
    beats its own generated labels (the paper's Appendix B.2 claim), next to the paper's numbers.

    Rule (:func:`compare_methods`, :func:`verdict_word`): over all (dim, df) cells with equal weight, the
    mean difference SC - Gen and its standard error; "beats" when the difference exceeds two standard
    errors. SC(opt) picks the best layer on the same episodes, so it is optimistic; SC(l<fixed>) is fixed.
    """
    lines = []
    for sc in ("SC(opt)", f"SC(l{fixed_layer})"):
        res = compare_methods(summary, sc)
        if res is None:
            continue
        m_sc, m_gen, d, se, wins, n = res
        lines.append(f"{model_name}: {sc} mean accuracy {m_sc:.3f} vs its own generation (Gen) {m_gen:.3f}: "
                     f"difference {d:+.3f} ± {se:.3f} (SC higher in {wins} of {n} cells), so spectral clustering on "
                     f"its attention {verdict_word(d, se)} its generated labels.")
    if paper is not None and len(paper):
        p = paper.rename(columns={"stderr": "accuracy_se"})
        cells = summary[["dim", "df"]].drop_duplicates()
        p = p.merge(cells, on=["dim", "df"])
        for name, g in p.groupby("model", sort=False):
            res = compare_methods(g, "SC(opt)")
            res23 = compare_methods(g, "SC(l23)")
            if res is None:
                continue
            lines.append(f"Paper, {name}, same cells: SC(opt) {res[0]:.3f} vs Gen {res[1]:.3f} "
                         f"(difference {res[2]:+.3f}, SC higher in {res[4]} of {res[5]} cells)"
                         + (f"; SC(l23) {res23[0]:.3f} (difference {res23[2]:+.3f})." if res23 else "."))
    return "\n".join(lines)


def sc_claim_report(summary, paper, model_name: str, fixed_layer: int, l_star: int, gen_rows,
                    n_clusters: int) -> str:
    """Notebook 03's verdict (markdown): does the paper's claim hold for this model?

    Judged on SC(l*) (layer chosen on validation episodes) and SC(l<fixed>) (fixed in advance): HOLDS when
    both beat Gen by :func:`verdict_word`'s rule, HOLDS PARTLY when one does, "only optimistically" when
    only SC(opt) (layer picked on the test episodes) does, otherwise DOES NOT HOLD. Also compares with
    constrained decoding and k-means when those rows exist.
    """
    lines = sc_verdict(summary, paper, model_name, fixed_layer).splitlines()
    m, _, d, se, wins, n = compare_methods(summary, "SC(l*)")
    w_star = verdict_word(d, se)
    lines.insert(2, f"{model_name}: SC(l*) (layer {l_star}, chosen on validation episodes) mean accuracy {m:.3f}: "
                    f"difference to Gen {d:+.3f} ± {se:.3f} (SC higher in {wins} of {n} cells), so spectral clustering "
                    f"on its attention {w_star} its generated labels.")
    w_fixed = verdict_word(*compare_methods(summary, f"SC(l{fixed_layer})")[2:4])
    w_opt = verdict_word(*compare_methods(summary, "SC(opt)")[2:4])
    if w_star == "beats" and w_fixed == "beats":
        claim = ("HOLDS: spectral clustering on the attention beats the model's own generated labels, with the layer "
                 "fixed in advance and with the layer chosen on validation episodes.")
    elif "beats" in (w_star, w_fixed):
        good, bad = (("the validation-chosen layer l*", f"the fixed layer {fixed_layer}") if w_star == "beats"
                     else (f"the fixed layer {fixed_layer}", "the validation-chosen layer l*"))
        claim = f"HOLDS PARTLY: spectral clustering on the attention beats the generated labels with {good} but not with {bad}."
    elif w_opt == "beats":
        claim = ("DOES NOT HOLD (only optimistically): SC beats the generated labels only when the layer is picked on "
                 "the test episodes themselves (SC(opt)); with a layer fixed in advance or chosen on validation "
                 "episodes it does not.")
    else:
        claim = ("DOES NOT HOLD: spectral clustering on the attention does not beat the model's own generated labels, "
                 "even at the best layer.")
    free = gen_rows[gen_rows["method"] == "zero-shot"]
    lines.append(f"Gen counts an unparseable reply as wrong (as in the paper); {free['well_formed'].mean():.0%} of the "
                 "free replies were a well-formed list of labels.")
    res_c = compare_methods(summary, "SC(l*)", "Gen+constrained")
    if res_c is not None:
        m_c, _, d_c, se_c, wins_c, n_c = res_c
        lines.append(f"Against constrained decoding (the reply forced to n labels in 0..c-1): SC(l*) {m_c:.3f}, "
                     f"difference {d_c:+.3f} ± {se_c:.3f} (SC higher in {wins_c} of {n_c} cells): SC "
                     f"{verdict_word(d_c, se_c)} Gen+constrained.")
    km = summary[summary["method"] == "kmeans"]["accuracy"]
    if len(km):
        lines.append(f"k-means on the same episodes: mean accuracy {km.mean():.3f} (chance for {n_clusters} clusters "
                     f"is at least {1 / n_clusters:.2f}).")
    return f"**For {model_name}, the paper's claim (Appendix B.2) {claim}**\n\n" + "\n\n".join(lines)


def attention_findings(profile, n_layers: int, model_name: str, layer: int) -> str:
    """Plain-language summary of :func:`layer_profile` for one episode, beside the paper's claims.

    "Block structure" in a matrix means a cluster contrast (same-cluster over different-cluster mean
    attention) above 1.2; "middle layers" are the middle third of the layers.
    """
    lo, hi = n_layers // 3, 2 * n_layers // 3
    mid = profile[(profile["layer"] >= lo) & (profile["layer"] < hi)]
    rest = profile[(profile["layer"] < lo) | (profile["layer"] >= hi)]
    best = profile.loc[profile["contrast_ii"].idxmax()]
    at = profile[profile["layer"] == layer].iloc[0]
    lines = [f"**{model_name}, this episode.** A^II cluster contrast (same-cluster / different-cluster mean attention; "
             f"1 = no structure): middle layers {lo}-{hi - 1} mean {mid['contrast_ii'].mean():.2f}, other layers "
             f"{rest['contrast_ii'].mean():.2f}; highest {best['contrast_ii']:.2f} at layer {int(best['layer'])}; "
             f"layer {layer}: {at['contrast_ii']:.2f}, spectral clustering accuracy {at['sc_accuracy']:.2f} "
             f"(best layer {profile['sc_accuracy'].max():.2f}, chance for 2 clusters is at least 0.5)."]
    if "contrast_oi" in profile:
        lines.append(f"Output blocks at layer {layer}: A^OI contrast {at['contrast_oi']:.2f}, A^OO contrast "
                     f"{at['contrast_oo']:.2f} (mean over layers {profile['contrast_oi'].mean():.2f} and "
                     f"{profile['contrast_oo'].mean():.2f}).")
    verdict = "shows" if mid["contrast_ii"].mean() > 1.2 else "does not show"
    lines.append(f"By our rule (contrast > 1.2) the head-averaged A^II in the middle layers {verdict} block structure "
                 "aligned with the clusters. **Paper (Llama-3.1-8B-Instruct):** block structure in A^II in most "
                 "middle layers, a vertical-slash pattern in the last layer, no clusters in A^OI/A^OO before "
                 "fine-tuning and clear clusters there after it.")
    return "\n\n".join(lines)
