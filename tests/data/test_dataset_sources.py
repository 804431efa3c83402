"""Datasets as users name them (issue 16): directories written by `save_to_disk`, hub datasets with
a configuration, data_dir and revision, column mapping, and TRL's implicit-prompt formats — checked
against hand-written answers and against TRL's own `extract_prompt` as the oracle."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
import types

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trl.data_utils import extract_prompt, maybe_extract_prompt

from alignlab.data.options import Columns, data_options
from alignlab.data.pairs import PreferencePair, load_pairs, split_implicit_prompt
from alignlab.errors import AlignlabError, InputError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def load_error(source, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        load_pairs(str(source), **kwargs)
    return str(caught.value)


ROWS = {"train": [{"prompt": "Q1", "chosen": "A", "rejected": "B"}],
        "test": [{"prompt": "Q2", "chosen": "C", "rejected": "D"}, {"prompt": "Q3", "chosen": "E", "rejected": "F"}]}


# ---------------------------------------------------------------- save_to_disk directories

def test_a_saved_dataset_dict_gives_the_split_asked_for(tmp_path):
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in ROWS.items()}).save_to_disk(
        tmp_path / "prefs")
    result = load_pairs(str(tmp_path / "prefs"), split="test")
    assert result.pairs == [PreferencePair("prefs-test-0", [user("Q2")], "C", "D"),
                            PreferencePair("prefs-test-1", [user("Q3")], "E", "F")]
    assert [p.prompt for p in load_pairs(str(tmp_path / "prefs")).pairs] == [[user("Q1")]]  # train by default


def test_a_missing_split_of_a_saved_dataset_dict_lists_the_splits(tmp_path):
    datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in ROWS.items()}).save_to_disk(
        tmp_path / "prefs")
    message = load_error(tmp_path / "prefs", split="validation")
    assert "no split 'validation'" in message and "the splits are: 'train', 'test'" in message
    assert str(tmp_path / "prefs") in message


def test_a_saved_dataset_is_read_whole(tmp_path):
    datasets.Dataset.from_list(ROWS["test"]).save_to_disk(tmp_path / "one")
    assert [p.id for p in load_pairs(str(tmp_path / "one"), split="anything").pairs] == ["one-0", "one-1"]


def test_a_damaged_saved_dataset_is_a_clean_error(tmp_path):
    datasets.Dataset.from_list(ROWS["test"]).save_to_disk(tmp_path / "one")
    for arrow in (tmp_path / "one").glob("*.arrow"):
        arrow.write_bytes(b"not arrow at all")
    assert "cannot read the saved dataset" in load_error(tmp_path / "one")


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_saved_dataset_files_of_any_bytes_load_or_are_clean_errors(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("saved")
    datasets.Dataset.from_list(ROWS["test"]).save_to_disk(directory / "d")
    victim = sorted((directory / "d").iterdir())[len(data) % 3]  # an arrow file, dataset_info or state
    victim.write_bytes(data)
    try:
        load_pairs(str(directory / "d"))
    except AlignlabError as e:
        assert len(str(e).splitlines()) == 1


# ---------------------------------------------------------------- hub datasets

def fake_datasets(monkeypatch, load_dataset, split_names=None):
    """Stand in for the `datasets` package, in offline mode: this machine has no network, and the
    stand-in answers without one."""
    def get_dataset_split_names(path, config_name=None, **options):
        if split_names is None:
            raise ConnectionError("offline")
        return split_names

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=load_dataset, get_dataset_split_names=get_dataset_split_names,
        config=types.SimpleNamespace(HF_HUB_OFFLINE=True)))


def test_load_dataset_gets_the_configuration_data_dir_revision_and_split(monkeypatch):
    calls = []
    fake_datasets(monkeypatch, lambda *args, **kwargs: calls.append((args, kwargs)) or ROWS["train"])
    result = load_pairs("Anthropic/hh-rlhf", split="test", dataset_config="default", data_dir="harmless-base",
                        revision="abc123")
    assert calls == [(("Anthropic/hh-rlhf",), {"name": "default", "data_dir": "harmless-base",
                                               "revision": "abc123", "split": "test"})]
    assert [p.id for p in result.pairs] == ["hh-rlhf-default-harmless-base-test-0"]


def test_a_missing_hub_split_lists_the_splits(monkeypatch):
    def no_such_split(path, **options):
        raise ValueError('Unknown split "validation". Should be one of [\'train\', \'test\'].')

    fake_datasets(monkeypatch, no_such_split, split_names=["train", "test"])
    message = load_error("org/prefs", split="validation")
    assert "org/prefs" in message and "no split 'validation'; the splits are: 'train', 'test'" in message


def test_an_unreachable_hub_keeps_the_load_error(monkeypatch):
    def unreachable(path, **options):
        raise ConnectionError("Couldn't reach the Hub")

    fake_datasets(monkeypatch, unreachable)
    assert "Couldn't reach the Hub" in load_error("org/prefs", split="validation")


@pytest.mark.parametrize("name", ["données", "org/préférences", "org/a..b", "org/a--b", "-prefs", "org/prefs-"])
def test_a_name_the_hub_cannot_hold_is_a_missing_file(monkeypatch, name):
    def asked_the_hub(path, **options):
        raise AssertionError(f"{path} went to the hub")

    fake_datasets(monkeypatch, asked_the_hub)
    assert load_error(name).startswith(f"{name}: no such file. Check the path")


# Issue 28: without the hub, a hub dataset fails in seconds, not after datasets' retries (~25 s per
# request). The hub here is a closed loopback port: refused at once, and nothing leaves the machine.

def closed_port_url() -> str:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """datasets online, its hub unreachable, its cache an empty directory; returns the hub's URL."""
    import huggingface_hub.constants

    endpoint = closed_port_url()
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)  # whatever asks the hub, asks it here
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    return endpoint


