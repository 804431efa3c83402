"""The policy as it trains: dropout off, gradient checkpointing, and a LoRA adapter (PEFT) whose
disabled state is the reference, so a LoRA run keeps one model in memory, not two."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from alignlab.config import OptimConfig
from alignlab.errors import AlignlabError
from alignlab.models.gguf import local_model_dir
from alignlab.models.loading import with_adapter

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


def lora_config(config: OptimConfig):
    """The LoRA adapter `config` asks for."""
    peft = require_peft()
    return peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=config.lora_target_modules or "all-linear", task_type="CAUSAL_LM")


def prepare_policy(model, config: OptimConfig):
    """The loaded causal LM made ready to train as `config` says: dropout off (`disable_dropout`),
    gradient checkpointing, then (`use_peft`) wrapped in a fresh LoRA adapter. Dropout goes before
    the adapter, so the adapter keeps the lora_dropout asked for; at step 0 the adapter's B is zero,
    so the policy still equals the reference."""
    if config.disable_dropout:
        zeroed = disable_dropout(model)
        if zeroed:
            log.info("dropout turned off in %d places (disable_dropout)", zeroed)
    if config.gradient_checkpointing:
        # Non-reentrant: gradients reach the checkpointed blocks even when their inputs need none
        # (frozen embeddings under LoRA), and it works under FSDP.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if not config.use_peft:
        return model
    model = with_adapter(model, lora_config(config))
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
