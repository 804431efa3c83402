"""Preference data (SPEC §2): records read from files or Hugging Face datasets
(`alignlab.data.readers`, whose docstring says which sources and how positions count) into one
shape, `PreferencePair`. Every record goes through a small adapter for its format: "hh-rlhf"
(Anthropic transcripts), "pku-saferlhf" (two labelled responses) or "pairs" (generic
prompt/chosen/rejected, including TRL-style message lists).

Conventions:
- Ids: the record's own `id` (pairs format) or else "<stem>-<position>" (see `alignlab.data.readers`).
  The same source always gives the same ids, and an id points back at its record. Ids are unique
  within a load (a duplicate is an error naming both positions).
- Raw public datasets (hh-rlhf, pku-saferlhf) contain pairs that cannot train; those are dropped and
  counted by reason in `LoadResult.dropped`. In the generic format the data is the user's own, so a
  bad record is an error — except identical chosen/rejected, which carry no preference and are
  dropped and counted in every format.
- Every problem with the input is an `InputError` naming file, line (or row) and field; messages
  quote at most ~200 characters of the input (`alignlab.untrusted.shown`).
- The pairs format also reads TRL's preference formats: records without a prompt whose chosen and
  rejected hold it (conversations sharing their leading messages, or texts sharing their opening:
  `split_implicit_prompt`), and `score_chosen`/`score_rejected` as rewards (trl-lib's
  ultrafeedback_binarized). `Columns` names other fields for each part.
"""
from __future__ import annotations

import collections
import math
import os
import re
from dataclasses import dataclass
from typing import Iterable

from alignlab.atomic import write_jsonl
from alignlab.data.options import Columns
from alignlab.data.readers import Where, a_type, read_records
from alignlab.errors import AlignlabError, InputError
from alignlab.untrusted import shown

FORMATS = ("hh-rlhf", "pku-saferlhf", "pairs")
PKU_FILTERS = ("double-safe-unsafe",)
PKU_PREFERENCES = ("better", "safer")
ROLES = ("user", "assistant", "system")


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
               preference: str = "better", split: str = "train", dataset_config: str | None = None,
               data_dir: str | None = None, revision: str | None = None, columns: Columns | None = None
               ) -> LoadResult:
    """Read every record of `source` as a preference pair; see the module docstring for conventions.
    `split`, `dataset_config`, `data_dir` and `revision` choose what a Hugging Face dataset loads
    (`split` also picks from a saved DatasetDict); `columns` renames the fields of the pairs format."""
    if format not in FORMATS:
        raise AlignlabError(f"unknown data format {shown(format)}; choose one of: {', '.join(FORMATS)}")
    if filter is not None and filter not in PKU_FILTERS:
        raise AlignlabError(f"unknown filter {shown(filter)}; choose one of: {', '.join(PKU_FILTERS)} (or none)")
    if filter is not None and format != "pku-saferlhf":
        raise AlignlabError(f"filter {shown(filter)} applies only to format 'pku-saferlhf', not {shown(format)}")
    if preference not in PKU_PREFERENCES:
        raise AlignlabError(f"unknown preference {shown(preference)}; choose one of: {', '.join(PKU_PREFERENCES)}")

    columns = columns or Columns()
    if columns.mapped and format != "pairs":
        raise AlignlabError(f"{', '.join(columns.mapped)} apply only to format 'pairs', not {shown(format)}")

    source = str(source)
    pairs, dropped, first_seen = [], collections.Counter(), {}
    records = 0
    reward_columns = tuple(c for c in (columns.reward_chosen, columns.reward_rejected) if c is not None)
    for where, record in read_records(source, split, dataset_config=dataset_config, data_dir=data_dir,
                                      revision=revision, numeric_columns=reward_columns):
        records += 1
        if not isinstance(record, dict):
            raise where.error(f"record is {a_type(record)}, expected an object with named fields")
        if format == "hh-rlhf":
            pair = _hh_pair(record, where)
        elif format == "pku-saferlhf":
            pair = _pku_pair(record, where, filter, preference)
        else:
            pair = _generic_pair(record, where, columns)
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


# ---------------------------------------------------------------- field access

