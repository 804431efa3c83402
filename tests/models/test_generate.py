"""Generation encodes prompts as training does (issue 16: raw_prompts)."""

from __future__ import annotations

import torch

from alignlab.data.tokenise import PromptRenderer
from alignlab.models.generate import GenerationConfig, generate_responses
from alignlab.models.loading import load_tokenizer

HH_PROMPT = [{"role": "user", "content": "\n\nHuman: What color is the sky?\n\nAssistant:"}]


class PromptRecorder(torch.nn.Module):
    """A stand-in model: records the prompt ids it is given and answers EOS at once."""

    def __init__(self, eos_id: int):
        super().__init__()
        self.eos_id, self.prompts = eos_id, []

    def generate(self, input_ids, attention_mask, **_):
        self.prompts += [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        return torch.cat([input_ids, torch.full((len(input_ids), 1), self.eos_id)], dim=1)


def test_generation_encodes_raw_prompts_as_the_tokenizer_does(tiny_chat_model):
    tokenizer = load_tokenizer(str(tiny_chat_model))
    model = PromptRecorder(tokenizer.eos_token_id)
    generate_responses(model, tokenizer, [HH_PROMPT], GenerationConfig(max_new_tokens=1), progress=False,
                       raw_prompts=True)
    generate_responses(model, tokenizer, [HH_PROMPT], GenerationConfig(max_new_tokens=1), progress=False)
    raw, templated = model.prompts
    assert raw == tokenizer(HH_PROMPT[0]["content"])["input_ids"]
    assert templated == PromptRenderer(tokenizer).prompt_ids(HH_PROMPT)[0] != raw
