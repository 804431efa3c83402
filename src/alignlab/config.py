"""Typed run configuration: dataclass defaults < YAML file < `--key value` CLI overrides.

Every run writes its resolved configuration as `config.yaml` next to its results, so that the
file can be passed back with `--config` to repeat the run. The YAML file is read by
`alignlab.yaml_input.read_yaml`; TRL's names for settings are accepted (`resolve_aliases`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignlab.cache import check_cache_dir
from alignlab.checks import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SEED, STEPS_OR_NEVER, Range, check_numbers
from alignlab.errors import AlignlabError, unknown_name_message
from alignlab.objectives.registry import get_method
from alignlab.untrusted import is_unicode, shown
from alignlab.yaml_input import MAX_NAME_CHARS, is_setting_name, read_yaml

MAX_OVERRIDE_CHARS = 10_000  # one --key value on the command line


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
    "lora_r": COUNT,
    "lora_alpha": POSITIVE,
    "lora_dropout": Range(0, 1, exclusive_max=True),
}


def setting(default, help: str):
    """A config field with its one line of help (`alignlab train --help` lists every field with it)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


MIXED_PRECISION = ("no", "bf16", "fp16")
TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
GENERATION_BACKENDS = ("hf", "vllm")


def tracker_installed(tracker: str) -> bool:
    """Whether accelerate finds `tracker`'s package: one it does not find it drops without a word,
    so a run would train for hours and track nothing."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    return {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
            "mlflow": is_mlflow_available}[tracker]()


@dataclass
class OptimConfig:
    """What every training loop shares: optimisation, batching, tokenisation, numerics, output."""

    model: str = setting("", "policy initialisation (and default reference): a local directory, a .gguf file or a "
                             "Hugging Face model name")
    gguf_file: str | None = setting(None, "a GGUF file inside the `model` directory (or pass the .gguf file as model)")
    revision: str | None = setting(None, "the model's revision on the Hub (branch, tag or commit); part of every cache key")
    data: str = setting("", "preference pairs: a local file, a dataset directory or a Hugging Face dataset name")
    out: str = setting("", "run directory: config.yaml, metrics.jsonl, train_summary.json, model/")
    data_format: str = setting("pairs", "hh-rlhf | pku-saferlhf | pairs (prompt/chosen/rejected, TRL's formats too)")
    data_filter: str | None = setting(None, "pku-saferlhf: double-safe-unsafe")
    data_preference: str = setting("better", "pku-saferlhf without a filter: better | safer")
    data_split: str = setting("train", "split of a Hugging Face dataset")
    dataset_config: str | None = setting(None, "configuration (subset) of a Hugging Face dataset")
    data_dir: str | None = setting(None, "folder inside a Hugging Face dataset repository, e.g. harmless-base")
    data_revision: str | None = setting(None, "the dataset's revision on the Hub (branch, tag or commit)")
    prompt_column: str | None = setting(None, "column holding the prompt (default: prompt)")
    chosen_column: str | None = setting(None, "column holding the chosen response (default: chosen)")
    rejected_column: str | None = setting(None, "column holding the rejected response (default: rejected)")
    reward_chosen_column: str | None = setting(None, "column read as the chosen response's reward "
                                                     "(default: reward_chosen, else score_chosen)")
    reward_rejected_column: str | None = setting(None, "column read as the rejected response's reward "
                                                       "(default: reward_rejected, else score_rejected)")
    raw_prompts: bool = setting(False, "use text prompts as they are, without the chat template or plain format")
    learning_rate: float = setting(1e-6, "peak AdamW learning rate")
    epochs: int = setting(1, "passes over the data")
    batch_size: int = setting(8, "pairs per device per micro-batch")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    max_grad_norm: float = setting(1.0, "gradient norm clipping")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_ratio: float = setting(0.1, "fraction of the steps spent warming the learning rate up")
    lr_scheduler: str = setting("linear", "any transformers.get_scheduler name (linear, cosine, constant, ...)")
    max_length: int = setting(512, "prompt + response tokens")
    max_prompt_length: int = setting(256, "longer prompts keep their last tokens")
    seed: int = setting(0, "seed of the shuffle, initialisation and sampling")
    logging_steps: int = setting(1, "log every N optimizer steps")
    dtype: str = setting("float32", "weights' dtype: float32 | bfloat16 | float16 (bfloat16 weights lose small updates: "
                                    "prefer mixed_precision)")
    mixed_precision: str = setting("no", "no | bf16 | fp16: autocast with float32 master weights (accelerate)")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, ~30% "
                                                  "more compute")
    disable_dropout: bool = setting(True, "turn the model's dropout off, so the policy at step 0 equals the "
                                          "reference (false keeps it; lora_dropout stays as set)")
    use_peft: bool = setting(False, "train a LoRA adapter (PEFT) instead of every weight; the reference is the "
                                    "base model with the adapter off")
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA scaling numerator (scale lora_alpha / lora_r)")
    lora_dropout: float = setting(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] | None = setting(None, "module names LoRA adapts, comma-separated (default "
                                                          "all-linear: every linear layer but the output head)")
    save_merged: bool = setting(False, "with use_peft: also save the adapter merged into the weights (model-merged/)")
    report_to: str = setting("none", "experiment tracker: none | tensorboard (logs in out/tracking/) | wandb | "
                                     "mlflow (their own servers, as WANDB_* / MLFLOW_TRACKING_URI say)")
    run_name: str | None = setting(None, "the run's name at the tracker (default: the out directory's name)")
    cache_dir: str | None = setting(None, "reference log-prob / reward cache (default ~/.cache/alignlab)")
    trust_remote_code: bool = setting(False, "run code shipped with a hub model (only when you trust it)")
    overwrite: bool = setting(False, "replace an existing run directory that alignlab created")
    checkpoint_steps: int = setting(0, "save a resumable checkpoint every N optimizer steps (0: never)")
    resume: bool = setting(False, "continue a killed run from its last checkpoint (same configuration)")
    max_steps: int = setting(0, "stop after N optimizer steps, the schedule sized to them (0: every epoch)")
    snapshot_steps: int = setting(0, "save the model every N optimizer steps to snapshots/ (0: never), for "
                                     "learning curves")
    ranges: typing.ClassVar[dict[str, Range]] = OPTIM_RANGES  # where each numeric field may lie

    def validate(self) -> None:
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise AlignlabError(f"config: '{name}' is required (pass --{name} or set it in the YAML)")
        if self.gguf_file:  # one name for the model from here on, in every cache key and in config.yaml
            self.model, self.gguf_file = str(Path(self.model) / self.gguf_file), None
        check_numbers("config", vars(self), self.ranges)
        if self.max_prompt_length >= self.max_length:
            raise AlignlabError(f"config: 'max_prompt_length' ({self.max_prompt_length}) must be smaller "
                                f"than 'max_length' ({self.max_length}) to leave room for the response")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise AlignlabError(f"config: 'dtype' must be float32, bfloat16 or float16, got {self.dtype!r}")
        for name, choices in (("mixed_precision", MIXED_PRECISION), ("report_to", TRACKERS)):
            if getattr(self, name) not in choices:
                raise AlignlabError(unknown_name_message(f"config: {name}", getattr(self, name), list(choices)))
        if self.run_name is not None and (not is_setting_name(self.run_name) or self.run_name in (".", "..")
                                          or any(c in self.run_name for c in "/\\")):
            raise AlignlabError(f"config: run_name {shown(self.run_name)} must be a name (one line of up to "
                                f"{MAX_NAME_CHARS} characters, no / or \\): tensorboard makes it a folder of out/tracking/")
        if self.report_to != "none" and not tracker_installed(self.report_to):
            raise AlignlabError(f"config: report_to {self.report_to} needs the {self.report_to} package, which is not "
                                f"installed: pip install 'alignlab[{self.report_to}]', or set report_to none")
        if self.mixed_precision != "no" and self.dtype != "float32":
            raise AlignlabError(f"config: mixed_precision {self.mixed_precision} keeps float32 master weights and "
                                f"computes in {self.mixed_precision}; it cannot start from dtype {self.dtype} "
                                "weights: set dtype float32, or mixed_precision no")
        check_cache_dir(self.cache_dir)
        if self.save_merged and not self.use_peft:
            raise AlignlabError("config: save_merged saves a LoRA adapter merged into the weights; without "
                                "use_peft model/ already holds the full weights: drop save_merged or set use_peft")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(OptimConfig):
    """One offline training run (`alignlab train`)."""

    method: str = setting("dpo", "sft | dpo | ln-dpo | simpo | var | grpo")
    params: dict = setting({}, "the method's hyper-parameters (also given as --name value; see below)")
    reference_model: str | None = setting(None, "frozen reference (default: model, the SFT model)")
    reward_model: str | None = setting(None, "sequence classifier giving VAR's rewards and GRPO's proxy reward "
                                             "(else the data's reward columns)")
    generation_backend: str = setting("hf", "hf | vllm: what samples GRPO's and the sampled Z estimator's responses")
    packing: bool = setting(True, "offline methods: several pairs to a row, each prompt forwarded once, rows filled to "
                                  "max_length tokens (the same loss, little padding); off: a row per pair")
    batch_tokens: int = setting(0, "offline methods: fill each batch to this many prompt + chosen + rejected "
                                   "tokens instead of batch_size pairs (0: off); the loss is the mean over the "
                                   "batch's pairs")
    attn_implementation: str | None = setting(None, "the policy's attention kernel: sdpa | eager | flash_attention_2 "
                                                    "| ... (default: transformers' choice); with flash-attention, "
                                                    "packed batches go through its varlen kernel")
    group_by_length: bool = setting(False, "offline methods: batches of pairs of similar length (sorted within "
                                           "shuffled groups of 50 batches): less padding, a less random order")

    ranges: typing.ClassVar[dict[str, Range]] = {**OPTIM_RANGES, "batch_tokens": Range(0, integer=True)}

    def validate(self) -> None:
        super().validate()
        if self.method == "grpo" and (self.batch_tokens or self.group_by_length):
            raise AlignlabError("config: batch_tokens and group_by_length batch preference pairs; grpo batches "
                                "prompts by batch_size: set batch_tokens 0 and group_by_length false")
        if self.generation_backend not in GENERATION_BACKENDS:
            raise AlignlabError(unknown_name_message("config: generation_backend", self.generation_backend,
                                                     list(GENERATION_BACKENDS)))
        self.params = get_method(self.method).resolve(self.params)


@dataclass
class RewardModelConfig(OptimConfig):
    """Training a Bradley–Terry reward model (`alignlab train-rm`)."""

    learning_rate: float = setting(1e-5, "peak AdamW learning rate")
    eval_data: str | None = setting(None, "held-out pairs (default: eval_fraction of data)")
    eval_fraction: float = setting(0.1, "fraction of data held out when eval_data is not given")
    ranges: typing.ClassVar[dict[str, Range]] = {**OPTIM_RANGES, "eval_fraction": FRACTION}


def parse_overrides(tokens: list[str]) -> dict[str, str | bool]:
    """`--key value` / `--key=value` pairs (dashes in keys read as underscores); a bare `--key`
    (last, or followed by another `--key`) is an on/off setting turned on: True. A key given twice,
    or text that is no Unicode or longer than MAX_OVERRIDE_CHARS, is an error."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = _command_line_text(tokens[i])
        if not token.startswith("--") or len(token) == 2:
            raise AlignlabError(f"unexpected argument {shown(token)}: overrides are written --key value")
        key, eq, value = token[2:].partition("=")
        name = key.replace("-", "_")
        if not is_setting_name(name):
            raise AlignlabError(f"override {shown('--' + key)} is not a setting name (one line, up to "
                                f"{MAX_NAME_CHARS} characters)")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                value = True  # build_config refuses it for a setting that is not on/off
            else:
                value = _command_line_text(tokens[i + 1])
                i += 1
        if name in overrides:
            raise AlignlabError(f"override --{key} is given twice: give it once")
        overrides[name] = value
        i += 1
    return overrides


