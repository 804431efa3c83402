"""KL(πθ ‖ π_SFT) of SPEC §5: exact per-token KL over the vocabulary, summed over responses that πθ
samples at temperature 1 without truncation.

A plain log-ratio log πθ(y) − log π_SFT(y) of one sampled response is an unbiased but noisy
estimate, and on the evaluation samples (temperature and top-p below 1) not an estimate of the KL
at all: those responses come from another distribution than πθ. Summing the exact KL of each next-token
distribution along a response drawn from πθ itself is unbiased for the sequence KL, with far less
variance, and can never come out negative.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from alignlab.data.tokenise import PromptRenderer, collate_sequences
from alignlab.models.generate import GenerationConfig
from alignlab.models.logps import final_states

# The temperature-1 draws get a random stream of their own, apart from the evaluation samples'
# (seeded from `seed` itself) for any seed a study is likely to use.
KL_SEED_OFFSET = 104_729
NEGATIVE_ROUNDING = 1e-9  # how far below 0 float64 rounding can take a KL of near-identical distributions


def kl_generation(generation: GenerationConfig) -> GenerationConfig:
    """The sampling the KL is estimated on: πθ itself (temperature 1, no top-p), with the evaluation's
    response length and batch size."""
    return dataclasses.replace(generation, temperature=1.0, top_p=1.0, greedy=False,
                               seed=generation.seed + KL_SEED_OFFSET)


def token_kl(policy_logits: Tensor, sft_logits: Tensor) -> Tensor:
    """Per position, Σ_v p(v)·(log p(v) − log q(v)), with p and q the softmax of `policy_logits` and
    `sft_logits` (positions × vocabulary), in float64."""
    log_p = torch.log_softmax(policy_logits.double(), -1)
    log_q = torch.log_softmax(sft_logits.double(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def row_totals(per_token: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Per row, the sum of the per-position KLs `per_token` whose row is `rows`. A sum below 0 by
    rounding only is 0; one further below is returned as it is (it would show a bug, not rounding)."""
    totals = torch.zeros(n_rows, dtype=torch.float64, device=per_token.device).index_add_(0, rows, per_token)
    rounding = (totals < 0) & (totals > -NEGATIVE_ROUNDING)
    return totals.masked_fill(rounding, 0.0)


@torch.inference_mode()
def kl_to_sft(policy, sft, tokenizer, prompts: list[list[dict]], response_ids: list[list[int]],
              batch_size: int = 16, device="cpu", raw_prompts: bool = False) -> list[float]:
    """Per response, Σ over its tokens (the stop token included when generated) of
    KL(πθ(·|x, y<t) ‖ π_SFT(·|x, y<t)), from one forward pass of each model over prompt + response
    (prompts encoded as for generation)."""
    renderer = PromptRenderer(tokenizer, raw_prompts)
    prompt_ids = [renderer.prompt_ids(prompt)[0] for prompt in prompts]
    policy.eval()
    sft.eval()
    totals = []
    for start in range(0, len(prompts), batch_size):
        batch = collate_sequences(prompt_ids[start:start + batch_size], response_ids[start:start + batch_size],
                                  tokenizer.pad_token_id)
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        # Rows are right-padded, so positions count from each row's first token as in training;
        # the state at position i predicts token i + 1, hence the shift by one.
        rows, positions = batch["loss_mask"][:, 1:].to(device).nonzero(as_tuple=True)
        policy_states, sft_states = (final_states(model, rows, positions, input_ids=input_ids,
                                                  attention_mask=attention_mask, use_cache=False)
                                     for model in (policy, sft))
        # Chunk by chunk, so that neither model's [tokens, vocabulary] logits exist at once (alignlab.models.logps)
        per_token = torch.cat([token_kl(policy_states.chunk_logits(start, stop), sft_states.chunk_logits(start, stop))
                               for start, stop in policy_states.chunks()])
        totals += row_totals(per_token, rows, len(input_ids)).cpu().tolist()
    return totals