def cache_hub_dataset(cache, rows) -> None:
    """Leave `rows` in the datasets cache as the test split of hub dataset org/prefs, laid out as
    load_dataset leaves a hub dataset: <cache>/org___prefs/<config>/<version>/<commit>/."""
    from datasets.packaged_modules.json.json import Json

    source = cache.parent / "prefs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    Json(cache_dir=str(cache), dataset_name="prefs", hash="0123abcd", data_files={"test": str(source)}
         ).download_and_prepare()
    [built] = (cache / "prefs").glob("default-*")
    (cache / "org___prefs").mkdir()
    built.rename(cache / "org___prefs" / "default")


def test_an_unreachable_hub_fails_in_seconds_and_says_so(unreachable_hub):
    started = time.perf_counter()
    message = load_error("org/prefs", split="test")
    assert time.perf_counter() - started < 10
    assert message.startswith(f"org/prefs: not a local file or directory, and the Hugging Face Hub "
                              f"({unreachable_hub}) cannot be reached")
    assert "Pass a local file or directory, or run where the hub is reachable" in message


def test_a_cached_hub_dataset_still_loads_when_the_hub_is_unreachable(unreachable_hub, monkeypatch, caplog):
    cache_hub_dataset(datasets.config.HF_DATASETS_CACHE, ROWS["test"])
    # datasets itself reads its cached copy once its retries give up (~25 s): stood in for here.
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **options: ROWS[options["split"]])
    with caplog.at_level(logging.WARNING):
        assert [p.prompt for p in load_pairs("org/prefs", split="test").pairs] == [[user("Q2")], [user("Q3")]]
    assert "cannot be reached" in caplog.text and "HF_DATASETS_OFFLINE=1" in caplog.text


