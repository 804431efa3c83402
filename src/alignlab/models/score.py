"""Scoring responses: one interface, `Scorer`, for every source of reward.

A scorer is called as `scorer(prompts, responses)` and returns one float32 reward per pair. The
sources: a sequence-classification reward model (`RewardScorer`, here), the study world's exact
gold reward (`alignlab.world.StudyWorld.score`). (The LLM judge compares two responses rather than
scoring one, so it is not a scorer: see alignlab.evaluation.judge.)

The text a reward model sees is rendered with its own tokenizer (chat template, or the plain format
of `alignlab.data.tokenise`, or with `raw_prompts` the texts as they are); sequences longer than
`max_length` keep their last tokens, so the response — what is being judged — is never cut.
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch

from alignlab.data.tokenise import PromptRenderer, collate_sequences
from alignlab.models.loading import load_sequence_classifier, load_tokenizer


class Scorer(Protocol):
    def __call__(self, prompts: list[list[dict]], responses: list[str]) -> torch.Tensor: ...


class RewardScorer:
    """A `Scorer` backed by a one-output sequence classifier, scoring `batch_size` pairs at a time."""

    def __init__(self, path: str, dtype: str = "float32", trust_remote_code: bool = False,
                 max_length: int = 1024, device: str | torch.device = "cpu", batch_size: int = 16,
                 raw_prompts: bool = False):
        self.path = path
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(path, trust_remote_code)
        self.model = load_sequence_classifier(path, dtype, trust_remote_code).to(device).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.renderer = PromptRenderer(self.tokenizer, raw_prompts)
        self.max_length = max_length
        self.device = device

    def encode(self, prompt: list[dict], response: str) -> list[int]:
        prompt_ids, prompt_text = self.renderer.prompt_ids(prompt)
        ids = prompt_ids + self.renderer.response_ids(prompt, response, prompt_text)
        return ids[-self.max_length:]

    def __call__(self, prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
        return self.score(prompts, responses, self.batch_size)

    @torch.inference_mode()
    def score(self, prompts: list[list[dict]], responses: list[str], batch_size: int = 16) -> torch.Tensor:
        """One scalar reward per (prompt, response)."""
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        scores = torch.empty(len(encoded), dtype=torch.float32)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            # No prompt part: every token is "response" for collation; the classifier pools itself.
            batch = collate_sequences([[] for _ in index], [encoded[i] for i in index],
                                      self.tokenizer.pad_token_id)
            logits = self.model(input_ids=batch["input_ids"].to(self.device),
                                attention_mask=batch["attention_mask"].to(self.device)).logits
            scores[torch.tensor(index)] = logits[:, 0].float().cpu()
        return scores


@functools.lru_cache(maxsize=4)
def cached_reward_scorer(path: str, raw_prompts: bool = False) -> RewardScorer:
    """One RewardScorer per reward model in a process: a sweep scores every run with the same models."""
    return RewardScorer(path, raw_prompts=raw_prompts)
