"""IC|TC, the text-criterion image clustering baseline (Kwon et al., "Image Clustering
Conditioned on Text Criteria", ICLR 2024), used by the paper in Tables 2 and 3.

IC|TC clusters images through text: a captioner describes each image (built elsewhere; this
module takes the captions), then a chat LLM

1. labels each caption by the condition (:func:`label_captions`),
2. merges the distinct raw labels into exactly ``c`` category names (:func:`merge_labels`),
3. assigns each caption to one of the names (:func:`assign_captions`).

Every stage is a pure function of the captions and a :data:`ChatFn` (a batch of chat message
lists and a token cap -> one reply each, greedy), so any backend works: :func:`local_chat_fn`
wraps a :class:`~icc_utils.models.LocalChatModel`, :func:`openai_chat_fn` an
:class:`~icc_utils.api.OpenAIChatModel`; both go through the :class:`~icc_utils.cache.ReplyCache`.

The result is always a valid clustering: every caption gets a cluster in ``0..c-1`` and there
are always exactly ``c`` distinct names, whatever the model answers (see the fallback rules in
:func:`merge_labels` and :func:`assign_index`).
"""
from __future__ import annotations

import difflib
import re
from collections import Counter
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from ..cache import ReplyCache, cache_key
from ..prompts import render_chat

if TYPE_CHECKING:  # imported lazily: this module never needs torch itself
    from ..api import OpenAIChatModel
    from ..models import LocalChatModel

#: A chat backend: (a batch of chat message lists, max new tokens) -> one greedy reply per list.
ChatFn = Callable[[list[list[dict]], int], list[str]]

# ---------------------------------------------------------------- prompts

ICTC_SYSTEM_PROMPT = "You are a helpful assistant."
#: Stage 1 (one request per caption).
LABEL_PROMPT = ('Image description: "{caption}"\n'
                "What is the {condition} of the main subject in this image description? "
                "Answer with one to three words.")
#: Stage 2 (one request per image set): ``{labels}`` holds one ``- label (count)`` line per distinct raw label.
MERGE_PROMPT = ("Here are {condition} labels of a set of images, each with the number of images that got it:\n"
                "{labels}\n"
                "Group these labels into exactly {n_clusters} {condition} categories, merging similar labels. "
                "Output only the {n_clusters} category names as a comma-separated list.")
#: Stage 3 (one request per caption): ``{names}`` is the comma-separated list of category names.
ASSIGN_PROMPT = ('Image description: "{caption}"\n'
                 "Which of these {condition} categories fits the {condition} of the main subject in this image "
                 "description: {names}? Answer with exactly one category name from the list.")

#: Token caps (greedy decoding).
LABEL_MAX_TOKENS = 12
ASSIGN_MAX_TOKENS = 12
MERGE_BASE_TOKENS = 16
MERGE_TOKENS_PER_NAME = 8
#: The label of a caption whose reply is empty after normalisation.
UNKNOWN_LABEL = "unknown"
#: Names the merge fallback invents when there are too few raw labels: ``cluster 0``, ``cluster 1``, ...
FILLER_NAME = "cluster {k}"
#: An item of the merge reply with more words than this is prose ("here are the categories"), not a name.
MAX_NAME_WORDS = 4
#: Condition of episodes clustered by class (``params["condition"] is None``) in :func:`ictc_episodes`.
DEFAULT_CLASS_CONDITION = "object"


def merge_max_tokens(n_clusters: int) -> int:
    """Token cap of the merge request for ``n_clusters`` names."""
    return MERGE_BASE_TOKENS + MERGE_TOKENS_PER_NAME * int(n_clusters)


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": ICTC_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def label_messages(caption: str, condition: str) -> list[dict]:
    """Chat messages of stage 1 for one caption."""
    return _messages(LABEL_PROMPT.format(caption=_one_line(caption), condition=condition))


def merge_messages(labels: Sequence[str], condition: str, n_clusters: int) -> list[dict]:
    """Chat messages of stage 2: the distinct raw labels, most frequent first, with their counts."""
    lines = "\n".join(f"- {label} ({count})" for label, count in label_counts(labels))
    return _messages(MERGE_PROMPT.format(condition=condition, labels=lines, n_clusters=int(n_clusters)))


def assign_messages(caption: str, names: Sequence[str], condition: str) -> list[dict]:
    """Chat messages of stage 3 for one caption."""
    return _messages(ASSIGN_PROMPT.format(caption=_one_line(caption), condition=condition,
                                          names=", ".join(names)))


# ---------------------------------------------------------------- reply normalisation

