"""The bench's study rows: `alignlab run` on the default study world against the same runs each done
as separate commands, timed as a user sees them (whole processes, their imports included).

- study side: `alignlab run --world default` with the default study's grid (`small`) for DPO, LN-DPO
  and SimPO, one seed each and no sequential looks (`--max_seeds 1`): 12 runs, at the default `workers`. Its wall-clock covers everything the
  command does: the world's data files, the SFT model's two evaluations, the reference pass, every
  run's training and two evaluations (in distribution and on the test prompts), the report. VAR is
  left out: its proxy reward model would have to be trained by the separate side too.
- sequential side: one run per method (the first of each in the study's order), each as
  `alignlab train --config <the study's config.yaml for that run>`, then `alignlab eval --sft` on the
  test prompts (it evaluates the SFT model again, as a user comparing with it does) and
  `alignlab eval` on the in-distribution prompts, with the study's generation settings. `alignlab
  eval` takes a reward model, not the world's closed-form gold reward: the gold here is a tiny
  sequence classifier on the world's tokenizer (scoring is a small share of an evaluation).
Both sides start from the same study world (built before the clocks start) and their own empty
cache otherwise, so each computes its reference log-probs once. Equal work is checked: each
sequential run trains the pairs and optimizer steps of the study's run of the same name.

study_runs_per_minute = runs / the study's minutes; study_vs_sequential = that ÷ the sequential
side's runs per minute.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.bench.sweep import timed_cli

STUDY_WORLD = "default"
STUDY_METHODS = ("dpo", "ln-dpo", "simpo")


def _build_world(cache: Path) -> Path:
    """The study world's models in `cache` (trained once: SFT on the default world takes ~40 s); the
    SFT model's path."""
    from alignlab.world import build_world, build_world_models, world_config

    return build_world_models(build_world(world_config(STUDY_WORLD, seed=0)), cache).sft


def _training(run_dir: Path) -> tuple[int, int]:
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return summary["pairs_trained"], summary["optimizer_steps"]


def _sequential_run(study: Path, run: str, sft: str, gold: str, workdir: Path, cache: Path) -> float:
    """Seconds of one study run redone as `alignlab train` + two `alignlab eval` commands."""
    from alignlab.study.config import WORLD_GENERATION

    generation = [f"--{key}={value}" for key, value in {**WORLD_GENERATION[STUDY_WORLD], "seed": 0}.items()]
    out = workdir / run
    seconds = timed_cli(["train", "--config", str(study / "runs" / run / "config.yaml"), "--out", str(out)], cache)
    seconds += timed_cli(["eval", "--model", str(out / "model"), "--data", str(study / "data" / "test.jsonl"),
                          "--gold_rm", gold, "--sft", sft, "--out", str(out / "eval"), *generation], cache)
    seconds += timed_cli(["eval", "--model", str(out / "model"), "--data", str(study / "data" / "indist.jsonl"),
                          "--gold_rm", gold, "--out", str(out / "indist"), *generation], cache)
    if _training(out) != _training(study / "runs" / run):
        raise RuntimeError(f"unequal work: {run} alone trained (pairs, steps) {_training(out)}, in the study "
                           f"{_training(study / 'runs' / run)}")
    return seconds


def measure_study_vs_sequential(workdir: Path) -> dict:
    """Seconds and runs of the study side and of the sequential side (see the module docstring)."""
    from alignlab.models.tiny import build_tiny_classifier
    from alignlab.study.config import StudyConfig
    from alignlab.study.executors import default_workers
    from alignlab.study.store import RunStore

    study_cache = workdir / "study-cache"
    sft = str(_build_world(study_cache))
    study = workdir / "study"
    study_seconds = timed_cli(["run", "--world", STUDY_WORLD, "--methods", ",".join(STUDY_METHODS), "--seeds", "1",
                               "--max_seeds", "1", "--out", str(study)], study_cache)
    with RunStore(study / "runs.sqlite") as store:
        runs = store.runs()
    firsts = [next(run.name for run in runs if run.method == method) for method in STUDY_METHODS]
    gold = str(build_tiny_classifier(workdir / "gold", sft))
    sequential_seconds = sum(_sequential_run(study, run, sft, gold, workdir / "sequential", workdir / "sequential-cache")
                             for run in firsts)
    return {"study_runs": len(runs), "study_seconds": study_seconds, "sequential_runs": len(firsts),
            "sequential_seconds": sequential_seconds,
            # as the study resolved it: the bench runs on the same cores
            "workers": default_workers(StudyConfig(out=str(study), preset=STUDY_WORLD))}


def measure_study_rows(workdir: Path, results: dict, progress=print) -> None:
    """study_runs_per_minute and study_vs_sequential (alignlab.bench.study): `alignlab run` on the
    default study world against its runs done one by one as separate commands."""
    progress("bench: `alignlab run` on the default world against its runs as separate train + eval commands")
    study = results["absolute"]["study"] = measure_study_vs_sequential(workdir / "study-row")
    per_minute = 60 * study["study_runs"] / study["study_seconds"]
    results["absolute"]["study_runs_per_minute"] = per_minute
    results["ratios"]["study_vs_sequential"] = per_minute / (60 * study["sequential_runs"] / study["sequential_seconds"])


def study_line(absolute: dict) -> str:
    """The study rows' line under the bench table."""
    study = absolute["study"]
    return (f"study_runs_per_minute {absolute['study_runs_per_minute']:.2f}: `alignlab run` on the default world, "
            f"{study['study_runs']} runs in {study['study_seconds']:.1f} s ({study['workers']} workers); "
            f"{study['sequential_runs']} of them as separate train + eval commands in "
            f"{study['sequential_seconds']:.1f} s")
