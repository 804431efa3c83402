"""GGUF checkpoints (llama.cpp's format) as a model source.

`--model FILE.gguf` (or a directory with `--gguf_file NAME`) works wherever a model is read: the
file is de-quantised once by transformers' GGUF loader (the `gguf` package, extra `gguf`) and saved
as an ordinary safetensors model directory, with its tokenizer and generation config, in the
alignlab cache under the file's sha256 (`<cache>/gguf/<sha256>/`). Every later use, and every
cache key built on the model, reads that directory: a changed file is a new model.

transformers refuses to `save_pretrained` a model it loaded from GGUF, so the weights are copied
into a fresh model of the same config, less its quantisation entry, before saving.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alignlab.atomic import atomic_dir
from alignlab.cache import default_cache_dir, file_fingerprint
from alignlab.errors import AlignlabError

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
SOURCE_FILE = "gguf_source.json"  # in the converted directory: which file it came from


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
    """De-quantise `source` into a safetensors model directory at `out`, written whole or not at all."""
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it; checked here to say how to get it)
    except ImportError:
        raise AlignlabError(f"{source}: reading GGUF files needs the `gguf` package: "
                            "pip install 'alignlab[gguf]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("%s: de-quantising once into %s", source, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise AlignlabError(f"{source}: cannot read this GGUF file ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); transformers reads GGUF files of "
                            "the architectures it lists in its GGUF documentation") from None
    config = loaded.config
    # Saved with it, the GGUF quantisation entry would make every later load a "quantised" model,
    # which transformers refuses to save: the weights are plain floats from here on.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_dir(out) as staged:
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        (staged / SOURCE_FILE).write_text(json.dumps({"file": str(source.resolve()), "sha256": digest}) + "\n")