def _require(record: dict, name: str, where: Where, fix: str):
    if record.get(name) is None:
        raise where.error("is missing" if name not in record else "is null", field=name, fix=fix)
    return record[name]


def _text(record: dict, name: str, where: Where, fix: str) -> str:
    value = _require(record, name, where, fix)
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {a_type(value)}", field=name, fix=fix)
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


def _hh_pair(record: dict, where: Where) -> PreferencePair | str:
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


def _safety_flag(record: dict, name: str, where: Where) -> bool:
    value = _require(record, name, where, PKU_FIX)
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {shown(value)}", field=name,
                          fix="Safety flags must be booleans, not strings or numbers")
    return value


def _response_index(record: dict, name: str, where: Where) -> int:
    value = _require(record, name, where, PKU_FIX)
    if type(value) is not int or value not in (0, 1):  # type(): True and 1.0 are not response ids
        raise where.error(f"expected 0 or 1, got {shown(value)}", field=name,
                          fix="0 means response_0, 1 means response_1")
    return value


def _pku_pair(record: dict, where: Where, filter: str | None, preference: str) -> PreferencePair | str:
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

PAIRS_FIX = ("Each record needs 'chosen' and 'rejected' (texts, or TRL-style message lists) and 'prompt' "
             "(text or messages), unless chosen and rejected both start with it; prompt/completion/label "
             "records are unpaired, which only method kto trains on")
MAX_COLUMNS_LISTED, COLUMN_NAME_CHARS = 12, 40  # an error lists a record's columns in one short line


def _columns_listing(record: dict) -> str:
    names = [shown(name, COLUMN_NAME_CHARS) for name in list(record)[:MAX_COLUMNS_LISTED]]
    more = len(record) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "") if names else "none"


def _check_mapped_columns(record: dict, columns: Columns, where: Where) -> None:
    for option, column in columns.mapped.items():
        if column not in record:
            raise where.error(f"column {shown(column)} (named by {option}) is missing; the record's columns are: "
                              f"{_columns_listing(record)}", field=column,
                              fix=f"Set {option} to one of the record's columns")


def _reward_column(record: dict, mapped: str | None, side: str) -> str:
    """The field holding `side`'s reward: the one named, else reward_<side>, else TRL's score_<side>."""
    if mapped is not None:
        return mapped
    return f"reward_{side}" if f"reward_{side}" in record or f"score_{side}" not in record else f"score_{side}"


