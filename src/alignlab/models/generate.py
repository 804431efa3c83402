"""Generating responses: one interface, two backends (transformers, the default, and vLLM).

A backend (`GenerationBackend`) turns encoded prompts into `Generation`s: `generate(encoded, config)`.
Prompts are rendered and encoded exactly as in training (`PromptRenderer.prompt_ids`; `respond` does
it). `alignlab.models.backends.make_backend` builds one: "hf" runs transformers `generate` on the
model in hand (`HFBackend`, here), "vllm" a vLLM engine on the model's checkpoint
(`alignlab.models.vllm_generate`, the extra `alignlab[vllm]`).

Stop tokens, as the model says (`stop_token_ids`): a response ends at the first of the tokenizer's
EOS, every id of the model's `generation_config.eos_token_id` (an int or a list: chat models often
list several), and, with a chat template, its end-of-turn tokens (`end_of_turn_ids`). Both backends
stop at the same ids and cut a response the same way (`GenerationBackend.finish`): `token_ids` keep
the stop token, since the model chose it and training's responses end with it too; `text` is what
comes before it, special tokens skipped.

The transformers backend forms batches of length-sorted prompts (less padding), left-padded, and
returns results in the input order; sampling is seeded once per batch from (seed, batch index), so a
run is reproducible for a given batch size. vLLM seeds each request from (seed, its index).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from alignlab.checks import COUNT, POSITIVE, SEED, Range
from alignlab.data.tokenise import PromptRenderer

# Rendered as an assistant message's content to find what a chat template writes after it: a word
# no template trims or rewrites.
TURN_PROBE = "alignlab-turn-probe"
# Names the stop rule in cache keys of sampled responses: samples drawn under another rule differ.
STOP_RULE = "eos+generation_config+end_of_turn"


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
    text: str  # the decoded response before its stop token, special tokens skipped
    token_ids: list[int]  # generated ids up to and including the stop token when produced: what KL is computed over


def special_token_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens: the named ones and every added token marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}


def end_of_turn_ids(tokenizer) -> list[int]:
    """The tokens that end an assistant turn in the tokenizer's chat template ([] without one).

    Rule: render a user message and an assistant message whose content is a probe word through the
    template, take the text after the probe, skip whitespace, and keep the special tokens it starts
    with. ChatML writes `<|im_end|>` there, Llama 3 `<|eot_id|>`, Gemma `<end_of_turn>`, Mistral and
    Llama 2 `</s>`. What follows those (ChatML's newline) is formatting between turns, not part of
    the turn, and a template that writes no special token there gives none.
    """
    if not getattr(tokenizer, "chat_template", None):
        return []
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"},
                                              {"role": "assistant", "content": TURN_PROBE}], tokenize=False)
    at = rendered.rfind(TURN_PROBE)
    if at < 0:  # a template that does not write the assistant's content as given
        return []
    special = special_token_ids(tokenizer)
    ids = []
    for token in tokenizer(rendered[at + len(TURN_PROBE):].lstrip(), add_special_tokens=False)["input_ids"]:
        if token not in special:
            break
        ids.append(token)
    return ids


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id a response stops at: the tokenizer's EOS, the ids of `generation_config.eos_token_id`
    (a transformers GenerationConfig, e.g. `model.generation_config`; an int or a list) and the chat
    template's end-of-turn tokens; each once, in that order."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(configured if isinstance(configured, (list, tuple)) else [configured]),
           *end_of_turn_ids(tokenizer)]
    return list(dict.fromkeys(i for i in ids if i is not None))


class GenerationBackend(ABC):
    """What samples responses; every caller (evaluation, GRPO, the sampled Z estimator) uses this."""

    def __init__(self, tokenizer, stop_ids: list[int]):
        self.tokenizer, self.stop_ids = tokenizer, stop_ids

    @abstractmethod
    def generate(self, encoded: list[list[int]], config: GenerationConfig) -> list[Generation]:
        """One response per encoded prompt, in the input order."""

    def follow(self, model) -> None:
        """Generate from `model`'s current weights from now on (a policy in training changes every step)."""

    def respond(self, prompts: list[list[dict]], config: GenerationConfig, raw_prompts: bool = False
                ) -> list[Generation]:
        """`generate` for prompts as turns, rendered and encoded as in training (`raw_prompts` as there)."""
        renderer = PromptRenderer(self.tokenizer, raw_prompts)
        return self.generate([renderer.prompt_ids(prompt)[0] for prompt in prompts], config)

    def finish(self, ids: list[int]) -> Generation:
        """A generated continuation cut after its first stop token (kept in token_ids, not in text)."""
        stops = set(self.stop_ids)
        end = next((k for k, token in enumerate(ids) if token in stops), None)
        if end is None:
            return Generation(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), ids)
        return Generation(self.tokenizer.decode(ids[:end], skip_special_tokens=True).strip(), ids[:end + 1])


class HFBackend(GenerationBackend):
    """transformers `generate` on a loaded model: batched, left-padded, seeded per batch."""

    def __init__(self, model, tokenizer, device="cpu", progress: bool = True):
        super().__init__(tokenizer, stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
        self.model, self.device, self.progress = model, device, progress

    def follow(self, model) -> None:
        self.model = model

    @torch.inference_mode()
    def generate(self, encoded: list[list[int]], config: GenerationConfig) -> list[Generation]:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        pad_id = self.tokenizer.pad_token_id
        results: list[Generation | None] = [None] * len(encoded)
        self.model.eval()
        batches = range(0, len(order), config.batch_size)
        # `disable` only where it must be off: an explicit False would override TQDM_DISABLE.
        bar = tqdm(batches, desc="generate", unit="batch", **({} if self.progress else {"disable": True}))
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
            output = self.model.generate(input_ids=input_ids.to(self.device),
                                         attention_mask=attention_mask.to(self.device),
                                         max_new_tokens=config.max_new_tokens, do_sample=not config.greedy,
                                         eos_token_id=self.stop_ids or None, pad_token_id=pad_id, **sampling)
            for row, i in enumerate(index):
                results[i] = self.finish(output[row, width:].tolist())
        return results


def generate_responses(model, tokenizer, prompts: list[list[dict]], config: GenerationConfig,
                       device="cpu", progress: bool = True, raw_prompts: bool = False) -> list[Generation]:
    """Responses of a loaded model to prompts given as turns, with transformers (`HFBackend`), the
    prompts encoded as training encodes them (`raw_prompts` as there)."""
    return HFBackend(model, tokenizer, device, progress).respond(prompts, config, raw_prompts)
