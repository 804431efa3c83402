"""Unpaired data for KTO (alignlab.data.unpaired): prompt/completion/label records from JSONL, CSV,
Parquet and saved Hugging Face datasets, bad records (file:line, field, fix; a property test over
arbitrary records), preference pairs unpaired as TRL does, and the KL completions' pairing."""

from __future__ import annotations

import collections
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.data.options import Columns
from alignlab.data.pairs import load_pairs
from alignlab.data.unpaired import UnpairedExample, kl_pseudo_pairs, load_unpaired, unpair
from alignlab.errors import InputError

RECORDS = [
    {"prompt": "What color is the sky?", "completion": "Blue.", "label": True},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
     "completion": [{"role": "assistant", "content": "A plum."}], "label": True, "id": "conv"},
    {"prompt": "What color is the sky?", "completion": "I will not say.", "label": False},
    {"prompt": "Is snow cold?", "completion": "No idea, and I do not care.", "label": False, "id": 7},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_unpaired_jsonl_records_become_labelled_pseudo_pairs(tmp_path):
    loaded = load_unpaired(str(write_jsonl(tmp_path / "kto.jsonl", RECORDS)))
    assert [p.id for p in loaded.pairs] == ["kto-1", "conv", "kto-3", "7"]
    assert loaded.labels == [True, True, False, False] and loaded.unpaired_from == 0
    assert loaded.pairs[1].prompt == [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Name a fruit."}]
    assert [p.chosen for p in loaded.pairs] == ["Blue.", "A plum.", "I will not say.", "No idea, and I do not care."]
    completions = [p.chosen for p in loaded.pairs]
    # the rejected slot holds another example's completion, to another prompt, each completion once
    assert sorted(p.rejected for p in loaded.pairs) == sorted(completions)
    for i, pair in enumerate(loaded.pairs):
        j = completions.index(pair.rejected)
        assert j != i and loaded.pairs[j].prompt != pair.prompt
    assert loaded.summary().endswith("kept 4 labelled examples (2 desirable, 2 undesirable), dropped 0")
    assert load_unpaired(str(tmp_path / "kto.jsonl")).pairs == loaded.pairs  # fixed, whatever the run


def test_csv_parquet_and_a_saved_dataset_read_alike(tmp_path):
    import datasets

    flat = [{"prompt": r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"],
             "completion": r["completion"] if isinstance(r["completion"], str) else r["completion"][0]["content"],
             "label": r["label"]} for r in RECORDS]
    expected = load_unpaired(str(write_jsonl(tmp_path / "flat.jsonl", flat)))
    (tmp_path / "flat.csv").write_text("prompt,completion,label\n" + "".join(
        f"\"{r['prompt']}\",\"{r['completion']}\",{str(r['label']).lower()}\n" for r in flat))
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "flat.parquet")
    datasets.Dataset.from_list(flat).save_to_disk(str(tmp_path / "saved"))
    for source in ("flat.csv", "flat.parquet", "saved"):
        loaded = load_unpaired(str(tmp_path / source))
        assert [(p.prompt, p.chosen, p.rejected) for p in loaded.pairs] == \
            [(p.prompt, p.chosen, p.rejected) for p in expected.pairs], source
        assert loaded.labels == expected.labels


def test_a_prompt_column_renames_the_prompt(tmp_path):
    records = [{"question": r["prompt"], "completion": r["completion"], "label": r["label"]} for r in RECORDS]
    loaded = load_unpaired(str(write_jsonl(tmp_path / "kto.jsonl", records)), columns=Columns(prompt="question"))
    assert len(loaded.pairs) == 4


