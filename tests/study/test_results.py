"""load_run_record: a run's per-sample columns, its in-distribution and selection ones beside them, and
what damage costs: to the in-distribution evaluation only itself, to the selection one the whole run."""

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


def test_the_selection_columns_are_read_and_their_damage_refuses_the_run(tmp_path):
    from alignlab.errors import AlignlabError

    directory = run_dir(tmp_path)
    (directory / "selection").mkdir()
    (directory / "selection" / "samples.parquet").write_bytes(
        parquet_bytes({"prompt_id": ["s0", "s1"], "gold_score": [0.5, 1.5], "length": [2, 3]}))
    run = load_run_record(directory, "dpo-a", "dpo", {}, METRICS, selection=True)
    assert run.selection["prompt_id"].tolist() == ["s0", "s1"] and run.selection["gold_score"].tolist() == [0.5, 1.5]
    # A run that cannot be ranked cannot be picked: the report skips it and names it.
    (directory / "selection" / "samples.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(AlignlabError, match="selection/samples.parquet: cannot be read"):
        load_run_record(directory, "dpo-a", "dpo", {}, METRICS, selection=True)
