"""The sweep's robustness report (alignlab.report.document) on hand-made sweeps with known answers.

The sweep: 8 test prompts whose gold scores are BASE + a per-configuration offset + a per-seed offset
(−0.01, 0, +0.01 for seeds 0, 1, 2), so every reported mean, pick, % change and most verdicts can be
worked out by hand. SFT scores BASE − 0.3; DPO configurations −0.5, 0, −0.25; LN-DPO 0.25, −0.25, 0;
SimPO 1.25, 1.0, 0.75, 0.5 (uniformly above the others on every prompt, and shorter, with a smaller
length-normalised KL). Offsets are uniform over prompts, so picks on the selection half are the picks
on any prompts; reported numbers are means over the reporting half (REPORTING below). Seeds 0 and 2
rank a configuration and a pick is reported on seed 1 alone (offset 0, so its numbers are the
configuration's own), which cannot measure training noise: claims on picks are inconclusive.
"""

import base64
import json
import re

import numpy as np
import pytest

from alignlab.analysis import RunRecord
from alignlab.evaluation.metrics import summarize
from alignlab.evidence import split_prompts
from alignlab.report.document import write_report
from conftest import CHROMIUM, check_report_in_chromium

PROMPTS = [f"p{i}" for i in range(8)]
BASE = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0])
REPORTING = [PROMPTS.index(p) for p in split_prompts(PROMPTS).reporting]
BASE_REPORTED = float(BASE[REPORTING].mean())
SPREAD = np.linspace(-0.02, 0.02, 8)  # mean 0: per-prompt variation of length-normalised KL
SEEDS = (0, 1, 2)
SEED_OFFSET = {0: -0.01, 1: 0.0, 2: 0.01}

# method -> (length, length-normalised KL, [(hyper-parameters, gold offset)])
GRID = {
    "dpo": (60.0, 0.30, [({"beta": 0.01}, -0.5), ({"beta": 0.1}, 0.0), ({"beta": 0.5}, -0.25)]),
    "ln-dpo": (50.0, 0.10, [({"beta": 1.0}, 0.25), ({"beta": 2.0}, -0.25), ({"beta": 5.0}, 0.0)]),
    "simpo": (40.0, 0.05, [({"beta": 2.0, "gamma": 0.5}, 1.25), ({"beta": 2.0, "gamma": 1.0}, 1.0),
                           ({"beta": 2.5, "gamma": 0.5}, 0.75), ({"beta": 2.5, "gamma": 1.0}, 0.5)]),
}
SFT_GOLD = BASE - 0.3


def record(name, method, params, gold, length, ln_kl=None, sft_gold=SFT_GOLD):
    """A RunRecord whose metrics come from metrics.summarize of its per-sample columns."""
    lengths = np.full(len(PROMPTS), length)
    kl = None if ln_kl is None else (ln_kl + SPREAD) * lengths
    samples = {"prompt_id": np.array(PROMPTS), "gold_score": gold, "length": lengths, "chosen_score": BASE}
    if sft_gold is not None:
        samples["sft_score"] = sft_gold
    if kl is not None:
        samples.update(kl=kl, ln_kl=kl / lengths, kl_length=lengths)
    return RunRecord(name, method, params, summarize(samples), samples)


def config_name(method, params):
    return f"{method}-" + "-".join(f"{k}{v}" for k, v in params.items())


def sweep_runs(methods=("dpo", "ln-dpo", "simpo"), with_kl=True):
    runs = []
    for method in methods:
        length, ln_kl, grid = GRID[method]
        for params, offset in grid:
            for seed in SEEDS:
                runs.append(record(f"{config_name(method, params)}-s{seed}", method,
                                   {**params, "learning_rate": 5e-4, "epochs": 1, "seed": seed},
                                   BASE + offset + SEED_OFFSET[seed], length + seed, ln_kl if with_kl else None))
    return runs


def sft_record(with_kl=True):
    return record("sft", "sft", {}, SFT_GOLD, 70.0, 0.0 if with_kl else None, sft_gold=None)


