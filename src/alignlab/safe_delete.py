"""Deleting only what alignlab wrote, and never through a link.

Every clean-up in alignlab goes through `remove`: stale report figures, a failed sweep's files, a
restarted run's partial directory, a replaced checkpoint or model directory, the temp files of
atomic writes. Two rules hold for each of them:

- **Never through a link.** The path deleted lies inside the directory it is cleaned from (`root`),
  reached without a symbolic link on the way. A link is removed as a link, its target untouched; a
  directory is removed with its content without following the links inside it (shutil.rmtree
  unlinks them). A link on the way, or a path that leaves `root`, is an error, and nothing is deleted.
- **Only what a manifest lists.** Files that outlive the process that wrote them (a report's
  figures) are listed in a hidden manifest file in their directory: a later run
  deletes the stale ones it finds there, and nothing a person put beside them. Whole directories
  are deleted only when alignlab's marker (`output_dirs.MARKER`) or the caller's own bookkeeping
  says alignlab created them. The manifest is `alignlab.output_dirs.WrittenFiles`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from alignlab.errors import AlignlabError


def _components(path: Path, root: Path) -> list[Path]:
    """The paths from `root`'s first child down to `path`, refusing a path that leaves `root`."""
    relative = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root)))
    if relative.parts and relative.parts[0] == os.pardir or relative.is_absolute():
        raise AlignlabError(f"{path}: lies outside {root}; alignlab cleans up only inside its own output")
    steps, current = [], Path(root)
    for part in relative.parts:
        current = current / part
        steps.append(current)
    return steps


def check_no_link(path: str | os.PathLike, root: str | os.PathLike, what: str = "a directory alignlab writes") -> None:
    """Refuse `path` when it, or a directory between `root` and it, is a symbolic link: writing or
    deleting there would reach outside `root`. `root` itself may be a link (the user's own choice)."""
    for step in _components(Path(path), Path(root)):
        if step.is_symlink():
            raise AlignlabError(f"{step}: is a symbolic link to {os.readlink(step)}; {what} must be a real "
                                f"directory inside {root}, so that nothing outside it is written or deleted. "
                                "Remove the link (its target is left alone) and run again")


def remove(path: str | os.PathLike, root: str | os.PathLike, missing_ok: bool = True) -> None:
    """Delete `path` (a file, a link, or a directory with its content) found inside `root`."""
    path = Path(path)
    check_no_link(path.parent, root, what="the directory being cleaned up")
    if path.is_symlink() or not path.is_dir():
        try:
            os.unlink(path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        return
    shutil.rmtree(path)
