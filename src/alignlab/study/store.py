"""The run store: one SQLite file (`runs.sqlite`) indexing every run of a sweep.

One row per run, keyed by the hash of the run's resolved configuration: its name, method,
hyper-parameters, status (pending → running → finished | failed), how many times it was started,
its metrics and its directory. Only the sweep's coordinating process writes, each change in its own
transaction with `synchronous=FULL`, so a sweep killed at any moment leaves the store either before
or after a change, never in between. The files a row points to are written atomically before the
row says `finished`, so a finished row never points at a half-written file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

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


class RunStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; `with self.db` opens transactions
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, sql: str, args: tuple) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(sql, args)
            self.db.execute("COMMIT")
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

    def runs(self, status: str | None = None) -> list[StoredRun]:
        query = "SELECT run_id, name, method, params, status, attempts, metrics, run_dir, seconds, error FROM runs"
        rows = self.db.execute(query + (" WHERE status=?" if status else "") + " ORDER BY rowid",
                               (status,) if status else ()).fetchall()
        return [StoredRun(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], json.loads(r[6]) if r[6] else None,
                          r[7], r[8], r[9]) for r in rows]

    def get(self, run_id: str) -> StoredRun | None:
        return next((run for run in self.runs() if run.run_id == run_id), None)

    def counts(self) -> dict[str, int]:
        found = dict(self.db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        return {status: found.get(status, 0) for status in STATUSES}
