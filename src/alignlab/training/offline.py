"""One trainer for every offline objective (SFT, DPO, LN-DPO, SimPO, VAR).

The trainer turns a batch of pairs into per-sequence quantities (policy log-probs from one
concatenated forward over chosen and rejected rows, cached reference log-probs, rewards) and hands
them to the method's objective; objectives never see models or data. Multi-device runs go
through `accelerate launch`: each process takes its share of every global batch.

A run directory holds: config.yaml (resolved), metrics.jsonl (one line per logged optimizer step),
train_summary.json, model/ (save_pretrained, safetensors, with the tokenizer). It is written to a
hidden temp directory and renamed into place when training finishes, so a failed or killed run
never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from alignlab import atomic
from alignlab.cache import cache_key, cached_tensors, default_cache_dir, model_fingerprint
from alignlab.config import OptimConfig, TrainConfig, dump_yaml
from alignlab.data.pairs import load_pairs
from alignlab.errors import AlignlabError
from alignlab.models.loading import batch_logps, load_causal_lm, load_tokenizer
from alignlab.objectives.losses import sampled_log_z
from alignlab.objectives.registry import Method, PairBatch, get_method
from alignlab.output_dirs import claim_output_dir, mark, marked_kind
from alignlab.training.reference import compute_sequence_logps
from alignlab.data.tokenise import collate_pairs, collate_shared_prompt, fingerprint_tokens, tokenize_pairs

log = logging.getLogger(__name__)


def run_inputs(config: OptimConfig) -> list[str | None]:
    """The paths a training run reads: its output may be none of them, nor hold one."""
    return [config.model, config.data, getattr(config, "reference_model", None),
            getattr(config, "reward_model", None), getattr(config, "eval_data", None), config.cache_dir]


def claim_run_dir(config: OptimConfig):
    """The run directory `config.out`, checked before any work and locked until training ends
    (see alignlab.output_dirs): a training run replaces the whole directory it writes."""
    return claim_output_dir(config.out, overwrite=config.overwrite, inputs=run_inputs(config))


def check_rewards_available(config: TrainConfig, pairs) -> None:
    """VAR needs a reward per response: from the reward model, else from the data."""
    if config.reward_model:
        return
    missing = [p for p in pairs if p.reward_chosen is None or p.reward_rejected is None]
    if missing:
        raise AlignlabError(f"{config.data}: method '{config.method}' needs rewards, but pair "
                            f"'{missing[0].id}' (and {len(missing) - 1} more) has no "
                            "reward_chosen/reward_rejected; pass --reward_model PATH or add those fields")


def pair_rewards(config: TrainConfig, pairs, cache_dir: Path, device) -> dict[str, torch.Tensor]:
    """Rewards of every chosen and rejected response: from the reward model, else the data."""
    if config.reward_model:
        from alignlab.models.score import RewardScorer

        texts = json.dumps([[p.prompt, p.chosen, p.rejected] for p in pairs], ensure_ascii=False)
        key = cache_key("rewards", model_fingerprint(config.reward_model, cache_dir),
                        hashlib.sha256(texts.encode()).hexdigest(), config.dtype)

        def compute():
            scorer = RewardScorer(config.reward_model, config.dtype, config.trust_remote_code,
                                  config.max_length, device)
            prompts = [p.prompt for p in pairs]
            batch = 4 * config.batch_size  # no gradients to keep: as for the reference pass
            return {"chosen": scorer.score(prompts, [p.chosen for p in pairs], batch),
                    "rejected": scorer.score(prompts, [p.rejected for p in pairs], batch)}

        return cached_tensors(cache_dir, "rewards", key, compute)[0]
    return {"chosen": torch.tensor([p.reward_chosen for p in pairs], dtype=torch.float32),
            "rejected": torch.tensor([p.reward_rejected for p in pairs], dtype=torch.float32)}


def reference_logps(config: TrainConfig, examples, pad_id: int, cache_dir: Path, device, policy,
                    shared_prompt: bool) -> tuple[dict[str, torch.Tensor], bool]:
    """Cached reference log-probs. When the reference is the policy's own starting point (the
    default), the untrained policy computes them, so the model is loaded once, not twice."""
    reference = config.reference_model or config.model
    key = cache_key("reference-logps", model_fingerprint(reference, cache_dir),
                    fingerprint_tokens(examples), config.dtype)

    def compute():
        log.info("computing reference log-probs with %s", reference)
        model = policy if reference == config.model else load_causal_lm(
            reference, config.dtype, config.trust_remote_code)
        return compute_sequence_logps(model.to(device), examples, pad_id, config.batch_size, device, shared_prompt)

    return cached_tensors(cache_dir, "reference-logps", key, compute)


def sampled_prompt_log_z(config: TrainConfig, pairs, cache_dir: Path, device, policy) -> torch.Tensor:
    """VAR's `sampled` normaliser: log Ẑ(x) per distinct prompt (indexed by `prompt_groups`), from
    `z_samples` responses per prompt sampled from the reference and scored by the reward model.

    The samples' rewards — not log Ẑ, which also depends on λ — are cached, keyed by the reference
    and reward models, the prompts, K, the generation settings and the seed: a λ sweep samples once.
    Sampling is exact (temperature 1, no top-p) because Ẑ estimates E_{y∼πref}[exp(r/λ)]; responses
    may use the room the trainer leaves them, max_length − max_prompt_length tokens.
    """
    from alignlab.training.grpo import distinct_prompts, encode_prompts, sample_and_score

    reference = config.reference_model or config.model
    k = config.params["z_samples"]
    max_new_tokens = config.max_length - config.max_prompt_length
    prompts = distinct_prompts(pairs)  # in prompt_groups' order: first appearance
    key = cache_key("sampled-z", model_fingerprint(reference, cache_dir),
                    model_fingerprint(config.reward_model, cache_dir),
                    hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest(),
                    f"k={k} max_new_tokens={max_new_tokens} max_prompt_length={config.max_prompt_length} "
                    f"seed={config.seed}", config.dtype)

    def compute():
        from alignlab.models.generate import GenerationConfig
        from alignlab.models.score import RewardScorer

        log.info("sampling %d responses for each of %d prompts from %s to estimate Z(x)", k, len(prompts), reference)
        model = policy if reference == config.model else load_causal_lm(reference, config.dtype,
                                                                         config.trust_remote_code)
        tokenizer = load_tokenizer(reference, config.trust_remote_code)
        scorer = RewardScorer(config.reward_model, config.dtype, config.trust_remote_code, config.max_length, device)
        generation = GenerationConfig(max_new_tokens, temperature=1.0, top_p=1.0, batch_size=4 * config.batch_size,
                                      seed=config.seed)
        prompt_ids, _ = encode_prompts(tokenizer, prompts, config.max_prompt_length)
        samples = sample_and_score(model.to(device), tokenizer, scorer, prompts, prompt_ids, k, generation, device,
                                   progress=True)
        return {"rewards": samples.rewards}

    rewards = cached_tensors(cache_dir, "sampled-z", key, compute)[0]["rewards"]
    return sampled_log_z(rewards, config.params["lam"]).float()


# Per generated token, how far the shared-prompt layout's log-probs may stray from the padded
# layout's before a model counts as not honouring custom masks: rounding is ~1e-6 in float32 and
# ~1e-2 in half precision; a model ignoring the mask or the position ids is off by ~0.1 or more.
SHARED_PROMPT_TOLERANCE, SHARED_PROMPT_HALF_TOLERANCE = 1e-3, 5e-2


def shared_prompt_works(model, examples, pad_id: int, device) -> bool:
    """Whether the shared-prompt layout gives this model the padded layout's log-probs.

    It relies on the model taking a custom 4-D attention mask and position ids, which transformers'
    sdpa and eager attention do and flash-attention does not; the check runs both layouts on a few
    pairs, in eval mode, so a model that ignores either falls back to the padded layout."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        log.info("attention implementation %r takes no custom mask: padded pair batches", implementation)
        return False
    sample = examples[:4]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            padded_batch, shared_batch = ({k: v.to(device) for k, v in collate(sample, pad_id).items()}
                                          for collate in (collate_pairs, collate_shared_prompt))
            difference = (batch_logps(model, padded_batch) - batch_logps(model, shared_batch)).abs()
            per_token = (difference / padded_batch["lengths"]).max().item()
    except (RuntimeError, ValueError, TypeError) as err:  # a model that rejects the mask's shape
        log.warning("shared-prompt batches failed on this model (%s): padded pair batches", err)
        return False
    finally:
        model.train(was_training)
    full_precision = model.dtype == torch.float32
    if per_token > (SHARED_PROMPT_TOLERANCE if full_precision else SHARED_PROMPT_HALF_TOLERANCE):
        log.warning("this model does not honour custom attention masks or position ids (log-probs differ "
                    "by %.3g per token between layouts): padded pair batches", per_token)
        return False
    return True


