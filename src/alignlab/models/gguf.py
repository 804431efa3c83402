"""GGUF checkpoints (llama.cpp's format) as a model source.

`--model FILE.gguf` (or a directory with `--gguf_file NAME`) works wherever a model is read: the
file is de-quantised once by transformers' GGUF loader (the `gguf` package, extra `gguf`) and saved
as an ordinary safetensors model directory, with its tokenizer and generation config, in the
alignlab cache under the file's sha256 (`<cache>/gguf/<sha256>/`). Every later use, and every
cache key built on the model, reads that directory: a changed file is a new model.

A GGUF file is untrusted input, and transformers' loader trusts it: it initialises a weight the file
lacks at random, drops a tensor it has no place for, and builds as many layers as the metadata
claims. So before transformers reads the file, `check_gguf` requires a well-formed header
(`gguf_header`), tensors for exactly the layers the metadata counts, and every tensor of the file
filling, number for number, one weight of the model its metadata describes; after the load,
transformers' own report must show no weight missing, no tensor unplaced and no shape mismatched.
Only then is anything written to the cache.

transformers refuses to `save_pretrained` a model it loaded from GGUF, so the weights go into a fresh
model of the same config, less its quantisation entry, before saving: the same tensors, not copies.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import socket
from collections import defaultdict
from pathlib import Path

from alignlab.atomic import atomic_dir
from alignlab.cache import default_cache_dir, file_fingerprint
from alignlab.errors import AlignlabError
from alignlab.safe_delete import remove
from alignlab.untrusted import clip, shown

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
SOURCE_FILE = "gguf_source.json"  # in the converted directory: which file it came from

LAYER = re.compile(r"blk\.([0-9]+)\.")  # llama.cpp's name for the tensors of layer N: blk.N.*
# The temp directory `atomic_dir(out, tag=conversion_owner())` makes beside `<cache>/gguf/<sha256>`.
CONVERSION_TEMP = re.compile(r"\.[0-9a-f]{64}\.pid(?P<pid>[0-9]+)@(?P<host>.+)\.[a-z0-9_]{8}\.tmp")
MAX_PID = 1 << 22  # Linux's limit; a larger "pid" in a name is not one this machine gave out


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(GGUF_SUFFIX)


def local_model_dir(path: str, cache_dir: Path | None = None) -> str:
    """`path` itself, or for a GGUF file the directory of its de-quantised safetensors copy."""
    if not is_gguf(path):
        return path
    source = Path(path)
    if not source.is_file():
        raise AlignlabError(f"{source}: no such GGUF file; pass an existing .gguf file (or a directory "
                            "with --gguf_file NAME)")
    cache_dir = cache_dir or default_cache_dir()
    digest = file_fingerprint(source, cache_dir)
    converted = cache_dir / "gguf" / digest
    if not (converted / SOURCE_FILE).exists():
        convert_gguf(source, converted, digest)
    return str(converted)


def convert_gguf(source: Path, out: Path, digest: str) -> None:
    """De-quantise `source` into a safetensors model directory at `out`, written whole or not at all,
    and only from a file that passed `check_gguf` and loaded without a gap."""
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it; checked here to say how to get it)
    except ImportError:
        raise AlignlabError(f"{source}: reading GGUF files needs the `gguf` package: "
                            "pip install 'alignlab[gguf]'") from None
    remove_killed_conversions(out.parent)
    check_gguf(source)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("%s: de-quantising once into %s", source, out)
    try:
        with one_name_map_per_architecture():
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
            # Mismatched weights are reported rather than raised, so that `check_loading` can name them.
            loaded, loading = AutoModelForCausalLM.from_pretrained(
                source.parent, gguf_file=source.name, output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as err:  # whatever transformers raises on a file that passed the checks is about the file
        raise unreadable(source, err) from None
    check_loading(source, loading)
    config = loaded.config
    # Saved with it, the GGUF quantisation entry would make every later load a "quantised" model,
    # which transformers refuses to save: the weights are plain floats from here on.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = weights_in_a_fresh_model(loaded, config)
    model.generation_config = loaded.generation_config
    with atomic_dir(out, tag=conversion_owner()) as staged:
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        (staged / SOURCE_FILE).write_text(json.dumps({"file": str(source.resolve()), "sha256": digest}) + "\n")


def weights_in_a_fresh_model(loaded, config):
    """A model of `config` holding `loaded`'s weight tensors themselves: built on the meta device and
    given the tensors (`assign`), so the weights are never in memory twice, nor a random
    initialisation computed only to be overwritten."""
    import torch

    with torch.device("meta"):
        model = type(loaded)(config)
    weights = loaded.state_dict()
    model.load_state_dict(weights, assign=True)
    for name, buffer in loaded.named_buffers():
        if name not in weights:  # non-persistent (rotary frequencies): still on the meta device
            module, _, attribute = name.rpartition(".")
            model.get_submodule(module).register_buffer(attribute, buffer, persistent=False)
    model.tie_weights()
    return model


def unreadable(source: Path, err: Exception) -> AlignlabError:
    return AlignlabError(f"{source}: cannot read this GGUF file ({type(err).__name__}: {clip(str(err))}); its "
                         "metadata is damaged, or its architecture is not among those transformers' GGUF "
                         "documentation lists: download or convert the file again, or use a safetensors model")


def mismatch(source: Path, problem: str) -> AlignlabError:
    return AlignlabError(f"{source}: its tensors do not match its metadata ({problem}); transformers would fill "
                         "the gap with random weights or drop tensors unread: download or convert the file again")


# ------------------------------------------------------------------ before transformers reads the file

def check_gguf(source: Path) -> None:
    """Refuse a GGUF file whose tensors do not fit its own metadata, before anything reads its
    weights: a bounded read of the header, then the layers, then each tensor against the model the
    metadata describes (built on the meta device, so it costs no memory)."""
    from alignlab.models.gguf_header import read_header

    header = read_header(source)
    architecture = metadata_value(source, header.metadata, "general.architecture", str)
    block_count_key = f"{architecture}.block_count"
    check_layers(source, header.tensors, block_count_key,
                 metadata_value(source, header.metadata, block_count_key, int))
    model = model_of_metadata(source)
    if read_by_the_newer_loader(architecture):
        check_parameter_count(source, header.tensors, model)
    else:
        check_tensors_fill_the_model(source, header.tensors, model, architecture)


def metadata_value(source: Path, metadata: dict, key: str, kind: type):
    from alignlab.models.gguf_header import invalid

    if key not in metadata:
        raise invalid(source, f"its metadata has no {shown(key)}")
    value = metadata[key]
    if type(value) is not kind or (kind is int and value < 0):
        raise invalid(source, f"metadata {shown(key)} is {shown(value)}, not a {'count' if kind is int else 'string'}")
    return value


def check_layers(source: Path, tensors: list, block_count_key: str, block_count: int) -> None:
    """The layers the tensors are for must be exactly layers 0 to block_count - 1. transformers drops
    the tensors of a layer beyond them and leaves a layer without tensors at random; and a layer count
    that no tensors back is work, growing with its square, before anything fails. After this check the
    layer count is at most the number of tensors, which the header check bounds by the file's size."""
    first_tensor_of = {}
    for tensor in tensors:
        if found := LAYER.match(tensor.name):
            first_tensor_of.setdefault(int(found[1]), tensor.name)
    beyond = [layer for layer in first_tensor_of if layer >= block_count]
    if beyond:
        layer = min(beyond)
        raise mismatch(source, f"tensor {shown(first_tensor_of[layer])} is for layer {layer}, but "
                               f"{block_count_key} is {block_count}")
    if len(first_tensor_of) < block_count:
        layer = min(set(range(len(first_tensor_of) + 1)) - first_tensor_of.keys())
        raise mismatch(source, f"{block_count_key} is {block_count}, but no tensor is for layer {layer} "
                               f"(blk.{layer}.*)")


