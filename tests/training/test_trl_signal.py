"""TRL's training signal (issue 30): TRL's reward and log-prob metrics beside alignlab's own in
metrics.jsonl, the progress bar and the tracker; the objective evaluated on held-out pairs while
training (eval_strategy), logged under TRL's eval_ names; and the optimizer settings TRL names
(warmup_steps, adam betas and epsilon, optim, fractional epochs)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from alignlab.cli import main
from alignlab.config import RewardModelConfig
from alignlab.data.pairs import load_pairs
from alignlab.data.tokenise import tokenize_pairs
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.training import train, train_reward_model
from conftest import config_for, make_pairs
from test_tracking import logged_like_metrics_jsonl

TRL_KEYS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"]


def metrics_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summed_logps(model_dir, data) -> tuple[torch.Tensor, torch.Tensor]:
    """A second implementation: each prompt + response forwarded alone, the full log-softmax in float64,
    summed over the response tokens; (chosen, rejected) per pair in the data's order."""
    examples = tokenize_pairs(load_tokenizer(str(model_dir)), load_pairs(str(data)).pairs, 64, 32)[0]
    model = load_causal_lm(str(model_dir)).eval()
    sums = []
    with torch.no_grad():
        for ex in examples:
            for response in (ex.chosen_ids, ex.rejected_ids):
                ids = torch.tensor([ex.prompt_ids + response])
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
                positions = torch.arange(len(ex.prompt_ids), ids.shape[1])
                sums.append(logprobs[positions - 1, ids[0, positions]].sum())
    sums = torch.stack(sums).view(-1, 2)
    return sums[:, 0], sums[:, 1]


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def test_a_dpo_run_logs_trls_metrics_as_an_independent_computation_gives_them(tiny_model, pairs_file, tmp_path,
                                                                              capsys):
    out = tmp_path / "run"
    # One micro-batch of all 16 pairs per step: step 1's numbers are of every pair, before any update.
    train(config_for(tiny_model, pairs_file, out, batch_size=16, epochs=3, params={"beta": 0.2},
                     report_to="tensorboard"))
    lines = metrics_lines(out)
    first = lines[0]
    assert list(first)[:5] == ["step", "epoch", "loss", "margin", "rewards/chosen"]
    assert set(TRL_KEYS) | {"learning_rate", "grad_norm", "pairs_seen", "responses_seen", "elapsed_s"} <= set(first)
    # At step 0 the policy is the reference: no reward, no margin, no pair whose chosen reward is above.
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert first[key] == 0.0, key
    chosen, rejected = summed_logps(tiny_model, pairs_file)
    assert first["logps/chosen"] == pytest.approx(chosen.mean().item(), rel=1e-5)
    assert first["logps/rejected"] == pytest.approx(rejected.mean().item(), rel=1e-5)
    for line in lines[1:]:  # later steps: β × alignlab's log-ratio margin, chosen − rejected
        assert line["rewards/margins"] == pytest.approx(0.2 * line["margin"], rel=1e-5)
        assert line["rewards/chosen"] - line["rewards/rejected"] == pytest.approx(line["rewards/margins"], abs=1e-5)
    assert lines[-1]["rewards/margins"] > 0 and lines[-1]["rewards/accuracies"] > 0.5
    assert set(TRL_KEYS) <= set(logged_like_metrics_jsonl(out))  # tensorboard has every one, at every step
    assert "acc=" in capsys.readouterr().err  # the progress bar shows the reward accuracy


def test_reference_free_and_sft_runs_log_the_log_probs_only(tiny_model, pairs_file, tmp_path):
    train(config_for(tiny_model, pairs_file, tmp_path / "simpo", method="simpo", max_steps=1))
    train(config_for(tiny_model, pairs_file, tmp_path / "sft", method="sft", max_steps=1))
    simpo, sft = metrics_lines(tmp_path / "simpo")[0], metrics_lines(tmp_path / "sft")[0]
    assert {"logps/chosen", "logps/rejected"} <= set(simpo) and not any(k.startswith("rewards/") for k in simpo)
    assert "logps/chosen" in sft and "logps/rejected" not in sft and not any(k.startswith("rewards/") for k in sft)


