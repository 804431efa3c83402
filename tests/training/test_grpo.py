"""GRPO end to end on the tiny study world, its command line, and VAR's `sampled` Z estimator.

The loss pieces (advantages, clipped surrogate, k3, the sampled normaliser) are tested against
hand-computed values in test_objectives.py; here the online loop has to do what it is for: raise
the proxy reward of what the policy samples.
"""

import json
import math

import pytest
import torch
import yaml

from alignlab.training import grpo as grpo_module
from alignlab.cli import main
from alignlab.config import RewardModelConfig, TrainConfig
from alignlab.data.pairs import load_pairs, write_pairs_jsonl
from alignlab.errors import AlignlabError
from alignlab.models.generate import GenerationConfig, HFBackend
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.score import RewardScorer
from alignlab.training import train
from alignlab.world import build_world, build_world_models, world_config
from conftest import config_for, fake_vllm
from test_offline import reward_model


@pytest.fixture(scope="module")
def study(tmp_path_factory, world_cache):
    """The tiny world's SFT model, a proxy RM trained on its preference pairs, and prompt data."""
    from alignlab.training.reward_model import train_reward_model

    root = tmp_path_factory.mktemp("grpo-world")
    world = build_world(world_config("tiny"))
    models = build_world_models(world, world_cache)  # shared with the other world tests: built once
    write_pairs_jsonl(world.train_pairs[:256], root / "rm-pairs.jsonl")
    # A quick proxy: 12 Bradley–Terry steps from the SFT model (held-out accuracy ≈ 0.75). It only
    # has to rank responses; that it is imperfect (and likes length) is the proxy's job.
    train_reward_model(RewardModelConfig(
        model=str(models.sft), data=str(root / "rm-pairs.jsonl"), out=str(root / "rm"), learning_rate=3e-3,
        batch_size=16, max_length=96, max_prompt_length=32, warmup_ratio=0.0, eval_fraction=0.25,
        cache_dir=str(root / "cache")))
    return {"world": world, "sft": models.sft, "rm": root / "rm" / "model", "cache": root / "cache"}


def mean_proxy_reward(model_dir, rm_dir, prompts, samples_per_prompt=4, seed=123) -> float:
    """Mean proxy reward of responses sampled (temperature 1, seeded) from a model on fixed prompts."""
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir))
    scorer = RewardScorer(str(rm_dir), max_length=96)
    ids, _ = grpo_module.encode_prompts(tokenizer, prompts, 32)
    generation = GenerationConfig(max_new_tokens=32, temperature=1.0, top_p=1.0, batch_size=64, seed=seed)
    samples = grpo_module.sample_and_score(HFBackend(model, tokenizer, progress=False), scorer, prompts, ids,
                                           samples_per_prompt, generation)
    return samples.rewards.mean().item()


def grpo_config(model, data, out, rm, **overrides) -> TrainConfig:
    settings = dict(method="grpo", model=str(model), data=str(data), out=str(out), reward_model=str(rm),
                    learning_rate=2e-3, batch_size=4, epochs=1, warmup_ratio=0.0, lr_scheduler="constant",
                    max_length=96, max_prompt_length=32)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.slow
def test_grpo_raises_the_proxy_reward_of_sampled_responses(study, tmp_path):
    # 9 steps of 8 prompts × G=8 responses (70 distinct prompts); then the mean proxy reward of 96
    # seeded samples (24 held-out prompts × 4) from the SFT model and from the GRPO model. Over
    # seeds 0–5 the gain was 0.40–0.49 (0.47 -> 0.87–0.96); the bar is 0.2.
    data = tmp_path / "prompts.jsonl"
    write_pairs_jsonl(study["world"].train_pairs[:128], data)
    out = tmp_path / "grpo"
    result = train(grpo_config(study["sft"], data, out, study["rm"], batch_size=8, cache_dir=str(study["cache"]),
                               params={"group_size": 8, "max_new_tokens": 32, "beta": 0.04}))
    prompts = grpo_module.distinct_prompts(study["world"].heldout_pairs)[:24]
    before = mean_proxy_reward(study["sft"], study["rm"], prompts)
    after = mean_proxy_reward(out / "model", study["rm"], prompts)
    print(f"mean proxy reward of samples on 24 held-out prompts: SFT {before:.3f} -> GRPO {after:.3f}")
    assert after > before + 0.2, (before, after)

    assert result.optimizer_steps == 9 and result.pairs_trained == 70
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 10))
    assert [m["pairs_seen"] for m in metrics] == [8, 16, 24, 32, 40, 48, 56, 64, 70]  # prompts
    assert all(m["responses_seen"] == 8 * m["pairs_seen"] for m in metrics)
    elapsed = [m["elapsed_s"] for m in metrics]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts at the reference
    assert metrics[-1]["kl"] > 0
    assert all(m["margin"] == m["reward"] and math.isfinite(m["reward"]) for m in metrics)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["method"] == "grpo" and summary["responses_trained"] == 560
    assert summary["params"]["group_size"] == 8


