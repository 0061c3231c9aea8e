"""OpenAI-compatible chat backend: OpenAI itself, vLLM, or ``transformers serve``.

The base URL and key come from ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` unless given. With
neither, the backend is *unavailable*: ``available`` is False and ``unavailable_reason`` is a
sentence the notebooks print instead of the GPT rows. With a base URL but no key (a local
server), a placeholder key is sent. A model on any other server is named
``served:<model>@<base URL>`` in a model list (:mod:`icc_utils.backends`); its rows are called
``<model>@<server>``.

Decoding is greedy (temperature 0). Retries are the ``openai`` client's own (``max_retries``,
``timeout``: exponential backoff with jitter, ``Retry-After``, on timeouts, connection errors,
408/409/429 and 5xx). What it lacks is added in the HTTP transport (:class:`_CheckedTransport`):
a 200 body that is not a chat completion (invalid JSON, ``text/plain``, no choices, a null
content) becomes a 502 the client retries like any server fault, and is never cached; a quota
error (429 ``insufficient_quota``) is not retried. The final error names the server and the model.
The key is never printed, stored in cache records, shown in reprs or put into error messages.

Settings: ``timeout`` (seconds per attempt), ``max_retries`` and ``max_workers`` (requests in
flight) come from the constructor, else the environment (``ICC_API_TIMEOUT``,
``ICC_API_MAX_RETRIES``, ``ICC_API_MAX_WORKERS``), else :data:`DEFAULTS`. A hung server fails
after at most about ``(max_retries + 1) * timeout`` seconds plus the client's backoff (at most 8 s
between attempts unless the server asks for longer).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .backends import Prediction, safe_url, server_label, served_display_name  # noqa: F401  (re-exported)
from .cache import ReplyCache, cache_key
from .parsing import is_well_formed, parse_labels
from .prompts import IMAGE_PLACEHOLDER, SYSTEM_PROMPT, episode_messages, image_user_prompt

#: Sent when a base URL is given without a key: local servers (vLLM, transformers serve) ignore it.
PLACEHOLDER_KEY = "EMPTY"
#: Built-in settings; the environment variables of :data:`ENV_SETTINGS` override them.
DEFAULTS = {"timeout": 60.0, "max_retries": 3, "max_workers": 1}
#: Environment variable of each setting.
ENV_SETTINGS = {"timeout": "ICC_API_TIMEOUT", "max_retries": "ICC_API_MAX_RETRIES", "max_workers": "ICC_API_MAX_WORKERS"}


def default_max_tokens(n_points: int) -> int:
    """The reply cap for an episode of ``n_points``: room for the label list plus a little slack."""
    return 4 * int(n_points) + 32


def api_setting(name: str, value=None):
    """``value`` if given, else the environment's (:data:`ENV_SETTINGS`), else :data:`DEFAULTS`; checked
    (``timeout`` a number > 0, ``max_retries`` an integer >= 0, ``max_workers`` an integer >= 1)."""
    source = name
    if value is None:
        env = ENV_SETTINGS[name]
        raw = (os.environ.get(env) or "").strip()
        value, source = (raw, env) if raw else (DEFAULTS[name], name)
    if name == "timeout":
        return _number(source, value, float, 0.0, strict=True)
    return _number(source, value, int, 0 if name == "max_retries" else 1)


class OpenAIChatModel:
    """A chat model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``model``: the served model name (``gpt-4o``, or what vLLM / transformers serve serves); ``name``
    is what its rows are called (:func:`~icc_utils.backends.served_display_name`: the model's name on
    OpenAI, ``<model>@<server>`` elsewhere). ``max_tokens``: reply cap; ``None`` lets :meth:`predict`
    use :func:`default_max_tokens`. ``timeout``, ``max_retries``, ``max_workers``: see the module
    docstring (None: environment, then :data:`DEFAULTS`).
    """

    kind = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 max_retries: int | None = None, timeout: float | None = None, max_tokens: int | None = None,
                 max_workers: int | None = None):
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r} is not allowed; give the served model name, e.g. 'gpt-4o'")
        self.max_retries = api_setting("max_retries", max_retries)
        self.timeout = api_setting("timeout", timeout)
        self.max_workers = api_setting("max_workers", max_workers)
        self.max_tokens = None if max_tokens is None else _number("max_tokens", max_tokens, int, 1)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").strip().rstrip("/") or None
        key = (api_key or os.environ.get("OPENAI_API_KEY") or "").strip() or None
        self.server = server_label(self.base_url)
        self.name = served_display_name(model, self.base_url)
        #: What the reply cache keys name: the full (credential-free) base URL and the served model.
        self.cache_model_id = f"{safe_url(self.base_url)}|{model}"
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

            http = openai.DefaultHttpxClient(transport=_CheckedTransport(_http_module().HTTPTransport()))
            self._client = openai.OpenAI(api_key=key or PLACEHOLDER_KEY, base_url=self.base_url,
                                         max_retries=self.max_retries, timeout=self.timeout, http_client=http)

    def __repr__(self) -> str:
        return (f"OpenAIChatModel(model={self.model!r}, base_url={safe_url(self.base_url)!r}, "
                f"available={self.available})")

    # ------------------------------------------------------------ one request

    def _where(self) -> str:
        return f"model {self.model!r} at {safe_url(self.base_url)}"

    def _scrub(self, text: str) -> str:
        """``text`` with the API key's value (and its prefix) blanked out."""
        if self._secret:
            text = text.replace(self._secret, "<OPENAI_API_KEY>")
            if len(self._secret) > 12:
                text = text.replace(self._secret[:12], "<OPENAI_API_KEY>")
        return text

    def chat(self, messages: list[dict], max_tokens: int | None = None) -> tuple[str, dict]:
        """Send one chat request (greedy) and return ``(reply_text, usage)``.

        ``messages`` go to the server unchanged, so content lists (text and image parts) pass
        through. ``max_tokens``: this request's cap (default: the model's ``max_tokens``; if
        both are None the server's own limit applies). Transient faults are retried by the client
        (``max_retries``); what is left raises a RuntimeError naming the server and the model.
        """
        if not self.available:
            raise RuntimeError(self.unavailable_reason)
        import openai

        cap = max_tokens if max_tokens is not None else self.max_tokens
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0}
        if cap is not None:
            kwargs["max_tokens"] = int(cap)
        attempts = f"after {self.max_retries + 1} attempts (max_retries={self.max_retries}, timeout={self.timeout:g} s)"
        try:
            response = self._client.chat.completions.create(**kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise RuntimeError(
                f"authentication failed (HTTP {exc.status_code}) for {self._where()}: check OPENAI_API_KEY "
                f"(and OPENAI_BASE_URL). Server said: {self._scrub(_server_message(exc))}") from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            said = self._scrub(_server_message(exc))
            if _is_quota_error(exc):
                raise RuntimeError(f"{self._where()}: the account's quota is used up (HTTP 429 insufficient_quota); "
                                   f"retrying will not help. Server said: {said}") from None
            if status in (408, 409, 429) or status >= 500:
                raise RuntimeError(f"{self._where()} failed {attempts}; last error: HTTP {status}: {said}") from None
            raise RuntimeError(f"request rejected (HTTP {status}) by {self._where()}: {said}") from None
        except openai.APITimeoutError:
            raise RuntimeError(f"{self._where()} failed {attempts}; last error: timed out") from None
        except openai.APIConnectionError as exc:
            raise RuntimeError(f"{self._where()} failed {attempts}; last error: connection error: "
                               f"{self._scrub(str(exc.__cause__ or exc))}") from None
        return self._record(response)

    def _record(self, response) -> tuple[str, dict]:
        """Reply text and usage of a completion (checked by the transport); adds the usage to the totals."""
        text = response.choices[0].message.content
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
        return (f"{self.name}: {u['requests']} requests, {u['prompt_tokens']:,} prompt + "
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
        return self._ask_all(episodes, [(m, m, {}) for m in (episode_messages(ep, known_k) for ep in episodes)],
                             known_k, cache, desc)

    # ------------------------------------------------------------ image episodes

    def predict_images(self, episodes: Sequence, imageset, cache: ReplyCache | None = None,
                       desc: str | None = None, image_size: int | None = None) -> list[Prediction]:
        """Cluster image episodes zero-shot (the paper's GPT-4o rows of Tables 2 and 3).

        Each episode's images (``imageset.images[i] for i in episode.indices``) go as base64 PNG
        content parts (see :func:`image_episode_messages`; ``image_size``: nearest-neighbour upscale
        to ``image_size`` x ``image_size`` pixels). Greedy decoding, parsing, cache and retries as in
        :meth:`predict`. The cache key holds sha256 digests of the sent pixels in place of the
        base64 data, and the cache record stores a digest of the episode's images, never the images.
        """
        size = _image_size(image_size)
        if not self.available:
            raise RuntimeError(self.unavailable_reason)
        episodes = list(episodes)
        requests = []
        for ep in episodes:
            messages, keyed, digest = _image_request(ep, imageset, size)
            requests.append((messages, keyed, {"input": "images", "image_size": size, "images_sha256": digest}))
        return self._ask_all(episodes, requests, True, cache, desc)

    def _ask_all(self, episodes: list, requests: list, known_k: bool, cache: ReplyCache | None,
                 desc: str | None) -> list[Prediction]:
        """Send one request per episode (``(messages, messages for the cache key, extra record fields)``),
        skipping cached ones; each reply is cached the moment it arrives (``max_workers`` threads)."""
        jobs = []  # (index, key, messages, decoding, extra) of episodes that need a request
        results: list[Prediction | None] = [None] * len(episodes)
        for i, (ep, (messages, keyed, extra)) in enumerate(zip(episodes, requests)):
            dec = self.decoding(ep.n_points)
            key = cache_key("openai", self.cache_model_id, keyed, dec)
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                self.cache_hits += 1
                results[i] = self._prediction(ep, hit["reply"], hit.get("usage", {}), known_k, cached=True)
            else:
                jobs.append((i, key, messages, dec, extra))

        bar = tqdm(total=len(episodes), initial=len(episodes) - len(jobs), desc=desc or self.name, leave=False)

        def finish(i: int, key: str, dec: dict, extra: dict, reply: str, usage: dict) -> None:
            if cache is not None:
                cache.put(key, {"reply": reply, "usage": usage, "backend": "openai", "server": self.server,
                                "base_url": safe_url(self.base_url), "model": self.model, "decoding": dec,
                                "episode_id": episodes[i].id, **extra})
            results[i] = self._prediction(episodes[i], reply, usage, known_k, cached=False)
            bar.update(1)

        try:
            run_requests([((messages, dec["max_tokens"]), (i, key, dec, extra)) for i, key, messages, dec, extra in jobs],
                         self.chat, finish, self.max_workers)
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    @staticmethod
    def _prediction(ep, reply: str, usage: dict, known_k: bool, cached: bool) -> Prediction:
        n = ep.n_points
        return Prediction(ep.id, parse_labels(reply, n), reply=reply,
                          well_formed=is_well_formed(reply, n, ep.n_clusters if known_k else None),
                          cached=cached, usage=dict(usage))


# ---------------------------------------------------------------- the HTTP transport

def _http_module():
    """The HTTP library the installed ``openai`` client is built on (``httpx2`` or ``httpx``)."""
    try:
        import httpx2 as http
    except ImportError:  # openai < 3 uses httpx
        import httpx as http
    return http


def completion_problem(body: bytes) -> str | None:
    """Why ``body`` is not a chat completion with a text reply, or None if it is one."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return f"the body is not JSON: {body[:120]!r}"
    if not isinstance(data, dict):
        return f"the body is JSON but not an object: {str(data)[:120]}"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return f"no choices in the body: {json.dumps(data)[:120]}"
    message = choices[0].get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return f"choices[0].message.content is not text: {json.dumps(choices[0])[:120]}"
    return None


class _CheckedTransport:
    """Wraps the client's HTTP transport with what the ``openai`` client's retries lack.

    A 200 from ``.../chat/completions`` whose body is not a chat completion with a text reply
    (:func:`completion_problem`) is turned into a 502 with the problem as the error message, so
    the client retries it and the last attempt's error says what the server sent; a JSON body
    served as ``text/plain`` is relabelled ``application/json``. A 429 whose code is
    ``insufficient_quota`` gets ``x-should-retry: false`` (waiting does not refill a quota).
    """

    def __init__(self, inner):
        self.inner = inner
        self.http = _http_module()

    def handle_request(self, request):
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/chat/completions") or response.status_code not in (200, 429):
            return response
        body = response.read()
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")]
        if response.status_code == 429:
            if b"insufficient_quota" in body:
                headers.append(("x-should-retry", "false"))
            return self.http.Response(429, headers=headers, content=body, request=request)
        problem = completion_problem(body)
        if problem is not None:
            error = {"error": {"message": f"malformed reply (HTTP 200): {problem}", "type": "malformed_completion"}}
            return self.http.Response(502, json=error, request=request)
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"] + [("content-type", "application/json")]
        return self.http.Response(200, headers=headers, content=body, request=request)

    def close(self):
        self.inner.close()

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *args):
        return self.inner.__exit__(*args)


# ---------------------------------------------------------------- helpers

def run_requests(jobs: Sequence[tuple], send: Callable, finish: Callable, workers: int = 1) -> None:
    """``finish(*tag, *send(*args))`` for every ``(args, tag)`` in ``jobs``, on up to ``workers`` threads.

    ``finish`` always runs in the calling thread (so cache writes never race). On the first error no
    new request is sent, replies already in flight are still finished, and the error is raised.
    """
    if workers <= 1 or len(jobs) <= 1:
        for args, tag in jobs:
            finish(*tag, *send(*args))
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    error: BaseException | None = None
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(send, *args): tag for args, tag in jobs}
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            if fut.exception() is not None:
                if error is None:  # stop sending; replies already in flight are still kept
                    error = fut.exception()
                    for other in futures:
                        other.cancel()
                continue
            finish(*futures[fut], *fut.result())
    if error is not None:
        raise error


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
        if isinstance(body.get("error"), dict) and body["error"].get("message"):
            return str(body["error"]["message"])
        for field in ("message", "detail", "error"):
            if body.get(field):
                return str(body[field])
    if isinstance(body, str) and body:
        return body
    return str(getattr(exc, "message", exc))


def _is_quota_error(exc) -> bool:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return getattr(exc, "status_code", None) == 429 and isinstance(body, dict) and \
        body.get("code") == "insufficient_quota"


# ---------------------------------------------------------------- images

#: The data-URL prefix of every image content part.
PNG_DATA_URL = "data:image/png;base64,"


def _image_size(size, name: str = "image_size") -> int | None:
    """``size`` checked: None (send images as they are) or a positive integer."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 1:
        raise ValueError(f"{name}={size!r} is out of range; it must be None or an integer >= 1 (pixels)")
    return int(size)


def _as_pil(image: np.ndarray, size: int | None = None):
    """A uint8 image array (H, W), (H, W, 1) or (H, W, 3) as a Pillow image, upscaled if ``size``."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 arrays (0..255), got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"an image must have shape (H, W) or (H, W, 3), got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"an image must have at least one pixel, got shape {arr.shape}")
    img = Image.fromarray(np.ascontiguousarray(arr))  # uint8: (H, W) -> "L", (H, W, 3) -> "RGB"
    size = _image_size(size, "size")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.NEAREST)
    return img


def _pixel_digest(img) -> str:
    """sha256 of an image's mode, size and pixels: what the model sees, independent of PNG compression."""
    h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _png_bytes(image: np.ndarray, size: int | None = None) -> bytes:
    """PNG file bytes of a uint8 image array (grayscale or RGB); ``size``: nearest-neighbour resize
    to ``size`` x ``size`` pixels (8x8 digits are too small to show a model as they are)."""
    buf = io.BytesIO()
    _as_pil(image, size).save(buf, format="PNG")
    return buf.getvalue()


def _split_placeholders(text: str, n_images: int) -> list[str]:
    pieces = text.split(IMAGE_PLACEHOLDER)
    if len(pieces) - 1 != n_images:
        raise ValueError(f"the text has {len(pieces) - 1} image placeholders ({IMAGE_PLACEHOLDER!r}) but "
                         f"{n_images} images were given; they must match one to one")
    return pieces


def _content_parts(text: str, images: Sequence[np.ndarray], size: int | None) -> tuple[list[dict], list[dict]]:
    """(content parts sent, the same parts for the cache key with each image's base64 replaced by its
    pixel digest)."""
    images = list(images)
    pieces = _split_placeholders(text, len(images))
    parts: list[dict] = []
    keyed: list[dict] = []
    for j, piece in enumerate(pieces):
        if piece:
            parts.append({"type": "text", "text": piece})
            keyed.append({"type": "text", "text": piece})
        if j < len(images):
            img = _as_pil(images[j], size)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            url = PNG_DATA_URL + base64.b64encode(buf.getvalue()).decode("ascii")
            parts.append({"type": "image_url", "image_url": {"url": url}})
            keyed.append({"type": "image_url", "image_url": {"sha256": _pixel_digest(img)}})
    return parts, keyed


def image_content_parts(text: str, images: Sequence[np.ndarray], size: int | None = None) -> list[dict]:
    """OpenAI chat content parts for ``text`` with one image per ``IMAGE_PLACEHOLDER``, in order.

    Non-empty text pieces become ``{"type": "text", ...}`` parts; each image (uint8, (H, W) or
    (H, W, 3)) becomes an ``image_url`` part holding a ``data:image/png;base64,...`` URL, resized
    (nearest neighbour) to ``size`` x ``size`` pixels if ``size`` is given. Raises ValueError if the
    number of placeholders differs from ``len(images)``.
    """
    return _content_parts(text, images, _image_size(size, "size"))[0]


def _episode_images(episode, imageset) -> list[np.ndarray]:
    return [imageset.images[int(i)] for i in episode.indices]


def image_episode_messages(episode, imageset, size: int | None = None) -> list[dict]:
    """Chat messages (system + user with text and image parts) for an image episode.

    ``episode``: has ``indices`` (into ``imageset.images``), ``n_points``, ``n_clusters`` and
    ``params`` (its ``"condition"``, if any, names the attribute to cluster by).
    """
    return _image_request(episode, imageset, size)[0]


def _image_request(episode, imageset, size: int | None) -> tuple[list[dict], list[dict], str]:
    """(messages sent, messages for the cache key, sha256 over the episode's image digests)."""
    params = getattr(episode, "params", None) or {}
    text = image_user_prompt(episode.n_points, episode.n_clusters, params.get("condition"))
    parts, keyed = _content_parts(text, _episode_images(episode, imageset), size)
    system = {"role": "system", "content": SYSTEM_PROMPT}
    digests = [p["image_url"]["sha256"] for p in keyed if p["type"] == "image_url"]
    digest = hashlib.sha256("".join(digests).encode("ascii")).hexdigest()
    return [system, {"role": "user", "content": parts}], [system, {"role": "user", "content": keyed}], digest
