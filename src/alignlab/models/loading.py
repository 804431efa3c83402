"""Loading models and tokenizers safely, and the per-sequence log-probs every objective consumes."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor

from alignlab.cache import check_adapter_chain
from alignlab.errors import AlignlabError
from alignlab.models.gguf import local_model_dir
from alignlab.models.logps import final_states

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_local_weights(path: str) -> None:
    """Refuse local checkpoints without safetensors weights before transformers tries pickles."""
    directory = Path(path)
    if not directory.is_dir():
        return
    if not (directory / "config.json").exists():
        raise AlignlabError(f"{directory}: not a model directory (no config.json); pass a directory "
                            "written by save_pretrained or a Hugging Face model name")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise AlignlabError(f"{directory}: no *.safetensors weights; alignlab loads weights only as "
                            "safetensors (re-save the model with save_pretrained(safe_serialization=True))")
    from safetensors import safe_open

    for path in weights:  # reads each header only: cheap, and names the damaged file
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise AlignlabError(f"{path}: cannot load model weights ({_first_line(err)}); the file is damaged "
                                "or incomplete: download or save the model again") from None


def run_model_dir(path: str) -> str:
    """A training run's directory stands for its model. Runs keep the model at their root (TRL's
    layout), so `path` is used as it is; a run directory of an earlier alignlab (train_summary.json,
    the model only in model/) resolves to its model/."""
    directory = Path(path)
    if (directory.is_dir() and not (directory / "config.json").is_file() and not (directory / ADAPTER_CONFIG).is_file()
            and (directory / "train_summary.json").is_file() and (directory / "model").is_dir()):
        return str(directory / "model")
    return path


def _at_revision(revision: str | None) -> dict:
    """from_pretrained's keyword for a hub revision; none when not given (its own default, main)."""
    return {} if revision is None else {"revision": revision}


