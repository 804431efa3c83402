"""Every setting of `trl dpo` (TRL 1.16: `DPOConfig` with transformers' `TrainingArguments`,
`ModelConfig`, `ScriptArguments`, `DatasetMixtureConfig`, and a few names of older TRL and
transformers), classified once, in `TRL_KEYS`, as what alignlab does with it:

- ALIAS: our setting under TRL's name (or the same name): `output_dir` is `out`.
- CONVERT: honoured through a conversion that alignlab.config spells out (`warmup_steps` below 1 is
  `warmup_ratio`; `loss_type` picks the method).
- IGNORED: accepted and ignored, because ignoring it changes nothing that matters here; the note
  says why.
- REFUSED: alignlab cannot do what it asks; the note says what alignlab does instead. A value that
  asks for nothing (TRL's default, none, false, empty) is accepted. alignlab.config reports every
  refused key of a configuration in one error, or with `--ignore_unsupported` in one warning.

A key in none of these is unknown: an error with a hint only among alignlab's own names.
tests/test_trl_config.py checks that every field of TRL's classes, and every flag of `trl dpo`,
is here, so a key a new TRL adds is noticed.
"""

from __future__ import annotations

from dataclasses import dataclass

ALIAS, CONVERT, IGNORED, REFUSED = "alias", "convert", "ignored", "refused"


@dataclass(frozen=True)
class TrlKey:
    kind: str  # ALIAS | CONVERT | IGNORED | REFUSED
    note: str = ""  # CONVERT: how; IGNORED: why that is harmless; REFUSED: what alignlab does instead
    target: str | None = None  # ALIAS: the alignlab setting
    default: object = None  # REFUSED: TRL's default, a value that asks for nothing


def _alias(target: str, note: str = "") -> TrlKey:
    return TrlKey(ALIAS, note, target)


def _convert(note: str) -> TrlKey:
    return TrlKey(CONVERT, note)


def _ignored(reason: str) -> TrlKey:
    return TrlKey(IGNORED, reason)


def _refused(reason: str, default: object = None) -> TrlKey:
    return TrlKey(REFUSED, reason, default=default)


_SAME = ("trust_remote_code", "attn_implementation", "dtype", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
         "lora_target_modules", "lora_modules_to_save", "use_rslora", "use_dora", "dataset_config",
         "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
         "gradient_accumulation_steps", "seed", "logging_steps", "run_name", "gradient_checkpointing",
         "disable_dropout", "max_length", "truncation_mode", "eval_strategy", "eval_steps",
         "save_total_limit",
         # Older TRL and transformers (TRL 1.16 has none of these):
         "warmup_ratio", "max_prompt_length", "max_completion_length")

_DATALOADER = "pairs are tokenised before training and collated in the main process"
_DISTRIBUTED = "several processes are accelerate's: `accelerate config` and `accelerate launch` set them up"
_EVAL_LOOP = "an option of Trainer's evaluation loop, which alignlab's evaluation does not have"
_HUB = "used only by push_to_hub, which alignlab refuses"
_BNB = "used only with load_in_4bit, which alignlab refuses"
_COMPILE = "alignlab does not compile the model (torch.compile)"
_QUANTISED = ("alignlab trains unquantised weights (dtype float32, bfloat16 or float16); QLoRA is not "
              "supported: use_peft trains a LoRA adapter on them")
_STREAMING = "alignlab reads the whole dataset: it precomputes and caches each pair's reference log-probs"
_LOGGING = "alignlab logs every logging_steps optimizer steps and at the last step"
_SHARDED = ("alignlab takes FSDP and DeepSpeed from an `accelerate config` file: start it with "
            "`accelerate launch` (README: On GPUs)")

