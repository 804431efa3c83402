"""A large model's freed tensors go back to the system (alignlab.training.host_memory), and the numbers
trained stay the same. Each case that sets it runs in a fresh process: the malloc setting is
process-wide and cannot be undone."""

import json
import os
import platform
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import config_for

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the mmap threshold is glibc's")

# A 16 MiB tensor freed raises glibc's moving threshold above 4 MiB; then 100 tensors of 4 MiB are
# allocated and all but the last freed (the last keeps the heap from being trimmed from its top).
# Printed: how much resident memory grew from before the 100 to after the 99 were freed, in MiB.
GROWTH_AFTER_FREEING = """
import sys, torch
from alignlab.training.host_memory import fix_mmap_threshold
def resident_mib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
big = torch.ones(4 * 2**20)
del big
before = resident_mib()
held = [torch.ones(2**20) for _ in range(100)]
del held[:-1]
print(resident_mib() - before)
"""


def run_python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_freed_tensors_leave_resident_memory_once_the_threshold_is_fixed():
    moving, fixed = (float(run_python(GROWTH_AFTER_FREEING, mode)) for mode in ("moving", "fixed"))
    assert moving > 300  # 99 freed tensors of 4 MiB (396 MiB) stay resident in glibc's heap
    assert fixed < 40  # only the one still held (4 MiB), and the interpreter's own small change


def test_training_sets_it_for_large_models_only(tiny_model, pairs_file, tmp_path, monkeypatch):
    from alignlab.training import host_memory, train

    fixed = []
    monkeypatch.setattr(host_memory, "fix_mmap_threshold", lambda: fixed.append(1) or True)
    train(config_for(tiny_model, pairs_file, tmp_path / "run", max_steps=1))
    assert not fixed  # a tiny Llama is far below LARGE_MODEL_PARAMETERS
    monkeypatch.setattr(host_memory, "LARGE_MODEL_PARAMETERS", 1)  # the same model, counted large
    train(config_for(tiny_model, pairs_file, tmp_path / "again", max_steps=1))
    assert fixed == [1]


def test_a_model_off_the_cpu_keeps_the_moving_threshold(monkeypatch):
    import torch

    from alignlab.training import host_memory

    fixed = []
    monkeypatch.setattr(host_memory, "fix_mmap_threshold", lambda: fixed.append(1) or True)
    monkeypatch.setattr(host_memory, "LARGE_MODEL_PARAMETERS", 1)
    with torch.device("meta"):  # stands for an accelerator: its activations are not the host's
        off_cpu = torch.nn.Linear(4, 4)
    assert host_memory.return_freed_memory(off_cpu) is False and not fixed
    assert host_memory.return_freed_memory(torch.nn.Linear(4, 4)) is True and fixed == [1]


# Two optimizer steps of DPO (a TrainConfig's fields as JSON) on a Llama of hidden size 512, whose
# activations (4 pairs of up to 64 tokens: 0.5 MiB and more) are mapped once the threshold is fixed;
# `default` leaves glibc's moving threshold (the model counted small), `fixed` fixes it (counted large).
TRAIN_TWO_STEPS = """
import json, sys
from alignlab.config import TrainConfig
from alignlab.training import host_memory, train
host_memory.LARGE_MODEL_PARAMETERS = 0 if sys.argv[2] == "fixed" else float("inf")
train(TrainConfig(**json.loads(sys.argv[1])))
print("trained")
"""


@pytest.mark.slow  # two fresh processes that import torch and train: about 17 s on 2 idle cores
def test_training_gives_the_same_weights_either_way(pairs_file, tmp_path):
    from alignlab.models.tiny import build_tiny_llama

    texts = [json.loads(line)[part] for line in pairs_file.read_text().splitlines()
             for part in ("prompt", "chosen", "rejected")]
    model = build_tiny_llama(tmp_path / "model", texts, hidden_size=512, heads=8)
    weights = {}
    for keep in ("default", "fixed"):
        config = config_for(model, pairs_file, tmp_path / keep, max_steps=2, learning_rate=1e-3)
        run_python(TRAIN_TWO_STEPS, json.dumps(config.to_dict()), keep)
        weights[keep] = load_file(str(tmp_path / keep / "model.safetensors"))
    initial = load_file(str(model / "model.safetensors"))
    assert weights["default"].keys() == weights["fixed"].keys() == initial.keys()
    changed = [name for name in initial if not weights["fixed"][name].equal(initial[name])]
    assert changed  # the two steps trained: equal weights below are not the untouched model's
    for name, weight in weights["default"].items():
        assert weight.equal(weights["fixed"][name]), name
