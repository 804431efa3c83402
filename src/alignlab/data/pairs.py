"""Preference data (SPEC §2): read files or Hugging Face datasets into one shape, `PreferencePair`.

A source is a local file — `.jsonl`, `.json`, `.csv` (each optionally `.gz`) or `.parquet` — or, when
it is no local file and looks like `name` or `org/name`, a Hugging Face dataset loaded with
`datasets.load_dataset(name, split=split)`. Every record goes through a small adapter for its format:
"hh-rlhf" (Anthropic transcripts), "pku-saferlhf" (two labelled responses) or "pairs" (generic
prompt/chosen/rejected, including TRL-style message lists).

Conventions:
- Positions: text files (.jsonl, .csv) count 1-based lines, as an editor does; a .json list counts
  0-based "record N" and Parquet files and hub datasets 0-based "row N", as `data[N]` / `ds[N]` do.
- Ids: the record's own `id` (pairs format) or else "<stem>-<position>", where stem is the file name
  without its extensions (`test.jsonl.gz` -> `test`) or, for a hub dataset `org/name`, "name-<split>".
  The same source always gives the same ids, and an id points back at its record. Ids are unique
  within a load (a duplicate is an error naming both positions).
- `.json` files hold a list of records, or an object whose "data" key holds that list.
- CSV cells are text; the numeric and boolean columns (rewards, PKU labels) are parsed from it.
- Raw public datasets (hh-rlhf, pku-saferlhf) contain pairs that cannot train; those are dropped and
  counted by reason in `LoadResult.dropped`. In the generic format the data is the user's own, so a
  bad record is an error — except identical chosen/rejected, which carry no preference and are
  dropped and counted in every format.
- A .jsonl or .csv line longer than `MAX_LINE_BYTES` (16 MiB) is an error at that line, found
  without reading the line whole (so a 50 MB line costs 16 MiB of memory, not 50 MB plus its parse):
  one preference pair is kilobytes; such a line is a mis-named .json list or a corrupt file.
- JSON is read by `alignlab.untrusted.parse_json`: a key repeated in one object, nesting deeper than
  64 levels, integers of over 100 digits, numbers beyond float range, NaN/Infinity and lone surrogate
  escapes are errors at their line. A CSV header naming a column twice is an error at line 1.
- Every problem with the input is an `InputError` naming file, line (or row) and field; messages
  quote at most ~200 characters of the input (`alignlab.untrusted.shown`).
"""

from __future__ import annotations

import collections
import csv
import gzip
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from alignlab.atomic import write_jsonl
from alignlab.errors import AlignlabError, InputError
from alignlab.untrusted import JSONProblem, clip, parse_json, shown

FORMATS = ("hh-rlhf", "pku-saferlhf", "pairs")
PKU_FILTERS = ("double-safe-unsafe",)
PKU_PREFERENCES = ("better", "safer")
ROLES = ("user", "assistant", "system")
FILE_KINDS = ("jsonl", "json", "csv", "parquet")
HUB_NAME = re.compile(r"[\w-][\w.-]*(/[\w.-]+)?")  # "name" or "org/name"
MAX_LINE_BYTES = 16 << 20  # one record of a .jsonl or .csv file; a longer line is an error, read no further


