"""Every reader of untrusted input (issue 13, class 5): whatever it is given, it returns a result or
raises one AlignlabError — one line, quoting at most ~200 characters of the input — and never any
other exception. Property-based tests feed each reader arbitrary bytes and arbitrary JSON-like
structures written in its format; example tests pin the cases the issue names."""

from __future__ import annotations

import csv
import gzip
import io
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.config import MAX_OVERRIDE_CHARS, TrainConfig, build_config, parse_overrides
from alignlab.data.pairs import load_pairs
from alignlab.errors import AlignlabError
from alignlab.study.config import StudyConfig

# Hypothesis examples per property test: each reader gets one test of arbitrary bytes and one of
# arbitrary structures, each run this many times (sized so the file runs in well under a minute).
EXAMPLES = {
    "pairs-jsonl": 100, "pairs-json": 80, "pairs-csv": 80, "pairs-parquet": 50,
    "hh-rlhf": 80, "pku-saferlhf": 80, "yaml-train": 80, "yaml-study": 80, "overrides": 120,
}
SHOWN_LIMIT = 200  # characters of input an error message may quote (+ quotes, escapes and "…")
# A message is its place (a pytest tmp path, up to ~120 characters), its own words, up to ~200
# characters of input and a fix; an unknown config key also lists every valid key (~450 characters).
MAX_DATA_MESSAGE = 700
MAX_CONFIG_MESSAGE = 1000


def run_settings(name: str):
    return settings(max_examples=EXAMPLES[name], deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def outcome(call, inputs, max_chars: int):
    """Run a reader: its result, or None after checking its AlignlabError is one short line that
    quotes no input string longer than SHOWN_LIMIT whole. Any other exception fails the test."""
    try:
        return call()
    except AlignlabError as e:
        message = str(e)
        assert len(message.splitlines()) == 1, message
        assert len(message) <= max_chars, message
        for text in inputs:
            if len(text) > SHOWN_LIMIT + 10:
                assert text[: SHOWN_LIMIT + 10] not in message, "the message quotes too much input"
        return None


# ---------------------------------------------------------------- JSON-like structures

class Pairs(tuple):
    """An object as written: (key, value) pairs in order, so that a key can repeat."""


# Any character. Lone surrogates (which no UTF-8 file can hold, but a JSON or YAML escape can) are
# rare among Hypothesis's characters, so one string in four gets one on purpose.
plain_text = st.text(st.characters(exclude_categories=()), max_size=12)
any_text = st.one_of(plain_text, plain_text, plain_text,
                     st.builds(lambda head, surrogate, tail: head + surrogate + tail,
                               plain_text, st.characters(categories=["Cs"]), plain_text))
# Longer than a message may quote; built by repetition, as drawing 200+ characters one by one is slow.
long_text = st.builds(lambda text, times: (text or "x") * times, any_text, st.integers(SHOWN_LIMIT + 20, 400))
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**99, max_value=10**120)
           | st.floats() | any_text | long_text)


def structures(field_names: list[str]):
    """JSON-like values whose keys are mostly the reader's field names, so its adapters are reached."""
    keys = st.sampled_from(field_names) | any_text
    return st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                        | st.lists(st.tuples(keys, children), max_size=6).map(Pairs), max_leaves=8)


def records(field_names: list[str], required: dict):
    """Lists of records: some free-form, some with every field `required` maps to a strategy of likely
    values (so that records load and what they carry, lone surrogates included, reaches the pairs),
    with a few more entries around them (repeats included)."""
    keys = st.sampled_from(field_names) | any_text
    entries = st.lists(st.tuples(keys, structures(field_names)), max_size=7)
    likely = st.tuples(st.fixed_dictionaries(required), entries).map(
        lambda parts: Pairs(list(parts[0].items()) + parts[1][:2]))
    return st.lists(entries.map(Pairs) | likely, max_size=3)


def dump_json(value) -> str:
    """JSON text of a structure (ASCII, so lone surrogates become escapes; NaN as Python writes it)."""
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(key)}: {dump_json(item)}" for key, item in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump_json(item) for item in value) + "]"
    return json.dumps(value)


