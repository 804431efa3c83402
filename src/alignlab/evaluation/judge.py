"""Optional LLM judge: pairwise win rate of a model's responses against a baseline's (SPEC §4).

Protocol (MT-Bench pairwise, as in the VAR paper):

- Any OpenAI-compatible chat-completions endpoint: POST `{url}/chat/completions` with the judge
  model, a fixed system prompt (`SYSTEM_PROMPT`, versioned by `PROMPT_VERSION`), one user message
  holding the question and the two answers labelled A and B, and temperature 0. The API key is
  read from an environment variable when a request is sent and goes only into the
  `Authorization: Bearer` header: it is never stored, logged or written.
- Requests go through `alignlab.evaluation.http_client`, bounded against a hostile server: the key
  goes only to the URL's origin (scheme, host, port), and a redirect to another origin fails the
  request unless `follow_cross_origin_redirects`, which follows it without the key; `timeout_s`
  bounds the whole request, not each read; a reply over 4 MiB is refused; reply JSON is parsed
  with `alignlab.untrusted.parse_json`, so nesting cannot exhaust the stack.
- The verdict is the reply's `[[A]]`, `[[B]]` or `[[C]]` (tie). A reply with none, or with two
  different ones, is malformed.
- Every pair is judged in both orders (model as A, then model as B) to cancel position bias. Each
  order scores the model 1 for a win, ½ for a tie, 0 for a loss; the sample's score is the mean of
  the two, so orders that disagree make a tie. The win rate is the mean over judged samples, with
  a percentile-bootstrap 95% CI.
- A request that times out, fails to connect, gets HTTP 429 or 5xx, or gets a malformed reply is
  retried up to `retries` times with exponential backoff; other HTTP 4xx errors (bad key, unknown
  model), refused redirects and oversized replies would fail the same way again and are not
  retried. A sample whose order still failed has no score and carries the reason: it is excluded
  from the win rate and counted in `n_failed`, never counted as a win or a loss.
- Verdicts are cached per (judge URL, judge model, prompt version, question, answer A, answer B,
  order) in `<cache>/judge/<judge model hash>.jsonl`, one JSON line appended per verdict, so a
  rerun sends no request for what was already judged. Failures are not cached: a rerun retries them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignlab.cache import default_cache_dir
from alignlab.checks import COUNT, NON_NEGATIVE, POSITIVE, Range, check_numbers
from alignlab.errors import AlignlabError
from alignlab.evaluation.http_client import (CrossOriginRedirect, HTTPFailure, Unreachable, origin,
                                             post_json)
from alignlab.evaluation.metrics import bootstrap_ci
from alignlab.untrusted import clip, parse_json

log = logging.getLogger(__name__)

# Bump when SYSTEM_PROMPT or USER_TEMPLATE changes: it is part of the cache key, so verdicts given
# to an older prompt are never reused.
PROMPT_VERSION = "mt-bench-pair-v1"

SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses. Begin your evaluation by comparing the two responses and provide a short explanation. "
    "Avoid any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Do "
    "not favor certain names of the assistants. Be as objective as possible. After providing your "
    "explanation, output your final verdict by strictly following this format: \"[[A]]\" if assistant A "
    "is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)

USER_TEMPLATE = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)

VERDICT = re.compile(r"\[\[([ABC])\]\]")

# The model's score for each verdict, by order: in "model-first" the model's answer is A.
ORDERS = {"model-first": {"A": 1.0, "B": 0.0, "C": 0.5},
          "baseline-first": {"A": 0.0, "B": 1.0, "C": 0.5}}

BASELINES = ("sft", "chosen")

JUDGE_RANGES = {"retries": Range(0, integer=True), "timeout_s": POSITIVE, "backoff_s": NON_NEGATIVE, "workers": COUNT}
JUDGE_OPTIONS = {"retries": "--judge_retries", "timeout_s": "--judge_timeout", "workers": "--judge_workers"}


@dataclass(frozen=True)
class JudgeConfig:
    url: str  # base URL of the API, e.g. http://127.0.0.1:8000/v1
    model: str
    baseline: str = "chosen"  # "sft": the SFT model's responses; "chosen": the dataset's chosen responses
    key_env: str = "OPENAI_API_KEY"  # the environment variable holding the API key (the key itself is never held here)
    retries: int = 3  # retries after the first attempt of each request
    timeout_s: float = 60.0
    backoff_s: float = 1.0  # waits backoff_s, 2·backoff_s, 4·backoff_s, ... between attempts
    workers: int = 4
    cache_dir: Path | None = None  # default: default_cache_dir() / "judge"
    follow_cross_origin_redirects: bool = False  # follow a redirect off the URL's origin, without the key

    def __post_init__(self):
        try:
            origin(self.url)
        except ValueError as err:  # not http(s), no host, a bad port
            raise AlignlabError(f"--judge_url {self.url}: {err}; give the API's base URL, "
                                "e.g. http://127.0.0.1:8000/v1") from None
        if self.baseline not in BASELINES:
            raise AlignlabError(f"--judge_baseline {self.baseline}: choose one of {', '.join(BASELINES)}")
        check_numbers("judge settings", vars(self), JUDGE_RANGES, label=lambda name: JUDGE_OPTIONS.get(name, name))


@dataclass
class Judgment:
    score: float | None  # the model's score in [0, 1]; None when the sample failed
    error: str | None = None  # why it failed


def question_text(prompt: list[dict]) -> str:
    """The user question shown to the judge: a lone user turn as is, a conversation turn by turn."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in prompt)


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "C" (tie); None when the reply has no verdict or contradicts itself."""
    found = set(VERDICT.findall(reply))
    return found.pop() if len(found) == 1 else None


# How the errors start that every request to the endpoint would get: after one, the rest are not sent.
UNREACHABLE = "cannot reach"
REDIRECTED = "redirected to another origin"


class _RetryableError(Exception):
    """A failure that another attempt may not repeat (timeout, 429, 5xx, malformed reply)."""


class _FinalError(Exception):
    """A failure that another attempt would repeat (HTTP 4xx other than 429, a refused redirect, a
    reply over the size limit)."""


class MalformedReply(_RetryableError):
    """A reply that is no chat completion, or whose message holds no single verdict."""


@dataclass
class _Job:
    order: str
    key: str
    messages: list[dict]
    verdict: str | None = None
    error: str | None = None


@dataclass
class _Cache:
    """Verdicts by key, backed by an append-only JSONL file shared by threads and processes."""
    path: Path
    verdicts: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    broken: bool = False

    @classmethod
    def open(cls, path: Path) -> "_Cache":
        cache = cls(path)
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        corrupt = []
        for number, line in enumerate(lines, 1):
            if not line.strip():  # left by two writers both mending the same truncated last line
                continue
            try:
                entry = json.loads(line)
                if entry["verdict"] not in ("A", "B", "C") or not isinstance(entry["key"], str):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                corrupt.append(number)
                continue
            cache.verdicts[entry["key"]] = entry["verdict"]
        if corrupt:
            log.warning("judge cache %s: skipped %d corrupt line(s) (line %s); those pairs are judged again",
                        path, len(corrupt), ", ".join(map(str, corrupt[:5])) + (", ..." if len(corrupt) > 5 else ""))
        return cache

    def add(self, key: str, verdict: str) -> None:
        line = json.dumps({"key": key, "verdict": verdict}) + "\n"
        with self.lock:
            self.verdicts[key] = verdict
            if self.broken:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    # A process killed mid-write leaves a last line without its newline; start a new line
                    # so this entry is not glued onto (and lost with) the broken one.
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = "\n" + line
                    # One write of an O_APPEND file: lines from concurrent processes never interleave.
                    os.write(fd, line.encode("utf-8"))
                finally:
                    os.close(fd)
            except OSError as err:
                # The verdict itself is good; only a rerun's saving is lost.
                self.broken = True
                log.warning("judge cache %s: cannot write (%s); verdicts of this run are not cached",
                            self.path, err.strerror or err)


class Judge:
    """Judges (question, model answer, baseline answer) triples by the protocol of this module."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.endpoint = config.url.rstrip("/") + "/chat/completions"
        model_hash = hashlib.sha256(config.model.encode("utf-8")).hexdigest()[:16]
        self.cache_path = Path(config.cache_dir or default_cache_dir() / "judge") / f"{model_hash}.jsonl"

    def cache_key(self, question: str, answer_a: str, answer_b: str, order: str) -> str:
        fields = [self.config.url.rstrip("/"), self.config.model, PROMPT_VERSION, question, answer_a, answer_b, order]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()

    def judge(self, questions: list[str], answers: list[str], baselines: list[str]) -> list[Judgment]:
        """One Judgment per sample: the model's `answers` against the `baselines`."""
        cache = _Cache.open(self.cache_path)
        jobs = []
        for question, answer, baseline in zip(questions, answers, baselines, strict=True):
            for order in ORDERS:
                a, b = (answer, baseline) if order == "model-first" else (baseline, answer)
                content = USER_TEMPLATE.format(question=question, answer_a=a, answer_b=b)
                job = _Job(order, self.cache_key(question, a, b, order),
                           [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}])
                job.verdict = cache.verdicts.get(job.key)
                jobs.append(job)
        pending = [job for job in jobs if job.verdict is None]
        log.info("judge %s: %d pairs in both orders, %d judgments cached, %d to request",
                 self.config.model, len(questions), len(jobs) - len(pending), len(pending))
        # Read the key once per run, here, so it lives only in this call and in request headers.
        key = os.environ.get(self.config.key_env) or None

        # An endpoint that cannot be reached after a request's retries will not be reached by the
        # next ones, and one that redirects off its origin will redirect them too: the rest are not
        # sent (each sample still says why), so a wrong URL costs one request's retries, not every sample's.
        endpoint_failures: list[str] = []

        def work(job: _Job) -> None:
            if endpoint_failures:
                job.error = f"not sent: {endpoint_failures[0]}"
                return
            self._run(job, key)
            if job.verdict is not None:
                cache.add(job.key, job.verdict)  # at once: an interrupted run keeps what it paid for
            elif job.error.startswith((UNREACHABLE, REDIRECTED)):
                endpoint_failures.append(job.error)

        pool = ThreadPoolExecutor(max_workers=self.config.workers)
        try:
            list(pool.map(work, pending))
        finally:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C, do not send the requests still queued
        return [_judgment(jobs[i:i + len(ORDERS)]) for i in range(0, len(jobs), len(ORDERS))]

    def _run(self, job: _Job, key: str | None) -> None:
        """Request `job`'s verdict with bounded retries; sets job.verdict or job.error."""
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                job.verdict = self._request(job.messages, key)
                return
            except _FinalError as err:
                job.error = f"{self._redact(str(err), key)} (not retried)"
                return
            except _RetryableError as err:
                last = err
        job.error = f"{self._redact(str(last), key)} (after {attempts} attempt{'s' * (attempts > 1)})"

    def _request(self, messages: list[dict], key: str | None) -> str:
        body = json.dumps({"model": self.config.model, "messages": messages, "temperature": 0}).encode("utf-8")
        credentials = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = post_json(self.endpoint, body, credentials, timeout_s=self.config.timeout_s,
                                 follow_cross_origin_redirects=self.config.follow_cross_origin_redirects)
        except Unreachable as err:  # connection refused, DNS failure, timeout while connecting
            raise _RetryableError(f"{UNREACHABLE} {err}") from None
        except CrossOriginRedirect as err:
            raise _FinalError(f"{err}: the key goes only to --judge_url's origin "
                              "(--judge_follow_redirects follows it without the key)") from None
        except HTTPFailure as err:  # a redirect loop, a reply over the size limit
            raise _FinalError(str(err)) from None
        except TimeoutError:
            raise _RetryableError(f"timed out after {self.config.timeout_s:g} s") from None
        except (http.client.HTTPException, OSError) as err:  # e.g. the server closed the connection
            raise _RetryableError(f"connection failed: {type(err).__name__} {err}") from None
        if not 200 <= response.status < 300:
            reason = f"HTTP {response.status} {clip(response.reason)}: {_error_message(response.body)}".rstrip(": ")
            if response.status == 429 or response.status >= 500:
                raise _RetryableError(reason)
            raise _FinalError(reason)
        return verdict_of_reply(response.body)

    @staticmethod
    def _redact(text: str, key: str | None) -> str:
        """An error body could echo the key back; it must not reach samples.parquet or the log."""
        return text.replace(key, "<redacted>") if key else text


