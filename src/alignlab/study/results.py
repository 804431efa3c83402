"""Reading a finished sweep for the report (`alignlab report DIR`) and for its sequential looks: each
run's evaluation as an analysis.RunRecord (`load_run_record`), the finished runs (`read_sweep`), the
looks made so far (`read_looks`), and the robustness report of the finished runs (`write_sweep_report`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from alignlab.errors import AlignlabError
from alignlab.study.store import RunStore

log = logging.getLogger(__name__)


def load_run_record(run_dir: Path, name: str, method: str, params: dict, metrics: dict, indist: bool = False,
                    selection: bool = False, example_ids=()):
    """A run's evaluation as an analysis.RunRecord: metrics plus per-sample columns from its
    samples.parquet. An AlignlabError names the file when it is missing or unreadable, has no rows,
    lacks a column or holds one of another type. With `indist` (the sweep evaluated in distribution
    too) the columns of indist/samples.parquet go to RunRecord.indist; damage there only loses them,
    with a warning: the report's main numbers do not depend on them. With `selection` (the sweep has
    the user's selection prompts) the columns of selection/samples.parquet go to RunRecord.selection,
    and damage there is an AlignlabError: a run that cannot be ranked cannot be picked. The training
    log (metrics.jsonl, `read_training_log`) and the texts of the prompts `example_ids`
    (`read_texts`) are read for the report's curves and examples; without them the run only misses
    there."""
    from alignlab.analysis import RunRecord

    redo = f"delete {run_dir / 'metrics.json'} and rerun the sweep to evaluate the run again"
    samples = read_samples(run_dir / "samples.parquet", redo)
    in_distribution = {}
    if indist:
        try:
            in_distribution = read_samples(run_dir / "indist" / "samples.parquet", redo)
        except AlignlabError as err:
            log.warning("report: run %s loads without its in-distribution evaluation: %s", name, err)
    picking = read_samples(run_dir / "selection" / "samples.parquet", redo) if selection else {}
    return RunRecord(name, method, params, metrics, samples, in_distribution, picking,
                     read_training_log(run_dir / "metrics.jsonl"), read_texts(run_dir / "samples.parquet", example_ids))


def read_training_log(path: Path) -> dict:
    """The numeric columns of a run's metrics.jsonl (one line per logged optimizer step), as numpy
    arrays: those every line holds, "step" among them. {} when the file is missing (the SFT
    baseline: evaluated, not trained); damage loses the log with a warning, as the report's
    curves are not among its results."""
    import numpy as np

    from alignlab.untrusted import clip

    if not path.exists():
        return {}
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines or not all(isinstance(line, dict) for line in lines):
            raise ValueError("no lines, or a line that is not a JSON object")
        names = [k for k in lines[0] if all(_is_number(line.get(k)) for line in lines)]
        if "step" not in names:
            raise ValueError("a line without a numeric step")
        return {k: np.array([line[k] for line in lines], dtype=np.float64) for k in names}
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON lines
        log.warning("report: %s cannot be read (%s): its run has no training curve", path, clip(str(err)))
        return {}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_texts(path: Path, prompt_ids) -> dict:
    """{prompt id: {"prompt", "response"}} of the rows of samples.parquet whose prompt_id is one of
    `prompt_ids` (compared as text); {} when the file has no prompt or response column (an
    earlier version's). read_samples has read the same file: it is sound."""
    import pyarrow.parquet as pq

    wanted = {str(p) for p in prompt_ids}
    if not wanted or not {"prompt", "response"} <= set(pq.read_schema(path).names):
        return {}
    table = pq.read_table(path, columns=["prompt_id", "prompt", "response"]).to_pydict()
    return {str(p): {"prompt": str(prompt), "response": str(response)}
            for p, prompt, response in zip(table["prompt_id"], table["prompt"], table["response"]) if str(p) in wanted}


def read_samples(path: Path, redo: str) -> dict:
    """The per-sample columns the report reads, as numpy arrays; an AlignlabError naming `path` and
    saying to `redo` when the file cannot serve."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alignlab.untrusted import clip

    try:
        table = pq.read_table(path).to_pydict()
    except (OSError, pa.ArrowException) as err:
        raise AlignlabError(f"{path}: cannot be read ({clip(str(err))}); {redo}") from None
    missing = [c for c in ("prompt_id", "gold_score", "length") if c not in table]
    if missing:
        raise AlignlabError(f"{path}: lacks the column(s) {', '.join(missing)}; {redo}")
    if not table["prompt_id"] or not all(isinstance(p, (str, int)) for p in table["prompt_id"]):
        raise AlignlabError(f"{path}: column prompt_id is empty or holds other than text or integers; {redo}")

    def numbers(column: str):
        try:
            return np.array(table[column], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise AlignlabError(f"{path}: column {column} holds other than numbers; {redo}") from None

    optional = [c for c in ("chosen_score", "sft_score", "proxy_score", "kl", "ln_kl") if c in table]
    return {"prompt_id": np.array(table["prompt_id"]), **{c: numbers(c) for c in ("gold_score", "length", *optional)}}


def write_sweep_report(out: str | Path) -> dict:
    """`alignlab report DIR`: the robustness report of the finished runs in a sweep directory
    (`read_sweep`), its primary claims decided as its sequential looks (sequential.json) leave them.

    The run store is opened read-only: the report never writes runs.sqlite, whatever it holds.
    Damage to what every run shares (runs.sqlite, sweep.yaml, study.json, runs/sft/, sequential.json)
    is an AlignlabError naming the file; a damaged run is skipped and named in the report's "runs" line
    (alignlab.report's docstring says why)."""
    from alignlab.report import write_report

    swept = read_sweep(out)
    return write_report(out, swept.runs, swept.sft, swept.context, title="alignlab study report", var=swept.var,
                        families=swept.families, looks=read_looks(Path(out)))


LOOKS_FILE = "sequential.json"  # the interim looks of the sweep's sequential design, as run_looks made them


def read_looks(out: Path) -> list[dict]:
    """The sweep's interim looks (none without the file); an AlignlabError naming the file when it is
    not what the sweep wrote."""
    from alignlab.study.store import parse_json
    from alignlab.untrusted import clip

    path = out / LOOKS_FILE
    if not path.exists():
        return []
    try:
        looks = parse_json(path.read_text(encoding="utf-8"))["looks"]
        for look in looks:
            if not (isinstance(look["look"], int) and isinstance(look["runs"], int)
                    and all(isinstance(c, dict) and isinstance(c["claim"], str) for c in look["decided"])
                    and all(isinstance(n, str) for n in look["added_runs"])):
                raise ValueError(f"look {clip(str(look))} is not as the sweep wrote it")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AlignlabError(f"{path}: {clip(str(err))}; rerun the sweep with --overwrite true to start over") from None
    return looks


@dataclass
class SweptRuns:
    """What a sweep directory's finished runs give its report."""

    runs: list
    sft: object
    context: dict
    families: dict | None
    var: dict | None


def read_sweep(out: str | Path) -> SweptRuns:
    """The finished runs of a sweep directory with its SFT baseline, the report's context lines, the
    test prompts' families and (a VAR study) the VAR section's inputs (write_sweep_report's docstring
    says what is an error and what is skipped)."""
    from alignlab.analysis.runs import seed_list
    from alignlab.yaml_input import read_yaml
    from alignlab.report import check_metrics, check_params, example_prompt_ids
    from alignlab.study.store import DamagedRow, StoredRun, parse_json
    from alignlab.untrusted import clip, shown

    out = Path(out)
    if not (out / "runs.sqlite").exists() or not (out / "sweep.yaml").exists():
        raise AlignlabError(f"{out}: not a sweep directory (no runs.sqlite and sweep.yaml); "
                            "give the --out of an alignlab sweep or alignlab run")
    rerun = "rerun the sweep (it resumes) to write it again"

    def read_json(path: Path, check=lambda value: value):
        """A JSON file of the sweep directory, through check; an AlignlabError naming it otherwise."""
        try:
            return check(parse_json(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise AlignlabError(f"{path}: missing; {rerun}") from None
        except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON, not as check needs
            raise AlignlabError(f"{path}: {clip(str(err))}; {rerun}") from None

    def json_object(value) -> dict:
        if not isinstance(value, dict):
            raise ValueError(f"{shown(value)} is not a JSON object")
        return value

    try:
        config = read_yaml(out / "sweep.yaml")
    except OSError as err:
        raise AlignlabError(f"{out / 'sweep.yaml'}: cannot be read ({err.strerror})") from None
    study = read_json(out / "study.json", json_object)
    sft_dir = out / "runs" / "sft"
    if not sft_dir.is_dir():
        raise AlignlabError(f"{sft_dir}: missing (the SFT model's evaluation); {rerun}")
    indist, selection = ((out / "data" / f"{name}.jsonl").exists() for name in ("indist", "selection"))
    sft = load_run_record(sft_dir, "sft", "sft", {}, read_json(sft_dir / "metrics.json", check_metrics), indist)
    sft_prompts = set(sft.samples["prompt_id"].tolist())
    example_ids = example_prompt_ids(sft.samples["prompt_id"])
    sft.texts = read_texts(sft_dir / "samples.parquet", example_ids)

    with RunStore(out / "runs.sqlite", readonly=True) as store:
        rows = store.rows()
    skipped = [f"runs.sqlite {row}" for row in rows if isinstance(row, DamagedRow)]
    unfinished, runs = [], []
    for row in (row for row in rows if isinstance(row, StoredRun)):
        try:
            finished = row.status == "finished" and (out / row.run_dir / "metrics.json").exists()
        except OSError:  # a path the system refuses (too long): no evaluation can be there
            finished = False
        if not finished:
            unfinished.append(row.name)
            continue
        try:
            params, metrics = check_params(row.params), check_metrics(row.metrics)
        except ValueError as err:
            skipped.append(f"{shown(row.name)}: runs.sqlite {err}")
            continue
        try:
            run = load_run_record(out / row.run_dir, row.name, row.method, params, metrics, indist, selection,
                                  example_ids)
        except AlignlabError as err:
            skipped.append(f"{shown(row.name)}: {err}")
            continue
        if set(run.samples["prompt_id"].tolist()) != sft_prompts:
            skipped.append(f"{shown(row.name)}: evaluated on other test prompts than {sft_dir}")
        else:
            runs.append(run)
    for problem in skipped:
        log.warning("report: skipped a damaged run: %s", problem)
    if not runs:
        raise AlignlabError(f"{out}: no finished run to report"
                            + (f"; skipped as damaged: {skipped[0]}" if skipped else "")
                            + "; run the sweep (it resumes where it stopped)")
    seeds = {r.params["seed"] for r in runs if "seed" in r.params}
    context = {**study,
               "runs": f"{len(runs)} finished of {len(rows)}"
                       + (f"; unfinished or failed: {', '.join(unfinished)}" if unfinished else "")
                       + (f"; skipped as damaged: {'; '.join(skipped)}" if skipped else ""),
               "methods": ", ".join(dict.fromkeys(r.method for r in runs)),
               "grid": config.get("grid_preset") or "custom",
               "training seeds": seed_list(seeds),
               "test prompts": len(sft.samples["prompt_id"])}
    def optional_json(path: Path):
        return read_json(path) if path.exists() else None

    var = None
    if config.get("study") == "var":
        var = {"race": optional_json(out / "var" / "race.json"), "z": optional_json(out / "var" / "z_variance.json"),
               "compute": optional_json(out / "var" / "compute.json")}
    return SweptRuns(runs, sft, context, optional_json(out / "data" / "test_families.json"), var)