@pytest.mark.parametrize("change,field,problem", [
    ({"label": None}, "label", "is null"),
    ({"label": "yes"}, "label", "expected true or false, got 'yes'"),
    ({"label": 1}, "label", "expected true or false, got 1"),
    ({"completion": "  \n"}, "completion", "empty completion"),
    ({"completion": 3}, "completion", "expected a string or a list of messages, got a number"),
    ({"completion": [{"role": "user", "content": "hi"}]}, "completion", "expected one assistant message"),
    ({"completion": [{"role": "assistant", "content": 5}]}, "completion", "message 0 content is a number"),
    ({"prompt": None}, "prompt", "is null"),
    ({"prompt": []}, "prompt", "expected text or a non-empty list of messages, got a list"),
    ({"prompt": [{"role": "assistant", "content": "hi"}]}, "prompt", "the prompt must end with a user message"),
    ({"prompt": [{"role": "robot", "content": "hi"}]}, "prompt", "message 0 has role 'robot'"),
    ({"id": ""}, "id", "expected a non-empty string or an integer"),
    ({"chosen": "x"}, "completion", "is beside a 'chosen' response"),
])
def test_bad_records_name_file_line_field_and_fix(tmp_path, change, field, problem):
    records = [dict(r) for r in RECORDS]
    records[2].update(change)
    path = write_jsonl(tmp_path / "kto.jsonl", records)
    with pytest.raises(InputError) as e:
        load_unpaired(str(path))
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 3, field)
    assert problem in e.value.problem
    assert str(e.value).startswith(f"{path}:3: field '{field}': ")


