"""The training loop every trainer shares (offline objectives, GRPO, reward models), and the run
directory it writes.

Multi-device runs go through `accelerate launch`: each process takes its share of every global batch.

A run directory (outputs.py) holds, as TRL's output_dir does, the final model (save_pretrained,
safetensors; a LoRA run's adapter) with its tokenizer at its root, also in model/, and
checkpoint-N/ folders (checkpoint.py); config.yaml (resolved), metrics.jsonl (one line per logged
optimizer step, and one per evaluation: its keys prefixed `eval_`), train_summary.json, with
save_merged model-merged/ and, with `report_to tensorboard`, tracking/RUN_NAME/ (the same numbers
as tensorboard event files). It is written to a hidden temp directory and renamed into place when
training finishes, so a failed or killed run never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from alignlab.config import OptimConfig
from alignlab.data.options import data_options
from alignlab.data.pairs import load_pairs
from alignlab.errors import AlignlabError
from alignlab.output_dirs import claim_output_dir
from alignlab.training import checkpoint
from alignlab.training.batching import IndexDataset, epoch_generator, in_batches, shuffled
from alignlab.training.host_memory import return_freed_memory
from alignlab.training.outputs import partial_dir, save_snapshot
from alignlab.training.tracking import TRACKING, tracking
from alignlab.training.trl_metrics import check_eval_settings, eval_due, postfix

log = logging.getLogger(__name__)


def make_accelerator(config: OptimConfig):
    """The run's Accelerator: gradient accumulation, `mixed_precision` (autocast over float32 master
    weights), the CPU when no accelerator is present, and the tracker `report_to` names (config.validate
    checked its package), logging to the run directory's `tracking/` folder inside the hidden partial
    directory while training (`run_directory`), so the logs are renamed with the run. Refuses
    checkpoints under FSDP/DeepSpeed."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, set_seed

    if config.mixed_precision == "fp16" and not _has_accelerator():
        # accelerate leaves fp16 autocast off on the CPU without a word: the run would be float32.
        raise AlignlabError("config: mixed_precision fp16 needs a GPU (on the CPU accelerate does not autocast to "
                            "float16 and the run would silently be float32); use mixed_precision bf16 on the CPU")
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched and launched != config.mixed_precision:
        log.warning("accelerate launch asked for mixed precision %r; the run's mixed_precision %r wins "
                    "(set it with --mixed_precision)", launched, config.mixed_precision)
    # accelerate keeps one state per process and refuses a second Accelerator of another precision;
    # runs one after another in a process (a study's in-process runs, tests) may differ in it. The
    # process group (PartialState) is kept.
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != config.mixed_precision:
        AcceleratorState._reset_state()
    # cpu=True without an accelerator lets `accelerate launch --multi_gpu` run gloo processes on CPU.
    tracked = config.report_to != "none"
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              mixed_precision=config.mixed_precision, cpu=not _has_accelerator(),
                              log_with=config.report_to if tracked else None,
                              project_dir=str(partial_dir(Path(config.out)) / TRACKING) if tracked else None)
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                               DistributedType.MEGATRON_LM)
    if sharded and (saves_checkpoints(config) or config.resume):
        # Our checkpoints hold whole tensors; a sharded optimizer's state would need accelerate's
        # Accelerator.save_state/load_state, which write pickles (torch.save) that loading would run.
        raise AlignlabError(f"config: checkpoint_steps/resume work on one device and under DDP, not under "
                            f"{accelerator.distributed_type.value}: its sharded state needs accelerate's "
                            "Accelerator.save_state/load_state, whose pickles alignlab does not load; set "
                            "checkpoint_steps 0 and resume false (snapshot_steps still saves the model)")
    set_seed(config.seed)
    return accelerator


def saves_checkpoints(config: OptimConfig) -> bool:
    return config.save_strategy != "no" and config.checkpoint_steps > 0


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and xpu.is_available()))



