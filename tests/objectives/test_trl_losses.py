"""TRL's DPO loss types as alignlab methods (issue 30): ipo, hinge, robust, bco-pair, sppo-hard,
nca-pair, apo-zero, apo-down, exo-pair, aot, aot-unpaired, discopop, and the `mix` of several.

Each loss is checked three ways: against numbers worked out from its paper's equation with plain
`math` (never alignlab's output), against TRL 1.16's own `DPOTrainer._compute_loss` on the same
per-sequence log-probs (to 1e-6; in float64 they agree far closer), and by finite differences.

TRL is driven on fabricated log-probs: `_compute_loss` is called unbound on a bare `DPOTrainer`
(`object.__new__`) holding the attributes its `__init__` sets from `DPOConfig`, with precomputed
reference log-probs and a stub model whose per-token `log_probs` sum to the per-sequence values we
choose (zero at prompt and padding positions, as TRL's fused LM head returns them).

Notation: ρ_w = ℓθ(y_w) − ℓref(y_w), ρ_l = ℓθ(y_l) − ℓref(y_l), h = ρ_w − ρ_l, |y| lengths.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from random_pairs import random_pairs

from alignlab.errors import AlignlabError
from alignlab.objectives.losses import dpo_loss, sft_loss
from alignlab.objectives.preference_losses import (aot_loss, aot_unpaired_loss, apo_down_loss, apo_zero_loss,
                                                   bco_pair_loss, discopop_loss, exo_pair_loss, hinge_loss, ipo_loss,
                                                   nca_pair_loss, robust_dpo_loss, sppo_hard_loss)
from alignlab.objectives.registry import (METHODS, TRL_LOSS_TYPES, PairBatch, get_method,
                                          method_for_loss_types)

F64 = torch.float64
TRL_TOL = 1e-6

# -- plain-math references, one scalar pair at a time ---------------------------------------------


def log_sig(z: float) -> float:
    """log σ(z), stable for either sign."""
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def sig(z: float) -> float:
    return math.exp(log_sig(z))


def ref_ipo(rw, rl, nw, nl, beta, **_):
    return (rw / nw - rl / nl - 1 / (2 * beta)) ** 2


def ref_hinge(rw, rl, beta, **_):
    return max(0.0, 1 - beta * (rw - rl))


def ref_robust(rw, rl, beta, label_smoothing, **_):
    z, e = beta * (rw - rl), label_smoothing
    return ((1 - e) * -log_sig(z) - e * -log_sig(-z)) / (1 - 2 * e)


def ref_bco_pair(rw, rl, beta, **_):
    return -log_sig(beta * rw) - log_sig(-beta * rl)


def ref_sppo_hard(rw, rl, beta, **_):
    eta = 1 / beta
    return (rw - eta * (1 - 0.5)) ** 2 + (rl - eta * (0 - 0.5)) ** 2


def ref_nca_pair(rw, rl, beta, **_):
    return -log_sig(beta * rw) - 0.5 * log_sig(-beta * rw) - 0.5 * log_sig(-beta * rl)


def ref_apo_zero(rw, rl, beta, **_):
    return 1 - sig(beta * rw) + sig(beta * rl)


def ref_apo_down(rw, rl, beta, **_):
    return sig(beta * rw) + 1 - sig(beta * (rw - rl))


def ref_exo_pair(rw, rl, beta, label_smoothing, **_):
    z, e = beta * (rw - rl), label_smoothing
    p_w, p_l = sig(z), sig(-z)
    return p_w * math.log(p_w / (1 - e)) + p_l * math.log(p_l / e)  # KL((p_w, p_l) ‖ (1 − ε, ε))


def ref_discopop(rw, rl, beta, discopop_tau, **_):
    z = beta * (rw - rl)
    blend = sig(z / discopop_tau)
    return (1 - blend) * -log_sig(z) + blend * math.exp(-z)


def ref_smoothed(delta, beta, label_smoothing):
    return -(1 - label_smoothing) * log_sig(beta * delta) - label_smoothing * log_sig(-beta * delta)


# name -> (alignlab function, takes lengths, plain-math reference, TRL loss_type, hyper-parameters)
PER_PAIR = {
    "ipo": (ipo_loss, True, ref_ipo, "ipo", {"beta": 0.3}),
    "hinge": (hinge_loss, False, ref_hinge, "hinge", {"beta": 0.4}),
    "robust": (robust_dpo_loss, False, ref_robust, "robust", {"beta": 0.3, "label_smoothing": 0.2}),
    "bco-pair": (bco_pair_loss, False, ref_bco_pair, "bco_pair", {"beta": 0.3}),
    "sppo-hard": (sppo_hard_loss, False, ref_sppo_hard, "sppo_hard", {"beta": 0.5}),
    "nca-pair": (nca_pair_loss, False, ref_nca_pair, "nca_pair", {"beta": 0.3}),
    "apo-zero": (apo_zero_loss, False, ref_apo_zero, "apo_zero", {"beta": 0.3}),
    "apo-down": (apo_down_loss, False, ref_apo_down, "apo_down", {"beta": 0.3}),
    "exo-pair": (exo_pair_loss, False, ref_exo_pair, "exo_pair", {"beta": 0.3, "label_smoothing": 1e-3}),
    "discopop": (discopop_loss, False, ref_discopop, "discopop", {"beta": 0.3, "discopop_tau": 0.05}),
}
BATCH_LEVEL = {
    "aot": (aot_loss, "aot", {"beta": 0.3, "label_smoothing": 0.1}),
    "aot-unpaired": (aot_unpaired_loss, "aot_unpaired", {"beta": 0.3, "label_smoothing": 0.1}),
}
NEW_METHODS = [*PER_PAIR, *BATCH_LEVEL]


def _random_pairs(n=7, seed=30, dtype=F64):
    return random_pairs(n, seed, dtype)


def _ours(name, w, l, rw, rl, lw, ll, **hp):
    if name in PER_PAIR:
        fn, lengths = PER_PAIR[name][:2]
        extra = (lw.to(w.dtype), ll.to(w.dtype)) if lengths else ()
    else:
        fn, extra = BATCH_LEVEL[name][0], ()
    return fn(w, l, rw, rl, *extra, **hp)


# ==================================================================================================
# 1. Against the equations, worked by hand
# ==================================================================================================

# ℓθ(y_w) = −2, ℓref(y_w) = −2.5 (ρ_w = 0.5, |y_w| = 2); ℓθ(y_l) = −3, ℓref(y_l) = −2.5 (ρ_l = −0.5,
# |y_l| = 1); so h = 1.
HAND = dict(w=-2.0, l=-3.0, rw=-2.5, rl=-2.5, lw=2, ll=1)
HAND_CASES = [
    # IPO, β = ½: per-token margin 0.5/2 + 0.5/1 = 0.75, target 1/(2β) = 1: (0.75 − 1)² = 1/16
    ("ipo", {"beta": 0.5}, 0.0625),
    # hinge, β = ½: max(0, 1 − ½·1) = ½; β = 2: max(0, 1 − 2) = 0
    ("hinge", {"beta": 0.5}, 0.5),
    ("hinge", {"beta": 2.0}, 0.0),
    # SPPO-hard, β = ½ (η = 2): (0.5 − 1)² + (−0.5 + 1)² = ½
    ("sppo-hard", {"beta": 0.5}, 0.5),
    # robust, ε = 0 is DPO: −log σ(1) = log(1 + e^{−1})
    ("robust", {"beta": 1.0, "label_smoothing": 0.0}, math.log1p(math.exp(-1))),
    # robust, ε = ¼, β = 1: [¾ log(1 + e^{−1}) − ¼ log(1 + e)] / ½
    ("robust", {"beta": 1.0, "label_smoothing": 0.25}, 1.5 * math.log1p(math.exp(-1)) - 0.5 * math.log1p(math.e)),
    # BCO-pair, β = 2: −log σ(1) − log σ(1) = 2 log(1 + e^{−1})
    ("bco-pair", {"beta": 2.0}, 2 * math.log1p(math.exp(-1))),
    # NCA-pair, β = 2 (βρ_w = 1, βρ_l = −1): log(1+e^{−1}) + ½ log(1+e) + ½ log(1+e^{−1})
    ("nca-pair", {"beta": 2.0}, 1.5 * math.log1p(math.exp(-1)) + 0.5 * math.log1p(math.e)),
    # APO-zero, β = 2: 1 − σ(1) + σ(−1) = 2σ(−1) = 2/(1 + e)
    ("apo-zero", {"beta": 2.0}, 2 / (1 + math.e)),
    # APO-down, β = 2: σ(1) + 1 − σ(2)
    ("apo-down", {"beta": 2.0}, 1 / (1 + math.exp(-1)) + 1 - 1 / (1 + math.exp(-2))),
    # EXO-pair, β chosen so σ(βh) = ¾ (βh = log 3), ε = ¼: the target equals p_θ, so KL = 0
    ("exo-pair", {"beta": math.log(3), "label_smoothing": 0.25}, 0.0),
    # EXO-pair, βh = log 3, ε = ½: ¾ log(¾/½) + ¼ log(¼/½) = ¾ log 1.5 − ¼ log 2
    ("exo-pair", {"beta": math.log(3), "label_smoothing": 0.5}, 0.75 * math.log(1.5) - 0.25 * math.log(2)),
    # DiscoPOP, βh = 0: blend σ(0) = ½: ½ log 2 + ½ e^0
    ("discopop", {"beta": 1e-300, "discopop_tau": 0.05}, 0.5 * math.log(2) + 0.5),
]


@pytest.mark.parametrize("name,hp,expected", HAND_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_hand_worked_values(name, hp, expected):
    one = {k: torch.tensor([float(v)], dtype=F64) for k, v in HAND.items()}
    out = _ours(name, one["w"], one["l"], one["rw"], one["rl"], one["lw"], one["ll"], **hp)
    assert out.shape == (1,)
    assert math.isclose(out.item(), expected, rel_tol=1e-12, abs_tol=1e-14), (out.item(), expected)


def test_discopop_hand_value_away_from_zero():
    # βh = 1, τ = 1: blend σ(1); (1 − σ(1)) log(1 + e^{−1}) + σ(1) e^{−1}
    one = {k: torch.tensor([float(v)], dtype=F64) for k, v in HAND.items()}
    out = discopop_loss(one["w"], one["l"], one["rw"], one["rl"], beta=1.0, discopop_tau=1.0)
    s = 1 / (1 + math.exp(-1))
    assert math.isclose(out.item(), (1 - s) * math.log1p(math.exp(-1)) + s * math.exp(-1), rel_tol=1e-12)


@pytest.mark.parametrize("name", list(PER_PAIR))
def test_per_pair_losses_match_the_equation(name):
    w, l, rw, rl, lw, ll = _random_pairs()
    hp = PER_PAIR[name][4]
    out = _ours(name, w, l, rw, rl, lw, ll, **hp)
    ref = PER_PAIR[name][2]
    for i in range(w.shape[0]):
        expected = ref(rw=(w[i] - rw[i]).item(), rl=(l[i] - rl[i]).item(), nw=int(lw[i]), nl=int(ll[i]), **hp)
        assert math.isclose(out[i].item(), expected, rel_tol=1e-10, abs_tol=1e-12), (i, out[i].item(), expected)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_float32_in_float32_out(name):
    w, l, rw, rl, lw, ll = _random_pairs()
    hp = PER_PAIR[name][4] if name in PER_PAIR else BATCH_LEVEL[name][2]
    out32 = _ours(name, *(x.float() for x in (w, l, rw, rl)), lw, ll, **hp)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), _ours(name, w, l, rw, rl, lw, ll, **hp), rtol=1e-5, atol=1e-5)


def test_aot_sorts_margins_across_the_batch():
    # Policy margins ℓθ(y_w) − ℓθ(y_l): (3, −1, 1) -> sorted (−1, 1, 3);
    # reference margins: (0, 2, −2) -> sorted (−2, 0, 2); Δ = (1, 1, 1), not the pairwise (3, −3, 3).
    w, l = torch.tensor([0.0, -1.0, -1.0], dtype=F64), torch.tensor([-3.0, 0.0, -2.0], dtype=F64)
    rw, rl = torch.tensor([-1.0, 0.0, -3.0], dtype=F64), torch.tensor([-1.0, -2.0, -1.0], dtype=F64)
    out = aot_loss(w, l, rw, rl, beta=0.5, label_smoothing=0.2)
    expected = ref_smoothed(1.0, 0.5, 0.2)
    assert torch.allclose(out, torch.full((3,), expected, dtype=F64), rtol=1e-12, atol=0)
    # unpaired: ρ_w = (1, −1, 2) -> (−1, 1, 2); ρ_l = (−2, 2, −1) -> (−2, −1, 2); Δ = (1, 2, 0)
    out = aot_unpaired_loss(w, l, rw, rl, beta=0.5, label_smoothing=0.2)
    expected = [ref_smoothed(d, 0.5, 0.2) for d in (1.0, 2.0, 0.0)]
    assert torch.allclose(out, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)


def test_discopop_stays_finite_where_exp_overflows():
    # βh = −1000: e^{−βh} overflows float64 and TRL's σ(z/τ)·e^{−z} is 0·inf = NaN; the exact value is
    # (1 − σ(−20000))·(−log σ(−1000)) + σ(−20000)·e^{1000} = 1000 + e^{−19000} = 1000.
    w, l = torch.tensor([-1000.0], dtype=F64), torch.tensor([0.0], dtype=F64)
    zero = torch.zeros(1, dtype=F64)
    out = discopop_loss(w, l, zero, zero, beta=1.0, discopop_tau=0.05)
    assert math.isclose(out.item(), 1000.0, rel_tol=1e-12)
    w32 = w.float().requires_grad_(True)
    out32 = discopop_loss(w32, l.float(), zero.float(), zero.float(), beta=1.0, discopop_tau=0.05)
    out32.sum().backward()
    assert torch.isfinite(out32).all() and torch.isfinite(w32.grad).all()


# ==================================================================================================
# 2. Against TRL 1.16's DPOTrainer
# ==================================================================================================


class _StubFusedLM:
    """Stands in for a causal LM with TRL's fused LM head (`fused_lm_head=True`): its per-token
    `log_probs` (batch, T−1) are zero where the shifted label is −100 and sum over each row to the
    prescribed per-sequence log-prob, split over the tokens at random."""

    training = True

    def __init__(self, seq_logps, seed=0):
        self.seq_logps, self.seed = seq_logps, seed

    def __call__(self, *, labels, fused_lm_head, **kwargs):
        from trl.trainer.utils import FusedCausalLMOutput

        assert fused_lm_head
        mask = labels[:, 1:] != -100
        g = torch.Generator().manual_seed(self.seed)
        split = (torch.rand(mask.shape, generator=g, dtype=F64) + 0.1) * mask
        log_probs = split / split.sum(dim=1, keepdim=True) * self.seq_logps[:, None]
        zeros = torch.zeros(mask.shape, dtype=F64)
        return FusedCausalLMOutput(loss=-log_probs.sum(), log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                   is_top1=torch.zeros(mask.shape, dtype=torch.bool), label_mask=mask)


def _trl_loss(loss_types, w, l, rw, rl, lw, ll, beta=0.1, label_smoothing=0.0, discopop_tau=0.05,
              loss_weights=None):
    """TRL's batch loss (Σ_k w_k · mean loss_k) and its gradient in (ℓθ(y_w), ℓθ(y_l)). The attributes
    are those `DPOTrainer.__init__` sets from `DPOConfig` (trl/trainer/dpo_trainer.py ~800–975)."""
    from trl import DPOConfig, DPOTrainer

    fields = DPOConfig.__dataclass_fields__
    assert fields["f_divergence_type"].default == "reverse_kl" and fields["ld_alpha"].default is None
    assert fields["use_weighting"].default is False
    n, prompt_len = w.shape[0], 3
    lengths = torch.cat([lw, ll])
    T = prompt_len + int(lengths.max()) + 2  # some right padding
    pos = torch.arange(T)
    completion_mask = ((pos >= prompt_len) & (pos < prompt_len + lengths[:, None])).long()
    inputs = {"input_ids": (pos + 5).repeat(2 * n, 1), "attention_mask": (pos < prompt_len + lengths[:, None]).long(),
              "completion_mask": completion_mask, "ref_chosen_logps": rw, "ref_rejected_logps": rl}
    policy = torch.cat([w, l]).detach().clone().requires_grad_(True)
    model = _StubFusedLM(policy)
    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=model, beta=beta, precompute_ref_logps=True, loss_types=list(loss_types),
        loss_weights=loss_weights or [1.0] * len(loss_types), ld_alpha=None, f_divergence_type="reverse_kl",
        label_smoothing=label_smoothing, use_weighting=False, aux_loss_enabled=False,
        args=SimpleNamespace(discopop_tau=discopop_tau),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    (grad,) = torch.autograd.grad(loss, [policy])
    return loss.detach(), grad[:n], grad[n:]


def _ours_with_grads(name, w, l, rw, rl, lw, ll, **hp):
    w, l = w.detach().clone().requires_grad_(True), l.detach().clone().requires_grad_(True)
    out = _ours(name, w, l, rw, rl, lw, ll, **hp)
    gw, gl = torch.autograd.grad(out.mean(), [w, l])
    return out.detach(), gw, gl


def trl_max_abs_difference(name, seed=30):
    """max |alignlab − TRL| over the per-pair losses (pairs one at a time; for aot the batch mean
    only: its loss is per rank), the batch mean and its gradients."""
    w, l, rw, rl, lw, ll = _random_pairs(seed=seed)
    trl_name, hp = (PER_PAIR[name][3], PER_PAIR[name][4]) if name in PER_PAIR else BATCH_LEVEL[name][1:]
    ours, gw, gl = _ours_with_grads(name, w, l, rw, rl, lw, ll, **hp)
    diffs = []
    if name in PER_PAIR:
        for i in range(w.shape[0]):
            s = slice(i, i + 1)
            theirs, _, _ = _trl_loss([trl_name], w[s], l[s], rw[s], rl[s], lw[s], ll[s], **hp)
            diffs.append(abs(ours[i].item() - theirs.item()))
    theirs, tgw, tgl = _trl_loss([trl_name], w, l, rw, rl, lw, ll, **hp)
    diffs += [abs(ours.mean().item() - theirs.item()), (gw - tgw).abs().max().item(), (gl - tgl).abs().max().item()]
    return max(diffs)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_matches_trl(name):
    pytest.importorskip("trl")
    assert trl_max_abs_difference(name) < TRL_TOL


@pytest.mark.parametrize("name,hp", [("robust", {"beta": 0.5, "label_smoothing": 0.0}),
                                     ("robust", {"beta": 0.05, "label_smoothing": 0.45}),
                                     ("exo-pair", {"beta": 1.0, "label_smoothing": 0.3}),
                                     ("discopop", {"beta": 0.5, "discopop_tau": 2.0}),
                                     ("aot", {"beta": 1.0, "label_smoothing": 0.0}),
                                     ("aot-unpaired", {"beta": 0.05, "label_smoothing": 0.4})])
def test_matches_trl_at_other_settings(name, hp):
    pytest.importorskip("trl")
    w, l, rw, rl, lw, ll = _random_pairs(n=9, seed=7)
    trl_name = PER_PAIR[name][3] if name in PER_PAIR else BATCH_LEVEL[name][1]
    ours, gw, gl = _ours_with_grads(name, w, l, rw, rl, lw, ll, **hp)
    theirs, tgw, tgl = _trl_loss([trl_name], w, l, rw, rl, lw, ll, **hp)
    assert abs(ours.mean().item() - theirs.item()) < TRL_TOL
    assert (gw - tgw).abs().max() < TRL_TOL and (gl - tgl).abs().max() < TRL_TOL


def test_trl_sigmoid_ignores_label_smoothing():
    # TRL 1.16's `sigmoid` is plain DPO whatever label_smoothing says (older TRL applied cDPO there);
    # so `sigmoid` maps to alignlab's `dpo`, which has no label_smoothing.
    pytest.importorskip("trl")
    w, l, rw, rl, lw, ll = _random_pairs()
    theirs, _, _ = _trl_loss(["sigmoid"], w, l, rw, rl, lw, ll, beta=0.2, label_smoothing=0.3)
    assert abs(dpo_loss(w, l, rw, rl, 0.2).mean().item() - theirs.item()) < 1e-12


def _batch(w, l, rw, rl, lw, ll):
    return PairBatch(chosen_logps=w, chosen_lengths=lw.to(w.dtype), rejected_logps=l,
                     rejected_lengths=ll.to(w.dtype), ref_chosen_logps=rw, ref_rejected_logps=rl)


def test_rpo_mix_matches_trl_when_chosen_lengths_are_equal():
    # RPO = TRL loss_type [sigmoid, sft], loss_weights [1, α]
    pytest.importorskip("trl")
    alpha, beta = 0.7, 0.2
    w, l, rw, rl, _, ll = _random_pairs()
    lw = torch.full_like(ll, 6)
    method, params = method_for_loss_types(["sigmoid", "sft"], [1.0, alpha])
    assert method == "mix"
    mix = get_method("mix")
    ours = mix.batch_loss(_batch(w, l, rw, rl, lw, ll), **mix.resolve({**params, "beta": beta}))
    theirs, _, _ = _trl_loss(["sigmoid", "sft"], w, l, rw, rl, lw, ll, beta=beta, loss_weights=[1.0, alpha])
    assert abs(ours.item() - theirs.item()) < TRL_TOL


def test_rpo_mix_sft_term_differs_from_trl_by_the_length_weighting():
    # TRL's sft term is −Σ_i ℓθ(y_w,i) / Σ_i |y_w,i| (a token mean over the batch); alignlab's sft
    # is the mean over pairs of −ℓθ(y_w,i)/|y_w,i|. With unequal lengths they differ by exactly that.
    pytest.importorskip("trl")
    alpha, beta = 0.7, 0.2
    w, l, rw, rl, lw, ll = _random_pairs()
    assert (lw != lw[0]).any()
    mix = get_method("mix")
    ours = mix.batch_loss(_batch(w, l, rw, rl, lw, ll),
                          **mix.resolve({"losses": "dpo,sft", "loss_weights": f"1,{alpha}", "beta": beta}))
    theirs, _, _ = _trl_loss(["sigmoid", "sft"], w, l, rw, rl, lw, ll, beta=beta, loss_weights=[1.0, alpha])
    per_sequence = sum(-w[i].item() / int(lw[i]) for i in range(len(w))) / len(w)
    per_token = -w.sum().item() / int(lw.sum())
    assert abs(per_sequence - per_token) > 1e-3  # the case is a real test of the difference
    assert abs((ours.item() - theirs.item()) - alpha * (per_sequence - per_token)) < TRL_TOL


def test_three_way_mix_matches_trl_with_shared_hyperparameters():
    pytest.importorskip("trl")
    w, l, rw, rl, lw, ll = _random_pairs(seed=5)
    method, params = method_for_loss_types(["ipo", "exo_pair", "aot"], [0.5, 2.0, 1.5])
    assert (method, params) == ("mix", {"losses": "ipo,exo-pair,aot", "loss_weights": "0.5,2.0,1.5"})
    mix = get_method("mix")
    b = _batch(w.clone().requires_grad_(True), l, rw, rl, lw, ll)
    ours = mix.batch_loss(b, **mix.resolve({**params, "beta": 0.3, "label_smoothing": 0.05}))
    (gw,) = torch.autograd.grad(ours, [b.chosen_logps])
    theirs, tgw, _ = _trl_loss(["ipo", "exo_pair", "aot"], w, l, rw, rl, lw, ll, beta=0.3, label_smoothing=0.05,
                               loss_weights=[0.5, 2.0, 1.5])
    assert abs(ours.item() - theirs.item()) < TRL_TOL and (gw - tgw).abs().max() < TRL_TOL


# ==================================================================================================
# 3. Gradients by finite differences
# ==================================================================================================


@pytest.mark.parametrize("name", NEW_METHODS)
def test_gradient_by_finite_differences(name):
    w, l, rw, rl, lw, ll = _random_pairs(n=5, seed=11)
    hp = PER_PAIR[name][4] if name in PER_PAIR else BATCH_LEVEL[name][2]
    if name == "hinge":
        hp = {"beta": 0.01}  # away from the kink at βh = 1
    inputs = [x.clone().requires_grad_(True) for x in (w, l, rw, rl)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: _ours(name, a, b, c, d, lw, ll, **hp), inputs,
                                    eps=1e-6, atol=1e-7, rtol=1e-5)


# ==================================================================================================
# 4. Registry: methods, hyper-parameters, the TRL mapping and the mixture
# ==================================================================================================


@pytest.mark.parametrize("name", [*NEW_METHODS, "mix"])
def test_registered(name):
    method = get_method(name)
    assert method.name == name and METHODS[name] is method
    assert method.uses_reference and method.uses_rejected and not method.uses_rewards and not method.online
    assert "\n" not in method.summary
    assert set(method.resolve({})) == {hp.name for hp in method.hyperparameters}
    assert "beta" in method.resolve({})


@pytest.mark.parametrize("name", NEW_METHODS)
def test_batch_loss_is_the_mean_of_the_loss(name):
    w, l, rw, rl, lw, ll = _random_pairs()
    method = get_method(name)
    hp = method.resolve({})
    expected = _ours(name, w, l, rw, rl, lw, ll, **hp).mean()
    assert torch.allclose(method.batch_loss(_batch(w, l, rw, rl, lw, ll), **hp), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name,given", [
    ("robust", {"label_smoothing": 0.5}), ("robust", {"label_smoothing": -0.1}),
    ("exo-pair", {"label_smoothing": 0.0}), ("exo-pair", {"label_smoothing": 1.0}),
    ("aot", {"label_smoothing": 0.5}), ("aot-unpaired", {"label_smoothing": "nan"}),
    ("discopop", {"discopop_tau": 0.0}), *[(name, {"beta": 0.0}) for name in NEW_METHODS],
])
def test_out_of_range_hyperparameters_rejected(name, given):
    with pytest.raises(AlignlabError) as e:
        get_method(name).resolve(given)
    assert next(iter(given)) in str(e.value)


def test_in_range_hyperparameters_accepted():
    assert get_method("robust").resolve({"label_smoothing": 0.0})["label_smoothing"] == 0.0
    assert get_method("robust").resolve({})["label_smoothing"] == 0.1
    assert get_method("exo-pair").resolve({})["label_smoothing"] == 1e-3
    assert get_method("aot").resolve({"label_smoothing": "0.49"})["label_smoothing"] == 0.49
    assert get_method("discopop").resolve({})["discopop_tau"] == 0.05


def test_trl_names_cover_trl():
    """Every loss type TRL's DPOConfig documents maps to a registered method."""
    pytest.importorskip("trl")
    from trl import DPOConfig

    documented = set(re.findall(r"`'(\w+)'`", DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]))
    assert documented == set(TRL_LOSS_TYPES)
    assert all(name in METHODS for name in TRL_LOSS_TYPES.values())
    assert TRL_LOSS_TYPES["sigmoid"] == "dpo" and TRL_LOSS_TYPES["sigmoid_norm"] == "ln-dpo"


