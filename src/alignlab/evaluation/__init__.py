"""Evaluation: generate a response per test prompt, score it with a gold reward (and optionally
an LLM judge, `judge`), and summarise with bootstrap CIs (`metrics`). `alignlab eval` is `run_eval`
of an `EvalConfig` (`config`)."""

from alignlab.evaluation.config import EvalConfig
from alignlab.evaluation.evaluate import EvalResult, evaluate_model, run_eval
from alignlab.evaluation.metrics import bootstrap_ci, strict_wins, summarize, ties

__all__ = ["EvalConfig", "EvalResult", "evaluate_model", "run_eval", "bootstrap_ci", "summarize", "strict_wins",
           "ties"]
