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
table holds two or more of DPO, LN-DPO and SimPO, VAR's gain with VAR and DPO, and each other method
against a reference method in best and in expected score ("best score: my-dpo-v2 ≥ DPO"); the
reference is the one given, else DPO, else the first other method in alphabetical order. Claims
against SFT need sft rows. Prompts keep the table's order (the bootstrap draws prompts by position),
so a study's runs written as a table in its test data's order get the study's very claims.

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
import pandas as pd

from alignlab.analysis import LABELS, RunRecord, claims_of
from alignlab.analysis.claims import to_settle_text
from alignlab.analysis.hitchhiker import HITCHHIKER_METHODS
from alignlab.data.readers import Where, a_type, read_records
from alignlab.errors import AlignlabError, InputError
from alignlab.evaluation.metrics import summarize
from alignlab.evidence import N_RESAMPLES
from alignlab.report.blocks import Sweep
from alignlab.report.document import finite_summary, write_report
from alignlab.untrusted import JSONProblem, parse_json, shown

REQUIRED = ("method", "configuration", "seed", "prompt_id", "score")
OPTIONAL = ("length", "kl", "family")
BASELINE = "sft"
OUTPUTS = ("summary.json", "report.md", "report.html", "figures")
FORMAT_FIX = ("Give one row per generated response with columns method, configuration, seed, prompt_id and "
              "score (optional: length, kl, family); see README, 'alignlab verdict'")
_METHOD_NAMES = {**{key: key for key in LABELS}, **{label.lower(): key for key, label in LABELS.items()}}


class ScoresTable:
    """A scores table as a pandas DataFrame (one row per response), with where each row came from."""

    def __init__(self, frame, source: str, wheres: list[Where] | None = None):
        self.frame, self.source, self.wheres = frame.reset_index(drop=True), source, wheres

    def at(self, position: int) -> Where:
        """Where the row at `position` (0-based) came from: a file's line or row, or the DataFrame's row."""
        return self.wheres[position] if self.wheres is not None else Where("table", "row", position, "table")

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
        return cls(pd.DataFrame.from_records(rows), path, wheres)


def _blank(cells) -> np.ndarray:
    """Where a column has no value: None, NaN (pandas' missing value) or blank text (an empty CSV cell)."""
    blank = cells.isna().to_numpy(bool)
    if cells.dtype.kind in "biuf":
        return blank
    if isinstance(cells.dtype, pd.StringDtype):  # pandas' text dtype: strings or missing, checked at once
        return blank | cells.str.strip().eq("").fillna(False).to_numpy(bool)
    return blank | cells.map(lambda v: isinstance(v, str) and not v.strip()).to_numpy(bool)


def _number(where: Where, column: str, value, positive: bool = False) -> float:
    value = value.item() if isinstance(value, np.generic) else value  # as the file wrote it: 0.5, not np.float64(0.5)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(f"{shown(value)} is not a number", field=column, fix="Give a finite number")
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        raise where.error(f"{shown(value)} is not a finite {'positive ' if positive else ''}number", field=column,
                          fix="Fix or leave out the row: every response needs a finite value")
    return number


