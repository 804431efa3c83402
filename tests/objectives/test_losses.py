"""Independent tests of the training objectives (SPEC §3) and the method registry.

Every expected number here is worked out from the SPEC equations with plain `math` (or taken from
TRL's own code), never from alignlab's output. Notation as in SPEC §3: ℓ = summed response log-prob,
|y| = response length in tokens, w = chosen, l = rejected, σ the logistic function.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from random_pairs import random_pairs

from alignlab.errors import AlignlabError
from alignlab.objectives.losses import (
    dpo_loss,
    grpo_advantages,
    grpo_clipped_surrogate,
    grpo_loss,
    k3_kl,
    ln_dpo_loss,
    sampled_log_z,
    simpo_loss,
    sft_loss,
    var_loss,
    var_weights,
    weight_entropy,
)
from alignlab.objectives.registry import GroupBatch, PairBatch, get_method

F64 = torch.float64
RTOL64, ATOL64 = 1e-10, 1e-12
RTOL32, ATOL32 = 1e-6, 1e-6


def t(values, dtype=F64, requires_grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


def close64(actual, expected):
    expected = expected if isinstance(expected, torch.Tensor) else t(expected)
    assert actual.dtype == F64
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected.to(F64), rtol=RTOL64, atol=ATOL64)


def close32(actual, expected):
    expected = expected if isinstance(expected, torch.Tensor) else t(expected)
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected.to(torch.float32), rtol=RTOL32, atol=ATOL32)


# -- plain-math references (SPEC §3) ---------------------------------------------------------------

def nls(z: float) -> float:
    """−log σ(z) = log(1 + e^{−z}), written stably with math only."""
    return math.log1p(math.exp(-z)) if z >= 0 else -z + math.log1p(math.exp(z))


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def softmax_math(scores: list[float]) -> list[float]:
    m = max(scores)
    e = [math.exp(s - m) for s in scores]
    total = sum(e)
    return [x / total for x in e]


def grouped_softmax_math(scores: list[float], ids: list) -> list[float]:
    out = [0.0] * len(scores)
    for g in set(ids):
        idx = [i for i, gid in enumerate(ids) if gid == g]
        for i, w in zip(idx, softmax_math([scores[i] for i in idx])):
            out[i] = w
    return out


# ==================================================================================================
# 1. Hand-computed values
# ==================================================================================================

def test_sft_hand_values_unequal_lengths():
    logps, lengths = [-12.0, -3.0, -7.5], [4, 1, 3]
    expected = [12.0 / 4, 3.0 / 1, 7.5 / 3]  # = [3.0, 3.0, 2.5]
    close64(sft_loss(t(logps), t(lengths)), expected)
    close64(sft_loss(t(logps), torch.tensor(lengths)), expected)  # integer token counts
    close32(sft_loss(t(logps, torch.float32), t(lengths, torch.float32)), expected)


def test_dpo_hand_values():
    w, l = [-10.0, -20.0, -30.0], [-12.0, -5.0, -8.0]
    rw, rl = [-11.0, -20.0, -25.0], [-11.5, -5.0, -10.0]
    # margins: (−10+11) − (−12+11.5) = 1.5 ; 0 − 0 = 0 ; (−30+25) − (−8+10) = −7
    beta = 0.1
    expected = [math.log(1 + math.exp(-0.15)), math.log(2.0), math.log(1 + math.exp(0.7))]
    close64(dpo_loss(t(w), t(l), t(rw), t(rl), beta), expected)
    close32(dpo_loss(*(t(x, torch.float32) for x in (w, l, rw, rl)), beta), expected)
    # β = 0.5 on the first pair: z = 0.75
    close64(dpo_loss(t(w[:1]), t(l[:1]), t(rw[:1]), t(rl[:1]), 0.5), [math.log(1 + math.exp(-0.75))])


def test_ln_dpo_hand_values_unequal_lengths():
    w, rw, lw = [-10.0, -6.0, -5.0], [-12.0, -3.0, -5.0], [4, 3, 5]
    l, rl, ll = [-9.0, -20.0, -7.0], [-6.0, -25.0, -7.0], [2, 10, 7]
    # pair 1: (−10+12)/4 − (−9+6)/2 = 0.5 + 1.5 = 2   -> z = 2·2 = 4
    # pair 2: (−6+3)/3 − (−20+25)/10 = −1 − 0.5 = −1.5 -> z = −3
    # pair 3: 0 − 0 = 0                                -> z = 0
    beta = 2.0
    expected = [math.log(1 + math.exp(-4.0)), math.log(1 + math.exp(3.0)), math.log(2.0)]
    close64(ln_dpo_loss(t(w), t(l), t(rw), t(rl), t(lw), t(ll), beta), expected)
    close32(ln_dpo_loss(*(t(x, torch.float32) for x in (w, l, rw, rl, lw, ll)), beta), expected)
    # unnormalised DPO would give a different value on pair 1 (margin 2 − (−3) = 5): the lengths matter
    assert abs(dpo_loss(t(w[:1]), t(l[:1]), t(rw[:1]), t(rl[:1]), beta).item() - expected[0]) > 1e-3


def test_simpo_hand_values_unequal_lengths():
    w, lw = [-8.0, -10.0, -3.0], [4, 2, 3]
    l, ll = [-9.0, -4.0, -6.0], [3, 4, 6]
    # per-token: (−2, −3) ; (−5, −1) ; (−1, −1)
    # β=2, γ=1:  2·(−2+3) − 1 = 1 ; 2·(−5+1) − 1 = −9 ; 2·0 − 1 = −1
    expected = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(9.0)), math.log(1 + math.exp(1.0))]
    close64(simpo_loss(t(w), t(l), t(lw), t(ll), 2.0, 1.0), expected)
    close32(simpo_loss(*(t(x, torch.float32) for x in (w, l, lw, ll)), 2.0, 1.0), expected)
    # γ = 0, β = 3 : 3 ; −12 ; 0
    expected0 = [math.log(1 + math.exp(-3.0)), math.log(1 + math.exp(12.0)), math.log(2.0)]
    close64(simpo_loss(t(w), t(l), t(lw), t(ll), 3.0, 0.0), expected0)


def test_var_loss_hand_values():
    logps = [-4.0, -2.0, -6.0, -1.0]
    ref = [-2.0, -1.0, -3.0, -1.5]
    r = [0.5, -0.25, 1.0, 0.3]
    lam = 0.5
    # scores ℓref + r/λ: −1, −1.5, −1, −0.9
    a, b, c = math.exp(-1.0), math.exp(-1.5), math.exp(-0.9)
    z = a + b + a + c
    omega = [a / z, b / z, a / z, c / z]
    expected = [omega[i] * -logps[i] for i in range(4)]
    close64(var_loss(t(logps), t(ref), t(r), lam), expected)
    close32(var_loss(t(logps, torch.float32), t(ref, torch.float32), t(r, torch.float32), lam), expected)
    # per-group: pairs (0,1) and (2,3)
    omega_g = [a / (a + b), b / (a + b), a / (a + c), c / (a + c)]
    expected_g = [omega_g[i] * -logps[i] for i in range(4)]
    close64(var_loss(t(logps), t(ref), t(r), lam, group_ids=torch.tensor([0, 0, 1, 1])), expected_g)


# ==================================================================================================
# 4. var_weights against a hand softmax
# ==================================================================================================

def test_var_weights_whole_batch():
    ref = [-2.0, -1.0, -3.0, -1.5]
    r = [0.5, -0.25, 1.0, 0.3]
    # λ = 0.5 -> scores −1, −1.5, −1, −0.9
    a, b, c = math.exp(-1.0), math.exp(-1.5), math.exp(-0.9)
    z = 2 * a + b + c
    expected = [a / z, b / z, a / z, c / z]
    w = var_weights(t(ref), t(r), 0.5)
    close64(w, expected)
    assert math.isclose(w.sum().item(), 1.0, rel_tol=1e-12)
    w32 = var_weights(t(ref, torch.float32), t(r, torch.float32), 0.5)
    close32(w32, expected)
    # λ = 2 -> scores −1.75, −1.125, −2.5, −1.35
    close64(var_weights(t(ref), t(r), 2.0), softmax_math([-1.75, -1.125, -2.5, -1.35]))


def test_var_weights_per_group():
    ref = [-1.0, -2.0, -0.5, -3.0, -1.0]
    r = [0.0, 1.0, 0.2, 0.6, -0.4]
    lam = 0.2
    # scores: −1, 3, 0.5, 0, −3 ; groups {0,1}, {2,3,4}
    e = [math.exp(s) for s in (-1.0, 3.0, 0.5, 0.0, -3.0)]
    g0, g1 = e[0] + e[1], e[2] + e[3] + e[4]
    expected = [e[0] / g0, e[1] / g0, e[2] / g1, e[3] / g1, e[4] / g1]
    w = var_weights(t(ref), t(r), lam, group_ids=torch.tensor([0, 0, 1, 1, 1]))
    close64(w, expected)
    assert math.isclose(w[:2].sum().item(), 1.0, rel_tol=1e-12)
    assert math.isclose(w[2:].sum().item(), 1.0, rel_tol=1e-12)
    close32(var_weights(t(ref, torch.float32), t(r, torch.float32), lam,
                        group_ids=torch.tensor([0, 0, 1, 1, 1])), expected)


def test_var_weights_interleaved_unsorted_group_ids():
    ref = [-1.0, -2.0, -0.5, -3.0, -1.0]
    r = [0.0, 1.0, 0.2, 0.6, -0.4]
    scores = [-1.0, 3.0, 0.5, 0.0, -3.0]  # λ = 0.2
    ids = [7, 3, 7, 3, 3]
    expected = grouped_softmax_math(scores, ids)
    # by hand: group 7 = {0, 2}, group 3 = {1, 3, 4}
    assert math.isclose(expected[0], math.exp(-1) / (math.exp(-1) + math.exp(0.5)))
    w = var_weights(t(ref), t(r), 0.2, group_ids=torch.tensor(ids))
    close64(w, expected)
    # a singleton group gets weight exactly one
    w1 = var_weights(t(ref), t(r), 0.2, group_ids=torch.tensor([0, 1, 1, 2, 2]))
    close64(w1[:1], [1.0])


def test_var_weights_length_normalize():
    ref, lengths, r = [-8.0, -3.0, -10.0], [4, 1, 5], [1.0, 0.0, 0.5]
    # λ = 1, normalised: −8/4+1 = −1, −3/1+0 = −3, −10/5+0.5 = −1.5
    a, b, c = math.exp(-1.0), math.exp(-3.0), math.exp(-1.5)
    expected = [a / (a + b + c), b / (a + b + c), c / (a + b + c)]
    close64(var_weights(t(ref), t(r), 1.0, lengths=t(lengths), length_normalize=True), expected)
    close64(var_weights(t(ref), t(r), 1.0, lengths=torch.tensor(lengths), length_normalize=True), expected)
    # per group {0,1}, {2}
    close64(var_weights(t(ref), t(r), 1.0, group_ids=torch.tensor([0, 0, 1]), lengths=t(lengths),
                        length_normalize=True), [a / (a + b), b / (a + b), 1.0])
    # without normalisation the summed ℓref is used: −7, −3, −9.5
    close64(var_weights(t(ref), t(r), 1.0, lengths=t(lengths)), softmax_math([-7.0, -3.0, -9.5]))
    with pytest.raises(ValueError):
        var_weights(t(ref), t(r), 1.0, length_normalize=True)


def test_weight_entropy_hand_values():
    # p = (1/2, 1/4, 1/4, 0): H = 1/2·ln 2 + 2·1/4·ln 4 = 1.5 ln 2; unnormalised weights normalise first.
    close64(weight_entropy(t([0.5, 0.25, 0.25, 0.0])), t(1.5 * math.log(2)))
    close64(weight_entropy(t([2.0, 1.0, 1.0, 0.0])), t(1.5 * math.log(2)))
    close64(weight_entropy(t([0.2] * 5)), t(math.log(5)))  # uniform: log n
    close64(weight_entropy(t([0.0, 1.0, 0.0])), t(0.0))  # one takes all
    close32(weight_entropy(t([3.0, 1.0], torch.float32)), t(0.75 * math.log(4 / 3) + 0.25 * math.log(4)))


def var_pairs(scores_chosen, scores_rejected, groups=None) -> PairBatch:
    """Pairs whose VAR scores ℓref + r/λ (λ = 1, summed ℓref) are the given numbers: ℓref 0, r = score."""
    zeros = t([0.0] * len(scores_chosen))
    return PairBatch(zeros, t([1.0] * len(zeros)), zeros, t([1.0] * len(zeros)), zeros, zeros,
                     t(scores_chosen), t(scores_rejected),
                     prompt_groups=None if groups is None else torch.tensor(groups))


def test_var_diagnostics_log_the_entropy_of_the_batch_normalised_weights():
    var = get_method("var")
    params = {**var.resolve({}), "length_normalize": False, "lam": 1.0}
    batch = var_pairs([math.log(3), 0.0], [0.0, 0.0])
    # Whole batch: ω = (3, 1, 1, 1)/6 over (chosen 0, chosen 1, rejected 0, rejected 1).
    whole = 0.5 * math.log(2) + 3 * (1 / 6) * math.log(6)
    close64(var.diagnostics(batch, **params)["weight_entropy"], t(whole))
    # Per prompt (pairs 0 and 1 apart): ω = (3/4, 1/2, 1/4, 1/2), normalised over the batch (3/8, 1/4, 1/8, 1/4).
    per_prompt = 3 / 8 * math.log(8 / 3) + 2 * 0.25 * math.log(4) + 1 / 8 * math.log(8)
    diagnostics = var.diagnostics(var_pairs([math.log(3), 0.0], [0.0, 0.0], [0, 1]),
                                  **{**params, "z_estimator": "prompt"})
    close64(diagnostics["weight_entropy"], t(per_prompt))
    assert all(get_method(m).diagnostics is None for m in ("sft", "dpo", "ln-dpo", "simpo", "grpo"))


# ==================================================================================================
# 2. Gradients: analytic (math) and central finite differences (float64)
# ==================================================================================================

def central_diff(f, args, i, eps=1e-6):
    """∂f/∂args[i] by central differences; f returns a scalar tensor."""
    base = [a.detach().clone() for a in args]
    x = base[i]
    grad = torch.zeros_like(x)
    for j in range(x.numel()):
        xp, xm = x.clone(), x.clone()
        xp.view(-1)[j] += eps
        xm.view(-1)[j] -= eps
        fp = f(*[xp if k == i else a for k, a in enumerate(base)]).item()
        fm = f(*[xm if k == i else a for k, a in enumerate(base)]).item()
        grad.view(-1)[j] = (fp - fm) / (2 * eps)
    return grad


def autograd_grad(f, args, i):
    leaves = [a.detach().clone().requires_grad_(k == i) for k, a in enumerate(args)]
    (g,) = torch.autograd.grad(f(*leaves), [leaves[i]])
    return g


def check_fd(per_example_loss, args, policy_idx):
    """Autograd gradient of Σ_b v_b·loss_b equals central differences, w.r.t. each policy input."""
    gen = torch.Generator().manual_seed(0)
    n = args[0].shape[0]
    v = torch.rand(n, generator=gen, dtype=F64) + 0.5

    def f(*a):
        return (v * per_example_loss(*a)).sum()

    for i in policy_idx:
        g_auto = autograd_grad(f, args, i)
        g_fd = central_diff(f, args, i)
        torch.testing.assert_close(g_auto, g_fd, rtol=1e-7, atol=1e-8)
        assert torch.autograd.gradcheck(
            per_example_loss, [a.detach().clone().requires_grad_(k == i) for k, a in enumerate(args)])


def test_sft_gradient():
    logps, lengths = t([-12.0, -3.0, -7.5]), t([4.0, 1.0, 3.0])
    check_fd(sft_loss, [logps, lengths], [0])
    g = autograd_grad(lambda a, b: sft_loss(a, b).sum(), [logps, lengths], 0)
    close64(g, [-1 / 4, -1 / 1, -1 / 3])


def test_dpo_gradient():
    w, l, rw, rl = t([-10.0, -20.0, -30.0]), t([-12.0, -5.0, -8.0]), t([-11.0, -20.0, -25.0]), \
        t([-11.5, -5.0, -10.0])
    beta = 0.1

    def loss(*a):
        return dpo_loss(*a, beta)

    check_fd(loss, [w, l, rw, rl], [0, 1])
    z = [0.15, 0.0, -0.7]
    # ∂/∂ℓθ(y_w) = −β σ(−z), ∂/∂ℓθ(y_l) = +β σ(−z)
    close64(autograd_grad(lambda *a: loss(*a).sum(), [w, l, rw, rl], 0), [-beta * sig(-x) for x in z])
    close64(autograd_grad(lambda *a: loss(*a).sum(), [w, l, rw, rl], 1), [beta * sig(-x) for x in z])


def test_ln_dpo_gradient():
    w, l = t([-10.0, -6.0, -5.0]), t([-9.0, -20.0, -7.0])
    rw, rl = t([-12.0, -3.0, -5.0]), t([-6.0, -25.0, -7.0])
    lw, ll = t([4.0, 3.0, 5.0]), t([2.0, 10.0, 7.0])
    beta = 2.0

    def loss(*a):
        return ln_dpo_loss(*a, beta)

    args = [w, l, rw, rl, lw, ll]
    check_fd(loss, args, [0, 1])
    z = [4.0, -3.0, 0.0]
    close64(autograd_grad(lambda *a: loss(*a).sum(), args, 0),
            [-beta * sig(-z[i]) / [4, 3, 5][i] for i in range(3)])
    close64(autograd_grad(lambda *a: loss(*a).sum(), args, 1),
            [beta * sig(-z[i]) / [2, 10, 7][i] for i in range(3)])


def test_simpo_gradient():
    w, l, lw, ll = t([-8.0, -10.0, -3.0]), t([-9.0, -4.0, -6.0]), t([4.0, 2.0, 3.0]), t([3.0, 4.0, 6.0])
    beta, gamma = 2.0, 1.0

    def loss(*a):
        return simpo_loss(*a, beta, gamma)

    args = [w, l, lw, ll]
    check_fd(loss, args, [0, 1])
    z = [1.0, -9.0, -1.0]
    close64(autograd_grad(lambda *a: loss(*a).sum(), args, 0),
            [-beta * sig(-z[i]) / [4, 2, 3][i] for i in range(3)])
    close64(autograd_grad(lambda *a: loss(*a).sum(), args, 1),
            [beta * sig(-z[i]) / [3, 4, 6][i] for i in range(3)])


@pytest.mark.parametrize("group_ids", [None, [0, 0, 1, 1]])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_var_gradient_is_minus_omega_and_weights_are_stop_gradient(group_ids, length_normalize):
    logps = t([-4.0, -2.0, -6.0, -1.0], requires_grad=True)
    ref = t([-2.0, -1.0, -3.0, -1.5], requires_grad=True)
    r = t([0.5, -0.25, 1.0, 0.3], requires_grad=True)
    lengths = [2.0, 1.0, 3.0, 5.0]
    lam = 0.5
    ids = None if group_ids is None else torch.tensor(group_ids)
    loss = var_loss(logps, ref, r, lam, ids, t(lengths), length_normalize)
    g_logps, g_ref, g_r = torch.autograd.grad(loss.sum(), [logps, ref, r], allow_unused=True)
    for g in (g_ref, g_r):
        assert g is None or torch.count_nonzero(g) == 0
    # ω by hand
    ref_v = [-2.0, -1.0, -3.0, -1.5]
    if length_normalize:
        ref_v = [x / n for x, n in zip(ref_v, lengths)]
    scores = [ref_v[i] + [0.5, -0.25, 1.0, 0.3][i] / lam for i in range(4)]
    omega = softmax_math(scores) if group_ids is None else grouped_softmax_math(scores, group_ids)
    close64(g_logps, [-x for x in omega])
    # and central differences on logps agree (the loss is linear in logps)
    fd = central_diff(lambda a: var_loss(a, ref, r, lam, ids, t(lengths), length_normalize).sum(),
                      [logps], 0)
    torch.testing.assert_close(fd, g_logps, rtol=1e-7, atol=1e-9)
    # the weights themselves carry no gradient
    wts = var_weights(ref, r, lam, ids, t(lengths), length_normalize)
    assert not wts.requires_grad


# ==================================================================================================
# 5. Numerical stability
# ==================================================================================================

EXTREME_W = [-5000.0, -1.0, -5000.0, -1.0]
EXTREME_L = [-1.0, -5000.0, -5000.0, -1.0]
EXTREME_RW = [-1.0, -5000.0, -1.0, -5000.0]
EXTREME_RL = [-5000.0, -1.0, -1.0, -5000.0]
EXTREME_LW = [1.0, 1.0, 3.0, 200.0]
EXTREME_LL = [1.0, 2.0, 1.0, 1.0]
EXTREME_R = [50.0, -50.0, -50.0, 50.0]


def _finite_loss_and_grad(fn, args, policy_idx):
    leaves = [a.detach().clone().requires_grad_(k in policy_idx) for k, a in enumerate(args)]
    out = fn(*leaves)
    assert torch.isfinite(out).all(), out
    grads = torch.autograd.grad(out.sum(), [leaves[k] for k in policy_idx])
    for g in grads:
        assert torch.isfinite(g).all(), g
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta", [0.1, 2.0, 10.0])
def test_pairwise_losses_stable(dtype, beta):
    w, l, rw, rl, lw, ll = (t(x, dtype) for x in (EXTREME_W, EXTREME_L, EXTREME_RW, EXTREME_RL,
                                                 EXTREME_LW, EXTREME_LL))
    out = _finite_loss_and_grad(lambda *a: dpo_loss(*a, beta), [w, l, rw, rl], [0, 1])
    # pair 1: chosen 4999 below its reference, rejected 4999 above: margin −9998, so the loss is
    # −log σ(−9998β) = 9998β (+ e^{−9998β}, negligible); pair 2: margin +9998, loss ≈ 0, never negative
    assert math.isclose(out[0].item(), beta * 9998.0, rel_tol=1e-6)
    assert 0.0 <= out[1].item() < 1e-30
    _finite_loss_and_grad(lambda *a: ln_dpo_loss(*a, beta), [w, l, rw, rl, lw, ll], [0, 1])
    _finite_loss_and_grad(lambda *a: simpo_loss(*a, beta, 1.0), [w, l, lw, ll], [0, 1])
    _finite_loss_and_grad(sft_loss, [w, lw], [0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lam", [0.1, 1.0])
@pytest.mark.parametrize("group_ids", [None, [0, 0, 1, 1], [0, 1, 1, 1]])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_var_stable(dtype, lam, group_ids, length_normalize):
    logps, ref, r, lengths = t(EXTREME_W, dtype), t(EXTREME_RW, dtype), t(EXTREME_R, dtype), \
        t(EXTREME_LW, dtype)
    ids = None if group_ids is None else torch.tensor(group_ids)
    w = var_weights(ref, r, lam, ids, lengths, length_normalize)
    assert torch.isfinite(w).all() and (w >= 0).all()
    groups = [0, 0, 0, 0] if group_ids is None else group_ids
    for g in set(groups):
        s = sum(w[i].item() for i in range(4) if groups[i] == g)
        assert math.isclose(s, 1.0, rel_tol=1e-6 if dtype == torch.float32 else 1e-12)
    # against the math softmax
    ref_v = [x / n for x, n in zip(EXTREME_RW, EXTREME_LW)] if length_normalize else EXTREME_RW
    scores = [ref_v[i] + EXTREME_R[i] / lam for i in range(4)]
    expected = softmax_math(scores) if group_ids is None else grouped_softmax_math(scores, group_ids)
    (close32 if dtype == torch.float32 else close64)(w, expected)
    _finite_loss_and_grad(lambda a, b, c, d: var_loss(a, b, c, lam, ids, d, length_normalize),
                          [logps, ref, r, lengths], [0])


def test_var_weights_all_extreme_group_is_uniform():
    ref = t([-5000.0, -5000.0, -5000.0])
    w = var_weights(ref, t([0.0, 0.0, 0.0]), 0.1)
    close64(w, [1 / 3, 1 / 3, 1 / 3])
    w = var_weights(ref, t([50.0, 50.0, -50.0]), 0.1, group_ids=torch.tensor([1, 1, 1]))
    close64(w, [0.5, 0.5, 0.0])


# ==================================================================================================
# 3. Equivalence with TRL
# ==================================================================================================

def _random_pairs(n=6, seed=1234, dtype=F64):
    return random_pairs(n, seed, dtype)


class _StubFusedLM:
    """Stands in for a causal LM patched with TRL's `add_fused_lm_head`, called with `fused_lm_head=True`.

    Returns a `trl.trainer.utils.FusedCausalLMOutput` whose per-token `log_probs` (shape (batch, T−1),
    zero where the shifted label is −100, as documented there) sum over each row to a prescribed
    per-sequence log-prob. The split over tokens is random so nothing depends on where the mass lies.
    """

    training = True

    def __init__(self, seq_logps, seed=0):
        self.seq_logps = seq_logps
        self.seed = seed

    def __call__(self, *, labels, fused_lm_head, **kwargs):
        from trl.trainer.utils import FusedCausalLMOutput

        assert fused_lm_head
        mask = labels[:, 1:] != -100
        g = torch.Generator().manual_seed(self.seed)
        split = (torch.rand(mask.shape, generator=g, dtype=F64) + 0.1) * mask
        split = split / split.sum(dim=1, keepdim=True)
        log_probs = split * self.seq_logps[:, None]
        zeros = torch.zeros(mask.shape, dtype=F64)
        return FusedCausalLMOutput(loss=-log_probs.sum(), log_probs=log_probs, entropy=zeros,
                                   mean_logits=zeros, is_top1=torch.zeros(mask.shape, dtype=torch.bool),
                                   label_mask=mask)


def _trl_dpo_loss(loss_type, beta, w, l, rw, rl, lw, ll):
    """TRL's own `DPOTrainer._compute_loss` (trl/trainer/dpo_trainer.py) on a stub model, with
    precomputed reference log-probs. The attributes set below are those `DPOTrainer.__init__` sets
    from `DPOConfig` (dpo_trainer.py lines ~801-974), with the config defaults asserted."""
    pytest.importorskip("trl")
    from trl import DPOConfig, DPOTrainer

    fields = DPOConfig.__dataclass_fields__
    assert fields["f_divergence_type"].default == "reverse_kl"
    assert fields["label_smoothing"].default == 0.0
    assert fields["ld_alpha"].default is None
    assert fields["use_weighting"].default is False

    n = w.shape[0]
    prompt_len = 3
    lengths = torch.cat([lw, ll])
    T = prompt_len + int(lengths.max()) + 2  # some right padding
    pos = torch.arange(T)
    completion_mask = ((pos >= prompt_len) & (pos < prompt_len + lengths[:, None])).long()
    attention_mask = (pos < prompt_len + lengths[:, None]).long()
    input_ids = (pos + 5).repeat(2 * n, 1)

    policy = torch.cat([w, l]).detach().clone().requires_grad_(True)
    model = _StubFusedLM(policy)
    tr = object.__new__(DPOTrainer)
    tr.__dict__.update(
        model=model, beta=beta, precompute_ref_logps=True, loss_types=[loss_type], loss_weights=[1.0],
        ld_alpha=None, f_divergence_type="reverse_kl", label_smoothing=0.0, use_weighting=False,
        aux_loss_enabled=False, accelerator=SimpleNamespace(device=torch.device("cpu"),
                                                            gather_for_metrics=lambda x: x,
                                                            gather=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0,
        _tp_size=1)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
              "ref_chosen_logps": rw, "ref_rejected_logps": rl}
    loss = DPOTrainer._compute_loss(tr, model, inputs, return_outputs=False)
    (grad,) = torch.autograd.grad(loss, [policy])
    return loss, grad[:n], grad[n:]


def _alignlab_mean_and_grads(fn, w, l, *rest):
    wl, ll_ = w.detach().clone().requires_grad_(True), l.detach().clone().requires_grad_(True)
    out = fn(wl, ll_, *rest)
    gw, gl = torch.autograd.grad(out.mean(), [wl, ll_])
    return out.detach(), gw, gl


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl_sigmoid(beta):
    pytest.importorskip("trl")
    w, l, rw, rl, lw, ll = _random_pairs()
    ours, gw, gl = _alignlab_mean_and_grads(lambda a, b: dpo_loss(a, b, rw, rl, beta), w, l)
    # per example: TRL returns the batch mean, so run it one pair at a time
    for i in range(w.shape[0]):
        s = slice(i, i + 1)
        trl_loss, _, _ = _trl_dpo_loss("sigmoid", beta, w[s], l[s], rw[s], rl[s], lw[s], ll[s])
        torch.testing.assert_close(ours[i], trl_loss.detach(), rtol=RTOL64, atol=ATOL64)
    trl_loss, trl_gw, trl_gl = _trl_dpo_loss("sigmoid", beta, w, l, rw, rl, lw, ll)
    torch.testing.assert_close(ours.mean(), trl_loss.detach(), rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(gw, trl_gw, rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(gl, trl_gl, rtol=RTOL64, atol=ATOL64)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_ln_dpo_matches_trl_sigmoid_norm(beta):
    # TRL's `sigmoid_norm` divides each log-ratio by its completion token count
    # (`completion_mask.sum(dim=1).clamp(min=1.0)`): the same |y| as alignlab, same β.
    pytest.importorskip("trl")
    w, l, rw, rl, lw, ll = _random_pairs(seed=99)
    assert (lw != ll).any()
    ours, gw, gl = _alignlab_mean_and_grads(
        lambda a, b: ln_dpo_loss(a, b, rw, rl, lw.to(F64), ll.to(F64), beta), w, l)
    for i in range(w.shape[0]):
        s = slice(i, i + 1)
        trl_loss, _, _ = _trl_dpo_loss("sigmoid_norm", beta, w[s], l[s], rw[s], rl[s], lw[s], ll[s])
        torch.testing.assert_close(ours[i], trl_loss.detach(), rtol=RTOL64, atol=ATOL64)
    trl_loss, trl_gw, trl_gl = _trl_dpo_loss("sigmoid_norm", beta, w, l, rw, rl, lw, ll)
    torch.testing.assert_close(ours.mean(), trl_loss.detach(), rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(gw, trl_gw, rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(gl, trl_gl, rtol=RTOL64, atol=ATOL64)


def _trl_cpo(beta, gamma):
    """A minimally constructed `trl.experimental.cpo.CPOTrainer` whose `cpo_loss` is SimPO.

    Mapping (trl/experimental/cpo/cpo_trainer.py, `CPOTrainer.cpo_loss`): TRL computes
    `logits = avg_w − avg_l − simpo_gamma/beta` and loss `−logsigmoid(beta·logits)`, i.e.
    `−log σ(β(avg_w − avg_l) − simpo_gamma)`: TRL's `simpo_gamma` is alignlab's γ unchanged (the
    `gamma_beta_ratio` division is undone by the multiplication by β) and β is the same. Its inputs
    are *averaged* log-probs (`average_log_prob=True` for simpo), i.e. ℓθ/|y|. `label_smoothing` 0 and
    `alpha` 0 (no AlphaPO transform). `cpo_alpha` (default 1.0) adds an NLL term outside `cpo_loss`,
    in `get_batch_loss_metrics`; pure SimPO needs `cpo_alpha=0`, and we only call `cpo_loss`.
    """
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    tr = object.__new__(CPOTrainer)
    tr.__dict__.update(beta=beta, label_smoothing=0.0, loss_type="simpo", simpo_gamma=gamma, alpha=0.0,
                       cpo_alpha=0.0, accelerator=SimpleNamespace(device=torch.device("cpu")))
    return tr


@pytest.mark.parametrize("beta,gamma", [(2.0, 1.0), (2.5, 0.5), (10.0, 5.0)])
def test_simpo_matches_trl_cpo_simpo(beta, gamma):
    pytest.importorskip("trl")
    w, l, _, _, lw, ll = _random_pairs(seed=7)
    ours, gw, gl = _alignlab_mean_and_grads(lambda a, b: simpo_loss(a, b, lw, ll, beta, gamma), w, l)
    tr = _trl_cpo(beta, gamma)
    wl, ll_ = w.detach().clone().requires_grad_(True), l.detach().clone().requires_grad_(True)
    losses, _, _ = tr.cpo_loss(wl / lw, ll_ / ll)
    torch.testing.assert_close(ours, losses.detach(), rtol=RTOL64, atol=ATOL64)
    tgw, tgl = torch.autograd.grad(losses.mean(), [wl, ll_])
    torch.testing.assert_close(gw, tgw, rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(gl, tgl, rtol=RTOL64, atol=ATOL64)


def test_simpo_length_convention_matches_trl_get_batch_logps():
    """TRL's averaged log-prob (`CPOTrainer.get_batch_logps(average_log_prob=True)`) is ℓθ/|y| with
    |y| the number of non-(−100) shifted labels: feed alignlab the summed version and that count."""
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(3)
    n, T, V, prompt_len = 4, 12, 11, 2
    lengths = torch.tensor([1, 4, 9, 6, 3, 9, 2, 5])  # chosen then rejected
    logits = torch.randn(2 * n, T, V, generator=g, dtype=F64)
    labels = torch.randint(0, V, (2 * n, T), generator=g)
    pos = torch.arange(T)
    labels[(pos < prompt_len) | (pos >= prompt_len + lengths[:, None])] = -100
    summed = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
    avg = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    beta, gamma = 2.0, 0.7
    ours = simpo_loss(summed[:n], summed[n:], lengths[:n], lengths[n:], beta, gamma)
    theirs, _, _ = _trl_cpo(beta, gamma).cpo_loss(avg[:n], avg[n:])
    torch.testing.assert_close(ours, theirs, rtol=RTOL64, atol=ATOL64)


# ==================================================================================================
# 6. The registry's batch losses (its names and hyper-parameters: test_registry.py)
# ==================================================================================================

# -- batch_loss reductions, against plain-math per-example values ------------------------------------

W = [-10.0, -6.0, -5.0, -14.0]
L = [-9.0, -20.0, -7.0, -3.0]
RW = [-12.0, -3.0, -5.0, -13.0]
RL = [-6.0, -25.0, -7.0, -4.5]
LW = [4, 3, 5, 7]
LL = [2, 10, 7, 1]
RWD = [0.4, -1.0, 0.0, 2.0]
RLD = [-0.3, 0.5, 1.0, -2.0]


def _batch(dtype=F64):
    return PairBatch(chosen_logps=t(W, dtype), chosen_lengths=t(LW, dtype), rejected_logps=t(L, dtype),
                     rejected_lengths=t(LL, dtype), ref_chosen_logps=t(RW, dtype),
                     ref_rejected_logps=t(RL, dtype), reward_chosen=t(RWD, dtype),
                     reward_rejected=t(RLD, dtype))


def _mean(xs):
    return sum(xs) / len(xs)


def _call(method, batch, **given):
    m = get_method(method)
    return m.batch_loss(batch, **m.resolve(given))


def test_batch_loss_sft_dpo_lndpo_simpo_are_means():
    b = _batch()
    n = len(W)
    sft = _mean([-W[i] / LW[i] for i in range(n)])
    dpo = _mean([nls(0.3 * ((W[i] - RW[i]) - (L[i] - RL[i]))) for i in range(n)])
    ln = _mean([nls(1.5 * ((W[i] - RW[i]) / LW[i] - (L[i] - RL[i]) / LL[i])) for i in range(n)])
    simpo = _mean([nls(2.5 * (W[i] / LW[i] - L[i] / LL[i]) - 0.8) for i in range(n)])
    close64(_call("sft", b), torch.tensor(sft, dtype=F64))
    close64(_call("dpo", b, beta="0.3"), torch.tensor(dpo, dtype=F64))
    close64(_call("ln-dpo", b, beta=1.5), torch.tensor(ln, dtype=F64))
    close64(_call("simpo", b, beta=2.5, gamma=0.8), torch.tensor(simpo, dtype=F64))
    # float32 batch
    close32(_call("dpo", _batch(torch.float32), beta=0.3), torch.tensor(dpo))


def test_batch_loss_sft_ignores_missing_rejected():
    b = PairBatch(chosen_logps=t(W), chosen_lengths=t(LW))
    close64(_call("sft", b), torch.tensor(_mean([-W[i] / LW[i] for i in range(len(W))]), dtype=F64))


@pytest.mark.parametrize("length_normalize", [False, True])
@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_batch_loss_var(length_normalize, lam):
    b = _batch()
    n = len(W)
    logps = W + L
    ref = RW + RL
    lens = LW + LL
    r = RWD + RLD
    refv = [ref[i] / lens[i] for i in range(2 * n)] if length_normalize else ref
    scores = [refv[i] + r[i] / lam for i in range(2 * n)]
    # "batch": one softmax over all 2n responses, loss = −Σ_i ω_i ℓθ(y_i) (plain sum)
    om = softmax_math(scores)
    expected_batch = sum(om[i] * -logps[i] for i in range(2 * n))
    # "prompt": each pair (chosen_i, rejected_i) is its own group; sum over samples / number of pairs
    expected_prompt = 0.0
    for i in range(n):
        a, c = softmax_math([scores[i], scores[n + i]])
        expected_prompt += a * -logps[i] + c * -logps[n + i]
    expected_prompt /= n
    got_b = _call("var", b, lam=lam, z_estimator="batch", length_normalize=length_normalize)
    got_p = _call("var", b, lam=str(lam), z_estimator="prompt", length_normalize=str(length_normalize))
    close64(got_b, torch.tensor(expected_batch, dtype=F64))
    close64(got_p, torch.tensor(expected_prompt, dtype=F64))


def test_batch_loss_var_gradient():
    b = _batch()
    b.chosen_logps.requires_grad_(True)
    b.rejected_logps.requires_grad_(True)
    b.ref_chosen_logps.requires_grad_(True)
    b.reward_chosen.requires_grad_(True)
    n = len(W)
    loss = _call("var", b, lam=1.0, z_estimator="prompt", length_normalize=False)
    gw, gl, gref, grew = torch.autograd.grad(
        loss, [b.chosen_logps, b.rejected_logps, b.ref_chosen_logps, b.reward_chosen], allow_unused=True)
    scores = [(RW + RL)[i] + (RWD + RLD)[i] for i in range(2 * n)]
    om = [softmax_math([scores[i], scores[n + i]]) for i in range(n)]
    close64(gw, [-om[i][0] / n for i in range(n)])
    close64(gl, [-om[i][1] / n for i in range(n)])
    for g in (gref, grew):
        assert g is None or torch.count_nonzero(g) == 0


def test_var_prompt_normaliser_pools_pairs_that_share_a_prompt():
    """Pairs 0 and 2 share a prompt: their four responses form one softmax group of the loss."""
    import math as m
    ref_c, ref_r = [-1.0, -2.0, -3.0], [-2.0, -1.5, -0.5]
    rew_c, rew_r = [1.0, 0.0, 2.0], [0.0, 1.0, -1.0]
    logps_c, logps_r = [-4.0, -5.0, -6.0], [-7.0, -8.0, -9.0]
    lam = 0.5
    batch = PairBatch(
        chosen_logps=torch.tensor(logps_c, dtype=torch.float64), chosen_lengths=torch.ones(3, dtype=torch.float64),
        rejected_logps=torch.tensor(logps_r, dtype=torch.float64), rejected_lengths=torch.ones(3, dtype=torch.float64),
        ref_chosen_logps=torch.tensor(ref_c, dtype=torch.float64), ref_rejected_logps=torch.tensor(ref_r, dtype=torch.float64),
        reward_chosen=torch.tensor(rew_c, dtype=torch.float64), reward_rejected=torch.tensor(rew_r, dtype=torch.float64),
        prompt_groups=torch.tensor([5, 9, 5]))
    groups = {5: [("c", 0), ("r", 0), ("c", 2), ("r", 2)], 9: [("c", 1), ("r", 1)]}
    table = {"c": (ref_c, rew_c, logps_c), "r": (ref_r, rew_r, logps_r)}
    expected = 0.0
    for members in groups.values():
        scores = [table[k][0][i] + table[k][1][i] / lam for k, i in members]
        z = sum(m.exp(s) for s in scores)
        expected += sum(m.exp(s) / z * -table[k][2][i] for s, (k, i) in zip(scores, members))
    expected /= 2  # two prompt groups
    loss = get_method("var").batch_loss(batch, lam=lam, z_estimator="prompt", length_normalize=False)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_var_weights_too_small_to_matter_are_zero_not_denormal():
    """exp(-50) relative weight ≈ 2e-22 < √(float32 tiny) ≈ 1.1e-19: zeroed, so no denormal gradients."""
    ref = torch.tensor([0.0, -50.0, -40.0], dtype=torch.float32)
    weights = var_weights(ref, torch.zeros(3), lam=1.0)
    assert weights[1].item() == 0.0
    assert weights[2].item() == pytest.approx(math.exp(-40) / (1 + math.exp(-50) + math.exp(-40)), rel=1e-5)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-7)


# ==================================================================================================
# 7. VAR's `sampled` Z estimator, by hand
# ==================================================================================================

def test_sampled_log_z_hand_values():
    # λ = 0.5. Prompt A, samples r = (0, 1):  Ẑ = (e^0 + e^2)/2 = (1 + 7.389056099)/2 = 4.194528049
    #          Prompt B, samples r = (−1, 1): Ẑ = (e^−2 + e^2)/2 = cosh 2 = 3.762195691
    log_z = sampled_log_z(t([[0.0, 1.0], [-1.0, 1.0]]), 0.5)
    close64(log_z, [math.log(4.194528049465325), math.log(3.7621956910836314)])
    close64(log_z, [1.4337808304830273, 1.3250027473578645])
    # one sample: Ẑ = exp(r/λ) exactly; K equal samples: the same
    close64(sampled_log_z(t([[0.3]]), 0.5), [0.6])
    close64(sampled_log_z(t([[0.3, 0.3, 0.3]]), 0.5), [0.6])


def test_var_weights_with_sampled_normaliser_hand_values():
    # ω_i = exp(ℓref_i + r_i/λ − log Ẑ(x_i)), λ = 0.5, Ẑ_A = 4.194528049, Ẑ_B = cosh 2 = 3.762195691
    #   y0 (prompt A): ℓref −1,   r 1   -> e^{−1+2}/Ẑ_A   = 2.718281828/4.194528049 = 0.648054274
    #   y1 (prompt A): ℓref −2,   r 0   -> e^{−2}/Ẑ_A     = 0.135335283/4.194528049 = 0.032264722
    #   y2 (prompt B): ℓref −0.5, r 0.5 -> e^{−0.5+1}/Ẑ_B = 1.648721271/3.762195691 = 0.438233788
    #   y3 (prompt B): ℓref −3,   r −0.5 -> e^{−3−1}/Ẑ_B  = 0.018315639/3.762195691 = 0.004868338
    ref, r = [-1.0, -2.0, -0.5, -3.0], [1.0, 0.0, 0.5, -0.5]
    log_z = t([1.4337808304830273, 1.4337808304830273, 1.3250027473578645, 1.3250027473578645])
    expected = [0.6480542736638853, 0.032264722428990276, 0.4382337884782501, 0.004868337639145692]
    weights = var_weights(t(ref), t(r), 0.5, log_z=log_z)
    close64(weights, expected)
    # unlike the batch and prompt estimators, these weights need not sum to one
    assert abs(weights.sum().item() - 1.0) > 0.1
    close32(var_weights(t(ref, torch.float32), t(r, torch.float32), 0.5, log_z=log_z.float()), expected)
    # length-normalised ℓref: y0 has 2 tokens -> e^{−0.5+2}/Ẑ_A = 4.481689070/4.194528049 = 1.068461
    close64(var_weights(t(ref[:1]), t(r[:1]), 0.5, lengths=t([2.0]), length_normalize=True, log_z=log_z[:1]),
            [4.4816890703380645 / 4.194528049465325])
    with pytest.raises(ValueError):
        var_weights(t(ref), t(r), 0.5, group_ids=torch.tensor([0, 0, 1, 1]), log_z=log_z)


def test_batch_loss_var_sampled_hand_value():
    # Pair 0 (prompt A): chosen y0, rejected y1; pair 1 (prompt B): chosen y2, rejected y3 (ω as above).
    # ℓθ: y0 −2, y1 −6, y2 −4, y3 −3. Loss = Σ ω·(−ℓθ) / 2 prompts
    #   = (0.648054274·2 + 0.032264722·6 + 0.438233788·4 + 0.004868338·3)/2 = 1.628618524
    batch = PairBatch(chosen_logps=t([-2.0, -4.0]), chosen_lengths=t([1.0, 1.0]), rejected_logps=t([-6.0, -3.0]),
                      rejected_lengths=t([1.0, 1.0]), ref_chosen_logps=t([-1.0, -0.5]),
                      ref_rejected_logps=t([-2.0, -3.0]), reward_chosen=t([1.0, 0.5]), reward_rejected=t([0.0, -0.5]),
                      prompt_groups=torch.tensor([0, 1]), log_z=t([1.4337808304830273, 1.3250027473578645]))
    loss = _call("var", batch, lam=0.5, z_estimator="sampled")
    close64(loss, torch.tensor(1.628618524366075, dtype=F64))
    batch.log_z = None
    with pytest.raises(ValueError, match="log_z"):
        _call("var", batch, lam=0.5, z_estimator="sampled")


# ==================================================================================================
# 8. GRPO pieces, by hand
# ==================================================================================================

def test_grpo_advantages_hand_values():
    # Group (1, 2, 3, 6): mean 3, deviations (−2, −1, 0, 3), Σd² = 14, sample std √(14/3) = 2.160246899
    #   -> A = d/2.160246899 = (−0.925820100, −0.462910050, 0, 1.388730150)   (ε = 0)
    # Group (0, 4): mean 2, deviations (−2, 2), sample std √8 = 2.828427125 -> A = ∓0.707106781
    # Group (5, 5): no spread -> A = 0 (no signal, no division by zero)
    close64(grpo_advantages(t([[1.0, 2.0, 3.0, 6.0]]), eps=0.0),
            [[-0.9258200997725514, -0.4629100498862757, 0.0, 1.3887301496588271]])
    close64(grpo_advantages(t([[0.0, 4.0]]), eps=0.0), [[-0.7071067811865476, 0.7071067811865476]])
    # the default ε = 1e-4 in the denominator: 2/(2.828427125 + 0.0001) = 0.707081782
    close64(grpo_advantages(t([[0.0, 4.0], [5.0, 5.0]])), [[-0.7070817820703996, 0.7070817820703996], [0.0, 0.0]])
    # rows are groups: the same rewards in another row give the same advantages
    close64(grpo_advantages(t([[1.0, 2.0, 3.0, 6.0], [11.0, 12.0, 13.0, 16.0]]), eps=0.0)[1],
            [-0.9258200997725514, -0.4629100498862757, 0.0, 1.3887301496588271])
    close32(grpo_advantages(t([[0.0, 4.0]], torch.float32), eps=0.0), [[-0.7071067811865476, 0.7071067811865476]])


def test_grpo_clipped_surrogate_hand_values_and_gradient():
    # ε = 0.2, ratios ρ = (1.5, 0.5, 1.1) per token; response 0 has A = 2, response 1 has A = −1.
    #   A = 2:  min(1.5·2, 1.2·2) = 2.4 (clipped) ; min(0.5·2, 0.8·2) = 1.0 ; min(2.2, 2.2) = 2.2
    #   A = −1: min(−1.5, −1.2) = −1.5 (the min keeps the worse) ; min(−0.5, −0.8) = −0.8 (clipped) ; −1.1
    old = t([[-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5]])
    logps = old + torch.log(t([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]]))
    logps.requires_grad_(True)
    surrogate = grpo_clipped_surrogate(logps, old, t([2.0, -1.0]), 0.2)
    close64(surrogate.detach(), [[2.4, 1.0, 2.2], [-1.5, -0.8, -1.1]])
    # ∂s/∂log πθ = ρA where unclipped, 0 where the clip binds
    (grad,) = torch.autograd.grad(surrogate.sum(), logps)
    close64(grad, [[0.0, 1.0, 2.2], [-1.5, 0.0, -1.1]])


def test_k3_kl_hand_values():
    # d = ℓref − ℓθ: k3 = e^d − d − 1.  d = 0 -> 0 ; d = 1 -> e − 2 = 0.718281828 ;
    # d = −1 -> e^{−1} = 0.367879441 ; d = ln 2 -> 1 − ln 2 = 0.306852819
    logps = t([[-1.0, -2.0, -1.0, -3.0]])
    ref = t([[-1.0, -1.0, -2.0, -3.0 + math.log(2.0)]])
    close64(k3_kl(logps, ref), [[0.0, 0.7182818284590451, 0.36787944117144233, 0.3068528194400546]])
    assert (k3_kl(t([[-5.0, 0.0, -0.1]]), t([[0.0, -7.0, -0.1]])) >= 0).all()


def test_grpo_loss_hand_value_mask_and_gradient():
    # One response of 2 tokens (a third is padding), ρ = 1, A = 0.5, β = 0.1, d = (0, ln 2):
    #   s = (0.5, 0.5), k3 = (0, 1 − ln 2 = 0.306852819)
    #   L = −(1/2)[(0.5 − 0) + (0.5 − 0.1·0.306852819)] = −0.484657359
    # The padded position holds values whose ratio overflows (e^{1000}): it must not leak a NaN.
    logps = t([[-1.0, -2.0, -1000.0]], requires_grad=True)
    old = t([[-1.0, -2.0, 0.0]])
    ref = t([[-1.0, -2.0 + math.log(2.0), 0.0]])
    mask = t([[1.0, 1.0, 0.0]])
    loss = grpo_loss(logps, old, ref, t([0.5]), mask, clip_eps=0.2, beta=0.1)
    close64(loss.detach(), [-0.4846573590279973])
    # ∂L/∂ℓθ_t = −(1/2)(ρA − β(1 − e^{d_t})): token 0 (d = 0): −0.25 ; token 1 (d = ln 2): −(1/2)(0.5 + 0.1) = −0.3
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    close64(grad, [[-0.25, -0.3, 0.0]])
    # through the registry: the batch loss is the mean over responses; sampling settings are ignored
    # second response: one token, ρ = 1, k3 = 0, A = −2 -> L = 2
    batch = GroupBatch(logps=torch.cat([logps.detach()[:, :2], t([[-1.0, 0.0]])]),
                       old_logps=torch.cat([old[:, :2], t([[-1.0, 0.0]])]),
                       ref_logps=torch.cat([ref[:, :2], t([[-1.0, 0.0]])]),
                       advantages=t([0.5, -2.0]),
                       mask=t([[1.0, 1.0], [1.0, 0.0]]))
    m = get_method("grpo")
    close64(m.batch_loss(batch, **m.resolve({"beta": 0.1})), torch.tensor((-0.4846573590279973 + 2.0) / 2, dtype=F64))


def test_var_weights_of_rewards_that_float32_holds_are_finite():
    """r/λ of a reward float32 holds can overflow float32 (3e38 / 0.5); the weights are still a softmax."""
    weights = var_weights(torch.tensor([-5.0, -6.0]), torch.tensor([3e38, 1e38]), lam=0.5)
    assert torch.equal(weights, torch.tensor([1.0, 0.0]))


def test_var_weights_that_overflow_float32_name_lam_and_the_rewards():
    """A sampled Ẑ far below a response's exp(r/λ) gives a weight no float32 holds: one error, not NaN steps."""
    with pytest.raises(AlignlabError, match=r"var: .*overflow float32.*lam 0\.01.*rewards 0 to 1"):
        var_weights(torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 0.0]), lam=0.01, log_z=torch.zeros(2))
