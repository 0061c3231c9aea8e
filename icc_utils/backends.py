"""What every model backend shares, with no backend imported: the :class:`Prediction` record and
the names of served models.

A model list (a profile's ``models``, ``-p models``, :func:`icc_utils.models.get_backend`) names a
model served by an OpenAI-compatible server (vLLM, ``transformers serve``, ...) as::

    served:<served model name>@<base URL>
    served:HuggingFaceTB/SmolLM2-135M-Instruct@http://127.0.0.1:8000/v1

The served model name is what the server calls the model (``transformers serve`` names it by
the path or hub id it was started with; ``GET <base URL>/models`` lists it). Its rows and its
reply cache are named ``<short model name>@<server>`` (:func:`served_display_name`, e.g.
``SmolLM2-135M-Instruct@127.0.0.1:8000``), so they never pool with a local model of the same
name. A served model gets the key in ``ICC_SERVED_API_KEY`` (never ``OPENAI_API_KEY``, which
is only sent to the server in ``OPENAI_BASE_URL`` or to OpenAI); without one a placeholder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import urlsplit

SERVED_PREFIX = "served:"
_SERVED = re.compile(r"^served:(?P<model>.+?)@(?P<url>https?://\S+)$")


@dataclass
class Prediction:
    """One episode's predicted labels and, for LLMs, the raw reply."""

    episode_id: str
    labels: list[int]
    reply: str | None = None
    well_formed: bool = True
    cached: bool = False
    usage: dict = field(default_factory=dict)


def parse_served(name: str) -> tuple[str, str] | None:
    """``(served model name, base URL)`` of a ``served:<model>@<base URL>`` name, else None.

    A name that starts with ``served:`` but is not of that form raises a ValueError showing the form.
    """
    if not isinstance(name, str) or not name.startswith(SERVED_PREFIX):
        return None
    match = _SERVED.match(name)
    if match is None:
        raise ValueError(f"model={name!r} is not a served model name; write served:<served model name>@<base URL>, "
                         f"e.g. served:HuggingFaceTB/SmolLM2-135M-Instruct@http://127.0.0.1:8000/v1")
    return match.group("model"), match.group("url").rstrip("/")


def safe_url(base_url: str | None) -> str:
    """The base URL for messages and cache keys: OpenAI's default when None, any ``user:password@``
    removed, no trailing slash."""
    if not base_url:
        return "https://api.openai.com/v1"
    parts = urlsplit(base_url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        parts = parts._replace(netloc=netloc)
    return parts.geturl().rstrip("/")


def is_openai(base_url: str | None) -> bool:
    """Whether ``base_url`` is OpenAI's own API (None: the client's default, OpenAI)."""
    if not base_url:
        return True
    return urlsplit(base_url if "//" in base_url else f"//{base_url}").hostname == "api.openai.com"


def server_label(base_url: str | None) -> str:
    """A short, credential-free name for the server: ``openai``, or ``host[:port]`` of the base URL
    followed by its path unless that is empty or ``/v1`` (two endpoints on one host stay apart)."""
    if is_openai(base_url):
        return "openai"
    parts = urlsplit(base_url if "//" in base_url else f"//{base_url}")
    host = parts.hostname or base_url
    label = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rstrip("/")
    return label if path in ("", "/v1") else label + path


def served_display_name(model: str, base_url: str | None) -> str:
    """The name a served model's rows carry: the model's own name for OpenAI (``gpt-4o``), else
    ``<last part of the served name>@<server_label>`` (``SmolLM2-135M-Instruct@127.0.0.1:8000``)."""
    if is_openai(base_url):
        return model
    short = PurePosixPath(model.rstrip("/")).name or model
    return f"{short}@{server_label(base_url)}"