def model_of_metadata(source: Path):
    """The model transformers builds from the file's metadata, on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as err:  # whatever the metadata's values make transformers raise, it is about the file
        raise unreadable(source, err) from None


def check_tensors_fill_the_model(source: Path, tensors: list, model, architecture: str) -> None:
    """Every tensor must have a place in the model, by transformers' own mapping of GGUF names, and
    every weight of the model must receive exactly as many numbers as it holds (the exact shape is
    the loader's to check, after any transform of the architecture's tensor processor)."""
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map)

    try:
        with one_name_map_per_architecture():
            places = get_gguf_hf_weights_map(model, TENSOR_PROCESSORS.get(architecture, TensorProcessor)())
    except Exception as err:  # an architecture the installed gguf package cannot name, say
        raise unreadable(source, err) from None
    weights = model.state_dict()  # under every name transformers maps to, tied weights included
    sources = defaultdict(list)
    for tensor in tensors:
        if places.get(tensor.name) not in weights:
            raise mismatch(source, f"tensor {shown(tensor.name)} has no place in the {type(model).__name__} "
                                   "its metadata describes")
        sources[places[tensor.name]].append(tensor)
    for name, weight in weights.items():
        received = sum(tensor.elements for tensor in sources[name])
        if sources[name] and received != weight.numel():
            shapes = ", ".join(f"{tensor.name} {list(reversed(tensor.dims))}" for tensor in sources[name])
            raise mismatch(source, f"{shown(shapes)} fills {name}, which the metadata makes "
                                   f"{list(weight.shape)}: {received} numbers for {weight.numel()}")
    gguf_name = {weight: tensor for tensor, weight in places.items()}
    for name, _ in model.named_parameters():  # a tied weight once, under the name it is filled by
        if name not in gguf_name:
            raise mismatch(source, f"transformers maps no GGUF tensor to {name}, which would stay random")
        if not sources[name]:
            raise mismatch(source, f"the file has no tensor {gguf_name[name]} for {name}")


def read_by_the_newer_loader(architecture: str) -> bool:
    """Whether transformers reads this architecture with its newer GGUF loader (5.x; a few
    architectures), which keeps the file's own tensor names, rather than the older one that maps them."""
    try:
        from transformers.integrations.gguf import is_gguf_arch_supported
    except ImportError:  # transformers 4.x has the older loader only
        return False
    return is_gguf_arch_supported(architecture)


