"""Generation, metrics and evaluate_model against independent computations."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from alignlab.data.pairs import PreferencePair
from alignlab.evaluation.evaluate import evaluate_model
from alignlab.evaluation.kl import kl_generation, kl_to_sft
from alignlab.models import logps as logps_module
from alignlab.models.generate import GenerationConfig, generate_responses
from alignlab.evaluation.metrics import bootstrap_ci, summarize
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.tiny import build_tiny_classifier
from alignlab.data.tokenise import PromptRenderer

PROMPTS = [[{"role": "user", "content": "What color is the apple number 3?"}],
           [{"role": "user", "content": "Hi"}],
           [{"role": "user", "content": "What color is the banana number 11 today, please?"}]]


# ------------------------------------------------------------------ metrics

def test_win_rates_count_strict_wins_with_tie_and_loss_shares_beside_them():
    m = summarize({"gold_score": [1, 2, 2, 3], "chosen_score": [0, 2, 3, 3], "sft_score": [1, 1, 2, 2],
                   "length": [1, 1, 1, 1]})
    assert (m["win_vs_chosen"]["value"], m["tie_vs_chosen"]["value"], m["loss_vs_chosen"]["value"]) == (0.25, 0.5, 0.25)
    assert (m["win_vs_sft"]["value"], m["tie_vs_sft"]["value"], m["loss_vs_sft"]["value"]) == (0.5, 0.5, 0.0)
    # Each share's CI bootstraps its own indicator; all three resample the same prompts.
    for name in ("win_vs_chosen", "tie_vs_chosen", "loss_vs_chosen"):
        assert 0.0 <= m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"] <= 1.0


def test_summarize_matches_hand_computation():
    samples = {"gold_score": [1.0, 2.0, 3.0, 4.0], "chosen_score": [0.0, 2.0, 5.0, 1.0],
               "sft_score": [1.0, 1.0, 1.0, 1.0], "kl": [1.0, 0.0, 2.0, 4.0], "ln_kl": [0.5, 0.0, 0.25, 1.0],
               "length": [2, 4, 1, 4]}
    m = summarize(samples)
    assert m["mean_score"]["value"] == pytest.approx(2.5)
    assert m["win_vs_chosen"]["value"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert m["tie_vs_chosen"]["value"] == pytest.approx(1 / 4)
    assert m["win_vs_sft"]["value"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    assert m["kl"]["value"] == pytest.approx((1 + 0 + 2 + 4) / 4)
    assert m["ln_kl"]["value"] == pytest.approx((0.5 + 0 + 0.25 + 1) / 4)  # the mean ratio, not a ratio of means
    assert m["length"]["value"] == pytest.approx(2.75)
    for metric in m.values():
        assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]
    without = summarize({k: v for k, v in samples.items() if k not in ("sft_score", "kl", "ln_kl")})
    assert without["win_vs_sft"] is None and without["tie_vs_sft"] is None and without["kl"] is None


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


def test_bootstrap_ci_of_the_mean_is_that_of_one_resample_at_a_time():
    """The mean's interval (every resample at once) is, bit for bit, the one a statistic computed
    resample by resample gives: the same draws, the same sums."""
    values = np.random.default_rng(2).normal(size=200) ** 3
    def one_at_a_time(x):
        return np.mean(x)
    for seed in range(5):
        assert bootstrap_ci(values, seed=seed) == bootstrap_ci(values, statistic=one_at_a_time, seed=seed)


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

def unbatched_kl(policy, sft, tokenizer, prompt, response_ids) -> float:
    """Second implementation: one unpadded sequence per model, a position-by-position loop over
    probabilities."""
    ids = PromptRenderer(tokenizer).prompt_ids(prompt)[0]
    full = torch.tensor([ids + response_ids])
    with torch.no_grad():
        p_logits, q_logits = (model(input_ids=full).logits[0].double() for model in (policy, sft))
    total = 0.0
    for t in range(len(response_ids)):  # token t is predicted at position len(ids) + t − 1
        p, q = torch.softmax(p_logits[len(ids) + t - 1], -1), torch.softmax(q_logits[len(ids) + t - 1], -1)
        total += float((p * (p.log() - q.log())).sum())
    return total


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["default-chunks", "one-position-chunks"])
def test_kl_to_sft_equals_an_unbatched_computation(tiny_model, tmp_path, monkeypatch, chunk_bytes):
    # In float64 the padded batches and the single sequences agree to rounding far below the tolerance,
    # whatever the chunks the logits are computed in.
    if chunk_bytes:
        monkeypatch.setattr(logps_module, "CHUNK_LOGITS_BYTES", chunk_bytes)
    policy = load_causal_lm(str(perturbed_copy(tiny_model, tmp_path / "policy"))).double().eval()
    sft, tokenizer = load_causal_lm(str(tiny_model)).double().eval(), load_tokenizer(str(tiny_model))
    responses = [[40, 41, 42], [7, tokenizer.eos_token_id], [50, 51, 52, 53, 54, 55]]  # padded in batches of 2
    got = kl_to_sft(policy, sft, tokenizer, PROMPTS, responses, batch_size=2)
    expected = [unbatched_kl(policy, sft, tokenizer, p, r) for p, r in zip(PROMPTS, responses)]
    assert got == pytest.approx(expected, abs=1e-6)
    assert min(expected) > 0


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
    generation = GenerationConfig(max_new_tokens=8, temperature=0.7, top_p=0.9)
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
    assert "logp_policy" not in table and "logp_sft" not in table
    # The KL is measured on the policy's own temperature-1 samples, drawn again here.
    model, tokenizer, sft_model = (load_causal_lm(str(policy)).eval(), load_tokenizer(str(policy)),
                                   load_causal_lm(str(tiny_model)).eval())
    draws = [g.token_ids for g in generate_responses(model, tokenizer, PROMPTS, kl_generation(generation),
                                                     progress=False)]
    assert table["kl_length"] == [len(ids) for ids in draws]
    # float32 forward passes of a padded batch and of one sequence round differently: relative 1e-6.
    assert table["kl"] == pytest.approx([unbatched_kl(model, sft_model, tokenizer, p, ids)
                                         for p, ids in zip(PROMPTS, draws)], rel=1e-6)
    assert min(table["kl"]) > 0
    assert table["ln_kl"] == pytest.approx([k / max(n, 1) for k, n in zip(table["kl"], table["kl_length"])])
    assert metrics["kl"]["value"] == pytest.approx(np.mean(table["kl"]))
    assert metrics["ln_kl"]["value"] == pytest.approx(np.mean(table["ln_kl"]))
    assert sft.samples["kl"] == [0.0, 0.0, 0.0] and sft.samples["ln_kl"] == [0.0, 0.0, 0.0]
    assert metrics["win_vs_sft"]["value"] == pytest.approx(np.mean(np.greater(table["gold_score"], table["sft_score"])))


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
    # The same model with the same seed: every response ties with the SFT model's.
    assert metrics["kl"]["value"] == 0.0 and metrics["win_vs_sft"]["value"] == 0.0
    assert metrics["tie_vs_sft"]["value"] == 1.0
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
