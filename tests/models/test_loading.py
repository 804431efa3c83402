"""Weights that do not match the model (issue 13, class 4): missing, foreign or mis-shaped tensors
are errors naming them, never a silently random initialisation; a reward model must be a sequence
classifier whose score head was saved with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm, load_sequence_classifier
from alignlab.models.tiny import build_tiny_classifier


def edited_copy(tiny_model: Path, directory: Path, edit) -> Path:
    """A copy of the tiny model whose model.safetensors is `edit(tensors)` rewritten."""
    copy = Path(shutil.copytree(tiny_model, directory))
    tensors = load_file(copy / "model.safetensors")
    edit(tensors)
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


def test_a_missing_tensor_is_named(tiny_model, tmp_path):
    copy = edited_copy(tiny_model, tmp_path / "m", lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(AlignlabError, match=r"missing.*model\.layers\.0\.mlp\.up_proj\.weight"):
        load_causal_lm(str(copy))


def test_a_foreign_tensor_is_named(tiny_model, tmp_path):
    copy = edited_copy(tiny_model, tmp_path / "m", lambda t: t.update({"vision.proj.weight": torch.zeros(3)}))
    with pytest.raises(AlignlabError, match=r"not in the model.*vision\.proj\.weight"):
        load_causal_lm(str(copy))


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tiny_model, tmp_path):
    copy = edited_copy(tiny_model, tmp_path / "m",
                       lambda t: t.update({"model.layers.1.self_attn.q_proj.weight": torch.zeros(3, 3)}))
    with pytest.raises(AlignlabError, match=r"wrong shape.*model\.layers\.1\.self_attn\.q_proj\.weight.*\(3, 3\)"):
        load_causal_lm(str(copy))


def test_many_missing_tensors_are_listed_five_then_counted(tiny_model, tmp_path):
    def drop_layer_one(tensors):
        for name in [n for n in tensors if n.startswith("model.layers.1.")]:
            del tensors[name]

    copy = edited_copy(tiny_model, tmp_path / "m", drop_layer_one)
    n_layer_tensors = 9  # 7 projections and 2 norms per Llama layer
    with pytest.raises(AlignlabError, match=rf"and {n_layer_tensors - 5} more"):
        load_causal_lm(str(copy))


def test_a_causal_lm_is_not_a_reward_model(tiny_model):
    with pytest.raises(AlignlabError, match=r"not a reward model.*`score\.weight`.*alignlab train-rm"):
        load_sequence_classifier(str(tiny_model))


def test_a_causal_lm_gets_a_fresh_score_head_when_one_is_asked_for(tiny_model):
    model = load_sequence_classifier(str(tiny_model), num_labels=1)
    assert model.config.num_labels == 1


def test_a_fresh_score_head_does_not_excuse_a_missing_base_tensor(tiny_model, tmp_path):
    copy = edited_copy(tiny_model, tmp_path / "m", lambda t: t.pop("model.norm.weight"))
    with pytest.raises(AlignlabError, match=r"`model\.norm\.weight`"):
        load_sequence_classifier(str(copy), num_labels=1)


def test_a_saved_classifier_loads(tiny_model, tmp_path):
    path = build_tiny_classifier(tmp_path / "rm", tiny_model)
    assert load_sequence_classifier(str(path)).config.num_labels == 1


def test_tied_embeddings_are_not_missing(tiny_model, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_model)
    config.tie_word_embeddings = True
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    model = load_causal_lm(str(tmp_path / "tied"))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_eval_refuses_a_causal_lm_as_its_gold_reward_model(tiny_model, pairs_file, tmp_path, capsys):
    from alignlab.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_model), "--data", str(pairs_file), "--gold_rm", str(tiny_model),
                 "--out", str(out), "--limit", "2", "--max_new_tokens", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "not a reward model" in err and "`score.weight`" in err, err
    assert not out.exists()


def test_a_hub_revision_reaches_every_from_pretrained(tiny_model, monkeypatch):
    """The revision goes to the tokenizer's and the model's from_pretrained; the files come from the
    tiny model, since nothing is downloaded here."""
    import transformers

    from alignlab.models.loading import load_tokenizer

    revisions = []
    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM,
                 transformers.AutoModelForSequenceClassification):
        original = auto.from_pretrained.__func__

        def from_pretrained(cls, name, *args, original=original, auto=auto, **kwargs):
            revisions.append((auto.__name__, name, kwargs.pop("revision", None)))
            return original(cls, str(tiny_model), *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(from_pretrained))
    load_tokenizer("org/model", revision="v1")
    load_causal_lm("org/model", revision="abc")
    load_sequence_classifier("org/model", num_labels=1, revision="def")
    load_causal_lm("org/model")
    assert revisions == [("AutoTokenizer", "org/model", "v1"), ("AutoModelForCausalLM", "org/model", "abc"),
                         ("AutoModelForSequenceClassification", "org/model", "def"),
                         ("AutoModelForCausalLM", "org/model", None)]