def texts_in(value) -> list[str]:
    """Every string in a structure, for `outcome`'s check that messages do not quote them whole."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in texts_in(item)]
    return []


def csv_cell(value) -> str:
    return "" if value is None else value if isinstance(value, str) else dump_json(value)


def write_records(path, rows: list[Pairs], kind: str, gzipped: bool) -> None:
    """Write records as a .jsonl, .json or .csv file (a CSV header from the first record's keys)."""
    if kind == "jsonl":
        text = "".join(dump_json(row) + "\n" for row in rows)
    elif kind == "json":
        text = dump_json(list(rows))
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerows([[key for key, _ in rows[0]] if rows else []]
                         + [[csv_cell(value) for _, value in row] for row in rows])
        text = buffer.getvalue()
    data = text.encode("utf-8", "surrogatepass")  # a raw lone surrogate becomes bytes that are no UTF-8
    path.write_bytes(gzip.compress(data) if gzipped else data)


PAIRS_FIELDS = ["id", "prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "role", "content",
                "user", "assistant", "system"]
HH_FIELDS = ["chosen", "rejected"]
PKU_FIELDS = ["prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
              "is_response_0_safe", "is_response_1_safe"]
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                           "content": any_text}).map(lambda d: Pairs(d.items())), max_size=3)
PAIRS_LIKELY = {"prompt": any_text | messages, "chosen": any_text | messages, "rejected": any_text | messages}
# HH transcripts: texts made of the markers the adapter splits on; a shared prompt, two responses.
hh_text = st.lists(st.sampled_from(["\n\nHuman:", "\n\nAssistant:", " hi", " no", "x", " "]) | any_text,
                   max_size=6).map("".join)
hh_prompt = st.shared(hh_text, key="hh-prompt")
HH_LIKELY = {"chosen": st.builds(str.__add__, hh_prompt, hh_text),
             "rejected": st.builds(str.__add__, hh_prompt, hh_text)}
response_id = st.sampled_from([0, 1, 2, True, "1", None])
safety = st.booleans() | st.sampled_from(["true", 0, None])
PKU_LIKELY = {"prompt": any_text, "response_0": any_text, "response_1": any_text, "better_response_id": response_id,
              "safer_response_id": response_id, "is_response_0_safe": safety, "is_response_1_safe": safety}


def check_loaded(result) -> None:
    """A load that succeeds gives pairs of text, as PreferencePair promises."""
    if result is None:
        return
    for pair in result.pairs:
        assert isinstance(pair.chosen, str) and isinstance(pair.rejected, str) and pair.chosen != pair.rejected
        assert pair.prompt and all(isinstance(turn["content"], str) for turn in pair.prompt)
        json.dumps(pair.to_json(), ensure_ascii=False).encode("utf-8")  # writable: no lone surrogates


# ---------------------------------------------------------------- data readers

FILE_READERS = {  # name -> (format, file kind, field names, likely values of the required fields)
    "pairs-jsonl": ("pairs", "jsonl", PAIRS_FIELDS, PAIRS_LIKELY),
    "pairs-json": ("pairs", "json", PAIRS_FIELDS, PAIRS_LIKELY),
    "pairs-csv": ("pairs", "csv", PAIRS_FIELDS, PAIRS_LIKELY),
    "hh-rlhf": ("hh-rlhf", "jsonl", HH_FIELDS, HH_LIKELY),
    "pku-saferlhf": ("pku-saferlhf", "jsonl", PKU_FIELDS, PKU_LIKELY),
}
pku_options = st.sampled_from([{}, {"filter": "double-safe-unsafe"}, {"preference": "safer"}])


def load_options(format: str):
    return pku_options if format == "pku-saferlhf" else st.just({})