@pytest.mark.slow
def test_grpo_from_the_command_line(study, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    write_pairs_jsonl(study["world"].train_pairs[:8], data)  # 8 pairs, 6 distinct prompts
    out = tmp_path / "run"
    common = ["train", "--method", "grpo", "--model", str(study["sft"]), "--data", str(data),
              "--learning_rate", "1e-3", "--batch_size", "4", "--max_length", "96", "--max_prompt_length", "32"]
    code = main([*common, "--out", str(out), "--reward_model", str(study["rm"]), "--group_size", "4",
                 "--max_new_tokens", "16", "--temperature", "0.8"])
    assert code == 0
    assert "2 steps, 6 prompts × 4 responses" in capsys.readouterr().out
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["params"] == {"group_size": 4, "beta": 0.04, "clip_eps": 0.2, "temperature": 0.8,
                                  "max_new_tokens": 16, "num_iterations": 1}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"reward", "kl", "clip_fraction", "response_length", "responses_seen", "elapsed_s"} <= set(metrics[0])
    assert all(m["response_length"] <= 16 for m in metrics)
    assert (out / "model" / "model.safetensors").exists()

    # Wrong settings fail before anything is written, naming the fix.
    bad = tmp_path / "bad"
    assert main([*common, "--out", str(bad), "--reward_model", str(study["rm"]), "--group_sise", "4"]) == 2
    assert "did you mean 'group_size'" in capsys.readouterr().err
    assert main([*common, "--out", str(bad), "--reward_model", str(study["rm"]), "--group_size", "1"]) == 2
    assert "'group_size' must be >= 2" in capsys.readouterr().err
    assert main([*common, "--out", str(bad)]) == 2
    assert "--reward_model" in capsys.readouterr().err
    assert main([*common, "--out", str(bad), "--reward_model", str(study["rm"]), "--max_new_tokens", "80"]) == 2
    assert "max_length" in capsys.readouterr().err
    assert not bad.exists()


