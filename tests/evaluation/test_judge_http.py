"""The LLM judge against hostile servers on 127.0.0.1 (issue 28): redirects that would carry the key
elsewhere, replies dripped a byte at a time, endless bodies and deeply nested JSON.

Each server answers every request with a scripted `answer(handler)` and records what it received.
Every misbehaviour is bounded in time (`MISBEHAVE_S`), so a client without the protections fails
these tests instead of hanging them.
"""

import json
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.evaluation.judge import Judge, JudgeConfig

SECRET = "sk-test-do-not-leak-0123456789"
MISBEHAVE_S = 3.0  # how long a hostile server keeps it up: longer than any deadline below
MIB = 2**20
LIMIT_MIB = 4  # the body limit, as the error messages name it


class Scripted(BaseHTTPRequestHandler):
    """Records each request as (method, path, headers, body), then answers with the server's script."""

    def answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        try:
            self.server.script(self)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on us, as it should
            pass

    do_GET = do_POST = answer

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def serve(monkeypatch):
    """serve(script) -> (requests, "http://127.0.0.1:<port>") of a new server answering with script(handler)."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # a proxy must not stand between the test and its server
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    servers = []

    def start(script):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
        server.script, server.requests, server.stopped = script, [], threading.Event()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server.requests, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.stopped.set()  # wakes scripts still misbehaving
        server.shutdown()
        server.server_close()


def config(url, **overrides):
    return JudgeConfig(url + "/v1", "fake-judge", key_env="JUDGE_KEY",
                       **{"backoff_s": 0.0, "timeout_s": 5.0, "retries": 0, "workers": 1, **overrides})


def judge_once(judge_config):
    """The one sample's Judgment (judged in both orders) and the seconds it took."""
    start = time.monotonic()
    [judgment] = Judge(judge_config).judge(["q"], ["a"], ["b"])
    return judgment, time.monotonic() - start


def has_key(headers) -> bool:
    return any(name.lower() == "authorization" for name in headers)


# ------------------------------------------------------------------ scripts

