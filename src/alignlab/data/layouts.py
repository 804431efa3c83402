"""How a batch of tokenised pairs is laid out for one forward pass.

Every layout gives each response exactly the context it has on its own; they differ in the FLOPs
spent on padding and on repeated prompts:

- `padded` (`collate_pairs`): a chosen row and a rejected row per pair, each with its own copy of the
  prompt, right-padded to the batch's longest. Works with every model.
- `shared-prompt`: one row per pair, [prompt | chosen | rejected], where the attention mask keeps the
  rejected tokens from seeing the chosen ones and position ids restart the rejected response where
  the prompt ends: each prompt is forwarded once.
- `packed`: the shared-prompt layout with several pairs to a row, filled (first-fit decreasing) up
  to `row_tokens` tokens: the mask is block-diagonal over pairs and position ids restart per pair,
  so almost no token is padding. Both need a model that takes a custom 4-D mask (sdpa, eager).
- `position-packed`: every sequence (prompt + chosen, prompt + rejected) one after another in a
  single row with no padding and no mask, position ids restarting at 0 for each: transformers reads
  the sequence boundaries from the position ids (flash-attention's varlen kernel on a GPU; a
  block-diagonal mask for sdpa and eager). The prompt is forwarded twice, but nothing is padding.

Gathered layouts (all but `padded`) read responses back by gather: response j (chosen 1..B, then
rejected 1..B) has its tokens in `response_tokens[j]`, the row holding it in `response_rows[j]` and
the positions of that row whose logits predict them in `response_positions[j]` (the first from
the prompt's last token); `response_mask` marks the real tokens, `lengths` counts them;
`sequence_ends[j]` is the position of the last token of prompt + response j (the prompt's last for an
empty response): where a sequence classifier reads its score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.data.tokenise import TokenizedPair, collate_pairs

LAYOUTS = ("packed", "shared-prompt", "position-packed", "padded")


def pair_tokens(example: TokenizedPair) -> int:
    """Tokens of a pair forwarded with its prompt once: prompt + chosen + rejected."""
    return len(example.prompt_ids) + len(example.chosen_ids) + len(example.rejected_ids)


def pack_rows(sizes: list[int], row_tokens: int) -> list[list[int]]:
    """Item indices grouped into rows of at most `row_tokens` (or the largest item, if larger) by
    first-fit decreasing; each item in exactly one row."""
    capacity = max([row_tokens, *sizes])
    rows: list[list[int]] = []
    room: list[int] = []
    for item in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        row = next((r for r, free in enumerate(room) if free >= sizes[item]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(item)
        room[row] -= sizes[item]
    return rows


class _ResponseGather:
    """The gather fields of a batch (module docstring), filled as Python lists and made tensors once:
    a tensor op per token range costs more than the collation's arithmetic."""

    def __init__(self, n: int, longest: int):
        self.tokens = [[0] * longest for _ in range(2 * n)]
        self.positions = [[0] * longest for _ in range(2 * n)]
        self.mask = [[0.0] * longest for _ in range(2 * n)]
        self.rows = [0] * (2 * n)
        self.ends = [0] * (2 * n)

    def place(self, j: int, row: int, ids: list[int], first_position: int, start: int) -> None:
        """Response j's tokens sit at `start`.. of `row`; `first_position` (the prompt's last token)
        predicts its first token."""
        self.rows[j] = row
        self.ends[j] = start + len(ids) - 1 if ids else first_position
        k = len(ids)
        self.tokens[j][:k] = ids
        self.positions[j][:k] = [first_position, *range(start, start + k - 1)][:k]
        self.mask[j][:k] = [1.0] * k

    def tensors(self) -> dict[str, torch.Tensor]:
        mask = torch.tensor(self.mask, dtype=torch.float32)
        return {"response_tokens": torch.tensor(self.tokens, dtype=torch.long),
                "response_rows": torch.tensor(self.rows, dtype=torch.long),
                "response_positions": torch.tensor(self.positions, dtype=torch.long),
                "response_mask": mask, "sequence_ends": torch.tensor(self.ends, dtype=torch.long),
                "lengths": mask.sum(-1)}