def check_parameter_count(source: Path, tensors: list, model) -> None:
    """For transformers' newer GGUF loader, which reports every tensor it cannot place and every
    weight it leaves unfilled (`check_loading` refuses both): that the metadata does not claim a
    model larger than the file's tensors, which the loader would allocate first."""
    wanted = sum(parameter.numel() for parameter in model.parameters())
    stored = sum(tensor.elements for tensor in tensors)
    if wanted > stored:
        raise mismatch(source, f"the metadata describes a model of {wanted} weights, the tensors hold {stored}")


@contextlib.contextmanager
def one_name_map_per_architecture():
    """transformers' `get_gguf_hf_weights_map` builds gguf's tensor name map (an entry for every name
    of every layer) anew for each submodule of the model it maps: time growing with the square of
    the layer count (30 layers: 6 s, 100: 90 s). The map is only read, so one per architecture and
    layer count serves them all."""
    import gguf

    build = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(build)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = build


# ------------------------------------------------------------------ after transformers has read it

def check_loading(source: Path, loading: dict) -> None:
    """transformers' own report of the load (`output_loading_info`) must be clean."""
    if loading["missing_keys"]:
        raise mismatch(source, f"no tensor fills {min(loading['missing_keys'])}")
    if loading["unexpected_keys"]:
        raise mismatch(source, f"{min(loading['unexpected_keys'])} has no place in the model")
    if loading["mismatched_keys"]:
        name, stored, wanted = min(loading["mismatched_keys"])
        raise mismatch(source, f"the tensor for {name} is {list(stored)}, the metadata makes it {list(wanted)}")


# ------------------------------------------------------------------ what killed conversions leave

def conversion_owner() -> str:
    """Who converts, as it goes into the name of the temp directory: this process on this machine."""
    return f"pid{os.getpid()}@{socket.gethostname()}"


def remove_killed_conversions(directory: Path) -> None:
    """Remove the temp directories (each the size of a model) of conversions killed midway (SIGKILL,
    out of memory), which `atomic_dir` had no chance to clean: only entries named as ours, owned by a
    process of this machine that no longer runs, and never through a symlink. A cache shared with
    other machines keeps theirs, whose processes cannot be asked from here."""
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no conversion yet, or unreadable: nothing of ours to remove
        return
    host = socket.gethostname()
    for entry in entries:
        owner = CONVERSION_TEMP.fullmatch(entry.name)
        if owner is None or owner["host"] != host or not entry.is_dir(follow_symlinks=False):
            continue
        if not process_runs(int(owner["pid"])):
            log.info("%s: removing what a killed conversion left", entry.path)
            with contextlib.suppress(OSError, AlignlabError):  # gone already, or not ours to remove: no matter
                remove(entry.path, directory)


def process_runs(pid: int) -> bool:
    """Whether process `pid` of this machine runs. A number no process can have is taken for a
    running one: nothing is removed on its word."""
    if not 0 < pid <= MAX_PID:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
