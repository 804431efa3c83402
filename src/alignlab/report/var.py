"""The report's VAR section (SPEC §6 items 7–10), added by `alignlab run --study var`.

    7 var-vs-dpo   best VAR vs best DPO vs SFT: mean gold and proxy reward, all / helpful / harmful
                   prompts, with CIs; the decided claims VAR ≥ DPO and VAR ≥ +7.16% over DPO (a contrast,
                   with Fieller's interval); descriptive per-family gains, head-to-head and share of
                   DPO's gain over SFT
    8 race         gold (and proxy) reward against wall-clock and training responses for VAR, DPO and
                   GRPO; time to 90% of GRPO's final improvement; the "> 5× faster than GRPO" verdict
    9 z-estimator  spread of the in-batch normaliser and weights against micro-batch size (summed and
                   length-normalised ℓref), and the final reward of each Z estimator
    10 compute     wall-clock per epoch, tokens/s and peak memory for SFT, DPO, SimPO and VAR

Built from the sweep's runs and the files of `alignlab.study.var_stages`, as sections of
alignlab.report.blocks.
"""

from __future__ import annotations

import numpy as np

from alignlab.analysis import (VAR_PAPER_GAIN_PCT, VAR_PAPER_SPEEDUP, RunRecord, best_run, convergence_race,
                               reward_by_family, var_vs_dpo_descriptives)
from alignlab.analysis.runs import method_label
from alignlab.analysis.var import VAR_BEATS_DPO, VAR_EXPECTED, VAR_PAPER_GAIN, VAR_PAPER_RATIO
from alignlab.evidence import estimate
from alignlab.report.blocks import (BASELINE, BASELINE_COLOR, BASELINE_KEY, Cell, Plot, Section, Sweep, Table,
                                    format_or_dash, params_text)
from alignlab.report.figures import legend_beside, new_figure, png_bytes

RACE_COLORS = {"var": "#9467bd", "dpo": "#1f77b4", "grpo": "#d62728"}
RACE_LABELS = {"grpo": "GRPO"}
Z_VARIANTS = {"summed": "summed ℓref", "length_normalised": "length-normalised ℓref/|y|"}


def _race_label(method: str) -> str:
    return RACE_LABELS.get(method) or method_label(method)


def _verdict_cell(verdict: str) -> Cell:
    return Cell(verdict, css="verdict " + verdict.replace(" ", "-"))


def _mean_cell(entry: dict | None) -> Cell:
    if entry is None:
        return Cell("–")
    return Cell(f"{entry['mean']:.3f}", f"[{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")


# ------------------------------------------------------------------ 7. VAR vs DPO vs SFT

