"""`alignlab verdict SCORES` and `alignlab.verdict(table)` on hand-built tables with known answers.

The table: 10 prompts whose scores are BASE + a per-configuration offset + a per-seed offset + a
seed × prompt interaction (the same in every method, so it cancels in every difference). DPO's two
configurations sit at 0 and 0.2, my-dpo-v2's at 1.0 and 1.2 (seed offsets −0.02, 0.01, 0.03 against
DPO's −0.01, 0, 0.01), and "same" repeats DPO's rows exactly: my-dpo-v2 is 1 + 0.02/3 above DPO in
expected score (every seed) and 1 + 0.01 in best score (each best ranked on seeds 0 and 2 and reported
on seed 1 alone: alignlab.analysis.replicates), "same" exactly 0.
"""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import alignlab
from alignlab.cli import main
from alignlab.errors import AlignlabError, InputError
from alignlab.analysis import RunRecord
from alignlab.report.verdict import ScoresTable, models_of, verdict

PROMPTS = [f"p{i}" for i in range(10)]
BASE = np.linspace(0.0, 0.9, 10)
WIGGLE = 0.05 * (-1.0) ** np.arange(10)
SEED_OFFSETS = {"dpo": (-0.01, 0.0, 0.01), "my-dpo-v2": (-0.02, 0.01, 0.03), "same": (-0.01, 0.0, 0.01)}
CONFIGS = {"dpo": (0.0, 0.2), "my-dpo-v2": (1.0, 1.2), "same": (0.0, 0.2)}
N_RESAMPLES = 400


def table(methods=("dpo", "my-dpo-v2", "same"), sft=True, prompts=PROMPTS) -> pd.DataFrame:
    rows = []
    for method in methods:
        for beta, offset in zip((0.1, 0.5), CONFIGS[method]):
            for seed, seed_offset in enumerate(SEED_OFFSETS[method]):
                gold = BASE + offset + seed_offset + 0.3 * seed * WIGGLE
                rows += [{"method": method, "configuration": json.dumps({"beta": beta}), "seed": seed,
                          "prompt_id": p, "score": float(gold[i]), "length": 40.0 + i, "kl": 2.0 + seed}
                         for i, p in enumerate(PROMPTS) if p in prompts]
    if sft:
        rows += [{"method": "sft", "configuration": "base", "seed": 0, "prompt_id": p, "score": float(BASE[i] - 0.3),
                  "length": 50.0, "kl": 0.0} for i, p in enumerate(PROMPTS) if p in prompts]
    return pd.DataFrame(rows)


def by_title(claims):
    return {c["claim"]: c for c in claims}


def test_a_large_advantage_is_confirmed_and_identical_methods_are_inconclusive():
    claims = verdict(table(), n_resamples=N_RESAMPLES)
    assert list(by_title(claims)) == ["best score: my-dpo-v2 ≥ DPO", "expected score: my-dpo-v2 ≥ DPO",
                                      "best score: same ≥ DPO", "expected score: same ≥ DPO"]
    c = by_title(claims)
    # Configuration offsets 1.1 vs 0.1 on average, seed offsets 0.02/3 vs 0 over the three seeds.
    expected = c["expected score: my-dpo-v2 ≥ DPO"]
    assert expected["value"] == pytest.approx(1 + 0.02 / 3) and expected["verdict"] == "confirmed"
    # The best, 1.2 vs 0.2, on its reporting seed 1 (offsets 0.01 vs 0): one seed measures no training
    # noise, so even this gap is not decided, and nothing says what would settle it.
    best = c["best score: my-dpo-v2 ≥ DPO"]
    assert best["value"] == pytest.approx(1 + 0.01) and best["verdict"] == "inconclusive"
    for title in ("best score: same ≥ DPO", "expected score: same ≥ DPO"):
        assert c[title]["value"] == pytest.approx(0.0, abs=1e-12) and c[title]["verdict"] == "inconclusive"
    assert c["expected score: same ≥ DPO"]["to_settle"]["effect"] == 0
    assert all(c[t]["to_settle"] is None and "fewer than 2 seeds" in c[t]["detail"]
               for t in ("best score: my-dpo-v2 ≥ DPO", "best score: same ≥ DPO"))
    # Only DPO of the papers' methods: no Hitchhiker claims; the expected-score claims are primary.
    assert [t for t in c if c[t]["family"] == "primary"] == ["expected score: my-dpo-v2 ≥ DPO",
                                                              "expected score: same ≥ DPO"]
    assert all(x["seeds"] == [0, 1, 2] and x["prompts"] == 5 for x in claims)
    assert alignlab.verdict is verdict


