"""A study's sequential looks (alignlab.analysis.sequential) end to end: seeds added where the noise is,
saved before they train, replayed on resume, spent in the report, and held to the time budget."""

import json

import pytest

from alignlab.cli import main
from alignlab.study.store import RunStore

STUDY_YAML = """\
grid_preset: null
methods: [dpo, ln-dpo]
seeds: 2
grid:
  dpo: {beta: [0.1]}
  ln-dpo: {beta: [1.0]}
"""


def sweep(tmp_path, world_cache, out, *extra):
    config = tmp_path / "study.yaml"
    config.write_text(STUDY_YAML)
    return main(["sweep", str(config), "--world", "tiny", "--out", str(out), "--cache_dir", str(world_cache), *extra])


def finished_runs(out) -> list[str]:
    with RunStore(out / "runs.sqlite", readonly=True) as store:
        return sorted(run.name for run in store.runs("finished"))


@pytest.mark.slow
def test_looks_add_seeds_to_the_noisy_configurations_save_them_and_spend_the_primary_level(tmp_path, world_cache):
    out = tmp_path / "out"
    assert sweep(tmp_path, world_cache, out, "--max_seeds", "4") == 0
    looks = json.loads((out / "sequential.json").read_text())["looks"] if (out / "sequential.json").exists() else []
    runs = finished_runs(out)
    first = ["dpo-lr0.001-s0", "dpo-lr0.001-s1", "ln-dpo-lr0.001-s0", "ln-dpo-lr0.001-s1"]
    added = [name for look in looks for name in look["added_runs"]]
    assert runs == sorted(first + added)  # every run a look added trained, and nothing else
    seeds = {config: [run.rsplit("-s", 1)[1] for run in runs if run.startswith(config + "-s")]
             for config in ("dpo-lr0.001", "ln-dpo-lr0.001")}
    assert all(found == [str(s) for s in range(len(found))] and len(found) <= 4 for found in seeds.values())
    for number, look in enumerate(looks, start=1):
        assert look["look"] == number and look["level"] == 0.001
        assert look["runs"] == 4 + sum(len(earlier["added_runs"]) for earlier in looks[:number - 1])
        assert look["open"] == ["expected score: LN-DPO ≥ DPO"] and look["decided"] == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequential"]["final_level"] == pytest.approx(0.05 - 0.001 * len(looks))
    primary = next(c for c in summary["claims"] if c["family"] == "primary")
    assert primary["claim"] == "expected score: LN-DPO ≥ DPO"
    assert primary["level"] == pytest.approx(0.05 - 0.001 * len(looks))
    # Run again: the saved looks are replayed, and no look adds a seed they did not.
    assert sweep(tmp_path, world_cache, out, "--max_seeds", "4") == 0
    assert finished_runs(out) == runs
    again = json.loads((out / "sequential.json").read_text())["looks"] if looks else []
    assert [look["added_runs"] for look in again] == [look["added_runs"] for look in looks]


@pytest.mark.slow
def test_no_look_starts_that_the_time_budget_cannot_pay_for(tmp_path, world_cache):
    out = tmp_path / "out"
    assert sweep(tmp_path, world_cache, out, "--max_seeds", "4", "--budget_minutes", "0.001") == 0
    assert not (out / "sequential.json").exists()
    assert finished_runs(out) == ["dpo-lr0.001-s0", "dpo-lr0.001-s1", "ln-dpo-lr0.001-s0", "ln-dpo-lr0.001-s1"]
    assert json.loads((out / "summary.json").read_text())["sequential"]["final_level"] == 0.05


def test_a_damaged_sequential_file_is_named_with_what_to_do(tmp_path):
    from alignlab.errors import AlignlabError
    from alignlab.study.results import read_looks

    (tmp_path / "sequential.json").write_text('{"looks": [{"look": "one"}]}')
    with pytest.raises(AlignlabError, match=r"sequential.json: .*--overwrite true"):
        read_looks(tmp_path)