@pytest.mark.parametrize("name", list(FILE_READERS))
def test_file_readers_take_any_bytes(name, tmp_path):
    format, kind, _, _ = FILE_READERS[name]

    @run_settings(name)
    @given(data=st.binary(max_size=300), gzipped=st.booleans(), options=load_options(format))
    def check(data, gzipped, options):
        path = tmp_path / f"data.{kind}{'.gz' if gzipped else ''}"
        path.write_bytes(gzip.compress(data) if gzipped and data[:1] != b"x" else data)  # also not-gzip .gz
        check_loaded(outcome(lambda: load_pairs(str(path), format, **options), [], MAX_DATA_MESSAGE))

    check()


@pytest.mark.slow  # seconds each: the full suite runs it, the quick loop does not
@pytest.mark.parametrize("name", list(FILE_READERS))
def test_file_readers_take_any_structure(name, tmp_path):
    format, kind, fields, likely = FILE_READERS[name]

    @run_settings(name)
    @given(rows=records(fields, likely), gzipped=st.booleans(),
           options=load_options(format))
    def check(rows, gzipped, options):
        path = tmp_path / f"data.{kind}{'.gz' if gzipped else ''}"
        write_records(path, rows, kind, gzipped)
        check_loaded(outcome(lambda: load_pairs(str(path), format, **options), texts_in(rows), MAX_DATA_MESSAGE))

    check()


# Parquet holds typed columns: arbitrary tables are columns of arbitrary (nullable) Arrow types.
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
arrow_text = st.text(max_size=12) | st.builds(lambda text, times: (text or "x") * times, st.text(max_size=12),
                                               st.integers(SHOWN_LIMIT + 20, 300))  # Arrow holds only UTF-8
COLUMN_KINDS = {
    pa.string(): arrow_text,
    pa.int64(): st.integers(-2**63, 2**63 - 1),
    pa.float64(): st.floats(),
    pa.bool_(): st.booleans(),
    pa.binary(): st.binary(max_size=8),
    pa.list_(pa.string()): st.lists(arrow_text, max_size=3),
    pa.list_(MESSAGE_TYPE): st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "x"]),
                                                            "content": arrow_text}), max_size=3),
}


@st.composite
def arrow_tables(draw):
    rows = draw(st.integers(0, 4))
    columns = {}
    for name in draw(st.lists(st.sampled_from(PAIRS_FIELDS) | st.text(max_size=6), max_size=6, unique=True)):
        kind = draw(st.sampled_from(list(COLUMN_KINDS)))
        columns[name] = pa.array(draw(st.lists(st.none() | COLUMN_KINDS[kind], min_size=rows, max_size=rows)), kind)
    return pa.table(columns) if columns else pa.table({"empty": pa.array([], pa.int64())})


@run_settings("pairs-parquet")
@given(table=arrow_tables())
def test_parquet_reader_takes_any_table(table, tmp_path_factory):
    path = tmp_path_factory.mktemp("parquet") / "data.parquet"
    pq.write_table(table, path)
    texts = [text for column in table.to_pylist() for text in texts_in(list(column.values()))]
    check_loaded(outcome(lambda: load_pairs(str(path), "pairs"), texts, MAX_DATA_MESSAGE))


@run_settings("pairs-parquet")
@given(data=st.binary(max_size=300), framed=st.booleans())
def test_parquet_reader_takes_any_bytes(data, framed, tmp_path_factory):
    path = tmp_path_factory.mktemp("parquet") / "data.parquet"
    path.write_bytes(b"PAR1" + data + b"PAR1" if framed else data)  # framed: past the magic-number check
    outcome(lambda: load_pairs(str(path), "pairs"), [], MAX_DATA_MESSAGE)


# ---------------------------------------------------------------- configs

TRAIN_FIELDS = list(TrainConfig.__dataclass_fields__) + ["beta", "gamma"]
STUDY_FIELDS = list(StudyConfig.__dataclass_fields__)
CONFIGS = {"yaml-train": (TrainConfig, TRAIN_FIELDS), "yaml-study": (StudyConfig, STUDY_FIELDS)}
# Known gap, outside this branch's files: objectives.unknown_name_message quotes an unknown method
# name whole (see test_an_unknown_method_name_is_quoted_short), so values of `method` are drawn from
# the valid names; every other key takes any value.
method_values = st.sampled_from(["dpo", "simpo", "var", "grpo", "sft", "ln-dpo"])


