"""The OpenAI-compatible backend: against a stdlib stub server, and against a real `transformers serve`."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from icc_utils.api import OpenAIChatModel, default_max_tokens, safe_url, server_label
from icc_utils.backends import parse_served, served_display_name
from icc_utils.cache import ReplyCache
from icc_utils.data import generate_episode
from icc_utils.models import display_name, get_backend, model_kind

SECRET = "sk-test-THIS-KEY-MUST-NEVER-BE-SHOWN-0123456789"


# ---------------------------------------------------------------- stub server

class StubServer:
    """A tiny OpenAI chat-completions server on 127.0.0.1 with scripted failures.

    ``script``: (status, body) pairs answered first, in order (a ``bytes`` body is sent as it is,
    as ``text/plain``); after that every request gets a 200 whose reply is a list of zeros as long
    as the episode. Error responses carry ``retry-after-ms: 1``. ``requests`` records each
    request's path, headers and JSON body.
    """

    def __init__(self):
        self.script: list[tuple[int, dict]] = []
        self.requests: list[dict] = []
        self.delay = 0.0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                stub.requests.append({"path": self.path, "headers": headers, "body": body})
                if stub.delay:
                    time.sleep(stub.delay)
                status, payload = stub.script.pop(0) if stub.script else (200, stub.completion(body))
                raw = isinstance(payload, bytes)
                data = payload if raw else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain" if raw else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status != 200:  # the client's own retries honour it: keeps the tests fast
                        self.send_header("retry-after-ms", "1")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @staticmethod
    def completion(body: dict) -> dict:
        user = body["messages"][-1]["content"]
        data = user[user.index("Data: ") + 6:user.index(" Labels:")]
        n = len(json.loads(data))
        reply = "[" + ", ".join("0" for _ in range(n)) + "]"
        return {"id": "stub", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply}}],
                "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": 2 * n,
                          "total_tokens": len(user) // 4 + 2 * n}}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stub():
    server = StubServer()
    yield server
    server.close()


@pytest.fixture
def no_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ICC_SERVED_API_KEY", "ICC_API_TIMEOUT", "ICC_API_MAX_RETRIES",
                 "ICC_API_MAX_WORKERS"):
        monkeypatch.delenv(name, raising=False)


def episodes(k: int = 3, n_points: int = 6):
    return [generate_episode(seed=100 + i, distribution="gaussian", n_clusters=2, dim=2, n_points=n_points,
                             episode_id=f"ep{i}") for i in range(k)]


def model_on(stub: StubServer, **kwargs) -> OpenAIChatModel:
    return OpenAIChatModel("stub-model", base_url=stub.base_url, **kwargs)


ERROR = {"error": {"message": "boom", "type": "server_error"}}


# ---------------------------------------------------------------- availability and configuration

def test_unavailable_without_key_or_base_url(no_env):
    m = OpenAIChatModel("gpt-4o")
    assert m.available is False
    assert "OPENAI_API_KEY" in m.unavailable_reason and "gpt-4o" in m.unavailable_reason
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        m.predict(episodes(1))
    assert get_backend("gpt-4o-mini").available is False


def test_environment_supplies_base_url_and_key(no_env, monkeypatch, stub):
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    m = get_backend("openai:served")
    assert m.available and m.model == "served" and m.server == f"127.0.0.1:{stub.port}"
    assert m.name == f"served@127.0.0.1:{stub.port}" == display_name("openai:served")
    assert SECRET not in repr(m)
    m.chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
    assert stub.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"


def test_base_url_without_key_sends_a_placeholder(no_env, stub):
    m = model_on(stub)
    assert m.available
    m.chat([{"role": "user", "content": "Data: [[1.0], [2.0]] Labels:"}], max_tokens=7)
    req = stub.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer EMPTY"
    assert req["body"]["temperature"] == 0 and req["body"]["max_tokens"] == 7


def test_bad_arguments_name_the_parameter(no_env, monkeypatch):
    with pytest.raises(ValueError, match="max_retries"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", max_retries=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", max_tokens=0)
    with pytest.raises(ValueError, match="timeout=0 .* > 0"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", timeout=0)
    with pytest.raises(ValueError, match="max_workers"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", max_workers=0)
    with pytest.raises(ValueError, match="model="):
        OpenAIChatModel("", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="constrained"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1").predict(episodes(1), constrained=True)
    monkeypatch.setenv("ICC_API_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="ICC_API_TIMEOUT='soon'"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1")


def test_server_label():
    assert server_label(None) == "openai"
    assert server_label("https://api.openai.com/v1") == "openai"
    assert server_label("http://user:pw@10.0.0.5:8000/v1") == "10.0.0.5:8000"
    assert server_label("http://10.0.0.5:8000/b/v1") == "10.0.0.5:8000/b/v1"
    assert safe_url("http://user:pw@10.0.0.5:8000/v1") == "http://10.0.0.5:8000/v1"
    assert safe_url(None) == "https://api.openai.com/v1"


def test_settings_come_from_the_constructor_then_the_environment(no_env, monkeypatch):
    m = OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1")
    assert (m.timeout, m.max_retries, m.max_workers) == (60.0, 3, 1)
    monkeypatch.setenv("ICC_API_TIMEOUT", "2.5")
    monkeypatch.setenv("ICC_API_MAX_RETRIES", "0")
    monkeypatch.setenv("ICC_API_MAX_WORKERS", "4")
    m = OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1")
    assert (m.timeout, m.max_retries, m.max_workers) == (2.5, 0, 4)
    assert OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", max_retries=2).max_retries == 2


# ---------------------------------------------------------------- served models under their own names

def test_served_model_names():
    url = "http://127.0.0.1:8000/v1"
    assert parse_served(f"served:/abs/path/SmolLM2-135M-Instruct@{url}") == ("/abs/path/SmolLM2-135M-Instruct", url)
    assert parse_served(f"served:HuggingFaceTB/SmolLM2-135M-Instruct@{url}/") == ("HuggingFaceTB/SmolLM2-135M-Instruct", url)
    assert parse_served("embedded") is None
    with pytest.raises(ValueError, match="served:<served model name>@<base URL>"):
        parse_served("served:no-url")
    assert model_kind(f"served:m@{url}") == "openai"
    assert display_name(f"served:/abs/path/SmolLM2-135M-Instruct@{url}") == "SmolLM2-135M-Instruct@127.0.0.1:8000"
    assert display_name("embedded") == "SmolLM2-135M-Instruct"  # never the served name
    assert served_display_name("gpt-4o", None) == "gpt-4o"
    assert served_display_name("m", "http://h:1/a/v1") != served_display_name("m", "http://h:1/b/v1")


def test_served_model_gets_its_own_key_never_the_openai_key(no_env, monkeypatch, stub):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    m = get_backend(f"served:stub-model@{stub.base_url}")
    m.chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
    assert stub.requests[-1]["headers"]["authorization"] == "Bearer EMPTY"
    monkeypatch.setenv("ICC_SERVED_API_KEY", "served-key")
    get_backend(f"served:stub-model@{stub.base_url}").chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
    assert stub.requests[-1]["headers"]["authorization"] == "Bearer served-key"
    assert m.name == f"stub-model@127.0.0.1:{stub.port}" and stub.requests[-1]["body"]["model"] == "stub-model"


# ---------------------------------------------------------------- retries and errors (the openai client's own)

def test_one_retry_system_the_clients_own(no_env, stub):
    m = model_on(stub, max_retries=2, timeout=7.0)
    assert m._client.max_retries == 2 and m._client.timeout == 7.0
    assert not hasattr(m, "backoff") and not hasattr(m, "sleep")


def test_retries_429_then_500_then_succeeds(no_env, stub):
    stub.script = [(429, {"error": {"message": "slow down", "type": "rate_limit"}}), (500, ERROR)]
    m = model_on(stub)
    reply, usage = m.chat([{"role": "user", "content": "Data: [[1.0], [2.0], [3.0]] Labels:"}])
    assert reply == "[0, 0, 0]" and usage["completion_tokens"] == 6
    assert len(stub.requests) == 3
    assert m.usage["requests"] == 1  # failed attempts bill nothing


def test_gives_up_after_max_retries_naming_the_server(no_env, stub):
    stub.script = [(503, ERROR)] * 3
    m = model_on(stub, max_retries=2)
    with pytest.raises(RuntimeError, match=r"failed after 3 attempts.*HTTP 503.*boom") as err:
        m.chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
    assert stub.base_url in str(err.value) and "stub-model" in str(err.value)
    assert len(stub.requests) == 3


def test_timeout_is_retried(no_env, stub):
    stub.delay = 1.0
    m = model_on(stub, timeout=0.2, max_retries=1)
    with pytest.raises(RuntimeError, match="timed out"):
        m.chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
    assert len(stub.requests) == 2


def test_a_hung_server_fails_within_the_bound_set_in_the_environment(no_env, stub, monkeypatch):
    """ICC_API_TIMEOUT / ICC_API_MAX_RETRIES bound a hung server: (1 + 1) x 0.3 s plus the client's backoff."""
    stub.delay = 30.0
    monkeypatch.setenv("ICC_API_TIMEOUT", "0.3")
    monkeypatch.setenv("ICC_API_MAX_RETRIES", "1")
    m = model_on(stub)
    outcome = {}

    def ask():
        try:
            m.chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout=10.0)
    assert not worker.is_alive(), "the request was still hanging after 10 s"
    assert time.monotonic() - t0 < 5.0
    assert "timed out" in outcome["error"] and "timeout=0.3 s" in outcome["error"]


