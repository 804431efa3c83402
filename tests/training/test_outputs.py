"""Outputs a TRL user can load (issue 30): the run directory holds the final model (a LoRA run's
adapter) with its tokenizer at its root, as TRL's output_dir does, model/ the same files (hard
links: the weights once on disk); checkpoint-N/ folders load with from_pretrained, save_total_limit
keeps the newest, --resume continues from the newest; `alignlab eval --model RUN_DIR` evaluates the
run's model, for an earlier alignlab's run directory (model/ only) too."""

import json
import shutil

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.cli import main
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.tiny import build_tiny_classifier
from alignlab.training import train
from alignlab.training.outputs import partial_dir
from conftest import config_for, train_until_killed

LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
IDS = torch.tensor([[1, 5, 9, 13, 17, 21]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def checkpoints(run_dir) -> list[str]:
    return sorted((p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint")),
                  key=lambda name: (len(name), name))


def test_a_run_and_its_checkpoints_load_with_from_pretrained(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "run"
    # 8 steps of 2 pairs; checkpoints at 2, 4 and 6 (the last step's model is the run's own), two kept.
    train(config_for(tiny_model, pairs_file, out, batch_size=2, checkpoint_steps=2, save_total_limit=2,
                     snapshot_steps=2))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).encode("What color") == load_tokenizer(str(tiny_model)).encode(
        "What color")
    final = load_file(out / "model.safetensors")
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in final.items())
    assert (out / "model.safetensors").stat().st_ino == (out / "model" / "model.safetensors").stat().st_ino
    assert {p.name for p in (out / "model").iterdir()} <= {p.name for p in out.iterdir()}

    assert checkpoints(out) == ["checkpoint-4", "checkpoint-6"]  # save_total_limit 2: the newest two
    step_6 = AutoModelForCausalLM.from_pretrained(out / "checkpoint-6")
    AutoTokenizer.from_pretrained(out / "checkpoint-6")
    snapshot = load_file(out / "snapshots" / "step-000006" / "model.safetensors")
    assert all(torch.equal(step_6.state_dict()[name], tensor) for name, tensor in snapshot.items())
    assert not torch.equal(logits(step_6), logits(model))
    assert not list(tmp_path.glob(".*")) and not list(out.glob("*.tmp"))


def test_a_lora_run_loads_with_peft_and_with_transformers(tiny_model, pairs_file, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel

    out = tmp_path / "run"
    train(config_for(tiny_model, pairs_file, out, checkpoint_steps=2, **LORA))  # 4 steps; checkpoint at 2
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    expected = logits(load_causal_lm(str(out / "model")))  # alignlab's own: the adapter merged into the base
    assert not torch.allclose(expected, logits(load_causal_lm(str(tiny_model))), atol=1e-4)  # it trained
    loaded = {"AutoModelForCausalLM": AutoModelForCausalLM.from_pretrained(out),
              "AutoPeftModelForCausalLM": AutoPeftModelForCausalLM.from_pretrained(out),
              "PeftModel": PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)}
    for name, model in loaded.items():
        assert torch.allclose(logits(model), expected, atol=1e-5), name
    step_2 = AutoPeftModelForCausalLM.from_pretrained(out / "checkpoint-2")
    assert not torch.allclose(logits(step_2), expected, atol=1e-4)
    AutoTokenizer.from_pretrained(out / "checkpoint-2")


def test_resume_continues_from_the_newest_kept_checkpoint(tiny_model, pairs_file, tmp_path, monkeypatch):
    settings = dict(batch_size=2, checkpoint_steps=2, save_total_limit=2)  # 8 steps of 2 pairs
    whole = train(config_for(tiny_model, pairs_file, tmp_path / "whole", **settings))
    out = tmp_path / "run"
    train_until_killed(config_for(tiny_model, pairs_file, out, **settings), monkeypatch, 8)  # inside step 8
    assert checkpoints(partial_dir(out)) == ["checkpoint-4", "checkpoint-6"]
    AutoModelForCausalLM.from_pretrained(partial_dir(out) / "checkpoint-6")  # loadable while the run is partial
    resumed = train(config_for(tiny_model, pairs_file, out, resume=True, **settings))
    assert resumed.optimizer_steps == whole.optimizer_steps == 8
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert checkpoints(out) == checkpoints(tmp_path / "whole") == ["checkpoint-4", "checkpoint-6"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 9))


def test_alignlab_eval_takes_a_run_directory(tiny_model, pairs_file, tmp_path):
    gold = build_tiny_classifier(tmp_path / "gold", tiny_model, seed=3)
    run = tmp_path / "run"
    train(config_for(tiny_model, pairs_file, run, max_steps=1))
    earlier = tmp_path / "earlier"  # an earlier alignlab's run directory: the model only in model/
    earlier.mkdir()
    shutil.copytree(run / "model", earlier / "model")
    shutil.copy(run / "train_summary.json", earlier)
    for model, name in ((run, "now"), (earlier, "before")):
        assert main(["eval", "--model", str(model), "--data", str(pairs_file), "--gold_rm", str(gold),
                     "--out", str(tmp_path / f"eval-{name}"), "--max_new_tokens", "2", "--limit", "2"]) == 0
    assert torch.equal(logits(load_causal_lm(str(earlier))), logits(load_causal_lm(str(run))))
