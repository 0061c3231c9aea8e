"""Zero-shot image clustering through the OpenAI-compatible backend, on replayed HTTP exchanges.

tests/cassettes/openai_image_clustering.json holds chat.completions exchanges in OpenAI's wire
format (one 429 rate-limit error among them). A stdlib server on 127.0.0.1 answers them in order
and checks every incoming request against the one on file: path, model, greedy decoding, the
prompt's text parts, and the image parts (count, data-URL prefix, PNG format, size and mode).
The image sets and episodes here are small stand-ins with the fields ``icc_utils.vision``
provides, so these tests do not depend on that module.
"""
from __future__ import annotations

import base64
import io
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icc_utils.api import (OpenAIChatModel, _image_request, _png_bytes, default_max_tokens, image_content_parts,
                           image_episode_messages)
from icc_utils.cache import ReplyCache
from icc_utils.metrics import clustering_accuracy
from icc_utils.prompts import IMAGE_PLACEHOLDER, SYSTEM_PROMPT

CASSETTE = Path(__file__).resolve().parent / "cassettes" / "openai_image_clustering.json"
DATA_URL = "data:image/png;base64,"


# ---------------------------------------------------------------- stand-ins for icc_utils.vision's

@dataclass
class StandInImageSet:
    images: np.ndarray  # uint8, (N, H, W) or (N, H, W, 3)


@dataclass
class StandInEpisode:
    id: str
    seed: int
    params: dict
    indices: list[int]
    labels: list[int] = field(default_factory=list)

    @property
    def n_clusters(self) -> int:
        return int(self.params["n_clusters"])

    @property
    def n_points(self) -> int:
        return len(self.indices)


def digit_images(n: int = 15) -> StandInImageSet:
    """n distinct 8x8 grayscale images."""
    base = np.arange(64).reshape(8, 8)
    return StandInImageSet(np.stack([(base * (i + 1) + 7 * i) % 256 for i in range(n)]).astype(np.uint8))


def color_images(n: int = 4) -> StandInImageSet:
    """n distinct 8x8 RGB images."""
    base = np.arange(8 * 8 * 3).reshape(8, 8, 3)
    return StandInImageSet(np.stack([(base * (i + 2) + 11 * i) % 256 for i in range(n)]).astype(np.uint8))


def digit_episodes() -> list[StandInEpisode]:
    return [StandInEpisode("ep0", 0, {"n_clusters": 2}, [0, 1, 2, 3, 4], [0, 1, 0, 1, 1]),
            StandInEpisode("ep1", 1, {"n_clusters": 3}, [5, 6, 7, 8, 9, 10], [0, 0, 1, 1, 2, 2]),
            StandInEpisode("ep2", 2, {"n_clusters": 2, "condition": None}, [11, 12, 13, 14], [0, 1, 1, 0])]


def color_episode() -> StandInEpisode:
    return StandInEpisode("c0", 7, {"n_clusters": 2, "condition": "color"}, [0, 1, 2, 3], [0, 0, 1, 1])


def decode_png(url: str) -> Image.Image:
    assert url.startswith(DATA_URL)
    img = Image.open(io.BytesIO(base64.b64decode(url[len(DATA_URL):], validate=True)))
    img.load()
    return img


# ---------------------------------------------------------------- replay server

def load_exchanges(prefix: str) -> list[dict]:
    exchanges = [ex for ex in json.loads(CASSETTE.read_text())["exchanges"] if ex["name"].startswith(prefix)]
    assert exchanges, f"no exchange named {prefix}* in {CASSETTE.name}"
    return exchanges