def comparison_section(sweep: Sweep) -> tuple[Section, dict]:
    section = Section("var-vs-dpo", "7. VAR vs DPO vs SFT, helpful and harmful prompts")
    ev = sweep.evidence
    if not ev.by_method.get("var") or not ev.by_method.get("dpo"):
        section.blocks.append("Not tested: the sweep needs finished VAR and DPO runs.")
        return section, {"decided": [], "claims": [], "descriptive": None}
    best = {m: ev.picked(best_run(ev.by_method[m])) for m in ("dpo", "var")}
    models = ([(BASELINE, None)] if ev.sft is not None else []) + [(method_label(m), best[m]) for m in best]
    keys = ([BASELINE_KEY] if ev.sft is not None else []) + list(best)  # summary.json's names
    by_model = {name: reward_by_family(ev, config, sweep.families) for name, config in models}
    groups = list(next(iter(by_model.values())))
    rows = []
    for name, config in models:
        for group in groups:
            entry = by_model[name][group]
            label = "–" if config is None else config.name
            rows.append([name if group == groups[0] else "", Cell(label if group == groups[0] else "", css="name"),
                         group, str(entry["n"]), _mean_cell(entry["gold"]), _mean_cell(entry["proxy"])])
    claims = [c for c in sweep.claims if c["claim"] in (VAR_EXPECTED, VAR_BEATS_DPO, VAR_PAPER_GAIN)]
    described = var_vs_dpo_descriptives(ev, sweep.families)
    section.blocks += [
        ("Each method's best configuration (picked on the selection half and its ranking seeds) against the SFT "
         "model it started from: mean gold reward (what judges) and mean proxy reward (what VAR's weights and "
         "GRPO's advantages saw) on the reporting half, over all prompts and per family, each the mean over the "
         "configuration's reporting seeds (all its seeds where the method has one configuration) with a "
         "two-level bootstrap 95% CI."),
        Table(["model", "configuration", "prompts", "n", "mean gold reward", "mean proxy reward"], rows),
        Plot("var_vs_dpo.png", family_figure(by_model, groups),
             "Mean gold and proxy reward by prompt family",
             "Mean gold (left) and proxy (right) reward of SFT and the best DPO and VAR configurations, per prompt "
             "family; bars are two-level bootstrap 95% CIs."),
        (f"The VAR paper reports VAR's average reward {VAR_PAPER_GAIN_PCT:.2f}% above DPO's. Three claims are decided "
         "(with every claim of the report, Holm-adjusted within its family), all over the reporting prompts, paired "
         "on them: VAR's grid mean − DPO's (every configuration's every seed; the primary claim of the default "
         "study), and on the mean gold V of VAR's best configuration and D of DPO's best (each reported on its "
         "reporting seeds only): VAR − DPO > 0, and the paper's percentage as the "
         f"linear contrast V − {VAR_PAPER_RATIO:.4f}·D > 0 (reversed: the gain is significantly below "
         f"{VAR_PAPER_GAIN_PCT:.2f}%), with Fieller's 95% interval for the gain 100·(V/D − 1). The world's gold "
         "reward has an arbitrary zero (SFT's mean is not 0, and moving the zero changes every percentage), so "
         "the percentage is tested only where D is significantly above 0, and is \"not tested\" otherwise."),
        Table(["claim", "statistic", "value", "95% CI", "gain (Fieller 95% CI)", "p (Holm)", "verdict", "detail"],
              [_claim_row(c) for c in claims])]
    if described is not None:
        section.blocks += [
            ("Descriptive only (no verdict, no correction), and free of the gold reward's zero except the "
             "percentages: the gain per prompt family (the paper's per-family numbers), VAR's head-to-head record "
             "against DPO on per-prompt gold, and VAR's gain over DPO as a share of DPO's gain over SFT."),
            Table(["description", "value", "95% CI"], _descriptive_rows(described))]
    summary = {"decided": [c["claim"] for c in claims], "claims": claims, "descriptive": described,
               "models": {key: {"configuration": None if c is None else c.name, "rewards": by_model[name]}
                          for key, (name, c) in zip(keys, models)}}
    return section, summary


def _interval_text(interval: list | None, fmt: str) -> str:
    return "unbounded" if interval is None else f"[{fmt.format(interval[0])}, {fmt.format(interval[1])}]"


def _claim_row(claim: dict) -> list:
    fieller = claim.get("fieller")
    gain = ("–" if fieller is None else
            Cell(f"{fieller['gain_pct']:+.2f}%", _interval_text(fieller["ci"], "{:+.2f}%")))
    return [Cell(claim["claim"], css="text"), Cell(claim["statistic"], css="note"),
            format_or_dash(claim["value"], "{:+.4g}"), "–" if claim["ci"] is None else
            _interval_text(claim["ci"], "{:+.4g}"), gain, format_or_dash(claim["p_adjusted"], "{:.3f}"),
            _verdict_cell(claim["verdict"]), Cell(claim["detail"], css="note")]


def _descriptive_rows(described: dict) -> list:
    rows = [[f"gain of VAR over DPO, {family} prompts, 100·(V/D − 1)", f"{g['gain_pct']:+.2f}%",
             _interval_text(g["ci"], "{:+.2f}%")] for family, g in described["gain_by_family"].items()]
    h2h = described["head_to_head"]
    rows.append([f"VAR vs DPO head-to-head over {h2h['prompts']} prompts: win / tie / loss",
                 f"{h2h['win']:.1%} / {h2h['tie']:.1%} / {h2h['loss']:.1%}",
                 f"win {_interval_text(h2h['win_ci'], '{:.1%}')}, loss {_interval_text(h2h['loss_ci'], '{:.1%}')}"])
    share = described["share_of_dpo_gain"]
    if share is not None:
        rows.append(["(V − D)/(D − SFT): VAR's gain over DPO as a share of DPO's gain over SFT",
                     format_or_dash(share["value"], "{:+.2f}"), _interval_text(share["ci"], "{:+.2f}")])
    return rows


