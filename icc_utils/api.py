"""OpenAI-compatible chat backend: OpenAI itself, vLLM, or ``transformers serve``.

The base URL and key come from ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` unless given. With
neither, the backend is *unavailable*: ``available`` is False and ``unavailable_reason`` is a
sentence the notebooks print instead of the GPT rows. With a base URL but no key (a local
server), a placeholder key is sent.

Decoding is greedy (temperature 0). Retries are ours (the client is built with
``max_retries=0``): exponential backoff with seeded jitter on rate limits, timeouts,
connection errors and 5xx; an authentication error stops at once. The key is never printed,
stored in cache records, shown in reprs or put into error messages.
"""
from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from .cache import ReplyCache, cache_key
from .models import Prediction
from .parsing import is_well_formed, parse_labels
from .prompts import episode_messages

#: Sent when a base URL is given without a key: local servers (vLLM, transformers serve) ignore it.
PLACEHOLDER_KEY = "EMPTY"
#: HTTP statuses worth retrying (the same set the official client retries).
RETRY_STATUSES = frozenset({408, 409, 429})


def default_max_tokens(n_points: int) -> int:
    """The reply cap for an episode of ``n_points``: room for the label list plus a little slack."""
    return 4 * int(n_points) + 32


def server_label(base_url: str | None) -> str:
    """A short, credential-free name for the server: ``openai`` or ``host[:port]`` of the base URL."""
    if not base_url:
        return "openai"
    parts = urlsplit(base_url if "//" in base_url else f"//{base_url}")
    host = parts.hostname or base_url
    if host == "api.openai.com":
        return "openai"
    return f"{host}:{parts.port}" if parts.port else host