def _command_line_text(text: str) -> str:
    if not is_unicode(text):
        raise AlignlabError(f"command line: {shown(text)} holds bytes that are not UTF-8; "
                            "give the value as UTF-8 text")
    if len(text) > MAX_OVERRIDE_CHARS:
        raise AlignlabError(f"command line: an argument of {len(text)} characters (at most "
                            f"{MAX_OVERRIDE_CHARS}) begins {shown(text[:40])}; put long values in a --config file")
    return text


def field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


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
            if item_type is str:
                if not all(isinstance(i, str) for i in items):
                    raise ValueError
                return [i.strip() for i in items if i.strip()]
            return [coerce_value(name, i.strip() if isinstance(i, str) else i, item_type, where) for i in items]
    except (TypeError, ValueError, OverflowError, AlignlabError):  # OverflowError: float() of a huge int
        pass
    else:
        return value
    raise AlignlabError(f"{where}: '{name}' must be {_type_name(annotation)}, got {shown(value)}")


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text", dict: "a mapping"}


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        return "a list of names" if item is str else f"a list of {TYPE_NAMES.get(item, item.__name__)}s".replace("an ", "")
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


# TRL's (and transformers' TrainingArguments') names for our fields: accepted in YAML and on the
# command line, written to config.yaml under our name.
TRL_ALIASES = {
    "model_name_or_path": "model", "model_revision": "revision", "dataset_name": "data",
    "dataset_train_split": "data_split", "dataset_dir": "data_dir", "output_dir": "out",
    "per_device_train_batch_size": "batch_size", "num_train_epochs": "epochs",
    "lr_scheduler_type": "lr_scheduler", "save_steps": "checkpoint_steps", "torch_dtype": "dtype",
    "padding_free": "packing",
}
# TRL's on/off precision flags, each standing for one value of `mixed_precision`.
PRECISION_FLAGS = {"bf16": "bf16", "fp16": "fp16"}


