"""A study on real data reads its test data with the options the user gives (issue 16):
test_data_options name the split, the hub dataset's part and the columns, as TrainConfig's fields do."""

from __future__ import annotations

import datasets
import pytest

from alignlab.errors import AlignlabError
from alignlab.models.tiny import build_tiny_classifier
from alignlab.study.config import StudyConfig, real_inputs


def study(tmp_path, **settings) -> StudyConfig:
    return StudyConfig(out=str(tmp_path / "study"), model="m", train_data="t", test_data=str(tmp_path / "saved"),
                       gold_rm=str(tmp_path / "gold"), **settings)


def test_test_data_options_pick_the_split_and_columns(tiny_model, tmp_path):
    rows = [{"question": "Q", "chosen": "A", "rejected": "B"}]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    build_tiny_classifier(tmp_path / "gold", tiny_model)
    config = study(tmp_path, test_data_options={"data_split": "validation", "prompt_column": "question"})
    config.validate()
    [pair] = real_inputs(config).test_pairs
    assert (pair.id, pair.prompt, pair.chosen, pair.rejected) == (
        "saved-validation-0", [{"role": "user", "content": "Q"}], "A", "B")


def test_an_unknown_test_data_option_lists_the_valid_ones(tmp_path):
    with pytest.raises(AlignlabError, match="test_data_options has unknown key 'split'.*data_split"):
        study(tmp_path, test_data_options={"split": "validation"}).validate()


def test_selection_data_options_pick_the_selection_datas_split_and_columns(tmp_path):
    from alignlab.study.config import load_evaluation_pairs

    rows = [{"q": "Q", "good": "A", "bad": "B"}]
    datasets.DatasetDict({"dev": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "picks")
    config = study(tmp_path, selection_data=str(tmp_path / "picks"),
                   selection_data_options={"data_split": "dev", "prompt_column": "q", "chosen_column": "good",
                                           "rejected_column": "bad"})
    config.validate()
    [pair] = load_evaluation_pairs(config.selection_data, config.selection_format, config.selection_data_options)
    assert (pair.prompt, pair.chosen, pair.rejected) == ([{"role": "user", "content": "Q"}], "A", "B")
    with pytest.raises(AlignlabError, match="selection_data_options has unknown key 'columns'.*prompt_column"):
        study(tmp_path, selection_data_options={"columns": "q"}).validate()