@dataclass
class FitResult:
    optimizer_steps: int
    pairs_trained: int
    final_loss: float
    final_margin: float
    seconds: float
    time_to_first_step_seconds: float | None  # from the trainer's start; None when this call took no step

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_trained / self.seconds if self.seconds else float("nan")

    def summary(self, accelerator, loaded, truncation) -> dict:
        """What every trainer's train_summary.json reports."""
        return {"optimizer_steps": self.optimizer_steps, "pairs_trained": self.pairs_trained,
                "final_loss": self.final_loss, "final_margin": self.final_margin,
                "train_seconds": round(self.seconds, 3), "pairs_per_second": self.pairs_per_second,
                "time_to_first_step_seconds": (None if self.time_to_first_step_seconds is None
                                               else round(self.time_to_first_step_seconds, 3)),
                "processes": accelerator.num_processes, "data": loaded.summary(),
                "truncation": truncation.summary()}


@dataclass
class TrainResult(FitResult):
    out: Path
    reference_cache_hit: bool | None  # None when the method needs no reference



def run_inputs(config: OptimConfig) -> list[str | None]:
    """The paths a training run reads: its output may be none of them, nor hold one."""
    return [config.model, config.data, getattr(config, "reference_model", None),
            getattr(config, "reward_model", None), getattr(config, "eval_data", None), config.cache_dir]


def claim_run_dir(config: OptimConfig):
    """The run directory `config.out`, checked before any work and locked until training ends
    (see alignlab.output_dirs): a training run replaces the whole directory it writes."""
    return claim_output_dir(config.out, overwrite=config.overwrite, inputs=run_inputs(config))



def load_training_pairs(config: OptimConfig, source: str | None = None, split: str | None = None):
    """The pairs of `source` (default: config.data) and `split` (default: data_split), read with the
    config's dataset options."""
    loaded = load_pairs(source or config.data, config.data_format, filter=config.data_filter,
                        preference=config.data_preference, split=split or config.data_split,
                        **data_options(vars(config)))
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