@dataclass
class PreferencePair:
    id: str
    prompt: list[dict[str, str]]  # conversation turns, ending with a user turn
    chosen: str
    rejected: str
    reward_chosen: float | None = None
    reward_rejected: float | None = None

    def to_json(self) -> dict:
        row = {"id": self.id, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.reward_chosen is not None:
            row["reward_chosen"] = self.reward_chosen
        if self.reward_rejected is not None:
            row["reward_rejected"] = self.reward_rejected
        return row


@dataclass
class LoadResult:
    pairs: list[PreferencePair]
    dropped: collections.Counter  # reason -> count
    source: str

    def summary(self) -> str:
        line = f"{self.source}: kept {len(self.pairs)} pairs, dropped {sum(self.dropped.values())}"
        if self.dropped:
            line += " (" + ", ".join(f"{reason}: {n}" for reason, n in self.dropped.most_common()) + ")"
        return line


def load_pairs(source: str, format: str = "pairs", *, filter: str | None = None,
               preference: str = "better", split: str = "train") -> LoadResult:
    """Read every record of `source` as a preference pair; see the module docstring for conventions."""
    if format not in FORMATS:
        raise AlignlabError(f"unknown data format {shown(format)}; choose one of: {', '.join(FORMATS)}")
    if filter is not None and filter not in PKU_FILTERS:
        raise AlignlabError(f"unknown filter {shown(filter)}; choose one of: {', '.join(PKU_FILTERS)} (or none)")
    if filter is not None and format != "pku-saferlhf":
        raise AlignlabError(f"filter {shown(filter)} applies only to format 'pku-saferlhf', not {shown(format)}")
    if preference not in PKU_PREFERENCES:
        raise AlignlabError(f"unknown preference {shown(preference)}; choose one of: {', '.join(PKU_PREFERENCES)}")

    source = str(source)
    pairs, dropped, first_seen = [], collections.Counter(), {}
    records = 0
    for where, record in _read_records(source, split):
        records += 1
        if not isinstance(record, dict):
            raise where.error(f"record is {_a_type(record)}, expected an object with named fields")
        if format == "hh-rlhf":
            pair = _hh_pair(record, where)
        elif format == "pku-saferlhf":
            pair = _pku_pair(record, where, filter, preference)
        else:
            pair = _generic_pair(record, where)
        if isinstance(pair, str):  # an adapter names the reason a record cannot train
            dropped[pair] += 1
            continue
        if pair.id in first_seen:
            raise where.error(f"duplicate id {shown(pair.id)}, first used at {first_seen[pair.id]}", field="id",
                              fix="Give every record a unique id, or leave ids out to generate them")
        first_seen[pair.id] = where
        pairs.append(pair)
    if records == 0:
        raise InputError("no records", file=source, fix="The source is empty; check the path or split")
    return LoadResult(pairs, dropped, source)


def write_pairs_jsonl(pairs: Iterable[PreferencePair], path) -> None:
    """Write pairs as JSONL (the "pairs" format, so it loads back unchanged); whole or not at all."""
    write_jsonl(path, (pair.to_json() for pair in pairs))


# ---------------------------------------------------------------- where records come from

@dataclass(frozen=True)
class _Where:
    """A record's position in its source: for error messages and generated ids."""
    file: str    # the source as the user named it
    unit: str    # "line" (1-based), "record" or "row" (0-based index)
    number: int
    stem: str    # prefix of generated ids

    def __str__(self) -> str:
        return f"{self.unit} {self.number}"

    @property
    def default_id(self) -> str:
        return f"{self.stem}-{self.number}"

    def error(self, problem: str, field: str | None = None, fix: str | None = None) -> InputError:
        if self.unit == "line":
            return InputError(problem, file=self.file, line=self.number, field=field, fix=fix)
        return InputError(problem, file=f"{self.file} {self}", field=field, fix=fix)


def _read_records(source: str, split: str) -> Iterator[tuple[_Where, object]]:
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path, source)
    # Only a plausible dataset name goes to the hub: a missing "data.jsonl" would otherwise wait on
    # network retries before failing.
    if _file_kind(path.name) is not None or not HUB_NAME.fullmatch(source):
        raise InputError("not a file" if path.exists() else "no such file", file=source,
                         fix="Check the path: give a .jsonl, .json, .csv (optionally .gz) or .parquet file, "
                             "or a Hugging Face dataset name")
    return _read_hub(source, split)


