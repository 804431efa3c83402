"""Reading TRL's settings as alignlab's: what alignlab.config.build_config does with each key of a
`trl dpo` configuration as alignlab.trl_keys classifies it. `translate` renames TRL's names and
converts their values (CONVERTERS), `method_of_loss_types` turns loss_type into a method, and
`report` raises every unknown key and every setting alignlab cannot honour in one error (with
`ignore_unsupported`, the refused settings in one warning). Hints point only to a name the key is
a typo of (`close_name`), never to one that is merely alike.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field

from alignlab import trl_keys
from alignlab.errors import AlignlabError
from alignlab.objectives import registry
from alignlab.untrusted import shown
from alignlab.yaml_input import coerce_value

log = logging.getLogger("alignlab.config")

OPTIMIZERS = ("adamw_torch_fused", "adamw_torch")  # torch's AdamW (training/loop.py: make_optimizer)
# Fields of one value that TRL gives as lists: a list of one value is that value (see `_one_tracker`).
LIST_IN_TRL = ("report_to",)

# TRL's names for our fields (trl_keys' ALIAS entries under another name): accepted in YAML and on
# the command line, written to config.yaml under our name.
TRL_ALIASES = {key: entry.target for key, entry in trl_keys.TRL_KEYS.items()
               if entry.kind == trl_keys.ALIAS and entry.target != key}
# TRL's on/off precision flags, each standing for one value of `mixed_precision`.
PRECISION_FLAGS = {"bf16": "bf16", "fp16": "fp16"}
# TRL's trackers (transformers' integrations) that alignlab has not.
OTHER_TRACKERS = ("azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "neptune", "ray",
                  "swanlab", "trackio")


class Unsupported(Exception):
    """A setting's value alignlab cannot honour; the message says what alignlab does instead."""


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _one_tracker(value) -> dict:
    """report_to as TRL gives it (a name, or a list of names) as alignlab's one tracker."""
    if value is None or value is False:
        return {"report_to": "none"}
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return {"report_to": value}  # coerce_value says what is wrong with it
    names = [name.strip() for name in names if name.strip() and name.strip().lower() not in ("none", "no")]
    if not names:
        return {"report_to": "none"}
    if "all" in names:
        raise Unsupported("report_to all: alignlab logs to one tracker; name it: tensorboard, wandb or mlflow")
    if len(names) > 1:
        raise Unsupported(f"report_to {' '.join(names)}: alignlab logs to one tracker; keep one of them")
    if names[0] in OTHER_TRACKERS:
        raise Unsupported(f"report_to {names[0]}: alignlab logs to tensorboard, wandb or mlflow")
    return {"report_to": names[0]}


def _warmup(value) -> dict:
    number = _number(value)
    if number is not None and 0 < number < 1:  # transformers 5 reads a number below 1 as a share of the steps
        return {"warmup_ratio": number}
    return {"warmup_steps": value}


def _max_steps(value) -> dict:
    return {"max_steps": 0 if _number(value) == -1 else value}  # TRL's default -1: no limit (other negatives: errors)


def _optim(value) -> dict:
    if isinstance(value, str) and value not in OPTIMIZERS:
        raise Unsupported(f"optim {shown(value)}: alignlab trains with torch's AdamW: optim {' or '.join(OPTIMIZERS)} "
                          "(its settings: adam_beta1, adam_beta2, adam_epsilon, weight_decay)")
    return {"optim": value}


def _save_strategy(value) -> dict:
    if value == "epoch":
        raise Unsupported("save_strategy epoch: alignlab saves a checkpoint every save_steps (checkpoint_steps) "
                          "optimizer steps: set save_strategy steps and save_steps to one epoch's steps")
    if value == "best":
        raise Unsupported("save_strategy best: alignlab keeps no best checkpoint; snapshot_steps saves the model "
                          "every N steps to choose from")
    return {"save_strategy": value}


def _resume(value) -> dict:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "none", "null", ""):
        value = value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, bool):
        return {"resume": True} if value else {}
    raise Unsupported(f"resume_from_checkpoint {shown(str(value))}: alignlab resumes a run from the checkpoint in "
                      "its own out directory: set out to that run and resume true")


def _sampling(value) -> dict:
    if value == "random":
        return {}
    if value == "group_by_length":
        return {"group_by_length": True}
    raise Unsupported(f"train_sampling_strategy {shown(str(value))}: alignlab shuffles the pairs every epoch "
                      "(seed); group_by_length true batches pairs of similar length")


# Settings honoured through a conversion (trl_keys' CONVERT entries; bf16/fp16: `_precision`; the
# method's keys: `method_of_loss_types` and build_config). Each gives our settings for a value, or
# raises Unsupported.
CONVERTERS = {"report_to": _one_tracker, "warmup_steps": _warmup, "max_steps": _max_steps, "optim": _optim,
              "save_strategy": _save_strategy, "resume_from_checkpoint": _resume,
              "train_sampling_strategy": _sampling}


