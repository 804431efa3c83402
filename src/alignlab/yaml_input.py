"""Reading a YAML config file that nobody vouches for: `read_yaml` gives a mapping of settings, or
an InputError naming the file and line (see `_ConfigLoader` for what it refuses and why)."""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path

import yaml

from alignlab.errors import AlignlabError, InputError
from alignlab.untrusted import MAX_DEPTH, MAX_INT_DIGITS, clip, is_unicode, shown

MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; a larger file is no config
MAX_NAME_CHARS = 100  # a key: the name of a setting, method or hyper-parameter


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader less what no config needs and a hostile file could use: anchors and aliases (a few
    hundred bytes of them expand to gigabytes), repeated keys (one value silently lost), keys that
    are not names, nesting deeper than MAX_DEPTH, huge or infinite numbers and lone surrogates."""

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self.file, self.depth = file, 0

    def refuse(self, problem: str, mark, fix: str) -> InputError:
        return InputError(problem, file=self.file, line=mark.line + 1, fix=fix)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise self.refuse("YAML anchors and aliases are not supported", event.start_mark,
                              fix="Write the value out")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.refuse(f"nested deeper than {MAX_DEPTH} levels", event.start_mark,
                              fix="A config nests a few levels at most; check the indentation")
        node = super().compose_node(parent, index)
        self.depth -= 1
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.refuse("YAML merge keys (<<) are not supported", key_node.start_mark,
                                  fix="Write the values out")
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.refuse("a list or mapping as a key", key_node.start_mark,
                                  fix="Keys name settings; write the key as text")
            key = self.construct_object(key_node)
            if not is_setting_name(key):
                raise self.refuse(f"the key {shown(key)} is not a name", key_node.start_mark,
                                  fix=f"Keys name settings: text of one line, up to {MAX_NAME_CHARS} "
                                      "characters (quote names YAML would read as numbers or true/false)")
            if key in seen:
                raise self.refuse(f"duplicate key {shown(key)}", key_node.start_mark,
                                  fix="Give each key once: which value should win is not clear")
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_bounded_int(self, node):
        if len(node.value.lstrip("+-")) > MAX_INT_DIGITS:
            raise self.refuse(f"a number of {len(node.value)} characters", node.start_mark,
                              fix=f"Integers have at most {MAX_INT_DIGITS} digits")
        return self.construct_yaml_int(node)

    def construct_finite_float(self, node):
        value = self.construct_yaml_float(node)
        if not math.isfinite(value):
            raise self.refuse(f"{shown(node.value)} is not a finite number", node.start_mark,
                              fix="Give a finite number")
        return value

    def construct_unicode_str(self, node):
        value = self.construct_yaml_str(node)
        if not is_unicode(value):
            raise self.refuse("a string holds a lone surrogate (\\ud800-\\udfff), which is no Unicode text",
                              node.start_mark, fix="Write the character itself")
        return value

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # a scalar its constructor cannot read, e.g. 2024-13-45
            raise self.refuse(f"cannot read the value {shown(node.value)} ({clip(str(e))})", node.start_mark,
                              fix="Quote it to give it as text") from None


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_bounded_int)
_ConfigLoader.add_constructor("tag:yaml.org,2002:float", _ConfigLoader.construct_finite_float)
_ConfigLoader.add_constructor("tag:yaml.org,2002:str", _ConfigLoader.construct_unicode_str)


def is_setting_name(key) -> bool:
    """Whether a key can be a setting's name, and so be quoted whole in an error message."""
    return isinstance(key, str) and 0 < len(key) <= MAX_NAME_CHARS and key.isprintable()


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping, read by `_ConfigLoader`; every problem is an InputError naming the file and line."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise InputError("config file not found", file=str(path), fix="Check the --config path") from None
    except OSError as e:
        raise InputError(f"cannot read the config file ({e.strerror or e})", file=str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(f"config file is larger than {MAX_CONFIG_BYTES >> 20} MiB", file=str(path),
                         fix="Check the --config path: a config is a short YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("config file is not UTF-8 text", file=str(path)) from None
    try:
        loader = _ConfigLoader(text, str(path))  # reading starts here: unprintable characters are found
        try:
            loaded = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        if isinstance(err, yaml.reader.ReaderError):  # an unprintable character: a position, no mark
            line = text.count("\n", 0, err.position) + 1
        problem = getattr(err, "problem", None) or str(err)
        raise InputError(f"invalid YAML: {clip(problem)}", file=str(path), line=line,
                         fix="Fix the syntax there (YAML indents with spaces, never tabs)") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError("the config must be a mapping of key: value", file=str(path))
    return loaded


def coerce_value(name: str, value, annotation, where: str):
    """Convert a YAML or CLI value to the field's declared type. Only Optional fields take None."""
    args = typing.get_args(annotation)
    optional = (typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        annotation = next(a for a in args if a is not type(None))
    elif value is None:  # `model:` with nothing after it; str() would make it the text "None"
        raise AlignlabError(f"{where}: '{name}' is blank; give a value or remove the key")
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if annotation is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if typing.get_origin(annotation) is list:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list):
                raise ValueError
            item_type = typing.get_args(annotation)[0]
            if item_type is str:  # `a,b`, [a, b] and [a,b c] alike
                if not all(isinstance(i, str) for i in items):
                    raise ValueError
                return [part.strip() for i in items for part in i.split(",") if part.strip()]
            return [coerce_value(name, i.strip() if isinstance(i, str) else i, item_type, where) for i in items]
    except (TypeError, ValueError, OverflowError, AlignlabError):  # OverflowError: float() of a huge int
        pass
    else:
        return value
    if annotation is float and name in MOSTLY_WHOLE:
        raise AlignlabError(f"{where}: '{name}' must be an integer, got {shown(value)} ({MOSTLY_WHOLE[name]})")
    raise AlignlabError(f"{where}: '{name}' must be {_type_name(annotation)}, got {shown(value)}")


# Numbers that are whole but for a fraction that has a meaning: their type error asks for an
# integer and says what a fraction does.
MOSTLY_WHOLE = {"epochs": "or a number with a fraction: 1.5 trains one epoch, then half of the next"}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text", dict: "a mapping"}


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        return "a list of names" if item is str else f"a list of {TYPE_NAMES.get(item, item.__name__)}s".replace("an ", "")
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
