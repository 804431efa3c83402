"""`alignlab verdict SCORES`: the evidence engine on anyone's per-response scores (issue 29, item 6).

The table (a .parquet, .csv or .jsonl file, or a pandas DataFrame) holds one row per generated response:
    method          the method's name; the papers' ("dpo", "LN-DPO", "SimPO", "var", ...) are recognised
                    whatever their case, and rows of method "sft" are the baseline every model starts from
    configuration   a name ("beta0.1") or a JSON object of hyper-parameters ({"beta": 0.1, "lr": 5e-6}:
                    text in CSV and Parquet, an object or text in JSONL); configurations of one method with
                    the same hyper-parameters are one configuration
    seed            the training seed (an integer or a name): a configuration's replicates
    prompt_id       the test prompt (text or an integer)
    score           the response's score (e.g. a gold reward model's), a finite number
    length, kl      optional: the response's length in tokens and its summed KL to the SFT model
    family          optional: the prompt's family ("helpful", "harmful"), one per prompt

Each (method, configuration, seed) is one trained model: a RunRecord whose per-sample columns are
prompt_id, gold_score (the score), length, kl and ln_kl (kl / length); the sft rows are the baseline,
one model (one configuration and seed). Its claims and report are then exactly a study's
(alignlab.analysis.claims_of, alignlab.report.document.write_report): the Hitchhiker claims when the
table holds two or more of DPO, LN-DPO and SimPO, VAR's gain with VAR and DPO, and each other method against a reference
method in best and in expected score ("best score: my-dpo-v2 ≥ DPO"); the reference is the one given,
else DPO, else the first other method in alphabetical order. Claims against SFT need sft rows.

Validation (one-line errors naming the file, the line or row, and the column): a missing column, a
missing or non-finite value, a configuration that is neither a name nor a JSON object of text, numbers
and true/false, a row repeating (method, configuration, seed, prompt_id), a prompt given two families,
sft rows of several models. Models scored on different prompts are compared on the prompts every model
has: the others are left out, and the report and summary.json say how many (fewer than 2 left is an
error).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from alignlab.analysis import LABELS, RunRecord, SweepEvidence, claims_of
from alignlab.analysis.claims import to_settle_text
from alignlab.data.readers import Where, a_type, read_records
from alignlab.errors import AlignlabError, InputError
from alignlab.evaluation.metrics import bootstrap_ci, strict_wins, ties
from alignlab.evidence import N_RESAMPLES
from alignlab.report.blocks import Sweep
from alignlab.report.document import finite_summary, write_report
from alignlab.untrusted import JSONProblem, parse_json, shown

REQUIRED = ("method", "configuration", "seed", "prompt_id", "score")
OPTIONAL = ("length", "kl", "family")
BASELINE = "sft"
HITCHHIKER_METHODS = ("dpo", "ln-dpo", "simpo")
OUTPUTS = ("summary.json", "report.md", "report.html", "figures")
FORMAT_FIX = ("Give one row per generated response with columns method, configuration, seed, prompt_id and "
              "score (optional: length, kl, family); see README, 'alignlab verdict'")
_METHOD_NAMES = {**{key: key for key in LABELS}, **{label.lower(): key for key, label in LABELS.items()}}


class ScoresTable:
    """The rows of a scores table as columns, with where each row came from (for error messages)."""

    def __init__(self, rows: list[dict], wheres: list[Where], source: str):
        self.rows, self.wheres, self.source = rows, wheres, source

    @classmethod
    def of_frame(cls, table) -> "ScoresTable":
        """A pandas DataFrame's rows, named "row N" (0-based, as table.iloc[N])."""
        rows = table.to_dict("records")
        return cls(rows, [Where("table", "row", i, "table") for i in range(len(rows))], "table")

    @classmethod
    def read(cls, path: str) -> "ScoresTable":
        """A .parquet, .csv or .jsonl (optionally .gz) file, read as alignlab reads every untrusted file."""
        if not Path(path).expanduser().is_file():
            raise InputError("no such file", file=path, fix="Give a .parquet, .csv or .jsonl file of scores")
        rows, wheres = [], []
        for where, record in read_records(path, "train", numeric_columns=("score", "length", "kl")):
            if not isinstance(record, dict):
                raise where.error(f"a row is {a_type(record)}, not an object", fix=FORMAT_FIX)
            rows.append(record)
            wheres.append(where)
        return cls(rows, wheres, path)