def _file_kind(name: str) -> tuple[str, bool, str] | None:
    """'test.jsonl.gz' -> ('jsonl', True, 'test'); None for an unsupported name."""
    gzipped = name.lower().endswith(".gz")
    base = name[:-3] if gzipped else name
    for kind in FILE_KINDS:
        if base.lower().endswith("." + kind) and not (gzipped and kind == "parquet"):
            return kind, gzipped, base[: -len(kind) - 1]
    return None


def _read_file(path: Path, display: str) -> Iterator[tuple[_Where, object]]:
    kind = _file_kind(path.name)
    if kind is None:
        raise InputError("unsupported file type", file=display,
                         fix="Use .jsonl, .json or .csv (each optionally .gz), or .parquet")
    kind, gzipped, stem = kind
    if kind == "parquet":
        return _parquet_records(path, display, stem)
    # A .json document is one value and may be minified onto one line; records elsewhere are lines.
    lines = _read_lines(path, gzipped, display, None if kind == "json" else MAX_LINE_BYTES)
    if kind == "jsonl":
        return _jsonl_records(lines, display, stem)
    if kind == "json":
        return _json_records(lines, display, stem)
    return _csv_records(lines, display, stem)


def _read_lines(path: Path, gzipped: bool, display: str, max_bytes: int | None = None
                ) -> Iterator[tuple[int, str]]:
    """Stream (line number, text); bad UTF-8, broken gzip and (with `max_bytes`) an over-long line
    become InputErrors at their line. An over-long line is never read whole: memory stays bounded."""
    line_no = 0
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:
            # Decode line by line (b"\n" never occurs inside a UTF-8 character) to know where bad bytes are.
            while raw := handle.readline(-1 if max_bytes is None else max_bytes + 1):
                line_no += 1
                if max_bytes is not None and len(raw) > max_bytes:
                    raise InputError(f"line is longer than {max_bytes >> 20} MiB, the limit for one record",
                                     file=display, line=line_no,
                                     fix="Check that the file holds one record per line (a whole JSON list "
                                         "belongs in a .json file); split or shorten oversized records")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(f"not valid UTF-8 (bad byte {e.start + 1} of the line)", file=display,
                                     line=line_no, fix="Save the file as UTF-8") from None
                yield line_no, text.removeprefix("\ufeff") if line_no == 1 else text
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(f"gzip data is truncated or corrupt ({clip(str(e))})", file=display, line=line_no + 1,
                         fix="Download or compress the file again") from None
    except OSError as e:
        raise InputError(f"cannot read the file ({e.strerror or e})", file=display) from None


def _json_value(text: str, display: str, first_line: int, syntax_fix: str):
    """Parse JSON text that starts at `first_line` of the file; a problem is an InputError at its line."""
    try:
        return parse_json(text)
    except JSONProblem as e:
        line = None if e.line is None else first_line + e.line - 1
        raise InputError(e.problem, file=display, line=line, fix=e.fix or syntax_fix) from None


def _jsonl_records(lines, display: str, stem: str) -> Iterator[tuple[_Where, object]]:
    for line_no, text in lines:
        if not text.strip():
            continue
        # Without its line break, so that a record cut short is reported on its own line.
        record = _json_value(text.rstrip("\r\n"), display, line_no, "A .jsonl file must hold one JSON object per line")
        yield _Where(display, "line", line_no, stem), record


def _json_records(lines, display: str, stem: str) -> Iterator[tuple[_Where, object]]:
    text = "".join(text for _, text in lines)  # a JSON document cannot be parsed in pieces
    data = _json_value(text, display, 1, 'A .json file must hold one list of records (or {"data": [...]}); '
                                         "for one object per line name the file .jsonl")
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise InputError(f"the top level is {_a_type(data)}", file=display,
                         fix='A .json file must hold a list of records, or an object with that list under "data"')
    for index, record in enumerate(data):
        yield _Where(display, "record", index, stem), record


# CSV cells are text; these columns hold ids, numbers or flags (written as pandas does: 0.5, 1, True),
# and an empty cell in them means "no value".
_CSV_TYPED_COLUMNS = {
    "id": str, "reward_chosen": float, "reward_rejected": float,
    "better_response_id": int, "safer_response_id": int,
    "is_response_0_safe": bool, "is_response_1_safe": bool,
}