def test_a_table_of_a_sweeps_runs_gets_the_claims_its_report_gets():
    """Runs as a study records them (noisy, five methods, families), written as a table in another order
    of runs (the prompts in the study's order: the bootstrap draws prompts by position): the table's
    claims are the report's claim code on the runs themselves (alignlab.analysis.claims_of)."""
    rng = np.random.default_rng(5)
    ids = [f"q{i}" for i in range(40)]
    difficulty = rng.normal(0, 1, 40)
    families = {p: "harmful" if i % 3 == 0 else "helpful" for i, p in enumerate(ids)}

    def samples(shift, seed_sd=0.1):
        return {"prompt_id": np.array(ids), "gold_score": difficulty + shift + rng.normal(0, seed_sd)
                + rng.normal(0, 0.3, 40), "length": rng.integers(10, 90, 40).astype(float)}

    runs = [RunRecord(f"{m}-c{c}-s{s}", m, {"configuration": f"c{c}", "seed": s}, {}, samples(shift))
            for m, shift in (("dpo", 0.0), ("ln-dpo", 0.5), ("simpo", 0.1), ("var", 0.2), ("kto", 0.0))
            for c in range(2) for s in range(3)]
    sft = RunRecord("sft", "sft", {}, {}, samples(-0.2, seed_sd=0.0))
    for run in runs:
        run.samples["sft_score"] = sft.samples["gold_score"]
        run.metrics = {"mean_score": {"value": float(run.samples["gold_score"].mean())}}
    frame = pd.concat([pd.DataFrame({"method": r.method, "configuration": r.params.get("configuration", "base"),
                                     "seed": r.params.get("seed", 0), "family": [families[p] for p in ids],
                                     "prompt_id": ids, "score": r.samples["gold_score"],
                                     "length": r.samples["length"]}) for r in [*runs[::-1], sft]])
    from alignlab.analysis import SweepEvidence, claims_of
    from alignlab.report.blocks import Sweep

    expected = claims_of(SweepEvidence(Sweep.of(runs, sft).runs, sft, N_RESAMPLES), families)
    got = verdict(frame, n_resamples=N_RESAMPLES)
    assert len(got) == len(expected) == 11 + 3 + 2  # Hitchhiker's, VAR's three against DPO, KTO's two
    for mine, theirs in zip(got, expected, strict=True):
        for key in ("claim", "family", "verdict", "configurations", "seeds", "prompts", "detail"):
            assert mine[key] == theirs[key], key
        for key in ("value", "p_value", "p_adjusted"):
            assert mine[key] == pytest.approx(theirs[key]), (mine["claim"], key)
    named = {name for c in got for name in c["configurations"]}
    assert {"dpo-c0", "dpo-c1", "kto-c1"} <= named  # a named configuration reads "<method>-<name>"
    assert [c["claim"] for c in got if c["family"] == "primary"] == [
        "expected score: SimPO ≥ LN-DPO", "expected score: LN-DPO ≥ DPO", "expected score: KTO ≥ DPO",
        "expected score: VAR ≥ DPO"]