def test_connection_error_is_retried_then_reported(no_env):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = OpenAIChatModel("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(RuntimeError, match=rf"127.0.0.1:{port}.*failed after 2 attempts.*connection error"):
        m.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("status", [401, 403])
def test_authentication_error_stops_at_once_without_showing_the_key(no_env, stub, status):
    stub.script = [(status, {"error": {"message": f"Incorrect API key provided: {SECRET}",
                                       "type": "invalid_request_error", "code": "invalid_api_key"}})]
    m = model_on(stub, api_key=SECRET)
    with pytest.raises(RuntimeError) as err:
        m.chat([{"role": "user", "content": "hi"}])
    text = str(err.value)
    assert "OPENAI_API_KEY" in text and "stub-model" in text and stub.base_url in text
    assert SECRET not in text and SECRET[:12] not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert len(stub.requests) == 1


def test_other_client_errors_raise_with_the_server_message(no_env, stub):
    stub.script = [(404, {"error": {"message": "The model `nope` does not exist", "type": "invalid_request_error"}})]
    m = model_on(stub)
    with pytest.raises(RuntimeError, match=r"HTTP 404.*does not exist"):
        m.chat([{"role": "user", "content": "hi"}])
    assert len(stub.requests) == 1


def test_insufficient_quota_is_not_retried(no_env, stub):
    stub.script = [(429, {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}})]
    m = model_on(stub)
    with pytest.raises(RuntimeError, match="quota"):
        m.chat([{"role": "user", "content": "hi"}])
    assert len(stub.requests) == 1


