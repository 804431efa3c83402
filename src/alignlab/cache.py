"""A content-keyed tensor cache: per-pair tensors (reference log-probs, rewards, ...) computed once
and cached on disk, used by training, the judge and the world.

The cache key hashes what determines the numbers: the reference model's identity (a local
directory's config and weight bytes; a hub name and revision otherwise), the exact token ids of
the data (so the data, tokenizer and prompt format are all covered) and the numerics (dtype).
A hub model's identity is the commit its revision stands for, so a model updated upstream is
computed afresh (`model_fingerprint`).
A later run with the same key reads the file and never loads the reference model.

Each cache file is a safetensors file whose metadata holds the key and a SHA-256 of the tensor
bytes; a file whose key or checksum does not match is rebuilt with a warning, never used.

Values cached per item (`cached_rows`: the reference log-probs of each pair) live in one SQLite file
per kind, `KIND.sqlite`, a row per item: its content key, its float32 values and a SHA-256 of both.
One file per item would be 100,000 small files for 100,000 pairs; chunked files would have to be
rewritten whole to add an item, and two processes adding items at once would lose one's writes.
SQLite looks up any subset of items by key, adds rows in transactions (a row is written whole or
not at all, a killed writer leaves the file as it was) and serialises concurrent writers (a
sweep's workers) with its own locks. A row whose checksum does not match is recomputed with a
warning, never used; a file SQLite cannot read is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from alignlab.atomic import atomic_open, write_json
from alignlab.errors import AlignlabError

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab"))


def check_cache_dir(cache_dir: str | None) -> None:
    """Refuse, before any work, a cache directory (the `cache_dir` setting, else the default) that a
    file stands in the way of: the first write into it would fail half-way through a run."""
    path = Path(cache_dir) if cache_dir else default_cache_dir()
    if cache_dir:
        named = f"config: cache_dir {path}"
    elif "ALIGNLAB_CACHE" in os.environ:
        named = f"ALIGNLAB_CACHE {path}"
    else:
        named = f"the default cache directory {path}"
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                problem = "is a file, not a directory" if folder == path else f"cannot be made: {folder} is a file"
                raise AlignlabError(f"{named} {problem}; set --cache_dir (or ALIGNLAB_CACHE) to a directory")
            return


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class _Fingerprints:
    """sha256 of files, memoised in `cache_dir/fingerprints.json` by path, size and mtime. An index
    that is not that mapping (damaged, or edited by hand) is rebuilt, keeping its well-formed entries."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / "fingerprints.json"
        try:
            index = json.loads(self.path.read_text())
        except FileNotFoundError:
            index = {}
        except ValueError:  # not JSON, or not UTF-8
            index = None
        entries = index.items() if isinstance(index, dict) else ()
        self.memo = {key: digest for key, digest in entries if isinstance(digest, str) and SHA256_HEX.fullmatch(digest)}
        self.changed = index != self.memo  # so that save() writes the index whole again
        if self.changed:
            log.warning("%s is not a mapping of files to their sha256 (damaged?); rebuilding it", self.path)

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self.memo:
            self.memo[key] = sha256_file(path)
            self.changed = True
        return self.memo[key]

    def save(self) -> None:
        if self.changed:
            write_json(self.path, self.memo)


def file_fingerprint(path: Path, cache_dir: Path) -> str:
    """The sha256 of one file (a GGUF checkpoint: 100 MB to many GB), hashed once per version of it."""
    fingerprints = _Fingerprints(cache_dir)
    digest = fingerprints.sha256(Path(path))
    fingerprints.save()
    return digest


COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_TIMEOUT_S = 10  # asking the hub for a commit; an unreachable hub falls back to the local cache


def hub_commit(name: str, revision: str | None) -> str | None:
    """The commit that `revision` (default main) of hub model `name` stands for: asked of the hub,
    else read from the local Hugging Face cache (the snapshot a download left); None when neither
    can tell."""
    wanted = revision or "main"
    if COMMIT.fullmatch(wanted):
        return wanted
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(name, revision=wanted, timeout=HUB_TIMEOUT_S).sha
    except Exception as err:  # offline, unreachable, private or missing: the local cache may still know
        log.info("cannot ask the hub which commit %s@%s is (%s); looking in the local cache",
                 name, wanted, type(err).__name__)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=wanted)
    except Exception:  # a name the hub's own checks refuse: no snapshot of it can exist
        return None
    # A cached file lies in snapshots/<commit>/; anything else (None, "cached as missing") tells nothing.
    commit = Path(cached).parent.name if isinstance(cached, str) else ""
    return commit if COMMIT.fullmatch(commit) else None


