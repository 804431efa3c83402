"""LoRA target modules (issue 28): every name in --lora_target_modules is checked against the model
before any training, as PEFT would match it (a module path or its last components); a misspelt,
missing or non-linear target is one error naming it, the setting and the valid names."""

import pytest

from alignlab.cli import main
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm
from alignlab.training.policy import prepare_policy
from conftest import config_for

LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
TINY_LLAMA_LINEAR = "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"


def adapted(tiny_model, pairs_file, tmp_path, targets) -> list[str]:
    """The modules LoRA adapts when asked for `targets`, by path in the base model."""
    config = config_for(tiny_model, pairs_file, tmp_path / "run", lora_target_modules=targets, **LORA)
    config.validate()
    policy = prepare_policy(load_causal_lm(str(tiny_model)), config)
    return sorted(name.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight")
                  for name, _ in policy.named_parameters() if "lora_A" in name)


def refused(tiny_model, pairs_file, tmp_path, targets) -> str:
    with pytest.raises(AlignlabError) as caught:
        adapted(tiny_model, pairs_file, tmp_path, targets)
    message = str(caught.value)
    assert "\n" not in message and "--lora_target_modules" in message
    return message


@pytest.mark.parametrize("targets", [None, ["all-linear"], ["All-Linear"]])
def test_all_linear_adapts_every_linear_layer_but_the_output_head(tiny_model, pairs_file, tmp_path, targets):
    names = adapted(tiny_model, pairs_file, tmp_path, targets)
    assert len(names) == 14 and not any("lm_head" in name for name in names)  # 7 projections × 2 layers


def test_targets_match_as_peft_matches_them_by_last_path_components(tiny_model, pairs_file, tmp_path):
    assert adapted(tiny_model, pairs_file, tmp_path, ["q_proj", "v_proj"]) == [
        f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert adapted(tiny_model, pairs_file, tmp_path, ["self_attn.q_proj", "model.layers.1.mlp.up_proj"]) == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj", "model.layers.1.self_attn.q_proj"]


def test_a_misspelt_target_beside_a_good_one_is_refused_with_a_suggestion(tiny_model, pairs_file, tmp_path):
    message = refused(tiny_model, pairs_file, tmp_path, ["q_proj", "v_prj"])
    assert "'v_prj'" in message and "did you mean 'v_proj'?" in message and TINY_LLAMA_LINEAR in message
    assert "'q_proj'" not in message  # only the name that matches nothing


def test_targets_matching_nothing_are_one_error_not_a_peft_traceback(tiny_model, pairs_file, tmp_path):
    message = refused(tiny_model, pairs_file, tmp_path, ["v_prj", "attention"])
    assert "'v_prj'" in message and "'attention'" in message and TINY_LLAMA_LINEAR in message


@pytest.mark.parametrize("target, kind", [("input_layernorm", "LlamaRMSNorm"), ("embed_tokens", "Embedding"),
                                          ("mlp", "LlamaMLP"), ("lm_head", "output layer")])
def test_a_target_that_is_not_an_adaptable_linear_layer_is_refused(tiny_model, pairs_file, tmp_path, target, kind):
    message = refused(tiny_model, pairs_file, tmp_path, [target])
    assert f"'{target}'" in message and kind in message and TINY_LLAMA_LINEAR in message


def test_all_linear_goes_alone(tiny_model, pairs_file, tmp_path):
    assert "all-linear" in refused(tiny_model, pairs_file, tmp_path, ["q_proj", "all-linear"])


def test_cli_refuses_a_misspelt_target_before_training_in_one_line(tiny_model, pairs_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--method", "dpo", "--model", str(tiny_model), "--data", str(pairs_file), "--out", str(out),
                 "--max_length", "64", "--max_prompt_length", "32", "--batch_size", "4", "--use_peft",
                 "--lora_target_modules", "q_proj,v_prj"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("alignlab: error: "), err
    assert "'v_prj'" in lines[0] and "did you mean 'v_proj'?" in lines[0]
    trained = {"metrics.jsonl", "model", "train_summary.json", "checkpoints"}
    assert not out.exists() or not trained & {p.name for p in out.iterdir()}
