"""The registry of training methods: method name -> how the trainer feeds it (`PairBatch` offline,
`GroupBatch` online) and which hyper-parameters it accepts. The losses themselves are the pure
functions of `alignlab.objectives.losses`.

Adding a method: write its loss in `losses`, add a `Method` entry to `METHODS`, add a test. A
method's optional `diagnostics` are logged in metrics.jsonl beside the loss (VAR: weight_entropy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from alignlab.checks import COUNT, NON_NEGATIVE, POSITIVE, Range, check_number
from alignlab.errors import AlignlabError, unknown_name_message
from alignlab.objectives.losses import (dpo_loss, grpo_loss, ln_dpo_loss, sft_loss, simpo_loss, var_loss, var_weights,
                                        weight_entropy)


@dataclass
class PairBatch:
    """Per-sequence quantities of a batch of preference pairs, as the trainer computes them.

    Tensors are shaped (batch,). `rejected_*` are None for methods that do not use rejected
    responses; `ref_*` are None for reference-free methods; `reward_*` are None unless the method
    uses rewards.
    """

    chosen_logps: Tensor
    chosen_lengths: Tensor
    rejected_logps: Tensor | None = None
    rejected_lengths: Tensor | None = None
    ref_chosen_logps: Tensor | None = None
    ref_rejected_logps: Tensor | None = None
    reward_chosen: Tensor | None = None
    reward_rejected: Tensor | None = None
    prompt_groups: Tensor | None = None  # equal for pairs that share a prompt
    log_z: Tensor | None = None  # VAR z_estimator=sampled: log Ẑ of each pair's prompt


@dataclass
class GroupBatch:
    """Per-token quantities of responses sampled online, G per prompt (GRPO), as grpo.py computes
    them: `logps` (policy, with gradient), `old_logps` (the sampling policy), `ref_logps`, `mask`
    (1 on response tokens) shaped (responses, tokens); `advantages` shaped (responses,)."""

    logps: Tensor
    old_logps: Tensor
    ref_logps: Tensor
    advantages: Tensor
    mask: Tensor


@dataclass(frozen=True)
class HyperParameter:
    name: str
    default: float | str | bool
    help: str
    choices: tuple[str, ...] | None = None
    allowed: Range | None = None  # where a number may lie (every number must at least be finite)

    def coerce(self, method: str, value):
        """Check and convert a user value; raise an error naming the parameter and the fix."""
        kind = type(self.default)
        try:
            if kind is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "1", "yes")
                value = bool(value)
            elif kind is int:
                number = float(value)  # accepts 8, 8.0 and "8"; rejects 8.5, nan and inf below
                if isinstance(value, bool) or not number.is_integer():
                    raise ValueError(value)
                value = int(number)
            elif kind is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            wanted = "an integer" if kind is int else f"a {kind.__name__}"
            raise AlignlabError(f"{method}: hyper-parameter '{self.name}' must be {wanted}, "
                                f"got {value!r}; {self.help}") from None
        if self.choices is not None and value not in self.choices:
            raise AlignlabError(f"{method}: hyper-parameter '{self.name}' must be one of "
                                f"{', '.join(self.choices)}; got {value!r}")
        if kind in (int, float):
            check_number(method, f"hyper-parameter '{self.name}'", value,
                         self.allowed or Range(integer=kind is int), self.help)
        return value


@dataclass(frozen=True)
class Method:
    name: str
    batch_loss: Callable[..., Tensor]  # (PairBatch or GroupBatch, **hyper-parameters) -> scalar loss
    summary: str
    hyperparameters: tuple[HyperParameter, ...] = field(default_factory=tuple)
    uses_rejected: bool = True
    uses_reference: bool = False
    uses_rewards: bool = False
    online: bool = False  # samples its own responses while training (grpo.py); the data gives prompts
    # (batch, **hyper-parameters) -> {name: scalar tensor}: what the trainer logs beside the loss
    diagnostics: Callable[..., dict[str, Tensor]] | None = None

    def resolve(self, given: dict) -> dict:
        """Defaults overridden by `given`; unknown names are errors suggesting the closest valid one."""
        valid = {hp.name: hp for hp in self.hyperparameters}
        for name in given:
            if name not in valid:
                raise AlignlabError(unknown_name_message(f"{self.name}: unknown hyper-parameter", name,
                                                         list(valid)))
        return {name: hp.coerce(self.name, given.get(name, hp.default)) for name, hp in valid.items()}


def _var_terms(b: PairBatch, z_estimator: str) -> dict:
    # Chosen and rejected responses are all samples of the offline data, each with its own reward.
    # The "prompt" normaliser pools every response to the same prompt within the micro-batch;
    # "sampled" divides by the precomputed per-prompt Ẑ (z_samples only sets how the trainer
    # estimates it). Both average the per-prompt losses over the prompts of the micro-batch.
    group_ids, n_groups, log_z = None, 1, None
    if z_estimator in ("prompt", "sampled"):
        groups = b.prompt_groups if b.prompt_groups is not None else torch.arange(
            b.chosen_logps.shape[0], device=b.chosen_logps.device)
        n_groups = int(torch.unique(groups).numel())
        if z_estimator == "prompt":
            group_ids = torch.cat([groups, groups])
        elif b.log_z is None:
            raise ValueError("var: z_estimator 'sampled' needs PairBatch.log_z (the trainer computes it)")
        else:
            log_z = torch.cat([b.log_z, b.log_z])
    return {"logps": torch.cat([b.chosen_logps, b.rejected_logps]),
            "ref_logps": torch.cat([b.ref_chosen_logps, b.ref_rejected_logps]),
            "rewards": torch.cat([b.reward_chosen, b.reward_rejected]), "group_ids": group_ids,
            "lengths": torch.cat([b.chosen_lengths, b.rejected_lengths]), "log_z": log_z, "n_groups": n_groups}


def _var_batch_loss(b: PairBatch, lam: float, z_estimator: str, length_normalize: bool,
                    z_samples: int = 8) -> Tensor:
    terms = _var_terms(b, z_estimator)
    per_sample = var_loss(terms["logps"], terms["ref_logps"], terms["rewards"], lam, terms["group_ids"],
                          terms["lengths"], length_normalize, terms["log_z"])
    return per_sample.sum() / terms["n_groups"]


def _var_diagnostics(b: PairBatch, lam: float, z_estimator: str, length_normalize: bool,
                     z_samples: int = 8) -> dict[str, Tensor]:
    terms = _var_terms(b, z_estimator)
    weights = var_weights(terms["ref_logps"], terms["rewards"], lam, terms["group_ids"], terms["lengths"],
                          length_normalize, terms["log_z"])
    return {"weight_entropy": weight_entropy(weights)}


def _grpo_batch_loss(b: GroupBatch, beta: float, clip_eps: float, **sampling) -> Tensor:
    # G, temperature, max_new_tokens and num_iterations steer sampling in grpo.py, not the loss.
    return grpo_loss(b.logps, b.old_logps, b.ref_logps, b.advantages, b.mask, clip_eps, beta).mean()


METHODS: dict[str, Method] = {
    "sft": Method(
        "sft", lambda b: sft_loss(b.chosen_logps, b.chosen_lengths).mean(),
        "token-mean NLL on chosen responses", uses_rejected=False),
    "dpo": Method(
        "dpo", lambda b, beta: dpo_loss(b.chosen_logps, b.rejected_logps, b.ref_chosen_logps,
                                        b.ref_rejected_logps, beta).mean(),
        "Direct Preference Optimisation",
        (HyperParameter("beta", 0.1, "KL strength β (0.01–0.5 is typical)", allowed=POSITIVE),),
        uses_reference=True),
    "ln-dpo": Method(
        "ln-dpo", lambda b, beta: ln_dpo_loss(b.chosen_logps, b.rejected_logps, b.ref_chosen_logps,
                                              b.ref_rejected_logps, b.chosen_lengths,
                                              b.rejected_lengths, beta).mean(),
        "length-normalised DPO",
        (HyperParameter("beta", 2.0, "β on per-token log-ratios (1–10 is typical)", allowed=POSITIVE),),
        uses_reference=True),
    "simpo": Method(
        "simpo", lambda b, beta, gamma: simpo_loss(b.chosen_logps, b.rejected_logps, b.chosen_lengths,
                                                   b.rejected_lengths, beta, gamma).mean(),
        "reference-free, length-normalised margin loss",
        (HyperParameter("beta", 2.0, "β on per-token log-probs (2–10 is typical)", allowed=POSITIVE),
         HyperParameter("gamma", 1.0, "target margin γ (γ/β of 0.3–0.8 is typical)"))),
    "var": Method(
        "var", _var_batch_loss, "reward-weighted SFT (variational alignment)",
        (HyperParameter("lam", 1.0, "temperature λ of the reward in exp(r/λ)", allowed=POSITIVE),
         HyperParameter("z_estimator", "batch", "normaliser of the weights: the micro-batch, the "
                        "responses to one prompt, or Z(x) sampled from the reference",
                        choices=("batch", "prompt", "sampled")),
         # Default True: on the study world its weights are steadier and its reward less λ-sensitive
         # than with the paper's summed ℓref (README, Objectives, and the VAR study's section 9).
         HyperParameter("length_normalize", True, "use ℓref/|y| instead of the summed ℓref in the weights"),
         HyperParameter("z_samples", 8, "K: responses per prompt sampled from the reference to "
                        "estimate Z(x) (z_estimator=sampled)", allowed=COUNT)),
        uses_reference=True, uses_rewards=True, diagnostics=_var_diagnostics),
    "grpo": Method(
        "grpo", _grpo_batch_loss, "online: G sampled responses per prompt, group-relative advantages",
        (HyperParameter("group_size", 8, "G, responses sampled per prompt (4–16 is typical); the advantages "
                        "compare the responses to one prompt, so at least 2", allowed=Range(2, integer=True)),
         HyperParameter("beta", 0.04, "β_KL, weight of the k3 KL penalty to the reference", allowed=NON_NEGATIVE),
         HyperParameter("clip_eps", 0.2, "clip ε of the ratio π/π_old; the ratio is kept in [1 − ε, 1 + ε], "
                        "so ε < 1", allowed=Range(0, 1, exclusive_min=True, exclusive_max=True)),
         HyperParameter("temperature", 1.0, "sampling temperature", allowed=POSITIVE),
         HyperParameter("max_new_tokens", 64, "longest sampled response, in tokens", allowed=COUNT),
         HyperParameter("num_iterations", 1, "μ, optimizer passes over each sampled batch (the clip "
                        "acts only when > 1)", allowed=COUNT)),
        uses_rejected=False, uses_reference=True, uses_rewards=True, online=True),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise AlignlabError(unknown_name_message("unknown method", name, list(METHODS)))
    return METHODS[name]
