"""Saving from several processes: every process reaches the weight gather (a collective under
FSDP and DeepSpeed ZeRO-3), only the main one writes, and what it writes is the trained model.

accelerate runs FSDP only on GPUs (with cpu=True its FSDP plugin is ignored: the processes run as
MULTI_CPU/DDP), so on the CPU this covers the DDP path of the same code. Checkpoints under FSDP
are refused before any work (they would need accelerate's pickling save_state).
"""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm
from alignlab.training import train
from conftest import REPO, config_for


@pytest.mark.parametrize("setting", [{"checkpoint_steps": 2}, {"resume": True}])
def test_checkpoints_are_refused_under_fsdp_before_training(tiny_model, pairs_file, tmp_path, monkeypatch, setting):
    import accelerate
    from accelerate.utils import DistributedType

    # accelerate cannot run FSDP on the CPU: the Accelerator reports it, as it would on GPUs.
    monkeypatch.setattr(accelerate.Accelerator, "distributed_type", property(lambda self: DistributedType.FSDP))
    with pytest.raises(AlignlabError, match="not under FSDP.*save_state/load_state"):
        train(config_for(tiny_model, pairs_file, tmp_path / "run", **setting))
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
def test_two_processes_save_the_lora_run_one_process_trains(tiny_model, pairs_file, tmp_path):
    """Same global batch (4 pairs): 1 process × 4 and 2 processes × 2 save the same adapter, the
    same merged weights and the same snapshots, and only the files one process writes."""
    common = ["-m", "alignlab", "train", "--method", "dpo", "--model", str(tiny_model), "--data", str(pairs_file),
              "--learning_rate", "5e-3", "--warmup_ratio", "0", "--lr_scheduler", "constant", "--max_length", "64",
              "--max_prompt_length", "32", "--use_peft", "--lora_r", "4", "--lora_dropout", "0", "--save_merged",
              "--snapshot_steps", "2", "--cache_dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one"), "--batch_size", "4"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29519"]
    double = subprocess.run([*launch, *common, "--out", str(tmp_path / "two"), "--batch_size", "2"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"

    def files(run):
        return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())

    assert files(two) == files(one)  # no second writer's leftovers, nothing missing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "one", "two"]  # no partial or temp dirs
    for saved in ("model/adapter_model.safetensors", "model-merged/model.safetensors",
                  "snapshots/step-000002/adapter_model.safetensors"):
        expected, got = load_file(one / saved), load_file(two / saved)
        assert got.keys() == expected.keys()
        # Tolerance: float32 sums in another order across the two processes' gradient all-reduce.
        for name in expected:
            assert torch.allclose(got[name], expected[name], atol=1e-5, rtol=1e-4), (saved, name)
    adapter = load_file(two / "model" / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for name, t in adapter.items() if "lora_B" in name)
    reloaded = load_causal_lm(str(two / "model")).state_dict()
    merged = load_file(two / "model-merged" / "model.safetensors")
    assert all(torch.equal(reloaded[name], merged[name]) for name in merged)
