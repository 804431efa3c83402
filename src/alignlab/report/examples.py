"""The report's example generations: for a few test prompts, the SFT baseline's response and each
method's best configuration's (its first seed), with their gold scores.

The prompts are the first EXAMPLE_PROMPTS of the reporting half (alignlab.evidence.split_prompts) in
the test set's order: chosen from the prompt ids alone, before any run is read, and reporting prompts
also when a separate selection set makes every test prompt report. Texts are the model's own output:
they reach report.md and report.html through the renderer's escaping, and each is clipped to
SHOWN_CHARS characters with a note of how much was cut.
"""

from __future__ import annotations

import json

from alignlab.analysis import RunRecord, best_run
from alignlab.analysis.runs import method_label
from alignlab.evidence import split_prompts
from alignlab.report.blocks import BASELINE, Cell, Section, Sweep, Table

EXAMPLE_PROMPTS = 3
SHOWN_CHARS = 600


def example_prompt_ids(prompt_ids, n: int = EXAMPLE_PROMPTS) -> list[str]:
    """The ids (as text) of the report's example prompts among a sweep's test prompts."""
    ids = list(dict.fromkeys(str(p) for p in prompt_ids))
    return ids[:n] if len(ids) < 2 else list(split_prompts(ids).reporting[:n])


def clipped(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text`, or its first `limit` characters and a visible note of what was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} … [clipped: {len(text) - limit} more characters]"


def prompt_text(prompt: str) -> str:
    """A prompt as samples.parquet stores it (JSON of the turns) as readable text: a lone user turn
    as its content, a conversation as `role: content` lines; text that is no list of turns as it is."""
    try:
        turns = json.loads(prompt)
    except ValueError:
        return prompt
    if not isinstance(turns, list) or not all(isinstance(t, dict) and "content" in t for t in turns):
        return prompt
    if len(turns) == 1:
        return str(turns[0]["content"])
    return "\n".join(f"{t.get('role', '?')}: {t['content']}" for t in turns)


def _gold(run: RunRecord, prompt_id: str) -> float | None:
    ids = [str(p) for p in run.samples.get("prompt_id", [])]
    return float(run.samples["gold_score"][ids.index(prompt_id)]) if prompt_id in ids else None


def examples_section(sweep: Sweep) -> tuple[Section, dict]:
    """A table per example prompt: the prompt, then each model's response and its gold score."""
    section = Section("examples", "Example generations")
    ev = sweep.evidence
    models = ([(BASELINE, sweep.sft)] if sweep.sft is not None else []) + [
        (method_label(m), best_run(configs).runs[0]) for m, configs in ev.by_method.items()]
    reference = sweep.sft or (sweep.runs[0] if sweep.runs else None)
    ids = example_prompt_ids(reference.samples.get("prompt_id", [])) if reference is not None else []
    if not any(run.texts for _, run in models) or not ids:
        section.blocks.append("No response texts to show: the evaluations' samples.parquet hold no prompt and "
                              "response columns (a sweep from an earlier version), or there is no run.")
        return section, {"prompt_ids": [], "models": []}
    section.blocks.append(
        f"The same {len(ids)} test prompts (the first of the reporting half, in the test set's order) answered by "
        f"the SFT baseline and by each method's best configuration (section 1; its first seed), with each "
        f"response's gold score. Texts longer than {SHOWN_CHARS} characters are clipped, with the number of "
        "characters cut.")
    summary = {"prompt_ids": ids, "models": [{"model": name, "run": run.name} for name, run in models],
               "gold_scores": {}}
    for number, prompt_id in enumerate(ids, 1):
        prompt = next((run.texts[prompt_id]["prompt"] for _, run in models if prompt_id in run.texts), None)
        rows = [[f"prompt {number}", Cell(prompt_id, css="name"), "",
                 Cell("–" if prompt is None else clipped(prompt_text(prompt)), css="response")]]
        summary["gold_scores"][prompt_id] = {}
        for name, run in models:
            gold = _gold(run, prompt_id)
            summary["gold_scores"][prompt_id][run.name] = gold
            text = run.texts.get(prompt_id, {}).get("response")
            rows.append([name, Cell(run.name, css="name"), "–" if gold is None else f"{gold:.3f}",
                         Cell("– (not stored)" if text is None else clipped(text), css="response")])
        section.blocks.append(Table(["", "run (prompt id)", "gold score", "text"], rows))
    return section, summary