def is_list_type(annotation) -> bool:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in args)


def _same_value(a, b) -> bool:
    scalars = (str, bool, int, float)
    return a == b or (isinstance(a, scalars) and isinstance(b, scalars) and str(a).lower() == str(b).lower())


@dataclass
class Findings:
    """What reading a configuration found besides settings, reported together (`report`)."""

    unknown: list = field(default_factory=list)  # (where, key, note)
    refused: list = field(default_factory=list)  # "where: what alignlab does instead"
    ignored: list = field(default_factory=list)  # TRL's keys that change nothing here


def _precision(values: dict, fields, where, put) -> dict:
    """TRL's bf16 / fp16 flags as `mixed_precision` (one on: its value; all off: no; TRL's null:
    unset); `values` less the flags."""
    flags = {key: value for key, value in values.items()
             if key in PRECISION_FLAGS and key not in fields and "mixed_precision" in fields}
    given = {key: coerce_value(key, value, bool, where(key)) for key, value in flags.items() if value is not None}
    on = [key for key, value in given.items() if value]
    if len(on) > 1:
        raise AlignlabError(f"{where(on[1])}: '{on[0]}' and '{on[1]}' both set 'mixed_precision'; give one")
    if given:
        key = on[0] if on else next(iter(given))
        put("mixed_precision", PRECISION_FLAGS[key] if on else "no", key)
    return {key: value for key, value in values.items() if key not in flags}


def _negated(key: str, value, fields, where) -> tuple[str, object]:
    """TRL's `--no_NAME` flag (NAME an on/off setting) as NAME with the opposite value."""
    name = key[3:]
    if key.startswith("no_") and key not in fields and (name in trl_keys.NO_FLAGS or fields.get(name) is bool):
        return name, not coerce_value(key, value, bool, where(key))
    return key, value


def translate(values: dict, fields, where, findings: Findings | None = None) -> tuple[dict, dict]:
    """One source's values under alignlab's names, and the key each was given as: TRL's names
    renamed (TRL_ALIASES, `--no_NAME`, bf16/fp16) and converted (CONVERTERS); TRL's null, its
    default, is no value. TRL's ignored and refused keys go to `findings`; without findings (a
    study's sections) they, and converted values alignlab cannot honour, are errors. Every other
    key is kept as it is, for the caller to route (a method's hyper-parameter) or report."""
    resolved, given_as = {}, {}

    def put(name, value, key):
        if name in resolved and not _same_value(resolved[name], value):
            raise AlignlabError(f"{where(key)}: '{given_as[name]}' and '{key}' both set '{name}'; give it once")
        resolved[name], given_as[name] = value, key

    for key, value in _precision(values, fields, where, put).items():
        name, value = _negated(key, value, fields, where)
        entry = trl_keys.TRL_KEYS.get(name)
        if entry is not None and value is None and name not in fields:
            continue  # TRL's null: its default (activation_checkpointing, ...); alignlab's own fields decide themselves
        if entry is not None and name not in fields and findings is not None:
            if entry.kind == trl_keys.IGNORED:
                findings.ignored.append(name)
                continue
            if entry.kind == trl_keys.REFUSED:
                if not trl_keys.asks_nothing(value, entry.default):
                    findings.refused.append(f"{where(key)}: {entry.note}")
                continue
        if entry is not None and name not in fields and entry.kind == trl_keys.ALIAS and entry.target in fields:
            name = entry.target
        if name in CONVERTERS and not (value is True and fields.get(name, bool) is not bool):  # bare: needs a value
            try:
                settings = CONVERTERS[name](value)
            except Unsupported as err:
                if findings is None:
                    raise AlignlabError(f"{where(key)}: {err}") from None
                findings.refused.append(f"{where(key)}: {err}")
                continue
            for target, converted in settings.items():
                put(target, converted, key)
        else:
            put(name, value, key)
    return resolved, given_as


def resolve_aliases(values: dict, fields, where) -> dict:
    """`values` with TRL's names turned into ours and TRL's values converted (see `_translate`) for
    the keys that are not fields of the config themselves; a setting given under two names with
    different values is an error. `where(key)` names the place a key came from."""
    return translate(values, fields, where)[0]


