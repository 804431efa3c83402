"""Typed run configuration: dataclass defaults < YAML file < `--key value` CLI overrides.

Every run writes its resolved configuration as `config.yaml` next to its results, so that the
file can be passed back with `--config` to repeat the run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignlab.checks import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SEED, STEPS_OR_NEVER, Range, check_numbers
from alignlab.errors import AlignlabError, InputError
from alignlab.objectives import get_method, unknown_name_message


# The numeric fields of every training config, and where they may lie.
OPTIM_RANGES = {
    # AdamW moves each weight by about the learning rate per step: above 1 nothing survives one step.
    "learning_rate": Range(0, 1, exclusive_min=True),
    "epochs": COUNT,
    "batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "max_grad_norm": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "warmup_ratio": Range(0, 1, exclusive_max=True),
    "max_length": COUNT,
    "max_prompt_length": COUNT,
    "seed": SEED,
    "logging_steps": COUNT,
    "checkpoint_steps": STEPS_OR_NEVER,
    "max_steps": STEPS_OR_NEVER,
    "snapshot_steps": STEPS_OR_NEVER,
}


@dataclass
class OptimConfig:
    """What every training loop shares: optimisation, batching, tokenisation, numerics, output."""

    model: str = ""  # initialisation: a local directory or a Hugging Face model name
    data: str = ""  # preference pairs: a local file or a Hugging Face dataset name
    out: str = ""  # run directory: config.yaml, metrics.jsonl, train_summary.json, model/
    data_format: str = "pairs"  # hh-rlhf | pku-saferlhf | pairs
    data_filter: str | None = None  # pku-saferlhf: double-safe-unsafe
    data_preference: str = "better"  # pku-saferlhf without a filter: better | safer
    data_split: str = "train"  # split of a Hugging Face dataset
    learning_rate: float = 1e-6
    epochs: int = 1
    batch_size: int = 8  # pairs per device per micro-batch
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"  # any transformers.get_scheduler name
    max_length: int = 512  # prompt + response tokens
    max_prompt_length: int = 256  # longer prompts keep their last tokens
    seed: int = 0
    logging_steps: int = 1
    dtype: str = "float32"  # float32 | bfloat16 | float16
    cache_dir: str | None = None  # reference log-prob / reward cache; default ~/.cache/alignlab
    trust_remote_code: bool = False  # run code shipped with a hub model only when the user says so
    overwrite: bool = False  # replace an existing, non-empty run directory
    checkpoint_steps: int = 0  # save a resumable checkpoint every N optimizer steps (0: never)
    resume: bool = False  # continue a killed run from its last checkpoint (same configuration)
    max_steps: int = 0  # stop after N optimizer steps, the schedule sized to them (0: run every epoch)
    snapshot_steps: int = 0  # save the model every N optimizer steps to snapshots/ (0: never), for learning curves
    ranges: typing.ClassVar[dict[str, Range]] = OPTIM_RANGES  # where each numeric field may lie

    def validate(self) -> None:
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise AlignlabError(f"config: '{name}' is required (pass --{name} or set it in the YAML)")
        check_numbers("config", vars(self), self.ranges)
        if self.max_prompt_length >= self.max_length:
            raise AlignlabError(f"config: 'max_prompt_length' ({self.max_prompt_length}) must be smaller "
                                f"than 'max_length' ({self.max_length}) to leave room for the response")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise AlignlabError(f"config: 'dtype' must be float32, bfloat16 or float16, got {self.dtype!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(OptimConfig):
    """One offline training run (`alignlab train`)."""

    method: str = "dpo"
    params: dict = field(default_factory=dict)  # the method's hyper-parameters (see objectives.py)
    reference_model: str | None = None  # frozen reference; defaults to `model` (the SFT model)
    reward_model: str | None = None  # sequence classifier giving VAR's rewards (else data columns)

    def validate(self) -> None:
        super().validate()
        self.params = get_method(self.method).resolve(self.params)


@dataclass
class RewardModelConfig(OptimConfig):
    """Training a Bradley–Terry reward model (`alignlab train-rm`)."""

    learning_rate: float = 1e-5
    eval_data: str | None = None  # held-out pairs; default: `eval_fraction` of `data`
    eval_fraction: float = 0.1
    ranges: typing.ClassVar[dict[str, Range]] = {**OPTIM_RANGES, "eval_fraction": FRACTION}


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping, read with safe_load; syntax errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("config file not found", file=str(path), fix="Check the --config path") from None
    except UnicodeDecodeError:
        raise InputError("config file is not UTF-8 text", file=str(path)) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err)
        raise InputError(f"invalid YAML: {problem}", file=str(path), line=line,
                         fix="Fix the syntax there (YAML indents with spaces, never tabs)") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError("the config must be a mapping of key: value", file=str(path))
    return loaded


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """`--key value` / `--key=value` pairs (dashes in keys read as underscores)."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise AlignlabError(f"unexpected argument {token!r}: overrides are written --key value")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise AlignlabError(f"override --{key} has no value: write --{key} VALUE")
            value = tokens[i + 1]
            i += 1
        overrides[key.replace("-", "_")] = value
        i += 1
    return overrides


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, value, annotation, where: str):
    """Convert a YAML or CLI value to the field's declared type."""
    args = typing.get_args(annotation)
    optional = (typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        annotation = next(a for a in args if a is not type(None))
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
            if item_type is str:
                if not all(isinstance(i, str) for i in items):
                    raise ValueError
                return [i.strip() for i in items if i.strip()]
            return [_coerce(name, i.strip() if isinstance(i, str) else i, item_type, where) for i in items]
    except (TypeError, ValueError, AlignlabError):
        pass
    else:
        return value
    raise AlignlabError(f"{where}: '{name}' must be {_type_name(annotation)}, got {value!r}")


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text", dict: "a mapping"}


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        return "a list of names" if item is str else f"a list of {TYPE_NAMES.get(item, item.__name__)}s".replace("an ", "")
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def build_config(cls, yaml_path: str | None, overrides: dict):
    """Defaults < YAML < overrides. For configs with a method, keys that are not fields go to
    `params` when the method takes them; anything else is an error suggesting the closest key."""
    types_by_field = _field_types(cls)
    merged: dict = {}
    sources: dict[str, str] = {}
    if yaml_path:
        for key, value in read_yaml(yaml_path).items():
            merged[key] = value
            sources[key] = f"{yaml_path}: key"
    for key, value in overrides.items():
        merged[key] = value
        sources[key] = "command line: --"
    has_method = "method" in types_by_field
    params = merged.pop("params", None) if has_method else None
    if params is not None and not isinstance(params, dict):
        raise AlignlabError(f"{sources['params'].rstrip(' -:')}: 'params' must be a mapping")
    params = dict(params or {})
    method_params: set[str] = set()
    if has_method:
        method_name = str(merged.get("method", cls.__dataclass_fields__["method"].default))
        method_params = {hp.name for hp in get_method(method_name).hyperparameters}
    values = {}
    for key, value in merged.items():
        if key in types_by_field:
            values[key] = _coerce(key, value, types_by_field[key], sources[key].rstrip(" -:"))
        elif key in method_params:
            params[key] = value
        else:
            valid = sorted(set(types_by_field) | method_params)
            raise AlignlabError(unknown_name_message(f"{sources[key].rstrip(' -:')}: unknown key", key, valid))
    config = cls(**values)
    if has_method:
        config.params = params
    return config


def dump_yaml(config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
