"""The run store of a sweep."""

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