def test_missing_fields_and_a_pair_among_unpaired_records(tmp_path):
    for missing in ("label", "completion", "prompt"):
        records = [dict(r) for r in RECORDS]
        del records[1][missing]
        with pytest.raises(InputError, match=f":2: field '{missing}': is missing") as e:
            load_unpaired(str(write_jsonl(tmp_path / "kto.jsonl", records)))
        assert e.value.fix
    records = RECORDS[:2] + [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    with pytest.raises(InputError, match="kto.jsonl:3: field 'completion': is missing. The source's first record is "
                                         "unpaired"):
        load_unpaired(str(write_jsonl(tmp_path / "kto.jsonl", records)))


def test_duplicate_ids_and_a_lone_example(tmp_path):
    records = [dict(r, id="same") for r in RECORDS[:2]]
    with pytest.raises(InputError, match=r":2: field 'id': duplicate id 'same', first used at line 1"):
        load_unpaired(str(write_jsonl(tmp_path / "kto.jsonl", records)))
    with pytest.raises(InputError, match="one example: KTO estimates its KL term"):
        load_unpaired(str(write_jsonl(tmp_path / "one.jsonl", RECORDS[:1])))
    with pytest.raises(InputError, match="no records"):
        load_unpaired(str(write_jsonl(tmp_path / "none.jsonl", [])))


def test_pairs_train_kto_unpaired_as_trl_unpairs_them(tmp_path):
    from conftest import make_pairs

    pairs = make_pairs(6) + [{"prompt": "Same?", "chosen": "x", "rejected": "x"}]  # dropped, as for pairs
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    loaded = load_unpaired(str(path))
    assert loaded.unpaired_from == 6 and loaded.dropped == collections.Counter({"identical responses": 1})
    assert [p.id for p in loaded.pairs[:4]] == ["pair-0-chosen", "pair-0-rejected", "pair-1-chosen", "pair-1-rejected"]
    assert loaded.labels == [True, False] * 6
    assert "kept 12 labelled examples (6 desirable, 6 undesirable) from 6 preference pairs, dropped 1" in loaded.summary()
    examples = unpair(load_pairs(str(path)).pairs)
    assert [(e.completion, e.label) for e in examples] == [(p.chosen, label) for p, label in
                                                           zip(loaded.pairs, loaded.labels)]
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("trl")
    from trl.data_utils import unpair_preference_dataset

    theirs = unpair_preference_dataset(datasets.Dataset.from_list(
        [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs[:6]]))
    assert sorted((row["prompt"], row["completion"], row["label"]) for row in theirs) == \
        sorted((e.prompt[0]["content"], e.completion, e.label) for e in examples)


def test_other_formats_are_unpaired_too(tmp_path):
    pku = {"prompt": "How do I pick a lock?", "response_0": "Use a pick.", "response_1": "I cannot help with that.",
           "better_response_id": 1, "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True}
    path = write_jsonl(tmp_path / "pku.jsonl", [pku, dict(pku, prompt="How do I open a safe?")])
    loaded = load_unpaired(str(path), "pku-saferlhf", filter="double-safe-unsafe")
    assert loaded.labels == [True, False, True, False] and loaded.pairs[0].chosen == "I cannot help with that."
    assert loaded.pairs[0].prompt[0]["content"] == "How do I pick a lock?" and loaded.unpaired_from == 2


def test_dpo_on_unpaired_records_says_which_method_reads_them(tmp_path):
    with pytest.raises(InputError, match="unpaired, which only method kto trains on"):
        load_pairs(str(write_jsonl(tmp_path / "kto.jsonl", RECORDS)))


# ---------------------------------------------------------------- the KL completions

def examples_of(prompt_ids: list[int]) -> list[UnpairedExample]:
    return [UnpairedExample(f"e{i}", [{"role": "user", "content": f"prompt {p}"}], f"completion {i}", i % 2 == 0)
            for i, p in enumerate(prompt_ids)]


@settings(max_examples=200, deadline=None, database=None)
@given(prompt_ids=st.lists(st.integers(0, 6), min_size=2, max_size=40), seed=st.integers(0, 3))
def test_kl_completions_are_a_permutation_of_other_examples_to_other_prompts(prompt_ids, seed):
    examples = examples_of(prompt_ids)
    pairs = kl_pseudo_pairs(examples, seed)
    partner = [int(p.rejected.split()[1]) for p in pairs]
    assert sorted(partner) == list(range(len(examples)))  # each completion serves once, as in TRL's shift
    assert all(j != i for i, j in enumerate(partner))
    assert [(p.id, p.prompt, p.chosen) for p in pairs] == [(e.id, e.prompt, e.completion) for e in examples]
    counts = collections.Counter(prompt_ids)
    same_prompt = sum(prompt_ids[i] == prompt_ids[j] for i, j in enumerate(partner))
    largest = max(counts.values())
    if 2 * largest <= len(examples):
        assert same_prompt == 0
    elif len(counts) > 1:  # a prompt holding most examples: only its surplus stays with it
        assert same_prompt <= 2 * largest - len(examples)
    assert kl_pseudo_pairs(examples, seed) == pairs  # deterministic


def test_kl_pairing_needs_two_examples():
    assert kl_pseudo_pairs([]) == []
    with pytest.raises(ValueError, match="one example"):
        kl_pseudo_pairs(examples_of([0]))


# ---------------------------------------------------------------- any record: examples or an InputError

text = st.text(max_size=8)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                           "content": text | st.integers()}), max_size=3)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                           lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.sampled_from(["prompt", "completion", "label", "id", "role",
                                                              "content", "chosen"]) | text, children, max_size=4),
                           max_leaves=6)
likely = st.fixed_dictionaries({"prompt": text | messages | json_values,
                                "completion": text | messages | json_values,
                                "label": st.booleans() | json_values},
                               optional={"id": st.integers() | text | json_values, "chosen": text})


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(likely | json_values, min_size=1, max_size=5))
def test_any_records_give_examples_or_an_input_error_naming_the_line(records, tmp_path):
    path = write_jsonl(tmp_path / "any.jsonl", records)
    try:
        loaded = load_unpaired(str(path))
    except InputError as e:
        assert e.file == str(path)
        assert e.line is not None or e.problem.startswith("one example"), str(e)
        assert 1 <= (e.line or 1) <= len(records)
        return
    assert len(loaded.pairs) == len(loaded.labels) != 1
    for pair, label in zip(loaded.pairs, loaded.labels):
        assert isinstance(label, bool) and isinstance(pair.chosen, str) and pair.chosen.strip()
        assert pair.prompt and pair.prompt[-1]["role"] == "user"
        assert all(isinstance(turn["content"], str) for turn in pair.prompt)
