"""Output safety (issue 13, classes 1 and 2): alignlab deletes only what it created, never writes
over its inputs or into `.`, `..`, `/` or the home directory, and one process writes an output.

The command-level tests run every command that writes with its output at `.`, at a directory
holding its input, at a non-empty directory alignlab did not create (with `--overwrite` too), and
while another process holds the output's lock; each asserts exit 2, one `alignlab: error:` line,
and that no file outside what alignlab created changed (every file's bytes and mtime, and the set
of paths, compared before and after).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.errors import AlignlabError
from alignlab.output_dirs import (MARKER, check_replaceable, claim_output_dir, lock_path, mark, marked_kind,
                                  output_lock, refuse_unsafe_output)
from alignlab.models.tiny import build_tiny_classifier


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root`: (sha256, mtime) of a file, "dir" for a directory."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir():
            state[key] = "dir"
        else:
            state[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return state


def precious(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "precious.txt").write_text("the user's own file")
    return directory


# ---------------------------------------------------------------- places never written

@pytest.mark.parametrize("where", [".", "..", "/", "sub/..", "./"])
def test_the_current_directory_and_those_above_it_are_refused(where, tmp_path, monkeypatch):
    (tmp_path / "work" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(AlignlabError, match="never writes its results there"):
        refuse_unsafe_output(where)


def test_the_home_directory_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(AlignlabError, match="home directory"):
        refuse_unsafe_output(str(home))
    refuse_unsafe_output(str(home / "runs" / "a"))  # a new directory inside it is fine


def test_an_input_or_a_directory_holding_one_is_refused(tmp_path):
    data = tmp_path / "data" / "pairs.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    model = tmp_path / "model"
    model.mkdir()
    for out, word in [(tmp_path / "data", "holds"), (tmp_path, "holds"), (model, "is"), (data, "is")]:
        with pytest.raises(AlignlabError, match=f"{word} an input of this command"):
            refuse_unsafe_output(out, [str(data), str(model), None])
    refuse_unsafe_output(tmp_path / "runs", [str(data), str(model), "org/hub-model"])
    refuse_unsafe_output(model / "run", [str(model)])  # beside the weights, not over them


# ---------------------------------------------------------------- ownership

def test_replaceable_only_when_missing_empty_or_marked(tmp_path):
    check_replaceable(tmp_path / "missing", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", overwrite=False)

    users = precious(tmp_path / "users")
    for overwrite in (False, True):
        with pytest.raises(AlignlabError, match="was not created by alignlab"):
            check_replaceable(users, overwrite=overwrite)

    ours = tmp_path / "ours"
    ours.mkdir()
    mark(ours, "training run")
    (ours / "metrics.json").write_text("{}")
    with pytest.raises(AlignlabError, match="holds an alignlab training run already.*--overwrite"):
        check_replaceable(ours, overwrite=False)
    check_replaceable(ours, overwrite=True)
    check_replaceable(ours, overwrite=False, writes=["samples.parquet"])  # adds, replaces nothing
    with pytest.raises(AlignlabError, match="--overwrite"):
        check_replaceable(ours, overwrite=False, writes=["samples.parquet", "metrics.json"])

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(AlignlabError, match="not a directory"):
        check_replaceable(tmp_path / "a-file", overwrite=True)


def test_a_forged_or_linked_marker_does_not_make_a_directory_alignlabs(tmp_path):
    forged = precious(tmp_path / "forged")
    (forged / MARKER).write_text('{"created_by": "someone else"}')
    garbage = precious(tmp_path / "garbage")
    (garbage / MARKER).write_bytes(b"\xff\x00 not json")
    real = tmp_path / "real"
    real.mkdir()
    mark(real, "sweep")
    linked = precious(tmp_path / "linked")
    (linked / MARKER).symlink_to(real / MARKER)
    assert [marked_kind(d) for d in (forged, garbage, linked, real)] == [None, None, None, "sweep"]


# ---------------------------------------------------------------- the lock

HOLD_LOCK = """
import sys, time
from alignlab.output_dirs import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_is_refused_until_the_holder_dies_even_by_sigkill(tmp_path):
    out = tmp_path / "runs" / "a"
    holder = _holder(out)
    try:
        with pytest.raises(AlignlabError, match="another alignlab process is writing there"):
            with output_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).exists()  # a killed holder cannot remove it ...
    with output_lock(out):  # ... but the OS released its lock
        pass
    assert not lock_path(out).exists()


def test_directories_made_for_the_lock_go_again_when_the_work_fails(tmp_path):
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(RuntimeError):
        with claim_output_dir(out, overwrite=False):
            raise RuntimeError("bad input found mid-way")
    assert list(tmp_path.iterdir()) == []


