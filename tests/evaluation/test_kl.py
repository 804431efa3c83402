"""The per-token KL sum against independent computations: a plain-Python double loop over hand-made
distributions, and torch.distributions' own categorical KL."""

import math

import pytest
import torch

from alignlab.evaluation.kl import KL_SEED_OFFSET, kl_generation, row_totals, token_kl
from alignlab.models.generate import GenerationConfig

P = [[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]],
     [[0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1]]]
Q = [[[0.2, 0.3, 0.5], [0.25, 0.25, 0.5], [0.01, 0.01, 0.98]],
     [[0.6, 0.2, 0.2], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]
MASK = [[1, 1, 0], [0, 1, 1]]  # row 0 padded on the right, row 1 on the left


def summed_token_kl(policy_logits, sft_logits, mask):
    """Per row, the KL summed over the masked positions, as kl_to_sft sums it."""
    keep = mask.bool()
    rows, _ = keep.nonzero(as_tuple=True)
    return row_totals(token_kl(policy_logits[keep], sft_logits[keep]), rows, len(mask))


def test_summed_token_kl_equals_a_double_loop_over_hand_made_distributions():
    # Logits are log-probabilities plus a per-position shift: the softmax must undo any shift.
    logits = lambda probs, shift: torch.tensor([[[math.log(x) + shift * (t + 1) for x in dist]
                                                 for t, dist in enumerate(row)] for row in probs])
    got = summed_token_kl(logits(P, 3.0), logits(Q, -2.0), torch.tensor(MASK, dtype=torch.float32))
    expected = [sum(p * math.log(p / q) for t in range(3) if MASK[row][t] for p, q in zip(P[row][t], Q[row][t]))
                for row in range(2)]
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, abs=1e-6)  # float32 logits carry the probabilities


def test_summed_token_kl_equals_torch_categorical_kl_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    policy, sft = (4 * torch.randn(3, 7, 50, generator=generator, dtype=torch.float64) for _ in range(2))
    mask = (torch.rand(3, 7, generator=generator) < 0.6).double()
    per_position = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=policy),
                                                     torch.distributions.Categorical(logits=sft))
    assert summed_token_kl(policy, sft, mask).tolist() == pytest.approx((per_position * mask).sum(-1).tolist(),
                                                                        rel=1e-12, abs=1e-12)


def test_summed_token_kl_of_a_distribution_with_itself_is_zero_and_masked_logits_do_not_count():
    logits = torch.randn(2, 5, 11)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    assert summed_token_kl(logits, logits.clone(), mask).tolist() == [0.0, 0.0]
    garbage = torch.where(mask.bool()[..., None], logits, torch.full_like(logits, 1e4))
    other = torch.randn(2, 5, 11)
    clean = summed_token_kl(logits, other, mask).tolist()
    assert summed_token_kl(garbage, other, mask).tolist() == pytest.approx(clean)
    assert (summed_token_kl(logits, other, mask) > 0).all()


def test_kl_samples_come_from_the_policy_itself_with_their_own_seed():
    evaluation = GenerationConfig(max_new_tokens=7, temperature=0.7, top_p=0.9, greedy=True, batch_size=3, seed=4)
    assert kl_generation(evaluation) == GenerationConfig(max_new_tokens=7, temperature=1.0, top_p=1.0, greedy=False,
                                                         batch_size=3, seed=4 + KL_SEED_OFFSET)