def pair_batch(model, batch: dict, method: Method, reference, rewards, groups, log_z=None) -> PairBatch:
    """Per-sequence quantities of a collated batch: policy log-probs from one forward pass."""
    logps = batch_logps(model, batch)
    index = batch["index"].cpu()
    n = len(index)
    device = logps.device

    def take(table, name):
        return table[name][index].to(device)

    return PairBatch(
        chosen_logps=logps[:n], chosen_lengths=batch["lengths"][:n],
        rejected_logps=logps[n:] if method.uses_rejected else None,
        rejected_lengths=batch["lengths"][n:] if method.uses_rejected else None,
        ref_chosen_logps=take(reference, "chosen") if reference else None,
        ref_rejected_logps=take(reference, "rejected") if reference else None,
        reward_chosen=take(rewards, "chosen") if rewards else None,
        reward_rejected=take(rewards, "rejected") if rewards else None,
        prompt_groups=groups[index].to(device),
        log_z=log_z[groups[index]].to(device) if log_z is not None else None)


def logratio_margin(b: PairBatch) -> torch.Tensor:
    """Chosen-minus-rejected margin shown while training: of log-ratios to the reference when the
    method has one, else of per-token log-probs; NaN when rejected responses are not forwarded."""
    if b.rejected_logps is None:
        return torch.full((), float("nan"), device=b.chosen_logps.device)
    if b.ref_chosen_logps is not None:
        return ((b.chosen_logps - b.ref_chosen_logps) - (b.rejected_logps - b.ref_rejected_logps)).mean()
    return (b.chosen_logps / b.chosen_lengths - b.rejected_logps / b.rejected_lengths).mean()