_QUOTES = re.compile(r"[\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb]")
_PUNCT = re.compile(r"[^\w\s]|_")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+\s*|\(?\d+[.):]\s*|\(?[a-z][.)]\s+)")
_COUNT = re.compile(r"\(\s*\d+[^)]*\)")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _clean(text: str) -> str:
    """Lower case, text after a ``prefix:`` if any, quotes removed, other punctuation -> space."""
    text = str(text).strip().lower()
    if ":" in text:
        after = text.rsplit(":", 1)[1]
        if after.strip():
            text = after
    text = _QUOTES.sub("", text)
    return " ".join(_PUNCT.sub(" ", text).split())


def normalize_label(reply: str) -> str:
    """A stage-1 reply as a label: its first non-empty line, lower case, without punctuation or
    quotes (``Color: "Red".`` -> ``red``); ``unknown`` when nothing is left."""
    lines = [line for line in str(reply).splitlines() if line.strip()]
    label = _clean(lines[0]) if lines else ""
    return label or UNKNOWN_LABEL


def label_counts(labels: Sequence[str]) -> list[tuple[str, int]]:
    """Distinct labels with their counts, most frequent first (ties: first appearance)."""
    counts = Counter(labels)
    first = {label: i for i, label in reversed(list(enumerate(labels)))}
    return sorted(counts.items(), key=lambda kv: (-kv[1], first[kv[0]]))


def parse_names(reply: str) -> list[str]:
    """Category names in a merge reply, in order, normalised and distinct.

    Items are split on commas, semicolons and new lines; list bullets/numbers, a leading ``and``
    and anything up to a colon are dropped; items longer than :data:`MAX_NAME_WORDS` words
    (prose around the list) and ``unknown`` are skipped.
    """
    names: list[str] = []
    for item in re.split(r"[,;\n]", str(reply)):
        item = _COUNT.sub(" ", _BULLET.sub("", item.strip().lower()))
        name = _clean(item)
        name = re.sub(r"^(?:and|or)\s+", "", name)
        if not name or name == UNKNOWN_LABEL or len(name.split()) > MAX_NAME_WORDS or name in names:
            continue
        names.append(name)
    return names


def complete_names(names: Sequence[str], labels: Sequence[str], n_clusters: int) -> list[str]:
    """Exactly ``n_clusters`` distinct names: the first ``n_clusters`` of ``names`` (deduplicated),
    completed with the most frequent raw ``labels`` not yet used (``unknown`` skipped), then
    ``cluster 0``, ``cluster 1``, ... (those not yet used)."""
    c = _check_clusters(n_clusters)
    out: list[str] = []
    for name in names:
        if name not in out and len(out) < c:
            out.append(name)
    for label, _ in label_counts(list(labels)):
        if len(out) >= c:
            break
        if label != UNKNOWN_LABEL and label not in out:
            out.append(label)
    k = 0
    while len(out) < c:
        filler = FILLER_NAME.format(k=k)
        if filler not in out:
            out.append(filler)
        k += 1
    return out


def assign_index(reply: str, names: Sequence[str]) -> int:
    """The index (``0..len(names)-1``, never -1) of the name a stage-3 reply picks.

    1. exact match of the normalised reply (:func:`normalize_label`'s cleaning) with a normalised name;
    2. substring: a name occurring as whole words in the reply (the earliest in the reply, then
       the longest); else the reply inside a name (the shortest such name);
    3. the closest name by ``difflib.SequenceMatcher`` ratio (ties and an empty reply: the lowest index).
    """
    if not names:
        raise ValueError("names is empty: assigning needs at least one category name")
    lines = [line for line in str(reply).splitlines() if line.strip()]
    text = _clean(lines[0]) if lines else ""
    keys = [_clean(n) for n in names]
    for i, key in enumerate(keys):
        if key and text == key:
            return i
    found = []
    for i, key in enumerate(keys):
        m = re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text) if key else None
        if m:
            found.append((m.start(), -len(key), i))
    if found:
        return min(found)[2]
    if text:
        inside = [(len(key), i) for i, key in enumerate(keys) if text in key]
        if inside:
            return min(inside)[1]
    ratios = [difflib.SequenceMatcher(None, text, key).ratio() for key in keys]
    return max(range(len(keys)), key=lambda i: (ratios[i], -i))


# ---------------------------------------------------------------- stages

def _check_condition(condition) -> str:
    if not isinstance(condition, str) or not condition.strip():
        raise ValueError(f"condition={condition!r} is not allowed; it must be a non-empty string "
                         "(the attribute to cluster by, e.g. 'color')")
    return condition.strip()


