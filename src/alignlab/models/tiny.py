"""Tiny Llama-config models with locally trained tokenizers, for tests and benchmarks.

Nothing is downloaded: the byte-level BPE tokenizer is trained on the given texts with
`tokenizers`, the model is randomly initialised from a seed, and both are written with
`save_pretrained`, so they load exactly as a real checkpoint would.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
ROLE_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>"]


def train_tokenizer(texts: list[str], vocab_size: int = 384, chat_template: bool = False,
                    word_level: bool = False):
    """A tokenizer with <s>/</s> and no pad token: byte-level BPE (any text encodes), or word-level
    over the whitespace-separated words of `texts` (then encode(a + " " + b) == encode(a) + encode(b),
    so every library splits prompt and response tokens the same way)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<s>", "</s>", "<unk>"] + (ROLE_TOKENS if chat_template else [])
    if word_level:
        backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(special_tokens=special, show_progress=False)
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(directory: str | Path, texts: list[str], *, seed: int = 0, hidden_size: int = 32,
                     layers: int = 2, heads: int = 4, chat_template: bool = False,
                     vocab_size: int = 384, max_positions: int = 512, word_level: bool = False) -> Path:
    """Save a randomly initialised tiny Llama and its tokenizer to `directory`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tokenizer = train_tokenizer(texts, vocab_size, chat_template, word_level)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_classifier(directory: str | Path, base: str | Path, *, num_labels: int = 1, seed: int = 0) -> Path:
    """A randomly initialised sequence classifier with `base`'s Llama config and tokenizer (a reward
    model of num_labels outputs for tests and benchmarks), written with save_pretrained."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(base)
    config.num_labels = num_labels
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(base).save_pretrained(directory)
    return Path(directory)