def _csv_cell(column: str, cell: str):
    """Parse a typed column's cell; leave unparseable text as it is, for the adapter to report."""
    kind = _CSV_TYPED_COLUMNS.get(column)
    if kind is None:
        return cell
    if cell == "":
        return None
    if kind is bool:
        return {"true": True, "false": False}.get(cell.lower(), cell)
    try:
        return kind(cell)
    except ValueError:
        return cell


def _check_unique_columns(header: list[str], display: str) -> None:
    seen = set()
    for column in header:
        if column in seen:
            raise InputError(f"column {shown(column)} appears twice in the header", file=display, line=1,
                             fix="Give every column a unique name")
        seen.add(column)


def _csv_records(lines, display: str, stem: str) -> Iterator[tuple[_Where, object]]:
    reader = csv.reader(text for _, text in lines)
    try:
        header = next(reader, None)
        _check_unique_columns(header or [], display)
        start = reader.line_num + 1  # a quoted cell may span lines: a record is named by its first
        for cells in reader:
            where, start = _Where(display, "line", start, stem), reader.line_num + 1
            if not cells:  # blank line
                continue
            if len(cells) != len(header):
                raise where.error(f"{len(cells)} cells, but the header has {len(header)} columns",
                                  fix="Quote cells that contain commas or line breaks")
            yield where, {column: _csv_cell(column, cell) for column, cell in zip(header, cells)}
    except csv.Error as e:
        raise InputError(f"malformed CSV ({clip(str(e))})", file=display, line=reader.line_num) from None


def _parquet_records(path: Path, display: str, stem: str) -> Iterator[tuple[_Where, object]]:
    import pyarrow as pa  # imported here: only Parquet needs it
    import pyarrow.parquet as pq

    index = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield _Where(display, "row", index, stem), row
                index += 1
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"not a readable Parquet file ({clip(str(e))})", file=display,
                         fix="Write it again with pyarrow or pandas") from None


def _read_hub(name: str, split: str) -> Iterator[tuple[_Where, object]]:
    try:
        import datasets
        rows = datasets.load_dataset(name, split=split)
    except Exception as e:  # missing dataset, bad split, no network: all mean "cannot load it"
        raise InputError(f"no such local file, and the Hugging Face hub could not load it as a dataset "
                         f"({type(e).__name__}: {clip(str(e))})", file=name,
                         fix="Check the path, or the dataset name and split") from None
    stem = f"{name.rsplit('/', 1)[-1]}-{split}"
    for index, row in enumerate(rows):
        yield _Where(name, "row", index, stem), row


# ---------------------------------------------------------------- field access

def _a_type(value) -> str:
    """'a string', 'an object', ...: JSON's names for what a field holds."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


def _require(record: dict, name: str, where: _Where, fix: str):
    if record.get(name) is None:
        raise where.error("is missing" if name not in record else "is null", field=name, fix=fix)
    return record[name]


def _text(record: dict, name: str, where: _Where, fix: str) -> str:
    value = _require(record, name, where, fix)
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {_a_type(value)}", field=name, fix=fix)
    return value


def _is_blank(response: str) -> bool:
    return not response.strip()


# ---------------------------------------------------------------- hh-rlhf

HH_FIX = "HH-RLHF records need 'chosen' and 'rejected' transcripts"
_HH_MARKERS = {"user": "\n\nHuman:", "assistant": "\n\nAssistant:"}
_HH_ASSISTANT = _HH_MARKERS["assistant"]
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_transcript(prompt: list[dict], response: str) -> str:
    """Compose the raw HH transcript: '\\n\\nHuman: q\\n\\nAssistant: a' (one space after each marker)."""
    parts = []
    for turn in prompt:
        if turn["role"] not in _HH_MARKERS:
            raise AlignlabError(f"HH transcripts have no {shown(turn['role'])} role; only user and assistant")
        parts.append(f"{_HH_MARKERS[turn['role']]} {turn['content']}")
    parts.append(f"{_HH_ASSISTANT} {response}")
    return "".join(parts)


def _after_marker(text: str) -> str:
    """Drop the one canonical space that follows a 'Human:'/'Assistant:' marker."""
    return text[1:] if text.startswith(" ") else text


def _hh_turns(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: q\\n\\nAssistant: a\\n\\nHuman: r' -> three turns."""
    pieces = _HH_TURN.split(text)  # ["", "Human", " q", "Assistant", " a", ...]
    # Text before the first marker is lost here; the round-trip check in _hh_pair rejects such records.
    return [{"role": _HH_ROLES[role], "content": _after_marker(content)}
            for role, content in zip(pieces[1::2], pieces[2::2])]


