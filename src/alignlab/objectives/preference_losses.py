"""TRL's DPO variants, ORPO and KTO as pure functions of per-sequence log-probs and lengths, in the
notation of `alignlab.objectives.losses` (ℓθ, ℓref, |y|, w = chosen, l = rejected, σ). Each returns
one value per example; the registry (`alignlab.objectives.registry`) reduces them and names their
hyper-parameters. Each is written from its paper's equation and tested against TRL 1.16's own loss
on the same log-probs (tests/objectives/test_trl_losses.py, test_orpo_kto.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _logratios(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
               ref_rejected_logps: Tensor) -> tuple[Tensor, Tensor]:
    return chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps


def ipo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
             chosen_lengths: Tensor, rejected_lengths: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, Eq. 17), β in the role of the paper's τ:  (ρ_w/|y_w| − ρ_l/|y_l| − 1/(2β))².

    The paper squares the summed log-ratios; TRL divides each by its length (what the IPO authors'
    results used, TRL says) so that β means the same at any length. alignlab matches TRL.
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (rho_w / chosen_lengths - rho_l / rejected_lengths - 1 / (2 * beta)) ** 2


def hinge_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
               beta: float) -> Tensor:
    """SLiC's hinge on DPO's margin (RSO, Liu et al. 2023):  max(0, 1 − β h)."""
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.relu(1 - beta * (rho_w - rho_l))


def robust_dpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                    ref_rejected_logps: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """Robust DPO (rDPO, Chowdhury et al. 2024), unbiased under labels flipped with probability ε < ½:

        [(1 − ε)(−log σ(βh)) − ε(−log σ(−βh))] / (1 − 2ε)

    Not conservative DPO (cDPO), whose ε-term is added and which has no 1/(1 − 2ε).
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z, eps = beta * (rho_w - rho_l), label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def bco_pair_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, beta: float) -> Tensor:
    """BCO on pairs (Jung et al. 2024), chosen as class 1, rejected as class 0:  −log σ(βρ_w) − log σ(−βρ_l).

    Without the paper's reward shift δ (a running mean of the rewards), as TRL's `bco_pair`.
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * rho_w) - F.logsigmoid(-beta * rho_l)


def sppo_hard_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                   ref_rejected_logps: Tensor, beta: float) -> Tensor:
    """SPPO (Wu et al. 2024, Eq. 4.7) with hard win probabilities P(y_w ≻ π) = 1, P(y_l ≻ π) = 0, η = 1/β:

        (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (rho_w - 0.5 / beta) ** 2 + (rho_l + 0.5 / beta) ** 2


def nca_pair_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, beta: float) -> Tensor:
    """NCA on pairs (Chen et al. 2024):  −log σ(βρ_w) − ½ log σ(−βρ_w) − ½ log σ(−βρ_l)."""
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * rho_w) - 0.5 * F.logsigmoid(-beta * rho_w) - 0.5 * F.logsigmoid(-beta * rho_l)


def apo_zero_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7), chosen up and rejected down:  1 − σ(βρ_w) + σ(βρ_l).

    The paper's loss has no 1; TRL's has, which keeps it in [0, 2] and changes no gradient.
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return 1 - torch.sigmoid(beta * rho_w) + torch.sigmoid(beta * rho_l)


def apo_down_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, beta: float) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8), both down, rejected more:  σ(βρ_w) + 1 − σ(βh).

    The paper's loss has no 1; TRL's has, which keeps it in [0, 2] and changes no gradient.
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.sigmoid(beta * rho_w) + 1 - torch.sigmoid(beta * (rho_w - rho_l))