TRL_KEYS: dict[str, TrlKey] = {
    **{name: _alias(name) for name in _SAME},
    # ---- renamed
    "model_name_or_path": _alias("model"),
    "model_revision": _alias("revision"),
    "torch_dtype": _alias("dtype", "older transformers"),
    "dataset_name": _alias("data"),
    "dataset_train_split": _alias("data_split"),
    "dataset_test_split": _alias("eval_split"),
    "dataset_dir": _alias("data_dir", "older TRL"),
    "output_dir": _alias("out"),
    "overwrite_output_dir": _alias("overwrite", "older transformers; alignlab replaces only a run directory it "
                                                "created"),
    "per_device_train_batch_size": _alias("batch_size"),
    "per_device_eval_batch_size": _alias("eval_batch_size"),
    "num_train_epochs": _alias("epochs", "a fraction trains that share of the last epoch's batches"),
    "lr_scheduler_type": _alias("lr_scheduler"),
    "save_steps": _alias("checkpoint_steps"),
    "padding_free": _alias("packing", "TRL 1.16's DPOTrainer turns padding_free off whatever it is given "
                                      "(trl/trainer/dpo_trainer.py, lines 732-739); alignlab packs"),
    "activation_checkpointing": _alias("gradient_checkpointing", "transformers 5's name for it"),
    "evaluation_strategy": _alias("eval_strategy", "older transformers"),
    # ---- honoured through a conversion (alignlab.config: CONVERTERS, and the method keys in build_config)
    "bf16": _convert("true: mixed_precision bf16 (false: no, unless fp16 is true)"),
    "fp16": _convert("true: mixed_precision fp16 (false: no, unless bf16 is true)"),
    "warmup_steps": _convert("a whole number: warmup_steps, which overrides warmup_ratio when > 0; a number below "
                             "1 is a share of the steps, as transformers reads it: warmup_ratio"),
    "max_steps": _convert("max_steps; TRL's default -1 (no limit) is 0"),
    "optim": _convert("adamw_torch_fused (the default) and adamw_torch, torch's AdamW fused or per-tensor; "
                      "every other optimiser is refused"),
    "report_to": _convert("one tracker: a list of one is its tracker, none, [] and false are none; several, all "
                          "and trackers alignlab has not are refused"),
    "save_strategy": _convert("steps or no; epoch and best are refused"),
    "resume_from_checkpoint": _convert("true: resume (from the checkpoint in out); a path is refused"),
    "train_sampling_strategy": _convert("random: alignlab's seeded shuffle; group_by_length: group_by_length "
                                        "true; sequential is refused"),
    "loss_type": _convert("the method (alignlab.objectives.registry.method_for_loss_types): sigmoid is dpo, "
                          "ipo ipo, several loss types mix"),
    "loss_weights": _convert("with loss_type: the weights of mix's losses"),
    "beta": _convert("the method's beta; a method without one takes only TRL's default 0.1"),
    "label_smoothing": _convert("the method's label_smoothing (robust, exo-pair, aot, mix); another method takes "
                                "only TRL's default 0"),
    "discopop_tau": _convert("discopop's (and mix's) discopop_tau; another method takes only TRL's default 0.05"),
    # ---- accepted and ignored: ignoring them is harmless here
    "precompute_ref_log_probs": _ignored("always true here: alignlab computes every pair's reference log-probs "
                                         "before training (and caches them)"),
    "precompute_ref_batch_size": _ignored("the reference pass batches the pairs as training does"),
    "remove_unused_columns": _ignored("alignlab reads only the prompt, chosen, rejected and reward columns"),
    "dataset_num_proc": _ignored("tokenising runs once, in one process, and its ids are cached"),
    "pad_to_multiple_of": _ignored("rows are padded to the batch's longest (or packed); padding changes no loss"),
    "pad_token": _ignored("padding is masked out: which token pads changes nothing"),
    "average_tokens_across_devices": _ignored("alignlab's pair losses are means over pairs, averaged across "
                                              "processes"),
    "label_smoothing_factor": _ignored("Trainer's smoothing of token cross-entropy, which TRL's DPO loss does not "
                                       "use either (DPO's is label_smoothing)"),
    "bf16_full_eval": _ignored("evaluation runs in the training precision (mixed_precision)"),
    "fp16_full_eval": _ignored("evaluation runs in the training precision (mixed_precision)"),
    "gradient_checkpointing_kwargs": _ignored("alignlab checkpoints non-reentrant (use_reentrant false), which works "
                                              "with LoRA and FSDP"),
    "activation_checkpointing_kwargs": _ignored("alignlab checkpoints non-reentrant (use_reentrant false), which "
                                                "works with LoRA and FSDP"),
    "use_cache": _ignored("training forward passes keep no KV cache"),
    "torch_empty_cache_steps": _ignored("memory housekeeping only: it changes no result"),
    "logging_strategy": _ignored(_LOGGING),
    "logging_first_step": _ignored(_LOGGING),
    "log_on_each_node": _ignored("only the main process logs"),
    "logging_nan_inf_filter": _ignored("a loss or gradient norm that is not finite stops the run with an error"),
    "include_num_input_tokens_seen": _ignored("metrics.jsonl counts pairs_seen and responses_seen"),
    "log_level": _ignored("alignlab logs at INFO on the main process"),
    "log_level_replica": _ignored("alignlab logs at INFO on the main process"),
    "logging_dir": _ignored("older transformers; tensorboard logs go to out/tracking/"),
    "disable_tqdm": _ignored("set TQDM_DISABLE=1 to hide the progress bar"),
    "trackio_space_id": _ignored("trackio's; report_to trackio is refused"),
    "trackio_bucket_id": _ignored("trackio's; report_to trackio is refused"),
    "trackio_static_space_id": _ignored("trackio's; report_to trackio is refused"),
    "eval_delay": _ignored("alignlab evaluates from the start; an earlier evaluation changes no training"),
    "eval_on_start": _ignored("alignlab evaluates before the first step anyway (eval_strategy steps)"),
    "prediction_loss_only": _ignored(_EVAL_LOOP),
    "eval_do_concat_batches": _ignored(_EVAL_LOOP),
    "eval_use_gather_object": _ignored(_EVAL_LOOP),
    "eval_accumulation_steps": _ignored(_EVAL_LOOP),
    "include_for_metrics": _ignored(_EVAL_LOOP),
    "batch_eval_metrics": _ignored(_EVAL_LOOP),
    "save_only_model": _ignored("a checkpoint holds what resume needs: weights, optimizer, schedule, data position"),
    "save_on_each_node": _ignored("the main process saves"),
    "enable_jit_checkpoint": _ignored("a killed run continues from its last checkpoint with resume"),
    "hub_token": _ignored(_HUB),
    "hub_private_repo": _ignored(_HUB),
    "hub_model_id": _ignored(_HUB),
    "hub_strategy": _ignored(_HUB),
    "hub_always_push": _ignored(_HUB),
    "hub_revision": _ignored(_HUB),
    "metric_for_best_model": _ignored("used only by load_best_model_at_end, which alignlab refuses"),
    "greater_is_better": _ignored("used only by load_best_model_at_end, which alignlab refuses"),
    "ignore_data_skip": _ignored("a resumed run skips exactly the batches it trained"),
    "restore_callback_states_from_checkpoint": _ignored("resume restores alignlab's whole loop state"),
    "dataloader_drop_last": _ignored("alignlab trains every pair: an epoch's last micro-batch may be smaller"),
    "dataloader_num_workers": _ignored(_DATALOADER),
    "dataloader_pin_memory": _ignored(_DATALOADER),
    "dataloader_persistent_workers": _ignored(_DATALOADER),
    "dataloader_prefetch_factor": _ignored(_DATALOADER),
    "dataloader_multiprocessing_context": _ignored(_DATALOADER),
    "dataloader_in_order": _ignored(_DATALOADER),
    "label_names": _ignored("alignlab's batches name their own inputs"),
    "length_column_name": _ignored("group_by_length measures the lengths itself"),
    "ddp_find_unused_parameters": _ignored(_DISTRIBUTED),
    "ddp_bucket_cap_mb": _ignored(_DISTRIBUTED),
    "ddp_broadcast_buffers": _ignored(_DISTRIBUTED),
    "ddp_static_graph": _ignored(_DISTRIBUTED),
    "ddp_backend": _ignored(_DISTRIBUTED),
    "ddp_timeout": _ignored(_DISTRIBUTED),
    "local_rank": _ignored("set by the launcher; accelerate reads the rank from the environment"),
    "ignore_bias_buffers": _ignored("a DDP workaround of TRL's script for boolean buffers; accelerate needs none"),
    "debug": _ignored("Trainer's debug options; a loss that is not finite stops alignlab's run anyway"),
    "skip_memory_metrics": _ignored("alignlab logs no memory metrics"),
    "do_train": _ignored("a script switch: `alignlab train` trains"),
    "do_eval": _ignored("a script switch: eval_strategy decides evaluation"),
    "do_predict": _ignored("a script switch: `alignlab eval` evaluates a trained model"),
    "f_alpha_divergence_coef": _ignored("used only with f_divergence_type alpha_divergence, which alignlab refuses"),
    "ref_model_mixup_alpha": _ignored("used only with sync_ref_model, which alignlab refuses"),
    "ref_model_sync_steps": _ignored("used only with sync_ref_model, which alignlab refuses"),
    "bnb_4bit_quant_type": _ignored(_BNB),
    "use_bnb_nested_quant": _ignored(_BNB),
    "bnb_4bit_quant_storage": _ignored(_BNB),
    "liger_kernel_config": _ignored("used only with use_liger_kernel, which alignlab refuses"),
    # ---- refused: alignlab cannot do it; the note says what it does instead
    "push_to_hub": _refused("alignlab never uploads; push the output directory (out/model) yourself, e.g. "
                            "`hf upload NAME OUT/model`", False),
    "load_best_model_at_end": _refused("alignlab saves the last model; snapshot_steps saves one every N steps to "
                                       "choose from", False),
    "full_determinism": _refused("alignlab seeds every random draw (seed) but does not force deterministic "
                                 "kernels", False),
    "data_seed": _refused("seed sets the data order too: alignlab has one seed"),
    "use_cpu": _refused("alignlab trains on the device accelerate picks: CUDA_VISIBLE_DEVICES= (empty) trains on "
                        "the CPU", False),
    "accelerator_config": _refused("configure accelerate with `accelerate config` or `accelerate launch` flags",
                                   {"split_batches": False, "dispatch_batches": None, "even_batches": True,
                                    "use_seedable_sampler": True, "non_blocking": False,
                                    "gradient_accumulation_kwargs": None}),  # transformers' AcceleratorConfig()
    "parallelism_config": _refused("configure parallelism with `accelerate config` or `accelerate launch` flags"),
    "fsdp": _refused(_SHARDED, ""),
    "fsdp_config": _refused(_SHARDED),
    "deepspeed": _refused(_SHARDED),
    "torch_compile": _refused(_COMPILE, False),
    "torch_compile_backend": _refused(_COMPILE),
    "torch_compile_mode": _refused(_COMPILE),
    "use_liger_kernel": _refused("alignlab does not patch the model with Liger kernels", False),
    "tf32": _refused("alignlab keeps torch's float32 matmul precision; mixed_precision bf16 is the faster path"),
    "neftune_noise_alpha": _refused("NEFTune's embedding noise is not implemented"),
    "auto_find_batch_size": _refused("alignlab does not retry smaller batches: lower batch_size and raise "
                                     "gradient_accumulation_steps", False),
    "lr_scheduler_kwargs": _refused("alignlab builds lr_scheduler with transformers' defaults: pick the schedule "
                                    "by its name"),
    "optim_args": _refused("AdamW's settings are adam_beta1, adam_beta2, adam_epsilon and weight_decay"),
    "optim_target_modules": _refused("for GaLore and APOLLO optimisers, which alignlab has not (its optimiser is "
                                     "AdamW)"),
    "project": _refused("name the tracker's project in its environment: WANDB_PROJECT or MLFLOW_EXPERIMENT_NAME",
                        "huggingface"),
    "model_init_kwargs": _refused("alignlab loads the model from revision, dtype, attn_implementation and "
                                  "trust_remote_code: set those"),
    "router_aux_loss_coef": _refused("alignlab adds no MoE load-balancing loss"),
    "ld_alpha": _refused("LD-DPO's weighting of verbose tokens is not implemented (method ln-dpo normalises by "
                         "length)"),
    "f_divergence_type": _refused("alignlab's DPO losses regularise with the reverse KL only", "reverse_kl"),
    "use_weighting": _refused("WPO's weighting of pairs is not implemented", False),
    "activation_offloading": _refused("activations stay on the device; gradient_checkpointing saves memory instead",
                                      False),
    "sync_ref_model": _refused("the reference stays fixed (TR-DPO is not implemented)", False),
    "lora_target_parameters": _refused("LoRA on parameters (MoE experts) is not supported: name modules in "
                                       "lora_target_modules"),
    "lora_task_type": _refused("alignlab trains causal LMs: the task type is CAUSAL_LM", "CAUSAL_LM"),
    "load_in_8bit": _refused(_QUANTISED, False),
    "load_in_4bit": _refused(_QUANTISED, False),
    "dataset_streaming": _refused(_STREAMING, False),
    "streaming": _refused(_STREAMING, False),
    "datasets": _refused("alignlab trains on one dataset (data, dataset_config, data_split): mix the datasets into "
                         "one file first"),
    "test_split_size": _refused("give held-out pairs as eval_data, or their split of data as dataset_test_split"),
    "env": _refused("set environment variables in the shell that starts alignlab"),
    # Older TRL (0.x) DPOConfig:
    "rpo_alpha": _refused("RPO is loss_type [sigmoid, sft] with loss_weights [1, alpha]"),
    "reference_free": _refused("for reference-free training choose a reference-free method: --method simpo",
                               False),
    "generate_during_eval": _refused("alignlab eval samples and scores a trained model's responses", False),
}