CONTEXT = {"world": "hand-made", "runs": "30 finished, 0 failed", "failed runs": []}
SWEEP_FIGURES = {  # figure -> what its caption must say
    "claims.png": "Each tested claim's estimate and 95% CI",
    "expected_max.png": "Expected best-of-k",
    "win_matrix_best.png": "SimPO = simpo-beta2-gamma0.5-lr0.0005",
    "win_matrix_top25.png": "SimPO = simpo-beta2-gamma1-lr0.0005",
    "top_k_length.png": "pooled over reporting seeds and prompts",
    "top_k_kl.png": "pooled over reporting seeds and prompts",
    "top_k_ln_kl.png": "pooled over reporting seeds and prompts",
    "kl_vs_score.png": "30 runs (DPO 9, LN-DPO 9, SimPO 12; seeds 0, 1, 2).",
    "sensitivity_dpo.png": "9 DPO runs (seeds 0, 1, 2)",
    "sensitivity_ln-dpo.png": "9 LN-DPO runs (seeds 0, 1, 2)",
    "sensitivity_simpo.png": "12 SimPO runs (seeds 0, 1, 2)",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    # The runs arrive shuffled, as a sweep finishes them: the report orders them itself.
    runs = sweep_runs()
    order = np.random.default_rng(1).permutation(len(runs))
    summary = write_report(out, [runs[i] for i in order], sft_record(), CONTEXT, "hand-made sweep")
    return out, summary


def section(markdown: str, anchor: str) -> str:
    """The Markdown of one report section, from its anchor to the next."""
    return markdown.split(f'<a id="{anchor}"></a>')[1].split("<a id=")[0]


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def table_row(markdown: str, first_cell: str) -> list[str]:
    """The cells of the first Markdown table row whose first cell is first_cell."""
    for line in markdown.splitlines():
        if line.startswith("|") and cells(line)[0] == first_cell:
            return cells(line)
    raise AssertionError(f"no table row {first_cell!r}")


def test_report_files_and_summary(report):
    out, summary = report
    for name in ("summary.json", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(SWEEP_FIGURES)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    # summary.json is for programs: snake_case keys, metrics under their metrics.json names, models by method.
    assert summary["context"] == {"world": "hand-made", "runs": "30 finished, 0 failed", "failed_runs": []}
    assert list(summary["sft"]["reported"]) == ["mean_score", "win_vs_chosen", "tie_vs_chosen", "win_vs_sft",
                                                "tie_vs_sft", "kl", "ln_kl", "length"]
    assert set(summary["sft"]["reported"]) <= set(summarize(sft_record().samples))
    assert [r["run"] for r in summary["runs"]][:2] == ["sft", "dpo-beta0.1-s2"]  # SFT, then best first
    assert summary["correction"] == "holm"
    assert summary["selection"]["selection_prompts"] == summary["selection"]["reporting_prompts"] == 4
    # Seed offsets −0.01, 0, +0.01: the sd of a model's mean gold over seeds is 0.01 in every configuration.
    assert summary["noise_floor"] == pytest.approx({"dpo": 0.01, "ln-dpo": 0.01, "simpo": 0.01})


def test_report_opens_with_the_claims_and_their_verdicts(report):
    out, summary = report
    markdown = (out / "report.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings[0] == "Claims, with the evidence behind them" and headings[-1] == "All runs"
    expected = {
        # SimPO's best is 1.0 above LN-DPO's best and LN-DPO's 0.25 above DPO's on every prompt; each
        # best is reported on its one reporting seed: inconclusive, however clear.
        "best score: SimPO ≥ LN-DPO": ("+1", "inconclusive"),
        "best score: LN-DPO ≥ DPO": ("+0.25", "inconclusive"),
        # Expected best-of-1 = the grid mean: SimPO 0.875, LN-DPO 0, DPO −0.25.
        "expected score: SimPO ≥ LN-DPO": ("+0.875", "confirmed"),
        "expected score: LN-DPO ≥ DPO": ("+0.25", "confirmed"),
        # DPO: one configuration of three (−0.5) below SFT (−0.3); none of LN-DPO's 3 and SimPO's 4.
        # Fisher: the one configuration shown worse is DPO's with probability 3/10; two-sided 0.6.
        # A share of the whole grid picks nothing: every seed.
        "DPO is most often worse than SFT": ("+0.3333", "inconclusive"),
        # Lengths 60 vs 40 (+ the seed, the same in both); picks again, so inconclusive.
        "SimPO responses shorter than DPO's": ("+20", "inconclusive"),
        "LN-DPO closer to SFT in length-normalised KL than DPO": ("+0.2", "inconclusive"),
        # Top-25% of 3 configurations is the best (drop 0); of SimPO's 4 the second best (drop 0.25).
        "DPO drops more than SimPO from best to top-25% configuration": ("-0.25", "inconclusive"),
        "DPO drops more than LN-DPO from best to top-25% configuration": ("–", "not tested"),
    }
    for claim, (value, verdict) in expected.items():
        row = table_row(markdown, claim)
        assert (row[1], row[5]) == (value, verdict), claim
    assert len(summary["claims"]) == 11
    # The noise floor of each compared method stands beside the claim (seed offsets ±0.01: sd 0.01).
    assert table_row(markdown, "best score: SimPO ≥ LN-DPO")[7].endswith("Noise floor: LN-DPO 0.01; SimPO 0.01")
    # What a reader looks at first: the forest plot, then the claims table, then how the claims are made.
    claims = section(markdown, "claims")
    assert claims.index("figures/claims.png") < claims.index("| claim |") < claims.index("Configurations are picked")
    assert "Not plotted (no estimate): DPO drops more than LN-DPO" in claims
    for claim in summary["claims"]:
        assert {"claim", "verdict", "value", "ci", "p_value", "p_adjusted", "seeds", "runs", "prompts"} <= set(claim)
        if claim["verdict"] in ("confirmed", "reversed"):
            assert claim["p_adjusted"] < 0.05 and claim["p_adjusted"] >= claim["p_value"]
            assert claim["seeds"] == [0, 1, 2] and claim["prompts"] == 4
    assert next(c for c in summary["claims"] if c["claim"] == "best score: SimPO ≥ LN-DPO")["runs"] == 21
    page = (out / "report.html").read_text()
    assert page.index("Claims, with the evidence behind them</h2>") < page.index("1. Best configuration per method</h2>")


def test_best_table_names_the_best_configurations_and_the_change_vs_dpo(report):
    out, summary = report
    best = section((out / "report.md").read_text(), "best")
    # (model, configuration, reported mean gold, % change vs DPO's best) worked out by hand; a configuration is
    # named by the parameters its method's configurations differ in, and the learning rate (not by its run names).
    expected = [("SFT (baseline)", "–", BASE_REPORTED - 0.3), ("DPO", "dpo-beta0.1-lr0.0005", BASE_REPORTED),
                ("LN-DPO", "ln-dpo-beta1-lr0.0005", BASE_REPORTED + 0.25),
                ("SimPO", "simpo-beta2-gamma0.5-lr0.0005", BASE_REPORTED + 1.25)]
    for model, name, score in expected:
        row = table_row(best, model)
        assert row[1] == name and row[2].startswith(f"{score:.3f} [")
        change = "–" if model == "DPO" else f"{100 * (score - BASE_REPORTED) / BASE_REPORTED:+.1f}%"
        assert row[-2] == change, model
    assert "beta=2, gamma=0.5" in table_row(best, "SimPO")[-1]
    assert summary["best"]["simpo"]["seeds"] == [1]  # its reporting seed
    assert summary["best"]["simpo"]["mean_score_change_vs_dpo_pct"] == pytest.approx(
        100 * 1.25 / BASE_REPORTED)


def test_expected_best_of_k_and_win_matrices(report):
    _, summary = report
    simpo = summary["expected_max"]["simpo"]
    # k = 1: the grid mean (offsets 1.25, 1.0, 0.75, 0.5); k = 4: the best; k = 2: ranks weighted 0, 1/6, 2/6, 3/6.
    assert [p["k"] for p in simpo] == [1, 2, 3, 4]
    assert simpo[0]["mean"] == pytest.approx(BASE_REPORTED + 0.875)
    assert simpo[1]["mean"] == pytest.approx(BASE_REPORTED + (1.0 * 0.75 + 2 * 1.0 + 3 * 1.25) / 6)
    assert simpo[3]["mean"] == pytest.approx(BASE_REPORTED + 1.25)
    assert summary["grid"]["dpo"]["worse_than_sft"]["count"] == 1
    best = summary["win_matrices"]["best"]
    assert best["names"] == ["sft", "dpo", "ln-dpo", "simpo"]
    assert best["models"] == {"sft": None, "dpo": "dpo-beta0.1-lr0.0005", "ln-dpo": "ln-dpo-beta1-lr0.0005",
                              "simpo": "simpo-beta2-gamma0.5-lr0.0005"}
    assert best["rate"][3][:3] == [1.0, 1.0, 1.0]  # SimPO's best beats every model on every prompt
    # DPO's best (offsets −0.01, 0, 0.01) against SFT (−0.3): strict wins everywhere; against itself no ties.
    assert best["rate"][1][0] == 1.0 and best["tie"][1][0] == 0.0
    assert summary["win_matrices"]["top25"]["models"]["simpo"] == "simpo-beta2-gamma1-lr0.0005"


def test_top_k_pools_samples_and_sensitivity(report):
    _, summary = report
    lengths = summary["top_k"]["length"]
    # top 100% of SimPO: 4 configurations × 1 reporting seed (seed 1, length 41) × 4 reporting prompts.
    assert lengths["simpo"][100] == {"median": 41.0, "n_samples": 16}
    assert lengths["dpo"][1]["n_samples"] == 4 and lengths["dpo"][50]["n_samples"] == 8
    assert set(summary["top_k"]) == {"length", "kl", "ln_kl"}
    simpo = summary["sensitivity"]["simpo"]
    assert list(simpo) == ["beta", "gamma", "seed"]  # in the order the params list them


def test_every_figure_is_embedded_and_captioned(report):
    out, summary = report
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    files = sorted((out / "figures").glob("*.png"))
    assert page.count("<img ") == len(files) == len(summary["figures"]) == len(SWEEP_FIGURES)
    assert page.count("src='data:image/png;base64,") == len(SWEEP_FIGURES) and "src='figures/" not in page
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == len(SWEEP_FIGURES)
    for number, (figure, caption) in enumerate(zip(summary["figures"], captions), 1):
        name = figure["file"].removeprefix("figures/")
        assert SWEEP_FIGURES[name] in figure["caption"], name
        assert caption.startswith(f"Figure {number}. ")
        assert f"](figures/{name})" in markdown
        assert f"*Figure {number}. " in markdown
    # The embedded images are the files, byte for byte.
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert [base64.b64decode(e) for e in embedded] == [(out / f["file"]).read_bytes() for f in summary["figures"]]


@pytest.mark.slow  # seconds each: the full suite runs it, the quick loop does not
def test_same_runs_give_byte_identical_files_and_no_stale_figures(report, tmp_path):
    out, _ = report
    again = tmp_path / "again"
    # A figure of an earlier report (the single-run study's bar chart) that this report does not show,
    # listed as alignlab's in the figures' manifest, as that report left it.
    (again / "figures").mkdir(parents=True)
    (again / "figures" / "mean_score.png").write_bytes(b"old")
    (again / "figures" / ".alignlab-written.json").write_text('["mean_score.png"]')
    write_report(again, sweep_runs(), sft_record(), CONTEXT, "hand-made sweep")
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for path in written:
        assert (out / path).read_bytes() == (again / path).read_bytes(), path


def single_runs():
    """One run per method, one of them of a method the report has no label or colour for, without KL."""
    return [record("dpo-only", "dpo", {"beta": 0.1, "seed": 0}, BASE, 60.0, 0.3),
            record("simpo-only", "simpo", {"beta": 2.0, "seed": 0}, BASE + 1, 40.0, 0.1),
            record("mine-only", "mine", {"alpha": 1, "seed": 0}, BASE - 1, 30.0)]


# Independent gaps are combined in one case to keep the test fast.
@pytest.mark.slow  # seconds each: the full suite runs it, the quick loop does not
@pytest.mark.parametrize("case", ["one run per method", "no DPO, no KL", "no SFT, no samples", "no runs",
                                  "nothing at all"])
def test_degenerate_sweeps_still_give_a_report(case, tmp_path):
    runs, sft = {
        "one run per method": (single_runs(), sft_record()),
        "no DPO, no KL": (sweep_runs(("ln-dpo", "simpo"), with_kl=False), sft_record(with_kl=False)),
        "no SFT, no samples": ([RunRecord(r.name, r.method, r.params, r.metrics) for r in sweep_runs(("dpo", "simpo"))],
                               None),
        "no runs": ([], sft_record()),
        "nothing at all": ([], None),
    }[case]
    summary = write_report(tmp_path, runs, sft, {}, case)
    markdown = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img ") == len(summary["figures"]) == len(list((tmp_path / "figures").glob("*.png")))
    # The Hitchhiker claims, and for the method outside the papers ("mine") its two against DPO.
    assert markdown.count("## ") == 11 and len(summary["claims"]) == 11 + 2 * (case == "one run per method")
    if case == "one run per method":
        assert "DPO: no hyper-parameter varies across its 1 DPO run (seeds 0)." in markdown
        # A method's only configuration is named by the method alone: no parameter sets it apart.
        assert summary["win_matrices"]["top25"]["models"]["mine"] == "mine"
        # One configuration each: the top-25% pick is the best, and its matrix is not drawn twice.
        assert "the top-25% matrix would repeat the one above" in markdown
        assert "figures/win_matrix_top25.png" not in {f["file"] for f in summary["figures"]}
        assert summary["sensitivity"] == {}
        # One seed per configuration: estimates, but no verdict.
        tested = [c for c in summary["claims"] if c["value"] is not None]
        assert tested and all(c["verdict"] == "inconclusive" and c["p_adjusted"] is None for c in tested)
        assert summary["noise_floor"] == {"dpo": None, "simpo": None, "mine": None}
    if case == "no DPO, no KL":
        assert "vs best DPO" not in markdown and "no DPO runs in the sweep" in markdown
        assert summary["best"]["simpo"]["mean_score_change_vs_dpo_pct"] is None
        assert summary["best"]["simpo"]["reported"]["kl"] is None
        assert "No run has a length-normalised KL measurement." in markdown
        assert {f["file"] for f in summary["figures"]}.isdisjoint({"figures/kl_vs_score.png",
                                                                    "figures/top_k_ln_kl.png"})
    if case in ("no SFT, no samples", "nothing at all"):
        assert summary["sft"] is None and summary["selection"] is None
        assert all(c["verdict"] == "not tested" for c in summary["claims"])
    if case in ("no runs", "nothing at all"):
        assert summary["best"] == {}


# ------------------------------------------------------------------ in a real browser

@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed: apt-get install chromium")
def test_report_renders_every_figure_in_chromium(report, tmp_path):
    out, summary = report
    found = check_report_in_chromium(out / "report.html", tmp_path)
    assert len(found["images"]) == len(summary["figures"]) == len(SWEEP_FIGURES)


def test_every_verdict_has_its_own_style_in_the_html():
    from alignlab.evidence import VERDICTS
    from alignlab.report.render import HTML_STYLE

    for verdict in VERDICTS:
        assert f"td.{verdict.replace(' ', '-')}{{" in HTML_STYLE, verdict
