"""The run store: one SQLite file (`runs.sqlite`) indexing every run of a sweep.

One row per run, keyed by the hash of the run's resolved configuration: its name, method,
hyper-parameters, status (pending → running → finished | failed), how many times it was started,
its metrics and its directory. Only the sweep's coordinating process writes, each change in its own
transaction with `synchronous=FULL`, so a sweep killed at any moment leaves the store either before
or after a change, never in between. The files a row points to are written atomically before the
row says `finished`, so a finished row never points at a half-written file.

Reading (`RunStore(path, readonly=True)`, what `alignlab report` uses) opens the file through a
`mode=ro` URI and runs no statement that writes: it leaves the file byte-identical and creates no
journal, whatever the file holds. A file that is not SQLite, or SQLite without the `runs` table and
its columns, is refused with an AlignlabError naming the file. A row whose values do not fit the
schema below (not UTF-8 text, params/metrics not JSON objects, an unknown status, a run_dir outside the
sweep directory, ...) becomes a DamagedRow saying why, so a reader can skip it and say so. A
journal a killed sweep left is rolled back only by a writer: the reader asks to resume the sweep.
A file that another process keeps locked past LOCK_WAIT_SECONDS is said to be in use, never damaged.
"""

from __future__ import annotations

import collections
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from alignlab.errors import AlignlabError
from alignlab.untrusted import shown

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,  -- hash of the resolved run configuration
    name        TEXT NOT NULL UNIQUE,
    method      TEXT NOT NULL,
    params      TEXT NOT NULL,     -- JSON: hyper-parameters, learning rate, epochs, seed
    status      TEXT NOT NULL,     -- pending | running | finished | failed
    attempts    INTEGER NOT NULL DEFAULT 0,
    metrics     TEXT,              -- JSON, as metrics.summarize returns
    run_dir     TEXT NOT NULL,     -- relative to the sweep directory
    seconds     REAL,              -- training + evaluation wall-clock of the finishing attempt
    error       TEXT,
    updated_at  REAL NOT NULL
)
"""
STATUSES = ("pending", "running", "finished", "failed")
# How long a statement waits for a lock another process holds (a sweep's own writes take
# milliseconds; a tool reading the file may hold it longer) before the store says the file is in use.
LOCK_WAIT_SECONDS = 5.0
COLUMNS = ("run_id", "name", "method", "params", "status", "attempts", "metrics", "run_dir", "seconds", "error")


@dataclass
class StoredRun:
    run_id: str
    name: str
    method: str
    params: dict
    status: str
    attempts: int
    metrics: dict | None
    run_dir: str
    seconds: float | None
    error: str | None


@dataclass
class DamagedRow:
    """A row whose values do not fit the schema; the report skips it and says why."""

    rowid: int
    name: str | None  # when the name itself could be read
    problem: str

    def __str__(self) -> str:
        return f"row {self.rowid}" + (f" ({shown(self.name)})" if self.name is not None else "") + f": {self.problem}"


def parse_json(text: str):
    """JSON as the store and a sweep's files hold it. ValueError if it is not JSON, or if it holds
    text that is not valid Unicode (a lone surrogate escape such as "\\ud800"), which no report file
    could be written with."""
    try:
        value = json.loads(text)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except UnicodeEncodeError:
        raise ValueError("holds text that is not valid Unicode (a lone surrogate)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err})") from None
    return value


def _text(value) -> str:
    if isinstance(value, bytes):  # the connection hands text over undecoded (text_factory=bytes)
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{shown(value)} is not UTF-8 text") from None
    raise ValueError("NULL, not text" if value is None else f"{shown(value)} is not text")


def _or_null(check):
    return lambda value: None if value is None else check(value)


def _object(value) -> dict:
    found = parse_json(_text(value))
    if not isinstance(found, dict):
        raise ValueError(f"not a JSON object: {shown(found)}")
    return found


def _status(value) -> str:
    status = _text(value)
    if status not in STATUSES:
        raise ValueError(f"{shown(status)} is not one of {', '.join(STATUSES)}")
    return status


def _attempts(value) -> int:
    if not isinstance(value, int):
        raise ValueError(f"{shown(value)} is not a whole number")
    return value


def _run_dir(value) -> str:
    """A directory inside the sweep directory, as a relative path without `..`: a damaged or forged
    row cannot make the report read anywhere else."""
    run_dir = _text(value)
    path = PurePosixPath(run_dir)
    if "\0" in run_dir or not path.parts or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{shown(run_dir)} is not a directory inside the sweep directory; refused")
    return run_dir


def _seconds(value) -> float:
    if not isinstance(value, (int, float)):
        raise ValueError(f"{shown(value)} is not a number")
    return float(value)


CHECKS = {"run_id": _text, "name": _text, "method": _text, "params": _object, "status": _status,
          "attempts": _attempts, "metrics": _or_null(_object), "run_dir": _run_dir, "seconds": _or_null(_seconds),
          "error": _or_null(_text)}


def _parse_row(rowid: int, values: tuple) -> StoredRun | DamagedRow:
    fields = {}
    for column, value in zip(COLUMNS, values):
        try:
            fields[column] = CHECKS[column](value)
        except ValueError as err:
            return DamagedRow(rowid, fields.get("name"), f"{column}: {err}")
    return StoredRun(**fields)


def _locked(err: sqlite3.Error) -> bool:
    """Whether `err` says another connection holds the file's lock: the file itself may well be sound."""
    return (err.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class RunStore:
    """The store of a sweep directory. Opened for writing (the sweep), the file and its table are
    created when absent; opened with readonly=True (the report), nothing is ever written."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            try:
                self.db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None,
                                          timeout=LOCK_WAIT_SECONDS)
            except sqlite3.Error as err:
                raise self._damaged(f"cannot be opened ({err})") from None
        else:  # autocommit; _write opens transactions
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=LOCK_WAIT_SECONDS)
            self._execute("PRAGMA synchronous=FULL")
            self._execute(SCHEMA)
        self.db.text_factory = bytes  # decoded per value by _text, so one bad value damages one row only
        try:
            self._check_columns()
        except AlignlabError:
            self.db.close()
            raise

    def _damaged(self, problem: str) -> AlignlabError:
        return AlignlabError(f"{self.path}: {problem}; it is not the run store of an alignlab sweep, or it is "
                             "damaged: give the --out of a sweep, or rerun the sweep in a new --out")

    def _in_use(self, err: sqlite3.Error) -> AlignlabError:
        return AlignlabError(f"{self.path}: in use by another process ({err}, still after {LOCK_WAIT_SECONDS:g} s); "
                             "wait for it to end (a sweep still running in this directory, or a tool holding the "
                             "file open), or stop it, then try again")

    def _execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        """Run a statement; another process's lock, held past LOCK_WAIT_SECONDS, is an AlignlabError."""
        try:
            return self.db.execute(sql, args)
        except sqlite3.OperationalError as err:
            if _locked(err):
                raise self._in_use(err) from None
            raise

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as err:
            if _locked(err):
                raise self._in_use(err) from None
            if err.sqlite_errorcode & 0xFF == sqlite3.SQLITE_READONLY:  # a hot journal, which only a writer rolls back
                raise AlignlabError(f"{self.path}: a sweep was stopped in the middle of changing it (its journal is "
                                    "left beside it); resume the sweep to complete the change, then report") from None
            raise self._damaged(f"cannot be read ({err})") from None  # not SQLite, truncated, malformed

    def _check_columns(self) -> None:
        found = {row[1].decode("utf-8", "replace") for row in self._query("PRAGMA table_info(runs)")}
        if not found:
            raise self._damaged("it has no 'runs' table")
        missing = [column for column in COLUMNS if column not in found]
        if missing:
            raise self._damaged(f"its 'runs' table lacks the column(s) {', '.join(missing)}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, sql: str, args: tuple) -> None:
        self._execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(sql, args)
            self._execute("COMMIT")  # waits for readers to let go
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def register(self, run_id: str, name: str, method: str, params: dict, run_dir: str) -> None:
        """Add a run as pending; a run already known (same configuration hash) is left as it is."""
        self._write("INSERT OR IGNORE INTO runs (run_id, name, method, params, status, run_dir, updated_at) "
                    "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (run_id, name, method, json.dumps(params), run_dir, time.time()))

    def mark_running(self, run_id: str) -> None:
        self._write("UPDATE runs SET status='running', attempts=attempts+1, error=NULL, updated_at=? "
                    "WHERE run_id=?", (time.time(), run_id))

    def mark_finished(self, run_id: str, metrics: dict, seconds: float) -> None:
        self._write("UPDATE runs SET status='finished', metrics=?, seconds=?, error=NULL, updated_at=? "
                    "WHERE run_id=?", (json.dumps(metrics), seconds, time.time(), run_id))

    def mark_failed(self, run_id: str, error: str) -> None:
        self._write("UPDATE runs SET status='failed', error=?, updated_at=? WHERE run_id=?",
                    (error, time.time(), run_id))

    def rows(self) -> list[StoredRun | DamagedRow]:
        """Every row in rowid order: a StoredRun, or a DamagedRow where a value does not fit the schema."""
        return [_parse_row(rowid, values)
                for rowid, *values in self._query(f"SELECT rowid, {', '.join(COLUMNS)} FROM runs ORDER BY rowid")]

    def runs(self, status: str | None = None) -> list[StoredRun]:
        """The runs (with that status) in rowid order; an AlignlabError at the first damaged row."""
        rows = self.rows()
        damaged = next((row for row in rows if isinstance(row, DamagedRow)), None)
        if damaged is not None:
            raise self._damaged(str(damaged))
        return [run for run in rows if status is None or run.status == status]

    def get(self, run_id: str) -> StoredRun | None:
        return next((run for run in self.runs() if run.run_id == run_id), None)

    def counts(self) -> dict[str, int]:
        found = collections.Counter(run.status for run in self.runs())
        return {status: found[status] for status in STATUSES}
