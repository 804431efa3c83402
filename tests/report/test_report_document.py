"""The sweep's robustness report (alignlab.report.document) on hand-made sweeps with known answers.

The sweep: 8 test prompts whose gold scores are BASE + a per-run offset, so every score, best run,
% change and most claim verdicts can be worked out by hand. SFT scores 2.2; DPO runs 2.0, 2.5, 2.25;
LN-DPO 2.75, 2.25, 2.5; SimPO 3.75, 3.5, 3.25, 3.0 (uniformly above the others on every prompt, and
shorter, with a smaller length-normalised KL).
"""

import base64
import json
import re

import numpy as np
import pytest

from alignlab.analysis import RunRecord
from alignlab.evaluation.metrics import summarize
from alignlab.report.document import write_report
from conftest import CHROMIUM, check_report_in_chromium

PROMPTS = [f"p{i}" for i in range(8)]
BASE = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0])  # mean 2.5
SPREAD = np.linspace(-0.02, 0.02, 8)  # mean 0: per-prompt variation of length-normalised KL

# method -> (length, length-normalised KL, [(run params, gold offset)])
GRID = {
    "dpo": (60.0, 0.30, [({"beta": 0.01, "seed": 0}, -0.5), ({"beta": 0.1, "seed": 1}, 0.0),
                         ({"beta": 0.5, "seed": 0}, -0.25)]),
    "ln-dpo": (50.0, 0.10, [({"beta": 1.0, "seed": 0}, 0.25), ({"beta": 2.0, "seed": 1}, -0.25),
                            ({"beta": 5.0, "seed": 0}, 0.0)]),
    "simpo": (40.0, 0.05, [({"beta": 2.0, "gamma": 0.5, "seed": 0}, 1.25),
                           ({"beta": 2.0, "gamma": 1.0, "seed": 1}, 1.0),
                           ({"beta": 2.5, "gamma": 0.5, "seed": 1}, 0.75),
                           ({"beta": 2.5, "gamma": 1.0, "seed": 0}, 0.5)]),
}
SFT_GOLD = BASE - 0.3  # score 2.2


def record(name, method, params, gold, length, ln_kl=None, sft_gold=SFT_GOLD):
    """A RunRecord whose metrics come from metrics.summarize of its per-sample columns."""
    lengths = np.full(len(PROMPTS), length)
    kl = None if ln_kl is None else (ln_kl + SPREAD) * lengths
    metrics = summarize({"gold_score": gold, "chosen_score": BASE, "sft_score": sft_gold, "length": lengths,
                         "kl": kl, "ln_kl": None if kl is None else kl / lengths})
    samples = {"prompt_id": np.array(PROMPTS), "gold_score": gold, "length": lengths}
    if kl is not None:
        samples.update(kl=kl, ln_kl=kl / lengths)
    return RunRecord(name, method, params, metrics, samples)


def sweep_runs(methods=("dpo", "ln-dpo", "simpo"), with_kl=True):
    runs = []
    for method in methods:
        length, ln_kl, grid = GRID[method]
        for params, offset in grid:
            name = f"{method}-" + "-".join(f"{k}{v}" for k, v in params.items())
            runs.append(record(name, method, {"learning_rate": 5e-4, "epochs": 1, **params},
                               BASE + offset, length, ln_kl if with_kl else None))
    return runs


def sft_record(with_kl=True):
    return record("sft", "sft", {"seed": 0}, SFT_GOLD, 70.0, 0.0 if with_kl else None, sft_gold=None)