def config_structures(fields: list[str]):
    others = [name for name in fields if name != "method"]
    value = structures(others)
    keys = st.sampled_from(others) | any_text.filter(lambda key: key != "method")
    entry = st.tuples(keys, value) | st.tuples(st.just("method"), method_values)
    return st.lists(entry, max_size=8).map(Pairs) | value


def dump_yaml_text(value, block: bool) -> str:
    """A structure as YAML: JSON text is a YAML flow document (repeats kept); block style via PyYAML
    (repeated keys merged), where PyYAML can write it."""
    if not block:
        return dump_json(value)
    try:
        return yaml.safe_dump(plain(value), allow_unicode=False)
    except yaml.YAMLError:
        return dump_json(value)


def plain(value):
    if isinstance(value, Pairs):
        return {key: plain(item) for key, item in value}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


@pytest.mark.parametrize("name", list(CONFIGS))
def test_yaml_configs_take_any_bytes(name, tmp_path):
    cls, _ = CONFIGS[name]

    @run_settings(name)
    @given(data=st.binary(max_size=300))
    def check(data):
        path = tmp_path / "config.yaml"
        path.write_bytes(data)
        outcome(lambda: build_config(cls, str(path), {}), [], MAX_CONFIG_MESSAGE)

    check()


@pytest.mark.slow  # seconds each: the full suite runs it, the quick loop does not
@pytest.mark.parametrize("name", list(CONFIGS))
def test_yaml_configs_take_any_structure(name, tmp_path):
    cls, fields = CONFIGS[name]

    @run_settings(name)
    @given(value=config_structures(fields), block=st.booleans())
    def check(value, block):
        path = tmp_path / "config.yaml"
        path.write_bytes(dump_yaml_text(value, block).encode("utf-8", "surrogatepass"))
        config = outcome(lambda: build_config(cls, str(path), {}), texts_in(value), MAX_CONFIG_MESSAGE)
        if config is not None:
            assert_config_is_sound(config)

    check()


def assert_config_is_sound(config) -> None:
    """No field of a non-Optional type holds None or the text "None" made from a blank value, and
    every value can be written out as UTF-8 (no lone surrogates)."""
    for name, declared in config.__dataclass_fields__.items():
        value = getattr(config, name)
        if "None" not in str(declared.type):
            assert value is not None and value != "None", name
    json.dumps(config.to_dict(), ensure_ascii=False, default=str).encode("utf-8")


overrides_tokens = st.lists(st.sampled_from([f"--{name}" for name in TRAIN_FIELDS]) | any_text | long_text
                            | st.sampled_from(["--", "--=1", "-x", "--beta=2"]), max_size=8)


@run_settings("overrides")
@given(tokens=overrides_tokens)
def test_overrides_take_any_tokens(tokens):
    tokens = ["--method=dpo" if token.startswith("--method") else token for token in tokens]  # as method_values
    outcome(lambda: build_config(TrainConfig, None, parse_overrides(tokens)), tokens, MAX_CONFIG_MESSAGE)


@run_settings("overrides")
@given(data=st.lists(st.binary(max_size=40), max_size=6))
def test_overrides_take_any_bytes(data):
    # As Python gives undecodable argv bytes: surrogate escapes.
    tokens = [raw.decode("utf-8", "surrogateescape") for raw in data]
    outcome(lambda: build_config(TrainConfig, None, parse_overrides(tokens)), tokens, MAX_CONFIG_MESSAGE)


# ---------------------------------------------------------------- the cases the issue names

def error_of(call) -> str:
    with pytest.raises(AlignlabError) as caught:
        call()
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and len(message) <= MAX_DATA_MESSAGE, message
    return message


GOOD = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}


def test_a_repeated_json_key_is_an_error_at_its_line_naming_the_key(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n"
                    + '{"prompt": "a", "chosen": "b", "rejected": "c", "chosen": "d"}\n')
    message = error_of(lambda: load_pairs(str(path)))
    assert f"{path}:3:" in message and "'chosen'" in message and "duplicate" in message