def test_evaluation_during_training_logs_eval_rows_at_its_steps(tiny_model, pairs_file, tmp_path):
    heldout = write_pairs(tmp_path / "heldout.jsonl", make_pairs(24)[16:])  # 8 pairs training never sees
    out = tmp_path / "run"
    # 16 pairs in batches of 4 over 2 epochs: 8 steps; evaluated before step 1 and after steps 4 and 8.
    train(config_for(tiny_model, pairs_file, out, epochs=2, eval_strategy="steps", eval_steps=4,
                     eval_data=str(heldout), eval_batch_size=3, report_to="tensorboard"))
    lines = metrics_lines(out)
    evals = [line for line in lines if "eval_loss" in line]
    assert [line["step"] for line in evals] == [0, 4, 8]
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, 9))
    assert all(not any(k.startswith("eval_") for k in line) for line in lines if "loss" in line)
    assert {f"eval_{key}" for key in ["loss", "margin", *TRL_KEYS]} <= set(evals[0])
    assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference
    assert evals[0]["eval_rewards/accuracies"] == evals[0]["eval_rewards/margins"] == 0.0

    # After the last step the held-out loss is the trained model's DPO loss on the held-out pairs.
    policy_chosen, policy_rejected = summed_logps(out, heldout)
    ref_chosen, ref_rejected = summed_logps(tiny_model, heldout)
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    assert evals[-1]["eval_loss"] == pytest.approx(-F.logsigmoid(0.1 * margin).mean().item(), rel=1e-4)
    assert evals[-1]["eval_rewards/margins"] == pytest.approx(0.1 * margin.mean().item(), rel=1e-4)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(out / "tracking" / "run"))
    accumulator.Reload()
    for name in ("eval_loss", "eval_rewards/accuracies"):
        logged = accumulator.Scalars(name)
        assert [e.step for e in logged] == [0, 4, 8]
        assert [e.value for e in logged] == pytest.approx([line[name] for line in evals], rel=1e-6, abs=1e-7)


def test_epoch_evaluation_of_a_split_and_fractional_epochs(tiny_model, tmp_path):
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(make_pairs(16)),
                                   "test": datasets.Dataset.from_list(make_pairs(22)[16:])})
    splits.save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "run"
    # 4 steps an epoch; 1.5 epochs train 4 + 2 steps (TRL: ceil(1.5 × 4)), evaluated at each epoch's end.
    result = train(config_for(tiny_model, tmp_path / "data", out, epochs=1.5, eval_strategy="epoch",
                              eval_split="test"))
    lines = metrics_lines(out)
    assert result.optimizer_steps == 6 and result.pairs_trained == 24
    assert [(line["step"], line["epoch"]) for line in lines if "eval_loss" in line] == [(0, 0), (4, 0), (6, 1)]
    assert lines[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("settings, needle", [
    (dict(eval_strategy="steps"), "--eval_data"),
    (dict(eval_strategy="epoch", eval_split="test"), "has none"),
])
def test_evaluation_without_held_out_pairs_is_refused_in_one_line_before_work(tiny_model, pairs_file, tmp_path,
                                                                             capsys, settings, needle):
    out = tmp_path / "run"
    argv = ["train", "--method", "dpo", "--model", str(tiny_model), "--data", str(pairs_file), "--out", str(out),
            "--max_length", "64", "--max_prompt_length", "32"]
    for key, value in settings.items():
        argv += [f"--{key}", value]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("alignlab: error: config: eval_") and needle in lines[0], lines
    assert not out.exists()
    with pytest.raises(AlignlabError, match="eval_strategy steps: evaluation during training is done for the offline"):
        train_reward_model(RewardModelConfig(model=str(tiny_model), data=str(pairs_file), out=str(out), batch_size=4,
                                             max_length=64, max_prompt_length=32, eval_strategy="steps"))


def test_optimizer_settings_reach_adamw_and_the_schedule(tiny_model, pairs_file, tmp_path, monkeypatch):
    made = []

    class RecordedAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordedAdamW)
    out = tmp_path / "run"
    # 1.5 epochs of 4 steps: 6 steps; 3 of them warm up (warmup_ratio would give int(0.1 × 6) = 0).
    train(config_for(tiny_model, pairs_file, out, epochs=1.5, lr_scheduler="linear", learning_rate=1e-3,
                     warmup_steps=3, warmup_ratio=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6,
                     weight_decay=0.01, optim="adamw_torch_fused"))
    (optimizer,) = made
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 and group["weight_decay"] == 0.01
    assert group["fused"] is True
    from alignlab.training.loop import make_optimizer

    per_tensor = make_optimizer(config_for(tiny_model, pairs_file, out, optim="adamw_torch"),
                                SimpleNamespace(device=torch.device("cpu")), torch.nn.Linear(2, 2))
    assert not per_tensor.param_groups[0]["fused"] and per_tensor.param_groups[0]["betas"] == (0.9, 0.999)
    rates = [line["learning_rate"] for line in metrics_lines(out)]  # each after its step's scheduler step
    assert rates == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 2e-3 / 3, 1e-3 / 3, 0.0])