def _missing(value) -> bool:
    """None, NaN (pandas' missing value) or blank text (an empty CSV cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                                and not value.strip())


def _number(where: Where, column: str, value, positive: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise where.error(f"{shown(value)} is not a number", field=column, fix="Give a finite number")
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        raise where.error(f"{shown(value)} is not a finite {'positive ' if positive else ''}number", field=column,
                          fix="Fix or leave out the row: every response needs a finite value")
    return number


def _method(value) -> str:
    name = value.strip()
    return _METHOD_NAMES.get(name.lower(), name)


def _seed(where: Where, value):
    """An integer seed (also 3.0 or "3"), else its text."""
    if isinstance(value, (bool, np.bool_)):
        raise where.error(f"{shown(value)} is not a seed", field="seed", fix="Give an integer or a name")
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return int(value)
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _configuration(where: Where, value) -> tuple[str, dict]:
    """(name, hyper-parameters) of a configuration cell: a JSON object's keys and values, or {"configuration": name}."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = parse_json(value)
        except JSONProblem as problem:
            raise where.error(f"not a JSON object ({problem.problem})", field="configuration",
                              fix='Write hyper-parameters as a JSON object, e.g. {"beta": 0.1}, or give a name') from None
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "seed":
                raise where.error("holds 'seed'", field="configuration", fix="Give the seed in the seed column")
            if item is None or isinstance(item, (dict, list)):
                raise where.error(f"hyper-parameter {shown(key)} is {shown(item)}", field="configuration",
                                  fix="Give each hyper-parameter as text, a number or true/false")
        params = dict(sorted(value.items()))
        return ",".join(f"{k}={v}" for k, v in params.items()) or "default", params
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
        raise where.error(f"{shown(value)} is not a configuration", field="configuration",
                          fix='Give a name or a JSON object of hyper-parameters, e.g. {"beta": 0.1}')
    return str(value).strip(), {"configuration": str(value).strip()}