def _method(where: Where, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(f"{shown(value)} is not a method name", field="method", fix=FORMAT_FIX)
    name = value.strip()
    return _METHOD_NAMES.get(name.lower(), name)


def _seed(where: Where, value):
    """An integer seed (also 3.0 or "3"), else its text."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (dict, list)):
        raise where.error(f"{shown(value)} is not a seed", field="seed", fix="Give an integer or a name")
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return int(value)
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _configuration(where: Where, value) -> tuple[str, dict, str]:
    """(name, hyper-parameters, them as JSON) of a configuration cell: a JSON object's keys and values, or
    {"configuration": name}."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = parse_json(value)
        except JSONProblem as problem:
            raise where.error(f"not a JSON object ({problem.problem})", field="configuration",
                              fix='Write hyper-parameters as a JSON object, e.g. {"beta": 0.1}, or give a name'
                              ) from None
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "seed":
                raise where.error("holds 'seed'", field="configuration", fix="Give the seed in the seed column")
            if item is None or isinstance(item, (dict, list)):
                raise where.error(f"hyper-parameter {shown(key)} is {shown(item)}", field="configuration",
                                  fix="Give each hyper-parameter as text, a number or true/false")
        params = dict(sorted(value.items()))
        return ",".join(f"{k}={v}" for k, v in params.items()) or "default", params, json.dumps(params)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
        raise where.error(f"{shown(value)} is not a configuration", field="configuration",
                          fix='Give a name or a JSON object of hyper-parameters, e.g. {"beta": 0.1}')
    params = {"configuration": str(value).strip()}
    return params["configuration"], params, json.dumps(params)


def _distinct(table: ScoresTable, column: str, convert) -> tuple[np.ndarray, list]:
    """(codes, converted): convert(where, value) applied once per distinct value of `column` (at its first
    row, so an error names the first row holding it), and each row's index into that list. JSON objects
    and lists (from JSONL) are told apart by their text."""
    cells = table.frame[column]
    if cells.dtype == object:
        cells = cells.map(lambda v: ("json", json.dumps(v, sort_keys=True, default=str))
                          if isinstance(v, (dict, list)) else v)
    codes, _ = pd.factorize(cells)
    first = np.unique(codes, return_index=True)[1]
    return codes, [convert(table.at(i), table.frame[column].iat[i]) for i in first]


def _numbers(table: ScoresTable, column: str, positive: bool = False) -> np.ndarray:
    """A numeric column as floats; the first value that is not a finite (positive) number is an InputError."""
    cells = table.frame[column]
    numeric = cells.dtype.kind in "fiu"
    values = cells.to_numpy(np.float64, copy=True) if numeric else np.full(len(cells), np.nan)
    bad = ~np.isfinite(values) | (positive & (values <= 0))
    for i in np.flatnonzero(bad):  # every row when the column mixes types: each is converted (or refused) alone
        values[i] = _number(table.at(i), column, cells.iat[i], positive)
    return values


def _first_row(mask) -> int | None:
    hits = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(hits[0]) if hits.size else None


def models_of(table: ScoresTable) -> tuple[list[RunRecord], RunRecord | None, dict | None, list[str]]:
    """(runs, SFT baseline or None, prompt families or None, notes for the reader) of a scores table;
    an InputError at the first row that does not fit (the module docstring)."""
    frame = table.frame
    if frame.empty:
        raise InputError("no rows", file=table.source, fix=FORMAT_FIX)
    absent = [c for c in REQUIRED if c not in frame.columns]
    if absent:
        raise InputError(f"no column {absent[0]!r} (the columns are: {', '.join(map(shown, map(str, frame.columns)))})",
                         file=table.source, fix=FORMAT_FIX)
    optional = [c for c in OPTIONAL if c in frame.columns]
    for column in (*REQUIRED, *optional):
        row = _first_row(_blank(frame[column]))
        if row is not None:
            optional_fix = " (or drop the column)" if column in OPTIONAL else ""
            raise table.at(row).error("missing value", field=column, fix=f"Give it in every row{optional_fix}")
    method_codes, methods = _distinct(table, "method", _method)
    config_codes, configurations = _distinct(table, "configuration", _configuration)  # (name, params, JSON)
    seed_codes, seeds = _distinct(table, "seed", _seed)
    prompt = frame["prompt_id"].astype(str).to_numpy(object)
    values = {"gold_score": _numbers(table, "score")}
    if "length" in optional:
        values["length"] = _numbers(table, "length", positive=True)
    if "kl" in optional:
        values["kl"] = _numbers(table, "kl")
    # A model is (method, hyper-parameters, seed): configurations written alike ({"a": 1, "b": 2} and
    # {"b": 2, "a": 1}, or 3 and "3" as seeds) are one.
    method_of = pd.factorize(np.array(methods, dtype=object))[0][method_codes]
    params_of = pd.factorize(np.array([c[2] for c in configurations], dtype=object))[0][config_codes]
    seed_of = pd.factorize(np.array([repr(s) for s in seeds], dtype=object))[0][seed_codes]
    keys = pd.DataFrame({"method": method_of, "params": params_of, "seed": seed_of,
                         "prompt": pd.factorize(prompt)[0]})

    def described(row: int) -> tuple[str, str, object]:
        return methods[method_codes[row]], configurations[config_codes[row]], seeds[seed_codes[row]]

    repeated = _first_row(keys.duplicated())
    if repeated is not None:
        first = _first_row((keys == keys.iloc[repeated]).all(axis=1))
        method, configuration, seed = described(repeated)
        raise table.at(repeated).error(
            f"a second row for method {shown(method)}, configuration {shown(configuration[0])}, seed {shown(seed)}, "
            f"prompt {shown(prompt[repeated])} (first at {table.at(first)})", fix="Give each response once")
    family_of = None
    if "family" in optional:
        family = frame["family"].astype(str).to_numpy(object)
        first_family = pd.Series(family).groupby(prompt).transform("first").to_numpy(object)
        clash = _first_row(family != first_family)
        if clash is not None:
            first = _first_row(prompt == prompt[clash])
            raise table.at(clash).error(f"prompt {shown(prompt[clash])} has family {shown(family[clash])} here and "
                                        f"{shown(first_family[clash])} at {table.at(first)}", field="family",
                                        fix="Give each prompt one family")
        family_of = dict(zip(prompt, family))
    # (method, params, seed) -> row positions, in order of first appearance
    models = keys.groupby(["method", "params", "seed"], sort=False).indices
    baselines = [rows for rows in models.values() if described(rows[0])[0] == BASELINE]
    if len(baselines) > 1:
        names = ", ".join(_name(*described(rows[0])) for rows in baselines)
        raise InputError(f"the sft rows hold {len(baselines)} models ({names}); the baseline is one model",
                         file=table.source, fix="Keep the rows of one sft configuration and seed")
    if len(baselines) == len(models):
        raise InputError("no rows of a method other than sft", file=table.source,
                         fix="Add the scores of the models to judge")
    every = [set(prompt[rows]) for rows in models.values()]
    common, scored = set.intersection(*every), set.union(*every)
    if len(common) < 2:
        raise InputError(f"{len(common)} prompt(s) scored for every model; the bootstrap over prompts needs at "
                         "least 2", file=table.source, fix="Score every model on the same test prompts")
    # In the table's order: the bootstrap draws prompts by position, as a study's in its test data's order.
    prompts = [p for p in dict.fromkeys(prompt) if p in common]
    notes = []
    if scored - common:
        examples = ", ".join(map(shown, [p for p in dict.fromkeys(prompt) if p not in common][:3]))
        notes.append(f"{len(scored - common)} prompt(s) not scored for every model were left out (e.g. {examples}); "
                     f"the claims use the {len(prompts)} prompts every model has")
    if not baselines:
        notes.append("no sft rows: the claims against the SFT baseline are not tested")
    runs, sft = [], None
    for rows in models.values():
        position = dict(zip(prompt[rows], rows))
        order = np.array([position[p] for p in prompts])
        samples = {"prompt_id": np.array(prompts), **{column: v[order] for column, v in values.items()}}
        if "kl" in samples and "length" in samples:
            samples["ln_kl"] = samples["kl"] / samples["length"]
        method, configuration, seed = described(rows[0])
        if method == BASELINE:  # the baseline as a study names it
            sft = RunRecord(BASELINE, BASELINE, {}, {}, samples)
        else:
            runs.append(RunRecord(_name(method, configuration, seed), method, {**configuration[1], "seed": seed}, {},
                                  samples))
    for run in [*runs, *([sft] if sft else [])]:
        if sft is not None and run is not sft:
            run.samples["sft_score"] = sft.samples["gold_score"]
        run.metrics = {"mean_score": {"value": float(run.samples["gold_score"].mean()), "ci_low": None,
                                      "ci_high": None}}
    families = {p: family_of[p] for p in prompts} if family_of else None
    return runs, sft, families, notes


def _name(method: str, configuration: tuple, seed) -> str:
    return f"{method}-{configuration[0]}-s{seed}"


def _choices(runs, reference: str | None) -> dict:
    """claims_of's reference and papers for these runs: the reference given (which must have runs),
    else DPO, else the alphabetically first method outside the papers (the module docstring)."""
    methods = sorted({r.method for r in runs})
    if reference is not None:
        reference = _METHOD_NAMES.get(reference.strip().lower(), reference.strip())
        if reference not in methods:
            raise InputError(f"no rows of the reference method {shown(reference)}; the methods are: "
                             f"{', '.join(methods)}", fix="Give --reference one of them")
    return {"reference": reference or ("dpo" if "dpo" in methods else None),
            "papers": sum(m in HITCHHIKER_METHODS for m in methods) >= 2}


def verdict(table, primary=None, reference: str | None = None, n_resamples: int = N_RESAMPLES,
            seed: int = 0, looks: list[dict] = (), interim: bool = False) -> list[dict]:
    """The claims a scores table supports, as `alignlab verdict` writes them to summary.json.

    table: a pandas DataFrame with one row per generated response and the columns method,
    configuration, seed, prompt_id, score (optional length, kl, family; the module docstring);
    primary: the titles of the primary claims (None: the default, alignlab.analysis.claims_of);
    reference: the method the other methods are compared with; n_resamples and seed: the two-level
    bootstrap's (a report uses 2000 and 0); looks, interim: a sequential design's interim looks so far,
    and whether this is one of them (alignlab.analysis.sequential). Returns the list of claim dicts:
    claim, family, verdict, value, ci, p_value, p_adjusted, level, to_settle, ... An error in the table
    is an InputError naming the row.
    """
    runs, sft, families, _ = models_of(ScoresTable(table, "table"))
    evidence = Sweep.of(runs, sft, families, n_resamples, seed).evidence  # the report's order of methods
    try:
        claims = claims_of(evidence, families, primary, looks=looks, interim=interim, **_choices(runs, reference))
    except ValueError as err:  # a primary title that no claim has
        raise InputError(str(err), field="primary") from None
    return finite_summary({"claims": claims})["claims"]


def read_scores(path: str) -> tuple[list[RunRecord], RunRecord | None, dict | None, list[str]]:
    """models_of a scores file, with each model's metrics (as alignlab.evaluation names them) for the report."""
    runs, sft, families, notes = models_of(ScoresTable.read(path))
    for run in [*runs, *([sft] if sft else [])]:
        run.metrics = summarize(run.samples)
    return runs, sft, families, notes


def write_verdict(scores: str, models: tuple, out: Path, primary=None, reference: str | None = None) -> dict:
    """Write summary.json, report.md, report.html and figures/ of the models read from `scores`
    (read_scores) into `out` (each file atomically) and return the summary: the claims section and
    every section the data supports."""
    runs, sft, families, notes = models
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