def test_claims_are_exclusive_under_contention(tmp_path):
    """Eight processes race for one output: exactly one gets it at a time (a file each writes and
    reads back while holding the claim is never another's)."""
    script = """
import sys, os, time
from alignlab.errors import AlignlabError
from alignlab.output_dirs import claim_output_dir
out, me = sys.argv[1], sys.argv[2]
won = 0
deadline = time.time() + 3
while time.time() < deadline:
    try:
        with claim_output_dir(out, overwrite=True):
            with open(os.path.join(os.path.dirname(out), "owner"), "w") as f:
                f.write(me)
            time.sleep(0.002)
            with open(os.path.join(os.path.dirname(out), "owner")) as f:
                assert f.read() == me, "two holders at once"
            won += 1
    except AlignlabError:
        pass
print(won)
"""
    out = tmp_path / "contended"
    racers = [subprocess.Popen([sys.executable, "-c", script, str(out), str(i)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in range(8)]
    results = [r.communicate(timeout=60) for r in racers]
    assert all(r.returncode == 0 for r in racers), [err for _, err in results]
    assert sum(int(stdout) for stdout, _ in results) > 8
    assert not lock_path(out).exists()


# ---------------------------------------------------------------- every command

@pytest.fixture()
def workspace(tmp_path, tiny_model, pairs_file):
    """A user's project directory: their data, a model, a gold RM, and a file of their own."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    data = root / "data" / "pairs.jsonl"
    data.write_bytes(pairs_file.read_bytes())
    (root / "notes.txt").write_text("my notes")
    gold = build_tiny_classifier(root / "gold", tiny_model, num_labels=1)
    return root, data, gold


def commands(data: Path, model: Path, gold: Path, out: str) -> dict[str, list[str]]:
    lengths = ["--max_length", "64", "--max_prompt_length", "32"]
    return {
        "data": ["data", str(data), "--out", out],
        "train": ["train", "--method", "dpo", "--model", str(model), "--data", str(data), "--out", out, *lengths],
        "train-rm": ["train-rm", "--model", str(model), "--data", str(data), "--out", out, *lengths],
        "eval": ["eval", "--model", str(model), "--data", str(data), "--gold_rm", str(gold), "--out", out,
                 "--max_new_tokens", "2", "--limit", "2"],
        "run": ["run", "--world", "tiny", "--out", out],
        "sweep": ["sweep", "--grid", "small", "--world", "tiny", "--out", out],
        "bench": ["bench", "--quick", "--out", out],
    }


def assert_refused(argv, root: Path, capsys, *needles):
    before = snapshot(root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("alignlab: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(root) == before, "a file outside what alignlab created changed"


@pytest.mark.parametrize("command", ["data", "train", "train-rm", "eval", "run", "sweep", "bench"])
def test_every_command_refuses_the_current_directory(command, workspace, tiny_model, capsys, monkeypatch):
    root, data, gold = workspace
    monkeypatch.chdir(root)
    argv = commands(data, tiny_model, gold, ".")[command]
    needle = "never writes its results there"
    assert_refused(argv, root, capsys, needle)
    overwrite = ["--overwrite", "true"] if command in ("train", "train-rm", "run", "sweep") else ["--overwrite"]
    assert_refused([*argv, *overwrite], root, capsys, needle)


@pytest.mark.parametrize("command", ["train", "train-rm", "eval", "run", "sweep"])
def test_every_command_refuses_a_directory_holding_its_input(command, workspace, tiny_model, capsys):
    root, data, gold = workspace
    if command in ("run", "sweep"):  # the study world reads no file: its config file is the input
        config = root / "data" / "study.yaml"
        config.write_text("seed: 0\n")
        argv = [*commands(data, tiny_model, gold, str(root / "data"))[command], "--config", str(config)]
        if command == "sweep":
            argv = ["sweep", str(config), *argv[1:-2]]
    else:
        argv = commands(data, tiny_model, gold, str(root / "data"))[command]
    assert_refused(argv, root, capsys, "holds an input of this command")


def test_data_refuses_to_write_over_its_input_and_existing_files(workspace, tiny_model, capsys):
    root, data, gold = workspace
    assert_refused(["data", str(data), "--out", str(data), "--overwrite"], root, capsys, "is an input")
    assert_refused(["data", str(data), "--out", str(root / "notes.txt")], root, capsys, "exists", "--overwrite")
    assert main(["data", str(data), "--out", str(root / "notes.txt"), "--overwrite"]) == 0
    assert (root / "notes.txt").read_text().count("\n") == 16


@pytest.mark.parametrize("command", ["train", "train-rm", "eval", "run", "sweep"])
def test_overwrite_never_replaces_a_directory_alignlab_did_not_create(command, workspace, tiny_model, capsys):
    root, data, gold = workspace
    users = precious(root / "results")
    argv = commands(data, tiny_model, gold, str(users))[command]
    overwrite = ["--overwrite"] if command == "eval" else ["--overwrite", "true"]
    assert_refused([*argv, *overwrite], root, capsys, "was not created by alignlab")
    assert_refused(argv, root, capsys, "was not created by alignlab")


@pytest.mark.parametrize("command", ["train", "train-rm", "eval", "run", "sweep", "report"])
def test_every_command_is_refused_while_another_process_writes_its_output(command, workspace, tiny_model, capsys):
    root, data, gold = workspace
    out = root / "runs" / "a"
    argv = ["report", str(out)] if command == "report" else commands(data, tiny_model, gold, str(out))[command]
    holder = _holder(out)
    try:
        assert_refused(argv, root / "data", capsys, "another alignlab process is writing there")
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


def test_train_writes_a_marked_run_and_overwrite_replaces_only_that(workspace, tiny_model, capsys):
    root, data, gold = workspace
    out = root / "runs" / "dpo"
    argv = commands(data, tiny_model, gold, str(out))["train"]
    assert main(argv) == 0
    assert marked_kind(out) == "training run"
    first = (out / "train_summary.json").read_bytes()
    before = snapshot(root / "data")
    assert_refused(argv, root / "data", capsys, "holds an alignlab training run already", "--overwrite")
    assert main([*argv, "--overwrite", "true", "--seed", "1"]) == 0
    assert (out / "train_summary.json").read_bytes() != first
    assert snapshot(root / "data") == before and (root / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["dpo"]  # no lock, partial or temp left


def test_eval_never_writes_into_the_run_that_holds_its_model(workspace, tiny_model, capsys):
    root, data, gold = workspace
    out = root / "runs" / "dpo"
    assert main(commands(data, tiny_model, gold, str(out))["train"]) == 0
    argv = commands(data, out / "model", gold, str(out))["eval"]
    assert_refused([*argv, "--overwrite"], root, capsys, "holds an input of this command")


def test_a_new_eval_directory_is_marked_and_a_rerun_needs_overwrite(workspace, tiny_model, capsys):
    root, data, gold = workspace
    out = root / "eval-a"
    argv = commands(data, tiny_model, gold, str(out))["eval"]
    assert main(argv) == 0
    assert marked_kind(out) == "evaluation"
    metrics = (out / "metrics.json").read_bytes()
    assert_refused(argv, root, capsys, "holds an alignlab evaluation already")
    assert main([*argv, "--overwrite", "--seed", "3"]) == 0
    assert (out / "metrics.json").read_bytes() != metrics and marked_kind(out) == "evaluation"


@pytest.mark.slow
def test_two_concurrent_trainings_of_one_output_leave_one_whole_run(workspace, tiny_model, tmp_path):
    """Two real `alignlab train` processes given the same --out: one trains, the other is refused
    at once; the run directory is the winner's, whole."""
    root, data, gold = workspace
    out = root / "runs" / "dpo"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    procs = []
    for seed in (0, 1):
        argv = [*commands(data, tiny_model, gold, str(out))["train"], "--seed", str(seed), "--epochs", "3",
                "--cache_dir", str(tmp_path / f"cache{seed}")]
        procs.append(subprocess.Popen([sys.executable, "-m", "alignlab", *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
        time.sleep(0.3)
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = next(err for p, (_, err) in zip(procs, outputs) if p.returncode == 2)
    assert "another alignlab process is writing there" in loser or "holds an alignlab training run" in loser
    winner_seed = next(seed for seed, p in zip((0, 1), procs) if p.returncode == 0)
    assert f"seed: {winner_seed}" in (out / "config.yaml").read_text()
    assert json.loads((out / "train_summary.json").read_text())["optimizer_steps"] > 0
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["dpo"]


def test_saved_models_are_readable_as_the_umask_says(workspace, tiny_model):
    """safetensors writes 0600 and mkdtemp makes 0700 whatever the umask: a trained model (and a
    directory written whole) gets the umask's modes, as every other result file does."""
    import stat

    from alignlab.atomic import atomic_dir

    umask = os.umask(0o022)
    os.umask(umask)
    root, data, gold = workspace
    out = root / "runs" / "dpo"
    assert main(commands(data, tiny_model, gold, str(out))["train"]) == 0
    with atomic_dir(root / "whole") as staged:
        from safetensors.torch import save_file
        import torch

        save_file({"w": torch.zeros(1)}, str(staged / "weights.safetensors"))
    for path in [out, out / "model", *(out / "model").iterdir(), root / "whole", root / "whole" / "weights.safetensors"]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
