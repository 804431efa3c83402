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

Truncation rule (TRL 1.16's, see `truncate_pair`): a prompt longer than `max_prompt_length`, when
set, keeps its last tokens (the most recent turns), and a response longer than
`max_completion_length`, when set, its first (TRL 0.x's caps; 1.16 has neither). Then each sequence,
prompt + response, fits `max_length` as `truncation_mode` says: `keep_start` (TRL's default) keeps
its start, so the response loses its end and the prompt is never cut, and `keep_end` keeps its end,
so the prompt loses its start first and the response only when it alone does not fit. One prompt
serves both responses (it is forwarded once), so under `keep_end` it is cut to fit the longer one.
Every cut is counted and reported, never silent.

Batches: `collate_sequences` right-pads prompt + response rows, `collate_pairs` lays a pair out as a
chosen row and a rejected row; layouts.py holds the layouts that forward each prompt once or pack
several pairs into a row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field

import torch

from alignlab.errors import AlignlabError
from alignlab.untrusted import shown

log = logging.getLogger(__name__)

PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


TRUNCATION_MODES = ("keep_start", "keep_end")


@dataclass(frozen=True)
class LengthLimits:
    """The settings that cut a pair's token ids (see `truncate_pair`); None: no such limit."""

    max_length: int | None
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    truncation_mode: str = "keep_start"

    def __post_init__(self):
        if self.truncation_mode not in TRUNCATION_MODES:
            raise AlignlabError(f"truncation_mode must be keep_start or keep_end, got {shown(self.truncation_mode)}")
        if self.max_length is not None and self.max_length < 2:  # a prompt token and a response token
            raise AlignlabError(f"max_length {self.max_length} leaves no room for a prompt and a response: "
                                "use 2 or more")
        for name in ("max_prompt_length", "max_completion_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise AlignlabError(f"{name} must be 1 or more, or unset, got {getattr(self, name)}")

    def key(self) -> str:
        """The limits as the token cache's key spells them."""
        return (f"max_length={self.max_length} max_prompt_length={self.max_prompt_length} "
                f"max_completion_length={self.max_completion_length} truncation_mode={self.truncation_mode}")


@dataclass
class TruncationReport:
    prompts_truncated: int = 0
    responses_truncated: int = 0
    examples: int = 0
    pairs_truncated: int = 0  # pairs with any token cut
    prompts_filling: int = 0  # keep_start: prompts of max_length tokens or more, the pairs TRL drops

    def summary(self) -> str:
        text = (f"{self.examples} pairs tokenised, {self.pairs_truncated} of them truncated: "
                f"{self.prompts_truncated} prompts cut to their last tokens, {self.responses_truncated} "
                "responses cut (to max_completion_length or to fit max_length)")
        if self.prompts_filling:
            text += (f"; {self.prompts_filling} prompts alone filled max_length (TRL drops those pairs; here they "
                     "keep their last max_length - 1 prompt tokens and one token of each response)")
        return text

    def add(self, cuts: tuple[bool, int, bool]) -> None:
        prompt_cut, responses_cut, filling = cuts
        self.examples += 1
        self.prompts_truncated += prompt_cut
        self.responses_truncated += responses_cut
        self.pairs_truncated += bool(prompt_cut or responses_cut)
        self.prompts_filling += filling


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


def _last(ids: list[int], n: int) -> list[int]:
    return ids[max(len(ids) - n, 0):]


def truncate_pair(prompt: list[int], chosen: list[int], rejected: list[int], limits: LengthLimits
                  ) -> tuple[TokenizedPair, tuple[bool, int, bool]]:
    """A pair's ids cut to `limits`, and what was cut: (prompt cut, responses cut, prompt filled max_length).

    First the caps TRL 0.x had: the prompt keeps its last `max_prompt_length` tokens, each response its
    first `max_completion_length`. Then TRL 1.16's `DataCollatorForPreference`, which cuts each
    sequence (prompt + chosen, prompt + rejected) to `max_length` by itself:

    - `keep_start` keeps a sequence's first `max_length` tokens: a response loses its end, the prompt
      nothing, because TRL first drops each pair whose prompt alone has `max_length` tokens or more.
      Such a pair is kept here (its index must keep matching its rewards and prompt group) with its
      prompt's last `max_length - 1` tokens and the first token of each response, and counted
      (`prompts_filling`). Every other pair's ids are TRL's.
    - `keep_end` keeps a sequence's last `max_length` tokens: the prompt loses its start first. One
      prompt serves both responses here, cut to leave room for the longer one, so the longer sequence
      is TRL's and the shorter one a suffix of TRL's (the same response, fewer prompt tokens). A
      response of `max_length` tokens or more leaves TRL no prompt; TRL scores its last
      `max_length - 1` tokens (a row's first token predicts nothing), which it keeps here too, after
      the prompt's last token: every response token TRL learns from is learnt from here.
    """
    sizes = len(prompt), len(chosen), len(rejected)
    if limits.max_prompt_length is not None:
        prompt = _last(prompt, limits.max_prompt_length)
    if limits.max_completion_length is not None:
        chosen, rejected = chosen[:limits.max_completion_length], rejected[:limits.max_completion_length]
    filling = False
    if limits.max_length is not None:
        if limits.truncation_mode == "keep_start":
            filling = len(prompt) >= limits.max_length
            prompt = _last(prompt, limits.max_length - 1) if filling else prompt
            room = limits.max_length - len(prompt)
            chosen, rejected = chosen[:room], rejected[:room]
        else:
            prompt = _last(prompt, max(limits.max_length - max(len(chosen), len(rejected)), 1))
            room = limits.max_length - len(prompt)
            chosen, rejected = _last(chosen, room), _last(rejected, room)
    cut = (len(prompt) < sizes[0], (len(chosen) < sizes[1]) + (len(rejected) < sizes[2]), filling)
    return TokenizedPair(prompt, chosen, rejected), cut


def length_settings(config) -> dict:
    """A training config's length settings, as `tokenize_pairs` and `cached_tokenize_pairs` take them."""
    return {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
            "max_completion_length": config.max_completion_length, "truncation_mode": config.truncation_mode}


@functools.cache
def note_chat_template() -> None:
    """Once per process: TRL encodes a plain-text prompt as it is, alignlab through the chat template."""
    log.info("prompts are rendered with the model's chat template, text prompts too (TRL encodes a text "
             "prompt as it is); --raw_prompts uses text prompts verbatim")


def tokenize_pairs(tokenizer, pairs, max_length: int | None, max_prompt_length: int | None = None,
                   raw_prompts: bool = False, *, max_completion_length: int | None = None,
                   truncation_mode: str = "keep_start") -> tuple[list[TokenizedPair], TruncationReport]:
    """Token ids for each pair's prompt, chosen and rejected response, one `TokenizedPair` per pair
    in order, none dropped (see the module docstring and `truncate_pair`)."""
    limits = LengthLimits(max_length, max_prompt_length, max_completion_length, truncation_mode)
    renderer = PromptRenderer(tokenizer, raw_prompts)
    if renderer.uses_chat_template:
        note_chat_template()
    report = TruncationReport()
    encoded = []
    for pair in pairs:
        prompt_ids, prompt_text = renderer.prompt_ids(pair.prompt)
        chosen_ids, rejected_ids = (renderer.response_ids(pair.prompt, response, prompt_text)
                                    for response in (pair.chosen, pair.rejected))
        example, cuts = truncate_pair(prompt_ids, chosen_ids, rejected_ids, limits)
        encoded.append(example)
        report.add(cuts)
    return encoded, report


def cached_tokenize_pairs(tokenizer, tokenizer_fingerprint: str, pairs, max_length: int | None,
                          max_prompt_length: int | None, raw_prompts: bool, cache_dir, *,
                          max_completion_length: int | None = None, truncation_mode: str = "keep_start"
                          ) -> tuple[list[TokenizedPair], TruncationReport]:
    """`tokenize_pairs`, its token ids cached with the reference log-probs (alignlab.cache): a sweep
    or a rerun over the same data tokenises it once. The key covers the tokenizer (its model's
    fingerprint), the texts and every setting that changes the ids."""
    from alignlab.cache import cache_key, cached_tensors

    limits = LengthLimits(max_length, max_prompt_length, max_completion_length, truncation_mode)
    texts = json.dumps([[p.prompt, p.chosen, p.rejected] for p in pairs], ensure_ascii=False)
    key = cache_key("tokens", tokenizer_fingerprint, hashlib.sha256(texts.encode()).hexdigest(),
                    f"{limits.key()} raw_prompts={raw_prompts}")

    def compute():
        examples, report = tokenize_pairs(tokenizer, pairs, max_length, max_prompt_length, raw_prompts,
                                          max_completion_length=max_completion_length, truncation_mode=truncation_mode)
        parts = [ids for ex in examples for ids in (ex.prompt_ids, ex.chosen_ids, ex.rejected_ids)]
        return {"ids": torch.tensor([i for ids in parts for i in ids], dtype=torch.int64),
                "lengths": torch.tensor([len(ids) for ids in parts], dtype=torch.int64).view(-1, 3),
                "truncated": torch.tensor([report.prompts_truncated, report.responses_truncated,
                                           report.pairs_truncated, report.prompts_filling])}

    cached = cached_tensors(cache_dir, "tokens", key, compute)[0]
    flat = cached["ids"].split(cached["lengths"].view(-1).tolist())
    examples = [TokenizedPair(*(part.tolist() for part in flat[3 * i:3 * i + 3])) for i in range(len(pairs))]
    prompts, responses, truncated_pairs, filling = cached["truncated"].tolist()
    return examples, TruncationReport(prompts, responses, len(examples), truncated_pairs, filling)


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