def request_mismatches(recorded: dict, method: str, path: str, body: dict) -> list[str]:
    """What differs between an incoming request and the recorded one (empty: it matches)."""
    want = recorded["body"]
    problems = []
    if method != recorded["method"] or path != recorded["path"]:
        problems.append(f"{method} {path} != {recorded['method']} {recorded['path']}")
    for name in ("model", "temperature", "max_tokens"):
        if body.get(name) != want[name]:
            problems.append(f"{name}={body.get(name)!r}, recorded {want[name]!r}")
    if body.get("temperature") != 0:
        problems.append(f"temperature={body.get('temperature')!r} is not greedy")
    messages = body.get("messages", [])
    if [m.get("role") for m in messages] != ["system", "user"]:
        return problems + [f"roles {[m.get('role') for m in messages]} != ['system', 'user']"]
    if messages[0]["content"] != want["system"]:
        problems.append(f"system prompt {messages[0]['content']!r}")
    parts = messages[1]["content"]
    if not isinstance(parts, list):
        return problems + ["user content is not a list of parts"]
    texts = [p["text"] for p in parts if p.get("type") == "text"]
    images = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
    if texts != want["text_parts"]:
        problems.append(f"text parts {texts!r} != recorded {want['text_parts']!r}")
    if len(images) != want["n_image_parts"]:
        problems.append(f"{len(images)} image parts, recorded {want['n_image_parts']}")
    spec = want["image"]
    for j, url in enumerate(images):
        if not url.startswith(DATA_URL):
            problems.append(f"image {j}: url starts {url[:30]!r}")
            continue
        try:
            img = decode_png(url)
        except Exception as exc:  # noqa: BLE001 - reported as a mismatch
            problems.append(f"image {j}: not a valid PNG ({exc})")
            continue
        got = (img.format, img.size, img.mode)
        if got != (spec["format"], (spec["width"], spec["height"]), spec["mode"]):
            problems.append(f"image {j}: {got} != recorded {spec}")
    return problems


class ReplayServer:
    """Answers the recorded responses in order on 127.0.0.1, checking each request against its recording.

    A request that does not match (or comes after the last recording) gets a 400 whose message
    says why, so the client fails at once; ``mismatches`` keeps the reasons.
    """

    def __init__(self, exchanges: list[dict]):
        self.exchanges = exchanges
        self.requests: list[dict] = []
        self.mismatches: list[str] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    n = len(server.requests)
                    server.requests.append({"path": self.path, "body": body})
                if n >= len(server.exchanges):
                    status, headers, payload = 400, {}, {"error": {"message": "replay: no recorded exchange left"}}
                    server.mismatches.append(f"request {n}: unexpected")
                else:
                    ex = server.exchanges[n]
                    problems = request_mismatches(ex["request"], self.command, self.path, body)
                    if problems:
                        server.mismatches.append(f"request {n} ({ex['name']}): " + "; ".join(problems))
                        status, headers = 400, {}
                        payload = {"error": {"message": "cassette mismatch: " + "; ".join(problems)}}
                    else:
                        resp = ex["response"]
                        status, headers, payload = resp["status"], resp.get("headers", {}), resp["body"]
                server.statuses.append(status)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length",):
                        self.send_header(k, v)
                if "content-type" not in {k.lower() for k in headers}:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def replay():
    servers = []

    def start(prefix: str) -> ReplayServer:
        servers.append(ReplayServer(load_exchanges(prefix)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def gpt4o_on(server: ReplayServer, **kwargs) -> OpenAIChatModel:
    return OpenAIChatModel("gpt-4o", base_url=server.base_url, api_key="sk-test-not-a-real-key", **kwargs)


# ---------------------------------------------------------------- content parts

def test_content_parts_order_count_and_pixels():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = (np.arange(4 * 4 * 3).reshape(4, 4, 3) * 5).astype(np.uint8)
    parts = image_content_parts(f"A {IMAGE_PLACEHOLDER} B {IMAGE_PLACEHOLDER}{IMAGE_PLACEHOLDER} C",
                                [gray, rgb, gray[::-1]])
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "image_url", "text"]
    assert [p["text"] for p in parts if p["type"] == "text"] == ["A ", " B ", " C"]  # empty piece dropped
    imgs = [decode_png(p["image_url"]["url"]) for p in parts if p["type"] == "image_url"]
    assert [(i.format, i.mode, i.size) for i in imgs] == [("PNG", "L", (8, 8)), ("PNG", "RGB", (4, 4)),
                                                          ("PNG", "L", (8, 8))]
    assert np.array_equal(np.asarray(imgs[0]), gray) and np.array_equal(np.asarray(imgs[1]), rgb)
    assert np.array_equal(np.asarray(imgs[2]), gray[::-1])
    # nearest-neighbour upscale: every pixel becomes a 3x3 block, no new values
    big = decode_png(image_content_parts(IMAGE_PLACEHOLDER, [gray], size=24)[0]["image_url"]["url"])
    assert big.size == (24, 24) and np.array_equal(np.asarray(big), np.repeat(np.repeat(gray, 3, 0), 3, 1))
    assert Image.open(io.BytesIO(_png_bytes(rgb, size=12))).size == (12, 12)


def test_placeholder_and_image_counts_must_match():
    img = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"2 image placeholders .* but 3 images"):
        image_content_parts(f"{IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}", [img, img, img])
    with pytest.raises(ValueError, match=r"1 image placeholders .* but 0 images"):
        image_content_parts(f"x {IMAGE_PLACEHOLDER}", [])
    with pytest.raises(ValueError, match="uint8"):
        image_content_parts(IMAGE_PLACEHOLDER, [np.zeros((8, 8), dtype=np.float32)])
    with pytest.raises(ValueError, match="size=0"):
        image_content_parts(IMAGE_PLACEHOLDER, [img], size=0)