def test_one_loss_type_is_its_method():
    assert method_for_loss_types(["ipo"], None) == ("ipo", {})
    assert method_for_loss_types(["sigmoid"]) == ("dpo", {})
    assert method_for_loss_types(["bco_pair"], [1.0]) == ("bco-pair", {})
    assert method_for_loss_types("apo_zero") == ("apo-zero", {})  # TRL accepts a bare string too
    # one loss of another weight scales it, as TRL does
    assert method_for_loss_types(["hinge"], [2.5]) == ("mix", {"losses": "hinge", "loss_weights": "2.5"})


def test_several_loss_types_are_a_mix():
    assert method_for_loss_types(["sigmoid", "sft"], [1, 0.5]) == (
        "mix", {"losses": "dpo,sft", "loss_weights": "1.0,0.5"})
    method, params = method_for_loss_types(["sigmoid", "bco_pair", "sft"], None)  # MPO-style, weights 1 each
    assert (method, params) == ("mix", {"losses": "dpo,bco-pair,sft", "loss_weights": "1.0,1.0,1.0"})
    resolved = get_method("mix").resolve(params)
    assert resolved["losses"] == "dpo,bco-pair,sft" and resolved["beta"] == 0.1


@pytest.mark.parametrize("loss_types,loss_weights,needle", [
    (["sigmod"], None, "did you mean 'sigmoid'"),
    (["sigmoid", "orpo"], None, "'orpo'"),
    ([], None, "at least one"),
    (["sigmoid", "sft"], [1.0], "2 loss types"),
    (["sigmoid", "sft"], [1.0, -0.5], "weight 1 (of sft)"),
    (["sigmoid", "sft"], [1.0, float("nan")], "weight 1"),
    (["sigmoid", "sft"], [0, 0], "positive weight"),
])
def test_bad_loss_types_raise(loss_types, loss_weights, needle):
    with pytest.raises(AlignlabError) as e:
        method_for_loss_types(loss_types, loss_weights)
    assert needle in str(e.value)
    if "sigmod" in loss_types or "orpo" in loss_types:
        assert all(name in str(e.value) for name in TRL_LOSS_TYPES)  # lists the valid ones


