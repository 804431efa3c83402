"""Which pairs train together: each epoch's micro-batches, as lists of example indices.

The epoch's order is a seeded shuffle. With `group_by_length`, the shuffled order is cut into groups
of GROUP_BATCHES micro-batches, each group sorted by length (so a micro-batch holds pairs of similar
length and little of it is padding), and the micro-batches are then shuffled. A micro-batch is
`batch_size` pairs, or with `batch_tokens` as many consecutive pairs as fit in that many tokens (a
pair longer than the budget trains alone). The loss of a micro-batch is the mean over its pairs, so
under `batch_tokens` a pair in a micro-batch of a few long pairs weighs more than one among many
short pairs.
"""

from __future__ import annotations

import torch

from alignlab.config import TrainConfig
from alignlab.errors import AlignlabError

GROUP_BATCHES = 50  # as transformers' LengthGroupedSampler: sorted groups of 50 micro-batches


def in_batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shuffled(n: int, generator: torch.Generator) -> list[int]:
    return torch.randperm(n, generator=generator).tolist()


def epoch_generator(config, epoch: int) -> torch.Generator:
    """The seeded generator of an epoch's order: a resumed run draws the same order."""
    return torch.Generator().manual_seed(config.seed + epoch)


def micro_batches(sizes: list[int], config: TrainConfig, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s micro-batches over examples of `sizes` tokens (see the module docstring)."""
    generator = epoch_generator(config, epoch)
    order = shuffled(len(sizes), generator)
    if config.group_by_length:
        group = GROUP_BATCHES * (config.batch_size if not config.batch_tokens
                                 else max(1, config.batch_tokens * len(sizes) // max(1, sum(sizes))))
        order = [i for start in range(0, len(order), group)
                 for i in sorted(order[start:start + group], key=lambda i: -sizes[i])]
    batches = (_fill_to_tokens(order, sizes, config.batch_tokens) if config.batch_tokens
               else in_batches(order, config.batch_size))
    if config.group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def _fill_to_tokens(order: list[int], sizes: list[int], budget: int) -> list[list[int]]:
    batches, current, used = [], [], 0
    for i in order:
        if current and used + sizes[i] > budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += sizes[i]
    return batches + ([current] if current else [])


def check_enough_batches(config: TrainConfig, accelerator, count: int) -> None:
    """With `batch_tokens`, the data must fill the micro-batches of one optimizer step."""
    needed = config.gradient_accumulation_steps * accelerator.num_processes
    if config.batch_tokens and count < needed:
        raise AlignlabError(f"{config.data}: the pairs fill {count} micro-batches of batch_tokens "
                            f"{config.batch_tokens}, fewer than one optimizer step takes: gradient_accumulation_steps "
                            f"{config.gradient_accumulation_steps} × {accelerator.num_processes} processes = {needed}; "
                            "add data, or lower batch_tokens or gradient_accumulation_steps")


class IndexDataset(torch.utils.data.Dataset):
    """Item i is i: a batch is the example indices it lists (GRPO's go past n: one per epoch and prompt)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index
