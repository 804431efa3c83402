"""The report's training curves and example generations (alignlab.report.curves, .examples), read
by `alignlab report DIR` from a hand-written sweep directory.

The sweep: 8 test prompts; DPO in two configurations (beta 0.1 scores 1.0 on every prompt, beta 0.5
scores 0.5) and VAR in one, each with seeds 0 and 1 (seed 1 scores 0.01 more); the SFT baseline 0.
Each run's metrics.jsonl holds three logged steps of hand-set numbers, so the curves' means are
worked out below by hand; its samples.parquet holds prompt and response texts, one response
carrying markup and one longer than the report shows.
"""

import base64
import hashlib
import json
import logging
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.evaluation.metrics import summarize
from alignlab.report.examples import SHOWN_CHARS, clipped, prompt_text
from alignlab.study.results import write_sweep_report
from alignlab.study.store import RunStore

PROMPTS = [f"p{i}" for i in range(8)]
MARKUP = "<script>alert('x')</script> Fish & chips"
LONG = "y" * (SHOWN_CHARS + 123)
# run -> (method, params, gold score, metrics.jsonl numbers per step)
RUNS = {
    "dpo-b0.1-s0": ("dpo", {"beta": 0.1, "seed": 0}, 1.0, {"loss": [0.7, 0.6, 0.5], "margin": [0.0, 1.0, 2.0]}),
    "dpo-b0.1-s1": ("dpo", {"beta": 0.1, "seed": 1}, 1.01, {"loss": [0.9, 0.5, 0.3], "margin": [0.0, 3.0, 4.0]}),
    "dpo-b0.5-s0": ("dpo", {"beta": 0.5, "seed": 0}, 0.5, {"loss": [9.0, 9.0, 9.0], "margin": [9.0, 9.0, 9.0]}),
    "dpo-b0.5-s1": ("dpo", {"beta": 0.5, "seed": 1}, 0.51, {"loss": [9.0, 9.0, 9.0], "margin": [9.0, 9.0, 9.0]}),
    "var-l1-s0": ("var", {"lam": 1.0, "seed": 0}, 0.8,
                  {"loss": [2.0, 1.5, 1.0], "margin": [0.5, 0.5, 0.5], "weight_entropy": [2.0, 1.8, 1.6]}),
    "var-l1-s1": ("var", {"lam": 1.0, "seed": 1}, 0.81,
                  {"loss": [4.0, 2.5, 1.0], "margin": [1.5, 0.5, -0.5], "weight_entropy": [1.0, 1.2, 1.4]}),
}


