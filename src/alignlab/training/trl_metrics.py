"""TRL's training signal: the reward metrics TRL's DPOTrainer logs, from the per-sequence log-probs
the trainer already has (no further forward pass), and the objective evaluated on held-out pairs
while training (`eval_strategy`), logged under TRL's `eval_` names.

    rewards/chosen       β·mean(log π(y_w) − log πref(y_w))       (methods with a reference)
    rewards/rejected     β·mean(log π(y_l) − log πref(y_l))
    rewards/accuracies   share of pairs whose chosen reward is above the rejected one
    rewards/margins      mean(chosen reward − rejected reward)
    logps/chosen         mean summed log-prob of the chosen responses (every method)
    logps/rejected       mean summed log-prob of the rejected responses (methods that forward them)

β is the method's `beta`; VAR's λ (its optimum π ∝ πref·exp(r/λ) makes r = λ·log π/πref + const).
An unpaired method's (KTO's) rejected slot holds no response of the data: it logs logps/chosen only.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from alignlab.errors import AlignlabError
from alignlab.objectives.registry import Method, PairBatch

def reward_scale(method: Method, params: dict) -> float | None:
    """β of the implicit reward β·log π/πref; None for a method without a reference or rejected responses."""
    if not (method.uses_reference and method.uses_rejected):
        return None
    return float(params.get("beta", params.get("lam", 1.0)))


def preference_metrics(b: PairBatch, beta: float | None) -> dict[str, torch.Tensor]:
    """TRL's names for a batch's rewards and log-probs (see the module docstring), as device scalars."""
    chosen_logps = b.chosen_logps.detach().float()
    metrics = {"logps/chosen": chosen_logps.mean()}
    if b.labels is not None or b.rejected_logps is None:
        return metrics
    rejected_logps = b.rejected_logps.detach().float()
    if beta is not None and b.ref_chosen_logps is not None:
        chosen = beta * (chosen_logps - b.ref_chosen_logps.float())
        rejected = beta * (rejected_logps - b.ref_rejected_logps.float())
        metrics = {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
                   "rewards/accuracies": (chosen > rejected).float().mean(),
                   "rewards/margins": (chosen - rejected).mean(), **metrics}
    metrics["logps/rejected"] = rejected_logps.mean()
    return metrics


def postfix(last: dict, eval_loss: float | None) -> dict[str, str]:
    """The progress bar's short view of the last logged step (and the last evaluation); NaN (no step
    logged yet, SFT's margin) is left out."""
    shown = {"loss": (last["loss"], ".4f"), "margin": (last["margin"], ".3f"),
             "acc": (last.get("rewards/accuracies", math.nan), ".2f"),
             "eval_loss": (math.nan if eval_loss is None else eval_loss, ".4f")}
    return {name: format(value, spec) for name, (value, spec) in shown.items() if not math.isnan(value)}


def check_eval_settings(config, supported: bool = True) -> None:
    """Before any work: `eval_strategy` other than no needs held-out pairs (`eval_data`, or
    `eval_split` of a dataset that has splits, other than the training split) and a trainer that
    evaluates (the offline methods)."""
    strategy = config.eval_strategy  # one of config.EVAL_STRATEGIES: the config's validate checked it
    if strategy == "no":
        return
    if not supported:
        raise AlignlabError(f"config: eval_strategy {strategy}: evaluation during training is done for the offline "
                            "methods (sft, dpo, ln-dpo, simpo, var, ...); set eval_strategy no")
    if config.eval_data:
        return
    if not config.eval_split:
        raise AlignlabError(f"config: eval_strategy {strategy} evaluates on held-out pairs and none are given: pass "
                            "--eval_data PATH, or --eval_split SPLIT (TRL's dataset_test_split) of a dataset with "
                            "splits, or set eval_strategy no")
    source = Path(config.data).expanduser()
    if source.is_file() or (source.is_dir() and not (source / "dataset_dict.json").is_file()):
        raise AlignlabError(f"config: eval_split {config.eval_split!r} names a split, and {config.data} has none (a "
                            "file or a saved Dataset is read whole): pass the held-out pairs as --eval_data PATH")
    if config.eval_split == config.data_split:
        raise AlignlabError(f"config: eval_split {config.eval_split!r} is the training split (data_split): "
                            "evaluate on held-out pairs, e.g. --eval_split test")


def eval_due(config, step: int) -> bool:
    """Whether `eval_strategy steps` evaluates after optimizer step `step` (step 0: before training)."""
    every = config.eval_steps or config.logging_steps
    return config.eval_strategy == "steps" and step % every == 0


class HeldOut:
    """The training objective on held-out pairs, without gradients, the model in eval mode.

    `collate(indices)` and `step(model, batch)` are the trainer's own (step returns loss, margin and
    a dict of further metrics), over the held-out pairs' tables (reference log-probs cached as
    training's are). Each process takes every num_processes-th batch (a process short of one runs a
    batch weighted 0, so collective forwards stay matched); the numbers are means over the pairs.
    """

    def __init__(self, accelerator, sizes: list[int], collate, step, batch_size: int):
        order = sorted(range(len(sizes)), key=sizes.__getitem__)  # similar lengths together: less padding
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.accelerator, self.collate, self.step = accelerator, collate, step

    def __call__(self, model) -> dict[str, float]:
        accelerator = self.accelerator
        processes, rank = accelerator.num_processes, accelerator.process_index
        was_training = model.training
        model.eval()
        names, sums, count = None, None, torch.zeros((), device=accelerator.device)
        try:
            with torch.no_grad():
                for round_ in range(math.ceil(len(self.batches) / processes)):
                    i = round_ * processes + rank
                    indices = self.batches[i] if i < len(self.batches) else self.batches[0]
                    weight = float(len(indices)) if i < len(self.batches) else 0.0
                    batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v
                             for k, v in self.collate(indices).items()}
                    loss, margin, *extras = self.step(model, batch)
                    extras = extras[0] if extras else {}
                    names = ["loss", "margin", *extras]
                    values = torch.stack([loss.detach(), margin.detach(), *extras.values()]).float() * weight
                    sums = values if sums is None else sums + values
                    count = count + weight
        finally:
            model.train(was_training)
        totals = accelerator.reduce(torch.cat([sums, count[None]]), "sum").tolist()
        return {name: total / totals[-1] for name, total in zip(names, totals)}
