"""Training objectives as pure functions of per-sequence quantities (SPEC §3).

Notation: ℓθ(y) is the summed log-prob of the response tokens under the policy, ℓref the same under
the frozen reference, |y| the response length in tokens, w = chosen, l = rejected, σ the logistic
function. Every loss returns one value per example (unreduced); the registry at the bottom says how
a method's batch loss is reduced and which hyper-parameters it takes.

Adding a method: write its loss here, add a `Method` entry to `METHODS`, add a test.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.errors import AlignlabError


def sft_loss(chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Token-mean negative log-likelihood of the chosen response: −ℓθ(y_w) / |y_w|."""
    return -chosen_logps / chosen_lengths


def dpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float) -> Tensor:
    """DPO: −log σ(β[(ℓθ(y_w) − ℓref(y_w)) − (ℓθ(y_l) − ℓref(y_l))])."""
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def ln_dpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
                beta: float) -> Tensor:
    """Length-normalised DPO: −log σ(β[(ℓθ(y_w) − ℓref(y_w))/|y_w| − (ℓθ(y_l) − ℓref(y_l))/|y_l|])."""
    margin = ((chosen_logps - ref_chosen_logps) / chosen_lengths
              - (rejected_logps - ref_rejected_logps) / rejected_lengths)
    return -F.logsigmoid(beta * margin)


def simpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths: Tensor,
               rejected_lengths: Tensor, beta: float, gamma: float) -> Tensor:
    """SimPO (reference-free): −log σ(β ℓθ(y_w)/|y_w| − β ℓθ(y_l)/|y_l| − γ)."""
    logits = beta * (chosen_logps / chosen_lengths - rejected_logps / rejected_lengths) - gamma
    return -F.logsigmoid(logits)


def var_weights(ref_logps: Tensor, rewards: Tensor, lam: float, group_ids: Tensor | None = None,
                lengths: Tensor | None = None, length_normalize: bool = False) -> Tensor:
    """VAR importance weights, a softmax in log space within each normaliser group:

        ω_i = exp(ℓref(y_i) + r_i/λ) / Σ_{j ∈ G(i)} exp(ℓref(y_j) + r_j/λ)

    G(i) is the whole batch when `group_ids` is None (the paper's in-batch Z estimator), otherwise
    the examples sharing i's group id (e.g. the responses to one prompt). With `length_normalize`,
    ℓref(y)/|y| replaces ℓref(y). The weights carry no gradient and sum to one per group.

    Weights below √(smallest normal number) of the working dtype (1.1e-19 in float32) are set to 0:
    such a sample's share of the gradient is below float32 resolution, and the denormal gradients
    it would produce make a CPU backward pass ~20× slower.
    """
    ref_logps = ref_logps.detach()
    if length_normalize:
        if lengths is None:
            raise ValueError("var_weights: length_normalize=True needs lengths")
        ref_logps = ref_logps / lengths
    scores = (ref_logps + rewards.detach() / lam).to(torch.float64)
    if group_ids is None:
        weights = torch.softmax(scores, dim=0)
    else:
        _, group_index = torch.unique(group_ids, return_inverse=True)
        n_groups = int(group_index.max()) + 1
        group_max = torch.full((n_groups,), -torch.inf, dtype=scores.dtype, device=scores.device)
        group_max = group_max.scatter_reduce(0, group_index, scores, reduce="amax")
        shifted = torch.exp(scores - group_max[group_index])
        group_sum = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device)
        group_sum = group_sum.index_add(0, group_index, shifted)
        weights = shifted / group_sum[group_index]
    weights = weights.to(ref_logps.dtype)
    return torch.where(weights < torch.finfo(weights.dtype).tiny ** 0.5, 0.0, weights)


def var_loss(logps: Tensor, ref_logps: Tensor, rewards: Tensor, lam: float,
             group_ids: Tensor | None = None, lengths: Tensor | None = None,
             length_normalize: bool = False) -> Tensor:
    """VAR (reward-weighted SFT from the closed-form RLHF optimum): ω_i · (−ℓθ(y_i)).

    Summed over a normaliser group this is −Σ_i ω_i ℓθ(y_i), the group's loss; ω as in `var_weights`.
    """
    weights = var_weights(ref_logps, rewards, lam, group_ids, lengths, length_normalize)
    return weights * -logps


# --------------------------------------------------------------------------------------------
# Registry: method name -> how the trainer feeds it and which hyper-parameters it accepts.


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


