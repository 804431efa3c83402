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

Batches: `collate_sequences` right-pads prompt + response rows, `collate_pairs` lays a pair out as a
chosen row and a rejected row; layouts.py holds the layouts that forward each prompt once or pack
several pairs into a row.
"""

from __future__ import annotations

import hashlib
import json
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


def cached_tokenize_pairs(tokenizer, tokenizer_fingerprint: str, pairs, max_length: int, max_prompt_length: int,
                          raw_prompts: bool, cache_dir) -> tuple[list[TokenizedPair], TruncationReport]:
    """`tokenize_pairs`, its token ids cached with the reference log-probs (alignlab.cache): a sweep
    or a rerun over the same data tokenises it once. The key covers the tokenizer (its model's
    fingerprint), the texts and every setting that changes the ids."""
    from alignlab.cache import cache_key, cached_tensors

    texts = json.dumps([[p.prompt, p.chosen, p.rejected] for p in pairs], ensure_ascii=False)
    key = cache_key("tokens", tokenizer_fingerprint, hashlib.sha256(texts.encode()).hexdigest(),
                    f"max_length={max_length} max_prompt_length={max_prompt_length} raw_prompts={raw_prompts}")

    def compute():
        examples, report = tokenize_pairs(tokenizer, pairs, max_length, max_prompt_length, raw_prompts)
        parts = [ids for ex in examples for ids in (ex.prompt_ids, ex.chosen_ids, ex.rejected_ids)]
        return {"ids": torch.tensor([i for ids in parts for i in ids], dtype=torch.int64),
                "lengths": torch.tensor([len(ids) for ids in parts], dtype=torch.int64).view(-1, 3),
                "truncated": torch.tensor([report.prompts_truncated, report.responses_truncated])}

    cached = cached_tensors(cache_dir, "tokens", key, compute)[0]
    flat = cached["ids"].split(cached["lengths"].view(-1).tolist())
    examples = [TokenizedPair(*(part.tolist() for part in flat[3 * i:3 * i + 3])) for i in range(len(pairs))]
    prompts_truncated, responses_truncated = cached["truncated"].tolist()
    return examples, TruncationReport(prompts_truncated, responses_truncated, len(examples))


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