def _edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours that turn `a` into `b`."""
    before, row = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        before, row = row, current
    return row[len(b)]


def close_name(name: str, valid) -> str | None:
    """The valid name that `name` is a typo of: a few edits away (a quarter of its length:
    learning_rat → learning_rate), or one letter missing, extra or swapped (bta → beta, dop → dpo),
    never one merely alike, which may mean something else (ipo is neither dpo nor simpo). None
    when no name is that close."""
    def typo(candidate: str) -> bool:
        a, b = name.lower(), candidate.lower()
        distance = _edit_distance(a, b)
        return distance <= len(a) // 4 or (distance == 1 and (len(a) != len(b) or sorted(a) == sorted(b)))

    close = sorted((_edit_distance(name.lower(), candidate.lower()), candidate) for candidate in valid
                   if typo(candidate))
    return close[0][1] if close else None


def _hint(name: str, valid) -> str:
    close = close_name(name, valid)
    return f"; did you mean '{close}'?" if close else ""


def check_method(name: str, where: str | None) -> None:
    """An unknown method's error, its hint a typo's correction or TRL's loss type of that name."""
    if name in registry.METHODS:
        return
    trl_name = getattr(registry, "TRL_LOSS_TYPES", {}).get(name)
    hint = f"; TRL's loss_type {name} is method '{trl_name}'" if trl_name else _hint(name, registry.METHODS)
    raise AlignlabError(f"{where + ': ' if where else ''}unknown method {shown(name)}{hint} "
                        f"Valid: {', '.join(registry.METHODS)}")


def _names(value, what: str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise AlignlabError(f"config: {what} must be a name or a list of names, got {shown(value)}")
    return [item.strip() for item in items if item.strip()]


def _weights(value) -> list[float]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    numbers = [_number(item) for item in items]
    if not items or None in numbers:
        raise AlignlabError(f"config: loss_weights must be numbers, one per loss type, got {shown(value)}")
    return numbers


def method_of_loss_types(merged: dict, sources: dict) -> dict:
    """TRL's loss_type (and loss_weights) as the method they name, set in `merged` (alignlab's
    objectives.registry.method_for_loss_types); returns the method's params they imply. A method
    given beside them must be that one, or dpo (TRL's sigmoid, which loss_type refines)."""
    loss_type, loss_weights, given = merged.get("loss_type"), merged.get("loss_weights"), merged.get("method")
    if loss_type is None and (loss_weights is None or given == "mix"):  # mix's own loss_weights: its param
        return {}
    merged.pop("loss_type", None)
    merged.pop("loss_weights", None)
    loss_types = _names(loss_type, "loss_type") if loss_type is not None else ["sigmoid"]
    weights = None if loss_weights is None else _weights(loss_weights)
    method, params = registry.method_for_loss_types(loss_types, weights)
    if given is not None and str(given) not in ("dpo", method):
        raise AlignlabError(f"config: method '{given}' ({sources['method']}) and loss_type {', '.join(loss_types)} "
                            f"({sources.get('loss_type', sources.get('loss_weights'))}; method '{method}') ask for "
                            "different objectives: give one of them")
    merged["method"] = method
    sources["method"] = sources.get("loss_type", sources.get("loss_weights"))
    return params


def without_method_key(name: str, value, method: str) -> str | None:
    """Why TRL's hyper-parameter `name` (beta, label_smoothing, discopop_tau) cannot be honoured by
    `method`, which has none; None when its value is TRL's default, which asks for nothing."""
    if trl_keys.asks_nothing(value, trl_keys.METHOD_KEY_DEFAULTS[name]):
        return None
    having = [m.name for m in registry.METHODS.values() if any(hp.name == name for hp in m.hyperparameters)]
    return f"method {method} has no {name}" + (f" (methods with one: {', '.join(having)})" if having else "")


MAX_LISTING_CHARS = 600  # of valid names in an unknown-key error: past this, a pointer to --help


def report(findings: Findings, ignore_unsupported: bool, valid: list[str]) -> None:
    """Every unknown key and every TRL setting alignlab cannot honour, in one error: the first line
    a summary, then one line each. With `ignore_unsupported` the refused settings are one warning."""
    if findings.ignored:
        log.info("TRL settings without effect here (README: Coming from TRL): %s",
                 ", ".join(dict.fromkeys(findings.ignored)))
    refused = findings.refused
    if refused and ignore_unsupported:
        log.warning("ignore_unsupported: training without %d TRL setting%s alignlab cannot honour:\n  %s",
                    len(refused), "s" * (len(refused) != 1), "\n  ".join(refused))
        refused = []
    unknown = [f"{where}: unknown key {shown(key)}{_hint(key, valid)}{note}" for where, key, note in findings.unknown]
    if not unknown and not refused:
        return
    listing = f"Valid: {', '.join(valid)}"
    if len(listing) > MAX_LISTING_CHARS:  # a config class's every field: the help lists them better
        listing = "Valid: the settings --help lists, and the method's hyper-parameters"
    if unknown and not refused:  # one line, as every other error of a config
        raise AlignlabError(f"{'; '.join(unknown)}. {listing}")
    parts = [f"{len(unknown)} unknown key{'s' * (len(unknown) != 1)}"] if unknown else []
    if refused:
        parts.append(f"{len(refused)} TRL setting{'s' * (len(refused) != 1)} that alignlab cannot honour "
                     "(--ignore_unsupported trains without them)")
    lines = [f"config: {' and '.join(parts)}:", *(f"  {line}" for line in unknown + refused)]
    raise AlignlabError("\n".join(lines + ([f"  {listing}"] if unknown else [])))