MALFORMED = [
    (200, {"foo": "bar"}),
    (200, {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                      "content": None}}]}),
    (200, {"choices": []}),
    (200, [1, 2, 3]),
    (200, b"this is not JSON"),
    (200, b'{"choices": [{"message": {"content": "[0, 0]"'),
]


@pytest.mark.parametrize("bad", MALFORMED, ids=["not-a-completion", "null-content", "no-choices", "json-list",
                                                 "text-plain", "cut-json"])
def test_a_malformed_200_is_retried_and_never_cached(no_env, stub, tmp_path, bad):
    ep = episodes(1, n_points=2)
    stub.script = [bad]
    cache = ReplyCache(tmp_path / "replies.jsonl")
    preds = model_on(stub, max_retries=1).predict(ep, cache=cache)
    assert len(stub.requests) == 2  # the bad body, then the retry's good one
    assert preds[0].reply == "[0, 0]" and preds[0].well_formed
    assert [json.loads(line)["reply"] for line in (tmp_path / "replies.jsonl").read_text().splitlines()] == ["[0, 0]"]


def test_malformed_bodies_to_the_end_name_the_server_and_the_model(no_env, stub, tmp_path):
    stub.script = [(200, {"foo": "bar"}), (200, b"plain text")]
    cache = ReplyCache(tmp_path / "replies.jsonl")
    with pytest.raises(RuntimeError, match=r"stub-model.*127\.0\.0\.1.*failed after 2 attempts.*malformed reply.*not JSON"):
        model_on(stub, max_retries=1).predict(episodes(1), cache=cache)
    assert len(cache) == 0 and not (tmp_path / "replies.jsonl").exists()