# TRL's parser adds `--no_NAME` (NAME false) for each on/off setting whose default is true.
NO_FLAGS = frozenset({"average_tokens_across_devices", "dataloader_in_order", "dataloader_pin_memory",
                      "disable_dropout", "eval_do_concat_batches", "gradient_checkpointing", "log_on_each_node",
                      "logging_nan_inf_filter", "remove_unused_columns", "skip_memory_metrics"})

# The keys that set the method or its hyper-parameters: alignlab.config resolves them once the method is known.
METHOD_KEYS = ("loss_type", "loss_weights", "beta", "label_smoothing", "discopop_tau")
# TRL's defaults of the method keys that are hyper-parameters: a method without one takes only this value.
METHOD_KEY_DEFAULTS = {"beta": 0.1, "label_smoothing": 0.0, "discopop_tau": 0.05}


def classify(key: str) -> TrlKey | None:
    """The class of TRL's `key` (a `--no_NAME` flag is NAME's), or None for a key TRL does not have."""
    if key in TRL_KEYS:
        return TRL_KEYS[key]
    if key.startswith("no_") and key[3:] in NO_FLAGS:
        return TRL_KEYS[key[3:]]
    return None


def asks_nothing(value, default=None) -> bool:
    """Whether a refused key's value asks for nothing: none, false, empty, or TRL's default."""
    if value is None or value is False or (isinstance(value, (str, list, dict)) and not value):
        return True
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "false", "no", "0", ""):
        return True
    if value == default or (isinstance(value, str) and isinstance(default, str)
                            and value.strip().lower() == default.lower()):
        return True
    if isinstance(value, dict) and isinstance(default, dict):  # a dump of TRL's defaults, or some of them
        return all(key in default and item == default[key] for key, item in value.items())
    if isinstance(default, (int, float)) and not isinstance(default, bool) and not isinstance(value, bool):
        try:
            return float(value) == float(default)
        except (TypeError, ValueError, OverflowError):
            return False
    return False