def fit(config: OptimConfig, accelerator, model, n_examples: int, collate, step_loss, run_dir: Path,
        desc: str, *, started: float, batches=None, responses_per_example: int = 1, evaluate=None,
        tokenizer=None) -> tuple[object, FitResult]:
    """The training loop every trainer shares.

    `collate(indices)` builds a batch whose "index" tensor lists its examples; `step_loss(model,
    batch)` returns (scalar loss, scalar margin), or (loss, margin, extras) where extras is a dict of
    further scalar tensors (TRL's rewards/... and logps/..., a method's diagnostics), averaged over
    each logging window and logged like the loss. AdamW (`make_optimizer`) with a transformers
    schedule (stepped once per optimizer step, so it ignores the process count), gradient
    accumulation and clipping through accelerate, a seeded shuffle per epoch cut into micro-batches
    of batch_size (or `batches(epoch)`, the epoch's micro-batches as lists of indices), fractional
    `epochs` training that share of the last epoch's steps (TRL's count), a progress bar, one
    metrics.jsonl line per logged step (with `responses_seen` = examples trained ×
    `responses_per_example`, and elapsed seconds), each line's numbers also sent to the `report_to`
    tracker at its step (`tracking`). With `eval_strategy` steps or epoch, `evaluate(model)`
    (trl_metrics.HeldOut) runs before the first step, every `eval_steps` steps or at each epoch's
    end, its numbers logged as a line of their own under TRL's `eval_` names, the clock paused.
    Every `checkpoint_steps` (`save_strategy` steps) a loadable checkpoint-N/ in `run_dir` with
    `tokenizer` (default: the model's, as the trainers load it) that `resume` continues from exactly,
    the oldest beyond `save_total_limit` removed (checkpoint.py: safetensors and JSON only).
    Every `snapshot_steps` (and at the last step) the model goes to snapshots/step-NNNNNN/ with
    snapshot.json (step, train_seconds, pairs_seen, responses_seen), the clock paused while it
    saves: the points of a learning curve against wall-clock and samples. `max_steps` ends
    training early. A loss or gradient norm that is not finite ends it with an error naming the
    step, before the optimizer applies it (`check_finite`). `started` is the trainer's
    `time.perf_counter()` when it began (loading, tokenising, the reference pass): the result's
    `time_to_first_step_seconds` runs from it to the end of the first optimizer step this call takes
    (a resumed run's first after resuming). Returns the prepared model.
    """
    from transformers import get_scheduler

    check_eval_settings(config, supported=evaluate is not None)
    is_main = accelerator.is_main_process
    model, optimizer = accelerator.prepare(model, make_optimizer(config, accelerator, model))
    return_freed_memory(model)  # a large model's freed activations leave resident memory (host_memory)

    def epoch_batches(epoch: int) -> list[list[int]]:
        if batches:
            return batches(epoch)
        return in_batches(shuffled(n_examples, epoch_generator(config, epoch)), config.batch_size)

    total_steps = planned_steps(config, epoch_batches, accelerator.num_processes)
    warmup = config.warmup_steps if config.warmup_steps > 0 else int(config.warmup_ratio * total_steps)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup,
                              num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)
    saved = checkpoint.latest(run_dir) if config.resume else None  # `.old` survives a kill
    resumed = checkpoint.load(accelerator, saved) if saved else None
    state = LoopState(**resumed) if resumed else LoopState()
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
    clock = {"seconds": 0.0, "start": time.perf_counter(), "eval_loss": None, "first_step": None}

    def write(record: dict, tracked: dict) -> None:
        if metrics_file:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        accelerator.log(tracked, step=record["step"])

    def held_out(epoch: int) -> None:  # the clock paused, as for snapshots
        paused = time.perf_counter()
        measured = {f"eval_{name}": value for name, value in evaluate(model).items()}
        measured["eval_runtime"] = round(time.perf_counter() - paused, 3)
        write({"step": state.step, "epoch": epoch, **measured}, measured)
        clock["eval_loss"] = measured["eval_loss"]
        progress.set_postfix(postfix(last, clock["eval_loss"]))
        clock["start"] += time.perf_counter() - paused

    model.train()
    # Closed however the loop ends, so that an error is printed below the progress bar, not after it.
    with progress, (metrics_file or contextlib.nullcontext()), tracking(config, accelerator, state.step):
        if evaluate and state.step == 0 and config.eval_strategy != "no":
            held_out(0)
        for epoch in range(state.epoch, math.ceil(config.epochs)):
            # Its own generator: a DataLoader draws a seed from the global one each time it is iterated,
            # and a resumed run iterates where the uninterrupted one did not, which would shift every
            # later dropout mask.
            loader = accelerator.prepare(DataLoader(IndexDataset(n_examples), batch_sampler=epoch_batches(epoch),
                                                    collate_fn=collate,
                                                    generator=epoch_generator(config, epoch)))
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
                if clock["first_step"] is None:
                    clock["first_step"] = time.perf_counter() - started
                progress.update(1)
                if state.step % config.logging_steps == 0 or state.step == total_steps:
                    names = ["loss", "margin", *state.window_extras]
                    window = torch.stack([torch.as_tensor(state.window_loss), torch.as_tensor(state.window_margin),
                                          *(torch.as_tensor(v) for v in state.window_extras.values())]).float()
                    reduced = accelerator.reduce(window.to(accelerator.device) / state.window_batches, "mean")
                    last = dict(zip(names, reduced.tolist()))
                    progress.set_postfix(postfix(last, clock["eval_loss"]))
                    record = {"step": state.step, "epoch": epoch, **last,
                              "learning_rate": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                              "pairs_seen": state.pairs_trained,
                              "responses_seen": state.pairs_trained * responses_per_example,
                              "elapsed_s": round(clock["seconds"] + time.perf_counter() - clock["start"], 3)}
                    write(record, {k: v for k, v in record.items() if k != "step"})
                    state.window_loss, state.window_margin, state.window_batches = 0.0, 0.0, 0
                    state.window_extras = {}
                if evaluate and eval_due(config, state.step):
                    held_out(epoch)
                if saves_checkpoints(config) and state.step % config.checkpoint_steps == 0 and state.step < total_steps:
                    state.window_loss, state.window_margin = float(state.window_loss), float(state.window_margin)
                    state.window_extras = {name: float(v) for name, v in state.window_extras.items()}
                    state.metrics_bytes = metrics_file.tell() if metrics_file else 0
                    if tokenizer is None:  # as the trainers load it for model/
                        from alignlab.models.loading import load_tokenizer

                        tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.revision)
                    checkpoint.save(accelerator, checkpoint.step_dir(run_dir, state.step), dataclasses.asdict(state),
                                    tokenizer)
                    if is_main:
                        checkpoint.prune(run_dir, config.save_total_limit)
                if config.snapshot_steps and (state.step % config.snapshot_steps == 0 or state.step == total_steps):
                    paused = time.perf_counter()
                    save_snapshot(run_dir, accelerator, model, {
                        "step": state.step, "train_seconds": round(clock["seconds"] + paused - clock["start"], 3),
                        "pairs_seen": state.pairs_trained,
                        "responses_seen": state.pairs_trained * responses_per_example})
                    accelerator.wait_for_everyone()
                    clock["start"] += time.perf_counter() - paused
                if state.step == total_steps:
                    break
            if evaluate and config.eval_strategy == "epoch":
                held_out(epoch)
            if state.step == total_steps:
                break
            state.epoch, state.batches_in_epoch = epoch + 1, 0
    seconds = clock["seconds"] + time.perf_counter() - clock["start"]
    accelerator.wait_for_everyone()
    return model, FitResult(state.step, state.pairs_trained, last["loss"], last["margin"], seconds,
                            clock["first_step"])