@dataclass
class FitResult:
    optimizer_steps: int
    pairs_trained: int
    final_loss: float
    final_margin: float
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_trained / self.seconds if self.seconds else float("nan")

    def summary(self, accelerator, loaded, truncation) -> dict:
        """What every trainer's train_summary.json reports."""
        return {"optimizer_steps": self.optimizer_steps, "pairs_trained": self.pairs_trained,
                "final_loss": self.final_loss, "final_margin": self.final_margin,
                "train_seconds": round(self.seconds, 3), "pairs_per_second": self.pairs_per_second,
                "processes": accelerator.num_processes, "data": loaded.summary(),
                "truncation": truncation.summary()}


@dataclass
class TrainResult(FitResult):
    out: Path
    reference_cache_hit: bool | None  # None when the method needs no reference


def make_accelerator(config: OptimConfig):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # cpu=True without an accelerator lets `accelerate launch --multi_gpu` run gloo processes on CPU.
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              cpu=not _has_accelerator())
    set_seed(config.seed)
    return accelerator


def load_training_pairs(config: OptimConfig, source: str | None = None):
    loaded = load_pairs(source or config.data, config.data_format, filter=config.data_filter,
                        preference=config.data_preference, split=config.data_split)
    if not loaded.pairs:
        raise AlignlabError(f"{loaded.source}: no usable pairs ({loaded.summary()})")
    return loaded