def safe_url(base_url: str | None) -> str:
    """The base URL for messages: OpenAI's default when None, any ``user:password@`` removed."""
    if not base_url:
        return "https://api.openai.com/v1"
    parts = urlsplit(base_url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return parts._replace(netloc=netloc).geturl()
    return base_url


class OpenAIChatModel:
    """A chat model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``model``: the served model name (``gpt-4o``, or what vLLM / transformers serve serves).
    ``max_tokens``: reply cap; ``None`` lets :meth:`predict` use :func:`default_max_tokens`.
    ``max_retries``: retries after the first attempt on transient errors.
    ``max_workers``: requests in flight at once in :meth:`predict` (1: one after another).
    """

    kind = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 max_retries: int = 6, timeout: float = 120.0, max_tokens: int | None = None,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, max_workers: int = 1, seed: int = 0):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} is not allowed; give the served model name, e.g. 'gpt-4o'")
        self.max_retries = _number("max_retries", max_retries, int, 0)
        self.timeout = _number("timeout", timeout, float, 0.0, strict=True)
        self.max_tokens = None if max_tokens is None else _number("max_tokens", max_tokens, int, 1)
        self.backoff_base = _number("backoff_base", backoff_base, float, 0.0)
        self.backoff_max = _number("backoff_max", backoff_max, float, 0.0)
        self.max_workers = _number("max_workers", max_workers, int, 1)
        self.name = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").strip() or None
        key = (api_key or os.environ.get("OPENAI_API_KEY") or "").strip() or None
        self.server = server_label(self.base_url)
        #: Called with the number of seconds to wait between retries (tests replace it).
        self.sleep: Callable[[float], None] = time.sleep
        self.rng = random.Random(seed)
        self.usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        self.cache_hits = 0
        self._lock = threading.Lock()
        self._secret = key  # only ever used to scrub messages; never printed
        self.available = bool(key or self.base_url)
        self.unavailable_reason = "" if self.available else (
            f"skipped {model}: set OPENAI_API_KEY or OPENAI_BASE_URL to run the GPT rows")
        self._client = None
        if self.available:
            import openai

            self._client = openai.OpenAI(api_key=key or PLACEHOLDER_KEY, base_url=self.base_url,
                                         max_retries=0, timeout=self.timeout)

    def __repr__(self) -> str:
        return (f"OpenAIChatModel(model={self.name!r}, base_url={safe_url(self.base_url)!r}, "
                f"available={self.available})")

    # ------------------------------------------------------------ one request

    def _where(self) -> str:
        return f"model {self.name!r} at {safe_url(self.base_url)}"

    def _scrub(self, text: str) -> str:
        """``text`` with the API key's value (and its prefix) blanked out."""
        if self._secret:
            text = text.replace(self._secret, "<OPENAI_API_KEY>")
            if len(self._secret) > 12:
                text = text.replace(self._secret[:12], "<OPENAI_API_KEY>")
        return text

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): ``base * 2**attempt`` plus 0-25% seeded
        jitter, at most ``backoff_max``."""
        with self._lock:
            jitter = self.rng.random()
        return min(self.backoff_max, self.backoff_base * 2 ** attempt * (1.0 + 0.25 * jitter))

    def chat(self, messages: list[dict], max_tokens: int | None = None) -> tuple[str, dict]:
        """Send one chat request (greedy) and return ``(reply_text, usage)``.

        ``messages`` go to the server unchanged, so content lists (text and image parts) pass
        through. ``max_tokens``: this request's cap (default: the model's ``max_tokens``; if
        both are None the server's own limit applies).
        """
        if not self.available:
            raise RuntimeError(self.unavailable_reason)
        import openai

        cap = max_tokens if max_tokens is not None else self.max_tokens
        kwargs: dict[str, Any] = {"model": self.name, "messages": messages, "temperature": 0}
        if cap is not None:
            kwargs["max_tokens"] = int(cap)
        last_error = ""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.chat.completions.create(**kwargs)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise RuntimeError(
                    f"authentication failed (HTTP {exc.status_code}) for {self._where()}: check OPENAI_API_KEY "
                    f"(and OPENAI_BASE_URL). Server said: {self._scrub(_server_message(exc))}") from None
            except openai.APIStatusError as exc:
                status = exc.status_code
                if _is_quota_error(exc):
                    raise RuntimeError(f"{self._where()}: the account's quota is used up (HTTP 429 "
                                       f"insufficient_quota); retrying will not help. Server said: "
                                       f"{self._scrub(_server_message(exc))}") from None
                if status not in RETRY_STATUSES and status < 500:
                    raise RuntimeError(f"request rejected (HTTP {status}) by {self._where()}: "
                                       f"{self._scrub(_server_message(exc))}") from None
                last_error = f"HTTP {status}: {self._scrub(_server_message(exc))}"
                wait = max(self.backoff(attempt), min(_retry_after(exc), self.backoff_max))
            except openai.APITimeoutError:
                last_error = f"timed out after {self.timeout:g} s"
                wait = self.backoff(attempt)
            except openai.APIConnectionError as exc:
                last_error = f"connection error: {self._scrub(str(exc.__cause__ or exc))}"
                wait = self.backoff(attempt)
            else:
                return self._record(response)
            if attempt < self.max_retries:
                self.sleep(wait)
        raise RuntimeError(f"{self._where()} failed after {self.max_retries + 1} attempts "
                           f"(max_retries={self.max_retries}); last error: {last_error}")

    def _record(self, response) -> tuple[str, dict]:
        """Reply text and usage of a completion; adds the usage to the running totals."""
        text = ""
        if response.choices:
            text = response.choices[0].message.content or ""
        u = response.usage
        usage = {"prompt_tokens": int(getattr(u, "prompt_tokens", 0) or 0),
                 "completion_tokens": int(getattr(u, "completion_tokens", 0) or 0)}
        with self._lock:
            self.usage["prompt_tokens"] += usage["prompt_tokens"]
            self.usage["completion_tokens"] += usage["completion_tokens"]
            self.usage["requests"] += 1
        return text, usage

    def usage_report(self) -> str:
        """One line: requests, tokens, cached replies."""
        u = self.usage
        return (f"{self.name} ({self.server}): {u['requests']} requests, {u['prompt_tokens']:,} prompt + "
                f"{u['completion_tokens']:,} completion tokens; {self.cache_hits} replies from cache")

    # ------------------------------------------------------------ episodes

    def decoding(self, n_points: int) -> dict:
        """The decoding settings of one episode's request (part of the cache key)."""
        cap = self.max_tokens if self.max_tokens is not None else default_max_tokens(n_points)
        return {"temperature": 0, "max_tokens": cap}

    def predict(self, episodes: Sequence, known_k: bool = True, constrained: bool = False,
                cache: ReplyCache | None = None, desc: str | None = None) -> list[Prediction]:
        """Cluster each episode by asking the model; replies are cached the moment they arrive."""
        if constrained:
            raise ValueError("constrained=True is not supported by OpenAI-compatible APIs (the server picks the "
                             "tokens); allowed: constrained=False")
        if not self.available:
            raise RuntimeError(self.unavailable_reason)
        episodes = list(episodes)
        jobs = []  # (index, key, messages, decoding) of episodes that need a request
        results: list[Prediction | None] = [None] * len(episodes)
        for i, ep in enumerate(episodes):
            messages = episode_messages(ep, known_k)
            dec = self.decoding(ep.n_points)
            key = cache_key("openai", f"{self.server}/{self.name}", messages, dec)
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                self.cache_hits += 1
                results[i] = self._prediction(ep, hit["reply"], hit.get("usage", {}), known_k, cached=True)
            else:
                jobs.append((i, key, messages, dec))

        bar = tqdm(total=len(episodes), initial=len(episodes) - len(jobs), desc=desc or self.name, leave=False)

        def finish(i: int, key: str, dec: dict, reply: str, usage: dict) -> None:
            if cache is not None:
                cache.put(key, {"reply": reply, "usage": usage, "backend": "openai", "server": self.server,
                                "model": self.name, "decoding": dec, "episode_id": episodes[i].id})
            results[i] = self._prediction(episodes[i], reply, usage, known_k, cached=False)
            bar.update(1)

        try:
            if self.max_workers == 1:
                for i, key, messages, dec in jobs:
                    finish(i, key, dec, *self.chat(messages, dec["max_tokens"]))
            else:
                from concurrent.futures import ThreadPoolExecutor, as_completed

                error: BaseException | None = None
                with ThreadPoolExecutor(self.max_workers) as pool:
                    futures = {pool.submit(self.chat, messages, dec["max_tokens"]): (i, key, dec)
                               for i, key, messages, dec in jobs}
                    for fut in as_completed(futures):
                        if fut.cancelled():
                            continue
                        if fut.exception() is not None:
                            if error is None:  # stop sending; replies already in flight are still kept
                                error = fut.exception()
                                for other in futures:
                                    other.cancel()
                            continue
                        finish(*futures[fut], *fut.result())  # cache writes stay in this thread
                if error is not None:
                    raise error
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    @staticmethod
    def _prediction(ep, reply: str, usage: dict, known_k: bool, cached: bool) -> Prediction:
        n = ep.n_points
        return Prediction(ep.id, parse_labels(reply, n), reply=reply,
                          well_formed=is_well_formed(reply, n, ep.n_clusters if known_k else None),
                          cached=cached, usage=dict(usage))