@dataclass(frozen=True)
class HyperParameter:
    name: str
    default: float | str | bool
    help: str
    choices: tuple[str, ...] | None = None
    positive: bool = False

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
            elif kind is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise AlignlabError(f"{method}: hyper-parameter '{self.name}' must be a {kind.__name__}, "
                                f"got {value!r}; {self.help}") from None
        if kind is float and not math.isfinite(value):
            raise AlignlabError(f"{method}: hyper-parameter '{self.name}' must be a finite number, got {value}")
        if self.choices is not None and value not in self.choices:
            raise AlignlabError(f"{method}: hyper-parameter '{self.name}' must be one of "
                                f"{', '.join(self.choices)}; got {value!r}")
        if self.positive and not value > 0:
            raise AlignlabError(f"{method}: hyper-parameter '{self.name}' must be > 0, got {value}")
        return value


@dataclass(frozen=True)
class Method:
    name: str
    batch_loss: Callable[..., Tensor]  # (PairBatch, **hyper-parameters) -> scalar loss
    summary: str
    hyperparameters: tuple[HyperParameter, ...] = field(default_factory=tuple)
    uses_rejected: bool = True
    uses_reference: bool = False
    uses_rewards: bool = False

    def resolve(self, given: dict) -> dict:
        """Defaults overridden by `given`; unknown names are errors suggesting the closest valid one."""
        valid = {hp.name: hp for hp in self.hyperparameters}
        for name in given:
            if name not in valid:
                raise AlignlabError(unknown_name_message(f"{self.name}: unknown hyper-parameter", name,
                                                         list(valid)))
        return {name: hp.coerce(self.name, given.get(name, hp.default)) for name, hp in valid.items()}


def unknown_name_message(what: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(valid) if valid else "(none)"
    return f"{what} '{name}'{hint} Valid: {listing}"


def _var_batch_loss(b: PairBatch, lam: float, z_estimator: str, length_normalize: bool) -> Tensor:
    # Chosen and rejected responses are all samples of the offline data, each with its own reward.
    # The "prompt" normaliser pools every response to the same prompt within the micro-batch.
    group_ids, n_groups = None, 1
    if z_estimator == "prompt":
        groups = b.prompt_groups if b.prompt_groups is not None else torch.arange(
            b.chosen_logps.shape[0], device=b.chosen_logps.device)
        group_ids, n_groups = torch.cat([groups, groups]), int(torch.unique(groups).numel())
    per_sample = var_loss(torch.cat([b.chosen_logps, b.rejected_logps]),
                          torch.cat([b.ref_chosen_logps, b.ref_rejected_logps]),
                          torch.cat([b.reward_chosen, b.reward_rejected]), lam, group_ids,
                          torch.cat([b.chosen_lengths, b.rejected_lengths]), length_normalize)
    return per_sample.sum() / n_groups


METHODS: dict[str, Method] = {
    "sft": Method(
        "sft", lambda b: sft_loss(b.chosen_logps, b.chosen_lengths).mean(),
        "token-mean NLL on chosen responses", uses_rejected=False),
    "dpo": Method(
        "dpo", lambda b, beta: dpo_loss(b.chosen_logps, b.rejected_logps, b.ref_chosen_logps,
                                        b.ref_rejected_logps, beta).mean(),
        "Direct Preference Optimisation",
        (HyperParameter("beta", 0.1, "KL strength β (0.01–0.5 is typical)", positive=True),),
        uses_reference=True),
    "ln-dpo": Method(
        "ln-dpo", lambda b, beta: ln_dpo_loss(b.chosen_logps, b.rejected_logps, b.ref_chosen_logps,
                                              b.ref_rejected_logps, b.chosen_lengths,
                                              b.rejected_lengths, beta).mean(),
        "length-normalised DPO",
        (HyperParameter("beta", 2.0, "β on per-token log-ratios (1–10 is typical)", positive=True),),
        uses_reference=True),
    "simpo": Method(
        "simpo", lambda b, beta, gamma: simpo_loss(b.chosen_logps, b.rejected_logps, b.chosen_lengths,
                                                   b.rejected_lengths, beta, gamma).mean(),
        "reference-free, length-normalised margin loss",
        (HyperParameter("beta", 2.0, "β on per-token log-probs (2–10 is typical)", positive=True),
         HyperParameter("gamma", 1.0, "target margin γ (γ/β of 0.3–0.8 is typical)"))),
    "var": Method(
        "var", _var_batch_loss, "reward-weighted SFT (variational alignment)",
        (HyperParameter("lam", 1.0, "temperature λ of the reward in exp(r/λ)", positive=True),
         HyperParameter("z_estimator", "batch", "normaliser set for the weights",
                        choices=("batch", "prompt")),
         HyperParameter("length_normalize", False, "use ℓref/|y| instead of ℓref in the weights")),
        uses_reference=True, uses_rewards=True),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise AlignlabError(unknown_name_message("unknown method", name, list(METHODS)))
    return METHODS[name]
