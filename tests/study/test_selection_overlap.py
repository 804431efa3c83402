"""selection_data must be held out from test_data (issue 28): a run picked on prompts it is then
reported on looks better than it is, so a selection set sharing any prompt with the test prompts is
refused — before the sweep trains or evaluates anything."""

from __future__ import annotations

import pytest
import yaml

from alignlab.cli import main
from alignlab.data.pairs import PreferencePair
from alignlab.errors import AlignlabError
from alignlab.models.tiny import build_tiny_classifier
from alignlab.study.config import check_selection_is_held_out


def pair(pair_id: str, question: str) -> PreferencePair:
    return PreferencePair(pair_id, [{"role": "user", "content": question}], "yes", "no")


TEST = [pair("test-0", "Q0"), pair("test-1", "Q1"), pair("test-2", "Q2")]


def test_selection_prompts_that_are_test_prompts_are_refused_even_in_part():
    with pytest.raises(AlignlabError) as whole:
        check_selection_is_held_out(TEST, TEST, "test.jsonl")
    assert "test.jsonl: 3 of its 3 prompts are also test prompts" in str(whole.value)
    assert "leave selection_data unset" in str(whole.value)
    # Other ids and answers, one prompt the same: the prompt is what the runs are measured on.
    picks = [PreferencePair("pick-0", [{"role": "user", "content": "Q1"}], "other", "answers"),
             pair("pick-1", "Q9"), pair("pick-2", "Q10")]
    with pytest.raises(AlignlabError, match="picks.jsonl: 1 of its 3 prompts are also test prompts"):
        check_selection_is_held_out(picks, TEST, "picks.jsonl")
    # The same text in another role, or after another turn, is another prompt.
    check_selection_is_held_out([PreferencePair("s", [{"role": "system", "content": "Q0"}], "a", "b"),
                                 PreferencePair("t", [{"role": "user", "content": "Hi"}, {"role": "assistant",
                                                "content": "Hello"}, {"role": "user", "content": "Q0"}], "a", "b")],
                                TEST, "held-out.jsonl")


def test_a_sweep_whose_selection_data_is_its_test_data_stops_before_training(tiny_model, pairs_file, tmp_path,
                                                                           capsys, monkeypatch):
    import alignlab.evaluation.evaluate as evaluate
    import alignlab.training.reward_model as reward_model

    def too_late(*args, **kwargs):
        raise AssertionError("the sweep trained or evaluated before refusing the selection data")

    monkeypatch.setattr(evaluate, "evaluate_model", too_late)
    monkeypatch.setattr(reward_model, "train_reward_model", too_late)
    build_tiny_classifier(tmp_path / "gold", tiny_model)
    study = {"model": str(tiny_model), "train_data": str(pairs_file), "test_data": str(pairs_file),
             "selection_data": str(pairs_file), "gold_rm": str(tmp_path / "gold"), "methods": ["dpo", "var"],
             "seeds": 1}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    out = tmp_path / "sweep"
    assert main(["run", "--config", str(config), "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"alignlab: error: {pairs_file}: 16 of its 16 prompts are also test prompts")
    assert "held-out set" in line and not out.exists()
