"""The vLLM backend's wiring, against a stand-in `vllm` package (vLLM needs a CUDA GPU): what the
engine is built with, what it is asked (training's prompt ids, the stop ids, the sampling settings),
how its answers are cut and decoded, and how it follows a policy's weights, LoRA merged in."""

import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from alignlab.config import TrainConfig
from alignlab.data.tokenise import PromptRenderer
from alignlab.errors import AlignlabError
from alignlab.evaluation.config import EvalConfig
from alignlab.evaluation.evaluate import run_eval
from alignlab.models.backends import make_backend
from alignlab.models.generate import GenerationConfig
from alignlab.models.loading import load_causal_lm
from alignlab.training import train
from conftest import fake_vllm
from test_generate import chatml_tokenizer, word_ids

PROMPTS = [[{"role": "user", "content": "What color is the apple number 3?"}],
           [{"role": "user", "content": "Hi"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What color is the sky?"}]]


def test_vllm_gets_training_prompts_stop_ids_and_sampling_and_its_answers_are_cut_as_hf_cuts(tiny_model, monkeypatch):
    tokenizer = chatml_tokenizer(tiny_model)
    eos, end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    the, apple = word_ids(tokenizer, "The apple")
    model = load_causal_lm(str(tiny_model))
    model.generation_config.eos_token_id = [eos, 7]
    # vLLM stops at a stop id itself; tokens after one would still be cut.
    record = fake_vllm(monkeypatch, [[the, apple, end, the], [the, 7, apple], [the, apple]])
    backend = make_backend("vllm", model, tokenizer, "org/checkpoint", revision="v2", trust_remote_code=True,
                           max_model_len=96)
    assert record.engine == {"model": "org/checkpoint", "revision": "v2", "trust_remote_code": True,
                             "skip_tokenizer_init": True, "gpu_memory_utilization": 0.3, "max_model_len": 96}

    generations = backend.respond(PROMPTS, GenerationConfig(max_new_tokens=5, temperature=0.8, top_p=0.9, seed=3))
    renderer = PromptRenderer(tokenizer)
    assert record.prompts == [{"prompt_token_ids": renderer.prompt_ids(p)[0]} for p in PROMPTS]
    seeds = set()
    for params in record.params:
        kwargs = dict(params.kwargs)
        seeds.add(kwargs.pop("seed"))
        assert kwargs == {"n": 1, "max_tokens": 5, "stop_token_ids": [eos, 7, end], "detokenize": False,
                          "temperature": 0.8, "top_p": 0.9}
    assert len(seeds) == 3  # each request its own stream: a repeated prompt gets different samples
    assert [g.token_ids for g in generations] == [[the, apple, end], [the, 7], [the, apple]]
    assert [g.text for g in generations] == ["The apple", "The", "The apple"]

    backend.generate([[5, 6]], GenerationConfig(max_new_tokens=4, temperature=0.8, greedy=True))
    assert record.params[0].kwargs == {"n": 1, "max_tokens": 4, "stop_token_ids": [eos, 7, end],
                                       "detokenize": False, "temperature": 0.0}  # greedy


def test_vllm_follows_the_policys_weights_under_checkpoint_names_with_lora_merged(tiny_model, monkeypatch):
    from peft import LoraConfig

    from alignlab.models.loading import with_adapter

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first: monkeypatch then restores the variable's absence, so what the backend sets
        # does not leak into later tests' processes (they would start a torch.distributed job).
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    record = fake_vllm(monkeypatch, [])
    tokenizer = chatml_tokenizer(tiny_model)
    model = load_causal_lm(str(tiny_model))
    backend = make_backend("vllm", model, tokenizer, str(tiny_model), follows_training=True)
    # In this process, as rank 0 of 1: the engine's model is reachable.
    assert record.engine["distributed_executor_backend"] == "external_launcher"
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("0", "1", "localhost")

    saved = load_file(str(tiny_model / "model.safetensors"))
    backend.follow(model)
    assert record.events == ["load_weights", "reset_prefix_cache"]
    assert set(record.loaded[0]) == set(saved)
    assert all(torch.equal(record.loaded[0][name], saved[name]) for name in saved)

    policy = with_adapter(load_causal_lm(str(tiny_model)),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.0))
    q_proj = policy.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        q_proj.lora_B["default"].weight.fill_(0.1)  # PEFT starts B at 0: a trained adapter moves it
    backend.follow(policy)
    loaded, name = record.loaded[1], "model.layers.0.self_attn.q_proj.weight"
    assert set(loaded) == set(saved)  # the base checkpoint's names; the adapter's own tensors left out
    merged = saved[name] + (4 / 2) * q_proj.lora_B["default"].weight @ q_proj.lora_A["default"].weight
    assert torch.allclose(loaded[name], merged, atol=1e-6) and not torch.allclose(loaded[name], saved[name])
    assert torch.allclose(q_proj.base_layer.weight, saved[name], atol=1e-6)  # unmerged again for training


def test_a_missing_vllm_is_refused_before_anything_is_written(tiny_model, pairs_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    install = r"pip install 'alignlab\[vllm\]'"
    with pytest.raises(AlignlabError, match=install):
        run_eval(EvalConfig(model=str(tiny_model), data=str(pairs_file), gold_rm=str(tiny_model),
                            out=str(tmp_path / "eval"), generation_backend="vllm"))
    common = dict(model=str(tiny_model), data=str(pairs_file), reward_model=str(tiny_model), generation_backend="vllm")
    with pytest.raises(AlignlabError, match=install):
        train(TrainConfig(method="grpo", out=str(tmp_path / "grpo"), **common))
    with pytest.raises(AlignlabError, match=install):
        train(TrainConfig(method="var", out=str(tmp_path / "var"), params={"z_estimator": "sampled"}, **common))
    assert not any(tmp_path.iterdir())
