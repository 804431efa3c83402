"""The MFU row's arithmetic, against counts worked out by hand."""

import pytest
import torch

from alignlab.bench.mfu import flop_parameters, matmul_flops_per_second, training_flops, utilisation
from alignlab.bench.setups import token_counts
from alignlab.models.loading import load_causal_lm
from alignlab.models.tiny import build_tiny_llama


def test_flop_parameters_are_every_weight_but_the_input_embedding(tmp_path):
    directory = build_tiny_llama(tmp_path / "m", ["a b c d e f g"], hidden_size=32, layers=2, heads=4)
    model = load_causal_lm(str(directory))
    vocab, hidden, intermediate, kv = model.config.vocab_size, 32, 64, 2 * 8  # 2 kv heads of 8 dims
    attention = hidden * hidden * 2 + hidden * kv * 2  # q, o; k, v (no biases)
    mlp = 3 * hidden * intermediate  # gate, up, down
    norms = 2 * hidden
    expected = 2 * (attention + mlp + norms) + hidden + vocab * hidden  # layers, final norm, untied lm_head
    assert flop_parameters(model) == expected


def test_tied_embeddings_count_once_as_the_output_layer(tmp_path):
    directory = build_tiny_llama(tmp_path / "m", ["a b c d e f g"], hidden_size=32, layers=2, heads=4)
    model = load_causal_lm(str(directory))
    untied = flop_parameters(model)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # The lm_head's own matrix is gone; the shared one now multiplies, so the count is unchanged.
    assert flop_parameters(model) == untied == model.num_parameters()


def test_training_flops_and_utilisation_by_hand():
    # 1,000 parameters, 10 tokens trained, 10 tokens of reference: 6·1000·10 + 2·1000·10.
    assert training_flops(1000, 10, reference_tokens=10) == 80_000
    assert training_flops(1000, 10) == 60_000
    assert utilisation(80_000, 2.0, 1e5) == pytest.approx(0.4)


def test_matmul_throughput_is_two_n_cubed_over_the_median_time(monkeypatch):
    clock = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0, 4.0, 4.5, 5.0, 5.5])  # 0.5, 0.25, 1.0, 0.5, 0.5 s
    monkeypatch.setattr("alignlab.bench.mfu.time.perf_counter", lambda: next(clock))
    assert matmul_flops_per_second("cpu", torch.float32, size=4, repeats=5) == pytest.approx(2 * 4**3 / 0.5)


def test_token_counts_split_forwarded_and_useful_tokens(tmp_path):
    from alignlab.data.pairs import load_pairs
    from alignlab.data.tokenise import tokenize_pairs
    from alignlab.models.loading import load_tokenizer

    directory = build_tiny_llama(tmp_path / "m", ["the sky is blue red green why"], chat_template=True,
                                 word_level=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "why is the sky blue", "chosen": "the sky is blue", "rejected": "red"}\n')
    counts = token_counts({"model": str(directory), "data": str(data), "max_length": 64})
    [pair], _ = tokenize_pairs(load_tokenizer(str(directory)), load_pairs(str(data)).pairs, 64, 32)
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    assert (p, c, r) == (8, 5, 2)  # <|user|> 5 words </s> <|assistant|>; 4 words </s>; 1 word </s>
    assert counts == {"pairs": 1, "forwarded": 2 * p + c + r, "pair": p + c + r, "sft": p + c}