def _check_clusters(n_clusters) -> int:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r} is out of range; it must be an integer >= 1")
    return int(n_clusters)


def _ask(chat: ChatFn, batch: list[list[dict]], max_tokens: int) -> list[str]:
    if not batch:
        return []
    replies = list(chat(batch, int(max_tokens)))
    if len(replies) != len(batch):
        raise RuntimeError(f"the chat function returned {len(replies)} replies for {len(batch)} requests")
    return ["" if r is None else str(r) for r in replies]


def label_captions(captions: Sequence[str], condition: str, chat: ChatFn) -> list[str]:
    """Stage 1: one raw label per caption (normalised; ``unknown`` for an empty reply)."""
    condition = _check_condition(condition)
    replies = _ask(chat, [label_messages(c, condition) for c in captions], LABEL_MAX_TOKENS)
    return [normalize_label(r) for r in replies]


def merge_labels(labels: Sequence[str], condition: str, n_clusters: int, chat: ChatFn) -> list[str]:
    """Stage 2: exactly ``n_clusters`` distinct category names for the raw labels.

    The model sees the distinct labels with their counts; its comma-separated answer is parsed
    (:func:`parse_names`). More than ``c`` names: the first ``c`` are kept; fewer (or garbage):
    completed by :func:`complete_names`. Without labels no request is sent.
    """
    condition = _check_condition(condition)
    c = _check_clusters(n_clusters)
    labels = list(labels)
    if not labels:
        return complete_names([], [], c)
    reply = _ask(chat, [merge_messages(labels, condition, c)], merge_max_tokens(c))[0]
    return complete_names(parse_names(reply), labels, c)


def assign_captions(captions: Sequence[str], names: Sequence[str], condition: str, chat: ChatFn) -> list[int]:
    """Stage 3: a cluster index in ``0..len(names)-1`` per caption (see :func:`assign_index`)."""
    condition = _check_condition(condition)
    names = [str(n) for n in names]
    if not names:
        raise ValueError("names is empty: assigning needs at least one category name")
    replies = _ask(chat, [assign_messages(c, names, condition) for c in captions], ASSIGN_MAX_TOKENS)
    return [assign_index(r, names) for r in replies]


def ictc_cluster(captions: Sequence[str], condition: str, n_clusters: int, chat: ChatFn) -> dict:
    """Run the three stages: ``{"labels": [cluster per caption], "raw_labels": [...], "names": [c names]}``."""
    captions = [str(c) for c in captions]
    raw = label_captions(captions, condition, chat)
    names = merge_labels(raw, condition, n_clusters, chat)
    return {"labels": assign_captions(captions, names, condition, chat), "raw_labels": raw, "names": names}


def ictc_episodes(episodes: Sequence, captions: Sequence[str] | Mapping[int, str], chat: ChatFn,
                  class_condition: str = DEFAULT_CLASS_CONDITION) -> list[dict]:
    """IC|TC on image episodes, each stage batched over all episodes.

    ``captions[i]`` is the caption of image ``i`` of the image set the episodes index
    (``episode.indices``). The condition is ``episode.params["condition"]``, or
    ``class_condition`` for episodes clustered by class. Returns, per episode,
    ``{"episode_id", "condition", "labels", "raw_labels", "names"}``; gives the same labels as
    :func:`ictc_cluster` episode by episode.
    """
    jobs = []
    for ep in episodes:
        cond = (ep.params or {}).get("condition") or class_condition
        jobs.append((ep, _check_condition(cond), [str(captions[int(i)]) for i in ep.indices]))
    flat = [label_messages(cap, cond) for _, cond, caps in jobs for cap in caps]
    raw_all = [normalize_label(r) for r in _ask(chat, flat, LABEL_MAX_TOKENS)]
    raws, pos = [], 0
    for _, _, caps in jobs:
        raws.append(raw_all[pos:pos + len(caps)])
        pos += len(caps)
    # merge: one request per episode that has labels, grouped by token cap (it depends on c)
    names_by_job: list[list[str] | None] = [None] * len(jobs)
    by_cap: dict[int, list[int]] = {}
    for j, (ep, cond, caps) in enumerate(jobs):
        c = _check_clusters(int(ep.n_clusters))
        if raws[j]:
            by_cap.setdefault(merge_max_tokens(c), []).append(j)
        else:
            names_by_job[j] = complete_names([], [], c)
    for cap, idx in sorted(by_cap.items()):
        replies = _ask(chat, [merge_messages(raws[j], jobs[j][1], int(jobs[j][0].n_clusters)) for j in idx], cap)
        for j, reply in zip(idx, replies):
            names_by_job[j] = complete_names(parse_names(reply), raws[j], int(jobs[j][0].n_clusters))
    flat = [assign_messages(cap, names_by_job[j], cond) for j, (_, cond, caps) in enumerate(jobs) for cap in caps]
    replies = _ask(chat, flat, ASSIGN_MAX_TOKENS)
    out, pos = [], 0
    for j, (ep, cond, caps) in enumerate(jobs):
        names = names_by_job[j]
        labels = [assign_index(r, names) for r in replies[pos:pos + len(caps)]]
        pos += len(caps)
        out.append({"episode_id": ep.id, "condition": cond, "labels": labels, "raw_labels": raws[j],
                    "names": names})
    return out


