"""One trainer for every offline objective (SFT, DPO, LN-DPO, SimPO, VAR): the pairs' per-batch
inputs (inputs.py) go to the method's objective through the shared loop (loop.py), which logs TRL's
reward metrics beside the loss and, with `eval_strategy`, evaluates the objective on held-out pairs
(trl_metrics.py).

Before the first step the reference log-probs are computed for the pairs the run trains on (the
micro-batches its steps take: with `max_steps` or a fractional `epochs`, not every pair;
loop.trained_examples) and for every held-out pair, cached per pair (inputs.reference_logps).
`prepare_offline` sets a run up to that pass; a sweep's warm-up (`fill_reference_cache`) sets itself
up with it too, so that it stores what the runs will look up."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.cache import default_cache_dir, model_fingerprint
from alignlab.config import TrainConfig
from alignlab.data.tokenise import cached_tokenize_pairs
from alignlab.data.layouts import PairLayout
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.objectives.registry import Method, get_method
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
    ReferencePass,
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
    trained_examples,
)
from alignlab.training.outputs import run_directory, save_run
from alignlab.training.policy import prepare_policy
from alignlab.training.trl_metrics import HeldOut, check_eval_settings, preference_metrics, reward_scale

log = logging.getLogger(__name__)


@dataclass
class PairTables:
    """What a set of pairs brings to the objective besides its tokens, indexed by pair."""

    reference: ReferencePass | None
    rewards: dict | None
    log_z: torch.Tensor | None
    groups: torch.Tensor


def pair_tables(setup: OfflineSetup, pairs, examples, needed: list[int]) -> PairTables:
    """Rewards, cached reference log-probs (of the examples `needed`) and sampled log Z of `pairs`,
    computed before training changes the policy (the default reference); call under
    `setup.computing_as_the_run()`."""
    config, method = setup.config, setup.method
    rewards, reference, log_z = None, None, None
    if method.uses_rewards:  # first: a reward model that cannot load fails before the reference pass
        rewards = pair_rewards(config, pairs, setup.cache_dir, setup.accelerator.device)
    if method.uses_reference:
        reference = setup.reference(examples, needed)
    if config.params.get("z_estimator") == "sampled":
        log_z = sampled_prompt_log_z(config, pairs, setup.cache_dir, setup.accelerator.device, setup.model)
    return PairTables(reference, rewards, log_z, prompt_groups(pairs))


def load_eval_pairs(config: TrainConfig):
    """The held-out pairs of `eval_strategy` (checked by check_eval_settings): eval_data (its split:
    eval_split, else data_split), else the eval_split of data; None without evaluation."""
    if config.eval_strategy == "no":
        return None
    if config.eval_data:
        return load_training_pairs(config, config.eval_data, split=config.eval_split or config.data_split)
    return load_training_pairs(config, config.data, split=config.eval_split)


def pair_sizes(method, examples) -> list[int]:
    """Tokens per example as the objective trains it (the rejected response only where it is forwarded)."""
    return [len(e.prompt_ids) + len(e.chosen_ids) + (len(e.rejected_ids) if method.uses_rejected else 0)
            for e in examples]


def trained_pairs(config: TrainConfig, examples, processes: int) -> list[int]:
    """The examples a run of `config` trains on (loop.trained_examples over its micro-batches)."""
    sizes = pair_sizes(get_method(config.method), examples)
    return trained_examples(config, lambda epoch: micro_batches(sizes, config, epoch), processes)


@dataclass
class OfflineSetup:
    """An offline run up to its reference pass: the data tokenised, the policy loaded and prepared,
    the pair layout chosen. `prepare_offline` builds it for a run and for a sweep's warm-up of the
    reference cache alike, so the warm-up computes what the run looks up: the same pairs, device,
    dtype, mixed precision and layout."""

    config: TrainConfig
    method: Method
    accelerator: object
    loaded: object  # the training data's load (its pairs, and an unpaired method's labels)
    heldout: object | None
    cache_dir: Path
    tokenizer: object
    examples: list
    truncation: object
    eval_examples: list | None
    model: torch.nn.Module
    layout: PairLayout

    @contextlib.contextmanager
    def computing_as_the_run(self):
        """Rank 0 fills the caches, the others then read them; under the autocast of the run's
        mixed precision, so the reference computes as the policy will."""
        with self.accelerator.main_process_first(), self.accelerator.autocast():
            yield

    def reference(self, examples, needed: list[int]) -> ReferencePass:
        """The reference log-probs of `examples` `needed` (cached per pair): on the run's device, in its layout."""
        return reference_logps(self.config, examples, self.tokenizer.pad_token_id, self.cache_dir,
                               self.accelerator.device, self.model, self.layout, needed)


def prepare_offline(config: TrainConfig) -> OfflineSetup:
    """Everything before an offline run's reference pass, checked as it goes (see `OfflineSetup`)."""
    method = get_method(config.method)
    check_eval_settings(config, supported=not method.unpaired)  # KTO's labelled data: not yet
    sampled_z = config.params.get("z_estimator") == "sampled"
    if sampled_z and not config.reward_model:
        raise AlignlabError(f"{config.method}: z_estimator 'sampled' scores responses sampled from the "
                            "reference, so it needs a reward model; pass --reward_model PATH")
    # An unpaired method's (KTO's) pairs hold a completion and a mismatched one for its KL estimate.
    loaded = load_labelled_examples(config) if method.unpaired else load_training_pairs(config)
    pairs = loaded.pairs
    heldout = load_eval_pairs(config)
    if method.uses_rewards:
        check_rewards_available(config, pairs + (heldout.pairs if heldout else []))
    accelerator = make_accelerator(config)
    if not config.batch_tokens:  # else checked once the pairs' token counts are known
        check_enough_for_a_step(config, accelerator, len(pairs))
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
    check_enough_batches(config, accelerator, len(micro_batches(pair_sizes(method, examples), config, 0)))
    if accelerator.is_main_process:
        log.info(loaded.summary())
        log.info(truncation.summary())

    model = load_causal_lm(config.model, config.dtype, config.trust_remote_code, config.revision)
    model.config.use_cache = False
    if config.attn_implementation:
        set_attention(model, config.attn_implementation)
    model = prepare_policy(model, config)  # before the reference pass: dropout off, LoRA adapter (off there)
    layout = choose_layout(model.to(accelerator.device), examples, tokenizer.pad_token_id, accelerator.device,
                           config.packing, config.max_length)
    return OfflineSetup(config, method, accelerator, loaded, heldout, cache_dir, tokenizer, examples, truncation,
                        eval_examples, model, layout)


