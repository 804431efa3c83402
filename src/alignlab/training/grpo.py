"""GRPO, the online baseline (SPEC §3): `alignlab train --method grpo`.

Each micro-batch of prompts (`batch_size` prompts; the data gives prompts only) becomes, at the
moment it is trained on:

    1. G responses per prompt sampled from the current policy      (generate.py, temperature T;
                                                                     generation_backend hf or vllm)
    2. a proxy reward per response                                  (score.py's RewardScorer)
    3. group-relative advantages A = (r − mean_G r)/(std_G r + ε)   (objectives.grpo_advantages)
    4. per-token log-probs of the policy (with gradient), of the sampling policy π_old and of the
       frozen reference, all of softmax(logits / T) — the distribution that was sampled
    5. the loss: token-averaged clipped surrogate minus β_KL · k3 KL (objectives.grpo_loss)

Everything else is the shared loop's (loop.py): `fit` (AdamW, schedule, accumulation, clipping, logging,
checkpoints, resume), `run_directory` and `save_run`. The prompts of an optimizer step are
`batch_size × processes × gradient_accumulation_steps`. With `num_iterations` μ > 1, each step's
sampled responses are trained on μ times (μ optimizer steps, `fit` sees the same prompt block
repeated), so the ratio π/π_old moves away from 1 and the clip acts; with μ = 1 (DeepSeekMath's
setting, the default) π_old is the current policy, ρ = 1 and the gradient is A·∇log π.

metrics.jsonl adds, per logged step, `reward` (mean proxy reward of the sampled responses), `kl`
(mean over responses of Σ_t k3, a sequence-level KL to the reference), `clip_fraction` (tokens
whose ratio is clipped) and `response_length` (tokens); `margin` is the mean proxy reward too,
`pairs_seen` counts prompts and `responses_seen` responses trained (prompts × G; with μ > 1 a
response counts once per pass), with `elapsed_s` (sampling included): what a convergence plot
against wall-clock or samples needs.

Each micro-batch's sampling is seeded from (seed, epoch, its prompts), so a resumed run samples
what the uninterrupted run would have — except when it resumes between the μ passes over a
sampled batch (samples are not checkpointed; that batch is sampled afresh from the current policy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.config import TrainConfig
from alignlab.errors import AlignlabError
from alignlab.models.backends import make_backend
from alignlab.models.generate import Generation, GenerationBackend, GenerationConfig
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.logps import final_states
from alignlab.objectives.losses import grpo_advantages, k3_kl
from alignlab.objectives.registry import GroupBatch, get_method
from alignlab.data.tokenise import PromptRenderer, collate_sequences
from alignlab.training.batching import in_batches
from alignlab.training.reference import reference_and_revision
from alignlab.training.loop import (
    TrainResult,
    check_enough_for_a_step,
    fit,
    load_training_pairs,
    make_accelerator,
)
from alignlab.training.outputs import run_directory, save_run
from alignlab.training.policy import as_reference, prepare_policy

log = logging.getLogger(__name__)


@dataclass
class PromptReport:
    """What `train_summary.json` says about the prompts (the offline trainer's truncation line)."""

    prompts: int
    prompts_truncated: int

    def summary(self) -> str:
        return (f"{self.prompts} distinct prompts; {self.prompts_truncated} cut to their last "
                "max_prompt_length tokens")


@dataclass
class Samples:
    prompt_ids: list[list[int]]  # one row per response: each prompt's ids repeated n times
    generations: list[Generation]
    rewards: torch.Tensor  # (prompts, n), float32 on CPU


def distinct_prompts(pairs) -> list[list[dict]]:
    """Each prompt once, in order of first appearance (a prompt may head several pairs)."""
    seen: dict[str, list[dict]] = {}
    for pair in pairs:
        seen.setdefault(json.dumps(pair.prompt, sort_keys=True), pair.prompt)
    return list(seen.values())


def encode_prompts(tokenizer, prompts: list[list[dict]], max_prompt_length: int, raw_prompts: bool = False
                   ) -> tuple[list[list[int]], int]:
    """Prompt token ids as in training (a prompt longer than max_prompt_length keeps its last
    tokens), and how many were cut."""
    renderer = PromptRenderer(tokenizer, raw_prompts)
    encoded = [renderer.prompt_ids(prompt)[0] for prompt in prompts]
    cut = sum(len(ids) > max_prompt_length for ids in encoded)
    return [ids[-max_prompt_length:] for ids in encoded], cut


def sample_and_score(backend: GenerationBackend, scorer, prompts: list[list[dict]], prompt_ids: list[list[int]],
                     n: int, generation: GenerationConfig) -> Samples:
    """n responses per prompt sampled by `backend`, each scored by `scorer` (a RewardScorer).

    Shared by GRPO (G samples from the policy) and VAR's `sampled` Z estimator (K from the reference).
    """
    repeated_ids = [ids for ids in prompt_ids for _ in range(n)]
    generations = backend.generate(repeated_ids, generation)
    rewards = scorer.score([p for p in prompts for _ in range(n)], [g.text for g in generations],
                           generation.batch_size)
    return Samples(repeated_ids, generations, rewards.view(len(prompts), n))


def response_token_logps(model, batch: dict, temperature: float) -> torch.Tensor:
    """log π(y_t | x, y_<t) of every next token under softmax(logits / T): (rows, length − 1).
    Only positions where batch["loss_mask"][:, 1:] is 1 are response tokens. From the final hidden
    states, without the full logits (alignlab.models.logps)."""
    input_ids = batch["input_ids"]
    rows, positions = torch.ones_like(input_ids[:, 1:], dtype=torch.bool).nonzero(as_tuple=True)
    states = final_states(model, rows, positions, input_ids=input_ids, attention_mask=batch["attention_mask"],
                          use_cache=False)
    return states.token_logps(input_ids[rows, positions + 1], temperature).view(len(input_ids), -1)


@dataclass
class SampledBatch:
    """One micro-batch's responses, with what stays fixed while the policy trains on them."""

    batch: dict  # collate_sequences output on the device
    advantages: torch.Tensor  # (responses,)
    rewards: torch.Tensor  # (responses,)
    ref_logps: torch.Tensor  # (responses, tokens)
    old_logps: torch.Tensor | None  # the sampling policy's; None when μ = 1 (it is the current policy)


def check_grpo_config(config: TrainConfig) -> None:
    params = config.params
    if not config.reward_model:
        raise AlignlabError("grpo: sampled responses are scored by a proxy reward model; pass --reward_model "
                            "PATH (a one-output sequence classifier, e.g. from alignlab train-rm)")
    if config.max_prompt_length + params["max_new_tokens"] > config.max_length:
        raise AlignlabError(f"grpo: max_prompt_length ({config.max_prompt_length}) + max_new_tokens "
                            f"({params['max_new_tokens']}) must not exceed max_length ({config.max_length}); "
                            "raise max_length or lower one of the others")


def train_grpo(config: TrainConfig) -> TrainResult:
    from alignlab.models.score import RewardScorer

    started = time.perf_counter()
    config.validate()
    check_grpo_config(config)
    method = get_method(config.method)
    params = config.params
    group_size, iterations, temperature = params["group_size"], params["num_iterations"], params["temperature"]
    out = Path(config.out)
    loaded = load_training_pairs(config)
    prompts = distinct_prompts(loaded.pairs)
    accelerator = make_accelerator(config)
    check_enough_for_a_step(config, accelerator, len(prompts), "distinct prompts")
    device = accelerator.device
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.revision)
    prompt_ids, cut = encode_prompts(tokenizer, prompts, config.max_prompt_length, config.raw_prompts)
    report = PromptReport(len(prompts), cut)
    if accelerator.is_main_process:
        log.info("%s; %s", loaded.summary(), report.summary())

    policy = prepare_policy(load_causal_lm(config.model, config.dtype, config.trust_remote_code, config.revision),
                            config)
    # A LoRA policy is its own reference with the adapter off (`as_reference`): no second model.
    reference_name, reference_revision = reference_and_revision(config)
    reference = None
    if not (config.use_peft and reference_name == config.model):
        reference = load_causal_lm(reference_name, config.dtype, config.trust_remote_code,
                                   reference_revision).to(device).eval().requires_grad_(False)
    scorer = RewardScorer(config.reward_model, config.dtype, config.trust_remote_code, config.max_length, device,
                          raw_prompts=config.raw_prompts)
    backend = make_backend(config.generation_backend, policy, tokenizer, config.model, revision=config.revision,
                           device=device, trust_remote_code=config.trust_remote_code, max_model_len=config.max_length,
                           follows_training=True, progress=False)

    # The examples `fit` iterates over are (epoch, prompt) ids, epoch·P + prompt: a micro-batch's ids
    # name it uniquely, which seeds its sampling (so a resumed run samples exactly what the
    # uninterrupted one did) and keys the reuse of its samples. With μ > 1 each optimizer step's
    # block of prompts comes μ times in a row; trailing prompts that do not fill a block wait for a
    # later epoch's shuffle.
    n_prompts = len(prompts)
    block = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    usable = n_prompts if iterations == 1 else n_prompts // block * block

    def order(epoch: int) -> list[int]:
        shuffled = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(config.seed + epoch))[:usable]
        blocks = shuffled.view(-1, block if iterations > 1 else usable)
        return (epoch * n_prompts + blocks.repeat_interleave(iterations, dim=0).view(-1)).tolist()

    def collate(ids):
        return {"index": torch.tensor(ids)}

    def sample(model, ids: list[int]) -> SampledBatch:
        policy_module = accelerator.unwrap_model(model)
        indices = [i % n_prompts for i in ids]
        seed = int(hashlib.sha256(json.dumps([config.seed, ids]).encode()).hexdigest()[:8], 16)
        generation = GenerationConfig(max_new_tokens=params["max_new_tokens"], temperature=temperature,
                                      top_p=1.0,  # sample π itself: the ratio and the KL are about π
                                      batch_size=len(indices) * group_size, seed=seed)
        backend.follow(policy_module)
        samples = sample_and_score(backend, scorer, [prompts[i] for i in indices], [prompt_ids[i] for i in indices],
                                   group_size, generation)
        model.train()  # generation switched to eval mode
        batch = collate_sequences(samples.prompt_ids, [g.token_ids for g in samples.generations],
                                  tokenizer.pad_token_id)
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        with torch.no_grad(), accelerator.autocast():  # as the policy's forward computes
            reference_model = policy_module if reference is None else reference
            with as_reference(reference_model):
                ref_logps = response_token_logps(reference_model, batch, temperature)
            old_logps = response_token_logps(policy_module, batch, temperature) if iterations > 1 else None
        return SampledBatch(batch, grpo_advantages(samples.rewards).view(-1).to(device),
                            samples.rewards.view(-1).to(device), ref_logps, old_logps)

    pending: dict[tuple, tuple[SampledBatch, int]] = {}  # sampled batches awaiting their next pass

    def step_loss(model, batch):
        ids = batch["index"].tolist()
        key = tuple(ids)
        sampled, passes = pending.pop(key, (None, 0))
        if sampled is None:
            sampled = sample(model, ids)
        if passes + 1 < iterations:
            pending[key] = (sampled, passes + 1)
        logps = response_token_logps(model, sampled.batch, temperature)
        mask = sampled.batch["loss_mask"][:, 1:]
        old_logps = sampled.old_logps if sampled.old_logps is not None else logps.detach()
        quantities = GroupBatch(logps, old_logps, sampled.ref_logps, sampled.advantages, mask)
        loss = method.batch_loss(quantities, **params)
        with torch.no_grad():  # what the run logs besides the loss
            on = mask.bool()
            kl = torch.where(on, k3_kl(logps, sampled.ref_logps), 0.0).sum(-1).mean()
            ratio = torch.exp(logps - old_logps)
            advantages = sampled.advantages.unsqueeze(-1)
            clipped = (((ratio > 1 + params["clip_eps"]) & (advantages > 0))
                       | ((ratio < 1 - params["clip_eps"]) & (advantages < 0)))
            extras = {"reward": sampled.rewards.mean(), "kl": kl,
                      "clip_fraction": (clipped & on).sum() / on.sum().clamp(min=1),
                      "response_length": mask.sum(-1).mean()}
        return loss, extras["reward"], {name: value.float() for name, value in extras.items()}

    setup_seconds = time.perf_counter() - started  # loading the policy, the reference and the reward model
    with run_directory(out, accelerator, config) as run_dir:
        model, fitted = fit(config, accelerator, policy, usable * iterations, collate, step_loss, run_dir, "grpo",
                            started=started, batches=lambda epoch: in_batches(order(epoch), config.batch_size),
                            responses_per_example=group_size)
        save_run(run_dir, accelerator, model, tokenizer, config, {
            "method": config.method, "params": dict(params), **fitted.summary(accelerator, loaded, report),
            "responses_trained": fitted.pairs_trained * group_size, "final_reward": fitted.final_margin,
            "setup_seconds": round(setup_seconds, 3), "reference_cache_hit": None})
    accelerator.wait_for_everyone()
    return TrainResult(**vars(fitted), out=out, reference_cache_hit=None)