def load_tokenizer(path: str, trust_remote_code: bool = False, revision: str | None = None):
    """A tokenizer with a pad token: one without gets its EOS (or UNK) token as padding. `revision`
    is the hub revision (branch, tag or commit) of a hub model."""
    from transformers import AutoTokenizer

    path = local_model_dir(run_model_dir(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **_at_revision(revision))
    except (OSError, ValueError) as err:
        raise AlignlabError(f"{path}: cannot load a tokenizer ({err.__class__.__name__}: {err}). "
                            "Pass a local model directory or a Hugging Face model name") from None
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fallback is None:
            raise AlignlabError(f"{path}: tokenizer has no pad, eos or unk token to pad with; "
                                "add a pad token to the tokenizer")
        log.info("%s: tokenizer has no pad token; padding with %r", path, fallback)
        tokenizer.pad_token = fallback
    return tokenizer


def _load_pretrained(auto_cls, path: str, dtype: str, trust_remote_code: bool, revision: str | None, **kwargs):
    """The model and transformers' loading info (missing, unexpected and mismatched tensors)."""
    path = local_model_dir(run_model_dir(path))
    _check_local_weights(path)
    try:
        # Mismatched shapes are reported in the loading info (and refused by `_check_tensors`),
        # so the error can name every one of them.
        return auto_cls.from_pretrained(path, dtype=DTYPES[dtype], use_safetensors=True,
                                        trust_remote_code=trust_remote_code, output_loading_info=True,
                                        ignore_mismatched_sizes=True, **_at_revision(revision), **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise AlignlabError(f"{path}: cannot load model weights ({err.__class__.__name__}: "
                            f"{_first_line(err)}). Check that the directory holds an intact "
                            "save_pretrained checkpoint: download or save the model again") from None


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _listing(items, shown: int = 5) -> str:
    """The first `shown` items, sorted, then "and N more"."""
    items = sorted(items)
    listed = ", ".join(items[:shown])
    return listed + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _names(keys) -> str:
    return _listing(f"`{key}`" for key in keys)


def _outside_base(model, keys) -> set[str]:
    """The keys that belong to a task head (score, lm_head, ...), not to the shared base model."""
    return {k for k in keys if not k.startswith(f"{model.base_model_prefix}.")}


def _check_tensors(path: str, model, info: dict, new_head: bool = False) -> None:
    """Every tensor of the model comes from the checkpoint, with its shape, and the checkpoint holds
    nothing else; otherwise the model would silently train from random weights. Tied weights (an
    LM head sharing the embeddings) are not missing. With `new_head` a task head is being
    initialised on a base checkpoint: the new head may be missing and the checkpoint's own head
    (e.g. a causal LM's lm_head) is left unused; nothing of the base model may be."""
    missing, unexpected = set(info["missing_keys"]), set(info["unexpected_keys"])
    if new_head:
        missing -= _outside_base(model, missing)
        unexpected -= _outside_base(model, unexpected)
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint (they would be random): {_names(missing)}")
    if unexpected:
        problems.append(f"in the checkpoint but not in the model: {_names(unexpected)}")
    if info["mismatched_keys"]:
        shapes = (f"`{name}` (checkpoint {tuple(saved)}, model {tuple(expected)})"
                  for name, saved, expected in info["mismatched_keys"])
        problems.append(f"of the wrong shape: {_listing(shapes)}")
    problems += info["error_msgs"]
    if problems:
        raise AlignlabError(f"{path}: the weights do not match a {type(model).__name__} of its config.json: "
                            + "; ".join(problems) + ". Pass the checkpoint this model was saved with "
                            "(save_pretrained), or fix its config.json")


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_dir(path: str) -> bool:
    """Whether `path` is a PEFT adapter directory (a LoRA run's model/), not a whole model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False, revision: str | None = None):
    """A causal LM from a save_pretrained directory, a .gguf file or a hub name (`revision`: of a hub
    model), its safetensors weights checked against the model (`_check_tensors`). An adapter
    directory (adapter_config.json, e.g. a LoRA run's model/) loads its base model, checked the same
    way, with the adapter merged in."""
    from transformers import AutoModelForCausalLM

    path = run_model_dir(path)
    if is_adapter_dir(path):
        return _load_with_adapter(path, dtype, trust_remote_code)
    model, info = _load_pretrained(AutoModelForCausalLM, path, dtype, trust_remote_code, revision)
    _check_tensors(path, model, info)
    return model


def with_adapter(model, adapter_config):
    """`model` wrapped in a fresh PEFT adapter of `adapter_config`."""
    import peft

    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated `is_gradient_checkpointing`; the warning is about
        # PEFT's code and the user can do nothing about it.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, adapter_config)


def _load_with_adapter(path: str, dtype: str, trust_remote_code: bool):
    """The base model named by the adapter's config with the adapter's weights (safetensors only,
    every one of them placed in the model) merged into it."""
    import json

    try:
        import peft
    except ImportError:
        raise AlignlabError(f"{path}: a PEFT adapter directory needs the peft package; install it with "
                            "pip install 'alignlab[peft]'") from None
    directory = Path(path)
    try:
        base = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        raise AlignlabError(f"{directory / ADAPTER_CONFIG}: cannot read the adapter's config ({_first_line(err)}); "
                            "save the adapter again") from None
    if not isinstance(base, str) or not base:
        raise AlignlabError(f"{directory / ADAPTER_CONFIG}: names no base model (base_model_name_or_path); set it "
                            "to the model the adapter was trained on")
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AlignlabError(f"{directory}: no {ADAPTER_WEIGHTS}; alignlab loads adapter weights only as "
                            "safetensors (re-save the adapter with save_pretrained(safe_serialization=True))")
    if Path(base).is_absolute() and not Path(base).exists():
        raise AlignlabError(f"{directory / ADAPTER_CONFIG}: its base model {base} is not there (moved?); set "
                            "base_model_name_or_path to where the base model now is")
    check_adapter_chain(directory)  # the base may be an adapter too, loaded the same way
    model = load_causal_lm(base, dtype, trust_remote_code)
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
        adapter_config = peft.PeftConfig.from_pretrained(str(directory))
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise AlignlabError(f"{directory}: cannot load the adapter ({_first_line(err)}); the files are damaged "
                            "or incomplete: save the adapter again") from None
    model = with_adapter(model, adapter_config)
    try:
        loaded = peft.set_peft_model_state_dict(model, tensors)
    except RuntimeError as err:  # tensors of the wrong shape: torch's message lists each, one a line
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise AlignlabError(f"{directory}: the adapter does not fit its base model {base} "
                            f"({lines[0] if lines else _first_line(err)}). "
                            "Pass the base the adapter was trained on (base_model_name_or_path)") from None
    # Adapter tensors the model does not have, or adapter tensors the file lacks (they would keep
    # their fresh initialisation): the adapter was trained for a different base or configuration.
    absent = [k for k in loaded.missing_keys if "lora_" in k or "modules_to_save" in k]
    if loaded.unexpected_keys or absent:
        problems = ([f"not in the model: {_names(loaded.unexpected_keys)}"] if loaded.unexpected_keys else []) + (
            [f"missing from the adapter: {_names(absent)}"] if absent else [])
        raise AlignlabError(f"{directory}: the adapter does not fit its base model {base}: " + "; ".join(problems)
                            + ". Pass the base the adapter was trained on (base_model_name_or_path)")
    return model.merge_and_unload()


def load_sequence_classifier(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                             num_labels: int | None = None, revision: str | None = None):
    """A reward model with one output. `num_labels=1` initialises a fresh score head on a base
    checkpoint (to train one); without it the checkpoint must already be a one-output classifier
    whose head was saved with it. `revision`: of a hub model."""
    from transformers import AutoModelForSequenceClassification

    extra = {} if num_labels is None else {"num_labels": num_labels}
    model, info = _load_pretrained(AutoModelForSequenceClassification, path, dtype, trust_remote_code, revision,
                                   **extra)
    head = _outside_base(model, info["missing_keys"])
    if num_labels is None and head:
        raise AlignlabError(f"{path}: not a reward model: its score head {_names(head)} is not in the checkpoint "
                            "(is it a causal LM?), so its scores would be random; pass a sequence classifier, "
                            "or train one from this model with `alignlab train-rm`")
    _check_tensors(path, model, info, new_head=num_labels is not None)
    if model.config.num_labels != 1:
        raise AlignlabError(f"{path}: a reward model must output one score (num_labels=1); this one "
                            f"has num_labels={model.config.num_labels}. Pass a one-output sequence "
                            "classifier, e.g. one trained with `alignlab train-rm`")
    return model


def sequence_logps(model, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> Tensor:
    """Σ_t log π(y_t | x, y_<t) over the positions where `loss_mask` is 1 (the response tokens), from
    the hidden states that predict them (alignlab.models.logps)."""
    rows, positions = loss_mask[:, 1:].nonzero(as_tuple=True)  # position t predicts token t + 1
    states = final_states(model, rows, positions, input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    per_token = states.token_logps(input_ids[rows, positions + 1]) * loss_mask[rows, positions + 1]
    return torch.zeros(len(input_ids), dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)


def gathered_logps(model, batch: dict) -> Tensor:
    """Σ_t log π(y_t | x, y_<t) of every response of a gathered layout's batch (alignlab.data.layouts):
    chosen 1..B, then rejected 1..B. A mask goes in as transformers' own masks do: boolean for sdpa,
    additive in the model's dtype for eager attention (which adds it to the scores); the
    position-packed layout has none (the position ids mark where each sequence starts). Log-probs are
    computed only where a response token is predicted (alignlab.models.logps; where the model's own
    logits are needed, its output layer maps only those positions: output_layer_at)."""
    core = getattr(model, "module", model)  # under DDP/DeepSpeed, the wrapped model holds the config
    mask = batch.get("attention_mask")
    if mask is not None and core.config._attn_implementation != "sdpa":
        mask = torch.zeros(mask.shape, dtype=core.dtype, device=mask.device).masked_fill_(~mask,
                                                                                        torch.finfo(core.dtype).min)
    real = batch["response_mask"].bool()
    response, _ = real.nonzero(as_tuple=True)  # the response of each real token, in the order [real] takes
    rows, positions = batch["response_rows"][response], batch["response_positions"][real]
    states = final_states(model, rows, positions, gather_in_head=True, input_ids=batch["input_ids"],
                          attention_mask=mask, position_ids=batch["position_ids"], use_cache=False)
    per_token = states.token_logps(batch["response_tokens"][real])
    return torch.zeros(len(real), dtype=per_token.dtype, device=per_token.device).index_add(0, response, per_token)


def batch_logps(model, batch: dict) -> Tensor:
    """Summed response log-probs of a batch in any pair layout (alignlab.data.layouts)."""
    if "response_positions" in batch:
        return gathered_logps(model, batch)
    return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