def family_figure(by_model: dict, groups: list[str]) -> bytes:
    fig = new_figure(8.4, 3.4)
    axes = fig.subplots(1, 2)
    colors = {BASELINE: BASELINE_COLOR, "DPO": RACE_COLORS["dpo"], "VAR": RACE_COLORS["var"]}
    width = 0.8 / len(by_model)
    for ax, which in zip(axes, ("gold", "proxy")):
        for i, (name, rewards) in enumerate(by_model.items()):
            entries = [rewards[g][which] for g in groups]
            if any(e is None for e in entries):
                continue
            x = np.arange(len(groups)) + (i - (len(by_model) - 1) / 2) * width
            means = np.array([e["mean"] for e in entries])
            errors = np.array([[m - e["ci_low"] for m, e in zip(means, entries)],
                               [e["ci_high"] - m for m, e in zip(means, entries)]])
            ax.bar(x, means, width, color=colors.get(name, "#999999"), alpha=0.8, label=name)
            ax.errorbar(x, means, yerr=errors, fmt="none", ecolor="black", lw=1, capsize=2)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_ylabel(f"mean {which} reward")
        ax.axhline(0, color="black", lw=0.6)
    legend_beside(axes[1] if axes[1].get_legend_handles_labels()[0] else axes[0])
    return png_bytes(fig)


# ------------------------------------------------------------------ 8. convergence race

def _race_curves(race: dict, start: dict, column: str) -> dict:
    """Each method's points, after a first one at the end of its setup still at the start's reward:
    time spent loading, scoring and computing reference log-probs brings no improvement."""
    return {method: [{"seconds": curve["setup_seconds"], "samples": 0, **start}] + [
        {"seconds": p["seconds"], "samples": p["samples"], "prompt_id": np.array(p["prompt_id"]),
         "gold_score": np.array(p[column], dtype=np.float64)} for p in curve["points"]]
        for method, curve in race["methods"].items()}


def race_section(race: dict, sft: RunRecord | None) -> tuple[Section, dict]:
    section = Section("race", "8. Convergence race: VAR, DPO and GRPO")
    if sft is None or "proxy_score" not in sft.samples:
        section.blocks.append("Not tested: the race starts from the SFT model's evaluation, with proxy scores.")
        return section, {}
    results = {}
    for column in ("gold_score", "proxy_score"):
        start = {"prompt_id": sft.samples["prompt_id"], "gold_score": sft.samples[column]}
        reward = column.split("_")[0]
        results[reward] = convergence_race(_race_curves(race, start, column), start, reward=reward)
    rows = []
    for method, curve in race["methods"].items():
        gold, proxy = results["gold"]["methods"][method], results["proxy"]["methods"][method]
        rows.append([_race_label(method), Cell(params_text(curve["params"]), css="note"), str(curve["batch_size"]),
                     f"{curve['setup_seconds']:.1f}", f"{curve['points'][-1]['seconds']:.1f}",
                     str(curve["points"][-1]["samples"]), f"{gold['final_reward']:.3f}",
                     format_or_dash(gold["seconds_to_target"], "{:.1f}"),
                     format_or_dash(gold["samples_to_target"], "{:.0f}"),
                     f"{proxy['final_reward']:.3f}", format_or_dash(proxy["seconds_to_target"], "{:.1f}")])
    verdict_rows = []
    for which, result in results.items():
        speedup, ratio = result["speedup"], result["samples_ratio"]
        verdict_rows.append([
            f"VAR reaches 90% of GRPO's final {which}-reward gain more than {VAR_PAPER_SPEEDUP:g}× faster",
            f"{result['start_reward']:.3f} → {result['grpo_final']:.3f}",
            "–" if result["verdict"] == "not tested" else format_or_dash(result["target"], "{:.3f}"),
            Cell(format_or_dash(speedup and speedup["value"], "{:.2f}×"),
                 f"[{speedup['ci_low']:.2f}, {speedup['ci_high']:.2f}]" if speedup else ""),
            Cell(format_or_dash(ratio and ratio["value"], "{:.2f}×"),
                 f"[{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}]" if ratio else ""),
            _verdict_cell(result["verdict"]), Cell(result["reason"], css="note")])
    section.blocks += [
        ("VAR, DPO and GRPO trained from the SFT model, each with a model snapshot at regular steps, every snapshot "
         f"evaluated on the same {race['test_prompts']} test prompts. Wall-clock counts each run's one-off work "
         "(loading, reward scoring, reference log-probs: every race run starts with an empty cache) plus training, "
         "not evaluation; samples are training responses seen (2 per pair offline, G per prompt for GRPO). "
         "GRPO optimises the proxy reward; the paper's claim is about the reward, tested here on gold (what "
         "judges) and on proxy (what GRPO climbs)."),
        Plot("race.png", race_figure(race, sft, results), "Convergence race",
             "Mean gold (top) and proxy (bottom) reward against training wall-clock (left) and training responses "
             "(right); the SFT model at 0; dashed: 90% of GRPO's final gain over SFT."),
        Table(["method", "hyper-parameters", "batch", "setup s", "total s", "responses", "final gold",
               "s to gold target", "responses to gold target", "final proxy", "s to proxy target"], rows),
        ("The target is the SFT reward plus 90% of GRPO's final gain over it (a fraction of the gain, not of the "
         "reward, since rewards can be negative); a method's time to it is interpolated linearly between "
         "evaluation points. Speedup = GRPO's time to target ÷ VAR's; CIs bootstrap the test prompts (2000 "
         "resamples). Verdict: confirmed when the CI lies above 5, reversed when below 1, inconclusive otherwise, "
         "not tested when GRPO does not improve on SFT."),
        Table(["claim", "SFT → GRPO final", "target", "speedup (wall-clock)", "ratio (responses)", "verdict",
               "why"], verdict_rows)]
    return section, results