# Settings in which the runs of a sweep differ without changing the reference log-probs of a pair:
# which pairs a run draws and how it learns from them (a study gives the proxy reward model only to the
# methods that use rewards).
RUN_CHOICES = ("out", "method", "params", "learning_rate", "epochs", "seed", "max_steps", "reward_model")


def fill_reference_cache(configs: list[TrainConfig]) -> None:
    """Compute, once, the reference log-probs that the runs of `configs` (methods with a reference)
    will look up: the pairs each trains on and every held-out pair. Runs that differ only in
    RUN_CHOICES (and are alike paired or unpaired) share one setup and one pass over the union of
    their pairs; each setup is `prepare_offline`'s, so what is stored is what the run would compute
    (a run's tracker is left out: it changes no number and would be started in the run's directory)."""
    groups: dict[str, list[TrainConfig]] = {}
    for config in configs:
        shared = {k: v for k, v in config.to_dict().items() if k not in RUN_CHOICES}
        shared["unpaired"] = get_method(config.method).unpaired
        groups.setdefault(json.dumps(shared, sort_keys=True, default=str), []).append(config)
    for group in groups.values():
        setup = prepare_offline(dataclasses.replace(group[0], report_to="none"))
        processes = setup.accelerator.num_processes
        needed = sorted({i for config in group for i in trained_pairs(config, setup.examples, processes)})
        with setup.computing_as_the_run():
            computed = [setup.reference(setup.examples, needed)]
            if setup.eval_examples:
                computed.append(setup.reference(setup.eval_examples, list(range(len(setup.eval_examples)))))
        log.info("reference cache: %d of %d pairs computed for %d runs", sum(p.pairs - p.cached for p in computed),
                 sum(p.pairs for p in computed), len(group))


def reference_summary(tables: PairTables, eval_tables: PairTables | None) -> dict:
    """train_summary.json's reference fields: `reference_cache_hit` (the cache held every pair the
    run needed, trained and held out), the pairs needed and those computed; None without a reference."""
    passes = [t.reference for t in (tables, eval_tables) if t is not None and t.reference is not None]
    if not passes:
        return {"reference_cache_hit": None, "reference_pairs": None, "reference_pairs_computed": None}
    return {"reference_cache_hit": all(p.hit for p in passes), "reference_pairs": sum(p.pairs for p in passes),
            "reference_pairs_computed": sum(p.pairs - p.cached for p in passes)}


def train_offline(config: TrainConfig) -> TrainResult:
    """One offline objective over the pairs; the caller holds the run directory (`claim_run_dir`)."""
    started = time.perf_counter()
    setup = prepare_offline(config)
    method, accelerator, tokenizer, examples = setup.method, setup.accelerator, setup.tokenizer, setup.examples
    model, layout, heldout, eval_examples = setup.model, setup.layout, setup.heldout, setup.eval_examples
    labels = torch.tensor(setup.loaded.labels) if method.unpaired else None
    sizes = pair_sizes(method, examples)

    def batches(epoch: int) -> list[list[int]]:
        return micro_batches(sizes, config, epoch)

    with setup.computing_as_the_run():
        tables = pair_tables(setup, setup.loaded.pairs, examples,
                             trained_examples(config, batches, accelerator.num_processes))
        eval_tables = heldout and pair_tables(setup, heldout.pairs, eval_examples, list(range(len(eval_examples))))
    beta = reward_scale(method, config.params)

    def objective(examples, tables: PairTables, labels=None):
        """collate(indices), and step(model, batch) -> loss, margin, TRL's metrics and the diagnostics."""
        def collate(indices):
            batch = layout.collate([examples[i] for i in indices], tokenizer.pad_token_id, method.uses_rejected)
            batch["index"] = torch.tensor(indices)
            return batch

        def step(model, batch):
            quantities = pair_batch(model, batch, method, tables.reference and tables.reference.logps,
                                    tables.rewards, tables.groups, tables.log_z, labels)
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
    reference = reference_summary(tables, eval_tables)

    setup_seconds = time.perf_counter() - started  # loading, tokenising, rewards, reference log-probs
    with run_directory(Path(config.out), accelerator, config) as run_dir:
        model, fitted = fit(config, accelerator, model, len(examples), collate, step_loss, run_dir, config.method,
                            started=started,
                            responses_per_example=2 if method.uses_rejected and not method.unpaired else 1,
                            batches=batches, evaluate=evaluate or None, tokenizer=tokenizer)
        save_run(run_dir, accelerator, model, tokenizer, config, {
            "method": config.method, "params": dict(config.params),
            **fitted.summary(accelerator, setup.loaded, setup.truncation),
            "setup_seconds": round(setup_seconds, 3), **reference})
    accelerator.wait_for_everyone()
    return TrainResult(**vars(fitted), out=Path(config.out), reference_cache_hit=reference["reference_cache_hit"])