def test_episode_messages_hold_the_prompt_and_the_episode_images():
    imageset, ep = color_images(), color_episode()
    messages = image_episode_messages(ep, imageset)
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    parts = messages[1]["content"]
    assert parts[0]["text"].startswith("Cluster the following images into 2 clusters based on the color.")
    assert parts[-1] == {"type": "text", "text": " Labels:"}
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == ep.n_points == 4
    for url, i in zip(urls, ep.indices):
        assert np.array_equal(np.asarray(decode_png(url)), imageset.images[i])


# ---------------------------------------------------------------- predict_images on the replayed exchanges

def test_predict_images_parses_the_replayed_replies(no_env, replay):
    server = replay("digits/")
    eps, imageset = digit_episodes(), digit_images()
    m = gpt4o_on(server)
    preds = m.predict_images(eps, imageset, image_size=32)
    assert server.mismatches == []
    assert server.statuses == [200, 429, 200, 200] and len(server.requests) == 4
    assert [p.episode_id for p in preds] == ["ep0", "ep1", "ep2"]
    assert [p.labels for p in preds] == [[0, 1, 0, 1, 1], [1, 1, 0, 0, 2, 2], [0, 1, 1, -1]]
    assert [p.reply for p in preds] == ["[0, 1, 0, 1, 1]", "[1, 1, 0, 0, 2, 2]", "The labels are [0, 1, 1]"]
    assert [p.well_formed for p in preds] == [True, True, False]
    assert not any(p.cached for p in preds)
    assert [clustering_accuracy(e.labels, p.labels) for e, p in zip(eps, preds)] == [1.0, 1.0, 0.75]
    assert [p.usage for p in preds] == [{"prompt_tokens": 1342, "completion_tokens": 15},
                                        {"prompt_tokens": 1601, "completion_tokens": 18},
                                        {"prompt_tokens": 1086, "completion_tokens": 12}]
    assert m.usage == {"prompt_tokens": 1342 + 1601 + 1086, "completion_tokens": 45, "requests": 3}
    assert [r["body"]["max_tokens"] for r in server.requests] == [default_max_tokens(n) for n in (5, 6, 6, 4)]


def test_condition_and_unresized_rgb_images(no_env, replay):
    server = replay("colors/")
    ep = color_episode()
    preds = gpt4o_on(server).predict_images([ep], color_images())
    assert server.mismatches == [] and server.statuses == [200]
    assert preds[0].labels == [0, 0, 1, 1] and preds[0].well_formed
    assert clustering_accuracy(ep.labels, preds[0].labels) == 1.0


def test_recorded_rate_limit_is_retried(no_env, replay):
    server = replay("digits/ep1")  # the 429, then the success
    ep1 = digit_episodes()[1]
    m = gpt4o_on(server)
    preds = m.predict_images([ep1], digit_images(), image_size=32)  # the openai client's own retry
    assert server.mismatches == [] and server.statuses == [429, 200]
    assert server.requests[0]["body"] == server.requests[1]["body"]  # the same request, sent again
    assert preds[0].labels == [1, 1, 0, 0, 2, 2] and m.usage["requests"] == 1


def test_rate_limit_without_retries_reports_the_server_message(no_env, replay):
    server = replay("digits/ep1 (rate limited)")
    m = gpt4o_on(server, max_retries=0)
    with pytest.raises(RuntimeError, match=r"failed after 1 attempts.*HTTP 429.*Rate limit reached for gpt-4o"):
        m.predict_images([digit_episodes()[1]], digit_images(), image_size=32)
    assert server.mismatches == [] and len(server.requests) == 1