CONTEXT = {"world": "hand-made", "runs": "10 finished, 0 failed", "failed runs": []}
SWEEP_FIGURES = {  # figure -> the run count its caption must name
    "expected_performance.png": "10 runs (DPO 3, LN-DPO 3, SimPO 4; seeds 0, 1)",
    "win_matrix_best.png": "chosen among 10 runs (DPO 3, LN-DPO 3, SimPO 4; seeds 0, 1)",
    "win_matrix_top25.png": "chosen among 10 runs (DPO 3, LN-DPO 3, SimPO 4; seeds 0, 1)",
    "top_k_length.png": "Drawn from 10 runs (DPO 3, LN-DPO 3, SimPO 4; seeds 0, 1)",
    "top_k_ln_kl.png": "Drawn from 10 runs (DPO 3, LN-DPO 3, SimPO 4; seeds 0, 1)",
    "kl_vs_score.png": "10 runs (DPO 3, LN-DPO 3, SimPO 4; seeds 0, 1).",
    "sensitivity_dpo.png": "3 DPO runs (seeds 0, 1)",
    "sensitivity_ln-dpo.png": "3 LN-DPO runs (seeds 0, 1)",
    "sensitivity_simpo.png": "4 SimPO runs (seeds 0, 1)",
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
    assert summary["context"] == CONTEXT
    assert [r["run"] for r in summary["runs"]][:2] == ["sft", "dpo-beta0.1-seed1"]  # SFT, then best first


def test_report_opens_with_the_claims_and_their_verdicts(report):
    out, summary = report
    markdown = (out / "report.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings[0] == "Claims of the Hitchhiker study" and headings[-1] == "All runs"
    expected = {
        # SimPO's best is 1.0 above LN-DPO's best and LN-DPO's 0.25 above DPO's on every prompt.
        "best score: SimPO ≥ LN-DPO": ("+1", "confirmed"),
        "best score: LN-DPO ≥ DPO": ("+0.25", "confirmed"),
        # Every SimPO run beats every LN-DPO run: grid means 3.375 vs 2.5 in any resample.
        "expected score: SimPO ≥ LN-DPO": ("+0.875", "confirmed"),
        "SimPO responses shorter than DPO's": ("+20", "confirmed"),
        "LN-DPO closer to SFT in length-normalised KL than DPO": ("+0.2", "confirmed"),
        # Top-25% of 3 runs is the best run (drop 0); of SimPO's 4 the second best (drop 0.25).
        "DPO drops more than SimPO from best to top-25% run": ("-0.25", "reversed"),
        "DPO drops more than LN-DPO from best to top-25% run": ("+0", "not confirmed"),
    }
    for claim, (value, verdict) in expected.items():
        cells = table_row(markdown, claim)
        assert (cells[2], cells[4]) == (value, verdict), claim
    assert len(summary["claims"]) == 11
    page = (out / "report.html").read_text()
    assert page.count("<td class='verdict confirmed'>confirmed</td>") == 7  # 5 above, LN-DPO shorter, SimPO KL
    assert page.count("<td class='verdict reversed'>reversed</td>") == 1
    assert page.index("Claims of the Hitchhiker study</h2>") < page.index("1. Best run per method</h2>")


def test_best_run_table_names_the_best_runs_and_the_change_vs_dpo(report):
    out, summary = report
    markdown = (out / "report.md").read_text()
    # (model, run, mean score, % change of mean score vs DPO's best 2.5) worked out by hand.
    expected = [("SFT (baseline)", "sft", "2.200", "-12.0%"), ("DPO", "dpo-beta0.1-seed1", "2.500", "–"),
                ("LN-DPO", "ln-dpo-beta1.0-seed0", "2.750", "+10.0%"),
                ("SimPO", "simpo-beta2.0-gamma0.5-seed0", "3.750", "+50.0%")]
    lines = markdown.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | run | mean gold score"))
    assert "Δ mean score vs best DPO" in lines[header]
    for line, (model, name, score, change) in zip(lines[header + 2:], expected):
        row = cells(line)
        assert row[:2] == [model, name] and row[2].startswith(score + " [") and row[8] == change
    assert "beta=2, gamma=0.5, seed=0" in table_row(section(markdown, "best"), "SimPO")[-1]
    assert summary["best"]["simpo"]["mean_score_change_vs_dpo_pct"] == pytest.approx(50.0)
    assert summary["sft"]["mean_score_change_vs_dpo_pct"] == pytest.approx(-12.0)
    assert "mean_score_change_vs_dpo_pct" not in summary["best"]["dpo"]


def test_expected_performance_and_win_matrices(report):
    out, summary = report
    markdown = (out / "report.md").read_text()
    # DPO 2.0, 2.5, 2.25 against SFT's 2.2: one run of three is worse.
    expected = section(markdown, "expected")
    assert table_row(expected, "DPO")[1:4] == ["3", "2.250 [2.000, 2.500]", "2.250"]
    assert summary["expected_performance"]["dpo"]["worse_than_sft"]["count"] == 1
    assert table_row(expected, "SimPO")[1] == "4" and table_row(expected, "SimPO")[-1].startswith("0/4 = 0% [")
    best = summary["win_matrices"]["best"]
    assert best["names"] == ["SFT (baseline)", "DPO", "LN-DPO", "SimPO"]
    assert best["models"]["SimPO"] == "simpo-beta2.0-gamma0.5-seed0"
    assert best["rate"][3][:3] == [1.0, 1.0, 1.0]  # SimPO's best beats every model on every prompt
    assert summary["win_matrices"]["top25"]["models"]["SimPO"] == "simpo-beta2.0-gamma1.0-seed1"
    assert "| best run: row beats column | SFT (baseline) | DPO | LN-DPO | SimPO |" in markdown


def test_top_k_medians_and_sensitivity(report):
    _, summary = report
    lengths = summary["top_k"]["length"]
    assert lengths["simpo"][100] == {"median": 40.0, "n_runs": 4, "values": [40.0] * 4}
    assert lengths["dpo"][5]["n_runs"] == 1 and lengths["dpo"][50]["n_runs"] == 2
    simpo = summary["sensitivity"]["simpo"]
    assert list(simpo) == ["beta", "gamma", "seed"]  # in the order the params list them
    # gamma 0.5: runs at 3.75 and 3.25; gamma 1.0: 3.5 and 3.0.
    assert [(s["value"], s["mean"], s["min"], s["max"]) for s in simpo["gamma"]["mean_score"]] == [
        (0.5, 3.5, 3.25, 3.75), (1.0, 3.25, 3.0, 3.5)]


def test_every_figure_is_embedded_and_captioned_with_its_run_count(report):
    out, summary = report
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    files = sorted((out / "figures").glob("*.png"))
    assert page.count("<img ") == len(files) == len(summary["figures"]) == 9
    assert page.count("src='data:image/png;base64,") == 9 and "src='figures/" not in page
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 9
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
    # A figure of an earlier report (the single-run study's bar chart) that this report does not show.
    (again / "figures").mkdir(parents=True)
    (again / "figures" / "mean_score.png").write_bytes(b"old")
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
    assert markdown.count("## ") == 8 and len(summary["claims"]) == 11
    if case == "one run per method":
        assert "DPO: no hyper-parameter varies across its 1 DPO run (seeds 0)." in markdown
        assert summary["win_matrices"]["top25"]["models"]["mine"] == "mine-only"
        assert summary["sensitivity"] == {}
        assert "2 runs (DPO 1, SimPO 1; seeds 0); 1 run(s) without a KL measurement left out." in markdown
    if case == "no DPO, no KL":
        assert "vs best DPO" not in markdown and "no DPO runs in the sweep" in markdown
        assert "mean_score_change_vs_dpo_pct" not in summary["best"]["simpo"]
        assert table_row(section(markdown, "best"), "SimPO")[5:7] == ["–", "–"]  # KL, length-normalised KL
        assert "No run has a length-normalised KL measurement." in markdown
        assert {f["file"] for f in summary["figures"]}.isdisjoint({"figures/kl_vs_score.png",
                                                                    "figures/top_k_ln_kl.png"})
    if case in ("no SFT, no samples", "nothing at all"):
        assert "runs worse than SFT" not in markdown and summary["sft"] is None
    if case == "no SFT, no samples":
        assert "needs per-sample gold scores" in markdown and summary["win_matrices"]["best"] is None
        assert "no SFT run to compare against" in markdown
    if case in ("no runs", "nothing at all"):
        assert "No finished runs." in markdown and summary["best"] == {}


# ------------------------------------------------------------------ in a real browser

@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed: apt-get install chromium")
def test_report_renders_every_figure_in_chromium(report, tmp_path):
    out, summary = report
    found = check_report_in_chromium(out / "report.html", tmp_path)
    assert len(found["images"]) == len(summary["figures"]) == 9
