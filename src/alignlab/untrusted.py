"""Reading untrusted text with bounds: JSON that cannot hang, exhaust the stack or hide a second
value under a repeated key, a short, one-line form of any input an error message quotes, and text
that is safe to show in a report (`displayable`, `inert_links`).

`parse_json` accepts what `json.loads` accepts, less what no preference record or config needs and
what later code would choke on: a key given twice in one object, nesting deeper than `MAX_DEPTH`,
integers longer than `MAX_INT_DIGITS` digits, numbers that overflow to infinity, NaN/Infinity, and
lone surrogates (escapes such as "\\ud800", which no UTF-8 file can hold and no UTF-8 writer can write).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from json.decoder import JSONArray, JSONObject
from json.scanner import py_make_scanner

MAX_DEPTH = 64  # nested lists/objects; a preference record needs 3 (record, message list, message)
MAX_INT_DIGITS = 100  # more is no count or id anyone writes, and int() of 4300+ digits raises
SHOWN_CHARS = 200  # of input quoted in an error message


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text`'s first line, cut to `limit` characters with '…': for quoting messages of other libraries,
    whose further lines tell where in their own terms (`in "<unicode string>", position 8`)."""
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def is_unicode(text: str) -> bool:
    """False for text with lone surrogates (from an escape such as "\\ud800", or Python's stand-ins
    for undecodable bytes in file names and argv), which cannot be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` cut to `limit` characters with '…': how an error message quotes user input."""
    return clip(repr(value), limit)


# Characters that act on the viewer instead of being shown: C0 and C1 controls (ESC opens terminal
# escape sequences, NUL ends strings for C readers, BEL rings) and the bidirectional overrides that
# reorder what a reader sees (Trojan Source). Newline, tab and carriage return stay: model responses
# hold them, and each renderer lays them out itself.
_ACTIVE_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def displayable(text: str) -> str:
    """`text` with every character of `_ACTIVE_CHARACTERS` written as its escape (`\\x1b`, `\\u202e`):
    what a report shows of names, values and responses it did not write itself."""
    return _ACTIVE_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                  else f"\\u{ord(m.group()):04x}", text)


# The `](` that opens a Markdown link's target, unless the target is an http(s) URL.
_NON_WEB_LINK_TARGET = re.compile(r"\]\(\s*(?!https?://)", re.IGNORECASE)


def inert_links(markdown: str) -> str:
    """Markdown text in which only http(s) links stay links: `[x](javascript:...)`, `data:` or any
    other target has its bracket escaped, so a viewer shows it as text and follows nothing."""
    return _NON_WEB_LINK_TARGET.sub(lambda m: "\\" + m.group(), markdown)


class JSONProblem(ValueError):
    """Text that `parse_json` refuses. `line` counts from 1 within the text (None where unknown);
    `fix` is None for syntax errors, whose fix depends on the kind of file."""

    def __init__(self, problem: str, line: int | None, fix: str | None = None):
        super().__init__(problem)
        self.problem, self.line, self.fix = problem, line, fix


def parse_json(text: str):
    """One JSON value, within the bounds of the module docstring; anything else is a JSONProblem."""
    # Before parsing: json's C parser recurses once per level. Few brackets cannot nest deep, and
    # counting them is far cheaper than measuring the nesting.
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting_depth(text) > MAX_DEPTH:
        raise JSONProblem(f"nested deeper than {MAX_DEPTH} levels", _line_of(text, _too_deep_at(text)),
                          fix="Preference records are flat objects; check the file is what you meant")
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise JSONProblem(f"not valid JSON ({e.msg} at column {e.colno})", e.lineno) from None
    except _Refused as refused:
        raise JSONProblem(refused.problem, _line_of(text, _where_refused(text)), refused.fix) from None
    surrogate = _lone_surrogate(text)
    if surrogate is not None:
        raise JSONProblem("a string holds a lone surrogate escape (\\ud800-\\udfff without its pair), "
                          "which is no Unicode text", _line_of(text, surrogate),
                          fix="Write the character itself, or its complete surrogate pair")
    return value


# ---------------------------------------------------------------- nesting, checked on the text