def models_of(table: ScoresTable) -> tuple[list[RunRecord], RunRecord | None, dict | None, list[str]]:
    """(runs, SFT baseline or None, prompt families or None, notes for the reader) of a scores table;
    an InputError at the first row that does not fit (the module docstring)."""
    if not table.rows:
        raise InputError("no rows", file=table.source, fix=FORMAT_FIX)
    present = set().union(*(row.keys() for row in table.rows))
    absent = [c for c in REQUIRED if c not in present]
    if absent:
        raise InputError(f"no column {absent[0]!r} (the columns are: {', '.join(map(shown, sorted(present)))})",
                         file=table.source, fix=FORMAT_FIX)
    optional = [c for c in OPTIONAL if c in present]
    models: dict = {}   # (method, configuration key, seed) -> {"name", "params", "samples": {prompt: values}}
    family_of: dict = {}
    for row, where in zip(table.rows, table.wheres):
        for column in (*REQUIRED, *optional):
            if _missing(row.get(column)):
                raise where.error("missing value", field=column,
                                  fix="Give it in every row" + (" (or drop the column)" if column in OPTIONAL else ""))
        if not isinstance(row["method"], str) or not row["method"].strip():
            raise where.error(f"{shown(row['method'])} is not a method name", field="method", fix=FORMAT_FIX)
        method, seed = _method(row["method"]), _seed(where, row["seed"])
        name, params = _configuration(where, row["configuration"])
        prompt = str(row["prompt_id"])
        values = {"gold_score": _number(where, "score", row["score"])}
        if "length" in optional:
            values["length"] = _number(where, "length", row["length"], positive=True)
        if "kl" in optional:
            values["kl"] = _number(where, "kl", row["kl"])
        if "family" in optional:
            family = str(row["family"])
            if family_of.setdefault(prompt, (family, where))[0] != family:
                first, at = family_of[prompt]
                raise where.error(f"prompt {shown(prompt)} has family {shown(family)} here and {shown(first)} at "
                                  f"{at}", field="family", fix="Give each prompt one family")
        key = (method, json.dumps(params, sort_keys=True, default=str), seed)
        model = models.setdefault(key, {"name": f"{method}-{name}-s{seed}", "method": method, "seed": seed,
                                        "params": params, "samples": {}})
        if prompt in model["samples"]:
            raise where.error(f"a second row for method {shown(method)}, configuration {shown(name)}, seed "
                              f"{shown(seed)}, prompt {shown(prompt)} (first at {model['samples'][prompt][1]})",
                              fix="Give each response once")
        model["samples"][prompt] = (values, where)
    baselines = [m for m in models.values() if m["method"] == BASELINE]
    if len(baselines) > 1:
        raise InputError(f"the sft rows hold {len(baselines)} models ({', '.join(m['name'] for m in baselines)}); "
                         "the baseline is one model", file=table.source,
                         fix="Keep the rows of one sft configuration and seed")
    every = [set(m["samples"]) for m in models.values()]
    common = set.intersection(*every)
    left_out = set.union(*every) - common
    if len(common) < 2:
        raise InputError(f"{len(common)} prompt(s) scored for every model; the bootstrap over prompts needs at "
                         "least 2", file=table.source, fix="Score every model on the same test prompts")
    prompts = sorted(common)
    notes = []
    if left_out:
        notes.append(f"{len(left_out)} prompt(s) not scored for every model were left out (e.g. "
                     f"{', '.join(map(shown, sorted(left_out)[:3]))}); the claims use the {len(prompts)} prompts "
                     "every model has")
    if not baselines:
        notes.append("no sft rows: the claims against the SFT baseline are not tested")
    records = {}
    for key, model in models.items():
        samples = {"prompt_id": np.array(prompts)}
        for column in model["samples"][prompts[0]][0]:
            samples[column] = np.array([model["samples"][p][0][column] for p in prompts])
        if "kl" in samples and "length" in samples:
            samples["ln_kl"] = samples["kl"] / samples["length"]
        if model["method"] == BASELINE:  # the baseline as a study names it
            records[key] = RunRecord(BASELINE, BASELINE, {}, {}, samples)
        else:
            records[key] = RunRecord(model["name"], model["method"], {**model["params"], "seed": model["seed"]}, {},
                                     samples)
    sft = next((r for r in records.values() if r.method == BASELINE), None)
    runs = [r for r in records.values() if r.method != BASELINE]
    if not runs:
        raise InputError("no rows of a method other than sft", file=table.source,
                         fix="Add the scores of the models to judge")
    for run in [*runs, *([sft] if sft else [])]:
        if sft is not None and run is not sft:
            run.samples["sft_score"] = sft.samples["gold_score"]
        run.metrics = {"mean_score": {"value": float(run.samples["gold_score"].mean()), "ci_low": None,
                                      "ci_high": None}}
    families = {p: family_of[p][0] for p in prompts} if family_of else None
    return runs, sft, families, notes


def _choices(runs, reference: str | None) -> dict:
    """claims_of's reference and papers for these runs: the reference given (which must have runs),
    else DPO, else the alphabetically first method outside the papers (the module docstring)."""
    methods = sorted({r.method for r in runs})
    if reference is not None:
        reference = _method(reference)
        if reference not in methods:
            raise InputError(f"no rows of the reference method {shown(reference)}; the methods are: "
                             f"{', '.join(methods)}", fix="Give --reference one of them")
    return {"reference": reference or ("dpo" if "dpo" in methods else None),
            "papers": sum(m in HITCHHIKER_METHODS for m in methods) >= 2}