def test_second_run_is_served_from_the_cache(no_env, replay, tmp_path):
    server = replay("digits/")
    eps, imageset = digit_episodes(), digit_images()
    path = tmp_path / "replies.jsonl"
    first = gpt4o_on(server).predict_images(eps, imageset, cache=ReplyCache(path), image_size=32)
    assert len(server.requests) == 4 and server.mismatches == []

    again = gpt4o_on(server)  # a fresh process: reads the file
    second = again.predict_images(eps, imageset, cache=ReplyCache(path), image_size=32)
    assert len(server.requests) == 4  # no HTTP request at all
    assert [p.labels for p in second] == [p.labels for p in first]
    assert [p.reply for p in second] == [p.reply for p in first]
    assert [p.well_formed for p in second] == [True, True, False]
    assert all(p.cached for p in second) and again.cache_hits == 3 and again.usage["requests"] == 0

    text = path.read_text()
    assert "base64" not in text and "sk-test" not in text and len(text) < 3000  # no image data, no key
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["episode_id"] for r in records] == ["ep0", "ep1", "ep2"]
    digests = [_image_request(e, imageset, 32)[2] for e in eps]
    assert [r["images_sha256"] for r in records] == digests and len(set(digests)) == 3
    assert all(r["image_size"] == 32 and r["decoding"]["temperature"] == 0 for r in records)


def test_cache_key_covers_pixels_and_size_but_not_the_png_encoding():
    imageset, ep = digit_images(), digit_episodes()[0]
    messages, keyed, digest = _image_request(ep, imageset, 32)
    key_images = [p["image_url"] for p in keyed[1]["content"] if p["type"] == "image_url"]
    assert len(key_images) == 5 and all(set(k) == {"sha256"} and len(k["sha256"]) == 64 for k in key_images)
    # the same text parts as the request, with digests in place of the data URLs
    assert [p for p in keyed[1]["content"] if p["type"] == "text"] == \
           [p for p in messages[1]["content"] if p["type"] == "text"]
    assert _image_request(ep, imageset, 32)[1:] == (keyed, digest)  # deterministic
    assert _image_request(ep, imageset, 16)[2] != digest  # another size is another request
    changed = StandInImageSet(imageset.images.copy())
    changed.images[3, 0, 0] ^= 1  # one pixel of one image in the episode
    assert _image_request(ep, changed, 32)[2] != digest
    untouched = StandInImageSet(imageset.images.copy())
    untouched.images[14, 0, 0] ^= 1  # an image the episode does not use
    assert _image_request(ep, untouched, 32)[2] == digest


# ---------------------------------------------------------------- unavailable backend and bad arguments

def test_unavailable_without_key_or_base_url(no_env, tmp_path):
    m = OpenAIChatModel("gpt-4o")
    assert m.available is False and m._client is None
    cache = ReplyCache(tmp_path / "replies.jsonl")
    with pytest.raises(RuntimeError) as err:
        m.predict_images(digit_episodes(), digit_images(), cache=cache, image_size=32)
    assert str(err.value) == "skipped gpt-4o: set OPENAI_API_KEY or OPENAI_BASE_URL to run the GPT rows"
    assert str(err.value) == m.unavailable_reason
    assert len(cache) == 0 and not (tmp_path / "replies.jsonl").exists()
    assert m.usage == {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0} and m.cache_hits == 0


def test_bad_image_size_names_the_parameter(no_env, replay):
    server = replay("digits/ep0")
    with pytest.raises(ValueError, match=r"image_size=0 is out of range"):
        gpt4o_on(server).predict_images(digit_episodes()[:1], digit_images(), image_size=0)
    assert server.requests == []


def test_the_replay_server_refuses_a_request_unlike_the_recording(no_env, replay):
    server = replay("digits/ep0")
    with pytest.raises(RuntimeError, match=r"HTTP 400.*cassette mismatch.*\(16, 16\)"):
        gpt4o_on(server).predict_images(digit_episodes()[:1], digit_images(), image_size=16)
    assert len(server.requests) == 1 and len(server.mismatches) == 1
    assert "image 0: ('PNG', (16, 16), 'L') != recorded" in server.mismatches[0]
