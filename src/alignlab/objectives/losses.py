"""Training objectives as pure functions of per-sequence quantities (SPEC §3).

Notation: ℓθ(y) is the summed log-prob of the response tokens under the policy, ℓref the same under
the frozen reference, |y| the response length in tokens, w = chosen, l = rejected, σ the logistic
function. Every loss returns one value per example (unreduced); the registry
(`alignlab.objectives.registry`) says how a method's batch loss is reduced and which
hyper-parameters it takes.

Adding a method: write its loss here (or, for TRL's DPO variants, ORPO and KTO, in
`preference_losses`), add a `Method` entry to `registry.METHODS`, add a test.

GRPO is the one online method: its loss takes per-token quantities of responses the policy samples
while training (`GroupBatch`, built by `alignlab.training.grpo`), not pairs from the data.
"""

from __future__ import annotations

import math

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


# -- TRL's other DPO loss types (`trl.DPOTrainer` loss_type; registry.TRL_LOSS_TYPES maps the names).
# ρ_w = ℓθ(y_w) − ℓref(y_w) and ρ_l = ℓθ(y_l) − ℓref(y_l) are the log-ratios, h = ρ_w − ρ_l DPO's margin.


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
    # In float64: r/λ of a reward float32 holds can overflow float32 (3e38 / 0.5).
    scores = ref_logps.to(torch.float64) + rewards.detach().to(torch.float64) / lam
    if log_z is not None:
        if group_ids is not None:
            raise ValueError("var_weights: pass either log_z (a precomputed normaliser) or group_ids, not both")
        weights = torch.exp(scores - log_z.detach().to(torch.float64))
        # Only an estimated normaliser can leave a weight above 1, and beyond float32 (a softmax cannot).
        if not torch.isfinite(weights.to(ref_logps.dtype)).all():  # else NaN steps, blamed on the learning rate
            raise AlignlabError(f"var: the weights exp(ℓref + r/λ − log Ẑ) overflow {str(ref_logps.dtype)[6:]} with "
                                f"lam {lam:g} and rewards {rewards.min().item():g} to {rewards.max().item():g}; "
                                "raise lam or rescale the rewards")
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


def weight_entropy(weights: Tensor) -> Tensor:
    """Entropy (nats) of the weights normalised to sum to one, p_i = ω_i / Σ_j ω_j:

        H = −Σ_i p_i log p_i    (0 · log 0 = 0)

    log n when n weights are equal, 0 when one takes all: exp(H) counts the responses a VAR
    micro-batch effectively trains on. Normalising first makes every Z estimator comparable (their
    weights sum to one per batch, to one per prompt, or to no fixed total).
    """
    p = weights.detach().to(torch.float64)
    p = p / p.sum()
    return -torch.where(p > 0, p * torch.log(p), 0.0).sum().to(weights.dtype)


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
