"""Models behind one interface: local transformers chat models, OpenAI-compatible chat APIs,
and classical baselines.

``get_backend(name)`` returns an object with ``name`` (what its rows and reply cache are called),
``kind``, ``available`` and ``predict(episodes, known_k=True, constrained=False, cache=None) ->
list[Prediction]``. Model names (:func:`model_kind`):

- ``embedded``, a hub id (``Qwen/Qwen2.5-0.5B-Instruct``) or a local model folder: a local
  transformers model (:class:`LocalChatModel`);
- ``gpt-4o`` and the other :data:`OPENAI_MODELS`, or ``openai:<served name>``: the server in
  ``OPENAI_BASE_URL`` (OpenAI itself when unset) with ``OPENAI_API_KEY``;
- ``served:<served name>@<base URL>``: a model served by an OpenAI-compatible server, e.g.
  ``served:HuggingFaceTB/SmolLM2-135M-Instruct@http://127.0.0.1:8000/v1`` (see
  :mod:`icc_utils.backends`). Its rows are named ``<short name>@<server>``, never like a local model;
- ``kmeans``, ``gmm``, ``agglomerative``, ``spectral``: classical baselines.

Local models use :func:`set_threads` torch threads (the physical cores unless ``threads`` or
``OMP_NUM_THREADS`` says otherwise) and batch-invariant attention by default
(:mod:`icc_utils.batch_invariance`): an episode gets the same reply whatever batch it runs in.

Which local models exist and how they load (names, the embedded model's conversion from its GGUF file,
dtype and threads) is :mod:`icc_utils.model_loading`; its names are re-exported here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from .backends import Prediction, parse_served  # noqa: F401  (Prediction: re-exported)
from .baselines import CLASSICAL_METHODS, cluster_points
from .parsing import is_well_formed, parse_labels
from .model_loading import (  # noqa: F401  (re-exported: the names and loading rules of local models)
    EMBEDDED_NAME, EMBEDDED_ALIASES, EMBEDDED_GGUF, PAPER_LOCAL_MODELS, OPENAI_MODELS, model_kind, display_name,
    embedded_gguf_path, embedded_model_dir, resolve_local_model, model_id, ModelUnavailableError, DTYPE_CHOICES,
    cpu_native_bf16, native_bf16, resolve_dtype, _torch_dtype, physical_cores, default_threads, set_threads,
    load_model_and_tokenizer)


# ---------------------------------------------------------------- classical backend

class ClassicalModel:
    """A classical baseline behind the same interface as the LLM backends."""

    kind = "classical"
    available = True
    unavailable_reason = ""

    def __init__(self, method: str, random_state: int = 0):
        if method not in CLASSICAL_METHODS:
            raise ValueError(f"method={method!r} is not allowed; choose one of {list(CLASSICAL_METHODS)}")
        self.method = method
        self.name = method
        self.random_state = random_state

    def predict(self, episodes: Sequence, known_k: bool = True, constrained: bool = False, cache=None,
                desc: str | None = None) -> list[Prediction]:
        """Cluster each episode with the true number of clusters (classical methods need k)."""
        out = []
        for ep in tqdm(episodes, desc=desc or self.name, leave=False):
            labels = cluster_points(self.method, ep.points, ep.n_clusters, self.random_state)
            out.append(Prediction(ep.id, labels))
        return out


def get_backend(name: str, **kwargs):
    """The backend for a model name (see :func:`model_kind`); ``kwargs`` go to its constructor."""
    kind = model_kind(name)
    if kind == "classical":
        return ClassicalModel(name, **kwargs)
    if kind == "openai":
        from .api import PLACEHOLDER_KEY, OpenAIChatModel
        served = parse_served(name)
        if served is not None:
            model, base_url = served
            key = (os.environ.get("ICC_SERVED_API_KEY") or "").strip() or PLACEHOLDER_KEY
            return OpenAIChatModel(model, base_url=base_url, api_key=key, **kwargs)
        return OpenAIChatModel(name[len("openai:"):] if name.startswith("openai:") else name, **kwargs)
    return LocalChatModel(name, **kwargs)


# ---------------------------------------------------------------- local transformers backend

#: Default weights dtype of local models when none is given: float32 runs everywhere (bf16 is emulated,
#: and much slower, on CPUs without AMX/AVX512-BF16). The profiles say ``auto`` instead
#: (:func:`resolve_dtype`): bfloat16 on a GPU or a CPU that runs it natively.
DEFAULT_LOCAL_DTYPE = "float32"
#: Tokens allowed beyond the canonical answer of an episode when max_new_tokens is automatic.
ANSWER_SLACK_TOKENS = 16


def _file_fingerprint(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class LocalChatModel:
    """A local transformers chat model (the embedded SmolLM2 by default, any hub id or directory).

    Greedy decoding is set explicitly (a fresh ``GenerationConfig``; the hub generation config's
    sampling settings are never inherited), prompts are rendered with the model's own chat
    template, generation is batched with left padding after sorting prompts by length, and
    every reply goes to the :class:`~icc_utils.cache.ReplyCache` as soon as its batch finishes.

    ``batch_invariant=True`` (default) runs attention row by row on each row's own unpadded tokens
    (:mod:`icc_utils.batch_invariance`), so an episode's reply does not depend on the episodes
    batched with it or on ``batch_size``; ``False`` keeps the model's own attention (faster in
    float32 on some machines, and the reply cache keys of earlier runs). ``threads``: torch threads
    (:func:`set_threads`; None: ``OMP_NUM_THREADS`` or the physical cores).

    ``max_new_tokens=None`` (automatic) gives each batch enough tokens for the canonical answer
    ``[0, 1, ...]`` of its longest episode (measured with the tokenizer, widest labels) plus
    :data:`ANSWER_SLACK_TOKENS`. ``constrained=True`` forces the reply to be exactly ``n`` labels
    in ``0..c-1`` (see :mod:`icc_utils.decoding`). ``answer_format="indexed"`` is a labelled ablation
    (numbered points, ``index: label`` answers; see :mod:`icc_utils.prompts`): prompts, the answer
    budget and the parsing follow it; constrained decoding knows only the paper's format.
    """

    kind = "local"
    available = True
    unavailable_reason = ""

    def __init__(self, name: str = "embedded", adapter: str | None = None, dtype: str = DEFAULT_LOCAL_DTYPE,
                 batch_size: int = 8, max_new_tokens: int | None = None, device: str | None = None,
                 answer_format: str = "paper", batch_invariant: bool = True, threads: int | None = None):
        from .prompts import check_answer_format

        dtype = resolve_dtype(dtype)   # the model id (and so the reply cache) names the real dtype
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is out of range; it must be an integer >= 1")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                           or max_new_tokens < 1):
            raise ValueError(f"max_new_tokens={max_new_tokens!r} is out of range; it must be None (automatic) "
                             "or an integer >= 1")
        self.source = name
        self.adapter = str(Path(adapter).expanduser().resolve()) if adapter else None
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.answer_format = check_answer_format(answer_format)
        if not isinstance(batch_invariant, bool):
            raise ValueError(f"batch_invariant={batch_invariant!r} is not allowed; it must be True or False")
        self.batch_invariant = batch_invariant
        self.threads = default_threads(threads)[0] if threads is not None else None
        self.name = display_name(name) + (f"+{Path(self.adapter).name}" if self.adapter else "")
        self.model_id = self._make_model_id()
        self._model = None
        self._tok = None
        self._eos_ids: list[int] = []
        self._pad_id: int | None = None
        self._budget_memo: dict = {}

    # ------------------------------------------------------------ identity and loading

    def _make_model_id(self) -> str:
        if self.source in EMBEDDED_ALIASES:
            base = EMBEDDED_NAME
        elif Path(self.source).expanduser().is_dir():   # by content, not by where the checkout is
            folder = Path(self.source).expanduser()
            config = folder / "config.json"
            size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            base = f"{folder.name}@{_file_fingerprint(config) if config.exists() else 'no-config'}-{size}"
        else:
            base = self.source
        if self.adapter:
            weights = [p for p in (Path(self.adapter) / "adapter_model.safetensors",
                                   Path(self.adapter) / "adapter_model.bin") if p.exists()]
            fp = _file_fingerprint(weights[0]) if weights else "missing"
            base += f"+adapter:{Path(self.adapter).name}@{fp}"
        return f"{base}|{self.dtype}"

    @classmethod
    def from_loaded(cls, model, tokenizer, name: str, batch_size: int = 8,
                    answer_format: str = "paper") -> "LocalChatModel":
        """Wrap a model already in memory (e.g. one being fine-tuned) for greedy prediction.

        ``name`` identifies it in cache keys; do not share a reply cache between different weights.
        The tokenizer is copied, so the caller's padding side is left alone.
        """
        import copy

        obj = cls("embedded", batch_size=batch_size, answer_format=answer_format)
        obj.source, obj.name, obj.model_id = name, name, f"{name}|in-memory"
        obj._attach(model, copy.deepcopy(tokenizer))
        return obj

    def load(self):
        """Load (once) and return ``(model, tokenizer)``; the tokenizer pads on the left."""
        if self._model is None:
            model, tok = load_model_and_tokenizer(self.source, adapter=self.adapter, dtype=self.dtype,
                                                  device=self.device, threads=self.threads)
            self._attach(model, self._tok or tok)
        return self._model, self._tok

    @staticmethod
    def _left_padding(tok):
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return tok

    def _attach(self, model, tok) -> None:
        """Use ``model``/``tok``: left padding, explicit greedy generation settings."""
        from transformers import GenerationConfig

        self._left_padding(tok)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hub_eos = getattr(base.generation_config, "eos_token_id", None)
        hub_eos = hub_eos if isinstance(hub_eos, (list, tuple)) else [hub_eos]
        eos = [tok.eos_token_id] + [e for e in hub_eos if e is not None]
        self._eos_ids = list(dict.fromkeys(int(e) for e in eos if e is not None))
        self._pad_id = int(tok.pad_token_id)
        # Forget the hub's generation settings (sampling, repetition penalty, ...): generate()
        # fills every unset field from model.generation_config, so it must hold only ids.
        base.generation_config = GenerationConfig(bos_token_id=getattr(tok, "bos_token_id", None),
                                                  eos_token_id=self._eos_ids, pad_token_id=self._pad_id)
        self._model, self._tok = model, tok

    @property
    def tokenizer(self):
        """The tokenizer (pads on the left), loaded without the weights: rendering prompts and
        looking up cached replies never load the model."""
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = self._left_padding(AutoTokenizer.from_pretrained(resolve_local_model(self.source)))
        return self._tok

    @property
    def model(self):
        return self.load()[0]

    def render(self, episode, known_k: bool = True) -> str:
        """The episode's prompt rendered with the model's chat template (ends with the assistant header)."""
        from .prompts import episode_messages, render_chat

        return render_chat(self.tokenizer, episode_messages(episode, known_k, self.answer_format))

    # ------------------------------------------------------------ decoding settings

    def generation_config(self, max_new_tokens: int):
        """A fresh, fully explicit greedy ``GenerationConfig`` (nothing inherited from the hub)."""
        from transformers import GenerationConfig

        self.load()
        return GenerationConfig(
            do_sample=False, num_beams=1, max_new_tokens=int(max_new_tokens), min_new_tokens=None, min_length=0,
            temperature=1.0, top_p=1.0, top_k=50, typical_p=1.0, repetition_penalty=1.0,
            encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0, bad_words_ids=None,
            suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None, forced_eos_token_id=None,
            num_return_sequences=1, use_cache=True, pad_token_id=self._pad_id, eos_token_id=self._eos_ids,
            bos_token_id=getattr(self._tok, "bos_token_id", None))

    def decoding_settings(self, constrained: bool = False) -> dict:
        """What the cache key records about decoding."""
        policy = self.max_new_tokens if self.max_new_tokens is not None else f"answer_tokens+{ANSWER_SLACK_TOKENS}"
        d = {"greedy": True, "constrained": bool(constrained), "max_new_tokens": policy, "dtype": self.dtype}
        if self.batch_invariant:   # other arithmetic, other replies: never mixed with the model's own attention
            d["attention"] = "row-sdpa"
        if constrained:
            d["constraint"] = "n labels in 0..c-1 as [l0, l1, ...]; unknown k: 0..min(n,10)-1"
        if self.answer_format != "paper":   # the paper's format leaves the keys as they always were
            d["answer_format"] = self.answer_format
        return d

    def answer_budget(self, n_points: int, n_clusters: int | None = None, constrained: bool = False) -> int:
        """New tokens allowed for one episode: its widest canonical answer's tokens + slack."""
        from .decoding import longest_answer_chars, max_label
        from .prompts import answer_text

        key = (int(n_points), n_clusters, bool(constrained))
        if key not in self._budget_memo:
            tok = self.tokenizer
            top = max_label(n_points, n_clusters)
            widest = [top] * int(n_points)
            cycling = [i % (top + 1) for i in range(int(n_points))]
            n_tok = max(len(tok(answer_text(labels, self.answer_format), add_special_tokens=False).input_ids)
                        for labels in (widest, cycling))
            budget = n_tok + ANSWER_SLACK_TOKENS
            if constrained:  # every allowed token has >= 1 character: this always completes the answer
                budget = max(budget, longest_answer_chars(n_points, n_clusters) + 1)
            self._budget_memo[key] = budget
        return self._budget_memo[key]

    def max_new_tokens_for(self, n_points=None, n_clusters=None, constrained: bool = False) -> int:
        """``max_new_tokens`` for one batch (fixed, or automatic from the rows' episode sizes)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if n_points is None:
            raise ValueError("max_new_tokens is automatic (None): pass n_points (one per prompt), "
                             "or construct LocalChatModel(max_new_tokens=...)")
        cs = list(n_clusters) if n_clusters is not None else [None] * len(n_points)
        return max(self.answer_budget(n, c, constrained) for n, c in zip(n_points, cs))

    # ------------------------------------------------------------ generation

    def plan_batches(self, prompts: Sequence[str]) -> list[list[int]]:
        """Indices of ``prompts`` grouped in batches of similar length (longest first)."""
        tok = self.tokenizer
        lengths = [len(ids) for ids in tok(list(prompts), add_special_tokens=False).input_ids] if prompts else []
        order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def generate_batch(self, prompts: Sequence[str], n_points=None, n_clusters=None,
                       constrained: bool = False, extra_inputs: dict | None = None,
                       on_row_done=None) -> list[dict]:
        """Generate for one batch of rendered prompts; returns ``{"reply", "usage"}`` per prompt.

        ``extra_inputs`` go to ``model.generate`` too (a multimodal model's ``pixel_values``).
        ``on_row_done(n)`` is called as rows finish (end of turn or their own token budget), so a
        progress bar moves per episode rather than per batch; the calls add up to ``len(prompts)``.
        """
        import torch
        from transformers import LogitsProcessorList

        from .batch_invariance import batch_invariant

        model, tok = self.load()
        if constrained and n_points is None:
            raise ValueError("constrained decoding needs n_points (one per prompt)")
        if constrained and self.answer_format != "paper":
            raise ValueError(f"constrained decoding writes the paper's answer format only; this model has "
                             f"answer_format={self.answer_format!r}")
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        max_new = self.max_new_tokens_for(n_points, n_clusters, constrained)
        processors = LogitsProcessorList()
        if constrained:
            from .decoding import AnswerConstraintProcessor
            processors.append(AnswerConstraintProcessor(tok, n_points, n_clusters, self._eos_ids))
        eos = set(self._eos_ids)
        # Each row keeps only its own budget: a short episode batched with a long one gets the
        # reply it would get alone (greedy decoding is causal, attention is row by row), so replies
        # do not depend on which episodes share a batch.
        if n_points is not None:
            cs = list(n_clusters) if n_clusters is not None else [None] * len(n_points)
            budgets = [self.max_new_tokens_for([n], [c], constrained) for n, c in zip(n_points, cs)]
        else:
            budgets = [max_new] * len(prompts)
        progress = _row_progress(budgets, eos, on_row_done) if on_row_done is not None else None
        with torch.inference_mode(), batch_invariant(model, self.batch_invariant):
            extra = {k: v.to(device) if hasattr(v, "to") else v for k, v in (extra_inputs or {}).items()}
            out = model.generate(**enc, **extra, generation_config=self.generation_config(max_new),
                                 logits_processor=processors, streamer=progress)
        if progress is not None:
            progress.finish()
        prompt_len = enc["input_ids"].shape[1]
        results = []
        for row, ids in enumerate(out[:, prompt_len:].tolist()):
            ids = ids[:budgets[row]]
            end = next((i for i, t in enumerate(ids) if t in eos), None)
            completion = ids if end is None else ids[:end]
            reply = tok.decode(completion, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            results.append({"reply": reply,
                            "usage": {"prompt_tokens": int(enc["attention_mask"][row].sum()),
                                      "completion_tokens": len(ids) if end is None else end + 1}})
        return results

    def generate(self, prompts: Sequence[str], n_points: Sequence[int] | None = None,
                 n_clusters: Sequence[int | None] | None = None, constrained: bool = False) -> list[str]:
        """Greedy replies to already-rendered chat prompts, in the input order.

        ``n_points`` (and ``n_clusters``, None entries for unknown k) give each prompt's episode
        size: they set the automatic ``max_new_tokens`` and, with ``constrained=True``, the
        answer each row is forced into.
        """
        prompts = list(prompts)
        replies: list[str | None] = [None] * len(prompts)
        for batch in self.plan_batches(prompts):
            ns = [n_points[i] for i in batch] if n_points is not None else None
            cs = [n_clusters[i] for i in batch] if n_clusters is not None else None
            for i, res in zip(batch, self.generate_batch([prompts[i] for i in batch], ns, cs, constrained)):
                replies[i] = res["reply"]
        return replies

    def generate_cached(self, prompts: Sequence[str], keys: Sequence[str], cache, max_new_tokens: int,
                        record: dict | None = None, batch_inputs=None) -> list[str]:
        """Greedy replies of at most ``max_new_tokens`` through ``cache`` (one key per prompt).

        Uncached keys (deduplicated) are generated in length-sorted batches with ``max_new_tokens``
        set for the duration of the call (the model's own setting is restored afterwards); each
        batch's replies are stored at once as ``{"reply", "usage", **record}``.
        ``batch_inputs(indices)`` gives extra ``generate`` inputs for a batch (e.g. pixels).
        """
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key not in cache and key not in seen:
                seen.add(key)
                todo.append(i)
        if todo:
            saved = self.max_new_tokens
            self.max_new_tokens = int(max_new_tokens)
            try:
                for group in self.plan_batches([prompts[i] for i in todo]):
                    idx = [todo[j] for j in group]
                    results = self.generate_batch([prompts[i] for i in idx],
                                                  extra_inputs=batch_inputs(idx) if batch_inputs else None)
                    for i, res in zip(idx, results):
                        cache.put(keys[i], {"reply": res["reply"], "usage": res.get("usage", {}), **(record or {})})
            finally:
                self.max_new_tokens = saved
        return [cache.get(key)["reply"] for key in keys]

    def predict(self, episodes: Sequence, known_k: bool = True, constrained: bool = False, cache=None,
                desc: str | None = None) -> list[Prediction]:
        """Predict every episode; cached replies are reused and new ones cached batch by batch."""
        episodes = list(episodes)
        return self.predict_prompts(episodes, [self.render(ep, known_k) for ep in episodes],
                                    [ep.n_clusters if known_k else None for ep in episodes], constrained, cache, desc)

    def predict_prompts(self, episodes: Sequence, prompts: Sequence[str], n_clusters: Sequence[int | None],
                        constrained: bool = False, cache=None, desc: str | None = None,
                        key_salts: Sequence[str] | None = None, batch_inputs=None) -> list[Prediction]:
        """Predict already-rendered prompts (one per episode) through the reply cache.

        ``key_salts`` (one string per prompt, e.g. a hash of the episode's images) join the cache
        key; ``batch_inputs(indices)`` returns extra ``generate`` inputs for a batch of episodes
        (a multimodal model's ``pixel_values``, in the order of the image tokens).
        """
        from .cache import ReplyCache, cache_key

        cache = cache if cache is not None else ReplyCache(None)
        decoding = self.decoding_settings(constrained)
        salts = list(key_salts) if key_salts is not None else [None] * len(prompts)
        keys = [cache_key("local", self.model_id, p if s is None else [p, s], decoding) for p, s in zip(prompts, salts)]
        was_cached = [k in cache for k in keys]
        todo, seen = [], set()
        for i, k in enumerate(keys):
            if not was_cached[i] and k not in seen:
                seen.add(k)
                todo.append(i)
        cs = list(n_clusters)
        with tqdm(total=len(episodes), initial=len(episodes) - len(todo), desc=desc or self.name, leave=False) as bar:
            for batch in self.plan_batches([prompts[i] for i in todo]):
                idx = [todo[j] for j in batch]
                results = self.generate_batch([prompts[i] for i in idx], [episodes[i].n_points for i in idx],
                                              [cs[i] for i in idx], constrained,
                                              extra_inputs=batch_inputs(idx) if batch_inputs else None,
                                              on_row_done=bar.update)
                for i, res in zip(idx, results):
                    cache.put(keys[i], {"reply": res["reply"], "episode_id": episodes[i].id,
                                        "model": self.model_id, "usage": res["usage"]})
        out = []
        for i, ep in enumerate(episodes):
            rec = cache.get(keys[i])
            reply = rec["reply"]
            usage = rec.get("usage") or {}
            fmt = self.answer_format
            out.append(Prediction(ep.id, parse_labels(reply, ep.n_points, fmt), reply=reply,
                                  well_formed=is_well_formed(reply, ep.n_points, cs[i], fmt), cached=was_cached[i],
                                  usage={"prompt_tokens": usage.get("prompt_tokens", 0),
                                         "completion_tokens": usage.get("completion_tokens", 0)}))
        return out


def _row_progress(budgets: Sequence[int], eos: set, on_row_done):
    """A transformers streamer that calls ``on_row_done(1)`` when a row of the batch writes an end
    token or reaches its budget; ``finish()`` reports the rows still open when generation stops."""
    from transformers.generation.streamers import BaseStreamer

    class RowProgress(BaseStreamer):
        def __init__(self):
            self.steps = -1           # the first put() is the prompt
            self.open = set(range(len(budgets)))

        def put(self, value):
            self.steps += 1
            if self.steps == 0:
                return
            tokens = value.reshape(-1).tolist()
            done = [r for r in self.open if tokens[r] in eos or self.steps >= budgets[r]]
            if done:
                self.open.difference_update(done)
                on_row_done(len(done))

        def end(self):
            pass

        def finish(self):
            if self.open:
                on_row_done(len(self.open))
                self.open.clear()

    return RowProgress()
