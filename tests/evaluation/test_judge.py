"""The LLM judge against a fake OpenAI-compatible server started on 127.0.0.1 by the tests.

The fake judge is deterministic: by default it prefers the longer answer (a tie when both are as
long), so every expected win rate is computed by hand from the inputs. It can be told to fail in
the ways a real endpoint fails; each test counts the requests it received.
"""

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
import torch

from alignlab.data.pairs import PreferencePair
from alignlab.evaluation.evaluate import evaluate_model
from alignlab.models.generate import GenerationConfig
from alignlab.evaluation.judge import Judge, JudgeConfig, parse_verdict, question_text, win_rate_metric
from alignlab.models.tiny import build_tiny_classifier

SECRET = "sk-test-do-not-leak-0123456789"
ANSWER = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)
QUESTION = re.compile(r"\[User Question\]\n(.*?)\n\n\[The Start of Assistant A's Answer\]", re.S)


class FakeJudge:
    """State of the fake server: what it was asked, and how it should misbehave."""

    def __init__(self):
        self.requests = []  # (path, headers, body) of every request received
        self.lock = threading.Lock()
        self.verdict = self.longer  # (question, answer A, answer B) -> reply text
        self.fail_first = 0  # answer the first N requests with HTTP 500
        self.status_for = {}  # question -> HTTP status it always gets
        self.slow_for = set()  # questions answered after `sleep_s`
        self.sleep_s = 0.0

    @staticmethod
    def longer(question, a, b):
        verdict = "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"
        return f"Comparing the two answers, the longer one is more detailed. {verdict}"

    def questions(self):
        return [QUESTION.search(body["messages"][1]["content"]).group(1) for _, _, body in self.requests]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        fake = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with fake.lock:
            fake.requests.append((self.path, dict(self.headers), body))
            failing = len(fake.requests) <= fake.fail_first
        user = body["messages"][1]["content"]
        question = QUESTION.search(user).group(1)
        answers = dict(ANSWER.findall(user))
        if question in fake.slow_for:
            time.sleep(fake.sleep_s)
        status = 500 if failing else fake.status_for.get(question, 200)
        if status != 200:
            payload = {"error": {"message": f"fake failure {status}", "type": "server_error"}}
        else:
            reply = fake.verdict(question, answers["A"], answers["B"])
            payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                    "finish_reason": "stop"}]}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def fake_judge(monkeypatch):
    """(FakeJudge, base URL) of a server on 127.0.0.1, port chosen by the OS."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # a proxy must not stand between the test and its server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.fake = FakeJudge()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.fake, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def config(url, **overrides):
    return JudgeConfig(url, "fake-judge", **{"backoff_s": 0.0, "timeout_s": 5.0, **overrides})


QUESTIONS = ["q0: what is red?", "q1: what is blue?", "q2: what is green?", "q3: what is white?"]
ANSWERS = ["a long and detailed answer", "short", "same", "longer than the baseline"]
BASELINES = ["brief", "a much longer baseline answer", "SAME", "base"]
EXPECTED = [1.0, 0.0, 0.5, 1.0]  # longer wins in both orders; equal lengths tie in both


# ------------------------------------------------------------------ protocol

@pytest.mark.parametrize("reply, verdict", [
    ("Assistant A is better.\n\n[[A]]", "A"), ("[[B]]", "B"), ("It is a tie: [[C]]", "C"),
    ("[[A]] ... final verdict: [[A]]", "A"), ("not [[A]] but [[B]]", None), ("A", None), ("[A]", None), ("", None)])
def test_parse_verdict_needs_exactly_one_kind_of_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_question_text_shows_a_conversation_turn_by_turn():
    assert question_text([{"role": "user", "content": "Hi?"}]) == "Hi?"
    assert question_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "Why?"}]) == "User: Hi\n\nAssistant: Hello\n\nUser: Why?"


def test_longer_answer_judge_gives_the_hand_computed_win_rate(fake_judge):
    fake, url = fake_judge
    judgments = Judge(config(url)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert [j.score for j in judgments] == EXPECTED
    assert all(j.error is None for j in judgments)
    assert len(fake.requests) == 2 * len(QUESTIONS)  # each pair in both orders
    for path, headers, body in fake.requests:
        assert path == "/v1/chat/completions"
        assert body["model"] == "fake-judge" and body["temperature"] == 0
        assert body["messages"][0]["role"] == "system" and "[[C]]" in body["messages"][0]["content"]
        assert "Authorization" not in headers  # no key in the environment: no header
    # Both orders of every pair were asked: the model's answer once as A, once as B.
    shown = {(q, tuple(ANSWER.findall(b["messages"][1]["content"]))) for q, (_, _, b) in
             zip(fake.questions(), fake.requests)}
    assert len(shown) == 2 * len(QUESTIONS)
    metric = win_rate_metric([j.score for j in judgments], "fake-judge")
    assert metric["value"] == pytest.approx(sum(EXPECTED) / 4)
    assert metric["n_judged"] == 4 and metric["n_failed"] == 0 and metric["judge_model"] == "fake-judge"
    assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]


def test_both_orders_cancel_position_bias(fake_judge):
    fake, url = fake_judge
    fake.verdict = lambda question, a, b: "[[A]]"  # a judge that always prefers the first answer
    judgments = Judge(config(url)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert [j.score for j in judgments] == [0.5] * 4


# ------------------------------------------------------------------ failures

def test_transient_server_errors_are_retried(fake_judge):
    fake, url = fake_judge
    fake.fail_first = 3
    judgments = Judge(config(url, workers=1)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert [j.score for j in judgments] == EXPECTED
    assert len(fake.requests) == 2 * len(QUESTIONS) + 3


@pytest.mark.parametrize("status, attempts", [(500, 3), (503, 3), (429, 3), (400, 1), (401, 1), (404, 1)])
def test_a_failing_sample_is_retried_a_bounded_number_of_times_reported_and_excluded(fake_judge, status, attempts):
    fake, url = fake_judge
    fake.status_for = {QUESTIONS[1]: status}  # 429 and 5xx are retried; other 4xx would fail again
    judgments = Judge(config(url, retries=2)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert fake.questions().count(QUESTIONS[1]) == 2 * attempts  # both orders, each `attempts` times
    assert judgments[1].score is None
    assert f"HTTP {status}" in judgments[1].error and "fake failure" in judgments[1].error
    assert ("not retried" in judgments[1].error) == (attempts == 1)
    others = [judgments[i].score for i in (0, 2, 3)]
    assert others == [EXPECTED[i] for i in (0, 2, 3)]
    metric = win_rate_metric([j.score for j in judgments], "fake-judge")
    assert metric["value"] == pytest.approx(sum(others) / 3)  # over the judged samples only
    assert (metric["n_judged"], metric["n_failed"]) == (3, 1)


def test_a_reply_slower_than_the_timeout_is_retried_then_reported(fake_judge):
    fake, url = fake_judge
    fake.slow_for, fake.sleep_s = {QUESTIONS[0]}, 1.0
    judgments = Judge(config(url, retries=1, timeout_s=0.3)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert fake.questions().count(QUESTIONS[0]) == 2 * 2
    assert judgments[0].score is None and "timed out" in judgments[0].error
    assert [j.score for j in judgments[1:]] == EXPECTED[1:]


def test_malformed_replies_are_retried_then_reported(fake_judge):
    fake, url = fake_judge
    calls = {"n": 0}

    def flaky(question, a, b):
        if question == QUESTIONS[2]:
            return "Both answers have merit; I cannot decide."
        calls["n"] += 1
        return "I think [[A" if calls["n"] == 1 else FakeJudge.longer(question, a, b)  # one broken reply, then fine

    fake.verdict = flaky
    judgments = Judge(config(url, retries=3, workers=1)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert fake.questions().count(QUESTIONS[2]) == 2 * 4
    assert judgments[2].score is None and "no single [[A]]/[[B]]/[[C]] verdict" in judgments[2].error
    assert [judgments[i].score for i in (0, 1, 3)] == [EXPECTED[i] for i in (0, 1, 3)]
    assert len(fake.requests) == 2 * 4 + 6 + 1


def test_an_unreachable_judge_fails_every_sample_with_its_reason(fake_judge):
    _, url = fake_judge
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = Judge(config(f"http://127.0.0.1:{port}/v1", retries=1, workers=1))
    attempts = []
    original = judge._request
    judge._request = lambda *args: attempts.append(1) or original(*args)
    judgments = judge.judge(QUESTIONS, ANSWERS, BASELINES)
    assert all(j.score is None and "cannot reach" in j.error for j in judgments)
    assert len(attempts) == 2  # one request and its retry; the other 7 requests are not sent
    assert sum(j.error.count("not sent") for j in judgments) == 2 * len(judgments) - 1
    metric = win_rate_metric([j.score for j in judgments], "fake-judge")
    assert metric["value"] is None and (metric["n_judged"], metric["n_failed"]) == (0, 4)


# ------------------------------------------------------------------ cache and key

def test_a_rerun_is_served_from_the_cache(fake_judge, isolated_cache, caplog):
    fake, url = fake_judge
    first = Judge(config(url)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert len(fake.requests) == 8
    second = Judge(config(url)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert len(fake.requests) == 8  # zero requests on the rerun
    assert [j.score for j in second] == [j.score for j in first] == EXPECTED
    # A changed answer is a new pair: only its two orders are asked.
    Judge(config(url)).judge(QUESTIONS, ANSWERS[:3] + ["x"], BASELINES)
    assert len(fake.requests) == 10
    # Another judge model is another cache: everything is asked again.
    Judge(JudgeConfig(url, "other-judge", backoff_s=0)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert len(fake.requests) == 18
    # Corrupt lines (a truncated last line, garbage) are skipped with a warning, the rest still used.
    cache_file = Judge(config(url)).cache_path
    assert cache_file.parent == isolated_cache / "judge"
    with open(cache_file, "a") as handle:
        handle.write("not json\n{\"key\": \"abc\", \"verdict\": \"Z\"}\n{\"key\": \"trunc")
    with caplog.at_level(logging.WARNING, logger="alignlab.evaluation.judge"):
        again = Judge(config(url)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert len(fake.requests) == 18 and [j.score for j in again] == EXPECTED
    assert "skipped 3 corrupt line(s)" in caplog.text
    # A verdict appended after the truncated line starts a line of its own and is read back.
    Judge(config(url)).judge(["new question"], ["a"], ["b"])
    assert len(fake.requests) == 20
    Judge(config(url)).judge(["new question"], ["a"], ["b"])
    assert len(fake.requests) == 20


def test_failures_are_not_cached(fake_judge):
    fake, url = fake_judge
    fake.status_for = {QUESTIONS[0]: 500}
    Judge(config(url, retries=0)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert len(fake.requests) == 8
    fake.status_for = {}
    judgments = Judge(config(url, retries=0)).judge(QUESTIONS, ANSWERS, BASELINES)
    assert len(fake.requests) == 10 and [j.score for j in judgments] == EXPECTED


def test_the_key_is_sent_as_a_bearer_token_from_the_named_variable(fake_judge, monkeypatch):
    fake, url = fake_judge
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    Judge(config(url, key_env="MY_JUDGE_KEY")).judge(QUESTIONS[:1], ANSWERS[:1], BASELINES[:1])
    assert [headers["Authorization"] for _, headers, _ in fake.requests] == [f"Bearer {SECRET}"] * 2


# ------------------------------------------------------------------ evaluate_model and alignlab eval

def word_count_scorer(prompts, responses):
    return torch.tensor([float(len(r.split())) for r in responses])


def longer_score(a, b):
    return 1.0 if len(a) > len(b) else 0.0 if len(b) > len(a) else 0.5


def test_evaluate_model_judges_against_the_sft_responses(tiny_model, fake_judge, tmp_path):
    fake, url = fake_judge
    prompts = ["What color is the apple number 3?", "Hi", "What color is the leaf?"]
    pairs = [PreferencePair(id=f"t{i}", prompt=[{"role": "user", "content": p}], chosen="c", rejected="r")
             for i, p in enumerate(prompts)]
    generation = GenerationConfig(max_new_tokens=8, temperature=1.0)
    sft_samples = {"prompt_id": ["t2", "t0", "t1"], "gold_score": [0.0] * 3,  # by id, in another order
                   "response": ["a fairly long SFT answer number two", "", "x"]}
    result = evaluate_model(str(tiny_model), pairs, word_count_scorer, sft_samples=sft_samples, generation=generation,
                            out_dir=tmp_path / "out", judge=config(url, baseline="sft"))
    sft_by_id = dict(zip(sft_samples["prompt_id"], sft_samples["response"]))
    expected = [longer_score(r, sft_by_id[p.id]) for r, p in zip(result.samples["response"], pairs)]
    table = pq.read_table(tmp_path / "out" / "samples.parquet").to_pydict()
    assert table["judge_score"] == expected and table["judge_error"] == [None] * 3
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["judge_win_rate"]["value"] == pytest.approx(sum(expected) / 3)
    assert fake.questions().count(prompts[0]) == 2


def test_eval_command_with_a_judge_and_no_key_in_any_written_file(tiny_model, pairs_file, fake_judge, tmp_path,
                                                                   isolated_cache, monkeypatch, capsys):
    from alignlab.cli import main
    from alignlab.data.pairs import load_pairs

    fake, url = fake_judge
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    fake.status_for = {"What color is the sky number 1?": 500}  # pair-1 fails: reported, not counted
    build_tiny_classifier(tmp_path / "gold", tiny_model)
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model), "--data", str(pairs_file), "--gold_rm", str(tmp_path / "gold"),
            "--out", str(out), "--max_new_tokens", "6", "--limit", "4", "--judge_url", url,
            "--judge_model", "fake-judge", "--judge_baseline", "chosen", "--judge_retries", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = pq.read_table(out / "samples.parquet").to_pydict()
    chosen = [pair.chosen for pair in load_pairs(str(pairs_file), "pairs").pairs[:4]]
    expected = [longer_score(r, c) for r, c in zip(table["response"], chosen)]
    assert table["judge_score"] == [s if i != 1 else None for i, s in enumerate(expected)]
    assert table["judge_error"][1].count("HTTP 500") == 2 and table["judge_error"][0] is None  # both orders
    judge_metric = json.loads((out / "metrics.json").read_text())["judge_win_rate"]
    judged = [s for i, s in enumerate(expected) if i != 1]
    assert judge_metric["value"] == pytest.approx(sum(judged) / 3)
    assert (judge_metric["n_judged"], judge_metric["n_failed"], judge_metric["judge_model"]) == (3, 1, "fake-judge")
    assert "judge_win_rate" in printed and "judge fake-judge: 3 judged, 1 failed" in printed
    assert all(headers["Authorization"] == f"Bearer {SECRET}" for _, headers, _ in fake.requests)
    assert len(fake.requests) == 4 * 2  # --judge_retries 0: one attempt per order
    # The key is nowhere on disk: not in the results, not in the judge cache, not in any other file.
    written = [p for p in list(tmp_path.rglob("*")) + list(isolated_cache.rglob("*")) if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in written) and out / "samples.parquet" in written
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]


def test_the_judge_is_off_without_judge_url(tiny_model, pairs_file):
    from alignlab.cli import build_parser
    from alignlab.evaluation.judge import judge_config

    args = build_parser().parse_args(["eval", "--model", str(tiny_model), "--data", str(pairs_file),
                                      "--gold_rm", str(tiny_model)])
    assert judge_config(args) is None  # evaluate_model then adds no judge column and no judge metric


def test_eval_judge_flags_are_checked_before_any_work(tiny_model, pairs_file, tmp_path, capsys):
    from alignlab.cli import main

    base = ["eval", "--model", str(tiny_model), "--data", str(pairs_file), "--gold_rm", str(tiny_model),
            "--out", str(tmp_path / "eval")]
    for extra, message in [(["--judge_url", "http://127.0.0.1:1/v1"], "needs --judge_model"),
                           (["--judge_model", "m"], "need --judge_url"),
                           (["--judge_url", "127.0.0.1:8000", "--judge_model", "m"], "not an http"),
                           (["--judge_url", "http://127.0.0.1:99999/v1", "--judge_model", "m"], "Port out of range"),
                           (["--judge_url", "http://x/v1", "--judge_model", "m", "--judge_baseline", "sft"],
                            "needs --sft"),
                           (["--judge_url", "http://x/v1", "--judge_model", "m", "--judge_retries", "-1"],
                            "--judge_retries")]:
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "eval").exists()
