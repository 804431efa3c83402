"""GGUF files as a model source, without a real GGUF file (the real one is in tests/real): where the
de-quantised copy goes, when it is reused, and what a bad source says."""

import hashlib
import sys

import pytest

from alignlab.cache import model_fingerprint
from alignlab.config import TrainConfig
from alignlab.errors import AlignlabError
from alignlab.models import gguf


@pytest.fixture
def conversions(monkeypatch):
    """Stands in for transformers' de-quantisation: records each call and writes what it would."""
    calls = []

    def convert(source, out, digest):
        calls.append(source)
        out.mkdir(parents=True)
        (out / gguf.SOURCE_FILE).write_text(digest)

    monkeypatch.setattr(gguf, "convert_gguf", convert)
    return calls


def test_a_gguf_file_is_converted_once_under_its_sha256(tmp_path, conversions):
    source = tmp_path / "model.Q4.gguf"
    source.write_bytes(b"weights v1")
    cache = tmp_path / "cache"
    first = gguf.local_model_dir(str(source), cache)
    assert first == str(cache / "gguf" / hashlib.sha256(b"weights v1").hexdigest())
    assert gguf.local_model_dir(str(source), cache) == first and len(conversions) == 1
    source.write_bytes(b"weights v2")  # a new file under the same name is a new model
    assert gguf.local_model_dir(str(source), cache) != first and len(conversions) == 2


def test_other_sources_pass_through_and_a_missing_file_is_named(tmp_path, conversions):
    assert gguf.local_model_dir("org/model") == "org/model"
    assert gguf.local_model_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(AlignlabError, match=r"absent\.gguf: no such GGUF file"):
        gguf.local_model_dir(str(tmp_path / "absent.gguf"), tmp_path / "cache")
    assert not conversions


def test_without_the_gguf_package_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    source = tmp_path / "m.gguf"
    source.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(AlignlabError, match=r"pip install 'alignlab\[gguf\]'"):
        gguf.local_model_dir(str(source), tmp_path / "cache")
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_gguf_file_joins_the_model_directory_and_a_file_is_fingerprinted_by_content(tmp_path):
    config = TrainConfig(model=str(tmp_path), gguf_file="m.gguf", data="d", out="o")
    config.validate()
    assert (config.model, config.gguf_file) == (str(tmp_path / "m.gguf"), None)
    (tmp_path / "m.gguf").write_bytes(b"abc")
    assert model_fingerprint(str(tmp_path / "m.gguf"), tmp_path / "cache") == "file:" + hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_the_model_saved_holds_the_loaded_weights_themselves_not_a_copy(tied):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    loaded = LlamaForCausalLM(config)
    model = gguf.weights_in_a_fresh_model(loaded, config)
    original = dict(loaded.named_parameters(remove_duplicate=False))
    fresh = dict(model.named_parameters(remove_duplicate=False))
    assert fresh.keys() == original.keys()
    for name, parameter in original.items():  # the same storage: the weights are in memory once
        assert fresh[name].data_ptr() == parameter.data_ptr(), name
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    assert not any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])
    ids = torch.tensor([[1, 5, 7, 3]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