def race_figure(race: dict, sft: RunRecord, results: dict) -> bytes:
    fig = new_figure(8.4, 5.6)
    axes = fig.subplots(2, 2, sharey="row")
    for row, which in enumerate(("gold", "proxy")):
        start = float(np.mean(sft.samples[f"{which}_score"]))
        for col, axis in enumerate(("seconds", "samples")):
            ax = axes[row][col]
            for method, curve in race["methods"].items():
                setup = [0, curve["setup_seconds"]] if axis == "seconds" else [0]
                xs = setup + [p[axis] for p in curve["points"]]
                ys = [start] * len(setup) + [float(np.mean(p[f"{which}_score"])) for p in curve["points"]]
                ax.plot(xs, ys, marker="o", ms=3, color=RACE_COLORS.get(method, "#999999"), label=_race_label(method))
            if results[which]["verdict"] != "not tested":
                ax.axhline(results[which]["target"], color=BASELINE_COLOR, lw=0.8, ls="--")
            ax.set_xlabel("training wall-clock (s)" if axis == "seconds" else "training responses")
            if col == 0:
                ax.set_ylabel(f"mean {which} reward")
    legend_beside(axes[0][1])
    return png_bytes(fig)


# ------------------------------------------------------------------ 9. Z estimators

def z_section(sweep: Sweep, z: dict | None) -> tuple[Section, dict]:
    section = Section("z-estimator", "9. VAR's normaliser Z: variance against micro-batch size, and estimators")
    summary = {}
    if z is not None:
        rows = []
        for variant, name in Z_VARIANTS.items():
            for entry in z[variant]:
                rows.append([name, str(entry["batch_size"]), f"{entry['log_z_mean']:.3f}", f"{entry['log_z_sd']:.3f}",
                             f"{entry['weight_sd']:.3f}", f"{entry['ess_fraction']:.3f}", f"{entry['max_weight']:.3f}"])
        section.blocks += [
            (f"The in-batch estimate log Ẑ_B = log(1/b · Σ_B exp(ℓref + r/λ)) and the weights "
             f"ω = softmax_B(ℓref + r/λ) over 200 random micro-batches of b of the {z['responses']} training responses (chosen and rejected "
             f"alike), at λ = {z['lam']:g}, with the proxy reward model's r. sd b·ω is 0 for uniform weights; the "
             "effective sample size fraction (1/Σω²)/b is 1 for uniform weights and 1/b when one response takes "
             "all."),
            Plot("z_variance.png", z_figure(z), "Normaliser spread against micro-batch size",
                 "Left: sd of log Ẑ_B across micro-batches; right: effective sample size fraction of the weights; "
                 "summed and length-normalised reference log-probs."),
            Table(["ℓref", "micro-batch b", "mean log Ẑ_B", "sd log Ẑ_B", "sd b·ω", "ESS / b", "mean max ω"],
                  rows)]
        summary["variance"] = z
    ev = sweep.evidence
    groups: dict[tuple, list] = {}
    for config in ev.by_method.get("var", []):
        key = (config.params.get("z_estimator", "batch"), bool(config.params.get("length_normalize", False)))
        groups.setdefault(key, []).append(config)
    # Each variant's best λ, reported on its reporting seeds; a variant of one λ picks nothing: every seed.
    variants = {key: ev.picked(best_run(configs)) if len(configs) > 1 else configs[0]
                for key, configs in groups.items()}

    def reported(config, column):
        if not config.has(column):
            return None
        return estimate(ev.mean(config, column))

    rows, estimators = [], []
    for (estimator, normalised), config in sorted(variants.items()):
        gold, proxy, ln_kl = (reported(config, c) for c in ("gold_score", "proxy_score", "ln_kl"))
        rows.append([estimator, "length-normalised" if normalised else "summed", Cell(config.name, css="name"),
                     Cell(f"{gold.value:.3f}", f"[{gold.ci[0]:.3f}, {gold.ci[1]:.3f}]"),
                     format_or_dash(proxy and proxy.value, "{:.3f}"), format_or_dash(ln_kl and ln_kl.value, "{:.3f}")])
        estimators.append({"z_estimator": estimator, "length_normalize": normalised, "configuration": config.name,
                           "mean_score": gold.value, "ci": list(gold.ci)})
    if rows:
        section.blocks += [
            ("Final reward of each Z estimator (batch: the micro-batch, the paper's; prompt: the responses to one "
             "prompt; sampled: K responses per prompt sampled from the reference), with summed and length-normalised "
             "ℓref: the best configuration of each variant over the grid's λ values (picked on the selection half "
             "and its ranking seeds), mean gold reward on the reporting half over its reporting seeds (every seed "
             "where the variant has one λ) with a two-level bootstrap 95% CI."),
            Table(["Z estimator", "ℓref", "best configuration", "mean gold reward", "mean proxy reward",
                   "length-norm. KL"], rows)]
        summary["estimators"] = estimators
    if not section.blocks:
        section.blocks.append("Not measured: the study has no VAR runs.")
    return section, summary


