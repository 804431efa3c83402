"""load_run_record: a run's per-sample columns, its in-distribution ones beside them, and what damage
to the latter costs (only them)."""

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.study.results import load_run_record

METRICS = {"mean_score": {"value": 1.5, "ci_low": 1.0, "ci_high": 2.0}}


def run_dir(tmp_path, indist=None):
    pq.write_table(pa.table({"prompt_id": ["t0", "t1"], "gold_score": [1.0, 2.0], "length": [3, 4],
                             "chosen_score": [0.5, 2.0], "kl": [0.2, 0.6], "ln_kl": [0.1, 0.2]}),
                   tmp_path / "samples.parquet")
    if indist is not None:
        (tmp_path / "indist").mkdir()
        (tmp_path / "indist" / "samples.parquet").write_bytes(indist)
    return tmp_path


def parquet_bytes(columns) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def test_the_kl_columns_and_the_in_distribution_columns_are_read(tmp_path):
    indist = parquet_bytes({"prompt_id": ["h0", "h1", "h2"], "gold_score": [0.0, 1.0, 3.0], "length": [5, 6, 7],
                            "chosen_score": [1.0, 1.0, 1.0]})
    run = load_run_record(run_dir(tmp_path, indist), "dpo-a", "dpo", {}, METRICS, indist=True)
    assert run.samples["kl"].tolist() == [0.2, 0.6] and run.samples["ln_kl"].tolist() == [0.1, 0.2]
    assert run.indist["prompt_id"].tolist() == ["h0", "h1", "h2"]
    assert run.indist["gold_score"].tolist() == [0.0, 1.0, 3.0]
    assert run.indist["chosen_score"].dtype == np.float64
    assert load_run_record(run_dir(tmp_path), "dpo-a", "dpo", {}, METRICS).indist == {}  # not evaluated


@pytest.mark.parametrize("indist, problem", [(None, "cannot be read"), (b"PAR1 truncated", "cannot be read"),
                                             (parquet_bytes({"prompt_id": ["h0"], "gold_score": [1.0]}),
                                              "lacks the column(s) length")])
def test_a_missing_or_damaged_in_distribution_evaluation_loses_only_itself(tmp_path, caplog, indist, problem):
    with caplog.at_level(logging.WARNING, logger="alignlab.study.results"):
        run = load_run_record(run_dir(tmp_path, indist), "dpo-a", "dpo", {}, METRICS, indist=True)
    assert run.indist == {} and run.samples["gold_score"].tolist() == [1.0, 2.0]
    assert "dpo-a" in caplog.text and str(tmp_path / "indist" / "samples.parquet") in caplog.text
    assert problem in caplog.text
