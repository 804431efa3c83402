"""`alignlab sweep`: a tiny sweep end to end, resuming after SIGKILL, parallel workers and Ray, and
the report of a real sweep in a browser."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from alignlab.cli import main
from alignlab.study.store import RunStore
from alignlab.study.config import StudyConfig
from conftest import CHROMIUM, check_report_in_chromium

SWEEP_YAML = """\
methods: [dpo, ln-dpo, simpo]
seeds: 1
grid:
  dpo: {beta: [0.1, 0.5]}
  ln-dpo: {beta: [1.0, 3.0]}
  simpo: {gamma: [0.5, 1.5]}
"""


def _sweep_args(config_file, out, world_cache, *extra):
    """Two local workers (one thread each on 2 cores: the study world's default there), whatever
    this machine's core count: every sweep of these tests computes alike unless it says otherwise."""
    return ["sweep", str(config_file), "--world", "tiny", "--out", str(out), "--cache_dir", str(world_cache),
            "--workers", "2", *extra]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, world_cache):
    """The reference sweep, run as a user runs it (a process of its own, so that the workers' output
    is seen as theirs): its stderr is kept beside `out` in sweep-stderr.txt."""
    root = tmp_path_factory.mktemp("sweep")
    config_file = root / "sweep.yaml"
    config_file.write_text(SWEEP_YAML)
    out = root / "out"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "alignlab", *_sweep_args(config_file, out, world_cache)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (root / "sweep-stderr.txt").write_text(done.stderr)
    return out, config_file, time.perf_counter() - started


@pytest.mark.slow
def test_tiny_sweep_trains_evaluates_and_reports_every_run(tiny_sweep):
    out, _, _ = tiny_sweep
    with RunStore(out / "runs.sqlite") as store:
        runs = store.runs()
    assert len(runs) == 6 and all(r.status == "finished" and r.attempts == 1 for r in runs)
    for run in runs:
        for name in ("config.yaml", "train_summary.json", "model/model.safetensors", "samples.parquet", "metrics.json"):
            assert (out / run.run_dir / name).exists(), (run.name, name)
        samples = pq.read_table(out / run.run_dir / "samples.parquet").to_pydict()
        assert run.metrics["mean_score"]["value"] == pytest.approx(np.mean(samples["gold_score"]))
    check_in_distribution_evaluations(out, [run.run_dir for run in runs])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["dpo"]["configuration"] in {r.name.rsplit("-s", 1)[0] for r in runs if r.method == "dpo"}
    # One seed per configuration (seeds: 1): estimates, and no verdict without measured training noise.
    assert {c["verdict"] for c in summary["claims"]} <= {"inconclusive", "not tested"}
    assert len(summary["claims"]) >= 10
    for name in ("report.html", "report.md", "sweep.yaml", "study.json"):
        assert (out / name).exists()