def messages(value, name: str, where: Where, fix: str = PAIRS_FIX) -> list[dict[str, str]]:
    """Validate a list of {role, content} messages; keep only role and content."""
    if not isinstance(value, list):
        raise where.error(f"expected a list of messages, got {a_type(value)}", field=name, fix=fix)
    turns = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise where.error(f"message {i} is {a_type(message)}, expected an object", field=name,
                              fix='A message looks like {"role": "user", "content": "..."}')
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise where.error(f"message {i} has role {shown(role)}", field=name, fix=f"Roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise where.error(f"message {i} content is {a_type(content)}, expected a string", field=name)
        turns.append({"role": role, "content": content})
    return turns


def _prompt_turns(record: dict, name: str, where: Where) -> list[dict[str, str]]:
    value = _require(record, name, where, PAIRS_FIX)
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    turns = messages(value, name, where)
    if not turns or turns[-1]["role"] != "user":
        raise where.error("the prompt must end with a user message", field=name)
    return turns


def _final_reply(tail: list[dict[str, str]], name: str, where: Where) -> str:
    """The response of a conversation: the one assistant message after the prompt."""
    if len(tail) != 1 or tail[0]["role"] != "assistant":
        roles = [message["role"] for message in tail]
        raise where.error(f"expected one assistant message after the prompt, got {shown(roles)}",
                          field=name, fix="With a separate 'prompt' they are one assistant message each; without one, "
                                  "the whole conversation ending in one assistant reply")
    return tail[0]["content"]


def _conversation_pair(record: dict, names: Columns, where: Where) -> tuple[list[dict[str, str]], str, str]:
    """TRL conversational style: chosen/rejected are message lists, the prompt explicit or shared."""
    chosen = messages(record[names.chosen], names.chosen, where)
    rejected = messages(_require(record, names.rejected, where, PAIRS_FIX), names.rejected, where)
    prompt = record.get(names.prompt)
    # A text prompt beside whole conversations is ignored, as TRL's maybe_extract_prompt does
    # (HuggingFaceH4/ultrafeedback_binarized has one); beside lone replies it is the prompt.
    if prompt is not None and (not isinstance(prompt, str) or len(chosen) == 1):
        return _prompt_turns(record, names.prompt, where), _final_reply(chosen, names.chosen, where), \
            _final_reply(rejected, names.rejected, where)
    # Implicit prompt: the messages both conversations share, leaving each its final reply (TRL's
    # extract_prompt: conversations that agree throughout leave each its last message).
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    prompt = chosen[:shared]
    if not prompt or prompt[-1]["role"] != "user":
        raise where.error("the messages shared by chosen and rejected (the prompt) must end with a user message",
                          field=names.chosen, fix="Start both with the same conversation, or give the prompt in "
                                                  f"{shown(names.prompt)}")
    return (prompt, _final_reply(chosen[shared:], names.chosen, where),
            _final_reply(rejected[shared:], names.rejected, where))


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen response, rejected response) of two texts that both start with the prompt, by
    TRL's `extract_prompt` rule: the prompt is their longest common prefix, less a final space (which
    goes to the responses); when one text starts with the whole other, the shorter keeps its last
    character as its response. None when that prompt would be empty (TRL returns an empty prompt)."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    if shared == min(len(chosen), len(rejected)):
        shared -= 1
    elif shared > 0 and chosen[shared - 1] == " ":
        shared -= 1
    if shared <= 0:
        return None
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _text_pair(record: dict, names: Columns, columns: Columns, where: Where
               ) -> tuple[list[dict[str, str]], str, str] | str:
    chosen = _text(record, names.chosen, where, PAIRS_FIX)
    rejected = _text(record, names.rejected, where, PAIRS_FIX)
    if columns.prompt is not None or record.get(names.prompt) is not None:
        return _prompt_turns(record, names.prompt, where), chosen, rejected
    if chosen == rejected:
        return "identical responses"
    # TRL's implicit-prompt format: chosen and rejected are whole texts that start with the prompt.
    split = split_implicit_prompt(chosen, rejected)
    if split is None:
        raise where.error("is missing, and chosen and rejected share no leading text to take as the prompt",
                          field=names.prompt, fix=PAIRS_FIX)
    prompt, chosen, rejected = split
    return [{"role": "user", "content": prompt}], chosen, rejected


def record_id(record: dict, where: Where) -> str:
    value = record.get("id")
    if value is None:
        return where.default_id
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise where.error(f"expected a non-empty string or an integer, got {shown(value)}", field="id")
    return str(value)


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: rewards train as float32 tensors


def _reward(record: dict, name: str, where: Where) -> float | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise where.error(f"expected a finite number, got {shown(value)}", field=name,
                          fix="Give a number, or leave the field out")
    if abs(value) > FLOAT32_MAX:  # finite here, infinite in training: VAR's weights would be NaN
        raise where.error(f"{shown(value)} is beyond float32 (±3.4e38), in which rewards train", field=name,
                          fix="Rescale the rewards, e.g. standardise them")
    return float(value)


def _generic_pair(record: dict, where: Where, columns: Columns) -> PreferencePair | str:
    _check_mapped_columns(record, columns, where)
    names = Columns(columns.prompt or "prompt", columns.chosen or "chosen", columns.rejected or "rejected",
                    _reward_column(record, columns.reward_chosen, "chosen"),
                    _reward_column(record, columns.reward_rejected, "rejected"))
    if isinstance(record.get(names.chosen), list):
        parts = _conversation_pair(record, names, where)
    else:
        parts = _text_pair(record, names, columns, where)
    if isinstance(parts, str):  # the reason the record cannot train
        return parts
    prompt, chosen, rejected = parts
    for name, response in ((names.chosen, chosen), (names.rejected, rejected)):
        if _is_blank(response):
            raise where.error("empty response", field=name, fix="Fill in the response or remove the record")
    if chosen == rejected:
        return "identical responses"
    return PreferencePair(record_id(record, where), prompt, chosen, rejected,
                          _reward(record, names.reward_chosen, where), _reward(record, names.reward_rejected, where))