def verdict(table, primary=None, reference: str | None = None, n_resamples: int = N_RESAMPLES,
            seed: int = 0) -> list[dict]:
    """The claims a scores table supports, as `alignlab verdict` writes them to summary.json.

    table: a pandas DataFrame with one row per generated response and the columns method,
    configuration, seed, prompt_id, score (optional length, kl, family; the module docstring);
    primary: the titles of the primary claims (None: the default, alignlab.analysis.claims_of);
    reference: the method the other methods are compared with; n_resamples and seed: the two-level
    bootstrap's (a report uses 2000 and 0). Returns the list of claim dicts: claim, family, verdict,
    value, ci, p_value, p_adjusted, to_settle, ... An error in the table is an InputError naming the row.
    """
    runs, sft, families, _ = models_of(ScoresTable.of_frame(table))
    ordered = Sweep.of(runs, sft, families).runs  # the report's order of methods: the claims come in it too
    try:
        claims = claims_of(SweepEvidence(ordered, sft, n_resamples, seed), families, primary,
                           **_choices(runs, reference))
    except ValueError as err:  # a primary title that no claim has
        raise InputError(str(err), field="primary") from None
    return finite_summary({"claims": claims})["claims"]


def _with_ci(values: np.ndarray) -> dict:
    low, high = bootstrap_ci(values)
    return {"value": float(values.mean()), "ci_low": low, "ci_high": high}


def run_metrics(samples: dict) -> dict:
    """A model's metrics as alignlab.evaluation.metrics names them, from the columns the table gave."""
    gold = samples["gold_score"]
    metrics = {"mean_score": _with_ci(gold)}
    for column in ("length", "kl", "ln_kl"):
        if column in samples:
            metrics[column] = _with_ci(samples[column])
    if "sft_score" in samples:
        metrics.update(win_vs_sft=_with_ci(strict_wins(gold, samples["sft_score"])),
                       tie_vs_sft=_with_ci(ties(gold, samples["sft_score"])),
                       loss_vs_sft=_with_ci(strict_wins(samples["sft_score"], gold)))
    return metrics


def write_verdict(scores: str, out: Path, primary=None, reference: str | None = None) -> dict:
    """Read the scores file, write summary.json, report.md, report.html and figures/ into `out` (each
    file atomically) and return the summary: the claims section and every section the data supports."""
    runs, sft, families, notes = models_of(ScoresTable.read(scores))
    for run in [*runs, *([sft] if sft else [])]:
        run.metrics = run_metrics(run.samples)
    context = {"scores": scores, "models": f"{len(runs)} trained models of {len({r.method for r in runs})} "
                                          f"method(s); SFT baseline: {'yes' if sft else 'none'}",
               "prompts": len(runs[0].samples["prompt_id"]), "notes": notes}
    try:
        return write_report(out, runs, sft, context, f"Verdict on {Path(scores).name}", families=families,
                            primary=primary, **_choices(runs, reference))
    except ValueError as err:  # a primary title that no claim has
        raise AlignlabError(f"--primary: {err}") from None


def claims_table(claims: list[dict]) -> str:
    """The claims as plain text lines for a terminal: verdict, family, claim, value [CI], Holm p, and
    what would settle each inconclusive one."""
    lines = []
    for c in claims:
        value = "" if c["value"] is None else f"  {c['value']:+.4g} [{c['ci'][0]:+.4g}, {c['ci'][1]:+.4g}]"
        p = "" if c["p_adjusted"] is None else f"  p(Holm) {c['p_adjusted']:.3g}"
        lines.append(f"{c['verdict']:<12}  {c['family']:<9}  {c['claim']}{value}{p}")
        if to_settle_text(c):
            lines.append(f"{'':<25}{to_settle_text(c)}")
    return "\n".join(lines)
