"""One trainer for every offline objective (SFT, DPO, LN-DPO, SimPO, VAR): the pairs' per-batch
inputs (inputs.py) go to the method's objective through the shared loop (loop.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from alignlab.cache import default_cache_dir, model_fingerprint
from alignlab.config import TrainConfig
from alignlab.data.tokenise import cached_tokenize_pairs
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.objectives.registry import get_method
from alignlab.training.inputs import (
    check_pairs_differ,
    check_rewards_available,
    choose_layout,
    set_attention,
    logratio_margin,
    pair_batch,
    pair_rewards,
    prompt_groups,
    reference_logps,
    sampled_prompt_log_z,
)
from alignlab.training.batching import check_enough_batches, micro_batches
from alignlab.training.loop import (
    TrainResult,
    check_enough_for_a_step,
    fit,
    load_training_pairs,
    make_accelerator,
    run_directory,
    save_run,
)
from alignlab.training.policy import prepare_policy

log = logging.getLogger(__name__)


def train_offline(config: TrainConfig) -> TrainResult:
    """One offline objective over the pairs; the caller holds the run directory (`claim_run_dir`)."""
    started = time.perf_counter()
    method = get_method(config.method)
    sampled_z = config.params.get("z_estimator") == "sampled"
    if sampled_z and not config.reward_model:
        raise AlignlabError(f"{config.method}: z_estimator 'sampled' scores responses sampled from the "
                            "reference, so it needs a reward model; pass --reward_model PATH")
    out = Path(config.out)
    loaded = load_training_pairs(config)
    pairs = loaded.pairs
    if method.uses_rewards:
        check_rewards_available(config, pairs)
    accelerator = make_accelerator(config)
    if not config.batch_tokens:  # else checked once the pairs' token counts are known
        check_enough_for_a_step(config, accelerator, len(pairs))
    is_main = accelerator.is_main_process
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.revision)
    tokenizer_fingerprint = model_fingerprint(config.model, cache_dir, config.revision)
    examples, truncation = cached_tokenize_pairs(tokenizer, tokenizer_fingerprint, pairs, config.max_length,
                                                 config.max_prompt_length, config.raw_prompts, cache_dir)
    if method.uses_rejected:
        check_pairs_differ(config, examples)
    sizes = [len(e.prompt_ids) + len(e.chosen_ids) + (len(e.rejected_ids) if method.uses_rejected else 0)
             for e in examples]

    def batches(epoch: int) -> list[list[int]]:
        return micro_batches(sizes, config, epoch)

    check_enough_batches(config, accelerator, len(batches(0)))
    if is_main:
        log.info(loaded.summary())
        log.info(truncation.summary())

    model = load_causal_lm(config.model, config.dtype, config.trust_remote_code, config.revision)
    model.config.use_cache = False
    if config.attn_implementation:
        set_attention(model, config.attn_implementation)
    model = prepare_policy(model, config)  # before the reference pass: dropout off, LoRA adapter (off there)
    reference, reference_hit, rewards, log_z = None, None, None, None
    groups = prompt_groups(pairs)
    layout = choose_layout(model.to(accelerator.device), examples, tokenizer.pad_token_id, accelerator.device,
                           config.packing, config.max_length)
    with accelerator.main_process_first():  # rank 0 fills the caches; the others then read them
        if method.uses_rewards:  # first: a reward model that cannot load fails before the reference pass
            rewards = pair_rewards(config, pairs, cache_dir, accelerator.device)
        with accelerator.autocast():  # the reference computes as the policy will: with its mixed precision
            if method.uses_reference:
                reference, reference_hit = reference_logps(config, examples, tokenizer.pad_token_id,
                                                           cache_dir, accelerator.device, model, layout)
            if sampled_z:
                log_z = sampled_prompt_log_z(config, pairs, cache_dir, accelerator.device, model)

    def collate(indices):
        batch = layout.collate([examples[i] for i in indices], tokenizer.pad_token_id, method.uses_rejected)
        batch["index"] = torch.tensor(indices)
        return batch

    def step_loss(model, batch):
        quantities = pair_batch(model, batch, method, reference, rewards, groups, log_z)
        loss = method.batch_loss(quantities, **config.params)
        if method.diagnostics is None:
            return loss, logratio_margin(quantities)
        with torch.no_grad():
            return loss, logratio_margin(quantities), method.diagnostics(quantities, **config.params)

    setup_seconds = time.perf_counter() - started  # loading, tokenising, rewards, reference log-probs
    with run_directory(out, accelerator, config) as run_dir:
        model, fitted = fit(config, accelerator, model, len(examples), collate, step_loss, run_dir, config.method,
                            responses_per_example=2 if method.uses_rejected else 1, batches=batches)
        save_run(run_dir, accelerator, model, tokenizer, config, {
            "method": config.method, "params": config.params, **fitted.summary(accelerator, loaded, truncation),
            "setup_seconds": round(setup_seconds, 3), "reference_cache_hit": reference_hit})
    accelerator.wait_for_everyone()
    return TrainResult(**vars(fitted), out=out, reference_cache_hit=reference_hit)

