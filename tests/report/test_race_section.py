"""The VAR report's race section when GRPO does not improve on SFT: there is no target to race to."""

import numpy as np

from alignlab.analysis import RunRecord
from alignlab.report.var import race_section

PROMPTS = [f"p{i}" for i in range(6)]


def point(seconds, samples, step, gold):
    return {"seconds": seconds, "samples": samples, "step": step, "prompt_id": PROMPTS,
            "gold_score": [gold] * 6, "proxy_score": [gold] * 6}


def test_a_race_where_grpo_does_not_improve_is_not_tested_and_shows_no_target():
    sft = RunRecord("sft", "sft", {}, {}, {"prompt_id": np.array(PROMPTS), "gold_score": np.ones(6),
                                           "proxy_score": np.ones(6)})
    # GRPO ends below SFT (1.0 → 0.5): no gain, so no target, on either reward.
    race = {"test_prompts": 6, "methods": {
        method: {"params": {}, "batch_size": 4, "setup_seconds": 1.0,
                 "points": [point(10.0, 32, 1, final), point(20.0, 64, 2, final)]}
        for method, final in (("var", 1.5), ("dpo", 1.2), ("grpo", 0.5))}}
    section, results = race_section(race, sft)
    assert results["gold"]["verdict"] == results["proxy"]["verdict"] == "not tested"
    verdict_table = section.blocks[-1]
    for row in verdict_table.rows:
        assert row[2] == "–"  # the target column
        assert row[5].text == "not tested"