def test_a_json_completion_served_as_text_plain_is_read(no_env, stub):
    body = StubServer.completion({"model": "m", "messages": [{"role": "user", "content": "Data: [[1.0]] Labels:"}]})
    stub.script = [(200, json.dumps(body).encode())]
    reply, _ = model_on(stub, max_retries=0).chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
    assert reply == "[0]" and len(stub.requests) == 1


def test_content_lists_pass_through_unchanged(no_env, stub):
    content = [{"type": "text", "text": "Data: [[1.0], [2.0]] Labels:"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    stub.script = [(200, StubServer.completion({"model": "m", "messages": [
        {"role": "user", "content": "Data: [[1.0], [2.0]] Labels:"}]}))]
    model_on(stub).chat([{"role": "user", "content": content}])
    assert stub.requests[0]["body"]["messages"][0]["content"] == content


# ---------------------------------------------------------------- predict, usage and cache

def test_predict_parses_counts_usage_and_caps_tokens(no_env, stub):
    eps = episodes(3, n_points=6)
    m = model_on(stub)
    preds = m.predict(eps)
    assert [p.episode_id for p in preds] == ["ep0", "ep1", "ep2"]
    assert all(p.labels == [0] * 6 and p.well_formed and not p.cached for p in preds)
    assert m.usage["requests"] == 3 and m.usage["completion_tokens"] == 3 * 12
    assert m.usage["prompt_tokens"] == sum(p.usage["prompt_tokens"] for p in preds) > 0
    assert all(r["body"]["max_tokens"] == default_max_tokens(6) for r in stub.requests)
    assert "3 requests" in m.usage_report() and "stub-model" in m.usage_report()
    unknown = m.predict(eps[:1], known_k=False)
    assert "into 2 clusters" not in stub.requests[-1]["body"]["messages"][-1]["content"]
    assert unknown[0].well_formed


def test_second_predict_is_served_from_the_cache(no_env, stub, tmp_path):
    eps = episodes(3)
    first = model_on(stub, api_key=SECRET).predict(eps, cache=ReplyCache(tmp_path / "replies.jsonl"))
    assert len(stub.requests) == 3
    assert SECRET not in (tmp_path / "replies.jsonl").read_text()
    again = model_on(stub)  # a fresh process: reads the file
    second = again.predict(eps, cache=ReplyCache(tmp_path / "replies.jsonl"))
    assert len(stub.requests) == 3  # no new request
    assert all(p.cached for p in second) and again.usage["requests"] == 0 and again.cache_hits == 3
    assert [p.labels for p in second] == [p.labels for p in first]
    assert [p.reply for p in second] == [p.reply for p in first]


def test_interrupted_run_resumes_losing_nothing(no_env, stub, tmp_path):
    eps = episodes(5)
    path = tmp_path / "replies.jsonl"
    stub.script = [(200, StubServer.completion(_body(eps[0]))), (200, StubServer.completion(_body(eps[1]))),
                   (400, {"error": {"message": "simulated crash"}})]
    with pytest.raises(RuntimeError, match="simulated crash"):
        model_on(stub).predict(eps, cache=ReplyCache(path))
    assert len(ReplyCache(path)) == 2  # the two answered replies were written as they arrived
    n_before = len(stub.requests)
    resumed = model_on(stub).predict(eps, cache=ReplyCache(path))
    assert len(stub.requests) - n_before == 3  # only the unanswered episodes were asked
    assert [p.cached for p in resumed] == [True, True, False, False, False]
    fresh = model_on(stub).predict(eps)  # an uninterrupted run, without a cache
    assert [p.labels for p in resumed] == [p.labels for p in fresh]


def test_the_cache_key_holds_the_full_base_url(no_env, stub, tmp_path):
    """Two endpoints on one host and port (different paths) never share replies."""
    eps = episodes(2)
    cache = ReplyCache(tmp_path / "replies.jsonl")
    a = OpenAIChatModel("stub-model", base_url=f"http://127.0.0.1:{stub.port}/a/v1")
    b = OpenAIChatModel("stub-model", base_url=f"http://127.0.0.1:{stub.port}/b/v1")
    a.predict(eps, cache=cache)
    assert len(stub.requests) == 2
    b.predict(eps, cache=cache)
    assert len(stub.requests) == 4 and b.cache_hits == 0 and len(cache) == 4
    assert [r["path"] for r in stub.requests] == ["/a/v1/chat/completions"] * 2 + ["/b/v1/chat/completions"] * 2
    assert a.name != b.name


def test_parallel_workers_keep_order_and_cache_everything(no_env, stub, tmp_path):
    eps = episodes(6)
    cache = ReplyCache(tmp_path / "replies.jsonl")
    preds = model_on(stub, max_workers=3).predict(eps, cache=cache)
    assert [p.episode_id for p in preds] == [e.id for e in eps] and len(cache) == 6


def _body(ep) -> dict:
    from icc_utils.prompts import episode_messages
    return {"model": "stub-model", "messages": episode_messages(ep)}


# ---------------------------------------------------------------- a real `transformers serve`

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_healthy(proc: subprocess.Popen, port: int, log_path, deadline_s: float = 300.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with code {proc.returncode}:\n"
                               f"{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"transformers serve did not answer /health within {deadline_s:.0f} s:\n"
                       f"{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory):
    """`transformers serve <embedded model dir>` on 127.0.0.1:<free port>, offline; stopped afterwards."""
    from icc_utils.models import embedded_model_dir

    model_dir = str(embedded_model_dir())
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env["OMP_NUM_THREADS"] = "1"  # the CPU is shared (2 cores, other tests): one thread is fastest under load
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", model_dir,
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_until_healthy(proc, port, log_path)
        yield {"model": model_dir, "base_url": f"http://127.0.0.1:{port}/v1", "log": log_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def test_against_a_real_transformers_serve(no_env, transformers_server, tmp_path):
    eps = episodes(2, n_points=5)
    m = OpenAIChatModel(model=transformers_server["model"], base_url=transformers_server["base_url"],
                        timeout=60.0, max_retries=1)
    assert m.available
    cache = ReplyCache(tmp_path / "replies.jsonl")
    preds = m.predict(eps, cache=cache)
    assert len(preds) == 2 and [p.episode_id for p in preds] == ["ep0", "ep1"]
    assert all(isinstance(p.reply, str) and len(p.labels) == 5 for p in preds)
    assert m.usage["requests"] == 2 and m.usage["prompt_tokens"] > 0 and m.usage["completion_tokens"] > 0
    assert all(0 < p.usage["completion_tokens"] <= default_max_tokens(5) for p in preds)
    again = OpenAIChatModel(model=transformers_server["model"], base_url=transformers_server["base_url"])
    assert [p.reply for p in again.predict(eps, cache=cache)] == [p.reply for p in preds]
    assert again.usage["requests"] == 0


def test_served_and_local_rows_stay_apart(no_env, transformers_server, tmp_path, monkeypatch):
    """notebook 01's evaluate_models with the local embedded model and the same model served: two row names."""
    import icc_utils
    from icc_utils import evaluate as E

    monkeypatch.setattr(icc_utils, "RESULTS_DIR", tmp_path / "results")
    served = f"served:{transformers_server['model']}@{transformers_server['base_url']}"
    backends = E.build_backends(["embedded", served, "kmeans"],
                                local_kwargs={"dtype": "float32", "batch_size": 2, "threads": 1},
                                api_kwargs={"timeout": 60.0, "max_retries": 1})
    eps = episodes(2, n_points=5)
    rows = E.evaluate_models(backends, eps, "served-test", constrained_modes=(False,))
    port = transformers_server["base_url"].split(":")[2].split("/")[0]
    counts = rows.groupby(["model", "method"]).size().to_dict()
    assert counts == {("SmolLM2-135M-Instruct", "zero-shot"): 2,
                      (f"SmolLM2-135M-Instruct@127.0.0.1:{port}", "zero-shot"): 2, ("kmeans", "kmeans"): 2}
    replies = sorted(p.name for p in (tmp_path / "results" / "served-test" / "replies").iterdir())
    assert replies == ["SmolLM2-135M-Instruct.jsonl", f"SmolLM2-135M-Instruct_127.0.0.1_{port}.jsonl"]
