"""The VAR report's comparison section (alignlab.report.var): what is decided and what is described."""

import json

import matplotlib
import numpy as np

from alignlab.analysis import RunRecord, decide, var_gain_claims
from alignlab.report.blocks import Sweep, Table
from alignlab.report.figures import PLOT_STYLE
from alignlab.report.var import comparison_section

IDS = [f"q{i}" for i in range(40)]
FAMILIES = {p: ("helpful" if i % 2 == 0 else "harmful") for i, p in enumerate(IDS)}


def model(method, config, seed, gold):
    name = method if seed is None else f"{method}-c{config}-s{seed}"
    params = {} if seed is None else {"beta": config, "seed": seed}
    score = float(np.mean(gold))
    return RunRecord(name, method, params, {"mean_score": {"value": score, "ci_low": score, "ci_high": score}},
                     {"prompt_id": np.array(IDS), "gold_score": np.asarray(gold)})


def section_of(dpo_level):
    rng = np.random.default_rng(0)
    runs = []
    for method, level in (("dpo", dpo_level), ("var", dpo_level + 0.5)):
        gold = level + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.05, (3, len(IDS)))
        runs += [model(method, 0, s, gold[s]) for s in range(3)]
    sweep = Sweep.of(runs, model("sft", None, None, np.zeros(len(IDS))), FAMILIES)
    sweep.claims = decide(var_gain_claims(sweep.evidence, FAMILIES))
    with matplotlib.rc_context(PLOT_STYLE):
        return comparison_section(sweep)


def test_the_section_names_the_decided_claims_and_the_descriptives_apart():
    section, summary = section_of(1.0)
    assert summary["decided"] == ["VAR's gold reward ≥ DPO's", "VAR's gold reward ≥ +7.16% over DPO's"]
    assert [c["verdict"] for c in summary["claims"]] == ["confirmed", "confirmed"]   # 1.5 vs 1.0: +50%
    assert set(summary["descriptive"]) == {"configurations", "gain_by_family", "head_to_head", "share_of_dpo_gain"}
    text = " ".join(b for b in section.blocks if isinstance(b, str))
    assert "arbitrary zero" in text and "Descriptive only" in text
    claims_table, descriptive_table = [b for b in section.blocks if isinstance(b, Table)][1:]
    assert claims_table.rows[1][4].text == f"{summary['claims'][1]['fieller']['gain_pct']:+.2f}%"
    assert [row[0] for row in descriptive_table.rows][:3] == [
        "gain of VAR over DPO, all prompts, 100·(V/D − 1)", "gain of VAR over DPO, harmful prompts, 100·(V/D − 1)",
        "gain of VAR over DPO, helpful prompts, 100·(V/D − 1)"]
    json.dumps(summary, default=str)


def test_a_dpo_mean_at_zero_leaves_the_percentage_not_tested_in_the_table():
    section, summary = section_of(0.0)
    assert [c["verdict"] for c in summary["claims"]] == ["confirmed", "not tested"]
    claims_table = [b for b in section.blocks if isinstance(b, Table)][1]
    assert claims_table.rows[1][4] == "–" and claims_table.rows[1][6].text == "not tested"
    # VAR's gain over a DPO that gained nothing over SFT has no bounded share.
    assert summary["descriptive"]["share_of_dpo_gain"]["ci"] is None
