"""Turning preference pairs into token ids, and batches of them into padded tensors.

Prompt format: the tokenizer's chat template when it has one (the prompt rendered with
`add_generation_prompt=True`; the response is what the template adds for the assistant turn,
end-of-turn tokens included). Without a chat template, the documented plain format:

    <bos>\n\nHuman: {user turn}\n\nAssistant: {assistant turn} ... \n\nHuman: {last user turn}\n\nAssistant:
    response: " {response}<eos>"

With `raw_prompts` a text prompt is its own rendering: encoded as the tokenizer encodes text (with
its own special tokens, e.g. a BOS, as TRL encodes text prompts), the response appended as it is
and then EOS; neither the chat template nor the plain format is used. A prompt of several messages
has no such text and is an error.

Truncation rule: a prompt longer than `max_prompt_length` keeps its last tokens (the most recent
turns); then a response that does not fit in `max_length` keeps its first tokens. Both are counted
and reported, never silent.

Two batch layouts for a pair: padded (`collate_pairs`: a chosen row and a rejected row, each with
its own copy of the prompt) and shared-prompt (`collate_shared_prompt`: one row per pair,
prompt + chosen + rejected, where an attention mask keeps the rejected tokens from seeing the
chosen ones and position ids restart the rejected response where the prompt ends). The second
gives every response exactly the context of the first while forwarding each prompt once and
padding one row per pair instead of two: on the bench data it forwards 1.46× fewer tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from alignlab.errors import AlignlabError
from alignlab.untrusted import shown

PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class TruncationReport:
    prompts_truncated: int = 0
    responses_truncated: int = 0
    examples: int = 0

    def summary(self) -> str:
        return (f"{self.examples} pairs tokenised; {self.prompts_truncated} prompts cut to their last "
                f"tokens, {self.responses_truncated} responses cut to fit max_length")


@dataclass
class PromptRenderer:
    """Renders and encodes prompts and responses: through the chat template or the plain format, or
    with `raw_prompts` as the texts they are (see the module docstring)."""

    tokenizer: object
    raw_prompts: bool = False
    uses_chat_template: bool = field(init=False)

    def __post_init__(self):
        self.uses_chat_template = not self.raw_prompts and bool(getattr(self.tokenizer, "chat_template", None))
        plain_specials = not self.uses_chat_template and not self.raw_prompts
        self.bos = [self.tokenizer.bos_token_id] if plain_specials and self.tokenizer.bos_token_id is not None else []
        ends_itself = self.uses_chat_template  # the template closes the assistant turn
        self.eos = [self.tokenizer.eos_token_id] if not ends_itself and self.tokenizer.eos_token_id is not None else []

    def prompt_text(self, prompt: list[dict]) -> str:
        if self.raw_prompts:
            return raw_prompt_text(prompt)
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        turns = "".join(f"\n\n{PLAIN_ROLES.get(t['role'], t['role'].title())}: {t['content']}" for t in prompt)
        return turns + "\n\nAssistant:"

    def response_text(self, prompt: list[dict], response: str, prompt_text: str) -> str:
        if self.raw_prompts:
            return response
        if not self.uses_chat_template:
            return " " + response
        full = self.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}],
                                                  tokenize=False)
        if not full.startswith(prompt_text):
            raise AlignlabError("the tokenizer's chat template renders the prompt differently with and "
                                "without the assistant turn, so response tokens cannot be isolated; "
                                "use a tokenizer whose template is prefix-consistent")
        return full[len(prompt_text):]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: list[dict]) -> tuple[list[int], str]:
        text = self.prompt_text(prompt)
        if self.raw_prompts:
            return self.tokenizer(text)["input_ids"], text
        return self.bos + self.encode(text), text

    def response_ids(self, prompt: list[dict], response: str, prompt_text: str) -> list[int]:
        return self.encode(self.response_text(prompt, response, prompt_text)) + self.eos


def raw_prompt_text(prompt: list[dict]) -> str:
    """The text of a prompt given as text (one user turn); a conversation has none: an error."""
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    roles = ", ".join(turn["role"] for turn in prompt)
    raise AlignlabError(f"raw_prompts uses text prompts as they are, but the prompt beginning "
                        f"{shown(prompt[0]['content'][:60])} is a conversation of {len(prompt)} messages ({roles}), "
                        "which has no raw text; turn raw_prompts off to render it with the chat template "
                        "(or the plain format)")


def tokenize_pairs(tokenizer, pairs, max_length: int, max_prompt_length: int, raw_prompts: bool = False
                   ) -> tuple[list[TokenizedPair], TruncationReport]:
    """Token ids for each pair's prompt, chosen and rejected response (see the module docstring)."""
    renderer = PromptRenderer(tokenizer, raw_prompts)
    report = TruncationReport()
    encoded = []
    for pair in pairs:
        prompt_ids, prompt_text = renderer.prompt_ids(pair.prompt)
        if len(prompt_ids) > max_prompt_length:
            prompt_ids = prompt_ids[-max_prompt_length:]
            report.prompts_truncated += 1
        room = max_length - len(prompt_ids)
        responses = []
        for response in (pair.chosen, pair.rejected):
            ids = renderer.response_ids(pair.prompt, response, prompt_text)
            if len(ids) > room:
                ids = ids[:room]
                report.responses_truncated += 1
            responses.append(ids)
        encoded.append(TokenizedPair(prompt_ids, *responses))
        report.examples += 1
    return encoded, report