def _judgment(sample_jobs: list[_Job]) -> Judgment:
    """A sample's Judgment from its judgments in both orders: scored only when both succeeded."""
    errors = [f"{job.order}: {job.error}" for job in sample_jobs if job.verdict is None]
    if errors:
        return Judgment(None, "; ".join(errors))
    return Judgment(float(np.mean([ORDERS[job.order][job.verdict] for job in sample_jobs])))


def verdict_of_reply(raw: bytes) -> str:
    """The verdict of a chat-completion body; MalformedReply for any other body."""
    try:
        completion = parse_json(raw.decode("utf-8"))
    except ValueError as err:  # not UTF-8, not JSON, or JSON that parse_json refuses (e.g. nested too deep)
        raise MalformedReply(f"malformed reply (not JSON: {err}): {raw[:200]!r}") from None
    try:
        reply = completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise MalformedReply(f"malformed reply (not a chat completion): {raw[:200]!r}") from None
    verdict = parse_verdict(reply) if isinstance(reply, str) else None
    if verdict is None:
        raise MalformedReply(f"malformed reply: no single [[A]]/[[B]]/[[C]] verdict in {str(reply)[-200:]!r}")
    return verdict


def _error_message(raw: bytes) -> str:
    """The error's message from an OpenAI-style body ({"error": {"message": ...}}), else the body's start."""
    try:
        return str(parse_json(raw.decode("utf-8"))["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode("utf-8", errors="replace").strip()


def judge_config(args) -> JudgeConfig | None:
    """The judge's settings from `alignlab eval`'s arguments, checked before any work; None without
    --judge_url (the judge is off by default)."""
    if args.judge_url is None:
        if args.judge_model is not None or args.judge_baseline is not None:
            raise AlignlabError("--judge_model and --judge_baseline need --judge_url (the judge API)")
        return None
    if not args.judge_model:
        raise AlignlabError("--judge_url needs --judge_model (the judge model's name at that API)")
    baseline = args.judge_baseline or ("sft" if args.sft else "chosen")
    if baseline == "sft" and not args.sft:
        raise AlignlabError("--judge_baseline sft needs --sft (the SFT model whose responses are the baseline)")
    return JudgeConfig(args.judge_url, args.judge_model, baseline, args.judge_key_env, args.judge_retries,
                       args.judge_timeout, workers=args.judge_workers,
                       follow_cross_origin_redirects=args.judge_follow_redirects)


def judge_columns(config: JudgeConfig, pairs, responses: list[str], sft_samples: dict | None) -> dict:
    """The per-sample columns `judge_score` and `judge_error` of the model's `responses` to `pairs`
    against the configured baseline: the SFT model's responses (from `sft_samples`, by prompt id)
    or the dataset's chosen responses."""
    if config.baseline == "sft":
        if sft_samples is None or "response" not in sft_samples:
            raise AlignlabError("--judge_baseline sft needs the SFT model's responses: give --sft")
        sft_by_id = dict(zip(sft_samples["prompt_id"], sft_samples["response"]))
        baselines = [sft_by_id[pair.id] for pair in pairs]
    else:
        baselines = [pair.chosen for pair in pairs]
    judgments = Judge(config).judge([question_text(pair.prompt) for pair in pairs], responses, baselines)
    return {"judge_score": [j.score for j in judgments], "judge_error": [j.error for j in judgments]}


def win_rate_metric(scores: list[float | None], judge_model: str, seed: int = 0) -> dict:
    """`judge_win_rate` over the judged samples: {value, ci_low, ci_high, n_judged, n_failed, judge_model};
    value and CI are None when no sample was judged."""
    judged = [s for s in scores if s is not None]
    metric = {"value": None, "ci_low": None, "ci_high": None, "n_judged": len(judged),
              "n_failed": len(scores) - len(judged), "judge_model": judge_model}
    if judged:
        low, high = bootstrap_ci(judged, seed=seed)
        metric.update(value=float(np.mean(judged)), ci_low=low, ci_high=high)
    return metric


def summary_line(metric: dict, errors: list[str | None]) -> str:
    """One line for the terminal: how many samples were judged, and why the others failed."""
    line = f"judge {metric['judge_model']}: {metric['n_judged']} judged, {metric['n_failed']} failed"
    reasons = Counter(error for error in errors if error is not None)
    if reasons:
        line += " (" + "; ".join(f"{count}× {reason}" for reason, count in reasons.most_common(3)) + ")"
    return line