def send(handler, status, body=b"", headers=()):
    handler.send_response(status)
    for name, value in dict(headers).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def chat_completion(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


def always_a(handler):
    """A judge that prefers the first answer: [[A]] in both orders makes the sample a 0.5."""
    send(handler, 200, chat_completion("[[A]]"), {"Content-Type": "application/json"})


def redirect(status, location):
    return lambda handler: send(handler, status, headers={"Location": location})


def on_v1(script, otherwise=always_a):
    """Answers requests under /v1/ with `script`, any other with `otherwise`."""
    return lambda handler: (script if handler.path.startswith("/v1/") else otherwise)(handler)


def drip(head_too: bool):
    """A reply one byte every 0.3 s: each read waits less than any timeout, the whole never ends."""
    def script(handler):
        if head_too:
            data = b"HTTP/1.0 200 OK\r\nX-Drip: " + b"a" * 1000
        else:
            handler.send_response(200)
            handler.end_headers()  # no Content-Length: the body ends when the connection does
            data = b" " * 1000
        stop = time.monotonic() + MISBEHAVE_S
        for byte in data:
            if time.monotonic() > stop or handler.server.stopped.wait(0.3):
                return
            handler.wfile.write(bytes([byte]))
    return script


def endless(chunked: bool):
    """A body streamed as fast as the client reads it, until MISBEHAVE_S or 64 MiB."""
    block = b"x" * 2**16

    def script(handler):
        if chunked:
            handler.protocol_version = "HTTP/1.1"
            handler.close_connection = True
        handler.send_response(200)
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        frame = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
        stop = time.monotonic() + MISBEHAVE_S
        for _ in range(64 * MIB // len(block)):
            if time.monotonic() > stop:
                break
            handler.wfile.write(frame)
        if chunked:
            handler.wfile.write(b"0\r\n\r\n")
    return script


# ------------------------------------------------------------------ redirects

@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_to_another_origin_is_refused_and_gets_nothing(serve, status):
    other_requests, other = serve(always_a)
    requests, url = serve(redirect(status, f"{other}/v1/chat/completions"))
    judgment, _ = judge_once(config(url))
    assert other_requests == []  # neither the key nor the prompts went there
    assert judgment.score is None  # and its verdict is not counted
    assert f"redirected to another origin, '{other}/v1/chat/completions'" in judgment.error
    assert "--judge_follow_redirects" in judgment.error and SECRET not in judgment.error
    assert len(requests) == 1  # every request would be redirected: the other order is not sent
    assert "not sent" in judgment.error


def test_the_same_server_under_another_name_is_another_origin(serve):
    def to_localhost(handler):
        redirect(307, f"http://localhost:{handler.server.server_address[1]}/v2/chat/completions")(handler)

    requests, url = serve(on_v1(to_localhost))
    judgment, _ = judge_once(config(url))
    assert [path for _, path, _, _ in requests] == ["/v1/chat/completions"]
    assert judgment.score is None and "redirected to another origin" in judgment.error


@pytest.mark.parametrize("status, method", [(302, "GET"), (307, "POST")])
def test_with_the_opt_in_a_cross_origin_redirect_is_followed_without_the_key(serve, status, method):
    other_requests, other = serve(always_a)
    requests, url = serve(redirect(status, f"{other}/v1/chat/completions"))
    judgment, _ = judge_once(config(url, follow_cross_origin_redirects=True))
    assert judgment.score == 0.5 and judgment.error is None  # the other server's verdicts count
    assert [m for m, _, _, _ in other_requests] == [method] * 2  # 302 turns the POST into a GET, 307 keeps it
    assert not any(has_key(headers) for _, _, headers, _ in other_requests)
    assert all(headers["Authorization"] == f"Bearer {SECRET}" for _, _, headers, _ in requests)  # the origin's


def test_a_same_origin_redirect_is_followed_with_the_key(serve):
    requests, url = serve(on_v1(redirect(308, "/v2/chat/completions")))
    judgment, _ = judge_once(config(url))
    assert judgment.score == 0.5 and judgment.error is None
    assert [path for _, path, _, _ in requests] == ["/v1/chat/completions", "/v2/chat/completions"] * 2
    assert all(headers["Authorization"] == f"Bearer {SECRET}" for _, _, headers, _ in requests)


def test_a_redirect_loop_ends_after_five_redirects(serve):
    requests, url = serve(redirect(307, "/v1/chat/completions"))
    judgment, _ = judge_once(config(url, retries=2))
    assert judgment.score is None and judgment.error.count("more than 5 redirects (not retried)") == 2
    assert len(requests) == 2 * 6  # both orders: the request and its 5 redirects, once


def test_a_redirect_leaves_only_for_http_or_https(serve):
    requests, url = serve(redirect(307, "file:///etc/passwd"))
    judgment, _ = judge_once(config(url, follow_cross_origin_redirects=True))
    assert judgment.score is None and "redirected to 'file:///etc/passwd'" in judgment.error
    assert "not an http:// or https:// URL" in judgment.error


def test_an_origin_is_scheme_host_and_port():
    from alignlab.evaluation.http_client import origin

    assert origin("https://api.example.com/v1") != origin("http://api.example.com/v1")  # https -> http: no key
    assert origin("https://api.example.com/v1") == origin("https://API.example.com:443/v2")
    assert origin("http://127.0.0.1/v1") == origin("http://127.0.0.1:80") != origin("http://127.0.0.1:8000")
    assert origin("http://127.0.0.1:8000") != origin("http://localhost:8000")


# ------------------------------------------------------------------ time and memory

@pytest.mark.parametrize("head_too", [False, True], ids=["body", "headers"])
def test_a_dripping_server_times_out_by_the_whole_request(serve, head_too):
    requests, url = serve(drip(head_too))
    judgment, seconds = judge_once(config(url, timeout_s=0.6, retries=1, workers=2))
    assert judgment.score is None and judgment.error.count("timed out after 0.6 s (after 2 attempts)") == 2
    assert len(requests) == 2 * 2  # timeouts are retried, as before
    assert seconds < 0.6 * 2 + 1.0  # two attempts in each order (the orders run side by side), plus slack


@pytest.mark.parametrize("chunked", [False, True], ids=["until-closed", "chunked"])
def test_an_endless_body_is_cut_off_at_the_limit(serve, chunked):
    requests, url = serve(endless(chunked))
    tracemalloc.start()
    try:
        judgment, _ = judge_once(config(url))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert judgment.score is None
    assert judgment.error.count(f"reply over the {LIMIT_MIB} MiB limit, not read further (not retried)") == 2
    assert peak < 2 * LIMIT_MIB * MIB  # the body read so far, never the stream
    assert len(requests) == 2


def test_a_content_length_over_the_limit_is_refused_before_reading(serve):
    def announce_a_huge_body(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(LIMIT_MIB * MIB + 1))
        handler.end_headers()
        handler.server.stopped.wait(MISBEHAVE_S)  # and send none of it: reading would wait for the timeout

    requests, url = serve(announce_a_huge_body)
    judgment, seconds = judge_once(config(url, timeout_s=2.0))
    assert judgment.error.count(f"reply of {LIMIT_MIB * MIB + 1} bytes refused: over the {LIMIT_MIB} MiB limit") == 2
    assert seconds < 1.0


# ------------------------------------------------------------------ replies

@pytest.mark.parametrize("status, reason", [(200, "malformed reply"), (500, "HTTP 500")])
def test_deeply_nested_json_is_a_malformed_reply(serve, status, reason):
    requests, url = serve(lambda handler: send(handler, status, b"[" * 100_000))
    judgment, _ = judge_once(config(url, retries=1))
    assert judgment.score is None and judgment.error.count(reason) == 2
    assert len(requests) == 2 * 2  # retried like any malformed reply or server error


def json_like(max_leaves=20):
    """JSON texts, mostly chat completions, some broken or nested, and stray bytes."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.sampled_from(
        ["[[A]]", "[[B]]", "[[C]]", "x [[A]] y [[B]]", "[[A]] [[A]]"])
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.sampled_from(["choices", "message", "content", "error", "x"]), inner,
                                          max_size=3), max_leaves=max_leaves)
    completions = values.map(lambda content: {"choices": [{"message": {"content": content}}]})
    texts = (values | completions).map(lambda value: json.dumps(value, allow_nan=True))
    return st.one_of(
        texts.map(str.encode),
        st.tuples(texts, st.integers(0, 50), st.integers(0, 50)).map(lambda t: t[0].encode()[t[1]:len(t[0]) - t[2]]),
        st.integers(0, 5000).map(lambda depth: b"[" * depth + b"]" * (depth % 3)),
        st.binary(max_size=200))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=json_like())
def test_any_reply_body_is_a_verdict_or_a_malformed_reply(raw):
    from alignlab.evaluation.judge import MalformedReply, verdict_of_reply

    try:
        verdict = verdict_of_reply(raw)
    except MalformedReply as malformed:
        assert str(malformed).startswith("malformed reply")
    else:
        assert verdict in ("A", "B", "C")


# ------------------------------------------------------------------ the setting

def test_judge_follow_redirects_is_off_by_default_and_a_bare_flag_turns_it_on(tmp_path):
    from alignlab.cli import build_parser
    from alignlab.config import build_config
    from alignlab.evaluation.config import EvalConfig
    from alignlab.evaluation.judge import judge_config

    common = {"model": "m", "data": "d", "gold_rm": "g", "judge_url": "http://127.0.0.1:1/v1", "judge_model": "j"}
    assert judge_config(build_config(EvalConfig, None, common)).follow_cross_origin_redirects is False
    args = build_parser().parse_args(["eval", "--judge_follow_redirects"])
    assert args.judge_follow_redirects is True
    config = build_config(EvalConfig, None, {**common, "judge_follow_redirects": args.judge_follow_redirects})
    assert judge_config(config).follow_cross_origin_redirects is True
