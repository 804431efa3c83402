"""The bench's sweep row: one `alignlab sweep` over a DPO β grid against the same runs done as
independent `alignlab train` + `alignlab eval` commands, each side from an empty cache, timed as a
user would see it (whole processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


SWEEP_BETAS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5]
SWEEP_GENERATION = {"max_new_tokens": 16, "batch_size": 32}
SWEEP_TEST_PROMPTS = 32


def _gold_classifier(setup: dict, directory: Path) -> str:
    """A tiny one-output sequence classifier on the bench model's tokenizer: the gold RM both sides use."""
    from alignlab.models.tiny import build_tiny_classifier

    return str(build_tiny_classifier(directory, setup["model"]))


def timed_cli(args: list[str], cache: Path) -> float:
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache), "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "alignlab", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bench: alignlab {args[0]} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _trained(run_dirs) -> tuple[int, int]:
    summaries = [json.loads((d / "train_summary.json").read_text()) for d in run_dirs]
    return sum(s["pairs_trained"] for s in summaries), sum(s["optimizer_steps"] for s in summaries)


def sweep_study(setup: dict, test: str, gold: str, training: dict) -> dict:
    """The sweep side's study: one seed per β, because the independent side trains each β once."""
    return {"model": setup["model"], "train_data": setup["data"], "test_data": test, "gold_rm": gold,
            "methods": ["dpo"], "seeds": 1, "grid": {"dpo": {"beta": SWEEP_BETAS}}, "training": training,
            "generation": SWEEP_GENERATION}


def measure_sweep_vs_independent(setup: dict, workdir: Path, learning_rate: float) -> dict:
    """Seconds of one 6-run DPO sweep and of the same six runs as independent train + eval commands."""
    gold = _gold_classifier(setup, workdir / "gold")
    test = workdir / "test.jsonl"
    test.write_text("".join(Path(setup["data"]).read_text().splitlines(keepends=True)[:SWEEP_TEST_PROMPTS]))
    training = {"batch_size": setup["batch_size"], "learning_rate": learning_rate, "warmup_ratio": 0.0,
                "max_length": setup["max_length"], "max_prompt_length": setup["max_length"] // 2}
    independent_seconds, independent_runs = 0.0, []
    for beta in SWEEP_BETAS:
        run = workdir / "independent" / f"dpo-beta{beta}"
        independent_seconds += timed_cli(
            ["train", "--method", "dpo", "--model", setup["model"], "--data", setup["data"], "--out", str(run),
             "--beta", str(beta), *(f"--{k}={v}" for k, v in training.items())], workdir / "independent-cache")
        independent_seconds += timed_cli(
            ["eval", "--model", str(run / "model"), "--data", str(test), "--gold_rm", gold, "--sft", setup["model"],
             "--out", str(run / "eval"), "--max_new_tokens", str(SWEEP_GENERATION["max_new_tokens"]),
             "--batch_size", str(SWEEP_GENERATION["batch_size"])], workdir / "independent-cache")
        independent_runs.append(run)
    config = workdir / "sweep.yaml"
    config.write_text(json.dumps(sweep_study(setup, str(test), gold, training)))
    sweep_seconds = timed_cli(["sweep", str(config), "--out", str(workdir / "sweep")], workdir / "sweep-cache")
    sweep_runs = sorted(d for d in (workdir / "sweep" / "runs").iterdir() if d.name != "sft")
    pairs, steps = _trained(independent_runs)
    if (pairs, steps) != _trained(sweep_runs):
        raise RuntimeError(f"unequal work: independent runs trained {pairs} pairs in {steps} steps, the sweep "
                           f"{_trained(sweep_runs)}")
    return {"runs": len(SWEEP_BETAS), "pairs": pairs, "optimizer_steps": steps, "test_prompts": SWEEP_TEST_PROMPTS,
            "sweep_seconds": sweep_seconds, "independent_seconds": independent_seconds}