# A JSON string: a quote, then characters or escapes up to the next unescaped quote. Outside strings
# brackets are structure, so with strings removed the brackets give the nesting exactly — also for
# invalid JSON as far as the parser reads it before it stops.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING, re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STRING_OR_BRACKET = re.compile(_STRING + r"|[\[\]{}]", re.DOTALL)
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _nesting_depth(text: str) -> int:
    """The deepest nesting, at the speed of regex substitutions (no Python step per character)."""
    brackets = _NOT_BRACKET.sub("", _STRINGS.sub("", text))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def _too_deep_at(text: str) -> int | None:
    """Where the nesting first passes MAX_DEPTH (None if never): slower than `_nesting_depth`, so
    only for the error message."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        depth += _BRACKET_STEP.get(match.group(), 0)
        if depth > MAX_DEPTH:
            return match.start()
    return None


# ---------------------------------------------------------------- values, checked while parsing

class _Refused(ValueError):
    """Raised by a parse hook; `position` is filled in by `_where_refused`'s re-parse."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix, self.position = problem, fix, None


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _Refused(f"duplicate key {shown(repeated)} in the object that opens here",
                       "Give each key once: JSON readers disagree on which value a repeated key keeps")
    return obj


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS})",
                       "Numbers in preference data are counts, ids or rewards; check the value")
    return int(digits)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused(f"the number {shown(literal)} is too large for a float",
                       "Give a finite number")
    return value


def _no_constant(name: str):
    raise _Refused(f"{name} is not a number JSON allows", "Give a finite number, or null for no value")


_HOOKS = dict(object_pairs_hook=_object_without_repeats, parse_int=_bounded_int, parse_float=_finite_float,
              parse_constant=_no_constant)
_DECODER = json.JSONDecoder(**_HOOKS)


def _where_refused(text: str) -> int | None:
    """Where a hook refused a value: the start of that number, or of the object with a repeated key.
    Only error messages need this, so it re-parses with the pure-Python scanner, which knows positions
    (the fast C scanner does not tell them to hooks)."""
    decoder = json.JSONDecoder(**_HOOKS)

    def at(position: int, parse, *args):
        try:
            return parse(*args)
        except _Refused as refused:
            if refused.position is None:  # the innermost value or object has it
                refused.position = position
            raise

    def tracked(scan_once):
        return lambda s, idx: at(idx, scan_once, s, idx)

    decoder.parse_object = lambda s_and_end, strict, scan_once, *hooks: at(
        s_and_end[1] - 1, JSONObject, s_and_end, strict, tracked(scan_once), *hooks)
    decoder.parse_array = lambda s_and_end, scan_once: JSONArray(s_and_end, tracked(scan_once))
    decoder.scan_once = tracked(py_make_scanner(decoder))
    try:
        decoder.decode(text)
    except _Refused as refused:
        return refused.position
    return None


# ---------------------------------------------------------------- lone surrogates

# Text decoded from UTF-8 holds no surrogates, so they come from escapes; a high surrogate escape
# pairs with a low one right after it. Every escape is matched, so that "\\\\ud800" (an escaped
# backslash, then "ud800") is no surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ESCAPE = re.compile(r"\\(?:u([dD][89abAB][0-9a-fA-F]{2})|u([dD][c-fC-F][0-9a-fA-F]{2})|.)|[\ud800-\udfff]",
                     re.DOTALL)


def _lone_surrogate(text: str) -> int | None:
    """The position of the first lone surrogate (escaped or raw) in JSON text, or None."""
    if (text.isascii() or is_unicode(text)) and not _SURROGATE_ESCAPE.search(text):  # the common case, fast
        return None
    high_at = high_end = None  # a high surrogate escape still waiting for its low half
    for match in _ESCAPE.finditer(text):
        high, low = match.group(1), match.group(2)
        if high_at is not None:
            if low and match.start() == high_end:  # the pair is complete
                high_at = None
                continue
            return high_at
        if high:
            high_at, high_end = match.start(), match.end()
        elif low or not match.group().startswith("\\"):  # a low half alone, or a raw surrogate
            return match.start()
    return high_at


def _line_of(text: str, position: int | None) -> int | None:
    return None if position is None else text.count("\n", 0, position) + 1
