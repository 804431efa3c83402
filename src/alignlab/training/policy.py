"""The policy as it trains: dropout off, gradient checkpointing, and a LoRA adapter (PEFT) whose
disabled state is the reference, so a LoRA run keeps one model in memory, not two."""

from __future__ import annotations

import contextlib
import difflib
import logging
from pathlib import Path

import torch

from alignlab.config import OptimConfig
from alignlab.errors import AlignlabError
from alignlab.models.gguf import local_model_dir
from alignlab.models.loading import with_adapter
from alignlab.models.lora_dropout import fuse_lora_dropout
from alignlab.untrusted import shown

log = logging.getLogger(__name__)

DROPOUT_MODULES = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
                   torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def disable_dropout(model) -> int:
    """Zero every dropout of `model`: dropout modules' p, and the float rates attention modules keep
    as attributes and pass to the functional dropout (Llama's `attention_dropout`, Bart's `dropout`).
    Returns how many were non-zero. The config is left alone, so the saved model keeps its own."""
    zeroed = 0
    for module in model.modules():
        if isinstance(module, DROPOUT_MODULES):
            zeroed += module.p > 0
            module.p = 0.0
            continue
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                zeroed += value > 0
                setattr(module, name, 0.0)
    return zeroed


def require_peft():
    try:
        import peft
    except ImportError:
        raise AlignlabError("config: use_peft needs the peft package; install it with "
                            "pip install 'alignlab[peft]'") from None
    return peft


ALL_LINEAR = "all-linear"  # PEFT's name (any case) for every linear layer but the output layer


def lora_targets(model, requested: list[str] | None) -> list[str] | str:
    """PEFT's `target_modules` for `requested` (--lora_target_modules; None: all-linear), each name
    checked against `model` first. PEFT adapts a module when a name is its path or the last
    components of it, and silently skips a name that matches nothing as long as another matches;
    here every name must match, and match only linear layers other than the output layer: PEFT
    cannot adapt a norm or a container, and an adapted embedding or output layer breaks a tied
    pair (merging one changes the other)."""
    from transformers.pytorch_utils import Conv1D

    linear_layers = (torch.nn.Linear, Conv1D)  # what PEFT's all-linear adapts (Conv1D: GPT-2's linear)
    if not requested or (len(requested) == 1 and requested[0].lower() == ALL_LINEAR):
        return ALL_LINEAR
    head = model.get_output_embeddings()
    linear = sorted({name.rpartition(".")[2] for name, module in model.named_modules()
                     if isinstance(module, linear_layers) and module is not head})
    valid = f"Valid: {', '.join(linear)}, or {ALL_LINEAR} alone"
    if any(name.lower() == ALL_LINEAR for name in requested):
        raise AlignlabError(f"config: --lora_target_modules {shown(','.join(requested))}: {ALL_LINEAR} already "
                            f"adapts every linear layer; give it alone, or list module names. {valid}")
    unmatched, unfit = [], []
    for name in requested:
        matched = [(path, module) for path, module in model.named_modules()
                   if path == name or path.endswith("." + name)]
        if not matched:
            close = difflib.get_close_matches(name, linear, n=1)
            unmatched.append(shown(name) + (f" (did you mean '{close[0]}'?)" if close else ""))
        for path, module in matched:
            if module is head or not isinstance(module, linear_layers):
                kind = "the output layer" if module is head else type(module).__name__
                unfit.append(f"{shown(name)} matches {path} ({kind})")
                break
    if unmatched:
        raise AlignlabError(f"config: --lora_target_modules names modules that {type(model).__name__} does not "
                            f"have: {', '.join(unmatched)}. {valid}")
    if unfit:
        raise AlignlabError(f"config: --lora_target_modules must name linear layers (not the output layer) for "
                            f"LoRA to adapt: {'; '.join(unfit)}. {valid}")
    return list(requested)


def lora_config(config: OptimConfig, model):
    """The LoRA adapter `config` asks for, its targets checked against `model` (`lora_targets`):
    rank-stabilised scaling (`use_rslora`), DoRA (`use_dora`) and modules trained in full beside it
    (`lora_modules_to_save`) as TRL's ModelConfig passes them to PEFT."""
    peft = require_peft()
    return peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=lora_targets(model, config.lora_target_modules), task_type="CAUSAL_LM",
                           use_rslora=config.use_rslora, use_dora=config.use_dora,
                           modules_to_save=config.lora_modules_to_save)


def prepare_policy(model, config: OptimConfig):
    """The loaded causal LM made ready to train as `config` says: gradient checkpointing, (`use_peft`)
    a fresh LoRA adapter, then dropout off (`disable_dropout`). Dropout goes off after the adapter is
    added, as in TRL (its DPO, GRPO, KTO and reward trainers zero every dropout module after
    get_peft_model), so disable_dropout turns LoRA's dropout off too; with disable_dropout false the
    adapter keeps lora_dropout, fused into A (alignlab.models.lora_dropout). At step 0 the adapter's B
    is zero, so the policy equals the reference."""
    if config.gradient_checkpointing:
        # Non-reentrant: gradients reach the checkpointed blocks even when their inputs need none
        # (frozen embeddings under LoRA), and it works under FSDP.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if config.use_peft:
        model = with_lora_adapter(model, config)
    if config.disable_dropout:
        zeroed = disable_dropout(model)
        if zeroed:
            log.info("dropout turned off in %d places (disable_dropout%s)", zeroed,
                     ", LoRA's lora_dropout too, as TRL does" if config.use_peft and config.lora_dropout else "")
    if config.use_peft:
        fuse_lora_dropout(model)  # the same numbers, less kept for the backward pass
    return model


def with_lora_adapter(model, config: OptimConfig):
    """`model` wrapped in the fresh LoRA adapter `config` asks for (`lora_config`)."""
    model = with_adapter(model, lora_config(config, model))
    # adapter_config.json names the base `load_causal_lm` loads the adapter onto: a local base by its
    # absolute path, so the adapter loads from any working directory; a GGUF base by its de-quantised
    # copy in the cache, so that transformers and PEFT can load the adapter too.
    base = Path(local_model_dir(config.model))
    model.peft_config["default"].base_model_name_or_path = str(base.resolve()) if base.is_dir() else config.model
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d of %d parameters train (%.3f%%)", trainable, total, 100 * trainable / total)
    return model


def is_adapter_model(model) -> bool:
    """Whether `model` (unwrapped) is a PEFT model, whose adapter can be switched off."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def as_reference(model):
    """A context in which `model` computes the reference: a LoRA policy with its adapter off (the
    base model it trains from); any other model as it is."""
    return model.disable_adapter() if is_adapter_model(model) else contextlib.nullcontext()
