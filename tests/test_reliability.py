"""Nothing half-written, nothing untrusted (issue 8): failed writes, unwritable outputs, the world cache.

Unwritable outputs are tested with a path under a regular file (`out=<file>/sub`), which no user,
root included, can create: the tests run as root, for whom `chmod` does not make a directory
unwritable. The permission-bit check itself is tested with chmod where that is effective (not
root), and the read-only case by making the probe file's creation fail as a read-only filesystem
would (EROFS).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from alignlab import atomic
from alignlab.cli import main
from alignlab.errors import AlignlabError


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------- a write that fails mid-way

def test_a_failed_write_leaves_no_file_and_no_temp_file(tmp_path):
    target = tmp_path / "results.jsonl"
    with pytest.raises(AlignlabError) as caught:
        with atomic.atomic_open(target) as handle:
            handle.write('{"half": "a record"')
            raise OSError(errno.ENOSPC, "No space left on device")  # the disk fills while writing
    message = str(caught.value)
    assert str(target) in message and "No space left on device" in message and "free disk space" in message
    assert leftovers(tmp_path) == []


def test_disk_full_at_fsync_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic.write_json(target, {"old": 1})
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(AlignlabError, match="metrics.json: cannot write"):
        atomic.write_json(target, {"new": 2})
    assert leftovers(tmp_path) == ["metrics.json"]
    assert json.loads(target.read_text()) == {"old": 1}


def test_data_command_on_a_full_disk_exits_with_one_line_and_no_file(pairs_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "pairs.jsonl"
    out.parent.mkdir()
    monkeypatch.setattr(os, "fsync", disk_full)
    code = main(["data", str(pairs_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"alignlab: error: {out}: cannot write (No space left on device); "
                                        "nothing was written there; free disk space (or choose an output on "
                                        "another disk) and run again"]
    assert leftovers(out.parent) == []


def test_disk_full_outside_atomic_writes_is_one_line_too(tiny_model, pairs_file, tmp_path, monkeypatch, capsys):
    """ENOSPC raised anywhere (here by save_pretrained at the end of training) is not a traceback."""
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    out = tmp_path / "run"
    code = main(["train", "--method", "sft", "--model", str(tiny_model), "--data", str(pairs_file),
                 "--out", str(out), "--max_length", "64", "--max_prompt_length", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "No space left on device" in err and "free disk space" in err
    assert not out.exists()  # a partial run directory may stay for --resume; the result never appears


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one(tiny_model, pairs_file, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from alignlab.training import train
    from alignlab.training.outputs import partial_dir
    from conftest import config_for

    writes = {"n": 0}
    real_save_pretrained = PreTrainedModel.save_pretrained

    def full_on_the_second_checkpoint(*args, **kwargs):
        writes["n"] += 1
        if writes["n"] == 2:
            disk_full()
        return real_save_pretrained(*args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_on_the_second_checkpoint)
    out = tmp_path / "run"
    with pytest.raises(AlignlabError, match=r"disk refused a write \(No space left.*checkpoint \(step 2\).*--resume"):
        train(config_for(tiny_model, pairs_file, out, batch_size=2, checkpoint_steps=2))
    run_dir = partial_dir(out)
    assert leftovers(run_dir / "checkpoint-2") and not list(run_dir.glob("checkpoint-*.tmp"))
    assert json.loads((run_dir / "checkpoint-2" / "loop_state.json").read_text())["step"] == 2


# ---------------------------------------------------------------- a real disk that fills during training

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: a real filesystem that answers ENOSPC, the way a full disk does."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_at_micro_batch(disk: Path, micro_batch: int, monkeypatch, leave: int = 32 << 10) -> Path:
    """At training's `micro_batch`-th micro-batch, another writer fills `disk` up to `leave` bytes."""
    from alignlab.training import offline

    filler, calls, real_pair_batch = disk / "another-program.bin", {"n": 0}, offline.pair_batch

    def filling(*args):
        calls["n"] += 1
        if calls["n"] == micro_batch:
            filler.write_bytes(b"\0" * max(0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - leave))
        return real_pair_batch(*args)

    monkeypatch.setattr(offline, "pair_batch", filling)
    return filler


