"""Output directories: alignlab deletes only what it created, and one process writes each.

- **Ownership.** A directory alignlab creates for its results (a training run, an evaluation, a
  sweep) holds a marker file, `.alignlab`. Only a marked directory is ever replaced (`--overwrite`)
  or added to; an existing non-empty directory without the marker is refused, whatever the flags.
- **Places never written.** The current directory and every directory above it (`.`, `..`, `/`),
  the home directory, and any directory that is, or holds, an input of the command (its model,
  data, config file, ...) are refused as outputs.
- **Files that outlive their writer** (a report's figures) are listed in a hidden manifest in their
  directory (`WrittenFiles`); a later run deletes only the stale files listed there.
- **One writer.** A command holds an OS lock (`flock`) on `.NAME.lock` beside its output `NAME`
  from its checks to its last write; a second command given the same output is refused. The OS
  releases the lock when its holder dies, even by SIGKILL; the holder removes the file when it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from alignlab import atomic, safe_delete
from alignlab.errors import AlignlabError

MARKER = ".alignlab"


def mark(directory: Path, kind: str) -> None:
    """Mark `directory` as alignlab's own `kind` of output (run, eval, sweep)."""
    atomic.write_json(directory / MARKER, {"created_by": "alignlab", "kind": kind})


def marked_kind(directory: Path) -> str | None:
    """The kind a marked directory holds; None when `directory` carries no valid marker."""
    marker = directory / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("created_by") != "alignlab":
        return None
    return str(content.get("kind"))


def _is_within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def refuse_unsafe_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                         option: str = "--out") -> None:
    """Refuse outputs that could only be written by deleting or mixing with what is not alignlab's."""
    target = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, target):
        where = "the current directory" if target == cwd else "a directory above the current one"
        raise AlignlabError(f"{out}: is {where}; alignlab never writes its results there. "
                            f"Give {option} a new directory, e.g. {option} runs/NAME")
    if target == Path.home().resolve():
        raise AlignlabError(f"{out}: is your home directory; give {option} a new directory inside it")
    for given in inputs:
        if not given:
            continue
        source = Path(given).expanduser()
        if not source.exists():  # a hub name, or an input another check reports
            continue
        if _is_within(source.resolve(), target):
            which = "is" if source.resolve() == target else "holds"
            raise AlignlabError(f"{out}: {which} an input of this command ({given}); alignlab never writes "
                                f"its results over its inputs. Choose another {option}")


def check_output_file(out: str | os.PathLike, *, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = (),
                      option: str = "--out") -> None:
    """A result file (written atomically): never an input, and an existing file only with `overwrite`."""
    refuse_unsafe_output(out, inputs, option)
    atomic.check_output_file(out, option)
    if Path(out).expanduser().exists() and not overwrite:
        raise AlignlabError(f"{out}: exists; choose another {option} or pass --overwrite to replace it")


def check_replaceable(out: Path, overwrite: bool, option: str = "--out",
                      writes: Iterable[str] | None = None) -> None:
    """May the command write `out`? A missing or empty directory: yes. A marked one: when
    `overwrite`, or when none of the entries it `writes` exist there yet (None: it replaces the
    whole directory). Anything else is refused; `--overwrite` never replaces an unmarked directory."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise AlignlabError(f"{out}: exists and is not a directory; choose another {option}")
    if not any(out.iterdir()):
        return
    kind = marked_kind(out)
    if kind is None:
        raise AlignlabError(f"{out}: exists, is not empty, and was not created by alignlab (no {MARKER} "
                            f"marker); alignlab replaces only its own results. Choose another {option} "
                            "(a new or empty directory)")
    if overwrite:
        return
    clashes = sorted(out.iterdir()) if writes is None else [out / name for name in writes if (out / name).exists()]
    if clashes:
        raise AlignlabError(f"{out}: holds an alignlab {kind} already; choose another {option} or pass "
                            "--overwrite to replace it")


def is_main_process() -> bool:
    """Under torchrun/accelerate every rank runs the command; only rank 0 writes and locks."""
    return int(os.environ.get("RANK", "0")) == 0


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, option: str = "--out") -> Iterator[None]:
    """Hold the lock on `out` (the file `.NAME.lock` beside it) for the body; refuse when another
    process holds it. Parent directories made for the lock are removed again if left empty."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    out = Path(out).expanduser().absolute()
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    path = lock_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = _locked(path, fcntl)
    except OSError as err:
        _remove_empty(made)
        raise atomic.write_error(out, err) from None
    if handle is None:
        _remove_empty(made)
        raise AlignlabError(f"{out}: another alignlab process is writing there (it holds {path}); wait for "
                            f"it to end, or choose another {option}")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before closing: a process that opened it meanwhile sees it gone and retries
        os.close(handle)
        _remove_empty(made)


def _locked(path: Path, fcntl) -> int | None:
    """An fd holding an exclusive lock on `path`, or None when another process holds it."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, atomic.FILE_MODE)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle).st_ino:
            return handle
        os.close(handle)  # its holder ended and removed it between our open and our lock: take the new one


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:  # deepest first
        with contextlib.suppress(OSError):
            directory.rmdir()


@contextlib.contextmanager
def claim_output_dir(out: str | os.PathLike, *, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = (),
                     option: str = "--out", writes: Iterable[str] | None = None) -> Iterator[Path]:
    """Everything above, before any work: `out` is a safe place, writable, and may be written
    (`check_replaceable`); the lock is then held until the body ends."""
    out = Path(out).expanduser()
    refuse_unsafe_output(out, inputs, option)
    atomic.check_output_dir(out, option)
    if not is_main_process():
        check_replaceable(out, overwrite, option, writes)
        yield out
        return
    with output_lock(out, option):
        check_replaceable(out, overwrite, option, writes)  # under the lock: no other writer changes it now
        yield out


class WrittenFiles:
    """The files alignlab wrote into `directory`, listed in the hidden file `MANIFEST` there, so a
    later run can delete those it no longer writes without touching anything else in the folder."""

    MANIFEST = ".alignlab-written.json"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def listed(self) -> set[str]:
        """The names the manifest lists; a missing or damaged manifest lists nothing."""
        manifest = self.directory / self.MANIFEST
        if manifest.is_symlink() or not manifest.is_file():
            return set()
        try:
            names = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if not isinstance(names, list):
            return set()
        # Only plain names: a manifest is itself a file a person could edit.
        return {n for n in names if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n
                and os.sep not in n and n != self.MANIFEST}

    def replace_with(self, names: Iterable[str], root: str | os.PathLike) -> None:
        """Record `names` as what the directory now holds of alignlab's, deleting the files the
        previous manifest listed that are not among them (regular files and links only)."""
        names = sorted(set(names))
        for stale in sorted(self.listed() - set(names)):
            path = self.directory / stale
            if path.is_symlink() or path.is_file():
                safe_delete.remove(path, root)
        atomic.write_json(self.directory / self.MANIFEST, names)
