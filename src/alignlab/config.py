"""Typed run configuration: dataclass defaults < YAML file < `--key value` CLI overrides.

Every run writes its resolved configuration as `config.yaml` next to its results, so that the
file can be passed back with `--config` to repeat the run. The YAML file is read by
`alignlab.yaml_input.read_yaml`. Every setting of `trl dpo` is accepted as alignlab.trl_keys
classifies it: under its TRL name, converted, ignored where that is harmless, or refused with what
alignlab does instead (all refused keys in one error; `ignore_unsupported` makes it a warning).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignlab import trl_keys
from alignlab.cache import check_cache_dir
from alignlab.checks import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SEED, STEPS_OR_NEVER, Range, check_numbers
from alignlab.data.tokenise import TRUNCATION_MODES
from alignlab.errors import AlignlabError, unknown_name_message
from alignlab.objectives.registry import METHODS, ResolvedParams, get_method
from alignlab.trl_settings import (LIST_IN_TRL, OPTIMIZERS, TRL_ALIASES, Findings, check_method, is_list_type,
                                   method_of_loss_types, report, translate, without_method_key)
from alignlab.untrusted import is_unicode, shown
from alignlab.yaml_input import MAX_NAME_CHARS, coerce_value, is_setting_name, read_yaml

MAX_OVERRIDE_CHARS = 10_000  # one --key value on the command line


# The numeric fields of every training config, and where they may lie.
OPTIM_RANGES = {
    # AdamW moves each weight by about the learning rate per step: above 1 nothing survives one step.
    "learning_rate": Range(0, 1, exclusive_min=True),
    "epochs": POSITIVE,  # a fraction trains that share of the last epoch's batches
    "batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "max_grad_norm": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": Range(0, 1, exclusive_max=True),
    "adam_beta2": Range(0, 1, exclusive_max=True),
    "adam_epsilon": NON_NEGATIVE,
    "warmup_ratio": Range(0, 1, exclusive_max=True),
    "warmup_steps": STEPS_OR_NEVER,
    "max_length": COUNT,
    "max_prompt_length": COUNT,
    "max_completion_length": COUNT,
    "eval_steps": COUNT,
    "eval_batch_size": COUNT,
    "save_total_limit": COUNT,
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
SAVE_STRATEGIES = ("steps", "no")
EVAL_STRATEGIES = ("no", "steps", "epoch")


def default_prompt_length(max_length) -> int | None:
    """`max_prompt_length` when none is given: half of max_length, so that a long prompt leaves its
    responses half the room (TRL 1.16 has no prompt limit: a prompt may fill max_length there)."""
    if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length >= 1:
        return max(max_length // 2, 1)
    return None


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
    epochs: float = setting(1, "passes over the data; a fraction trains that share of the last epoch's batches "
                               "(1.5: one epoch, then half of the next)")
    batch_size: int = setting(8, "pairs per device per micro-batch")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    max_grad_norm: float = setting(1.0, "gradient norm clipping")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    optim: str = setting("adamw_torch_fused", "adamw_torch_fused (torch's AdamW, one fused kernel where the device "
                                              "has it) | adamw_torch (torch's AdamW, per tensor)")
    adam_beta1: float = setting(0.9, "AdamW β1, the decay of the gradient's running mean")
    adam_beta2: float = setting(0.999, "AdamW β2, the decay of the squared gradient's running mean")
    adam_epsilon: float = setting(1e-8, "AdamW ε, added to the denominator")
    warmup_ratio: float = setting(0.1, "fraction of the steps spent warming the learning rate up")
    warmup_steps: int = setting(0, "optimizer steps spent warming the learning rate up; > 0 overrides warmup_ratio")
    lr_scheduler: str = setting("linear", "any transformers.get_scheduler name (linear, cosine, constant, ...)")
    max_length: int = setting(512, "prompt + response tokens")
    max_prompt_length: int | None = setting(None, "longer prompts keep their last tokens (default: half of "
                                                  "max_length)")
    max_completion_length: int | None = setting(None, "longer responses keep their first tokens (default: no cap)")
    truncation_mode: str = setting("keep_start", "keep_start | keep_end: which end of a prompt + response longer "
                                                 "than max_length is kept, as in TRL")
    seed: int = setting(0, "seed of the shuffle, initialisation and sampling")
    logging_steps: int = setting(1, "log every N optimizer steps")
    dtype: str = setting("float32", "weights' dtype: float32 | bfloat16 | float16 (bfloat16 weights lose small updates: "
                                    "prefer mixed_precision)")
    mixed_precision: str = setting("no", "no | bf16 | fp16: autocast with float32 master weights (accelerate)")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, ~30% "
                                                  "more compute")
    disable_dropout: bool = setting(True, "turn the model's dropout off, LoRA's too as in TRL, so the policy at "
                                          "step 0 equals the reference (false keeps it, and lora_dropout)")
    use_peft: bool = setting(False, "train a LoRA adapter (PEFT) instead of every weight; the reference is the "
                                    "base model with the adapter off")
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA scaling numerator (scale lora_alpha / lora_r)")
    lora_dropout: float = setting(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] | None = setting(None, "module names LoRA adapts, comma- or space-separated "
                                                          "(default all-linear: every linear layer but the output "
                                                          "head)")
    use_rslora: bool = setting(False, "rank-stabilised LoRA: scale the adapter by lora_alpha / √lora_r")
    use_dora: bool = setting(False, "DoRA: a learnt magnitude per output beside LoRA's direction (slower steps)")
    lora_modules_to_save: list[str] | None = setting(None, "modules trained in full beside the adapter and saved "
                                                           "with it, e.g. lm_head embed_tokens")
    save_merged: bool = setting(False, "with use_peft: also save the adapter merged into the weights (model-merged/)")
    report_to: str = setting("none", "experiment tracker: none | tensorboard (logs in out/tracking/) | wandb | "
                                     "mlflow (their own servers, as WANDB_* / MLFLOW_TRACKING_URI say)")
    run_name: str | None = setting(None, "the run's name at the tracker (default: the out directory's name)")
    cache_dir: str | None = setting(None, "reference log-prob / reward cache (default ~/.cache/alignlab)")
    trust_remote_code: bool = setting(False, "run code shipped with a hub model (only when you trust it)")
    overwrite: bool = setting(False, "replace an existing run directory that alignlab created")
    ignore_unsupported: bool = setting(False, "train without the TRL settings alignlab cannot honour (one warning "
                                              "lists them) instead of refusing the configuration")
    checkpoint_steps: int = setting(0, "save a resumable checkpoint every N optimizer steps (0: never)")
    resume: bool = setting(False, "continue a killed run from its last checkpoint (same configuration)")
    max_steps: int = setting(0, "stop after N optimizer steps, the schedule sized to them (0: every epoch)")
    snapshot_steps: int = setting(0, "save the model every N optimizer steps to snapshots/ (0: never), for "
                                     "learning curves")
    eval_strategy: str = setting("no", "no | steps | epoch: evaluate the objective on held-out pairs while training")
    eval_steps: int | None = setting(None, "with eval_strategy steps: every N optimizer steps (default: logging_steps)")
    eval_data: str | None = setting(None, "held-out pairs for eval_strategy")
    eval_split: str | None = setting(None, "held-out split of data (TRL's dataset_test_split)")
    eval_batch_size: int | None = setting(None, "pairs per device per evaluation batch (default: batch_size)")
    save_strategy: str = setting("steps", "steps | no: save checkpoint-N/ every checkpoint_steps")
    save_total_limit: int | None = setting(None, "keep only the newest N checkpoints (default: all)")
    ranges: typing.ClassVar[dict[str, Range]] = OPTIM_RANGES  # where each numeric field may lie

    def __post_init__(self):
        # A whole number of epochs stays an integer (in config.yaml too); a fraction stays a float.
        if isinstance(self.epochs, float) and self.epochs.is_integer():
            self.epochs = int(self.epochs)
        if self.max_prompt_length is None:
            self.max_prompt_length = default_prompt_length(self.max_length)

    def validate(self) -> None:
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise AlignlabError(f"config: '{name}' is required (pass --{name} or set it in the YAML)")
        if self.gguf_file:  # one name for the model from here on, in every cache key and in config.yaml
            self.model, self.gguf_file = str(Path(self.model) / self.gguf_file), None
        check_numbers("config", vars(self), self.ranges)
        if self.max_prompt_length is None:  # max_length was no count when the config was made
            self.max_prompt_length = default_prompt_length(self.max_length)
        if self.max_prompt_length >= self.max_length:
            raise AlignlabError(f"config: 'max_prompt_length' ({self.max_prompt_length}) must be smaller "
                                f"than 'max_length' ({self.max_length}) to leave room for the response")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise AlignlabError(f"config: 'dtype' must be float32, bfloat16 or float16, got {self.dtype!r}")
        for name, choices in (("mixed_precision", MIXED_PRECISION), ("report_to", TRACKERS), ("optim", OPTIMIZERS),
                              ("truncation_mode", TRUNCATION_MODES), ("save_strategy", SAVE_STRATEGIES),
                              ("eval_strategy", EVAL_STRATEGIES)):
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

    method: str = setting("dpo", " | ".join(METHODS) + " (or TRL's loss_type names)")
    # As given (a mapping of names to values, text from YAML or the command line) until validate
    # resolves them, once (`Method.resolve`); from then on the typed, checked ResolvedParams.
    params: dict | ResolvedParams = setting({}, "the method's hyper-parameters (also given as --name value; "
                                                "see below)")
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
        if not (isinstance(self.params, ResolvedParams) and self.params.method == self.method):
            self.params = get_method(self.method).resolve(self.params)

    @classmethod
    def for_run(cls, settings: dict, method: str, params, *, model: str, data: str, out,
                reward_model: str | None = None) -> TrainConfig:
        """A run's configuration, as every study and benchmark run is built, checked (`validate`):
        `settings` are TrainConfig fields (a study's training settings with the run's own learning
        rate, epochs and seed), `params` the method's hyper-parameters (a ResolvedParams of `method`
        is taken as it is, anything else resolved here), `reward_model` the proxy reward model,
        given to the methods that use rewards only."""
        config = cls(**settings, method=method, params=params, model=model, data=data, out=str(out),
                     reward_model=reward_model if get_method(method).uses_rewards else None)
        config.validate()
        return config

    def to_dict(self) -> dict:
        return {**super().to_dict(), "params": dict(self.params)}


@dataclass
class RewardModelConfig(OptimConfig):
    """Training a Bradley–Terry reward model (`alignlab train-rm`)."""

    learning_rate: float = setting(1e-5, "peak AdamW learning rate")
    eval_data: str | None = setting(None, "held-out pairs (default: eval_fraction of data)")
    eval_fraction: float = setting(0.1, "fraction of data held out when eval_data is not given")
    packing: bool = setting(True, "several pairs to a row, each prompt forwarded once, as DPO packs (the same loss, "
                                  "little padding); off: a row per response")
    ranges: typing.ClassVar[dict[str, Range]] = {**OPTIM_RANGES, "eval_fraction": FRACTION}


def parse_overrides(tokens: list[str]) -> dict[str, str | bool | list[str]]:
    """`--key value` / `--key=value` pairs (dashes in keys read as underscores). Every token up to
    the next `--key` is the key's value: one token is a string, several a list (as TRL's list
    settings take them: `--lora_target_modules q_proj v_proj`; build_config refuses a list for a
    setting of one value); none, a bare `--key`, is an on/off setting turned on: True. A key given
    twice, or text that is no Unicode or longer than MAX_OVERRIDE_CHARS, is an error."""
    overrides: dict[str, str | bool | list[str]] = {}
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
        i += 1
        if not eq:
            values = []
            while i < len(tokens) and not tokens[i].startswith("--"):
                values.append(_command_line_text(tokens[i]))
                i += 1
            # True: build_config refuses it for a setting that is not on/off
            value = True if not values else values[0] if len(values) == 1 else values
        if name in overrides:
            raise AlignlabError(f"override --{key} is given twice: give it once")
        overrides[name] = value
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


def build_config(cls, yaml_path: str | None, overrides: dict):
    """Defaults < YAML < overrides, under alignlab's names (`translate`: TRL's names and values).
    For configs with a method, TRL's loss_type picks it and keys that are not fields go to `params`
    when the method takes them. Every unknown key and every TRL setting alignlab cannot honour is
    reported at once (`report`), a typo with the one alignlab name it is close to."""
    types_by_field = field_types(cls)
    has_method = "method" in types_by_field
    findings = Findings()
    merged: dict = {}
    sources: dict[str, str] = {}  # where each setting came from, as coerce_value's errors name it
    labels: dict[str, str] = {}  # ... and as the key was written there
    places: dict[str, str] = {}  # ... and the file or command line alone
    readings = [(overrides, lambda key: f"command line: --{key}", "command line", "command line")]
    if yaml_path:
        readings.insert(0, (read_yaml(yaml_path), lambda key: f"{yaml_path}: key {key!r}", f"{yaml_path}: key",
                            str(yaml_path)))
    command_line = {}
    for values, where, source, place in readings:
        settings, given_as = translate(values, types_by_field, where, findings)
        for name, value in settings.items():
            merged[name], sources[name], labels[name], places[name] = value, source, where(given_as[name]), place
        if source == "command line":
            command_line = {name: given_as[name] for name in settings}
    params = merged.pop("params", None) if has_method else None
    if params is not None and not isinstance(params, dict):
        raise AlignlabError(f"{sources['params']}: 'params' must be a mapping")
    params = dict(params or {})
    method_params: dict[str, object] = {}
    method_name = None
    if has_method:
        params = {**method_of_loss_types(merged, sources), **params}
        method_name = str(merged.get("method", cls.__dataclass_fields__["method"].default))
        check_method(method_name, sources.get("method"))
        method_params = {hp.name: type(hp.default) for hp in get_method(method_name).hyperparameters}
    for name, key in command_line.items():
        kind = types_by_field.get(name, method_params.get(name))
        value = merged.get(name)
        if value is True and kind is not None and kind is not bool:
            raise AlignlabError(f"command line: --{key} needs a value (only on/off settings are bare "
                                f"flags): write --{key} VALUE")
        if (isinstance(value, list) and kind is not None and name not in LIST_IN_TRL
                and not is_list_type(types_by_field.get(name))):
            raise AlignlabError(f"command line: --{key} takes one value, got {len(value)}: "
                                f"{shown(' '.join(value))}")
    typed = {}
    for name, value in merged.items():
        if name in types_by_field:
            typed[name] = value
        elif name in method_params:
            params[name] = value
        elif has_method and name in trl_keys.METHOD_KEY_DEFAULTS:
            reason = without_method_key(name, value, method_name)
            if reason:
                findings.refused.append(f"{labels[name]}: {reason}")
        else:
            note = (f" (TRL's name for '{TRL_ALIASES[name]}', which {cls.__name__} has not)"
                    if name in TRL_ALIASES else "")
            findings.unknown.append((places[name], name, note))
    ignore = "ignore_unsupported" in typed and coerce_value(
        "ignore_unsupported", typed["ignore_unsupported"], bool, sources["ignore_unsupported"])
    report(findings, ignore, sorted(set(types_by_field) | set(method_params)))
    values = {name: coerce_value(name, value, types_by_field[name], sources[name]) for name, value in typed.items()}
    config = cls(**values)
    if has_method:
        config.params = params
    return config


def dump_yaml(config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
