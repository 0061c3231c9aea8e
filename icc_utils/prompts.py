"""The paper's clustering prompt (docs/protocol.md, "Prompt") and chat rendering."""
from __future__ import annotations

from typing import Sequence

SYSTEM_PROMPT = "You are a data clustering expert."
USER_TEMPLATE = ("Cluster the following data into {n_clusters} clusters. Only output the cluster labels "
                 "for each point as a list of integers. Data: {data} Labels:")
#: Unknown-k variant (ours, asked for by the paper's reviewers): the same prompt without the count.
USER_TEMPLATE_UNKNOWN_K = ("Cluster the following data. Only output the cluster labels "
                           "for each point as a list of integers. Data: {data} Labels:")

#: Answer formats. ``paper``: the paper's (every headline number). ``indexed``: a labelled ablation
#: (ours, issue 4) that numbers the points in the data and the labels in the answer,
#: ``[1: [-0.93, 9.78], 2: [4.85, 0.01]]`` -> ``[1: 0, 2: 1]``, so that a small model can match
#: each label to its point and knows when the list ends.
ANSWER_FORMATS = ("paper", "indexed")
INDEXED_INSTRUCTION = "Only output the cluster label of each point as a list of index: label pairs."


def check_answer_format(answer_format: str) -> str:
    """``answer_format`` if it is one of :data:`ANSWER_FORMATS`, else ``ValueError`` naming the choices."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format={answer_format!r} is not allowed; choose from {list(ANSWER_FORMATS)}")
    return answer_format


def format_number(x: float) -> str:
    """A number with exactly two decimals (``-0.00`` is written ``0.00``)."""
    s = f"{float(x):.2f}"
    return "0.00" if s == "-0.00" else s


def _numbered(items: Sequence[str], answer_format: str) -> str:
    """``[a, b]``, or ``[1: a, 2: b]`` in the indexed format."""
    if check_answer_format(answer_format) == "indexed":
        items = [f"{i + 1}: {item}" for i, item in enumerate(items)]
    return "[" + ", ".join(items) + "]"


def format_points(points: Sequence[Sequence[float]], answer_format: str = "paper") -> str:
    """Points as a list of lists, two decimals each: ``[[-0.93, 9.78], [4.85, 0.01]]``
    (``indexed``: ``[1: [-0.93, 9.78], 2: [4.85, 0.01]]``)."""
    return _numbered(["[" + ", ".join(format_number(x) for x in p) + "]" for p in points], answer_format)


def answer_text(labels: Sequence[int], answer_format: str = "paper") -> str:
    """The answer (fine-tuning target) for a list of labels: ``[0, 0, 1, 0, 2]``
    (``indexed``: ``[1: 0, 2: 0, 3: 1, 4: 0, 5: 2]``)."""
    return _numbered([str(int(l)) for l in labels], answer_format)


def user_prompt(points: Sequence[Sequence[float]], n_clusters: int | None, answer_format: str = "paper") -> str:
    """The user turn; ``n_clusters=None`` gives the unknown-k variant. The ``indexed`` ablation numbers
    the points and asks for index: label pairs (:data:`INDEXED_INSTRUCTION`); nothing else changes."""
    data = format_points(points, answer_format)
    if n_clusters is None:
        text = USER_TEMPLATE_UNKNOWN_K.format(data=data)
    else:
        text = USER_TEMPLATE.format(n_clusters=int(n_clusters), data=data)
    if answer_format == "indexed":
        text = text.replace("Only output the cluster labels for each point as a list of integers.",
                            INDEXED_INSTRUCTION)
    return text


def build_messages(points: Sequence[Sequence[float]], n_clusters: int | None,
                   system_prompt: str = SYSTEM_PROMPT, answer_format: str = "paper") -> list[dict]:
    """Chat messages (system + user) for one episode."""
    return [{"role": "system", "content": system_prompt},
            {"role": "user", "content": user_prompt(points, n_clusters, answer_format)}]


def episode_messages(episode, known_k: bool = True, answer_format: str = "paper") -> list[dict]:
    """Chat messages for an :class:`~icc_utils.data.Episode` (``known_k=False``: unknown-k prompt)."""
    return build_messages(episode.points, episode.n_clusters if known_k else None, answer_format=answer_format)


def render_chat(tokenizer, messages: list[dict], answer: str | None = None) -> str:
    """Render messages with the tokenizer's own chat template.

    Without ``answer``: the prompt ending with the assistant header (generation prompt).
    With ``answer``: prompt + answer + the template's end-of-turn, for training.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template; "
                         "ICC uses the model's own chat template (use an -Instruct model)")
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if answer is None:
        return prompt
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):  # templates that rewrite earlier turns: fall back to prompt + answer + eos
        return prompt + answer + (tokenizer.eos_token or "")
    return full


# ---------------------------------------------------------------- images (Sections 4.2 and 5)

#: Where each image goes in an image prompt; local models expand it to their image tokens,
#: the OpenAI backend splits the text here into image content parts.
IMAGE_PLACEHOLDER = "<image>"
IMAGE_USER_TEMPLATE = ("Cluster the following images into {n_clusters} clusters{condition}. Only output the cluster "
                       "labels for each image as a list of integers. Images: {images} Labels:")


def image_user_prompt(n_images: int, n_clusters: int, condition: str | None = None) -> str:
    """The user turn of an image episode: one ``IMAGE_PLACEHOLDER`` per image, in order.

    ``condition`` (Section 5) names the attribute to cluster by: ``"... into 3 clusters based on the color."``
    """
    if int(n_images) < 1:
        raise ValueError(f"n_images={n_images!r} is out of range; an image episode needs at least one image")
    images = " ".join(f"{i + 1}: {IMAGE_PLACEHOLDER}" for i in range(int(n_images)))
    cond = f" based on the {condition}" if condition else ""
    return IMAGE_USER_TEMPLATE.format(n_clusters=int(n_clusters), condition=cond, images=images)


def image_messages(n_images: int, n_clusters: int, condition: str | None = None,
                   system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """Chat messages (system + user, text with placeholders) for one image episode."""
    return [{"role": "system", "content": system_prompt},
            {"role": "user", "content": image_user_prompt(n_images, n_clusters, condition)}]
