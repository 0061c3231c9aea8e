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
from icc_utils.cache import ReplyCache
from icc_utils.data import generate_episode
from icc_utils.models import get_backend

SECRET = "sk-test-THIS-KEY-MUST-NEVER-BE-SHOWN-0123456789"


# ---------------------------------------------------------------- stub server

class StubServer:
    """A tiny OpenAI chat-completions server on 127.0.0.1 with scripted failures.

    ``script``: (status, body) pairs answered first, in order; after that every request gets
    a 200 whose reply is a list of zeros as long as the episode. ``requests`` records each
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
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
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
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def episodes(k: int = 3, n_points: int = 6):
    return [generate_episode(seed=100 + i, distribution="gaussian", n_clusters=2, dim=2, n_points=n_points,
                             episode_id=f"ep{i}") for i in range(k)]


def model_on(stub: StubServer, **kwargs) -> OpenAIChatModel:
    m = OpenAIChatModel("stub-model", base_url=stub.base_url, **kwargs)
    m.sleeps = []
    m.sleep = m.sleeps.append  # record, don't wait
    return m


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
    assert m.available and m.name == "served" and m.server == f"127.0.0.1:{stub.port}"
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


def test_bad_arguments_name_the_parameter(no_env):
    with pytest.raises(ValueError, match="max_retries"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", max_retries=-1)
    with pytest.raises(ValueError, match="max_tokens"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", max_tokens=0)
    with pytest.raises(ValueError, match="timeout=0 .* > 0"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", timeout=0)
    with pytest.raises(ValueError, match="model="):
        OpenAIChatModel("", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="constrained"):
        OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1").predict(episodes(1), constrained=True)


def test_server_label():
    assert server_label(None) == "openai"
    assert server_label("https://api.openai.com/v1") == "openai"
    assert server_label("http://user:pw@10.0.0.5:8000/v1") == "10.0.0.5:8000"
    assert safe_url("http://user:pw@10.0.0.5:8000/v1") == "http://10.0.0.5:8000/v1"
    assert safe_url(None) == "https://api.openai.com/v1"


# ---------------------------------------------------------------- retries and errors

def test_retries_429_then_500_then_succeeds_with_growing_backoff(no_env, stub):
    stub.script = [(429, {"error": {"message": "slow down", "type": "rate_limit"}}), (500, ERROR)]
    m = model_on(stub)
    reply, usage = m.chat([{"role": "user", "content": "Data: [[1.0], [2.0], [3.0]] Labels:"}])
    assert reply == "[0, 0, 0]" and usage["completion_tokens"] == 6
    assert len(stub.requests) == 3
    assert len(m.sleeps) == 2 and m.sleeps[1] > m.sleeps[0] >= m.backoff_base
    assert m.usage["requests"] == 1  # failed attempts bill nothing


def test_backoff_is_seeded_and_capped(no_env):
    a = OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", backoff_base=1.0, backoff_max=5.0)
    b = OpenAIChatModel("m", base_url="http://127.0.0.1:1/v1", backoff_base=1.0, backoff_max=5.0)
    waits = [a.backoff(i) for i in range(8)]
    assert waits == [b.backoff(i) for i in range(8)]
    assert all(w <= 5.0 for w in waits) and waits[-1] == 5.0 and waits[1] > waits[0]


def test_gives_up_after_max_retries_naming_the_server(no_env, stub):
    stub.script = [(503, ERROR)] * 3
    m = model_on(stub, max_retries=2)
    with pytest.raises(RuntimeError, match=r"failed after 3 attempts.*HTTP 503") as err:
        m.chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
    assert stub.base_url in str(err.value)
    assert len(stub.requests) == 3 and len(m.sleeps) == 2


def test_timeout_is_retried(no_env, stub):
    stub.delay = 1.0
    m = model_on(stub, timeout=0.2, max_retries=1)
    with pytest.raises(RuntimeError, match="timed out"):
        m.chat([{"role": "user", "content": "Data: [[1.0]] Labels:"}])
    assert len(m.sleeps) == 1


def test_connection_error_is_retried_then_reported(no_env):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = OpenAIChatModel("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    m.sleeps = []
    m.sleep = m.sleeps.append
    with pytest.raises(RuntimeError, match=rf"127.0.0.1:{port}.*connection error"):
        m.chat([{"role": "user", "content": "hi"}])
    assert len(m.sleeps) == 2


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
    assert len(stub.requests) == 1 and m.sleeps == []


def test_other_client_errors_raise_with_the_server_message(no_env, stub):
    stub.script = [(404, {"error": {"message": "The model `nope` does not exist", "type": "invalid_request_error"}})]
    m = model_on(stub)
    with pytest.raises(RuntimeError, match=r"HTTP 404.*does not exist"):
        m.chat([{"role": "user", "content": "hi"}])
    assert len(stub.requests) == 1 and m.sleeps == []


def test_insufficient_quota_is_not_retried(no_env, stub):
    stub.script = [(429, {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}})]
    m = model_on(stub)
    with pytest.raises(RuntimeError, match="quota"):
        m.chat([{"role": "user", "content": "hi"}])
    assert len(stub.requests) == 1


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


def _wait_until_healthy(proc: subprocess.Popen, port: int, log_path, deadline_s: float = 90.0) -> None:
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
