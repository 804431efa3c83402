"""Stop tokens as the model says: its generation config's EOS ids and its chat template's end of turn.

The models are the tiny Llama made a bigram model (`scripted_model`): with every attention and MLP
output zeroed the last hidden state is the current token's normalised embedding, and the output head
is set so that the argmax after token t is script[t]. Greedy decoding then writes a chosen sequence,
so where generation stops is known before it runs.
"""

import pytest
import torch
from transformers import GenerationConfig as HFGenerationConfig

from alignlab.data.tokenise import PromptRenderer
from alignlab.models.generate import GenerationConfig, end_of_turn_ids, generate_responses, stop_token_ids
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.tiny import CHAT_TEMPLATE

PROMPT = [{"role": "user", "content": "What color is the apple number 3?"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
          "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
          "{% endif %}")
# Llama 2's way: a space between the assistant's content and EOS.
LLAMA2 = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} "
          "{{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")
PLAIN_TEXT_TURNS = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"


def with_template(path, template: str, specials: list[str] = ()):
    tokenizer = load_tokenizer(str(path))
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    tokenizer.chat_template = template
    return tokenizer


def chatml_tokenizer(path):
    return with_template(path, CHATML, ["<|im_start|>", "<|im_end|>"])


def scripted_model(path, script: dict[int, int], vocab_size: int | None = None):
    """The tiny Llama at `path` as a bigram model whose greedy choice after token t is script[t]."""
    model = load_causal_lm(str(path))
    if vocab_size is not None:
        model.resize_token_embeddings(vocab_size)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for current, following in script.items():
            # logit of `following` = 10·cos(h(current), h(t))·|h(t)|: largest where t = current.
            h = model.model.norm(model.model.embed_tokens.weight[current])
            model.lm_head.weight[following] += 10 * h / h.norm()
    return model.eval()


def word_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


GREEDY = GenerationConfig(max_new_tokens=6, greedy=True)


def test_generation_stops_at_every_eos_id_of_the_models_generation_config(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    last = PromptRenderer(tokenizer).prompt_ids(PROMPT)[0][-1]
    the, apple = word_ids(tokenizer, "The apple")
    model = scripted_model(tiny_model, {last: the, the: apple, apple: the})
    # With EOS alone, " apple" is an ordinary token and the model runs on.
    assert generate_responses(model, tokenizer, [PROMPT], GREEDY, progress=False)[0].token_ids == [the, apple] * 3
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, apple]
    [stopped] = generate_responses(model, tokenizer, [PROMPT], GREEDY, progress=False)
    assert stopped.token_ids == [the, apple]  # the stop token is kept: KL is computed over it
    assert stopped.text == "The"  # the text ends before it


def test_generation_stops_at_the_chat_templates_end_of_turn_without_the_generation_config(tiny_model):
    tokenizer = chatml_tokenizer(tiny_model)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    renderer = PromptRenderer(tokenizer)
    prompt_ids, prompt_text = renderer.prompt_ids(PROMPT)
    [the] = word_ids(tokenizer, "The")
    model = scripted_model(tiny_model, {prompt_ids[-1]: the, the: end, end: the}, vocab_size=len(tokenizer))
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id  # it knows nothing of <|im_end|>
    [stopped] = generate_responses(model, tokenizer, [PROMPT], GREEDY, progress=False)
    assert stopped.token_ids == [the, end] and stopped.text == "The"
    # What training renders for that response is the same turn, then the newline between turns.
    assert renderer.response_ids(PROMPT, "The", prompt_text) == [the, end, *word_ids(tokenizer, "\n")]


@pytest.mark.parametrize("template, specials, end", [
    (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    (LLAMA2, [], "</s>"),
    (CHAT_TEMPLATE, ["<|user|>", "<|assistant|>"], "</s>"),
    (PLAIN_TEXT_TURNS, [], None),
])
def test_end_of_turn_is_the_special_token_the_template_writes_after_the_assistants_content(
        tiny_model, template, specials, end):
    tokenizer = with_template(tiny_model, template, specials)
    assert end_of_turn_ids(tokenizer) == ([] if end is None else [tokenizer.convert_tokens_to_ids(end)])


def test_stop_ids_gather_eos_the_generation_config_and_the_template_each_once(tiny_model):
    plain, chat = load_tokenizer(str(tiny_model)), chatml_tokenizer(tiny_model)
    eos, end = chat.eos_token_id, chat.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(plain) == [] and stop_token_ids(plain) == [eos]
    assert stop_token_ids(chat, HFGenerationConfig(eos_token_id=[eos, 7])) == [eos, 7, end]
    assert stop_token_ids(chat, HFGenerationConfig(eos_token_id=end)) == [eos, end]


# Raw-text prompts (raw_prompts): generation encodes them as training does.
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
