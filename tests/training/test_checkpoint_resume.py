"""Interrupted training loses nothing: a killed run resumes from its checkpoint to the same result."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alignlab.training import offline as offline_module
from alignlab.training import train
from alignlab.training.outputs import partial_dir
from conftest import REPO, config_for, make_pairs, train_until_killed


def assert_same_metrics(run_dir, reference_dir):
    def lines(directory):
        return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]

    got, expected = lines(run_dir), lines(reference_dir)
    assert [m["step"] for m in got] == [m["step"] for m in expected]
    for a, b in zip(got, expected):
        for key in ("epoch", "loss", "margin", "learning_rate", "grad_norm", "pairs_seen"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)


def crash_then_resume(tiny_model, pairs_file, tmp_path, monkeypatch, settings):
    """Train whole; train again, crashing inside step 8 (after the checkpoint at step 6); resume."""
    whole = train(config_for(tiny_model, pairs_file, tmp_path / "whole", **settings))

    out = tmp_path / "resumed"
    # The 15th micro-batch is inside step 8 (2 micro-batches per step), after the checkpoint at step 6.
    train_until_killed(config_for(tiny_model, pairs_file, out, **settings), monkeypatch, 15)
    assert not out.exists()
    assert json.loads((partial_dir(out) / "checkpoint-6" / "loop_state.json").read_text())["step"] == 6

    resumed = train(config_for(tiny_model, pairs_file, out, resume=True, **settings))
    assert resumed.optimizer_steps == whole.optimizer_steps == 8
    assert resumed.final_loss == pytest.approx(whole.final_loss, rel=1e-6)
    assert_same_metrics(out, tmp_path / "whole")
    assert not partial_dir(out).exists() and not list(out.glob("checkpoint*.tmp"))
    return out, tmp_path / "whole"


RESUMED = dict(epochs=2, batch_size=2, gradient_accumulation_steps=2, checkpoint_steps=3, logging_steps=1)


def test_resume_after_a_crash_reaches_the_uninterrupted_result(tiny_model, pairs_file, tmp_path, monkeypatch):
    out, whole = crash_then_resume(tiny_model, pairs_file, tmp_path, monkeypatch, RESUMED)
    assert (out / "model" / "model.safetensors").read_bytes() == (whole / "model" / "model.safetensors").read_bytes()


def test_resume_with_dropout_draws_the_same_masks(tiny_model, pairs_file, tmp_path, monkeypatch):
    """Dropout (here LoRA's) consumes the global RNG, which the checkpoint restores; nothing between the
    restore and the next step may draw from it (a DataLoader iterated anew once did)."""
    settings = dict(RESUMED, use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.05, disable_dropout=False)
    out, whole = crash_then_resume(tiny_model, pairs_file, tmp_path, monkeypatch, settings)
    adapter = "adapter_model.safetensors"
    assert (out / "model" / adapter).read_bytes() == (whole / "model" / adapter).read_bytes()


def test_resume_refuses_a_different_configuration(tiny_model, pairs_file, tmp_path, monkeypatch):
    from alignlab.errors import AlignlabError

    monkeypatch.setattr(offline_module, "pair_batch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(config_for(tiny_model, pairs_file, tmp_path / "run", checkpoint_steps=1))
    with pytest.raises(AlignlabError, match="different configuration"):
        train(config_for(tiny_model, pairs_file, tmp_path / "run", checkpoint_steps=1, resume=True,
                         learning_rate=1e-4))


@pytest.mark.slow
def test_sigkilled_training_process_resumes_from_the_command_line(tiny_model, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(64)))
    args = [sys.executable, "-m", "alignlab", "train", "--method", "dpo", "--model", str(tiny_model),
            "--data", str(data), "--learning_rate", "5e-3", "--batch_size", "2", "--epochs", "3",
            "--checkpoint_steps", "2", "--max_length", "64", "--max_prompt_length", "32",
            "--cache_dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.run([*args, "--out", str(tmp_path / "whole")], capture_output=True, text=True,
                               env=env, cwd=REPO, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    process = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, cwd=REPO)
    state = partial_dir(out) / "checkpoint-20" / "loop_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if state.exists():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "the run finished before it could be killed; give it more work"
    resumed = subprocess.run([*args, "--out", str(out), "--resume"], capture_output=True, text=True,
                             env=env, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at optimizer step" in resumed.stderr
    whole_summary = json.loads((tmp_path / "whole" / "train_summary.json").read_text())
    resumed_summary = json.loads((out / "train_summary.json").read_text())
    assert resumed_summary["final_loss"] == pytest.approx(whole_summary["final_loss"], rel=1e-6)
    assert_same_metrics(out, tmp_path / "whole")


def forbid_unpickling(monkeypatch):
    """Any torch.load or pickle load during the test is a failure."""
    import pickle

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint must be read without torch.load or pickle")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(owner, name, refuse)


def test_checkpoints_hold_no_pickles_and_resume_never_unpickles(tiny_model, pairs_file, tmp_path, monkeypatch):
    settings = dict(epochs=1, batch_size=2, checkpoint_steps=2, logging_steps=1)
    out = tmp_path / "run"
    # Killed in step 6, after the checkpoint at step 4.
    train_until_killed(config_for(tiny_model, pairs_file, out, **settings), monkeypatch, 6)
    checkpoint = partial_dir(out) / "checkpoint-4"
    files = sorted(p.name for p in checkpoint.rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "optimizer.json", "scheduler.json",
            "rng_state_0.safetensors", "rng_state_0.json", "accelerator.json", "loop_state.json"} <= set(files)
    assert all(name.endswith((".safetensors", ".json")) for name in files), files
    for path in checkpoint.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())  # plain JSON, no pickled payloads hidden in it

    forbid_unpickling(monkeypatch)
    resumed = train(config_for(tiny_model, pairs_file, out, resume=True, **settings))
    assert resumed.optimizer_steps == 8


def test_checkpoint_round_trip_restores_every_state_exactly(tiny_model, tmp_path, monkeypatch):
    """Model, AdamW moments and step counts, scheduler, accelerate's counter and all RNGs come back
    bit for bit after being disturbed."""
    import random

    import numpy as np
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    from alignlab.training import checkpoint
    from alignlab.models.loading import load_causal_lm

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = load_causal_lm(str(tiny_model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=10)
    accelerator.register_for_checkpointing(scheduler)
    ids = torch.randint(0, 100, (2, 8))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    accelerator.step = 6

    def snapshot():
        state = optimizer.state_dict()
        return ({k: v.clone() for k, v in model.state_dict().items()},
                {i: {k: v.clone() for k, v in s.items()} for i, s in state["state"].items()},
                state["param_groups"], scheduler.state_dict(), accelerator.step)

    saved = snapshot()
    checkpoint.save(accelerator, tmp_path / "checkpoint", {"step": 3})
    draws = (random.random(), np.random.rand(), torch.rand(3))

    model(input_ids=ids, labels=ids).loss.backward()  # disturb everything
    optimizer.step()
    scheduler.step()
    accelerator.step = 1
    random.random(), np.random.rand(), torch.rand(3)

    forbid_unpickling(monkeypatch)
    assert checkpoint.load(accelerator, tmp_path / "checkpoint") == {"step": 3}
    restored = snapshot()
    for before, after in zip(saved[0].values(), restored[0].values()):
        assert torch.equal(before, after)
    assert saved[1].keys() == restored[1].keys()
    for i in saved[1]:
        assert all(torch.equal(saved[1][i][k], restored[1][i][k]) for k in saved[1][i])
    assert restored[2] == saved[2] and isinstance(restored[2][0]["betas"], tuple)
    assert restored[3] == saved[3] and restored[4] == 6
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == draws[:2] and torch.equal(again[2], draws[2])
    assert not (tmp_path / "checkpoint.tmp").exists() and not (tmp_path / "checkpoint.old").exists()