def check_enough_for_a_step(config: OptimConfig, accelerator, n: int, what: str = "usable pairs") -> None:
    """One optimizer step takes batch_size × gradient_accumulation_steps × processes examples;
    data with fewer would train on a fraction of a step, or on nothing."""
    needed = config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    if n < needed:
        raise AlignlabError(f"{config.data}: {n} {what}, fewer than one optimizer step takes: batch_size "
                            f"{config.batch_size} × gradient_accumulation_steps {config.gradient_accumulation_steps} "
                            f"× {accelerator.num_processes} processes = {needed}; add data, or lower batch_size or "
                            "gradient_accumulation_steps")


def check_pairs_differ(config: OptimConfig, examples) -> None:
    """A pair whose chosen and rejected tokens are equal has nothing to prefer; when every pair is
    such (e.g. max_length cuts all responses to a shared opening), training would learn nothing."""
    if all(ex.chosen_ids == ex.rejected_ids for ex in examples):
        raise AlignlabError(f"{config.data}: in all {len(examples)} pairs the chosen response has the same tokens as "
                            f"the rejected one after truncation to max_length {config.max_length} (prompts to "
                            f"max_prompt_length {config.max_prompt_length}): there is nothing to prefer; raise "
                            "max_length, or lower max_prompt_length to leave the responses more room")