def error_lines(capsys) -> list[str]:
    """The error lines of stderr (the progress bar writes there too); a traceback fails the test."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("alignlab: error:")]


def train_argv(model, data, out, *extra) -> list[str]:
    return ["train", "--method", "dpo", "--model", str(model), "--data", str(data), "--out", str(out),
            "--max_length", "64", "--max_prompt_length", "32", "--batch_size", "4", *extra]


def test_a_disk_that_fills_before_any_checkpoint_leaves_nothing_behind(tiny_model, pairs_file, small_disk,
                                                                      monkeypatch, capsys):
    """Issue 28: safetensors reported the full disk as a SafetensorError traceback, and the partial
    run stayed on the full disk with nothing in it that --resume could use."""
    filler = fill_at_micro_batch(small_disk, 1, monkeypatch)
    code = main(train_argv(tiny_model, pairs_file, small_disk / "run"))
    err = error_lines(capsys)
    assert code == 2 and len(err) == 1, err
    assert "No space left on device" in err[0] and "nothing was kept" in err[0] and "free disk space" in err[0]
    assert sorted(os.listdir(small_disk)) == [filler.name]


def test_a_disk_that_fills_after_a_checkpoint_keeps_it_and_resume_finishes(tiny_model, pairs_file, small_disk,
                                                                         monkeypatch, capsys):
    from alignlab.training.outputs import partial_dir

    out = small_disk / "run"
    filler = fill_at_micro_batch(small_disk, 3, monkeypatch)
    assert main(train_argv(tiny_model, pairs_file, out, "--checkpoint_steps", "2")) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "checkpoint (step 2) is kept" in err[0] and "--resume" in err[0], err
    kept = sorted(os.listdir(partial_dir(out)))
    assert "checkpoint-2" in kept and "model" not in kept and "checkpoint-4.tmp" not in kept
    filler.unlink()  # the user frees space, then resumes
    monkeypatch.undo()
    assert main(train_argv(tiny_model, pairs_file, out, "--checkpoint_steps", "2", "--resume")) == 0
    assert (out / "model" / "model.safetensors").exists() and not partial_dir(out).exists()


# ---------------------------------------------------------------- unwritable output, found before work

def test_an_output_under_a_regular_file_is_refused_before_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(AlignlabError, match=f"{blocker}/sub/run: cannot create it, {blocker} is a file"):
        atomic.check_output_dir(blocker / "sub" / "run")
    with pytest.raises(AlignlabError, match=f"{blocker}/out.jsonl: cannot create it"):
        atomic.check_output_file(blocker / "out.jsonl")
    assert leftovers(tmp_path) == ["a-file"]


def test_a_directory_given_for_an_output_file_is_refused(tmp_path):
    with pytest.raises(AlignlabError, match="is a directory; --out must name a file"):
        atomic.check_output_file(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; covered by the other unwritable tests")
def test_a_read_only_directory_is_refused_before_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(AlignlabError, match="is not writable; choose a writable --out"):
            atomic.check_output_dir(locked / "run")
    finally:
        locked.chmod(0o700)


def test_a_read_only_filesystem_is_refused_before_work(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(AlignlabError, match=r"run: cannot write in .*Read-only file system.*choose a writable --out"):
        atomic.check_output_dir(tmp_path / "run")


def test_a_full_disk_is_refused_before_work(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(AlignlabError, match="is full; free space"):
        atomic.check_output_dir(tmp_path / "run")


def test_an_existing_writable_directory_passes_and_nothing_is_left(tmp_path):
    atomic.check_output_dir(tmp_path)
    atomic.check_output_dir(tmp_path / "new" / "deeper")
    atomic.check_output_file(tmp_path / "new" / "pairs.jsonl")
    assert leftovers(tmp_path) == []


def test_staged_dir_keeps_an_existing_directory_whole_on_failure(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with atomic.staged_dir(out) as staging:
            (staging / "metrics.json").write_text("{}")
            raise RuntimeError("the model failed to load")
    assert leftovers(tmp_path) == ["eval"] and leftovers(out) == ["notes.txt"]
    with atomic.staged_dir(out) as staging:
        (staging / "metrics.json").write_text("{}")
    assert leftovers(out) == ["metrics.json", "notes.txt"] and leftovers(tmp_path) == ["eval"]


# ---------------------------------------------------------------- the world cache is validated on load

SMALL_WORLD = dict(n_topics=2, n_train_pairs=16, n_heldout_pairs=4, n_test_prompts=4, hidden_size=16, layers=1,
                   heads=2, pretrain_conversations=32, pretrain_steps=3, pretrain_batch_size=8, sft_epochs=1,
                   sft_batch_size=8)


def test_a_corrupt_or_foreign_world_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    from alignlab.models.loading import load_causal_lm
    from alignlab.world import (WORLD_MANIFEST, build_world, build_world_models, world_cache_problem, world_config,
                                world_key)

    world = build_world(world_config("tiny", **SMALL_WORLD))
    cache = tmp_path / "cache"
    first = build_world_models(world, cache)
    home = first.pretrained.parent
    assert not first.cached and (home / WORLD_MANIFEST).exists()
    key = world_key(world.config)
    assert world_cache_problem(home, key) is None
    assert build_world_models(world, cache).cached  # whole and ours: used

    weights = first.sft / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the tensor data: the header still parses
    weights.write_bytes(bytes(blob))
    caplog.set_level(logging.WARNING, logger="alignlab.world.models")
    rebuilt = build_world_models(world, cache)
    assert not rebuilt.cached
    assert "sft/model/model.safetensors does not match its checksum; rebuilding it" in caplog.text
    assert world_cache_problem(home, key) is None
    load_causal_lm(str(rebuilt.sft))  # the rebuilt model loads
    assert not any(p.name.startswith(".") for p in (cache / "world").iterdir())  # no staging left behind

    # Foreign: a directory whose manifest carries another world's key is never used.
    manifest = json.loads((home / WORLD_MANIFEST).read_text())
    (home / WORLD_MANIFEST).write_text(json.dumps({**manifest, "key": "0" * 64}))
    assert "another world config" in world_cache_problem(home, key)
    (home / WORLD_MANIFEST).unlink()
    assert world_cache_problem(home, key) == "it has no manifest.json"
    (home / WORLD_MANIFEST).write_text(json.dumps({**manifest, "files": {**manifest["files"],
                                                                            "../../etc/passwd": "0" * 64}}))
    assert world_cache_problem(home, key) == "../../etc/passwd is missing"