def test_the_reference_and_the_primary_family_can_be_chosen():
    claims = by_title(verdict(table(), reference="same", primary=["best score: my-dpo-v2 ≥ same"],
                              n_resamples=N_RESAMPLES))
    assert sorted(claims) == ["best score: my-dpo-v2 ≥ same", "expected score: my-dpo-v2 ≥ same"]
    assert claims["best score: my-dpo-v2 ≥ same"]["family"] == "primary"
    assert claims["expected score: my-dpo-v2 ≥ same"]["family"] == "secondary"
    with pytest.raises(InputError, match="no rows of the reference method 'ipo'"):
        verdict(table(), reference="IPO")
    with pytest.raises(InputError, match="no claim 'best score: x ≥ DPO' in this report"):
        verdict(table(), primary=["best score: x ≥ DPO"])


def test_the_papers_methods_get_the_papers_claims_whatever_their_case():
    frame = table(("dpo", "my-dpo-v2"))
    frame.loc[frame["method"] == "my-dpo-v2", "method"] = "LN-DPO"
    claims = by_title(verdict(frame, n_resamples=N_RESAMPLES))
    assert claims["expected score: LN-DPO ≥ DPO"]["family"] == "primary"
    assert claims["expected score: LN-DPO ≥ DPO"]["verdict"] == "confirmed"
    assert claims["best score: SimPO ≥ LN-DPO"]["verdict"] == "not tested"
    no_sft = by_title(verdict(frame[frame["method"] != "sft"], n_resamples=N_RESAMPLES))
    assert no_sft["DPO is most often worse than SFT"]["verdict"] == "not tested"


def test_models_scored_on_fewer_prompts_are_compared_on_the_shared_ones():
    frame = table()
    frame = frame[~((frame["method"] == "same") & (frame["seed"] == 2) & (frame["prompt_id"] == "p3"))]
    runs, sft, _, notes = models_of(ScoresTable(frame, "table"))
    assert notes == ["1 prompt(s) not scored for every model were left out (e.g. 'p3'); the claims use the 9 "
                     "prompts every model has"]
    assert all(list(r.samples["prompt_id"]) == [p for p in PROMPTS if p != "p3"] for r in [*runs, sft])
    assert models_of(ScoresTable(table(sft=False), "table"))[3] == [
        "no sft rows: the claims against the SFT baseline are not tested"]


def test_configurations_are_names_or_json_hyper_parameters():
    frame = table(("dpo",), sft=False)
    frame["configuration"] = np.where(frame["configuration"] == '{"beta": 0.1}', '{"lr": 1e-6, "beta": 0.1}', "wide")
    runs, sft, _, _ = models_of(ScoresTable(frame, "table"))
    assert sft is None
    assert sorted({r.name: r.params for r in runs}.items())[:2] == [
        ("dpo-beta=0.1,lr=1e-06-s0", {"beta": 0.1, "lr": 1e-6, "seed": 0}),
        ("dpo-beta=0.1,lr=1e-06-s1", {"beta": 0.1, "lr": 1e-6, "seed": 1})]
    assert {r.name: r.params for r in runs}["dpo-wide-s2"] == {"configuration": "wide", "seed": 2}
    assert runs[0].samples["ln_kl"] == pytest.approx(runs[0].samples["kl"] / runs[0].samples["length"])


def write(frame: pd.DataFrame, path):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:  # exact floats: pandas' to_json rounds to 10 digits
        path.write_text("".join(json.dumps(row) + "\n" for row in frame.to_dict("records")))


def same_models(a, b):
    (runs_a, sft_a, fam_a, notes_a), (runs_b, sft_b, fam_b, notes_b) = a, b
    assert (fam_a, notes_a, sft_a is None) == (fam_b, notes_b, sft_b is None)
    for x, y in zip([*runs_a, *filter(None, [sft_a])], [*runs_b, *filter(None, [sft_b])], strict=True):
        assert (x.name, x.method, x.params) == (y.name, y.method, y.params)
        assert x.samples.keys() == y.samples.keys()
        assert all(np.array_equal(x.samples[k], y.samples[k]) for k in x.samples)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_files_give_the_models_the_table_gives(suffix, tmp_path):
    frame = table()
    frame["family"] = np.where(frame["prompt_id"].isin(PROMPTS[:4]), "harmful", "helpful")
    write(frame, tmp_path / f"scores{suffix}")
    same_models(models_of(ScoresTable.read(str(tmp_path / f"scores{suffix}"))), models_of(ScoresTable(frame, "table")))