# ---------------------------------------------------------------- helpers

def _number(name: str, value, kind: type, lo: float, strict: bool = False):
    """``value`` as ``kind`` (int or float), checked to be >= ``lo`` (> if ``strict``); a clear error otherwise."""
    try:
        number = kind(value)
        ok = (number > lo if strict else number >= lo) and (kind is float or float(value) == number)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        what = "an integer" if kind is int else "a number"
        bound = f"{'>' if strict else '>='} {lo:g}"
        raise ValueError(f"{name}={value!r} is out of range; it must be {what} {bound}")
    return number


def _server_message(exc) -> str:
    """The server's own error message from an ``openai.APIStatusError``."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        for field in ("message", "detail", "error"):
            if body.get(field):
                return str(body[field])
    if isinstance(body, str) and body:
        return body
    return str(getattr(exc, "message", exc))


def _is_quota_error(exc) -> bool:
    body = getattr(exc, "body", None)
    return getattr(exc, "status_code", None) == 429 and isinstance(body, dict) and \
        body.get("code") == "insufficient_quota"


def _retry_after(exc) -> float:
    """Seconds the server asked us to wait (``Retry-After`` header), or 0."""
    try:
        value = exc.response.headers.get("retry-after")
        return max(float(value), 0.0) if value is not None else 0.0
    except (AttributeError, TypeError, ValueError):
        return 0.0
