"""A content-keyed tensor cache: per-pair tensors (reference log-probs, rewards, ...) computed once
and cached on disk, used by training, the judge and the world.

The cache key hashes what determines the numbers: the reference model's identity (a local
directory's config and weight bytes; a hub name and revision otherwise), the exact token ids of
the data (so the data, tokenizer and prompt format are all covered) and the numerics (dtype).
A later run with the same key reads the file and never loads the reference model.

Each cache file is a safetensors file whose metadata holds the key and a SHA-256 of the tensor
bytes; a file whose key or checksum does not match is rebuilt with a warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from alignlab.atomic import atomic_open, write_json

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(name_or_path: str, cache_dir: Path) -> str:
    """Content hash of a local model directory (memoised by file size and mtime), else the name. A
    PEFT adapter directory's hash covers its base model's too: two adapters on different bases differ."""
    directory = Path(name_or_path)
    if not directory.is_dir():
        return f"hub:{name_or_path}"
    memo_path = cache_dir / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (FileNotFoundError, ValueError):
        memo = {}
    parts = []
    changed = False
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".safetensors", ".json") or path.name.startswith("."):
            continue
        stat = path.stat()
        memo_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if memo_key not in memo:
            memo[memo_key] = sha256_file(path)
            changed = True
        parts.append(f"{path.name}:{memo[memo_key]}")
    if changed:
        write_json(memo_path, memo)
    base = adapter_base(directory)
    if base is not None:  # an adapter's numbers depend on its base model's weights as much as its own
        parts.append(f"base:{model_fingerprint(base, cache_dir)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def adapter_base(directory: Path) -> str | None:
    """The base model a PEFT adapter directory (adapter_config.json) names, else None."""
    try:
        base = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if isinstance(base, str) and base else None


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_valid(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        log.warning("cache file %s is unreadable (%s); rebuilding it", path, err)
        return None
    if metadata.get("key") != key or metadata.get("checksum") != _checksum(tensors):
        log.warning("cache file %s does not match its key or checksum; rebuilding it", path)
        return None
    return tensors


def cached_tensors(cache_dir: Path, kind: str, key: str,
                   compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], bool]:
    """Tensors stored under (kind, key), computed and written atomically on a miss.

    Returns (tensors, hit) where `hit` says whether the cache answered without `compute`.
    """
    path = Path(cache_dir) / f"{kind}-{key}.safetensors"
    tensors = _load_valid(path, key)
    if tensors is not None:
        return tensors, True
    tensors = {name: t.detach().cpu().contiguous() for name, t in compute().items()}
    blob = save(tensors, metadata={"key": key, "checksum": _checksum(tensors)})
    with atomic_open(path, "wb") as handle:
        handle.write(blob)
    return tensors, False