def make_optimizer(config: OptimConfig, accelerator, model):
    """AdamW over what trains (a LoRA run's frozen base holds no optimizer state), with the config's
    betas, epsilon and weight decay. `adamw_torch_fused` (the default) takes the fused kernel where
    torch has one (CPU and CUDA: it updates every tensor in one call, 4× faster steps than the
    per-tensor loop on CPU; the same update, to rounding), `adamw_torch` torch's per-tensor loop, as
    TRL's optim names them."""
    fused = config.optim == "adamw_torch_fused" and accelerator.device.type in ("cpu", "cuda")
    trained = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trained, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_epsilon, weight_decay=config.weight_decay, fused=fused)


def steps_per_epoch(config: OptimConfig, epoch_batches, processes: int) -> list[int]:
    """Optimizer steps of the run in each epoch it trains in: each process takes every processes-th
    micro-batch (the last round topped up from the start); a fractional `epochs` trains that share of
    its last epoch's steps, rounded up, as TRL counts them; `max_steps` caps their sum."""
    def steps_in(epoch: int) -> int:
        return math.ceil(math.ceil(len(epoch_batches(epoch)) / processes) / config.gradient_accumulation_steps)

    whole = math.floor(config.epochs)
    steps = [steps_in(epoch) for epoch in range(whole)]
    if config.epochs > whole:
        steps.append(math.ceil((config.epochs - whole) * steps_in(whole)))
    if not config.max_steps:
        return steps
    capped, left = [], config.max_steps
    for count in steps:
        if left == 0:
            break
        capped.append(min(count, left))
        left -= capped[-1]
    return capped


def planned_steps(config: OptimConfig, epoch_batches, processes: int) -> int:
    """Optimizer steps of the run (`steps_per_epoch`)."""
    return sum(steps_per_epoch(config, epoch_batches, processes))


def trained_examples(config: OptimConfig, epoch_batches, processes: int) -> list[int]:
    """The examples the run trains on, sorted: in each epoch, the micro-batches of its steps there
    (`steps_per_epoch`); an optimizer step takes gradient_accumulation_steps micro-batches per process,
    the processes taking consecutive ones. A run with `max_steps` trains on only the first of them."""
    trained = set()
    for epoch, steps in enumerate(steps_per_epoch(config, epoch_batches, processes)):
        for batch in epoch_batches(epoch)[:steps * config.gradient_accumulation_steps * processes]:
            trained.update(batch)
    return sorted(trained)


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
    saved = checkpoint.latest(run_dir)
    kept = (f"the last good checkpoint is kept in {saved}, for --resume" if saved
            else "no checkpoint had been saved (checkpoint_steps)")
    raise AlignlabError(f"step {step}: {what} (learning_rate {config.learning_rate:g} may be too high); training "
                        f"stopped and nothing from this run was saved; {kept}")