# ---------------------------------------------------------------- backends

def _check_max_tokens(max_tokens) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r} is out of range; it must be an integer >= 1")
    return int(max_tokens)


def local_chat_fn(model: "LocalChatModel", cache: ReplyCache | None = None) -> ChatFn:
    """A :data:`ChatFn` on a local transformers model (greedy, the model's own chat template).

    Each message list is rendered with :func:`~icc_utils.prompts.render_chat`; uncached prompts
    (deduplicated) are generated in the model's length-sorted batches with ``max_new_tokens``
    set to the call's cap for the duration of the call (the model's own setting is restored
    afterwards), and each batch's replies go to ``cache`` as soon as it finishes, keyed by
    ``cache_key("local", model.model_id, prompt, {"max_new_tokens": k, "greedy": True})``.
    """
    def chat(batch: list[list[dict]], max_tokens: int) -> list[str]:
        k = _check_max_tokens(max_tokens)
        store = cache if cache is not None else ReplyCache(None)
        prompts = [render_chat(model.tokenizer, list(messages)) for messages in batch]
        decoding = {"max_new_tokens": k, "greedy": True}
        keys = [cache_key("local", model.model_id, p, decoding) for p in prompts]
        return model.generate_cached(prompts, keys, store, k, {"backend": "local", "model": model.model_id,
                                                              "decoding": decoding, "method": "ictc"})

    return chat


def openai_chat_fn(client: "OpenAIChatModel", cache: ReplyCache | None = None) -> ChatFn:
    """A :data:`ChatFn` on an OpenAI-compatible chat API (``client.chat``, temperature 0).

    Uncached message lists (deduplicated) are sent with up to ``client.max_workers`` requests in
    flight; each reply goes to ``cache`` the moment it arrives, keyed by
    ``cache_key("openai", client.cache_model_id, messages, {"temperature": 0, "max_tokens": k})``: the full
    base URL and the model, as :meth:`OpenAIChatModel.predict` keys its own requests (two endpoints on one
    host never share replies).
    """
    model_id = client.cache_model_id

    def chat(batch: list[list[dict]], max_tokens: int) -> list[str]:
        k = _check_max_tokens(max_tokens)
        store = cache if cache is not None else ReplyCache(None)
        decoding = {"temperature": 0, "max_tokens": k}
        keys = [cache_key("openai", model_id, list(messages), decoding) for messages in batch]
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key not in store and key not in seen:
                seen.add(key)
                todo.append(i)

        def finish(i: int, reply: str, usage: dict) -> None:
            store.put(keys[i], {"reply": reply, "usage": dict(usage or {}), "backend": "openai",
                                "model": model_id, "decoding": decoding, "method": "ictc"})

        from ..api import run_requests

        run_requests([((list(batch[i]), k), (i,)) for i in todo], client.chat, finish,
                     int(getattr(client, "max_workers", 1) or 1))
        return [store.get(key)["reply"] for key in keys]

    return chat


def chat_fn_for(name: str, cache: ReplyCache | None = None, batch_size: int = 8,
                dtype: str = "float32") -> tuple[ChatFn | None, str]:
    """A :data:`ChatFn` for a model name (``embedded``, a hub id or local directory, or an OpenAI model).

    Returns ``(chat, "")``, or ``(None, reason)`` when an API model has no key / base URL
    configured (the caller skips IC|TC with a visible note). A classical method is not a chat model.
    """
    from ..models import get_backend, model_kind

    kind = model_kind(name)
    if kind == "classical":
        raise ValueError(f"ictc chat model={name!r} is a classical method, not a chat model; use 'embedded', "
                         "a local model, or an OpenAI model name")
    if kind == "openai":
        client = get_backend(name)
        if not client.available:
            return None, client.unavailable_reason
        return openai_chat_fn(client, cache), ""
    return local_chat_fn(get_backend(name, batch_size=batch_size, dtype=dtype), cache), ""
