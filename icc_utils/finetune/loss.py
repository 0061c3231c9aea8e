"""The training loss: next-token cross-entropy on the answer tokens only, with the LM head applied only there
(not over the whole vocabulary at every prompt position)."""
from __future__ import annotations

from .data import IGNORE_INDEX


def _base_model(model):
    """The transformers ``*ForCausalLM`` under PEFT / DDP / DeepSpeed wrappers."""
    while hasattr(model, "module"):  # DDP, DeepSpeed engine
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def next_token_logits(model, input_ids, attention_mask, keep, **inputs):
    """Float logits of the next token at the positions ``keep`` selects, with the LM head applied only there.

    ``keep`` is a (B, T-1) boolean mask: ``keep[b, t]`` asks for the prediction of token ``t + 1``. The model runs
    through its own ``forward`` with an empty ``logits_to_keep`` (its own LM head runs on no position; with
    ``logits_to_keep=1`` it would copy the transposed vocabulary matrix every step for a logit nobody uses); its
    final (normed) hidden states go through the LM head here.
    """
    import torch

    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device), use_cache=False, **inputs)
    hidden = out.hidden_states[-1][:, :-1]          # (B, T-1, H): position t predicts token t+1
    lm_head = _base_model(model).get_output_embeddings()
    return lm_head(hidden[keep].to(lm_head.weight.dtype)).float()


def answer_only_loss(model, input_ids, attention_mask, labels, num_items: int | None = None, **inputs):
    """Next-token cross-entropy on the answer tokens, with logits computed only there.

    The model runs through its own ``forward`` (so DDP / DeepSpeed hooks fire), via :func:`next_token_logits`
    at the positions whose *next* label is not -100. Returns the sum of token losses divided by ``num_items``
    (the number of answer tokens in the whole accumulated batch) or, if ``None``, by this batch's answer-token
    count: the same value as the standard shifted, masked loss. Further ``inputs`` (a multimodal model's
    ``pixel_values``) go to the model's forward.
    """
    import torch.nn.functional as F

    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = next_token_logits(model, input_ids, attention_mask, keep, **inputs)
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    denom = num_items if num_items is not None else keep.sum()
    return loss / denom