def z_figure(z: dict) -> bytes:
    fig = new_figure(8.4, 3.2)
    axes = fig.subplots(1, 2)
    for variant, name in Z_VARIANTS.items():
        sizes = [e["batch_size"] for e in z[variant]]
        axes[0].plot(sizes, [e["log_z_sd"] for e in z[variant]], marker="o", label=name)
        axes[1].plot(sizes, [e["ess_fraction"] for e in z[variant]], marker="o", label=name)
    sizes = [e["batch_size"] for e in z["summed"]]
    for ax, ylabel in zip(axes, ("sd of log Ẑ_B", "ESS / b")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
        ax.set_xlabel("micro-batch size b")
        ax.set_ylabel(ylabel)
    legend_beside(axes[1])
    return png_bytes(fig)


# ------------------------------------------------------------------ 10. compute profile

def compute_section(compute: dict) -> tuple[Section, dict]:
    section = Section("compute", "10. Compute profile: SFT, DPO, SimPO, VAR")
    rows = [[method_label(r["method"]), f"{r['epoch_seconds']:.2f}", f"{r['tokens_per_second']:,.0f}",
             f"{r['peak_memory_mb']:,.0f}", format_or_dash(r["training_rss_peak_mb"], "{:,.0f}"),
             format_or_dash(r["training_rss_added_mb"], "{:+,.0f}"), str(r["pairs"]), str(r["steps"])]
            for r in compute["rows"]]
    memory = compute["rows"][0]["memory"] if compute["rows"] else "peak memory"
    section.blocks += [
        (f"One epoch of each method on the same training pairs, one after another, each in a fresh process on "
         f"{compute['device']} (so its {memory} is its own), reference log-probs and rewards read from the cache: "
         "the training loop's cost. Tokens are those of the rows each method trains on (prompt + chosen for SFT, "
         "prompt + chosen and prompt + rejected otherwise). The process's lifetime peak is often reached while "
         "the libraries load; the resident set sampled every 5 ms during training, and its rise over the "
         "resident set just before training, show what the method itself costs."),
        Table(["method", "s per epoch", "tokens/s", f"{memory} (MB)", "RSS peak in training (MB)",
               "RSS added by training (MB)", "pairs", "optimizer steps"], rows)]
    return section, compute


def var_sections(sweep: Sweep, race: dict | None, z: dict | None,
                 compute: dict | None) -> tuple[list[Section], dict]:
    """The VAR section's parts, in SPEC order, and their summary for summary.json."""
    sections, summary = [], {}
    section, summary["var_vs_dpo"] = comparison_section(sweep)
    sections.append(section)
    if race is not None:
        section, summary["race"] = race_section(race, sweep.sft)
        sections.append(section)
    section, summary["z_estimator"] = z_section(sweep, z)
    sections.append(section)
    if compute is not None:
        section, summary["compute"] = compute_section(compute)
        sections.append(section)
    return sections, summary
