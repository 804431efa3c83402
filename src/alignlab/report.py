"""The study report: `summary.json`, `report.md` and `report.html` (plots embedded) in one directory.

Layout of SPEC §6.1 (Hitchhiker Table 1): one row per model (SFT and each method's run), every
metric with its bootstrap 95% CI, and the % change of each method's mean score vs DPO. A second
table compares each method with SFT on the same prompts: the mean per-prompt gold difference with a
paired bootstrap CI, and a verdict that only says "better" or "worse" when the CI excludes 0.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignlab import atomic
from alignlab.metrics import bootstrap_ci

METRICS = [  # key, column title, format, higher is better
    ("mean_score", "mean gold score", "{:.3f}", True),
    ("win_vs_chosen", "win vs chosen", "{:.1%}", True),
    ("win_vs_sft", "win vs SFT", "{:.1%}", True),
    ("kl", "KL to SFT", "{:.2f}", False),
    ("ln_kl", "length-norm. KL", "{:.3f}", False),
    ("length", "length (tokens)", "{:.1f}", None),
]


@dataclass
class ModelEntry:
    name: str  # "sft", "dpo", ...
    metrics: dict  # metric -> {"value", "ci_low", "ci_high"} (None where not applicable)
    gold_by_prompt: dict[str, float]  # prompt id -> gold score of this model's response
    params: dict = field(default_factory=dict)
    run_dir: str | None = None


def _cell(metric: dict | None, fmt: str) -> str:
    if not metric or metric.get("value") is None:
        return "–"
    return f"{fmt.format(metric['value'])} [{fmt.format(metric['ci_low'])}, {fmt.format(metric['ci_high'])}]"


def pct_change(value: float, baseline: float) -> float | None:
    if baseline == 0:
        return None
    return 100.0 * (value - baseline) / abs(baseline)


def paired_difference(entry: ModelEntry, baseline: ModelEntry, seed: int = 0) -> dict:
    """Mean per-prompt gold difference vs the baseline on shared prompts, with a bootstrap 95% CI."""
    shared = sorted(set(entry.gold_by_prompt) & set(baseline.gold_by_prompt))
    diff = np.array([entry.gold_by_prompt[k] - baseline.gold_by_prompt[k] for k in shared])
    low, high = bootstrap_ci(diff, seed=seed)
    verdict = "better" if low > 0 else "worse" if high < 0 else "indistinguishable"
    return {"mean_difference": float(diff.mean()), "ci_low": float(low), "ci_high": float(high),
            "prompts": len(shared), "verdict": verdict}


def build_summary(entries: list[ModelEntry], context: dict) -> dict:
    by_name = {e.name: e for e in entries}
    dpo = by_name.get("dpo")
    sft = by_name.get("sft")
    models = {}
    for entry in entries:
        row = {key: entry.metrics.get(key) for key, *_ in METRICS}
        row["params"] = entry.params
        row["run_dir"] = entry.run_dir
        if dpo is not None and entry.name != "dpo":
            row["mean_score_change_vs_dpo_pct"] = pct_change(entry.metrics["mean_score"]["value"],
                                                             dpo.metrics["mean_score"]["value"])
        if sft is not None and entry.name != "sft":
            row["vs_sft"] = paired_difference(entry, sft)
        models[entry.name] = row
    return {"context": context, "models": models}


def result_tables(summary: dict) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of each table, rendered below as Markdown and as HTML."""
    header = ["model", *[title for _, title, _, _ in METRICS], "Δ mean score vs DPO"]
    rows = []
    for name, row in summary["models"].items():
        change = row.get("mean_score_change_vs_dpo_pct")
        rows.append([name, *[_cell(row[key], fmt) for key, _, fmt, _ in METRICS],
                     "–" if change is None else f"{change:+.1f}%"])
    tables = [(header, rows)]
    vs_sft = [(name, row["vs_sft"]) for name, row in summary["models"].items() if "vs_sft" in row]
    if vs_sft:
        tables.append((["method", "mean gold − SFT (paired, per prompt)", "95% CI", "prompts", "verdict"],
                       [[name, f"{d['mean_difference']:+.3f}", f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
                         str(d["prompts"]), d["verdict"]] for name, d in vs_sft]))
    return tables


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _html_cell(text: str) -> str:
    """A value with its CI ("v [lo, hi]") shows the CI on a second, quieter line."""
    value, bracket, interval = text.partition(" [")
    if not bracket:
        return f"<td>{html.escape(text)}</td>"
    return f"<td>{html.escape(value)}<br><span class=ci>[{html.escape(interval)}</span></td>"


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def score_figure(summary: dict) -> bytes:
    """Bar chart of mean gold score per model with 95% CI error bars, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["models"])
    scores = [summary["models"][n]["mean_score"] for n in names]
    values = [s["value"] for s in scores]
    errors = [[v - s["ci_low"] for v, s in zip(values, scores)], [s["ci_high"] - v for v, s in zip(values, scores)]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    colors = ["#888888" if n == "sft" else "#3b6ea8" for n in names]
    ax.bar(names, values, yerr=errors, capsize=4, color=colors)
    ax.set_ylabel("mean gold score")
    ax.axhline(values[names.index("sft")] if "sft" in names else 0, color="#888888", lw=0.8, ls="--")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2rem auto;
padding:0 1rem;color:#1d232a;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e3e6ea;padding-bottom:.3rem}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #d5d9de;padding:.35rem .6rem;text-align:right}th{background:#f3f5f7}
td:first-child,th:first-child{text-align:left;font-weight:600;white-space:nowrap}
.ci{font-size:.78rem;color:#6b7580;white-space:nowrap}
figure{margin:1rem 0}figcaption{font-size:.85rem;color:#55606b;max-width:640px}
.context{font-size:.85rem;color:#55606b}
"""


def write_report(out_dir: str | Path, entries: list[ModelEntry], context: dict, title: str) -> dict:
    """Write summary.json, report.md, report.html and figures/mean_score.png; return the summary."""
    out_dir = Path(out_dir)
    summary = build_summary(entries, context)
    tables = result_tables(summary)
    png = score_figure(summary)
    n_prompts = max(len(e.gold_by_prompt) for e in entries)
    caption = (f"Mean gold score of each model's sampled responses on {n_prompts} test prompts, with "
               f"bootstrap 95% CIs; one training run per method at its listed hyper-parameters "
               f"(seed {context.get('seed')}). The dashed line is SFT.")
    context_lines = "\n".join(f"- {k}: {v}" for k, v in context.items())
    markdown = (f"# {title}\n\n{context_lines}\n\n## Results\n\n"
                + "\n\n".join(markdown_table(*t) for t in tables) + "\n\n"
                f"![mean gold score](figures/mean_score.png)\n\n{caption}\n")
    context_html = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in context.items())
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<ul class=context>{context_html}</ul><h2>Results</h2>"
            + "".join(html_table(*t) for t in tables) + f"<figure><img alt='mean gold score per model' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'><figcaption>{html.escape(caption)}"
            f"</figcaption></figure></body></html>\n")
    with atomic.atomic_open(out_dir / "figures" / "mean_score.png", "wb") as handle:
        handle.write(png)
    atomic.write_json(out_dir / "summary.json", summary)
    atomic.write_text(out_dir / "report.md", markdown)
    atomic.write_text(out_dir / "report.html", page)
    return summary