def test_help_lists_grpo(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "grpo" in text and "group_size=8" in text and "num_iterations=1" in text
    assert "z_estimator=batch" in text and "z_samples=8" in text


@pytest.mark.slow
def test_grpo_num_iterations_trains_each_sample_twice_and_clips(study, tmp_path, monkeypatch):
    """μ = 2: each sampled batch serves two optimizer steps, and on the second π ≠ π_old, so the
    ratio leaves [1 − ε, 1 + ε] for some tokens."""
    calls = []
    real = grpo_module.sample_and_score
    monkeypatch.setattr(grpo_module, "sample_and_score", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = tmp_path / "prompts.jsonl"
    write_pairs_jsonl(study["world"].train_pairs[:12], data)  # 9 distinct prompts: 2 blocks of 4, 1 waits
    out = tmp_path / "run"
    result = train(grpo_config(study["sft"], data, out, study["rm"], learning_rate=5e-3,
                               params={"group_size": 4, "max_new_tokens": 16, "num_iterations": 2,
                                       "clip_eps": 0.05}))
    assert result.optimizer_steps == 4 and len(calls) == 2  # 2 prompt blocks, each trained twice
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["clip_fraction"] == 0.0  # first pass: π = π_old
    assert metrics[1]["clip_fraction"] > 0.0
    assert [m["reward"] for m in metrics[:2]] == [metrics[0]["reward"]] * 2  # the same samples


@pytest.mark.slow
def test_grpo_resumes_after_a_crash_to_the_uninterrupted_result(study, tmp_path, monkeypatch):
    """Sampling is seeded per micro-batch, so a resumed run samples, and ends, exactly as an uninterrupted one."""
    from alignlab.training.outputs import partial_dir

    data = tmp_path / "prompts.jsonl"
    write_pairs_jsonl(study["world"].train_pairs[:12], data)  # 9 prompts: 5 steps of 2
    settings = dict(batch_size=2, checkpoint_steps=2, params={"group_size": 4, "max_new_tokens": 12})
    whole = train(grpo_config(study["sft"], data, tmp_path / "whole", study["rm"], **settings))
    real, calls = grpo_module.sample_and_score, []

    def crash_on_the_4th_sampling(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # inside step 4, after the checkpoint at step 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(grpo_module, "sample_and_score", crash_on_the_4th_sampling)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(grpo_config(study["sft"], data, out, study["rm"], **settings))
    assert not out.exists() and (partial_dir(out) / "checkpoint-2").exists()
    monkeypatch.setattr(grpo_module, "sample_and_score", real)
    resumed = train(grpo_config(study["sft"], data, out, study["rm"], resume=True, **settings))
    assert resumed.optimizer_steps == whole.optimizer_steps == 5
    lines = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
             for name in ("whole", "resumed")}
    assert [m["step"] for m in lines["resumed"]] == [1, 2, 3, 4, 5]
    for a, b in zip(lines["resumed"], lines["whole"]):
        for key in ("loss", "reward", "kl", "response_length", "responses_seen"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert (out / "model" / "model.safetensors").read_bytes() == \
        (tmp_path / "whole" / "model" / "model.safetensors").read_bytes()


def test_var_sampled_estimator_samples_the_reference_once_and_caches(tiny_model, pairs_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from alignlab.training import offline as offline_module

    rm = reward_model(tmp_path / "rm", tiny_model)
    calls, batches = [], []
    real_sample, real_pair_batch = grpo_module.sample_and_score, offline_module.pair_batch
    monkeypatch.setattr(grpo_module, "sample_and_score", lambda *a, **k: calls.append(a[4]) or real_sample(*a, **k))
    monkeypatch.setattr(offline_module, "pair_batch", lambda *a: batches.append(real_pair_batch(*a)) or batches[-1])
    cache = tmp_path / "cache"
    params = {"z_estimator": "sampled", "z_samples": 3, "lam": 0.5}
    first = train(config_for(tiny_model, pairs_file, tmp_path / "a", method="var", reward_model=str(rm),
                             cache_dir=str(cache), params=params))
    assert math.isfinite(first.final_loss) and first.final_loss > 0
    assert calls == [3]  # K = 3 samples per prompt, drawn once
    [cache_file] = cache.glob("sampled-z-*.safetensors")
    rewards = load_file(str(cache_file))["rewards"].double()
    n_prompts = len({json.dumps(p.prompt) for p in load_pairs(str(pairs_file)).pairs})
    assert rewards.shape == (n_prompts, 3)
    # Each pair gets its prompt's log Ẑ = log((1/K) Σ_k exp(r_k/λ)) of the cached samples.
    for batch in batches[:2]:
        for group, log_z in zip(batch.prompt_groups.tolist(), batch.log_z.tolist()):
            r = rewards[group].tolist()
            assert log_z == pytest.approx(math.log(sum(math.exp(x / 0.5) for x in r) / 3), rel=1e-5)

    # Another λ reuses the cached samples: the rewards are cached, log Ẑ is computed from them.
    second = train(config_for(tiny_model, pairs_file, tmp_path / "b", method="var", reward_model=str(rm),
                              cache_dir=str(cache), params={**params, "lam": 2.0}))
    assert calls == [3] and second.final_loss != first.final_loss
    # Without a reward model the samples cannot be scored: an error before anything is written.
    with pytest.raises(AlignlabError, match="--reward_model"):
        train(config_for(tiny_model, pairs_file, tmp_path / "c", method="var", params=params))
    assert not (tmp_path / "c").exists()


def test_grpo_with_vllm_loads_the_policy_into_the_engine_before_each_sampling(tiny_model, pairs_file, tmp_path,
                                                                              monkeypatch):
    """The stand-in vLLM (conftest.fake_vllm) answers with canned responses; GRPO must push the
    current policy into it before every sampling and train on the responses it returns."""
    from safetensors.torch import load_file

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first: monkeypatch then restores the variable's absence, so what the backend sets
        # does not leak into later tests' processes (they would start a torch.distributed job).
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    tokenizer = load_tokenizer(str(tiny_model))
    the, apple = tokenizer("The apple", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    record = fake_vllm(monkeypatch, [[the, apple, eos], [the, eos], [apple]])
    out = tmp_path / "run"
    result = train(config_for(tiny_model, pairs_file, out, method="grpo", reward_model=str(reward_model(
        tmp_path / "rm", tiny_model)), generation_backend="vllm", max_steps=2,
        params={"group_size": 2, "max_new_tokens": 4}))
    assert result.optimizer_steps == 2
    assert record.engine["model"] == str(tiny_model) and record.engine["max_model_len"] == 64
    assert record.events == ["load_weights", "reset_prefix_cache", "generate"] * 2
    saved = load_file(str(tiny_model / "model.safetensors"))
    assert all(torch.equal(record.loaded[0][name], saved[name]) for name in saved)  # step 1: the SFT model
    assert not torch.equal(record.loaded[1]["lm_head.weight"], saved["lm_head.weight"])  # step 2: trained once
    prompts = [p["prompt_token_ids"] for p in record.prompts]
    assert len(prompts) == 8 and prompts[0::2] == prompts[1::2]  # 4 prompts × G = 2, each group together
    # The 8 responses have 3, 2, 1, 3, 2, 1, 3, 2 tokens (EOS kept): what GRPO trained on.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["response_length"] == pytest.approx(17 / 8)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_token_logps_are_the_log_softmax_of_every_position_at_temperature(tiny_model, monkeypatch,
                                                                                   temperature):
    from alignlab.data.tokenise import collate_sequences
    from alignlab.models import logps as logps_module

    model = load_causal_lm(str(tiny_model)).eval()
    batch = collate_sequences([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15]], 0)
    monkeypatch.setattr(logps_module, "CHUNK_LOGITS_BYTES", 4 * model.config.vocab_size * 3)  # chunks of 3 positions
    with torch.no_grad():
        got = grpo_module.response_token_logps(model, batch, temperature)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = torch.log_softmax(logits / temperature, -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    assert got.shape == expected.shape == (2, batch["input_ids"].shape[1] - 1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