def test_a_repeated_key_in_a_json_file_names_the_line_its_object_opens(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a",\n'
                    '   "chosen": "b", "rejected": "c", "prompt": "e"}\n]\n')
    message = error_of(lambda: load_pairs(str(path)))
    assert f"{path}:3:" in message and "'prompt'" in message


@pytest.mark.parametrize("kind", ["jsonl", "json"])
@pytest.mark.parametrize("opening", ["[", '{"a": '])
def test_json_nested_100k_deep_is_a_clean_error_at_once(tmp_path, kind, opening):
    path = tmp_path / f"deep.{kind}"
    path.write_text(opening * 100_000 + "\n")
    started = time.monotonic()
    message = error_of(lambda: load_pairs(str(path)))
    assert "nested deeper than" in message and str(path) in message
    assert time.monotonic() - started < 1


def test_nesting_is_bounded_at_64_levels(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**GOOD, "extra": [[[[]]]]}) + "\n"  # 5 levels: a record with a list field
                    + "{" + '"a": {' * 63 + "}" * 64 + "\n"  # 64 levels: read, then the adapter's error
                    + "{" + '"a": {' * 64 + "}" * 65 + "\n")  # 65 levels
    message = error_of(lambda: load_pairs(str(path)))
    assert f"{path}:2:" in message and "'prompt'" in message
    path.write_text("{" + '"a": {' * 64 + "}" * 65 + "\n")
    assert f"{path}:1: nested deeper than 64 levels" in error_of(lambda: load_pairs(str(path)))


def test_a_refusal_64_levels_deep_in_a_json_file_names_its_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 64 + "\n" + "9" * 200 + "]" * 64)
    assert f"{path}:2: an integer of 200 digits" in error_of(lambda: load_pairs(str(path)))


def test_brackets_inside_strings_are_not_nesting(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**GOOD, "prompt": "[[[{" * 1000 + '\\"'}) + "\n")
    assert len(load_pairs(str(path)).pairs) == 1


@pytest.mark.parametrize("number", ["9" * 5000, "-" + "1" * 101, "1e999", "-1e999", "NaN", "Infinity"])
def test_huge_and_non_finite_numbers_are_clean_errors(tmp_path, number):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"prompt": "a", "chosen": "b", "rejected": "c", '
                    f'"reward_chosen": {number}}}\n')
    message = error_of(lambda: load_pairs(str(path)))
    assert f"{path}:2:" in message and "9" * 300 not in message


def test_a_100_digit_integer_is_still_a_number(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**GOOD, "id": int("9" * 100)}) + "\n")
    assert load_pairs(str(path)).pairs[0].id == "9" * 100


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00", "\\ud800x", "\\ud800\\ud800\\udc00"])
def test_a_lone_surrogate_is_a_clean_error_at_its_line(tmp_path, escape):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + f'{{"prompt": "{escape}", "chosen": "b", "rejected": "c"}}\n')
    message = error_of(lambda: load_pairs(str(path)))
    assert f"{path}:2:" in message and "surrogate" in message


def test_surrogate_pairs_and_escaped_backslashes_are_text(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "\\ud83d\\ude00", "chosen": "\\\\ud800", "rejected": "c"}\n')
    pair = load_pairs(str(path)).pairs[0]
    assert (pair.prompt[0]["content"], pair.chosen) == ("\U0001F600", "\\ud800")


def test_a_repeated_csv_column_is_an_error_at_line_1(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected,chosen\na,b,c,d\n")
    message = error_of(lambda: load_pairs(str(path)))
    assert f"{path}:1:" in message and "'chosen'" in message


def test_long_values_are_quoted_short(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**GOOD, "reward_chosen": "x" * 100_000}) + "\n")
    message = error_of(lambda: load_pairs(str(path)))
    assert "reward_chosen" in message and "x" * 150 in message and "x" * 250 not in message


BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
model: *g
"""


@pytest.mark.parametrize("text, line", [(BILLION_LAUGHS, 1), ("method: dpo\nparams: &p {beta: 1}\n", 2),
                                        ("base: x\nmodel: *undefined\n", 2)])
def test_yaml_anchors_and_aliases_are_refused_at_once(tmp_path, text, line):
    path = tmp_path / "lol.yaml"
    path.write_text(text)
    started = time.monotonic()
    message = error_of(lambda: build_config(TrainConfig, str(path), {}))
    assert time.monotonic() - started < 1
    assert f"{path}:{line}:" in message and "anchors and aliases are not supported" in message


@pytest.mark.parametrize("text, line, needle", [
    ("method: dpo\nlearning_rate: 1.0e-5\nmethod: simpo\n", 3, "duplicate key 'method'"),
    ("params:\n  beta: 1\n  beta: 2\n", 3, "duplicate key 'beta'"),
    ("1: x\n", 1, "the key 1 is not a name"),
    ("? [a, b]\n: x\n", 1, "a list or mapping as a key"),
    ("a: " + "[" * 100_000 + "\n", 1, "nested deeper than"),
    ("seed: " + "9" * 5000 + "\n", 1, "a number of 5000 characters"),
    ("learning_rate: .inf\n", 1, "not a finite number"),
    ('model: "\\ud800"\n', 1, "surrogate"),
    ("model: 2024-13-45\n", 1, "cannot read the value '2024-13-45'"),
    ("x:\n  <<: {a: 1}\n", 2, "merge keys"),
    ("model: a\x00b\n", 1, "unacceptable character"),
])
def test_yaml_refusals_name_file_and_line(tmp_path, text, line, needle):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    message = error_of(lambda: build_config(TrainConfig, str(path), {}))
    assert f"{path}:{line}:" in message and needle in message


def test_a_config_over_1_mib_is_refused_unread(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: " + "x" * (2 << 20) + "\n")
    assert "larger than 1 MiB" in error_of(lambda: build_config(TrainConfig, str(path), {}))


@pytest.mark.parametrize("blank", ["model:\n", "model: ~\n", "model: null\n", "epochs:\n", "trust_remote_code:\n"])
def test_a_blank_required_value_is_an_error_not_the_text_none(tmp_path, blank):
    path = tmp_path / "config.yaml"
    path.write_text("method: dpo\n" + blank)
    name = blank.split(":")[0]
    message = error_of(lambda: build_config(TrainConfig, str(path), {}))
    assert f"'{name}' is blank" in message


def test_a_blank_optional_value_means_none(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("reward_model:\n")
    assert build_config(TrainConfig, str(path), {}).reward_model is None


def test_an_override_given_twice_is_an_error_naming_it():
    message = error_of(lambda: parse_overrides(["--beta", "1", "--batch_size=2", "--beta=2"]))
    assert "--beta" in message and "twice" in message
    message = error_of(lambda: parse_overrides(["--batch_size", "1", "--batch_size", "2"]))
    assert "--batch_size is given twice" in message


def test_an_override_key_that_is_no_name_is_quoted_on_one_line():
    message = error_of(lambda: parse_overrides(["--a\nb", "1"]))
    assert "'--a\\nb' is not a setting name" in message


def test_overrides_refuse_text_that_is_no_unicode_or_too_long():
    undecodable = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python hands over non-UTF-8 argv
    assert "not UTF-8" in error_of(lambda: parse_overrides(["--model", undecodable]))
    message = error_of(lambda: parse_overrides(["--model", "m" * (MAX_OVERRIDE_CHARS + 1)]))
    assert str(MAX_OVERRIDE_CHARS + 1) in message and "m" * 50 not in message
    assert parse_overrides(["--model", "m" * MAX_OVERRIDE_CHARS]) == {"model": "m" * MAX_OVERRIDE_CHARS}


def test_mistyped_override_values_are_quoted_short():
    message = error_of(lambda: build_config(TrainConfig, None, {"batch_size": "7" * 5000}))
    assert "'batch_size' must be an integer" in message and "7" * 300 not in message


def test_an_unknown_method_name_is_quoted_short():
    message = error_of(lambda: build_config(TrainConfig, None, {"method": "x\n" * 1000}))
    assert "x\n" * 200 not in message and "\n" not in message

