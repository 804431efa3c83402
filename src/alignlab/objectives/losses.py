"""Training objectives as pure functions of per-sequence quantities (SPEC §3).

Notation: ℓθ(y) is the summed log-prob of the response tokens under the policy, ℓref the same under
the frozen reference, |y| the response length in tokens, w = chosen, l = rejected, σ the logistic
function. Every loss returns one value per example (unreduced); the registry at the bottom says how
a method's batch loss is reduced and which hyper-parameters it takes.

Adding a method: write its loss here, add a `Method` entry to `METHODS`, add a test.

GRPO is the one online method: its loss takes per-token quantities of responses the policy samples
while training (`GroupBatch`, built by `alignlab.training.grpo`), not pairs from the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.checks import COUNT, NON_NEGATIVE, POSITIVE, Range, check_number
from alignlab.errors import AlignlabError, unknown_name_message


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


def sampled_log_z(rewards: Tensor, lam: float) -> Tensor:
    """VAR's `sampled` Z estimator: for K responses y_1..y_K ~ πref(·|x) of each prompt (one row),

        log Ẑ(x) = log( (1/K) Σ_k exp(r(x, y_k)/λ) ) = logsumexp_k(r_k/λ) − log K,

    a Monte-Carlo estimate of the partition function Z(x) = E_{y∼πref}[exp(r(x, y)/λ)] of the RLHF
    optimum π*(y|x) = πref(y|x) exp(r(x, y)/λ) / Z(x). `rewards` (prompts, K) -> (prompts,).
    """
    k = rewards.shape[-1]
    return torch.logsumexp(rewards.detach().to(torch.float64) / lam, dim=-1) - math.log(k)


def var_weights(ref_logps: Tensor, rewards: Tensor, lam: float, group_ids: Tensor | None = None,
                lengths: Tensor | None = None, length_normalize: bool = False,
                log_z: Tensor | None = None) -> Tensor:
    """VAR importance weights, a softmax in log space within each normaliser group:

        ω_i = exp(ℓref(y_i) + r_i/λ) / Σ_{j ∈ G(i)} exp(ℓref(y_j) + r_j/λ)

    G(i) is the whole batch when `group_ids` is None (the paper's in-batch Z estimator), otherwise
    the examples sharing i's group id (e.g. the responses to one prompt). With `length_normalize`,
    ℓref(y)/|y| replaces ℓref(y). The weights carry no gradient and sum to one per group.

    With `log_z` (one precomputed log Ẑ(x_i) per example, see `sampled_log_z`) the normaliser is
    that estimate instead of a sum over the batch, and `group_ids` must be None:

        ω_i = exp(ℓref(y_i) + r_i/λ − log Ẑ(x_i))    (an estimate of π*(y_i|x_i))

    These weights do not sum to one over the batch: each is the optimum's probability of its
    response, so with summed ℓref they are small and scale the effective learning rate down.

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
    if log_z is not None:
        if group_ids is not None:
            raise ValueError("var_weights: pass either log_z (a precomputed normaliser) or group_ids, not both")
        weights = torch.exp(scores - log_z.detach().to(torch.float64))
    elif group_ids is None:
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
             length_normalize: bool = False, log_z: Tensor | None = None) -> Tensor:
    """VAR (reward-weighted SFT from the closed-form RLHF optimum): ω_i · (−ℓθ(y_i)).

    Summed over a normaliser group this is −Σ_i ω_i ℓθ(y_i), the group's loss; ω as in `var_weights`.
    """
    weights = var_weights(ref_logps, rewards, lam, group_ids, lengths, length_normalize, log_z)
    return weights * -logps


# --------------------------------------------------------------------------------------------
# GRPO (online): per-token quantities of responses sampled from the policy while training.
# Shapes: (responses, tokens) for per-token tensors, (responses,) for advantages.


def grpo_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages; each row holds the rewards of the G responses to one prompt:

        A_i = (r_i − mean_g r) / (std_g r + ε)

    std is the sample standard deviation (n − 1 in the denominator, as TRL's GRPOTrainer). A group
    whose rewards are all equal gets A = 0: it carries no signal. (prompts, G) -> (prompts, G).
    """
    rewards = rewards.detach()
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + eps)


def grpo_clipped_surrogate(logps: Tensor, old_logps: Tensor, advantages: Tensor, clip_eps: float) -> Tensor:
    """PPO's clipped surrogate per token, an objective to maximise:

        ρ_t = πθ(y_t | x, y_<t) / π_old(y_t | x, y_<t) = exp(log πθ − log π_old)
        s_t = min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A)

    π_old is the policy that sampled the responses (no gradient); A is the response's advantage,
    broadcast over its tokens. The min makes the objective pessimistic: once ρ has moved past
    1 ± ε in the direction A favours, the token stops pulling.
    """
    ratio = torch.exp(logps - old_logps.detach())
    advantages = advantages.detach().unsqueeze(-1)
    return torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token estimate of KL(πθ ‖ πref) on tokens sampled from πθ (Schulman's k3):

        k3_t = exp(ℓref_t − ℓθ_t) − (ℓref_t − ℓθ_t) − 1

    unbiased (E_πθ[exp(ℓref − ℓθ)] = 1) and never negative (e^d ≥ 1 + d), unlike ℓθ − ℓref.
    """
    delta = ref_logps.detach() - logps
    return torch.exp(delta) - delta - 1


def grpo_loss(logps: Tensor, old_logps: Tensor, ref_logps: Tensor, advantages: Tensor, mask: Tensor,
              clip_eps: float, beta: float) -> Tensor:
    """GRPO (DeepSeekMath) per response: the clipped surrogate with a KL penalty, token-averaged,

        L_i = −(1/|y_i|) Σ_t [ s_t − β · k3_t ]

    over the response tokens (`mask` 1); s_t as in `grpo_clipped_surrogate`, k3_t as in `k3_kl`.
    Averaging within each response and then over responses (the paper's normalisation) gives
    every response the same weight whatever its length.
    """
    # Padded positions are zeroed before exp, not after: e^{huge}·0 would be NaN, in the value or the gradient.
    on = mask.bool()
    logps, old_logps, ref_logps = (torch.where(on, x, torch.zeros_like(x)) for x in (logps, old_logps, ref_logps))
    per_token = grpo_clipped_surrogate(logps, old_logps, advantages, clip_eps) - beta * k3_kl(logps, ref_logps)
    return -(per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)


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

    def resolve(self, given: dict) -> dict:
        """Defaults overridden by `given`; unknown names are errors suggesting the closest valid one."""
        valid = {hp.name: hp for hp in self.hyperparameters}
        for name in given:
            if name not in valid:
                raise AlignlabError(unknown_name_message(f"{self.name}: unknown hyper-parameter", name,
                                                         list(valid)))
        return {name: hp.coerce(self.name, given.get(name, hp.default)) for name, hp in valid.items()}


def _var_batch_loss(b: PairBatch, lam: float, z_estimator: str, length_normalize: bool,
                    z_samples: int = 8) -> Tensor:
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
    per_sample = var_loss(torch.cat([b.chosen_logps, b.rejected_logps]),
                          torch.cat([b.ref_chosen_logps, b.ref_rejected_logps]),
                          torch.cat([b.reward_chosen, b.reward_rejected]), lam, group_ids,
                          torch.cat([b.chosen_lengths, b.rejected_lengths]), length_normalize, log_z)
    return per_sample.sum() / n_groups


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
        uses_reference=True, uses_rewards=True),
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
