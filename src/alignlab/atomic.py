"""Atomic writes: results appear whole or not at all (temp file in the same directory, then rename).

A write that fails (disk full, no permission, a file where a directory should be) leaves neither the
file nor its temp file behind and raises one `AlignlabError` naming the file and what to do.
`check_output_dir` / `check_output_file` find out, before any work, whether an output can be written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator

from alignlab.errors import AlignlabError
from alignlab.safe_delete import remove

# OSErrors that say the disk or the directory cannot take the write, whatever the caller was doing.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


class WriteError(AlignlabError):
    """A write refused by the disk or the location; `errno` says why, `path` what was being written."""

    def __init__(self, message: str, path: str | os.PathLike, errno_code: int | None, reason: str):
        super().__init__(message)
        self.path, self.errno, self.reason = path, errno_code, reason


def disk_error(err: BaseException) -> OSError | None:
    """`err` as the OSError it stands for when it says the disk cannot take a write, else None.
    Libraries wrap the OS error in their own: safetensors' writer reports ENOSPC as
    `SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)`."""
    if isinstance(err, WriteError):
        return OSError(err.errno, err.reason) if err.errno in DISK_ERRNOS else None
    if isinstance(err, OSError):
        return err if err.errno in DISK_ERRNOS else None
    wrapped = re.search(r"\(os error (\d+)\)", str(err))
    if wrapped and int(wrapped.group(1)) in DISK_ERRNOS:
        code = int(wrapped.group(1))
        return OSError(code, os.strerror(code))
    return None


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """One clear message for a failed write of `path`."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or choose an output on another disk) and run again"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a writable output location or fix the permissions"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a file stands where a directory is needed; choose another output location"
    else:
        fix = "check the output location and run again"
    return WriteError(f"{path}: cannot write ({reason}); nothing was written there; {fix}", path, err.errno, reason)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any threads write
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()
DIR_MODE = 0o777 & ~_read_umask()


def apply_umask(directory: Path) -> None:
    """Give `directory` and everything in it the modes the user's umask asks for. mkdtemp makes
    0700 and safetensors writes 0600 whatever the umask says, which would hide a model from the
    colleagues (or the serving process) meant to read it."""
    os.chmod(directory, DIR_MODE)
    for root, dirs, files in os.walk(directory):
        for names, mode in ((dirs, DIR_MODE), (files, FILE_MODE)):
            for name in names:
                if not os.path.islink(os.path.join(root, name)):  # a link's target is not ours to change
                    os.chmod(os.path.join(root, name), mode)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path`; on clean exit fsync it and rename it over `path`. On any
    failure the temp file is removed; an OSError becomes an AlignlabError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from None
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; results are for others to read too
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, tag: str = "") -> Iterator[Path]:
    """Yield a temp directory beside `path`; on clean exit it replaces `path` whole. A `tag` goes into
    the temp directory's name (`.NAME.TAG.xxxxxxxx.tmp`): whoever finds it left behind by a killed
    process can tell whose it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.name}.{tag}." if tag else f".{path.name}."
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield tmp
        apply_umask(tmp)
        if path.exists() or path.is_symlink():
            remove(path, path.parent)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            remove(tmp, tmp.parent)
        disk = disk_error(err)
        if disk is not None and not isinstance(err, WriteError):
            raise write_error(getattr(err, "filename", None) or path, disk) from None
        raise


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_dir(directory: str | os.PathLike, option: str = "--out", *, output=None) -> None:
    """Fail before any work when files cannot be created in `directory` (existing, or to be created
    under its nearest existing ancestor): that ancestor must be a directory we can write to, checked
    by permission bits and by creating (and removing) a probe file — root passes permission checks,
    but not a read-only filesystem or a regular file in the path. Messages name `output` (default:
    `directory`)."""
    directory = Path(directory).expanduser()
    shown = directory if output is None else output
    base = _nearest_existing(directory.absolute())
    if not base.is_dir():
        raise AlignlabError(f"{shown}: cannot create it, {base} is a file, not a directory; "
                            f"choose another {option}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise AlignlabError(f"{shown}: cannot write there, {base} is not writable; choose a writable "
                            f"{option} or fix the permissions")
    try:
        fd, probe = tempfile.mkstemp(prefix=".alignlab-write-test.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise AlignlabError(f"{shown}: cannot write in {base} ({err.strerror or err}); choose a writable "
                            f"{option} or fix the permissions") from None
    if shutil.disk_usage(base).free < 1 << 20:
        raise AlignlabError(f"{shown}: the disk holding {base} is full; free space or choose {option} on "
                            "another disk")


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """`check_output_dir` for the directory that will hold the file `path` (written atomically)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise AlignlabError(f"{path}: is a directory; {option} must name a file")
    check_output_dir(path.parent, option, output=path)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_dir`, but an existing `path` is kept and what was written is moved into it at
    the end (entries of the same name replaced): a failure leaves `path` as it was."""
    path = Path(path)
    if not path.exists():
        with atomic_dir(path) as tmp:
            yield tmp
        return
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield tmp
        for entry in sorted(tmp.iterdir()):
            target = path / entry.name
            if target.is_dir() and not target.is_symlink():
                remove(target, path)
            os.replace(entry, target)
    finally:
        with contextlib.suppress(OSError):
            remove(tmp, tmp.parent)
