"""Generating responses with transformers `generate`: batched, left-padded, seeded.

Prompts are rendered and encoded exactly as in training (`PromptRenderer.prompt_ids`). Batches are
formed from length-sorted prompts (less padding) and results returned in the input order. Sampling
is seeded once per batch from (seed, batch index), so a run is reproducible for a given batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from alignlab.checks import COUNT, POSITIVE, SEED, Range
from alignlab.data.tokenise import PromptRenderer


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    greedy: bool = False
    batch_size: int = 16
    seed: int = 0
    # Where each number may lie (checked by `alignlab eval` and by a study's config).
    ranges: ClassVar[dict[str, Range]] = {"max_new_tokens": COUNT, "temperature": POSITIVE,
                                          "top_p": Range(0, 1, exclusive_min=True), "batch_size": COUNT, "seed": SEED}


@dataclass
class Generation:
    text: str  # the decoded response, special tokens skipped
    token_ids: list[int]  # generated ids up to and including EOS when produced: what KL is computed over


@torch.inference_mode()
def generate_responses(model, tokenizer, prompts: list[list[dict]], config: GenerationConfig,
                       device="cpu", progress: bool = True, raw_prompts: bool = False) -> list[Generation]:
    """A response per prompt, the prompts encoded as training encodes them (`raw_prompts` as there)."""
    renderer = PromptRenderer(tokenizer, raw_prompts)
    encoded = [renderer.prompt_ids(prompt)[0] for prompt in prompts]
    return generate_from_ids(model, tokenizer, encoded, config, device, progress)


@torch.inference_mode()
def generate_from_ids(model, tokenizer, encoded: list[list[int]], config: GenerationConfig,
                      device="cpu", progress: bool = True) -> list[Generation]:
    """`generate_responses` for prompts already encoded (e.g. cut to a trainer's max_prompt_length)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    results: list[Generation | None] = [None] * len(encoded)
    model.eval()
    batches = range(0, len(order), config.batch_size)
    # `disable` only where it must be off: an explicit False would override TQDM_DISABLE.
    bar = tqdm(batches, desc="generate", unit="batch", **({} if progress else {"disable": True}))
    for batch_index, start in enumerate(bar):
        index = order[start:start + config.batch_size]
        width = max(len(encoded[i]) for i in index)
        input_ids = torch.full((len(index), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]):] = 1
        torch.manual_seed(config.seed * 1_000_003 + batch_index)
        sampling = {} if config.greedy else {"temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                max_new_tokens=config.max_new_tokens, do_sample=not config.greedy,
                                eos_token_id=eos_id, pad_token_id=pad_id, **sampling)
        for row, i in enumerate(index):
            ids = output[row, width:].tolist()
            if eos_id in ids:
                ids = ids[:ids.index(eos_id) + 1]
            results[i] = Generation(tokenizer.decode(ids, skip_special_tokens=True).strip(), ids)
    return results
