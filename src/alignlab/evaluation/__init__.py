"""Evaluation: generate a response per test prompt, score it with a gold reward (and optionally
an LLM judge, `judge`), and summarise with bootstrap CIs (`metrics`)."""

from alignlab.evaluation.evaluate import EvalResult, evaluate_model
from alignlab.evaluation.metrics import bootstrap_ci, summarize, win_rate, wins

__all__ = ["EvalResult", "evaluate_model", "bootstrap_ci", "summarize", "win_rate", "wins"]
