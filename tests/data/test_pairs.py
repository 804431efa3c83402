"""Data loading (SPEC §2): hand-written records with known answers, the real HH sample, bad input."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.data.pairs import FORMATS, PreferencePair, hh_transcript, load_pairs, write_pairs_jsonl
from alignlab.errors import AlignlabError, InputError
from conftest import SHARED

HH_SAMPLE = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def write_jsonl(path: Path, records, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def raises_input_error(source, *needles, **load_kwargs) -> InputError:
    """Load, expect an InputError, and check its message names each needle (file, line, field)."""
    with pytest.raises(InputError) as caught:
        load_pairs(str(source), **load_kwargs)
    message = str(caught.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return caught.value


# ---------------------------------------------------------------- hh-rlhf, hand-written

def test_hh_single_turn_responses_with_a_shared_start(tmp_path):
    source = write_jsonl(tmp_path / "hh.jsonl", [{
        "chosen": "\n\nHuman: Can I cook rice in a kettle?\n\nAssistant: Sure, but use a pot if you can.",
        "rejected": "\n\nHuman: Can I cook rice in a kettle?\n\nAssistant: Sure, why not.",
    }])
    result = load_pairs(str(source), "hh-rlhf")
    assert result.pairs == [PreferencePair(
        id="hh-1", prompt=[user("Can I cook rice in a kettle?")],
        chosen="Sure, but use a pot if you can.", rejected="Sure, why not.")]
    assert result.dropped == collections.Counter()


def test_hh_multi_turn_prompt_keeps_every_turn(tmp_path):
    source = write_jsonl(tmp_path / "hh.jsonl", [{
        "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."
                  "\n\nAssistant: Why did the chicken cross the road?",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."
                    "\n\nAssistant: No.",
    }])
    [pair] = load_pairs(str(source), "hh-rlhf").pairs
    assert pair.prompt == [user("Hi there"), assistant("Hello! How can I help?"), user("Tell me a joke.")]
    assert (pair.chosen, pair.rejected) == ("Why did the chicken cross the road?", "No.")


def test_hh_run_on_response_is_kept_whole(tmp_path):
    source = write_jsonl(tmp_path / "hh.jsonl", [{
        "chosen": "\n\nHuman: Name a colour.\n\nAssistant: Blue.\n\nHuman: Another?\n\nAssistant: Red.",
        "rejected": "\n\nHuman: Name a colour.\n\nAssistant: Seven.",
    }])
    [pair] = load_pairs(str(source), "hh-rlhf").pairs
    assert pair.prompt == [user("Name a colour.")]
    assert pair.chosen == "Blue.\n\nHuman: Another?\n\nAssistant: Red."
    assert pair.rejected == "Seven."


def test_hh_drops_unusable_pairs_and_counts_them_by_reason(tmp_path):
    good = {"chosen": "\n\nHuman: Q\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant: no"}
    source = write_jsonl(tmp_path / "mixed.jsonl", [
        good,                                                                        # line 1
        {"chosen": "\n\nHuman: Q\n\nAssistant: same", "rejected": "\n\nHuman: Q\n\nAssistant: same"},
        {"chosen": "\n\nHuman: Q\n\nAssistant: ", "rejected": "\n\nHuman: Q\n\nAssistant: no"},
        {"chosen": "\n\nHuman: Q\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant:  \n"},
        {"chosen": "Hello", "rejected": "Help"},                                     # no marker at all
        {"chosen": "\n\nHuman:Q\n\nAssistant: yes", "rejected": "\n\nHuman:Q\n\nAssistant: no"},
        {"chosen": "preamble\n\nHuman: Q\n\nAssistant: yes", "rejected": "preamble\n\nHuman: Q\n\nAssistant: no"},
        {"chosen": "\n\nAssistant: Hi\n\nAssistant: yes", "rejected": "\n\nAssistant: Hi\n\nAssistant: no"},
        "",                                                                          # blank line, skipped
        good,                                                                        # line 10
    ])
    result = load_pairs(str(source), "hh-rlhf")
    assert [pair.id for pair in result.pairs] == ["mixed-1", "mixed-10"]
    assert result.dropped == collections.Counter({
        "identical responses": 1, "empty response": 2, "no Assistant marker in common prefix": 1,
        "non-canonical transcript": 2, "prompt does not end with a Human turn": 1})
    assert result.summary() == (
        f"{source}: kept 2 pairs, dropped 7 (empty response: 2, non-canonical transcript: 2, "
        "identical responses: 1, no Assistant marker in common prefix: 1, prompt does not end with a Human turn: 1)")


def test_hh_extra_space_after_marker_stays_in_the_response(tmp_path):
    chosen = "\n\nHuman: Q\n\nAssistant:  indented"
    source = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": "\n\nHuman: Q\n\nAssistant: plain"}])
    [pair] = load_pairs(str(source), "hh-rlhf").pairs
    assert pair.chosen == " indented"
    assert hh_transcript(pair.prompt, pair.chosen) == chosen


def test_hh_transcript_composes_the_raw_format():
    prompt = [user("Hi"), assistant("Hello."), user("Bye")]
    assert hh_transcript(prompt, "See you") == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant: See you"
    with pytest.raises(AlignlabError, match="system"):
        hh_transcript([{"role": "system", "content": "Be nice"}, user("Hi")], "Hello")


# ---------------------------------------------------------------- hh-rlhf, the real sample

def compose(prompt, response):
    """The HH transcript written out independently of alignlab.data."""
    marker = {"user": "\n\nHuman: ", "assistant": "\n\nAssistant: "}
    return "".join(marker[turn["role"]] + turn["content"] for turn in prompt) + "\n\nAssistant: " + response


def test_real_hh_sample_round_trips_exactly():
    if not HH_SAMPLE.exists():
        pytest.skip(f"real HH-RLHF sample not found at {HH_SAMPLE}")
    with gzip.open(HH_SAMPLE, "rt", encoding="utf-8") as handle:
        raw = {line_no: json.loads(line) for line_no, line in enumerate(handle, 1) if line.strip()}

    result = load_pairs(str(HH_SAMPLE), "hh-rlhf")

    assert len(result.pairs) + sum(result.dropped.values()) == len(raw) == 2312
    # Established by reading the file directly: these four records have a blank chosen response.
    assert result.dropped == collections.Counter({"empty response": 4})
    kept_lines = {int(pair.id.rsplit("-", 1)[1]) for pair in result.pairs}
    assert set(raw) - kept_lines == {87, 517, 926, 1104}
    for pair in result.pairs:
        record = raw[int(pair.id.rsplit("-", 1)[1])]
        assert compose(pair.prompt, pair.chosen) == record["chosen"]
        assert compose(pair.prompt, pair.rejected) == record["rejected"]
        assert pair.prompt[-1]["role"] == "user"
    assert sum(len(pair.prompt) > 1 for pair in result.pairs) > 1000  # multi-turn prompts stay multi-turn
    assert result.summary() == f"{HH_SAMPLE}: kept 2308 pairs, dropped 4 (empty response: 4)"


# ---------------------------------------------------------------- pku-saferlhf

def pku(response_0_safe, response_1_safe, better, safer, **overrides):
    record = {"prompt": "How do I pick a lock?", "response_0": "Call a locksmith.", "response_1": "Use a pin.",
              "is_response_0_safe": response_0_safe, "is_response_1_safe": response_1_safe,
              "better_response_id": better, "safer_response_id": safer}
    return record | overrides


@pytest.fixture
def pku_file(tmp_path):
    return write_jsonl(tmp_path / "pku.jsonl", [
        pku(True, False, better=1, safer=0),                                   # line 1
        pku(True, True, better=0, safer=1),                                    # line 2
        pku(False, False, better=1, safer=1),                                  # line 3
        pku(False, True, better=0, safer=1, response_0="Kick it.", response_1="Ask the owner."),
    ])


def test_pku_double_safe_unsafe_chooses_the_safe_response(pku_file):
    result = load_pairs(str(pku_file), "pku-saferlhf", filter="double-safe-unsafe")
    assert [(p.id, p.chosen, p.rejected) for p in result.pairs] == [
        ("pku-1", "Call a locksmith.", "Use a pin."), ("pku-4", "Ask the owner.", "Kick it.")]
    assert result.pairs[0].prompt == [user("How do I pick a lock?")]
    assert result.dropped == collections.Counter({"both safe": 1, "both unsafe": 1})


def test_pku_better_and_safer_preferences(pku_file):
    better = load_pairs(str(pku_file), "pku-saferlhf", preference="better").pairs
    safer = load_pairs(str(pku_file), "pku-saferlhf", preference="safer").pairs
    assert [p.chosen for p in better] == ["Use a pin.", "Call a locksmith.", "Use a pin.", "Kick it."]
    assert [p.chosen for p in safer] == ["Call a locksmith.", "Use a pin.", "Use a pin.", "Ask the owner."]


def test_pku_from_csv_parses_flags_and_ids(tmp_path):
    source = tmp_path / "pku.csv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(pku(True, False, 1, 0)))
        writer.writeheader()
        writer.writerow(pku(True, False, better=1, safer=0))     # pandas writes True/False, 1/0
    assert [p.chosen for p in load_pairs(str(source), "pku-saferlhf", filter="double-safe-unsafe").pairs] == \
        ["Call a locksmith."]
    assert [p.chosen for p in load_pairs(str(source), "pku-saferlhf").pairs] == ["Use a pin."]


@pytest.mark.parametrize("field, value, options", [
    ("is_response_0_safe", "true", {"filter": "double-safe-unsafe"}),
    ("is_response_1_safe", 1, {"filter": "double-safe-unsafe"}),
    ("better_response_id", 2, {}),
    ("better_response_id", True, {}),
    ("safer_response_id", "1", {"preference": "safer"}),
])
def test_pku_mistyped_labels_name_line_and_field(tmp_path, field, value, options):
    source = write_jsonl(tmp_path / "pku.jsonl", [pku(True, False, 1, 0), pku(True, False, 1, 0, **{field: value})])
    raises_input_error(source, "pku.jsonl:2:", f"field '{field}'", format="pku-saferlhf", **options)


def test_unknown_options_list_the_valid_values(pku_file):
    with pytest.raises(AlignlabError, match="double-safe-unsafe"):
        load_pairs(str(pku_file), "pku-saferlhf", filter="safe-only")
    with pytest.raises(AlignlabError, match="better, safer"):
        load_pairs(str(pku_file), "pku-saferlhf", preference="kinder")
    with pytest.raises(AlignlabError, match=", ".join(FORMATS)):
        load_pairs(str(pku_file), "ultrafeedback")
    with pytest.raises(AlignlabError, match="only to format 'pku-saferlhf'"):
        load_pairs(str(pku_file), "pairs", filter="double-safe-unsafe")


# ---------------------------------------------------------------- generic pairs

PAIRS = [
    {"id": "a", "prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.",
     "reward_chosen": 1.5, "reward_rejected": -0.5},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5, and a comma\nacross lines"},
]


def expect_pairs(result, second_id):
    """PAIRS as loaded: the second record has no id, so it gets one from the file name and position."""
    assert result.pairs == [
        PreferencePair("a", [user("Capital of France?")], "Paris.", "Lyon.", 1.5, -0.5),
        PreferencePair(second_id, [user("2+2?")], "4", "5, and a comma\nacross lines"),
    ]


def test_pairs_jsonl_plain_and_gzipped(tmp_path):
    expect_pairs(load_pairs(str(write_jsonl(tmp_path / "p.jsonl", PAIRS))), "p-2")
    expect_pairs(load_pairs(str(write_jsonl(tmp_path / "p.jsonl.gz", PAIRS, gzip.open))), "p-2")


def test_pairs_json_list_and_data_object(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(PAIRS, indent=2), encoding="utf-8")
    with gzip.open(tmp_path / "wrapped.json.gz", "wt", encoding="utf-8") as handle:
        json.dump({"data": PAIRS}, handle)
    expect_pairs(load_pairs(str(tmp_path / "list.json")), "list-1")       # records are 0-based indices
    expect_pairs(load_pairs(str(tmp_path / "wrapped.json.gz")), "wrapped-1")


def test_pairs_csv_plain_and_gzipped(tmp_path):
    for name, opener in (("p.csv", open), ("p.csv.gz", gzip.open)):
        with opener(tmp_path / name, "wt", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "prompt", "chosen", "rejected",
                                                        "reward_chosen", "reward_rejected"])
            writer.writeheader()
            writer.writerows(PAIRS)
        # Line 1 is the header; the first record is line 2, the second line 3 (its cell spans 3-4).
        expect_pairs(load_pairs(str(tmp_path / name)), "p-3")


def test_pairs_csv_errors_point_at_the_record_start_line(tmp_path):
    source = tmp_path / "p.csv"
    source.write_text('prompt,chosen,rejected\n"multi\nline",a,b\nq,c,\n', encoding="utf-8")
    raises_input_error(source, "p.csv:4:", "field 'rejected'", "empty response")


def test_pairs_parquet_with_message_prompts(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, user("Hi")],
             "chosen": "Hello.", "rejected": "Go away.", "reward_chosen": 0.25, "reward_rejected": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    assert load_pairs(str(tmp_path / "p.parquet")).pairs == [PreferencePair(
        "p-0", [{"role": "system", "content": "Be brief."}, user("Hi")], "Hello.", "Go away.", 0.25, None)]


def test_pairs_conversational_implicit_and_explicit_prompt(tmp_path):
    history = [user("Hi"), assistant("Hello!"), user("Joke?")]
    source = write_jsonl(tmp_path / "chat.jsonl", [
        {"chosen": history + [assistant("A pun.")], "rejected": history + [assistant("No.")]},
        {"prompt": history, "chosen": [assistant("A pun.")], "rejected": [assistant("No.")]},
        {"chosen": [user("Q"), assistant("same")], "rejected": [user("Q"), assistant("same")]},
    ])
    result = load_pairs(str(source))
    assert [(p.prompt, p.chosen, p.rejected) for p in result.pairs] == [(history, "A pun.", "No.")] * 2
    assert result.dropped == collections.Counter({"identical responses": 1})


def test_written_pairs_load_back_unchanged(tmp_path):
    pairs = load_pairs(str(write_jsonl(tmp_path / "p.jsonl", PAIRS))).pairs
    write_pairs_jsonl(pairs, tmp_path / "out" / "pairs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert rows[0] == {"id": "a", "prompt": [user("Capital of France?")], "chosen": "Paris.", "rejected": "Lyon.",
                       "reward_chosen": 1.5, "reward_rejected": -0.5}
    assert "reward_chosen" not in rows[1]
    assert load_pairs(str(tmp_path / "out" / "pairs.jsonl")).pairs == pairs


def test_write_pairs_jsonl_never_leaves_a_partial_file(tmp_path):
    pairs = load_pairs(str(write_jsonl(tmp_path / "p.jsonl", PAIRS))).pairs

    def failing_midway():
        yield pairs[0]
        raise RuntimeError("disk full")

    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        write_pairs_jsonl(failing_midway(), target)
    assert not target.exists()
    target.write_text("previous\n")
    with pytest.raises(RuntimeError):
        write_pairs_jsonl(failing_midway(), target)
    assert target.read_text() == "previous\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.jsonl", "p.jsonl"]  # no temp files


# ---------------------------------------------------------------- bad input

GOOD = {"prompt": "Q", "chosen": "A", "rejected": "B"}


@pytest.mark.parametrize("bad_record, field, problem", [
    ({"prompt": "Q", "rejected": "B"}, "chosen", "is missing"),
    ({"prompt": "Q", "chosen": "A"}, "rejected", "is missing"),
    ({"chosen": "A", "rejected": "B"}, "prompt", "is missing"),
    ({"prompt": "Q", "chosen": 3, "rejected": "B"}, "chosen", "got a number"),
    ({"prompt": "Q", "chosen": None, "rejected": "B"}, "chosen", "is null"),
    ({"prompt": "Q", "chosen": "A", "rejected": "  "}, "rejected", "empty response"),
    ({"prompt": [{"role": "bot", "content": "Q"}], "chosen": "A", "rejected": "B"}, "prompt", "role 'bot'"),
    ({"prompt": [user("Q"), assistant("A")], "chosen": "A", "rejected": "B"}, "prompt", "end with a user"),
    ({"prompt": "Q", "chosen": "A", "rejected": [assistant("B")]}, "rejected", "expected a string"),
    ({"chosen": [user("Q"), assistant("A")], "rejected": [user("R"), assistant("B")]}, "chosen", "user message"),
    ({"prompt": "Q", "chosen": "A", "rejected": "B", "reward_chosen": "high"}, "reward_chosen", "finite number"),
    ({"prompt": "Q", "chosen": "A", "rejected": "B", "id": 1.5}, "id", "non-empty string"),
])
def test_bad_pairs_records_name_file_line_and_field(tmp_path, bad_record, field, problem):
    source = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "", bad_record])
    raises_input_error(source, "bad.jsonl:3:", f"field '{field}'", problem)


def test_bad_hh_record_names_file_line_and_field(tmp_path):
    source = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": 7}])
    raises_input_error(source, "hh.jsonl:1:", "field 'rejected'", "got a number", format="hh-rlhf")


def test_malformed_json_line(tmp_path):
    source = write_jsonl(tmp_path / "bad.jsonl", [GOOD, '{"prompt": "Q", "chosen": "A",'])
    raises_input_error(source, "bad.jsonl:2:", "not valid JSON", "one JSON object per line")


def test_record_that_is_not_an_object(tmp_path):
    source = write_jsonl(tmp_path / "bad.jsonl", [GOOD, ["Q", "A", "B"]])
    raises_input_error(source, "bad.jsonl:2:", "record is a list")


def test_duplicate_ids_name_both_lines(tmp_path):
    source = write_jsonl(tmp_path / "dup.jsonl", [GOOD | {"id": "x"}, GOOD | {"id": "y"}, GOOD | {"id": "x"}])
    raises_input_error(source, "dup.jsonl:3:", "field 'id'", "duplicate id 'x', first used at line 1")


def test_non_utf8_bytes_name_the_line(tmp_path):
    source = tmp_path / "latin1.jsonl"
    source.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "caf\xe9", "chosen": "A", "rejected": "B"}\n')
    raises_input_error(source, "latin1.jsonl:2:", "not valid UTF-8")


def test_truncated_gzip(tmp_path):
    source = tmp_path / "cut.jsonl.gz"
    source.write_bytes(gzip.compress(("\n".join(json.dumps(GOOD) for _ in range(2000)) + "\n").encode())[:-200])
    error = raises_input_error(source, "cut.jsonl.gz:", "truncated or corrupt")
    assert error.line is not None and error.line > 1


@pytest.mark.parametrize("name, content", [("empty.jsonl", b""), ("blank.jsonl", b"\n\n"),
                                           ("empty.csv", b"prompt,chosen,rejected\n"), ("empty.json", b"[]")])
def test_empty_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    raises_input_error(tmp_path / name, name, "no records")


def test_json_file_errors(tmp_path):
    (tmp_path / "syntax.json").write_text('[\n{"prompt": "Q",\n "chosen": }\n]')
    raises_input_error(tmp_path / "syntax.json", "syntax.json:3:", "not valid JSON")
    (tmp_path / "object.json").write_text(json.dumps(GOOD))
    raises_input_error(tmp_path / "object.json", "object.json", "top level is an object")
    (tmp_path / "items.json").write_text(json.dumps([GOOD, {"prompt": "Q", "chosen": "A"}]))
    raises_input_error(tmp_path / "items.json", "items.json record 1", "field 'rejected'")


def test_csv_with_a_missing_cell(tmp_path):
    (tmp_path / "short.csv").write_text("prompt,chosen,rejected\nQ,A,B\nQ,A\n")
    raises_input_error(tmp_path / "short.csv", "short.csv:3:", "2 cells")


def test_parquet_errors_name_the_row(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "Q", "chosen": "A"}, {"prompt": "Q", "chosen": "B"}]),
                   tmp_path / "no_rejected.parquet")
    raises_input_error(tmp_path / "no_rejected.parquet", "no_rejected.parquet row 0", "field 'rejected'")
    (tmp_path / "fake.parquet").write_text("not parquet")
    raises_input_error(tmp_path / "fake.parquet", "fake.parquet", "not a readable Parquet file")


def test_missing_and_unsupported_files(tmp_path):
    raises_input_error(tmp_path / "nowhere.jsonl", "nowhere.jsonl", "no such file")
    raises_input_error(tmp_path, str(tmp_path), "a directory, but no dataset saved by save_to_disk")
    (tmp_path / "notes.txt").write_text("hello")
    raises_input_error(tmp_path / "notes.txt", "notes.txt", "unsupported file type")


def fake_datasets(monkeypatch, load_dataset):
    """Stand in for the `datasets` package: this machine has no network (offline: the hub is not probed)."""
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=load_dataset, config=types.SimpleNamespace(HF_HUB_OFFLINE=True)))


def test_hub_failure_is_a_clean_error(monkeypatch):
    def unreachable(path, **options):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub\nretrying...")

    fake_datasets(monkeypatch, unreachable)
    raises_input_error("someone/no-such-dataset", "someone/no-such-dataset", "no such local file",
                       "Hugging Face hub could not load it", "Couldn't reach")


def test_hub_rows_go_through_the_adapter(monkeypatch):
    loaded = []
    fake_datasets(monkeypatch,
                  lambda path, **options: loaded.append((path, options["split"])) or [GOOD, {"prompt": "Q"}])
    raises_input_error("org/prefs", "org/prefs row 1", "field 'chosen'", split="test")
    fake_datasets(monkeypatch, lambda path, **options: [GOOD, GOOD | {"chosen": "C"}])
    assert [p.id for p in load_pairs("org/prefs", split="test").pairs] == ["prefs-test-0", "prefs-test-1"]
    assert loaded == [("org/prefs", "test")]


# ---------------------------------------------------------------- rewards VAR can train on (issue 28)

@pytest.mark.parametrize("field, value", [("reward_chosen", 1e39), ("reward_rejected", -1e39),
                                          ("score_chosen", 10 ** 40)])
def test_a_reward_beyond_float32_names_file_line_and_field(tmp_path, field, value):
    """Rewards train as float32: 1e39 is finite to Python but infinite there, and VAR's weights NaN."""
    source = write_jsonl(tmp_path / "rewards.jsonl", [GOOD, {**GOOD, "reward_rejected": 0.5, field: value}])
    raises_input_error(source, "rewards.jsonl:2:", f"field '{field}'", "float32", "Rescale")


def test_a_csv_reward_beyond_float32_names_its_line(tmp_path):
    source = tmp_path / "rewards.csv"
    source.write_text("prompt,chosen,rejected,reward_chosen,reward_rejected\nQ,A,B,1,0\nQ,A,B,1e39,0\n")
    raises_input_error(source, "rewards.csv:3:", "field 'reward_chosen'", "float32")


def test_var_on_a_reward_beyond_float32_stops_in_one_line_naming_it(tiny_model, tmp_path, capsys):
    from alignlab.cli import main
    from conftest import make_pairs

    pairs = make_pairs(8)
    pairs[5]["reward_chosen"] = 1e39
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    code = main(["train", "--method", "var", "--model", str(tiny_model), "--data", str(source), "--out",
                 str(tmp_path / "run"), "--max_length", "64", "--max_prompt_length", "32", "--batch_size", "4"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"alignlab: error: {source}:6: field 'reward_chosen': ") and "float32" in lines[0]