@dataclass
class LoopState:
    """Where the loop is: enough, with the accelerate state, to resume exactly."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this epoch already trained
    pairs_trained: int = 0
    window_loss: float = 0.0  # sums over the micro-batches since the last logged step
    window_margin: float = 0.0
    window_batches: int = 0
    window_extras: dict = field(default_factory=dict)  # sums of a step function's extra metrics
    metrics_bytes: int = 0  # length of metrics.jsonl at this state


CHECKPOINT = "checkpoint"


def save_checkpoint(accelerator, run_dir: Path, state: LoopState) -> None:
    """Model, optimizer, scheduler and RNG states plus the loop state, as safetensors and JSON only
    (no pickles), replaced whole; see checkpoint.py."""
    from alignlab.training import checkpoint

    checkpoint.save(accelerator, run_dir / CHECKPOINT, dataclasses.asdict(state))


def load_checkpoint(accelerator, run_dir: Path) -> LoopState | None:
    """The last whole checkpoint (`.old` survives a kill between two renames), read without pickle."""
    from alignlab.training import checkpoint

    loop = checkpoint.load(accelerator, run_dir / CHECKPOINT)
    return LoopState(**loop) if loop is not None else None


def fit(config: OptimConfig, accelerator, model, n_examples: int, collate, step_loss, run_dir: Path,
        desc: str, order=None, responses_per_example: int = 1) -> tuple[object, FitResult]:
    """The training loop every trainer shares.

    `collate(indices)` builds a batch whose "index" tensor lists its examples; `step_loss(model,
    batch)` returns (scalar loss, scalar margin), or (loss, margin, extras) where extras is a dict of
    further scalar tensors, averaged over each logging window and logged like the loss. AdamW with a
    transformers schedule (stepped once per optimizer step, so it ignores the process count),
    gradient accumulation and clipping through accelerate, a seeded shuffle per epoch (or
    `order(epoch)`, a list of n_examples indices), a progress bar, one metrics.jsonl line per logged
    step (with `responses_seen` = examples trained × `responses_per_example`, and elapsed seconds),
    and every `checkpoint_steps` a checkpoint in `run_dir` that `resume` continues from exactly.
    Every `snapshot_steps` (and at the last step) the model goes to snapshots/step-NNNNNN/ with
    snapshot.json (step, train_seconds, pairs_seen, responses_seen), the clock paused while it
    saves: the points of a learning curve against wall-clock and samples. `max_steps` ends
    training early. A loss or gradient norm that is not finite ends it with an error naming the
    step, before the optimizer applies it (`check_finite`). Returns the prepared model.
    """
    from transformers import get_scheduler

    is_main = accelerator.is_main_process
    # The fused kernel updates every tensor in one call: 4× faster steps than the per-tensor loop on CPU.
    fused = accelerator.device.type in ("cpu", "cuda") or None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=fused)
    model, optimizer = accelerator.prepare(model, optimizer)
    global_batch = config.batch_size * accelerator.num_processes
    steps_per_epoch = math.ceil(math.ceil(n_examples / global_batch) / config.gradient_accumulation_steps)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_scheduler(config.lr_scheduler, optimizer,
                              num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)
    state = (load_checkpoint(accelerator, run_dir) if config.resume else None) or LoopState()
    metrics_file = None
    if is_main:
        metrics_file = open(run_dir / "metrics.jsonl", "a+", encoding="utf-8")
        metrics_file.truncate(state.metrics_bytes)  # drop lines logged after the checkpoint
        if state.step:
            log.info("resuming at optimizer step %d of %d", state.step, total_steps)
    # `disable` only where it must be off: an explicit False would override TQDM_DISABLE.
    progress = tqdm(total=total_steps, initial=state.step, desc=desc, unit="step",
                    **({} if is_main else {"disable": True}))
    last = {"loss": float("nan"), "margin": float("nan")}
    seconds = 0.0
    start = time.perf_counter()
    model.train()
    # Closed however the loop ends, so that an error is printed below the progress bar, not after it.
    with progress, (metrics_file or contextlib.nullcontext()):
        for epoch in range(state.epoch, config.epochs):
            indices = order(epoch) if order else torch.randperm(
                n_examples, generator=torch.Generator().manual_seed(config.seed + epoch)).tolist()
            loader = accelerator.prepare(DataLoader(indices, batch_size=config.batch_size,
                                                    shuffle=False, collate_fn=collate))
            if state.batches_in_epoch:
                loader = accelerator.skip_first_batches(loader, state.batches_in_epoch)
            for batch in loader:
                with accelerator.accumulate(model):
                    loss, margin, *extras = step_loss(model, batch)
                    accelerator.backward(loss)
                    # Plain floats would force a host sync per micro-batch; tensors sync only when logged.
                    state.window_loss = state.window_loss + loss.detach()
                    grad_norm = None
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                        check_finite(accelerator, state.step + 1, state.window_loss, grad_norm, config, run_dir)
                    optimizer.step()
                    optimizer.zero_grad()
                state.window_margin = state.window_margin + margin.detach()
                for name, value in (extras[0] if extras else {}).items():
                    state.window_extras[name] = state.window_extras.get(name, 0.0) + value.detach()
                state.window_batches += 1
                state.batches_in_epoch += 1
                state.pairs_trained += len(batch["index"]) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state.step += 1
                progress.update(1)
                if state.step % config.logging_steps == 0 or state.step == total_steps:
                    names = ["loss", "margin", *state.window_extras]
                    window = torch.stack([torch.as_tensor(state.window_loss), torch.as_tensor(state.window_margin),
                                          *(torch.as_tensor(v) for v in state.window_extras.values())]).float()
                    reduced = accelerator.reduce(window.to(accelerator.device) / state.window_batches, "mean")
                    last = dict(zip(names, reduced.tolist()))
                    progress.set_postfix(loss=f"{last['loss']:.4f}", margin=f"{last['margin']:.3f}")
                    if metrics_file:
                        record = {"step": state.step, "epoch": epoch, **last,
                                  "learning_rate": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                                  "pairs_seen": state.pairs_trained,
                                  "responses_seen": state.pairs_trained * responses_per_example,
                                  "elapsed_s": round(seconds + time.perf_counter() - start, 3)}
                        metrics_file.write(json.dumps(record) + "\n")
                        metrics_file.flush()
                    state.window_loss, state.window_margin, state.window_batches = 0.0, 0.0, 0
                    state.window_extras = {}
                if config.checkpoint_steps and state.step % config.checkpoint_steps == 0 and state.step < total_steps:
                    state.window_loss, state.window_margin = float(state.window_loss), float(state.window_margin)
                    state.window_extras = {name: float(v) for name, v in state.window_extras.items()}
                    state.metrics_bytes = metrics_file.tell() if metrics_file else 0
                    save_checkpoint(accelerator, run_dir, state)
                if config.snapshot_steps and (state.step % config.snapshot_steps == 0 or state.step == total_steps):
                    paused = time.perf_counter()
                    if is_main:
                        save_snapshot(run_dir, accelerator, model, {
                            "step": state.step, "train_seconds": round(seconds + paused - start, 3),
                            "pairs_seen": state.pairs_trained,
                            "responses_seen": state.pairs_trained * responses_per_example})
                    accelerator.wait_for_everyone()
                    start += time.perf_counter() - paused
                if state.step == total_steps:
                    break
            if state.step == total_steps:
                break
            state.epoch, state.batches_in_epoch = epoch + 1, 0
    seconds += time.perf_counter() - start
    accelerator.wait_for_everyone()
    return model, FitResult(state.step, state.pairs_trained, last["loss"], last["margin"], seconds)


def check_finite(accelerator, step: int, window_loss, grad_norm, config: OptimConfig, run_dir: Path) -> None:
    """Stop at the first optimizer step whose loss or gradient norm is not finite, before the
    optimizer applies it: one host sync per optimizer step. `window_loss`, the sum of the losses
    since the last logged step, is finite exactly when each of them is (a non-finite step would have
    stopped training earlier). The values are summed over processes, so every process stops together."""
    values = torch.stack([torch.as_tensor(window_loss, device=accelerator.device).float(),
                          torch.as_tensor(grad_norm, device=accelerator.device).float()])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "sum")
    loss, norm = values.tolist()
    if math.isfinite(loss) and math.isfinite(norm):
        return
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
    checkpoint = run_dir / CHECKPOINT
    kept = (f"the last good checkpoint is kept in {checkpoint}, for --resume" if checkpoint.exists()
            else "no checkpoint had been saved (checkpoint_steps)")
    raise AlignlabError(f"step {step}: {what} (learning_rate {config.learning_rate:g} may be too high); training "
                        f"stopped and nothing from this run was saved; {kept}")


SNAPSHOTS = "snapshots"


def save_snapshot(run_dir: Path, accelerator, model, point: dict) -> None:
    """The model as it is now, with where training stands, written whole or not at all."""
    (run_dir / SNAPSHOTS).mkdir(exist_ok=True)
    with atomic.staged_dir(run_dir / SNAPSHOTS / f"step-{point['step']:06d}") as staged:
        accelerator.unwrap_model(model).save_pretrained(staged, safe_serialization=True)
        atomic.write_json(staged / "snapshot.json", point)


def save_run(run_dir: Path, accelerator, model, tokenizer, config: OptimConfig, summary: dict) -> None:
    accelerator.unwrap_model(model).save_pretrained(run_dir / "model", safe_serialization=True)
    tokenizer.save_pretrained(run_dir / "model")
    atomic.write_text(run_dir / "config.yaml", dump_yaml(config))
    atomic.write_json(run_dir / "train_summary.json", summary)
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)  # the finished model supersedes it


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


@contextlib.contextmanager
def run_directory(out: Path, accelerator, config: OptimConfig):
    """Training writes into a hidden `.NAME.partial` beside `out`, renamed to `out` when it ends.

    A killed run leaves only the partial directory (with its last checkpoint), which `resume`
    continues from; it must have been started with the same configuration.
    """
    partial = partial_dir(out)
    resolved = dump_yaml(dataclasses.replace(config, resume=False))
    if accelerator.is_main_process:
        if config.resume and (partial / "config.yaml").exists():
            if (partial / "config.yaml").read_text() != resolved:
                raise AlignlabError(f"{partial}: cannot resume: that run was started with a different "
                                    "configuration (compare its config.yaml); rerun without --resume to start over")
        elif partial.exists():
            if marked_kind(partial) is None:
                raise AlignlabError(f"{partial}: exists but was not created by alignlab; move it away, then "
                                    "run again")
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        mark(partial, "training run")
        atomic.write_text(partial / "config.yaml", resolved)
    accelerator.wait_for_everyone()
    yield partial
    if accelerator.is_main_process:
        if out.exists():
            shutil.rmtree(out)  # claim_run_dir allowed it: empty, or alignlab's own with --overwrite
        os.replace(partial, out)


def train(config: TrainConfig) -> TrainResult:
    """Train `config.method` into the run directory `config.out`: GRPO online, the rest offline."""
    config.validate()
    with claim_run_dir(config):
        if get_method(config.method).online:  # samples from the policy as it trains: its own step, the same `fit`
            from alignlab.training.grpo import train_grpo

            return train_grpo(config)
        return train_offline(config)


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
    check_enough_for_a_step(config, accelerator, len(pairs))
    is_main = accelerator.is_main_process
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    examples, truncation = tokenize_pairs(tokenizer, pairs, config.max_length, config.max_prompt_length)
    if method.uses_rejected:
        check_pairs_differ(config, examples)
    if is_main:
        log.info(loaded.summary())
        log.info(truncation.summary())

    model = load_causal_lm(config.model, config.dtype, config.trust_remote_code)
    model.config.use_cache = False
    reference, reference_hit, rewards, log_z = None, None, None, None
    groups = prompt_groups(pairs)
    shared_prompt = method.uses_rejected and shared_prompt_works(model.to(accelerator.device), examples,
                                                                 tokenizer.pad_token_id, accelerator.device)
    with accelerator.main_process_first():  # rank 0 fills the caches; the others then read them
        if method.uses_rewards:  # first: a reward model that cannot load fails before the reference pass
            rewards = pair_rewards(config, pairs, cache_dir, accelerator.device)
        if method.uses_reference:
            reference, reference_hit = reference_logps(config, examples, tokenizer.pad_token_id,
                                                       cache_dir, accelerator.device, model, shared_prompt)
        if sampled_z:
            log_z = sampled_prompt_log_z(config, pairs, cache_dir, accelerator.device, model)

    def collate(indices):
        chunk = [examples[i] for i in indices]
        batch = (collate_shared_prompt(chunk, tokenizer.pad_token_id) if shared_prompt
                 else collate_pairs(chunk, tokenizer.pad_token_id, method.uses_rejected))
        batch["index"] = torch.tensor(indices)
        return batch

    def step_loss(model, batch):
        quantities = pair_batch(model, batch, method, reference, rewards, groups, log_z)
        return method.batch_loss(quantities, **config.params), logratio_margin(quantities)

    setup_seconds = time.perf_counter() - started  # loading, tokenising, rewards, reference log-probs
    with run_directory(out, accelerator, config) as run_dir:
        model, fitted = fit(config, accelerator, model, len(examples), collate, step_loss, run_dir, config.method,
                            responses_per_example=2 if method.uses_rejected else 1)
        if is_main:
            save_run(run_dir, accelerator, model, tokenizer, config, {
                "method": config.method, "params": config.params, **fitted.summary(accelerator, loaded, truncation),
                "setup_seconds": round(setup_seconds, 3), "reference_cache_hit": reference_hit})
    accelerator.wait_for_everyone()
    return TrainResult(**vars(fitted), out=out, reference_cache_hit=reference_hit)


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and xpu.is_available()))


def prompt_groups(pairs) -> torch.Tensor:
    """An integer per pair; pairs with the same prompt share it (VAR's per-prompt normaliser)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(json.dumps(p.prompt, sort_keys=True), len(ids)) for p in pairs])