def _hh_pair(record: dict, where: _Where) -> PreferencePair | str:
    chosen_text, rejected_text = _text(record, "chosen", where, HH_FIX), _text(record, "rejected", where, HH_FIX)
    shared = os.path.commonprefix([chosen_text, rejected_text])
    marker = shared.rfind(_HH_ASSISTANT)
    if marker < 0:
        return "no Assistant marker in common prefix"
    # The responses start right after the last shared marker, even if they begin alike ("Sure, ...").
    prompt_end = marker + len(_HH_ASSISTANT)
    chosen, rejected = _after_marker(chosen_text[prompt_end:]), _after_marker(rejected_text[prompt_end:])
    if _is_blank(chosen) or _is_blank(rejected):
        return "empty response"
    if chosen == rejected:
        return "identical responses"
    prompt = _hh_turns(chosen_text[:marker])
    if not prompt or prompt[-1]["role"] != "user":
        return "prompt does not end with a Human turn"
    # Keep only pairs that re-compose exactly: anything else was parsed lossily (stray text, odd spacing).
    if hh_transcript(prompt, chosen) != chosen_text or hh_transcript(prompt, rejected) != rejected_text:
        return "non-canonical transcript"
    return PreferencePair(where.default_id, prompt, chosen, rejected)


# ---------------------------------------------------------------- pku-saferlhf

PKU_FIX = ("PKU-SafeRLHF records need prompt, response_0, response_1, better_response_id, "
           "safer_response_id, is_response_0_safe and is_response_1_safe")


def _safety_flag(record: dict, name: str, where: _Where) -> bool:
    value = _require(record, name, where, PKU_FIX)
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {shown(value)}", field=name,
                          fix="Safety flags must be booleans, not strings or numbers")
    return value


def _response_index(record: dict, name: str, where: _Where) -> int:
    value = _require(record, name, where, PKU_FIX)
    if type(value) is not int or value not in (0, 1):  # type(): True and 1.0 are not response ids
        raise where.error(f"expected 0 or 1, got {shown(value)}", field=name,
                          fix="0 means response_0, 1 means response_1")
    return value


def _pku_pair(record: dict, where: _Where, filter: str | None, preference: str) -> PreferencePair | str:
    prompt = _text(record, "prompt", where, PKU_FIX)
    responses = (_text(record, "response_0", where, PKU_FIX), _text(record, "response_1", where, PKU_FIX))
    if filter == "double-safe-unsafe":
        safe = (_safety_flag(record, "is_response_0_safe", where), _safety_flag(record, "is_response_1_safe", where))
        if all(safe):
            return "both safe"
        if not any(safe):
            return "both unsafe"
        chosen_index = safe.index(True)
    else:
        chosen_index = _response_index(record, f"{preference}_response_id", where)
    chosen, rejected = responses[chosen_index], responses[1 - chosen_index]
    if _is_blank(chosen) or _is_blank(rejected):
        return "empty response"
    if chosen == rejected:
        return "identical responses"
    return PreferencePair(where.default_id, [{"role": "user", "content": prompt}], chosen, rejected)