def fingerprint_tokens(examples: list[TokenizedPair]) -> str:
    """A hash of the exact token ids: it changes with the data, the tokenizer and the format."""
    digest = hashlib.sha256()
    for ex in examples:
        for ids in (ex.prompt_ids, ex.chosen_ids, ex.rejected_ids):
            digest.update(len(ids).to_bytes(4, "little"))
            digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def collate_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int
                      ) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response rows; `loss_mask` marks response tokens only."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    loss_mask = torch.zeros((len(prompts), width), dtype=torch.float32)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        input_ids[row, :n] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[row, :n] = 1
        loss_mask[row, len(p):n] = 1.0
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "lengths": lengths}


def collate_pairs(examples: list[TokenizedPair], pad_id: int, include_rejected: bool = True
                  ) -> dict[str, torch.Tensor]:
    """One batch for a single concatenated forward: rows are [chosen_1..B, rejected_1..B]."""
    prompts = [ex.prompt_ids for ex in examples]
    responses = [ex.chosen_ids for ex in examples]
    if include_rejected:
        prompts = prompts + prompts
        responses = responses + [ex.rejected_ids for ex in examples]
    return collate_sequences(prompts, responses, pad_id)


def collate_shared_prompt(examples: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per pair, [prompt | chosen | rejected], right-padded (see the module docstring).

    `attention_mask` is a (pairs, 1, width, width) boolean mask, True where a query may attend: a
    causal mask in which rejected tokens skip the chosen ones, and padding sees only itself.
    Responses are read back by gather: response j (chosen 1..B, then rejected 1..B, as in
    `collate_pairs`) has its tokens in `response_tokens[j]` and the positions of row j mod B whose
    logits predict them in `response_positions[j]` (the first from the prompt's last token);
    `response_mask` marks the real tokens, `lengths` counts them.
    """
    n = len(examples)
    width = max(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)
    longest = max(max(len(e.chosen_ids), len(e.rejected_ids)) for e in examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    branch = torch.full((n, width), -1, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, -1 padding
    response_tokens = torch.zeros((2 * n, longest), dtype=torch.long)
    response_positions = torch.zeros((2 * n, longest), dtype=torch.long)
    response_mask = torch.zeros((2 * n, longest), dtype=torch.float32)
    for row, ex in enumerate(examples):
        p, c, r = len(ex.prompt_ids), len(ex.chosen_ids), len(ex.rejected_ids)
        input_ids[row, :p + c + r] = torch.tensor(ex.prompt_ids + ex.chosen_ids + ex.rejected_ids, dtype=torch.long)
        position_ids[row, :p + c] = torch.arange(p + c)
        position_ids[row, p + c:p + c + r] = torch.arange(p, p + r)
        branch[row, :p], branch[row, p:p + c], branch[row, p + c:p + c + r] = 0, 1, 2
        for j, ids, start in ((row, ex.chosen_ids, p), (n + row, ex.rejected_ids, p + c)):
            response_tokens[j, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_positions[j, :len(ids)] = torch.tensor([p - 1] + list(range(start, start + len(ids) - 1)))
            response_mask[j, :len(ids)] = 1.0
    query, key = branch[:, :, None], branch[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool)  # a padding query attends to itself, never to nothing
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": allowed[:, None],
            "response_tokens": response_tokens, "response_positions": response_positions,
            "response_mask": response_mask, "lengths": response_mask.sum(-1)}
