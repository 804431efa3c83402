"""User-facing errors: each names where the problem is and what to do about it."""

from __future__ import annotations

import difflib

from alignlab.untrusted import shown


class AlignlabError(Exception):
    """An error caused by the user's input or environment; the CLI prints it without a traceback."""


class InputError(AlignlabError):
    """Bad input at a known place: `file:line: field 'x': problem. fix`."""

    def __init__(self, problem: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None):
        self.problem, self.file, self.line, self.field, self.fix = problem, file, line, field, fix
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        what = f"field '{field}': " if field is not None else ""
        message = f"{where}{what}{problem}"
        if fix:
            message += f". {fix}"
        super().__init__(message)


def unknown_name_message(what: str, name: str, valid: list[str]) -> str:
    """`what 'name'`, the closest valid name when one is close, and every valid name."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(valid) if valid else "(none)"
    return f"{what} {shown(name)}{hint} Valid: {listing}"