def reporting_prompts() -> list[str]:
    """Second implementation of the split: ids by sha256 of their text, the second half reports."""
    ranked = sorted(PROMPTS, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    return [p for p in PROMPTS if p in ranked[len(PROMPTS) // 2:]]


EXAMPLES = reporting_prompts()[:3]


def response(run: str, prompt: str) -> str:
    if prompt == EXAMPLES[0] and run == "dpo-b0.1-s0":
        return MARKUP
    if prompt == EXAMPLES[1] and run == "var-l1-s0":
        return LONG
    return f"{run} answers {prompt}"


def write_run(directory, name, gold, log=None) -> dict:
    directory.mkdir(parents=True)
    samples = {"prompt_id": PROMPTS, "prompt": [json.dumps([{"role": "user", "content": f"Question {p}?"}])
                                                for p in PROMPTS],
               "response": [response(name, p) for p in PROMPTS], "gold_score": [gold] * 8, "length": [10.0] * 8}
    pq.write_table(pa.table(samples), directory / "samples.parquet")
    metrics = summarize({"gold_score": np.full(8, gold), "length": np.full(8, 10.0), "chosen_score": np.zeros(8)})
    (directory / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        lines = [{"step": step + 1, "epoch": 0, **{k: v[step] for k, v in log.items()}, "learning_rate": 1e-3}
                 for step in range(3)]
        (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return metrics


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "sweep"
    out.mkdir()
    (out / "sweep.yaml").write_text("grid_preset: small\nstudy: robustness\n")
    (out / "study.json").write_text(json.dumps({"world": "hand-made"}))
    write_run(out / "runs" / "sft", "sft", 0.0)
    RunStore(out / "runs.sqlite").close()
    with sqlite3.connect(out / "runs.sqlite") as db:
        for name, (method, params, gold, log) in RUNS.items():
            metrics = write_run(out / "runs" / name, name, gold, log)
            db.execute("INSERT INTO runs (run_id, name, method, params, status, attempts, metrics, run_dir, seconds, "
                       "error, updated_at) VALUES (?, ?, ?, ?, 'finished', 1, ?, ?, 1.0, NULL, 0.0)",
                       (name, name, method, json.dumps(params), json.dumps(metrics), f"runs/{name}"))
    db.close()
    summary = write_sweep_report(out)
    return out, summary


def test_the_curves_are_the_means_over_the_best_configurations_seeds(sweep):
    _, summary = sweep
    curves = summary["training_curves"]
    assert list(curves) == ["dpo", "var"]
    dpo, var = curves["dpo"], curves["var"]
    assert dpo["runs"] == ["dpo-b0.1-s0", "dpo-b0.1-s1"] and dpo["step"] == [1, 2, 3]  # beta 0.1 is best
    assert dpo["loss"] == pytest.approx([0.8, 0.55, 0.4]) and dpo["margin"] == pytest.approx([0.0, 2.0, 3.0])
    assert "weight_entropy" not in dpo
    assert var["loss"] == pytest.approx([3.0, 2.0, 1.0]) and var["margin"] == pytest.approx([1.0, 0.5, 0.0])
    assert var["weight_entropy"] == pytest.approx([1.5, 1.5, 1.5])


def test_the_curves_figure_is_listed_written_and_shown(sweep):
    out, summary = sweep
    [entry] = [f for f in summary["figures"] if f["file"] == "figures/training_curves.png"]
    # Configurations are named by their parameters: DPO by its beta (the only one its two differ in), VAR alone.
    assert entry["caption"].endswith(": DPO dpo-beta0.1 (2 seeds); VAR var (2 seeds).")
    png = (out / "figures" / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert base64.b64encode(png).decode() in (out / "report.html").read_text()
    assert "](figures/training_curves.png)" in (out / "report.md").read_text()


def test_examples_show_the_reporting_prompts_with_sft_and_each_best_first_seed(sweep):
    out, summary = sweep
    examples = summary["examples"]
    assert examples["prompt_ids"] == EXAMPLES
    assert [m["run"] for m in examples["models"]] == ["sft", "dpo-b0.1-s0", "var-l1-s0"]
    assert examples["gold_scores"][EXAMPLES[2]] == {"sft": 0.0, "dpo-b0.1-s0": 1.0, "var-l1-s0": 0.8}
    markdown = (out / "report.md").read_text()
    for prompt in EXAMPLES:
        assert f"Question {prompt}?" in markdown  # the user turn's text, not its JSON
        assert f"sft answers {prompt}" in markdown
    assert "dpo-b0.1-s1 answers" not in markdown  # the second seed is not shown


def test_example_texts_are_escaped_and_long_ones_clipped_visibly(sweep):
    out, _ = sweep
    page = (out / "report.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; Fish &amp; chips" in page
    assert "y" * SHOWN_CHARS + " … [clipped: 123 more characters]" in page
    assert "y" * (SHOWN_CHARS + 1) not in page
    assert "&lt;script&gt;alert('x')&lt;/script&gt; Fish &amp; chips" in (out / "report.md").read_text()


def test_clipping_and_prompt_text_by_hand():
    assert clipped("abcdef", 4) == "abcd … [clipped: 2 more characters]" and clipped("abcd", 4) == "abcd"
    assert prompt_text(json.dumps([{"role": "user", "content": "Hi"}])) == "Hi"
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?"}, {"role": "user", "content": "Go"}]
    assert prompt_text(json.dumps(turns)) == "user: Hi\nassistant: Yes?\nuser: Go"
    assert prompt_text("not JSON [") == "not JSON ["


def test_a_damaged_training_log_loses_only_its_curve(sweep, tmp_path, caplog):
    import shutil

    out = shutil.copytree(sweep[0], tmp_path / "sweep")
    (out / "runs" / "dpo-b0.1-s1" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\nnot json\n')
    with caplog.at_level(logging.WARNING):
        summary = write_sweep_report(out)
    assert "dpo-b0.1-s1" in {r["run"] for r in summary["runs"]}
    assert summary["training_curves"]["dpo"]["runs"] == ["dpo-b0.1-s0"]
    assert summary["training_curves"]["dpo"]["loss"] == pytest.approx([0.7, 0.6, 0.5])
    assert "metrics.jsonl cannot be read" in caplog.text
