"""The run store of a sweep."""

import json
import sqlite3
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import alignlab.study.store as store_module
from alignlab.cli import main
from alignlab.errors import AlignlabError
from alignlab.evaluation.metrics import summarize
from alignlab.study.store import RunStore


def test_store_registers_a_run_once_and_tracks_its_attempts(tmp_path):
    with RunStore(tmp_path / "runs.sqlite") as store:
        store.register("a1", "dpo-beta0.1", "dpo", {"beta": 0.1}, "runs/dpo-beta0.1")
        store.register("a1", "dpo-beta0.1", "dpo", {"beta": 0.1}, "runs/dpo-beta0.1")
        store.register("b2", "dpo-beta0.5", "dpo", {"beta": 0.5}, "runs/dpo-beta0.5")
        store.mark_running("a1")
        store.mark_failed("a1", "ValueError: x")
        store.mark_running("a1")
        store.mark_finished("a1", {"mean_score": {"value": 1.0}}, 2.5)
    with RunStore(tmp_path / "runs.sqlite") as store:  # reopened: everything was committed
        assert store.counts() == {"pending": 1, "running": 0, "finished": 1, "failed": 0}
        run = store.get("a1")
        assert (run.status, run.attempts, run.metrics, run.error) == ("finished", 2, {"mean_score": {"value": 1.0}}, None)


# ------------------------------------------------------------------ a store another process holds

# Holds an exclusive lock on the file it is given until its stdin closes.
HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held_store(tmp_path, monkeypatch):
    """A sound store that another process holds locked, with the store's wait for a lock shortened
    so that the test does not sit through it."""
    monkeypatch.setattr(store_module, "LOCK_WAIT_SECONDS", 0.2, raising=False)
    RunStore(tmp_path / "runs.sqlite").close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "runs.sqlite")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    yield tmp_path / "runs.sqlite"
    holder.stdin.close()
    holder.wait(timeout=10)


@pytest.mark.parametrize("readonly", [True, False], ids=["report", "sweep"])
def test_a_store_locked_by_another_process_is_in_use_not_damaged(held_store, readonly):
    with pytest.raises(AlignlabError) as caught:
        RunStore(held_store, readonly=readonly)
    message = str(caught.value)
    assert message.startswith(f"{held_store}: in use by another process") and "wait for it to end" in message
    assert "damaged" not in message and "new --out" not in message


def test_report_on_a_locked_sweep_says_in_use(held_store, capsys):
    sweep = held_store.parent
    (sweep / "sweep.yaml").write_text("grid_preset: small\n")
    (sweep / "study.json").write_text("{}")
    write_sft_evaluation(sweep / "runs" / "sft")
    assert main(["report", str(sweep)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"alignlab: error: {held_store}: in use by another process") and "damaged" not in line


def test_a_lock_held_briefly_is_waited_for(tmp_path):
    RunStore(tmp_path / "runs.sqlite").close()
    other = sqlite3.connect(tmp_path / "runs.sqlite", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.5, lambda: other.execute("ROLLBACK")).start()
    with RunStore(tmp_path / "runs.sqlite", readonly=True) as store:
        assert store.rows() == []
    other.close()


def write_sft_evaluation(directory):
    """What the report reads before the run store: the SFT model's samples and metrics."""
    columns = {"gold_score": [0.0, 0.5, 1.0, 1.5], "length": [10.0, 12.0, 14.0, 16.0]}
    directory.mkdir(parents=True)
    pq.write_table(pa.table({"prompt_id": ["p0", "p1", "p2", "p3"], **columns}), directory / "samples.parquet")
    (directory / "metrics.json").write_text(json.dumps(summarize({**columns, "chosen_score": columns["gold_score"]})))