def model_fingerprint(name_or_path: str, cache_dir: Path, revision: str | None = None) -> str:
    """Content hash of a local model directory or file (memoised by file size and mtime; a PEFT
    adapter directory's covers its base model's too), else the hub name with the commit its `revision` stands for (`hub_commit`); when that cannot be found, the
    revision's own name, with a warning: the cache then cannot notice a change upstream."""
    directory = Path(name_or_path)
    if directory.is_file():
        return f"file:{file_fingerprint(directory, cache_dir)}"
    if not directory.is_dir():
        commit = hub_commit(name_or_path, revision)
        if commit is None:
            log.warning("%s: neither the hub nor the local cache says which commit revision %s is, so cached "
                        "results computed with it are reused even if the model changes upstream; pass revision "
                        "as a commit hash to pin it", name_or_path, revision or "main")
            return f"hub:{name_or_path}@{revision or 'main'}"
        return f"hub:{name_or_path}@{commit}"
    fingerprints = _Fingerprints(cache_dir)
    parts = [f"{path.name}:{fingerprints.sha256(path)}" for path in sorted(directory.iterdir())
             if path.suffix in (".safetensors", ".json") and not path.name.startswith(".")]
    fingerprints.save()
    base = adapter_base(directory)
    if base is not None:  # an adapter's numbers depend on its base model's weights as much as its own
        check_adapter_chain(directory)
        parts.append(f"base:{model_fingerprint(base, cache_dir)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def adapter_base(directory: Path) -> str | None:
    """The base model a PEFT adapter directory (adapter_config.json) names, else None."""
    try:
        base = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if isinstance(base, str) and base else None


def check_adapter_chain(directory: Path) -> None:
    """Refuse an adapter whose bases (each adapter may stand on another) lead back to an adapter
    already on the way, e.g. one that names itself: loading or fingerprinting it would never end."""
    chain = [Path(directory).resolve()]
    while (base := adapter_base(chain[-1])) is not None:
        # Relative to the working directory, as loading the base reads it.
        base_path = Path(base).resolve()
        if base_path in chain:
            cycle = chain[chain.index(base_path):] + [base_path]
            raise AlignlabError(f"{chain[-1] / 'adapter_config.json'}: the adapters' base models form a cycle "
                                f"({' -> '.join(map(str, cycle))}); set base_model_name_or_path to the model the "
                                "adapter was trained on")
        chain.append(base_path)


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


ROW_LOCK_WAIT_S = 600  # how long a writer waits for another process's transaction (a sweep's workers)
ROW_LOOKUP = 500  # keys per SELECT: under SQLite's smallest limit on bound parameters (999)


def _row_checksum(key: str, names: tuple[str, ...], value: bytes) -> str:
    return hashlib.sha256("\x1f".join((key, *names)).encode() + b"\x1f" + value).hexdigest()


class _RowStore:
    """The SQLite file of one kind of per-item values (see the module docstring)."""

    def __init__(self, path: Path, names: tuple[str, ...]):
        self.path, self.names = path, names
        path.parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=ROW_LOCK_WAIT_S)
        connection.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, value BLOB, checksum TEXT)")
        return connection

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The valid rows among `keys`, as float32 vectors of len(names)."""
        wanted = list(dict.fromkeys(keys))
        try:
            connection = self._connect()
            try:
                rows = [row for start in range(0, len(wanted), ROW_LOOKUP)
                        for row in connection.execute(
                            "SELECT key, value, checksum FROM rows WHERE key IN "
                            f"({','.join('?' * len(wanted[start:start + ROW_LOOKUP]))})",
                            wanted[start:start + ROW_LOOKUP])]
            finally:
                connection.close()
        except sqlite3.OperationalError:  # locked past the wait, or not readable here: not damage
            raise
        except sqlite3.DatabaseError as err:  # not a database, or a damaged one
            log.warning("cache file %s is unreadable (%s); rebuilding it", self.path, err)
            for stale in (self.path, self.path.with_name(self.path.name + "-journal")):  # its rollback too
                stale.unlink(missing_ok=True)
            return {}
        found, damaged = {}, 0
        for key, value, checksum in rows:
            if (not isinstance(value, bytes) or len(value) != 4 * len(self.names)
                    or checksum != _row_checksum(key, self.names, value)):
                damaged += 1
                continue
            found[key] = torch.frombuffer(bytearray(value), dtype=torch.float32)
        if damaged:
            log.warning("cache file %s: %d rows do not match their checksum; recomputing them", self.path, damaged)
        return found

    def write(self, rows: dict[str, torch.Tensor]) -> None:
        """Add (or replace) rows in one transaction."""
        records = []
        for key, values in rows.items():
            value = values.to(torch.float32).contiguous().numpy().tobytes()
            records.append((key, value, _row_checksum(key, self.names, value)))
        connection = self._connect()
        try:
            with connection:
                connection.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?)", records)
        finally:
            connection.close()


def cached_rows(cache_dir: Path, kind: str, keys: list[str], names: tuple[str, ...],
                compute: Callable[[list[int]], dict[str, torch.Tensor]], chunk: int
                ) -> tuple[dict[str, torch.Tensor], int]:
    """Float32 values `names` of each item of `keys` (an item's content key, as `cache_key` makes it),
    from `cache_dir/KIND.sqlite`; the items it lacks are computed by `compute(positions)` (positions
    in `keys`; a tensor per name, one value per position) `chunk` at a time in the order of `keys`,
    each chunk stored as soon as it is computed, so a pass killed half-way keeps what it finished.

    Returns (a tensor per name, one value per key, in the order of `keys`; how many of the keys the
    cache held).
    """
    store = _RowStore(Path(cache_dir) / f"{kind}.sqlite", names)
    found = store.read(keys)
    missing = [position for position, key in enumerate(keys) if key not in found]
    cached = len(keys) - len(missing)
    for start in range(0, len(missing), chunk):
        positions = missing[start:start + chunk]
        computed = compute(positions)
        rows = {keys[p]: torch.stack([computed[name][j].detach().cpu().float() for name in names])
                for j, p in enumerate(positions)}
        store.write(rows)
        found.update(rows)
    table = torch.stack([found[key] for key in keys]) if keys else torch.empty(0, len(names))
    return {name: table[:, j].contiguous() for j, name in enumerate(names)}, cached