BAD = {  # what is done to the CSV's rows (0-based; line = row + 2) -> the error's words
    "no score column": (lambda f: f.drop(columns="score"), "scores.csv: no column 'score'"),
    "empty score": (lambda f: f.assign(score=f["score"].astype(object).where(f.index != 7, "")),
                    "scores.csv:9: field 'score': missing value"),
    "text score": (lambda f: f.assign(score=f["score"].astype(object).where(f.index != 7, "high")),
                   "scores.csv:9: field 'score': 'high' is not a number"),
    "infinite score": (lambda f: f.assign(score=f["score"].where(f.index != 3, np.inf)),
                       "scores.csv:5: field 'score': inf is not a finite number"),
    "zero length": (lambda f: f.assign(length=f["length"].where(f.index != 4, 0.0)),
                    "scores.csv:6: field 'length': 0.0 is not a finite positive number"),
    "repeated row": (lambda f: pd.concat([f, f.iloc[[2]]]),
                     "scores.csv:72: a second row for method 'dpo', configuration 'beta=0.1', seed 0, prompt 'p2' "
                     "(first at line 4)"),
    "one prompt": (lambda f: f[f["prompt_id"] == "p0"], "1 prompt(s) scored for every model"),
    "two sft models": (lambda f: pd.concat([f, f[f["method"] == "sft"].assign(seed=1)]),
                       "the sft rows hold 2 models (sft-base-s0, sft-base-s1)"),
    "seed in the configuration": (lambda f: f.assign(configuration=f["configuration"].where(f.index != 0,
                                                                                             '{"seed": 1}')),
                                  "scores.csv:2: field 'configuration': holds 'seed'"),
    "list hyper-parameter": (lambda f: f.assign(configuration=f["configuration"].where(f.index != 0, '{"b": [1]}')),
                             "scores.csv:2: field 'configuration': hyper-parameter 'b' is [1]"),
    "broken json": (lambda f: f.assign(configuration=f["configuration"].where(f.index != 0, '{"b": ')),
                    "scores.csv:2: field 'configuration': not a JSON object"),
    "two families": (lambda f: f.assign(family=np.where(f.index == 11, "harmful", "helpful")),
                     "scores.csv:13: field 'family': prompt 'p1' has family 'harmful' here and 'helpful' at line 3"),
    "only sft": (lambda f: f[f["method"] == "sft"], "no rows of a method other than sft"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_table_is_refused_in_one_line_naming_the_row_and_column(case, tmp_path):
    change, message = BAD[case]
    write(change(table(("dpo",))), tmp_path / "scores.csv")
    with pytest.raises(InputError) as error:
        models_of(ScoresTable.read(str(tmp_path / "scores.csv")))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_dataframe_error_names_its_row():
    frame = table(("dpo",))
    frame.loc[5, "prompt_id"] = None
    with pytest.raises(InputError, match=r"^table row 5: field 'prompt_id': missing value"):
        verdict(frame)


# ------------------------------------------------------------------ property-based: the reader

cells = st.fixed_dictionaries({
    "method": st.sampled_from(["dpo", "My-Method", "sft"]),
    "configuration": st.sampled_from(["a", '{"beta": 0.1}', '{"beta": 0.5, "lr": 1}']),
    "seed": st.integers(0, 2),
    "prompt_id": st.sampled_from(["p0", "p1", "p2"]),
    "score": st.floats(-1e6, 1e6, allow_nan=False),
})


def distinct_rows(rows):
    seen, kept = set(), []
    for row in rows:
        key = (row["method"], row["configuration"], row["seed"] if row["method"] != "sft" else 0, row["prompt_id"])
        if key not in seen and not (row["method"] == "sft" and (row["seed"] or row["configuration"] != "a")):
            seen.add(key)
            kept.append(row)
    return kept


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(cells, min_size=1, max_size=40).map(distinct_rows).filter(bool),
       suffix=st.sampled_from([".csv", ".jsonl"]), blank=st.integers(0, 39),
       column=st.sampled_from(["method", "seed", "prompt_id", "score"]))
def test_any_table_reads_from_a_file_as_from_the_dataframe_and_a_blank_cell_is_named(rows, suffix, blank, column,
                                                                                      tmp_path):
    frame = pd.DataFrame(rows)
    path = tmp_path / f"scores{suffix}"
    write(frame, path)
    try:
        expected = models_of(ScoresTable(frame, "table"))
    except InputError as error:  # too few shared prompts, no method but sft: the file says the same
        with pytest.raises(InputError) as from_file:
            models_of(ScoresTable.read(str(path)))
        assert str(from_file.value).split(": ", 1)[1] == str(error).split(": ", 1)[1]
    else:
        same_models(models_of(ScoresTable.read(str(path))), expected)
    # A value removed from one row: an error at that row's line (the header is line 1), naming the column.
    row = blank % len(rows)
    damaged = frame.astype(object)
    damaged.loc[row, column] = None
    write(damaged, path)
    with pytest.raises(InputError, match=rf"scores{suffix}:{row + 2 - (suffix == '.jsonl')}: field '{column}': "):
        models_of(ScoresTable.read(str(path)))


# ------------------------------------------------------------------ the command

@pytest.mark.slow  # the report's figures: seconds
def test_the_command_writes_the_report_beside_the_scores_and_never_over_them_silently(tmp_path, capsys):
    frame = table()
    frame.to_csv(tmp_path / "scores.csv", index=False)
    assert main(["verdict", str(tmp_path / "scores.csv")]) == 0
    out = tmp_path / "scores-verdict"
    printed = capsys.readouterr().out
    assert "confirmed     primary    expected score: my-dpo-v2 ≥ DPO" in printed
    assert f"{out}/report.html" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["claims"] == verdict(frame)  # the function is the command's engine
    assert summary["primary"] == ["expected score: my-dpo-v2 ≥ DPO", "expected score: same ≥ DPO"]
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# Verdict on scores.csv") and "(primary)" in markdown
    assert "to settle" in markdown or all(c["verdict"] != "inconclusive" or c["to_settle"]["effect"] == 0
                                          for c in summary["claims"])
    # Again: refused without --overwrite; a folder alignlab did not write is never written into.
    assert main(["verdict", str(tmp_path / "scores.csv")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["verdict", str(tmp_path / "scores.csv"), "--overwrite", "--primary", "best score: same ≥ DPO"]) == 0
    assert json.loads((out / "summary.json").read_text())["primary"] == ["best score: same ≥ DPO"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["verdict", str(tmp_path / "scores.csv"), "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "was not created by alignlab" in capsys.readouterr().err
    assert main(["verdict", str(tmp_path / "nothing.csv")]) == 2
    assert "nothing.csv: no such file" in capsys.readouterr().err
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / ".alignlab").write_text('{"created_by": "alignlab", "kind": "sweep"}')
    assert main(["verdict", str(tmp_path / "scores.csv"), "--out", str(tmp_path / "sweep"), "--overwrite"]) == 2
    assert "holds an alignlab sweep, not a verdict" in capsys.readouterr().err


def test_an_unknown_primary_title_is_one_line_error_of_the_command(tmp_path, capsys):
    table(("dpo", "same")).to_csv(tmp_path / "scores.csv", index=False)
    assert main(["verdict", str(tmp_path / "scores.csv"), "--primary", "nope"]) == 2
    assert "alignlab: error: --primary: no claim 'nope' in this report" in capsys.readouterr().err
    assert not (tmp_path / "scores-verdict" / "summary.json").exists()
    with pytest.raises(AlignlabError):
        main(["--debug", "verdict", str(tmp_path / "scores.csv"), "--primary", "nope"])
