"""One trainer for every offline objective (SFT, DPO, LN-DPO, SimPO, VAR): the pairs' per-batch
inputs (inputs.py) go to the method's objective through the shared loop (loop.py), which logs TRL's
reward metrics beside the loss and, with `eval_strategy`, evaluates the objective on held-out pairs
(trl_metrics.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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
    load_labelled_examples,
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
)
from alignlab.training.outputs import run_directory, save_run
from alignlab.training.policy import prepare_policy
from alignlab.training.trl_metrics import HeldOut, check_eval_settings, preference_metrics, reward_scale

log = logging.getLogger(__name__)


@dataclass
class PairTables:
    """What a set of pairs brings to the objective besides its tokens, indexed by pair."""

    reference: dict | None
    reference_hit: bool | None
    rewards: dict | None
    log_z: torch.Tensor | None
    groups: torch.Tensor


def pair_tables(config: TrainConfig, method, pairs, examples, pad_id: int, cache_dir: Path, device, model,
                layout) -> PairTables:
    """Rewards, cached reference log-probs and sampled log Z of `pairs`, computed before training changes
    the policy (the default reference)."""
    rewards, reference, hit, log_z = None, None, None, None
    if method.uses_rewards:  # first: a reward model that cannot load fails before the reference pass
        rewards = pair_rewards(config, pairs, cache_dir, device)
    if method.uses_reference:
        reference, hit = reference_logps(config, examples, pad_id, cache_dir, device, model, layout)
    if config.params.get("z_estimator") == "sampled":
        log_z = sampled_prompt_log_z(config, pairs, cache_dir, device, model)
    return PairTables(reference, hit, rewards, log_z, prompt_groups(pairs))


def load_eval_pairs(config: TrainConfig):
    """The held-out pairs of `eval_strategy` (checked by check_eval_settings): eval_data (its split:
    eval_split, else data_split), else the eval_split of data; None without evaluation."""
    if config.eval_strategy == "no":
        return None
    if config.eval_data:
        return load_training_pairs(config, config.eval_data, split=config.eval_split or config.data_split)
    return load_training_pairs(config, config.data, split=config.eval_split)


def train_offline(config: TrainConfig) -> TrainResult:
    """One offline objective over the pairs; the caller holds the run directory (`claim_run_dir`)."""
    started = time.perf_counter()
    method = get_method(config.method)
    check_eval_settings(config, supported=not method.unpaired)  # KTO's labelled data: not yet
    sampled_z = config.params.get("z_estimator") == "sampled"
    if sampled_z and not config.reward_model:
        raise AlignlabError(f"{config.method}: z_estimator 'sampled' scores responses sampled from the "
                            "reference, so it needs a reward model; pass --reward_model PATH")
    out = Path(config.out)
    # An unpaired method's (KTO's) pairs hold a completion and a mismatched one for its KL estimate.
    loaded = load_labelled_examples(config) if method.unpaired else load_training_pairs(config)
    pairs = loaded.pairs
    labels = torch.tensor(loaded.labels) if method.unpaired else None
    heldout = load_eval_pairs(config)
    if method.uses_rewards:
        check_rewards_available(config, pairs + (heldout.pairs if heldout else []))
    accelerator = make_accelerator(config)
    if not config.batch_tokens:  # else checked once the pairs' token counts are known
        check_enough_for_a_step(config, accelerator, len(pairs))
    is_main = accelerator.is_main_process
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.revision)
    tokenizer_fingerprint = model_fingerprint(config.model, cache_dir, config.revision)
    cuts = {"max_completion_length": config.max_completion_length, "truncation_mode": config.truncation_mode}
    examples, truncation = cached_tokenize_pairs(tokenizer, tokenizer_fingerprint, pairs, config.max_length,
                                                 config.max_prompt_length, config.raw_prompts, cache_dir, **cuts)
    if method.uses_rejected and not method.unpaired:
        check_pairs_differ(config, examples)
    eval_examples = heldout and cached_tokenize_pairs(tokenizer, tokenizer_fingerprint, heldout.pairs, config.max_length,
                                                      config.max_prompt_length, config.raw_prompts, cache_dir,
                                                      **cuts)[0]
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
    layout = choose_layout(model.to(accelerator.device), examples, tokenizer.pad_token_id, accelerator.device,
                           config.packing, config.max_length)
    with accelerator.main_process_first():  # rank 0 fills the caches; the others then read them
        with accelerator.autocast():  # the reference computes as the policy will: with its mixed precision
            tables = pair_tables(config, method, pairs, examples, tokenizer.pad_token_id, cache_dir,
                                 accelerator.device, model, layout)
            eval_tables = heldout and pair_tables(config, method, heldout.pairs, eval_examples, tokenizer.pad_token_id,
                                                  cache_dir, accelerator.device, model, layout)
    beta = reward_scale(method, config.params)

    def objective(examples, tables: PairTables, labels=None):
        """collate(indices), and step(model, batch) -> loss, margin, TRL's metrics and the diagnostics."""
        def collate(indices):
            batch = layout.collate([examples[i] for i in indices], tokenizer.pad_token_id, method.uses_rejected)
            batch["index"] = torch.tensor(indices)
            return batch

        def step(model, batch):
            quantities = pair_batch(model, batch, method, tables.reference, tables.rewards, tables.groups,
                                    tables.log_z, labels)
            loss = method.batch_loss(quantities, **config.params)
            with torch.no_grad():
                extras = preference_metrics(quantities, beta)
                if method.diagnostics is not None:
                    extras.update(method.diagnostics(quantities, **config.params))
            return loss, logratio_margin(quantities), extras

        return collate, step

    collate, step_loss = objective(examples, tables, labels)
    evaluate = heldout and HeldOut(accelerator, [len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids)
                                                 for e in eval_examples], *objective(eval_examples, eval_tables),
                                   config.eval_batch_size or config.batch_size)

    setup_seconds = time.perf_counter() - started  # loading, tokenising, rewards, reference log-probs
    with run_directory(out, accelerator, config) as run_dir:
        model, fitted = fit(config, accelerator, model, len(examples), collate, step_loss, run_dir, config.method,
                            responses_per_example=2 if method.uses_rejected and not method.unpaired else 1,
                            batches=batches, evaluate=evaluate or None, tokenizer=tokenizer)
        save_run(run_dir, accelerator, model, tokenizer, config, {
            "method": config.method, "params": dict(config.params), **fitted.summary(accelerator, loaded, truncation),
            "setup_seconds": round(setup_seconds, 3), "reference_cache_hit": tables.reference_hit})
    accelerator.wait_for_everyone()
    return TrainResult(**vars(fitted), out=out, reference_cache_hit=tables.reference_hit)