def test_offline_a_cached_hub_dataset_loads_without_asking_the_hub(unreachable_hub, monkeypatch):
    from alignlab.data import readers

    def probed(endpoint):
        raise AssertionError("offline, the hub was probed")

    monkeypatch.setattr(readers, "_hub_problem", probed, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as HF_DATASETS_OFFLINE=1 sets it
    cache_hub_dataset(datasets.config.HF_DATASETS_CACHE, ROWS["test"])
    started = time.perf_counter()
    assert [p.prompt for p in load_pairs("org/prefs", split="test").pairs] == [[user("Q2")], [user("Q3")]]
    assert time.perf_counter() - started < 10


# ---------------------------------------------------------------- column mapping and rewards

def test_parquet_columns_mapped_to_the_pair(tmp_path):
    rows = [{"question": "Q", "good": "A", "bad": "B", "r_good": 2.0, "r_bad": -1}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    columns = Columns(prompt="question", chosen="good", rejected="bad", reward_chosen="r_good", reward_rejected="r_bad")
    assert load_pairs(str(tmp_path / "p.parquet"), columns=columns).pairs == [
        PreferencePair("p-0", [user("Q")], "A", "B", 2.0, -1.0)]


def test_mapped_columns_of_a_saved_dataset_dict(tmp_path):
    rows = {"test": [{"instruction": "Q", "chosen": "A", "rejected": "B"}]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in rows.items()}).save_to_disk(tmp_path / "d")
    assert load_pairs(str(tmp_path / "d"), split="test", columns=Columns(prompt="instruction")).pairs == [
        PreferencePair("d-test-0", [user("Q")], "A", "B")]


def test_mapped_reward_columns_of_a_csv_are_numbers(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected,rc,rr\nQ,A,B,0.5,-2\n", encoding="utf-8")
    pair = load_pairs(str(tmp_path / "p.csv"), columns=Columns(reward_chosen="rc", reward_rejected="rr")).pairs[0]
    assert (pair.reward_chosen, pair.reward_rejected) == (0.5, -2.0)


def test_score_columns_are_rewards_as_in_trl_ultrafeedback(tmp_path):
    # trl-lib/ultrafeedback_binarized: conversations with an implicit prompt, scored 1-10.
    rows = [{"chosen": [user("Q"), assistant("A")], "rejected": [user("Q"), assistant("B")],
             "score_chosen": 8.5, "score_rejected": 3.0}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "uf.parquet")
    assert load_pairs(str(tmp_path / "uf.parquet")).pairs == [PreferencePair("uf-0", [user("Q")], "A", "B", 8.5, 3.0)]


def test_reward_columns_win_over_score_columns(tmp_path):
    rows = [{"prompt": "Q", "chosen": "A", "rejected": "B", "reward_chosen": 1.0, "reward_rejected": 0.0,
             "score_chosen": 9.0, "score_rejected": 2.0}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    pair = load_pairs(str(tmp_path / "p.parquet")).pairs[0]
    assert (pair.reward_chosen, pair.reward_rejected) == (1.0, 0.0)


def test_a_missing_mapped_column_is_named_with_the_record_columns(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "Q", "chosen": "A", "rejected": "B"}]), tmp_path / "p.parquet")
    message = load_error(tmp_path / "p.parquet", columns=Columns(reward_chosen="rating"))
    assert "p.parquet row 0" in message and "field 'rating'" in message
    assert "column 'rating' (named by reward_chosen_column) is missing" in message
    assert "the record's columns are: 'prompt', 'chosen', 'rejected'" in message


def test_columns_apply_to_the_pairs_format_only(tmp_path):
    with pytest.raises(AlignlabError, match="prompt_column apply only to format 'pairs'"):
        load_pairs(str(tmp_path / "x.jsonl"), "hh-rlhf", columns=Columns(prompt="q"))


def test_data_options_read_config_fields():
    options = data_options({"dataset_config": "c", "data_dir": "d", "data_revision": "r", "chosen_column": "good"})
    assert options == {"dataset_config": "c", "data_dir": "d", "revision": "r", "columns": Columns(chosen="good")}


