"""Generation, metrics and evaluate_model against independent computations."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from alignlab.data.pairs import PreferencePair
from alignlab.evaluation.evaluate import evaluate_model, response_logps
from alignlab.models.generate import GenerationConfig, generate_responses
from alignlab.evaluation.metrics import bootstrap_ci, summarize, win_rate
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.tiny import build_tiny_classifier
from alignlab.data.tokenise import PromptRenderer

PROMPTS = [[{"role": "user", "content": "What color is the apple number 3?"}],
           [{"role": "user", "content": "Hi"}],
           [{"role": "user", "content": "What color is the banana number 11 today, please?"}]]


# ------------------------------------------------------------------ metrics

def test_win_rate_counts_ties_as_half():
    assert win_rate([3, 1, 2, 5], [1, 1, 4, 5]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


def test_summarize_matches_hand_computation():
    samples = {"gold_score": [1.0, 2.0, 3.0, 4.0], "chosen_score": [0.0, 2.0, 5.0, 1.0],
               "sft_score": [1.0, 1.0, 1.0, 1.0], "logp_policy": [-1.0, -2.0, -3.0, -4.0],
               "logp_sft": [-2.0, -2.0, -5.0, -8.0], "length": [2, 4, 1, 4]}
    m = summarize(samples)
    assert m["mean_score"]["value"] == pytest.approx(2.5)
    assert m["win_vs_chosen"]["value"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert m["win_vs_sft"]["value"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert m["kl"]["value"] == pytest.approx((1 + 0 + 2 + 4) / 4)
    assert m["ln_kl"]["value"] == pytest.approx((1 / 2 + 0 + 2 / 1 + 4 / 4) / 4)
    assert m["length"]["value"] == pytest.approx(2.75)
    for metric in m.values():
        assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]
    without = summarize({k: v for k, v in samples.items() if k not in ("sft_score", "logp_sft")})
    assert without["win_vs_sft"] is None and without["kl"] is None


def test_bootstrap_ci_is_seeded_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=50), rng.normal(size=5000)
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    big_low, big_high = bootstrap_ci(large)
    assert big_high - big_low < (high - low) / 5
    # The 95% CI of a normal mean is about ±1.96/√n: the bootstrap agrees within 15%.
    assert (big_high - big_low) / 2 == pytest.approx(1.96 * large.std() / math.sqrt(len(large)), rel=0.15)


# ------------------------------------------------------------------ generation

def argmax_continuation(model, tokenizer, prompt, max_new_tokens):
    """Second implementation: one unpadded prompt, explicit argmax loop, no generate()."""
    ids = PromptRenderer(tokenizer).prompt_ids(prompt)[0]
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            out.append(int(logits.argmax()))
            if out[-1] == tokenizer.eos_token_id:
                break
    return out


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_chat_model"])
def test_greedy_batched_left_padded_generation_equals_an_unbatched_argmax_loop(fixture, request):
    path = str(request.getfixturevalue(fixture))
    model, tokenizer = load_causal_lm(path).eval(), load_tokenizer(path)
    config = GenerationConfig(max_new_tokens=12, greedy=True, batch_size=3)
    generations = generate_responses(model, tokenizer, PROMPTS, config, progress=False)
    for prompt, generation in zip(PROMPTS, generations):
        assert generation.token_ids == argmax_continuation(model, tokenizer, prompt, 12)
        assert len(generation.token_ids) <= 12


def test_sampling_is_seeded(tiny_model):
    model, tokenizer = load_causal_lm(str(tiny_model)).eval(), load_tokenizer(str(tiny_model))
    run = lambda seed: [g.token_ids for g in generate_responses(
        model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=10, temperature=1.0, seed=seed), progress=False)]
    assert run(0) == run(0)
    assert run(0) != run(1)


# ------------------------------------------------------------------ evaluate

def unbatched_logp(model, tokenizer, prompt, response_ids):
    ids = PromptRenderer(tokenizer).prompt_ids(prompt)[0]
    full = torch.tensor([ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=full).logits[0].double(), -1)
    return sum(logprobs[len(ids) + t - 1, tok].item() for t, tok in enumerate(response_ids))


def test_response_logps_equal_an_unbatched_computation(tiny_model):
    model, tokenizer = load_causal_lm(str(tiny_model)).eval(), load_tokenizer(str(tiny_model))
    responses = [[40, 41, 42], [7], [50, 51, 52, 53, 54, 55]]
    got = response_logps(model, tokenizer, PROMPTS, responses, batch_size=2)
    expected = [unbatched_logp(model, tokenizer, p, r) for p, r in zip(PROMPTS, responses)]
    assert got.tolist() == pytest.approx(expected, abs=1e-4)


def word_count_scorer(prompts, responses):
    return torch.tensor([float(len(r.split())) for r in responses])


def perturbed_copy(source, directory, seed=5):
    model = load_causal_lm(str(source))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    load_tokenizer(str(source)).save_pretrained(directory)
    return directory


def test_evaluate_model_writes_samples_and_metrics_consistent_with_them(tiny_model, tmp_path):
    policy = perturbed_copy(tiny_model, tmp_path / "policy-model")
    pairs = [PreferencePair(id=f"t{i}", prompt=p, chosen="a short answer", rejected="x") for i, p in enumerate(PROMPTS)]
    generation = GenerationConfig(max_new_tokens=8, temperature=1.0)
    sft = evaluate_model(str(tiny_model), pairs, word_count_scorer, sft_model_path=str(tiny_model),
                         generation=generation, out_dir=tmp_path / "sft")
    assert sft.metrics["kl"]["value"] == 0.0  # the SFT model against itself
    result = evaluate_model(str(policy), pairs, word_count_scorer, sft_model_path=str(tiny_model),
                            sft_samples=sft.samples, generation=generation, out_dir=tmp_path / "policy")
    table = pq.read_table(tmp_path / "policy" / "samples.parquet").to_pydict()
    metrics = json.loads((tmp_path / "policy" / "metrics.json").read_text())
    assert metrics == result.metrics
    assert table["prompt_id"] == ["t0", "t1", "t2"]
    assert table["gold_score"] == [float(len(r.split())) for r in table["response"]]
    assert table["chosen_score"] == [3.0, 3.0, 3.0]
    assert table["sft_score"] == sft.samples["gold_score"]
    assert metrics["mean_score"]["value"] == pytest.approx(np.mean(table["gold_score"]))
    kl = np.array(table["logp_policy"]) - np.array(table["logp_sft"])
    assert metrics["kl"]["value"] == pytest.approx(kl.mean())
    assert metrics["win_vs_sft"]["value"] == pytest.approx(win_rate(table["gold_score"], table["sft_score"]))
    assert metrics["kl"]["value"] != 0.0


def test_kl_needs_one_tokenizer(tiny_model, tiny_chat_model):
    from alignlab.errors import AlignlabError

    pairs = [PreferencePair(id="t0", prompt=PROMPTS[0], chosen="a", rejected="b")]
    with pytest.raises(AlignlabError, match="share one tokenizer"):
        evaluate_model(str(tiny_chat_model), pairs, word_count_scorer, sft_model_path=str(tiny_model),
                       generation=GenerationConfig(max_new_tokens=4))


def test_eval_command_with_a_reward_model_and_sft(tiny_model, pairs_file, tmp_path, capsys):
    from alignlab.cli import main

    build_tiny_classifier(tmp_path / "gold", tiny_model)
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_model), "--data", str(pairs_file), "--gold_rm", str(tmp_path / "gold"),
                 "--sft", str(tiny_model), "--out", str(out), "--max_new_tokens", "6", "--limit", "5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mean_score" in printed and str(out) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kl"]["value"] == 0.0 and metrics["win_vs_sft"]["value"] == 0.5  # same model, same seed
    assert len(pq.read_table(out / "samples.parquet")) == 5


def test_proxy_scorer_adds_a_proxy_column_and_its_mean(tiny_model, tmp_path):
    pairs = [PreferencePair(id=f"t{i}", prompt=p, chosen="a short answer", rejected="x") for i, p in enumerate(PROMPTS)]
    result = evaluate_model(str(tiny_model), pairs, word_count_scorer, generation=GenerationConfig(max_new_tokens=8),
                            out_dir=tmp_path / "eval", proxy_scorer=lambda prompts, responses: torch.tensor(
                                [float(len(r)) for r in responses]))
    table = pq.read_table(tmp_path / "eval" / "samples.parquet").to_pydict()
    assert table["proxy_score"] == [float(len(r)) for r in table["response"]]  # characters, not words
    assert result.metrics["mean_proxy_score"]["value"] == pytest.approx(np.mean(table["proxy_score"]))
    assert "mean_proxy_score" not in evaluate_model(str(tiny_model), pairs, word_count_scorer,
                                                    generation=GenerationConfig(max_new_tokens=8)).metrics