def resolve_aliases(values: dict, fields, where: str) -> dict:
    """`values` with TRL's names turned into ours (see TRL_ALIASES, PRECISION_FLAGS) for the keys
    that are not fields of the config themselves; a setting given under both names is an error.
    `where(key)` names the place a key came from."""
    resolved, given_as = {}, {}
    for key, value in values.items():
        if key in fields:
            name = key
        elif key in TRL_ALIASES and TRL_ALIASES[key] in fields:
            name = TRL_ALIASES[key]
        elif key in PRECISION_FLAGS and "mixed_precision" in fields:
            name = "mixed_precision"
            on = coerce_value(key, value, bool, where(key))
            value = PRECISION_FLAGS[key] if on else "no"
        else:
            name = key
        if name in resolved:
            raise AlignlabError(f"{where(key)}: '{given_as[name]}' and '{key}' both set '{name}'; give it once")
        resolved[name], given_as[name] = value, key
    return resolved


def build_config(cls, yaml_path: str | None, overrides: dict):
    """Defaults < YAML < overrides. For configs with a method, keys that are not fields go to
    `params` when the method takes them; anything else is an error suggesting the closest key."""
    types_by_field = field_types(cls)
    merged: dict = {}
    sources: dict[str, str] = {}
    if yaml_path:
        from_file = resolve_aliases(read_yaml(yaml_path), types_by_field, lambda key: f"{yaml_path}: key {key!r}")
        for key, value in from_file.items():
            merged[key] = value
            sources[key] = f"{yaml_path}: key"
    overrides = resolve_aliases(overrides, types_by_field, lambda key: f"command line: --{key}")
    for key, value in overrides.items():
        merged[key] = value
        sources[key] = "command line: --"
    has_method = "method" in types_by_field
    params = merged.pop("params", None) if has_method else None
    if params is not None and not isinstance(params, dict):
        raise AlignlabError(f"{sources['params'].rstrip(' -:')}: 'params' must be a mapping")
    params = dict(params or {})
    method_params: dict[str, object] = {}
    if has_method:
        method_name = str(merged.get("method", cls.__dataclass_fields__["method"].default))
        method_params = {hp.name: type(hp.default) for hp in get_method(method_name).hyperparameters}
    for key, value in overrides.items():
        kind = types_by_field.get(key, method_params.get(key))
        if value is True and kind is not None and kind is not bool:
            raise AlignlabError(f"command line: --{key} needs a value (only on/off settings are bare "
                                f"flags): write --{key} VALUE")
    values = {}
    for key, value in merged.items():
        if key in types_by_field:
            values[key] = coerce_value(key, value, types_by_field[key], sources[key].rstrip(" -:"))
        elif key in method_params:
            params[key] = value
        else:
            valid = sorted(set(types_by_field) | set(method_params))
            raise AlignlabError(unknown_name_message(f"{sources[key].rstrip(' -:')}: unknown key", key, valid))
    config = cls(**values)
    if has_method:
        config.params = params
    return config


def dump_yaml(config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