# ---------------------------------------------------------------- implicit prompts, TRL as the oracle

TEXT_CASES = [
    ("\n\nHuman: Hi?\n\nAssistant: Hello.", "\n\nHuman: Hi?\n\nAssistant: Go away."),  # the space goes to responses
    ("Q: sky? A: blue", "Q: sky? A: green"),
    ("Question: x\nAnswer: yes", "Question: x\nAnswer: yes please"),  # one starts with the whole other
    ("same start. A", "same start. AB"),
]


@pytest.mark.parametrize("chosen, rejected", TEXT_CASES)
def test_implicit_text_prompt_is_trls(chosen, rejected):
    expected = extract_prompt({"chosen": chosen, "rejected": rejected})
    assert split_implicit_prompt(chosen, rejected) == (expected["prompt"], expected["chosen"], expected["rejected"])


def test_implicit_text_prompts_load_as_one_user_turn(tmp_path):
    chosen, rejected = TEXT_CASES[0]
    pq.write_table(pa.Table.from_pylist([{"chosen": chosen, "rejected": rejected}]), tmp_path / "t.parquet")
    assert load_pairs(str(tmp_path / "t.parquet")).pairs == [
        PreferencePair("t-0", [user("\n\nHuman: Hi?\n\nAssistant:")], " Hello.", " Go away.")]


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=30), st.text(max_size=15), st.text(max_size=15))
def test_implicit_text_prompt_reconstructs_the_texts_and_agrees_with_trl(shared, chosen_tail, rejected_tail):
    chosen, rejected = shared + chosen_tail, shared + rejected_tail
    split = split_implicit_prompt(chosen, rejected)
    if chosen == rejected or not chosen or not rejected:
        return  # dropped as identical, or blank: TRL itself fails on an empty text
    expected = extract_prompt({"chosen": chosen, "rejected": rejected})
    if split is None:  # refused: TRL's prompt is then empty, or not a prefix of both texts (its index
        # arithmetic wraps to the last character when the first ones differ: '1 ' vs '0' gives prompt '1')
        prompt = expected["prompt"]
        assert prompt == "" or not (chosen.startswith(prompt) and rejected.startswith(prompt))
        return
    prompt, chosen_response, rejected_response = split
    assert prompt and prompt + chosen_response == chosen and prompt + rejected_response == rejected
    assert split == (expected["prompt"], expected["chosen"], expected["rejected"])


CONVERSATIONS = [
    ([user("Hi"), assistant("Hello!"), user("Joke?"), assistant("A pun.")],
     [user("Hi"), assistant("Hello!"), user("Joke?"), assistant("No.")]),
    ([user("Q"), assistant("A")], [user("Q"), assistant("B")]),
]


@pytest.mark.parametrize("chosen, rejected", CONVERSATIONS)
def test_implicit_conversation_prompt_is_trls(tmp_path, chosen, rejected):
    expected = extract_prompt({"chosen": chosen, "rejected": rejected})
    pq.write_table(pa.Table.from_pylist([{"chosen": chosen, "rejected": rejected}]), tmp_path / "c.parquet")
    pair = load_pairs(str(tmp_path / "c.parquet")).pairs[0]
    assert (pair.prompt, [assistant(pair.chosen)], [assistant(pair.rejected)]) == (
        expected["prompt"], expected["chosen"], expected["rejected"])


def test_a_text_prompt_beside_whole_conversations_is_extracted_as_trl_does(tmp_path):
    # HuggingFaceH4/ultrafeedback_binarized: a text prompt and conversations that repeat it.
    record = {"prompt": "Q", "chosen": [user("Q"), assistant("A")], "rejected": [user("Q"), assistant("B")]}
    expected = maybe_extract_prompt(record)
    pq.write_table(pa.Table.from_pylist([record]), tmp_path / "h4.parquet")
    pair = load_pairs(str(tmp_path / "h4.parquet")).pairs[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == (expected["prompt"], "A", "B")