def check_in_distribution_evaluations(out, run_dirs):
    """data/indist.jsonl holds the first held-out pairs, as many as the test prompts that report (the
    second half of an odd count is the larger), or all held-out pairs when fewer, and the SFT model
    and every run were evaluated on them."""
    lines = lambda name: (out / "data" / name).read_text().splitlines()
    indist, heldout, test = lines("indist.jsonl"), lines("heldout.jsonl"), lines("test.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection"]["reporting_prompts"] == (len(test) + 1) // 2
    assert indist == heldout[:min((len(test) + 1) // 2, len(heldout))]
    for run_dir in ["runs/sft", *run_dirs]:
        samples = pq.read_table(out / run_dir / "indist" / "samples.parquet").to_pydict()
        assert samples["prompt_id"] == [json.loads(line)["id"] for line in indist], run_dir
        assert len(samples["gold_score"]) == len(indist) and "proxy_score" not in samples
        metrics = json.loads((out / run_dir / "indist" / "metrics.json").read_text())
        assert metrics["mean_score"]["value"] == pytest.approx(np.mean(samples["gold_score"]))
        assert metrics["win_vs_chosen"]["value"] == pytest.approx(
            np.mean(np.greater(samples["gold_score"], samples["chosen_score"])))


@pytest.mark.slow
def test_starting_a_finished_sweep_again_reruns_nothing(tiny_sweep, world_cache):
    out, config_file, first_seconds = tiny_sweep
    report = (out / "report.md").read_text()
    started = time.perf_counter()
    assert main(_sweep_args(config_file, out, world_cache)) == 0
    with RunStore(out / "runs.sqlite") as store:
        assert all(r.attempts == 1 for r in store.runs())
    assert (out / "report.md").read_text() == report
    assert time.perf_counter() - started < first_seconds


@pytest.mark.slow
def test_a_second_sweep_in_a_running_sweeps_directory_is_refused(tiny_sweep, world_cache, capsys):
    import fcntl

    from alignlab.output_dirs import lock_path

    out, config_file, _ = tiny_sweep
    with open(lock_path(out), "a") as held:  # as a running sweep holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(_sweep_args(config_file, out, world_cache)) == 2
    assert "another alignlab process is writing there" in capsys.readouterr().err


@pytest.mark.slow
def test_resuming_removes_the_temp_files_a_killed_writer_left(tiny_sweep, world_cache):
    out, config_file, _ = tiny_sweep
    # Named as atomic writes name them: `.NAME.` + tempfile's 8 random characters + `.tmp`.
    left = [out / "runs" / "sft" / ".samples.parquet.x1y2z3ab.tmp", out / "runs" / ".dpo-beta0.5.ab12cd_9.tmp"]
    left[0].write_bytes(b"half a parquet file")
    left[1].mkdir()
    (left[1] / "metrics.json").write_text("{")
    partial = out / "runs" / ".kept.partial"  # a killed training run's checkpoint: resumable, so kept
    partial.mkdir()
    users = out / "runs" / ".notes.tmp"  # not a name alignlab gives: not alignlab's to delete
    users.write_text("mine")
    assert main(_sweep_args(config_file, out, world_cache)) == 0
    assert not any(path.exists() for path in left) and partial.exists() and users.read_text() == "mine"
    partial.rmdir()
    users.unlink()


@pytest.mark.slow
def test_a_run_killed_between_its_two_evaluations_redoes_only_the_second(tiny_sweep, world_cache, tmp_path):
    reference, config_file, _ = tiny_sweep
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    with RunStore(out / "runs.sqlite") as store:
        run = store.runs()[0]
    indist = out / run.run_dir / "indist" / "samples.parquet"
    written = indist.stat().st_mtime_ns
    (out / run.run_dir / "metrics.json").unlink()  # as when killed before the test-prompt evaluation ended
    assert main(_sweep_args(config_file, out, world_cache)) == 0
    assert indist.stat().st_mtime_ns == written
    assert (out / run.run_dir / "metrics.json").exists()
    assert (out / "summary.json").read_text() == (reference / "summary.json").read_text()


@pytest.mark.slow
def test_a_resumed_sweep_evaluates_in_distribution_on_the_prompts_its_runs_had(tiny_sweep, world_cache, tmp_path):
    """A sweep begun when data/indist.jsonl held as many pairs as there are test prompts (before it
    held the reporting half's count) keeps them: a run evaluated on resuming gets the same prompts."""
    reference, config_file, _ = tiny_sweep
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    earlier = (out / "data" / "heldout.jsonl").read_text().splitlines()[:len(
        (out / "data" / "test.jsonl").read_text().splitlines())]
    (out / "data" / "indist.jsonl").write_text("".join(line + "\n" for line in earlier))
    shutil.rmtree(out / "runs" / "sft" / "indist")
    with RunStore(out / "runs.sqlite") as store:
        runs = store.runs()
    for run in runs:  # as if killed before their evaluations: both are redone
        shutil.rmtree(out / run.run_dir / "indist")
        (out / run.run_dir / "metrics.json").unlink()
    assert main(_sweep_args(config_file, out, world_cache)) == 0
    ids = [json.loads(line)["id"] for line in earlier]
    for run_dir in ["runs/sft", *(run.run_dir for run in runs)]:
        assert pq.read_table(out / run_dir / "indist" / "samples.parquet").to_pydict()["prompt_id"] == ids
    assert {m["prompts"] for m in json.loads((out / "summary.json").read_text())[
        "in_distribution_vs_ood"].values()} == {len(ids)}


@pytest.mark.slow
def test_a_different_configuration_in_the_same_directory_is_refused(tiny_sweep, world_cache, tmp_path, capsys):
    out, _, _ = tiny_sweep
    other = tmp_path / "other.yaml"
    other.write_text(SWEEP_YAML.replace("0.5]", "0.7]"))
    assert main(_sweep_args(other, out, world_cache)) == 2
    assert "sweep.yaml: this directory holds a sweep with a different configuration" in capsys.readouterr().err


@pytest.mark.slow
def test_report_command_rewrites_the_same_report(tiny_sweep, tmp_path):
    out, _, _ = tiny_sweep
    before = (out / "summary.json").read_text()
    assert main(["report", str(out)]) == 0
    assert (out / "summary.json").read_text() == before
    assert main(["report", str(tmp_path)]) == 2


@pytest.mark.slow
def test_sweep_killed_at_ten_random_moments_resumes_with_no_run_lost_or_duplicated(tiny_sweep, world_cache, tmp_path):
    """SIGKILL the sweep's process group at random moments (imports, shared stages, training,
    evaluation, report) and start it again each time; a sweep that completes before the tenth kill
    is checked and a fresh one started, so all ten kills land mid-sweep."""
    reference, config_file, _ = tiny_sweep
    rng = random.Random(0)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    sweeps, kills = [tmp_path / "out0"], 0
    while True:
        command = [sys.executable, "-m", "alignlab", *_sweep_args(config_file, sweeps[-1], world_cache)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            _, err = process.communicate(timeout=rng.uniform(2.0, 9.0) if kills < 10 else None)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            kills += 1
            continue
        assert process.returncode == 0, err.decode()[-2000:]
        if kills >= 10:
            break
        sweeps.append(tmp_path / f"out{len(sweeps)}")
    print(f"{kills} SIGKILLs over {len(sweeps)} sweeps, each resumed to completion")
    for out in sweeps:
        with RunStore(out / "runs.sqlite") as store:
            runs = store.runs()
        assert len(runs) == 6 and len({r.name for r in runs}) == 6
        assert all(r.status == "finished" for r in runs)
        assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(["sft", *(r.name for r in runs)])
        assert not list(out.rglob("*.tmp*")) and not list(out.rglob(".*.partial"))
        for name in ("summary.json", "report.md"):
            assert (out / name).read_text() == (reference / name).read_text(), (out, name)


def _metrics_by_run(out) -> dict:
    with RunStore(out / "runs.sqlite") as store:
        return {r.name: r.metrics for r in store.runs()}


def assert_same_results(out, reference) -> None:
    """Every metric of every run equal; the KL ones to float rounding, since a worker's single thread
    sums the logits' matrix products in another order than two threads do."""
    ours, theirs = _metrics_by_run(out), _metrics_by_run(reference)
    assert ours.keys() == theirs.keys()
    differing = [(run, key) for run in ours for key in ours[run]
                 if ours[run][key] != theirs[run][key] and key not in ("kl", "ln_kl")]
    assert not differing, differing
    for run in ours:
        for key in ("kl", "ln_kl"):
            assert ours[run][key] == pytest.approx(theirs[run][key], rel=1e-5), (run, key)


@pytest.mark.slow
def test_one_process_gives_the_same_results_as_parallel_local_workers(tiny_sweep, world_cache, tmp_path):
    reference, config_file, _ = tiny_sweep
    out = tmp_path / "out"
    assert main(_sweep_args(config_file, out, world_cache, "--workers", "1")) == 0
    assert_same_results(out, reference)
    err = (reference.parent / "sweep-stderr.txt").read_text()
    assert "sweep:" in err and "dpo:" not in err  # the workers': the sweep's bar, not the workers' training bars
    assert "TQDM_DISABLE" not in os.environ


@pytest.mark.slow
def test_ray_executor_runs_the_sweep_on_a_local_ray_instance(tiny_sweep, world_cache, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'alignlab[ray]'")
    from alignlab.config import build_config
    from alignlab.study.sweep import run_sweep

    reference, config_file, _ = tiny_sweep
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = build_config(StudyConfig, str(config_file), {
            "out": str(tmp_path / "out"), "preset": "tiny", "cache_dir": str(world_cache), "grid_preset": None,
            "executor": "ray", "workers": 2})
        run_sweep(config)
    finally:
        ray.shutdown()
    assert_same_results(tmp_path / "out", reference)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed: apt-get install chromium")
def test_report_of_a_real_sweep_renders_every_figure_in_chromium(tiny_sweep, tmp_path):
    out, _, _ = tiny_sweep
    findings = check_report_in_chromium(out / "report.html", tmp_path)
    assert len(findings["images"]) == len(list((out / "figures").glob("*.png")))


@pytest.mark.slow
def test_a_selection_set_of_the_users_picks_runs_and_every_test_prompt_reports(tiny_sweep, world_cache, tmp_path):
    reference, _, _ = tiny_sweep
    config = tmp_path / "select.yaml"
    # The world's held-out pairs stand in for the user's own selection prompts.
    config.write_text(f"methods: [dpo]\nseeds: 1\ngrid:\n  dpo: {{beta: [0.1, 0.5]}}\n"
                      f"selection_data: {reference / 'data' / 'heldout.jsonl'}\n")
    out = tmp_path / "out"
    assert main(_sweep_args(config, out, world_cache)) == 0
    summary = json.loads((out / "summary.json").read_text())
    selection = summary["selection"]
    assert "separate selection set" in selection["rule"]
    heldout = (reference / "data" / "heldout.jsonl").read_text().splitlines()
    test = (out / "data" / "test.jsonl").read_text().splitlines()
    assert (selection["selection_prompts"], selection["reporting_prompts"]) == (len(heldout), len(test))
    # Every test prompt reports, so the in-distribution evaluation takes as many held-out pairs.
    assert (out / "data" / "indist.jsonl").read_text().splitlines() == heldout[:len(test)]
    scores = {}
    for run_dir in (out / "runs").glob("dpo-*"):
        picked = pq.read_table(run_dir / "selection" / "samples.parquet").to_pydict()
        assert len(picked["gold_score"]) == len(heldout)
        scores[run_dir.name.rsplit("-s", 1)[0]] = np.mean(picked["gold_score"])
    assert summary["best"]["dpo"]["configuration"] == max(scores, key=scores.get)


def _reference_rows(cache) -> dict:
    import sqlite3

    with sqlite3.connect(cache / "reference-logps.sqlite") as db:
        return dict(db.execute("SELECT key, value FROM rows"))


@pytest.mark.slow
def test_parallel_workers_under_mixed_precision_read_the_autocast_values_the_warm_up_stored(tiny_sweep, world_cache,
                                                                                              tmp_path):
    """Issue 31, item 4: with workers > 1 the sweep fills the reference cache before the runs start; under
    mixed_precision it must store the autocast values a run computes (never float32 ones under the
    autocast key), for every pair the runs train on."""
    from alignlab.config import TrainConfig, build_config
    from alignlab.training import train

    config_file = tmp_path / "sweep.yaml"
    config_file.write_text("methods: [dpo]\nseeds: 1\ngrid:\n  dpo: {beta: [0.1, 0.5]}\n"
                           "training: {mixed_precision: bf16}\n")
    caches = {}
    for name in ("sweep", "alone"):  # the built world, without the reference rows of earlier tests
        caches[name] = shutil.copytree(world_cache, tmp_path / f"cache-{name}",
                                       ignore=shutil.ignore_patterns("reference-logps.sqlite*"))
    out = tmp_path / "out"
    assert main(_sweep_args(config_file, out, caches["sweep"], "--workers", "2")) == 0
    with RunStore(out / "runs.sqlite") as store:
        runs = store.runs()
    assert len(runs) == 2 and all(run.status == "finished" for run in runs)
    for run in runs:
        summary = json.loads((out / run.run_dir / "train_summary.json").read_text())
        assert summary["reference_cache_hit"] is True and summary["reference_pairs_computed"] == 0, run.name
    # A run on its own from an empty reference cache computes the same values under the same keys, bit
    # for bit: a whole epoch, so its pairs are those of the warm-up (every pair, though each configuration
    # draws them in an order of its own), in the same batches.
    alone = build_config(TrainConfig, str(out / runs[0].run_dir / "config.yaml"),
                         {"out": str(tmp_path / "alone"), "cache_dir": str(caches["alone"])})
    train(alone)
    assert _reference_rows(caches["alone"]) == _reference_rows(caches["sweep"])


@pytest.mark.slow
def test_a_runs_results_are_those_of_the_same_run_trained_and_evaluated_alone(tiny_sweep, tmp_path):
    """One run of the study against the same run done alone: `alignlab train --config` on the
    config.yaml the study wrote, in a process of its own on as many threads as the study's worker
    (with another count the gradients' sums round differently), then evaluated in this process on
    the study's test prompts as a study evaluates a run (the world's gold reward, the tiny world's
    generation settings, seed 0): the same responses, lengths and scores; KL to float rounding, as
    between executors (assert_same_results)."""
    from alignlab.study.executors import available_cpus
    from alignlab.data.pairs import load_pairs
    from alignlab.evaluation.evaluate import evaluate_model
    from alignlab.models.generate import GenerationConfig
    from alignlab.study.config import WORLD_GENERATION
    from alignlab.world import build_world, world_config

    reference, _, _ = tiny_sweep
    with RunStore(reference / "runs.sqlite") as store:
        run = next(r for r in store.runs() if r.method == "dpo")
    run_dir, alone = reference / run.run_dir, tmp_path / "alone"
    done = subprocess.run([sys.executable, "-m", "alignlab", "train", "--config", str(run_dir / "config.yaml"),
                           "--out", str(alone)], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(max(1, available_cpus() // 2))})
    assert done.returncode == 0, done.stderr[-2000:]
    sft_model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    evaluate_model(str(alone / "model"), load_pairs(str(reference / "data" / "test.jsonl"), "pairs").pairs,
                   build_world(world_config("tiny", seed=0)).score, sft_model_path=sft_model,
                   sft_samples=pq.read_table(reference / "runs" / "sft" / "samples.parquet").to_pydict(),
                   generation=GenerationConfig(**{**WORLD_GENERATION["tiny"], "seed": 0}), out_dir=alone / "eval")
    ours = pq.read_table(run_dir / "samples.parquet").to_pydict()
    theirs = pq.read_table(alone / "eval" / "samples.parquet").to_pydict()
    assert ours.keys() == theirs.keys()
    for column in ours:
        if column in ("kl", "ln_kl"):
            assert ours[column] == pytest.approx(theirs[column], rel=1e-5, abs=1e-9), column
        else:
            assert ours[column] == theirs[column], column
    study_metrics, alone_metrics = (json.loads(p.read_text()) for p in (run_dir / "metrics.json",
                                                                        alone / "eval" / "metrics.json"))
    assert {k: v for k, v in study_metrics.items() if k not in ("kl", "ln_kl")} == \
        {k: v for k, v in alone_metrics.items() if k not in ("kl", "ln_kl")}


def test_the_study_worlds_runs_default_to_one_worker_per_core_and_your_models_to_one(monkeypatch):
    from alignlab.study import executors

    monkeypatch.setattr(executors, "available_cpus", lambda: 2)
    assert executors.default_workers(StudyConfig(out="o")) == 2
    assert executors.default_workers(StudyConfig(out="o", workers=1)) == 1
    assert executors.default_workers(StudyConfig(out="o", executor="ray")) == 1
    assert executors.default_workers(StudyConfig(out="o", model="m", train_data="d", test_data="t", gold_rm="g")) == 1
    monkeypatch.setattr(executors, "available_cpus", lambda: 64)
    assert executors.default_workers(StudyConfig(out="o")) == executors.MAX_DEFAULT_WORKERS == 8
    monkeypatch.setattr(executors, "available_cpus", lambda: 1)
    assert executors.default_workers(StudyConfig(out="o")) == 1
