"""The registry of training methods: method name -> how the trainer feeds it (`PairBatch` offline,
`GroupBatch` online) and which hyper-parameters it accepts. The losses themselves are the pure
functions of `alignlab.objectives.losses` (the papers' methods) and
`alignlab.objectives.preference_losses` (TRL's DPO variants, ORPO, KTO).

Adding a method: write its loss in one of those, add a `Method` entry to `METHODS`, add a test. A
method's optional `diagnostics` are logged in metrics.jsonl beside the loss (VAR: weight_entropy).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from alignlab.checks import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_number
from alignlab.errors import AlignlabError, unknown_name_message
from alignlab.objectives.hyperparameters import HyperParameter, ResolvedParams
from alignlab.objectives.losses import (dpo_loss, grpo_loss, ln_dpo_loss, sft_loss, simpo_loss, var_loss, var_weights,
                                        weight_entropy)
from alignlab.objectives.preference_losses import (aot_loss, aot_unpaired_loss, apo_down_loss, apo_zero_loss,
                                                   bco_pair_loss, discopop_loss, exo_pair_loss, hinge_loss, ipo_loss,
                                                   kto_loss, kto_reference_point, nca_pair_loss, orpo_log_odds_ratio,
                                                   orpo_loss, robust_dpo_loss, sppo_hard_loss)


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
    # Unpaired methods (KTO): True where the example's completion (the chosen slot) is desirable; the
    # rejected slot then holds a mismatched completion (another prompt's), used only to estimate the KL
    labels: Tensor | None = None


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
    check: Callable[[dict], None] | None = None  # checks the resolved hyper-parameters together (mix)
    # Trains on labelled completions (KTO): pairs are unpaired, each pseudo-pair's rejected slot holds
    # a mismatched completion for the KL estimate, and PairBatch.labels says which are desirable
    unpaired: bool = False

    def resolve(self, given: Mapping) -> ResolvedParams:
        """Defaults overridden by `given`, converted and checked: the one place a method's
        hyper-parameters are resolved. Unknown names are errors suggesting the closest valid one."""
        valid = {hp.name: hp for hp in self.hyperparameters}
        for name in given:
            if name not in valid:
                raise AlignlabError(unknown_name_message(f"{self.name}: unknown hyper-parameter", name,
                                                         list(valid)))
        resolved = {name: hp.coerce(self.name, given.get(name, hp.default)) for name, hp in valid.items()}
        if self.check is not None:
            self.check(resolved)
        return ResolvedParams(self.name, resolved)


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


def _with_reference(loss: Callable[..., Tensor], lengths: bool = False) -> Callable[..., Tensor]:
    """The batch loss (mean over the batch) of a loss of (ℓθ(y_w), ℓθ(y_l), ℓref(y_w), ℓref(y_l)[, |y_w|, |y_l|])."""
    def batch_loss(b: PairBatch, **hyperparameters) -> Tensor:
        extra = (b.chosen_lengths, b.rejected_lengths) if lengths else ()
        return loss(b.chosen_logps, b.rejected_logps, b.ref_chosen_logps, b.ref_rejected_logps, *extra,
                    **hyperparameters).mean()
    return batch_loss


def _beta(help: str = "KL strength β (0.01–0.5 is typical)") -> HyperParameter:
    return HyperParameter("beta", 0.1, help, allowed=POSITIVE)


_FLIP_RATE = Range(0, 0.5, exclusive_max=True)  # a label smoothing ε that still favours the chosen response


def _mixable(method: Method) -> bool:
    """What `mix` combines: offline methods of preference pairs without rewards (so not mix itself)."""
    return not (method.online or method.uses_rewards or method.unpaired or method.name == "mix")


@functools.lru_cache(maxsize=32)  # the loss asks at every batch: its text is parsed once
def _mix_parts(losses: str, loss_weights: str) -> tuple[tuple[Method, float], ...]:
    names = [name.strip() for name in losses.split(",")]
    mixable = [name for name, method in METHODS.items() if _mixable(method)]
    for name in names:
        if name in METHODS and name not in mixable:
            raise AlignlabError(f"mix: losses names '{name}', which mix cannot combine (only offline pair methods "
                                f"without rewards). Valid: {', '.join(mixable)}")
        if name not in mixable:
            raise AlignlabError(unknown_name_message("mix: losses names unknown method", name, mixable))
    try:
        weights = [float(w) for w in loss_weights.split(",")] if loss_weights.strip() else [1.0] * len(names)
    except ValueError:
        raise AlignlabError(f"mix: loss_weights must be comma-separated numbers, one per loss, "
                            f"got {loss_weights!r}") from None
    if len(weights) != len(names):
        raise AlignlabError(f"mix: loss_weights has {len(weights)} weights for the {len(names)} losses "
                            f"{losses!r}; give one per loss (or none: 1 each)")
    for i, weight in enumerate(weights):
        check_number("mix", f"loss_weights[{i}] (of {names[i]})", weight, NON_NEGATIVE)
    if not any(weights):
        raise AlignlabError("mix: every loss weight is 0; give at least one loss a positive weight")
    return tuple((METHODS[name], weight) for name, weight in zip(names, weights))


def _component_params(method: Method, shared: Mapping) -> dict:
    """The mix's shared hyper-parameters that `method` takes (its others at its defaults). The mix's
    `check` has had each loss check them (`_check_mix`), so the loss takes them as they are."""
    return {hp.name: shared.get(hp.name, hp.default) for hp in method.hyperparameters}


def _check_mix(params: dict) -> None:
    shared = {name: value for name, value in params.items() if name not in ("losses", "loss_weights")}
    for method, _ in _mix_parts(params["losses"], params["loss_weights"]):
        try:
            method.resolve(_component_params(method, shared))
        except AlignlabError as err:
            raise AlignlabError(f"mix: its loss {err}") from None


def _mix_batch_loss(b: PairBatch, losses: str, loss_weights: str, **shared) -> Tensor:
    """Σ_k w_k · (batch loss of method k), each method given the shared hyper-parameters it takes."""
    return sum(weight * method.batch_loss(b, **_component_params(method, shared))
               for method, weight in _mix_parts(losses, loss_weights))


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
    "ipo": Method(
        "ipo", _with_reference(ipo_loss, lengths=True), "IPO: squared gap to a target per-token margin (as TRL)",
        (_beta("τ: the per-token margin is pulled to 1/(2β) (0.01–1 is typical)"),), uses_reference=True),
    "hinge": Method(
        "hinge", _with_reference(hinge_loss), "SLiC/RSO hinge on DPO's margin",
        (_beta("β: the hinge stops pushing once the margin h reaches 1/β"),), uses_reference=True),
    "robust": Method(
        "robust", _with_reference(robust_dpo_loss), "robust DPO (rDPO): unbiased under flipped labels",
        (_beta(), HyperParameter("label_smoothing", 0.1, "ε, the assumed rate of flipped preference labels (0.1 "
                                 "is the rDPO paper's typical value; 0 is DPO)", allowed=_FLIP_RATE)),
        uses_reference=True),
    "bco-pair": Method(
        "bco-pair", _with_reference(bco_pair_loss), "BCO on pairs: chosen classified up, rejected down",
        (_beta(),), uses_reference=True),
    "sppo-hard": Method(
        "sppo-hard", _with_reference(sppo_hard_loss), "SPPO, hard win probabilities: log-ratios regressed to ±1/(2β)",
        (_beta("β = 1/η: the chosen log-ratio is pulled to 1/(2β), the rejected to −1/(2β)"),), uses_reference=True),
    "nca-pair": Method(
        "nca-pair", _with_reference(nca_pair_loss), "noise-contrastive alignment (NCA) on pairs",
        (_beta(),), uses_reference=True),
    "apo-zero": Method(
        "apo-zero", _with_reference(apo_zero_loss), "anchored preference optimisation: chosen up, rejected down",
        (_beta(),), uses_reference=True),
    "apo-down": Method(
        "apo-down", _with_reference(apo_down_loss), "anchored preference optimisation: both down, rejected more",
        (_beta(),), uses_reference=True),
    "exo-pair": Method(
        "exo-pair", _with_reference(exo_pair_loss), "EXO on pairs: KL to smoothed preference labels",
        (_beta(), HyperParameter("label_smoothing", 1e-3, "ε, the target probability of the rejected response "
                                 "(the EXO paper's 1e-3)", allowed=FRACTION)), uses_reference=True),
    "aot": Method(
        "aot", _with_reference(aot_loss), "AOT: the batch's sorted policy margins dominate the reference's",
        (_beta(), HyperParameter("label_smoothing", 0.0, "ε, conservative label smoothing (0: none)",
                                 allowed=_FLIP_RATE)), uses_reference=True),
    "aot-unpaired": Method(
        "aot-unpaired", _with_reference(aot_unpaired_loss), "AOT: sorted chosen log-ratios dominate sorted rejected",
        (_beta(), HyperParameter("label_smoothing", 0.0, "ε, conservative label smoothing (0: none)",
                                 allowed=_FLIP_RATE)), uses_reference=True),
    "discopop": Method(
        "discopop", _with_reference(discopop_loss), "DiscoPOP: logistic and exponential losses blended by the margin",
        (_beta(), HyperParameter("discopop_tau", 0.05, "τ of the blend weight σ(βh/τ) (the paper's 0.05)",
                                 allowed=POSITIVE)), uses_reference=True),
    "mix": Method(
        "mix", _mix_batch_loss, "weighted sum of offline pair losses (TRL's loss_type lists; RPO = dpo + α·sft)",
        (HyperParameter("losses", "dpo,sft", "comma-separated offline pair methods, e.g. dpo,sft"),
         HyperParameter("loss_weights", "", "comma-separated weights ≥ 0, one per loss (empty: 1 each)"),
         _beta("β, shared by every loss that takes one (as in TRL)"),
         HyperParameter("label_smoothing", 0.0, "ε, shared by every loss that takes one; each checks its range",
                        allowed=Range(0, 1, exclusive_max=True)),
         HyperParameter("discopop_tau", 0.05, "τ of discopop", allowed=POSITIVE),
         HyperParameter("gamma", 1.0, "target margin γ of simpo")),
        uses_reference=True, check=_check_mix),
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
    "orpo": Method(
        "orpo", lambda b, beta: orpo_loss(b.chosen_logps, b.rejected_logps, b.chosen_lengths, b.rejected_lengths,
                                          beta).mean(),
        "reference-free: chosen NLL + λ · odds-ratio loss",
        (HyperParameter("beta", 0.1, "λ, weight of the odds-ratio loss beside the chosen NLL (TRL's beta; "
                        "0.1–1 is typical, 0 is SFT)", allowed=NON_NEGATIVE),),
        diagnostics=lambda b, beta: {
            "nll": -b.chosen_logps.sum() / b.chosen_lengths.sum(),
            "log_odds_ratio": orpo_log_odds_ratio(b.chosen_logps, b.rejected_logps, b.chosen_lengths,
                                                  b.rejected_lengths).mean()}),
    "kto": Method(
        "kto", lambda b, beta, desirable_weight, undesirable_weight: kto_loss(
            b.chosen_logps, b.ref_chosen_logps, b.rejected_logps, b.ref_rejected_logps, b.labels, beta,
            desirable_weight, undesirable_weight).mean(),
        "unpaired completions labelled desirable or not (prospect theory)",
        (HyperParameter("beta", 0.1, "β on the log-ratio to the reference (0.01–0.5 is typical)", allowed=POSITIVE),
         HyperParameter("desirable_weight", 1.0, "λ_D, weight of desirable examples (with unequal counts, "
                        "λ_D·n_D / (λ_U·n_U) in [1, 4/3] is recommended)", allowed=NON_NEGATIVE),
         HyperParameter("undesirable_weight", 1.0, "λ_U, weight of undesirable examples", allowed=NON_NEGATIVE)),
        uses_reference=True, unpaired=True,
        diagnostics=lambda b, **params: {"kl": kto_reference_point(b.rejected_logps, b.ref_rejected_logps)}),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise AlignlabError(unknown_name_message("unknown method", name, list(METHODS)))
    return METHODS[name]


# TRL's `DPOConfig.loss_type` names (trl 1.16) -> alignlab methods. Each matches TRL's per-sequence loss,
# except `sft`: TRL averages the NLL over all chosen tokens of the batch, alignlab per sequence then over
# the batch (the RPO paper's normalisation); the two agree when the chosen responses are equally long.
TRL_LOSS_TYPES: dict[str, str] = {
    "sigmoid": "dpo", "sigmoid_norm": "ln-dpo", "sft": "sft", "ipo": "ipo", "hinge": "hinge", "robust": "robust",
    "bco_pair": "bco-pair", "sppo_hard": "sppo-hard", "nca_pair": "nca-pair", "apo_zero": "apo-zero",
    "apo_down": "apo-down", "exo_pair": "exo-pair", "aot": "aot", "aot_unpaired": "aot-unpaired",
    "discopop": "discopop",
}


def method_for_loss_types(loss_types: list[str], loss_weights: list[float] | None = None) -> tuple[str, dict]:
    """TRL's `loss_type` list (and `loss_weights`, default 1 each) as an alignlab method and its params.

    One loss type of weight 1 is its method, with no params; several (or one of another weight) are
    `mix` with `losses` and `loss_weights`, TRL's Σ_k w_k · loss_k. RPO: (["sigmoid", "sft"], [1, α]).
    """
    if isinstance(loss_types, str):
        loss_types = [loss_types]
    if not loss_types:
        raise AlignlabError(f"loss_type: give at least one TRL loss type. Valid: {', '.join(TRL_LOSS_TYPES)}")
    for loss_type in loss_types:
        if loss_type not in TRL_LOSS_TYPES:
            raise AlignlabError(unknown_name_message("unknown TRL loss_type", loss_type, list(TRL_LOSS_TYPES)))
    names = [TRL_LOSS_TYPES[loss_type] for loss_type in loss_types]
    weights = [1.0] * len(names) if loss_weights is None else list(loss_weights)
    if len(weights) != len(names):
        raise AlignlabError(f"loss_weights: {len(weights)} weights for the {len(names)} loss types "
                            f"{', '.join(loss_types)}; give one per loss type")
    for i, weight in enumerate(weights):
        check_number("loss_weights", f"weight {i} (of {loss_types[i]})", weight, NON_NEGATIVE)
    if len(names) == 1 and weights[0] == 1:
        return names[0], {}
    params = {"losses": ",".join(names), "loss_weights": ",".join(repr(float(w)) for w in weights)}
    _mix_parts(params["losses"], params["loss_weights"])  # fails now; the shared values are checked with them
    return "mix", params
