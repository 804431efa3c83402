"""Bradley–Terry reward models: `alignlab train-rm` learns the preference and reports held-out accuracy."""

import json

from alignlab.cli import main
from alignlab.data.pairs import load_pairs


def test_reward_model_learns_the_preference_and_reports_heldout_accuracy(tiny_model, tmp_path, capsys):
    from conftest import make_pairs
    from alignlab.models.score import RewardScorer

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(40)))
    out = tmp_path / "rm"
    code = main(["train-rm", "--model", str(tiny_model), "--data", str(data), "--out", str(out),
                 "--learning_rate", "3e-3", "--epochs", "3", "--batch_size", "4", "--eval_fraction", "0.2",
                 "--max_length", "64", "--max_prompt_length", "32", "--warmup_ratio", "0"])
    assert code == 0
    assert "held-out pairwise accuracy" in capsys.readouterr().out
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["heldout_pairs"] == 8
    # Independent check with the scoring path used everywhere else: held-out pairs ranked right.
    scorer = RewardScorer(str(out / "model"))
    pairs = load_pairs(str(data)).pairs
    chosen = scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = scorer.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    assert (chosen > rejected).float().mean().item() >= 0.9
    assert summary["heldout_accuracy"] >= 0.9