def collate_shared_prompt(examples: list[TokenizedPair], pad_id: int, row_tokens: int | None = None
                          ) -> dict[str, torch.Tensor]:
    """The shared-prompt layout (module docstring): one pair per row, or with `row_tokens` the packed
    layout, pairs filling rows of up to that many tokens.

    `attention_mask` is a (rows, 1, width, width) boolean mask, True where a query may attend: causal,
    within one pair, and a rejected token skips its pair's chosen ones; padding sees only itself."""
    n = len(examples)
    sizes = [pair_tokens(e) for e in examples]
    rows = pack_rows(sizes, row_tokens) if row_tokens is not None else [[i] for i in range(n)]
    width = max(sum(sizes[i] for i in row) for row in rows)
    longest = max(max(len(e.chosen_ids), len(e.rejected_ids)) for e in examples)
    input_ids = [[pad_id] * width for _ in rows]
    position_ids = [[0] * width for _ in rows]
    segment = [[-1] * width for _ in rows]  # the pair a token belongs to; -1 padding
    branch = [[-1] * width for _ in rows]  # 0 prompt, 1 chosen, 2 rejected
    gather = _ResponseGather(n, longest)
    for row, members in enumerate(rows):
        offset = 0
        for i in members:
            ex = examples[i]
            p, c, r = len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)
            end = offset + p + c + r
            input_ids[row][offset:end] = [*ex.prompt_ids, *ex.chosen_ids, *ex.rejected_ids]
            position_ids[row][offset:end] = [*range(p + c), *range(p, p + r)]
            segment[row][offset:end] = [i] * (end - offset)
            branch[row][offset:end] = [0] * p + [1] * c + [2] * r
            gather.place(i, row, ex.chosen_ids, offset + p - 1, offset + p)
            gather.place(n + i, row, ex.rejected_ids, offset + p - 1, offset + p + c)
            offset = end
    segment_ids, branches = torch.tensor(segment, dtype=torch.long), torch.tensor(branch, dtype=torch.long)
    query_branch, key_branch = branches[:, :, None], branches[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same_pair = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] >= 0)
    allowed = causal & same_pair & ((key_branch == 0) | (key_branch == query_branch))
    allowed |= torch.eye(width, dtype=torch.bool)  # a padding query attends to itself, never to nothing
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
            "position_ids": torch.tensor(position_ids, dtype=torch.long), "attention_mask": allowed[:, None],
            **gather.tensors()}


def collate_position_packed(examples: list[TokenizedPair]) -> dict[str, torch.Tensor]:
    """The position-packed layout (module docstring): one row, no padding, no attention mask; each
    sequence's position ids start at 0, which is how transformers finds where one ends."""
    n = len(examples)
    longest = max(max(len(e.chosen_ids), len(e.rejected_ids)) for e in examples)
    gather = _ResponseGather(n, longest)
    ids, positions = [], []
    for j, (ex, response) in enumerate([(e, e.chosen_ids) for e in examples] + [(e, e.rejected_ids) for e in examples]):
        p, offset = len(ex.prompt_ids), len(ids)
        ids += ex.prompt_ids + response
        positions += range(p + len(response))
        gather.place(j, 0, response, offset + p - 1, offset + p)
    return {"input_ids": torch.tensor([ids], dtype=torch.long), "position_ids": torch.tensor([positions]),
            **gather.tensors()}


@dataclass(frozen=True)
class PairLayout:
    """A layout by name (see LAYOUTS) and, for `packed`, the tokens a row holds."""

    name: str
    row_tokens: int = 0

    def collate(self, examples: list[TokenizedPair], pad_id: int, include_rejected: bool = True
                ) -> dict[str, torch.Tensor]:
        if self.name == "padded":
            return collate_pairs(examples, pad_id, include_rejected)
        if not include_rejected:  # empty rejected responses: they take no tokens and sum to 0
            examples = [TokenizedPair(e.prompt_ids, e.chosen_ids, []) for e in examples]
        if self.name == "position-packed":
            return collate_position_packed(examples)
        return collate_shared_prompt(examples, pad_id, self.row_tokens if self.name == "packed" else None)

    def row_width(self, example: TokenizedPair) -> int:
        """Tokens a pair occupies in this layout: the sort key that keeps similar pairs together."""
        if self.name == "padded":
            return len(example.prompt_ids) + max(len(example.chosen_ids), len(example.rejected_ids))
        return pair_tokens(example)