def exo_pair_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """EXO on pairs (Ji et al. 2024, Eq. 16): KL(p_θ ‖ p) from the policy's preference distribution
    p_θ = (σ(βh), σ(−βh)) over (y_w, y_l) to the smoothed labels p = (1 − ε, ε), 0 < ε < 1:

        σ(βh) [log σ(βh) − log(1 − ε)] + σ(−βh) [log σ(−βh) − log ε]
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z, eps = beta * (rho_w - rho_l), label_smoothing
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


def _smoothed_logistic(delta: Tensor, beta: float, label_smoothing: float) -> Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def aot_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
             beta: float, label_smoothing: float) -> Tensor:
    """AOT, paired (Melnyk et al. 2024): the policy's margins ℓθ(y_w) − ℓθ(y_l) should dominate the
    reference's in distribution. Both are sorted over the batch (the 1-D optimal transport plan) and
    compared rank by rank, with Δ_(i) = sort(ℓθ(y_w) − ℓθ(y_l))_i − sort(ℓref(y_w) − ℓref(y_l))_i:

        −(1 − ε) log σ(βΔ_(i)) − ε log σ(−βΔ_(i))

    One value per rank, not per pair: the loss is a function of the whole batch.
    """
    delta = (torch.sort(chosen_logps - rejected_logps).values
             - torch.sort(ref_chosen_logps - ref_rejected_logps).values)
    return _smoothed_logistic(delta, beta, label_smoothing)


def aot_unpaired_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                      ref_rejected_logps: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratios should dominate the rejected ones in
    distribution; with Δ_(i) = sort(ρ_w)_i − sort(ρ_l)_i over the batch, per rank i:

        −(1 − ε) log σ(βΔ_(i)) − ε log σ(−βΔ_(i))
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _smoothed_logistic(torch.sort(rho_w).values - torch.sort(rho_l).values, beta, label_smoothing)


def discopop_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, beta: float, discopop_tau: float) -> Tensor:
    """DiscoPOP's log-ratio modulated loss (Lu et al. 2024, Eq. 5), with z = βh and τ = discopop_tau:

        (1 − σ(z/τ)) (−log σ(z)) + σ(z/τ) e^{−z}

    σ(z/τ) e^{−z} is computed as exp(log σ(z/τ) − z): finite where e^{−z} alone would overflow.
    """
    rho_w, rho_l = _logratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (rho_w - rho_l)
    return torch.sigmoid(-z / discopop_tau) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / discopop_tau) - z)


# --------------------------------------------------------------------------------------------
# ORPO (reference-free) and KTO (unpaired completions labelled desirable or not).


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0 without cancellation (Mächler 2012): log(−expm1(x)) above −log 2,
    log1p(−eˣ) below. x is first clamped to ≤ −ε (the dtype's epsilon): at x = 0 the value is −∞ and
    its gradient infinite (a response of probability 1); ORPO then sees p = 1 − ε, not a NaN step."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_log_odds_ratio(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths: Tensor,
                        rejected_lengths: Tensor) -> Tensor:
    """ORPO's log odds ratio log[odds(y_w) / odds(y_l)], odds(y) = p/(1 − p) of the length-averaged
    probability p = exp(ℓθ(y)/|y|):  log odds(y) = ℓθ(y)/|y| − log(1 − exp(ℓθ(y)/|y|)).
    In float32 at least, as TRL computes it."""
    dtype = torch.promote_types(chosen_logps.dtype, torch.float32)
    w, l = chosen_logps.to(dtype) / chosen_lengths, rejected_logps.to(dtype) / rejected_lengths
    return (w - log1mexp(w)) - (l - log1mexp(l))


def orpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
              beta: float) -> Tensor:
    """ORPO (Hong et al. 2024), reference-free: NLL of the chosen response + β · odds-ratio loss,

        L_i = −ℓθ(y_w,i) / mean_j |y_w,j|  −  β log σ(log odds ratio_i)

    The NLL is divided by the batch's mean chosen length, not the example's own, so that the batch
    mean of L_i is TRL's loss: the token-mean NLL over all chosen tokens of the batch, Σ −ℓθ(y_w) / Σ |y_w|
    (its nn.CrossEntropyLoss reduction), minus β times the mean log σ. β is TRL's `beta`, the paper's λ.
    """
    nll = -chosen_logps / chosen_lengths.mean()
    ratio = orpo_log_odds_ratio(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    return nll - beta * F.logsigmoid(ratio).to(nll.dtype)


def kto_reference_point(kl_logps: Tensor, kl_ref_logps: Tensor) -> Tensor:
    """KTO's reference point z_ref = max(0, mean over the batch of ℓθ(y'|x) − ℓref(y'|x)), on
    mismatched pairs (x, y') (y' a completion of another prompt): an estimate of KL(πθ ‖ πref). No gradient."""
    return (kl_logps - kl_ref_logps).mean().detach().clamp(min=0)


def kto_loss(logps: Tensor, ref_logps: Tensor, kl_logps: Tensor, kl_ref_logps: Tensor, labels: Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """KTO (Ethayarajh et al. 2024) per example, with r = ℓθ(y|x) − ℓref(y|x) of its completion and
    z_ref from `kto_reference_point`:

        desirable (label true):     λ_D · (1 − σ(β (r − z_ref)))
        undesirable (label false):  λ_U · (1 − σ(β (z_ref − r)))

    (1 − σ(a) is computed as σ(−a), exact where σ(a) rounds to 1.) TRL's loss is the batch mean.
    """
    z_ref = kto_reference_point(kl_logps, kl_ref_logps)
    r = logps - ref_logps
    return torch.where(labels.bool(), desirable_weight * torch.sigmoid(beta * (z_ref - r)),
                       undesirable_weight * torch.sigmoid(beta * (r - z_ref)))