@pytest.mark.parametrize("given,needle", [
    ({"losses": "dpo,dop"}, "did you mean 'dpo'"),
    ({"losses": "dpo,var"}, "'var', which mix cannot combine"),
    ({"losses": "grpo"}, "'grpo', which mix cannot combine"),
    ({"losses": "dpo,mix"}, "'mix', which mix cannot combine"),
    *([({"losses": "dpo,kto"}, "'kto', which mix cannot combine")] if "kto" in METHODS else []),  # unpaired
    ({"losses": "dpo,sft", "loss_weights": "1"}, "1 weights for the 2 losses"),
    ({"losses": "dpo,sft", "loss_weights": "1,a"}, "comma-separated numbers"),
    ({"losses": "dpo,sft", "loss_weights": "1,inf"}, "loss_weights[1] (of sft)"),
    ({"losses": "dpo,exo-pair"}, "exo-pair: hyper-parameter 'label_smoothing'"),  # ε = 0 is not in (0, 1)
    ({"losses": "robust", "label_smoothing": 0.6}, "label_smoothing"),
    ({"losses": "dpo", "lam": 1.0}, "unknown hyper-parameter"),
])
def test_mix_rejects_bad_params(given, needle):
    with pytest.raises(AlignlabError) as e:
        get_method("mix").resolve(given)
    assert needle in str(e.value)


def test_mix_is_the_weighted_sum_with_shared_hyperparameters():
    w, l, rw, rl, lw, ll = _random_pairs()
    b = _batch(w, l, rw, rl, lw, ll)
    mix = get_method("mix")
    params = mix.resolve({"losses": "ln-dpo, robust,simpo,sft", "loss_weights": "0.5, 2,1, 0.25", "beta": 0.7,
                          "label_smoothing": 0.2, "gamma": 0.3})
    expected = (0.5 * get_method("ln-dpo").batch_loss(b, beta=0.7)  # mix's β, not ln-dpo's default 2
                + 2 * get_method("robust").batch_loss(b, beta=0.7, label_smoothing=0.2)
                + get_method("simpo").batch_loss(b, beta=0.7, gamma=0.3)
                + 0.25 * sft_loss(w, lw.to(F64)).mean())
    assert torch.allclose(mix.batch_loss(b, **params), expected, rtol=1e-12, atol=0)
    # no weights: 1 each
    params = mix.resolve({"losses": "dpo,dpo"})
    assert torch.allclose(mix.batch_loss(b, **params), 2 * dpo_loss(w, l, rw, rl, 0.1).mean(), rtol=1e-12, atol=0)