# ---------------------------------------------------------------- generic pairs

PAIRS_FIX = ("Each record needs 'prompt' (text or messages), 'chosen' and 'rejected' "
             "(texts, or TRL-style message lists)")


def _messages(value, name: str, where: _Where) -> list[dict[str, str]]:
    """Validate a list of {role, content} messages; keep only role and content."""
    if not isinstance(value, list):
        raise where.error(f"expected a list of messages, got {_a_type(value)}", field=name, fix=PAIRS_FIX)
    turns = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise where.error(f"message {i} is {_a_type(message)}, expected an object", field=name,
                              fix='A message looks like {"role": "user", "content": "..."}')
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise where.error(f"message {i} has role {shown(role)}", field=name, fix=f"Roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise where.error(f"message {i} content is {_a_type(content)}, expected a string", field=name)
        turns.append({"role": role, "content": content})
    return turns


def _prompt_turns(record: dict, where: _Where) -> list[dict[str, str]]:
    value = _require(record, "prompt", where, PAIRS_FIX)
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    turns = _messages(value, "prompt", where)
    if not turns or turns[-1]["role"] != "user":
        raise where.error("the prompt must end with a user message", field="prompt")
    return turns


def _final_reply(tail: list[dict[str, str]], name: str, where: _Where) -> str:
    """The response of a conversation: the one assistant message after the prompt."""
    if len(tail) != 1 or tail[0]["role"] != "assistant":
        roles = [message["role"] for message in tail]
        raise where.error(f"expected one assistant message after the prompt, got {shown(roles)}",
                          field=name, fix="With a separate 'prompt' they are one assistant message each; without one, "
                                  "the whole conversation ending in one assistant reply")
    return tail[0]["content"]


def _conversation_pair(record: dict, where: _Where) -> tuple[list[dict[str, str]], str, str]:
    """TRL conversational style: chosen/rejected are message lists, the prompt explicit or shared."""
    chosen = _messages(record["chosen"], "chosen", where)
    rejected = _messages(_require(record, "rejected", where, PAIRS_FIX), "rejected", where)
    if record.get("prompt") is not None:
        return _prompt_turns(record, where), _final_reply(chosen, "chosen", where), \
            _final_reply(rejected, "rejected", where)
    # Implicit prompt: the messages both conversations share, leaving each its final reply.
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    prompt = chosen[:shared]
    if not prompt or prompt[-1]["role"] != "user":
        raise where.error("the messages shared by chosen and rejected (the prompt) must end with a user message",
                          field="chosen", fix="Start both with the same conversation, or give the prompt in 'prompt'")
    return prompt, _final_reply(chosen[shared:], "chosen", where), _final_reply(rejected[shared:], "rejected", where)


def _record_id(record: dict, where: _Where) -> str:
    value = record.get("id")
    if value is None:
        return where.default_id
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise where.error(f"expected a non-empty string or an integer, got {shown(value)}", field="id")
    return str(value)


def _reward(record: dict, name: str, where: _Where) -> float | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise where.error(f"expected a finite number, got {shown(value)}", field=name,
                          fix="Give a number, or leave the field out")
    return float(value)


def _generic_pair(record: dict, where: _Where) -> PreferencePair | str:
    if isinstance(record.get("chosen"), list):
        prompt, chosen, rejected = _conversation_pair(record, where)
    else:
        prompt = _prompt_turns(record, where)
        chosen, rejected = _text(record, "chosen", where, PAIRS_FIX), _text(record, "rejected", where, PAIRS_FIX)
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if _is_blank(response):
            raise where.error("empty response", field=name, fix="Fill in the response or remove the record")
    if chosen == rejected:
        return "identical responses"
    return PreferencePair(_record_id(record, where), prompt, chosen, rejected,
                          _reward(record, "reward_chosen", where), _reward(record, "reward_rejected", where))
