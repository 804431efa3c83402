"""`alignlab sweep` and `alignlab run`: every method over its hyper-parameter grid, evaluated against
the gold reward, then the robustness report.

Stages, in order; the shared ones run once per sweep and every run reuses them:
    shared   data files, the SFT model (the study world's or yours), the proxy reward model (when
             VAR runs), the SFT model's evaluation, the reference log-prob cache
    runs     one per grid point: train (alignlab.training) then evaluate (alignlab.evaluation.evaluate)
    report   alignlab.report.document from the run store and the per-sample results

Directory layout under `out`:
    sweep.yaml                   the resolved configuration; a restart must match it
    runs.sqlite                  the run store (alignlab.study.store)
    data/                        train.jsonl, heldout.jsonl and indist.jsonl (world), test.jsonl
    proxy_rm/                    the proxy reward model
    runs/sft/                    the SFT model's evaluation (samples.parquet, metrics.json, indist/)
    runs/<run name>/             a run: config.yaml, train_summary.json, model/, indist/, samples.parquet,
                                 metrics.json
    runs/*/selection/            with `selection_data`: each run's evaluation on data/selection.jsonl, the
                                 prompts that pick runs (no KL, no proxy score)
    runs/*/indist/               the evaluation on indist.jsonl (samples.parquet, metrics.json); only
                                 where the study has held-out training-style pairs (the world)
    sequential.json              the looks of the sequential design (alignlab.analysis.sequential): the
                                 claims each decided and the seeds it added; absent with a fixed design
    summary.json, report.md, report.html, figures/

Resuming: starting the same sweep again skips finished runs and redoes the rest. Each step of a
run leaves a file that says it is complete (training renames `.NAME.partial` to `NAME` when it
ends; each evaluation writes its `metrics.json` last, in distribution before the test prompts), so
a run killed after training only evaluates, and one killed between the evaluations does only the second.

The grid is expanded in `alignlab.study.grid`, the runs executed by `alignlab.study.executors`, and the
report read from the finished sweep by `alignlab.study.results`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Callable

from alignlab import atomic
from alignlab.config import RewardModelConfig, TrainConfig, dump_yaml
from alignlab.data.options import DATA_OPTIONS
from alignlab.errors import AlignlabError
from alignlab.evidence.split import reporting_half_size
from alignlab.models.score import cached_reward_scorer
from alignlab.objectives.registry import get_method
from alignlab.output_dirs import claim_output_dir, mark, marked_kind
from alignlab.safe_delete import check_no_link, remove
from alignlab.study.config import (REPORTED_TRAINING, WORLD_GENERATION, WORLD_REWARD_TRAINING, WORLD_TRAINING,
                                   Shared, StudyConfig, StudyInputs, check_selection_is_held_out,
                                   load_evaluation_pairs, real_inputs, world_inputs)
from alignlab.study.executors import RunTask, default_workers, execute_all
from alignlab.study.grid import RunSpec, expand_grid, sequential_design
from alignlab.study.results import LOOKS_FILE, read_looks, read_sweep, write_sweep_report
from alignlab.study.store import RunStore

log = logging.getLogger(__name__)

# `training` settings the proxy reward model takes too: how the data is read, the model's revision
# (the proxy RM starts from the SFT model) and how prompts are rendered.
READ_LIKE_THE_POLICIES = ("data_split", *DATA_OPTIONS, "revision", "raw_prompts")
RESULT_NEUTRAL_FIELDS = ("out", "workers", "executor", "ray_address", "overwrite",  # may differ on restart
                         "budget_minutes")


def _resolved_yaml(config: StudyConfig) -> str:
    return dump_yaml(dataclasses.replace(config, **{k: StudyConfig.__dataclass_fields__[k].default
                                                    for k in RESULT_NEUTRAL_FIELDS}))


def open_sweep_dir(config: StudyConfig) -> bool:
    """Create the sweep directory, or accept it for resuming; returns True when resuming. The
    caller holds the directory (`claim_output_dir`): it is missing, empty, or alignlab's own."""
    out = Path(config.out)
    resolved = _resolved_yaml(config)
    if out.exists() and any(out.iterdir()):
        previous = out / "sweep.yaml"
        if config.overwrite:
            remove(out, out.parent)
        elif not previous.exists():
            raise AlignlabError(f"{out}: holds an alignlab {marked_kind(out)}, not a sweep; choose another --out "
                                "or pass --overwrite true to replace it")
        elif previous.read_text() != resolved:
            raise AlignlabError(f"{previous}: this directory holds a sweep with a different configuration; "
                                "rerun with the same settings to resume it, or choose another --out "
                                "(or --overwrite true to start over)")
        else:  # the report at the end writes figures/: refuse a link there now, not after the runs
            check_no_link(out / "figures", out, what="the report's figures/ folder")
            return True
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "sweep")
    atomic.write_text(out / "sweep.yaml", resolved)
    return False


def _run_id(train_config: TrainConfig, generation, inputs_fingerprint: str) -> str:
    payload = json.dumps({"train": {k: v for k, v in train_config.to_dict().items() if k != "out"},
                          "generation": dataclasses.asdict(generation), "inputs": inputs_fingerprint},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def prepare_shared(config: StudyConfig, out: Path, methods: list[str], base_training: dict) -> Shared:
    from alignlab.data.pairs import load_pairs, write_pairs_jsonl
    from alignlab.evaluation.evaluate import evaluate_model
    from alignlab.models.generate import GenerationConfig
    from alignlab.training.reward_model import train_reward_model

    inputs = world_inputs(config, out) if config.uses_world else real_inputs(config)
    preset = config.preset if config.uses_world else None
    # The world fixes the lengths; the study's own `training` entries (in base_training) still win.
    training = {**inputs.lengths, **base_training, "cache_dir": config.cache_dir,
                "data_format": inputs.train_format, "data_filter": inputs.train_filter}
    generation = GenerationConfig(**{**WORLD_GENERATION.get(preset, {}), **config.generation, "seed": config.seed})
    write_pairs_jsonl(inputs.test_pairs, out / "data" / "test.jsonl")
    indist_file = out / "data" / "indist.jsonl"
    if indist_file.exists():  # a resumed sweep: its runs were evaluated on these prompts
        indist_pairs = load_pairs(str(indist_file), "pairs").pairs
    else:
        reporting = (len(inputs.test_pairs) if config.selection_data
                     else reporting_half_size(len(inputs.test_pairs)))
        indist_pairs = indist_pairs_of(inputs, reporting)
        if indist_pairs:
            write_pairs_jsonl(indist_pairs, indist_file)
    if inputs.families:
        atomic.write_json(out / "data" / "test_families.json", inputs.families)
    if config.selection_data:
        selection = load_evaluation_pairs(config.selection_data, config.selection_format,
                                          config.selection_data_options)
        if len(selection) < 1:
            raise AlignlabError(f"{config.selection_data}: no pairs to select runs on")
        check_selection_is_held_out(selection, inputs.test_pairs, config.selection_data)
        write_pairs_jsonl(selection, out / "data" / "selection.jsonl")

    proxy_rm, rm_accuracy = config.proxy_rm, None
    if any(get_method(m).uses_rewards for m in methods) and proxy_rm is None:
        rm_dir = out / "proxy_rm"
        if not (rm_dir / "train_summary.json").exists():
            log.info("training the proxy reward model")
            # The proxy reward model reads the training data as the policies do, unless told otherwise.
            reads_data_alike = {k: training[k] for k in READ_LIKE_THE_POLICIES if k in training}
            rm_settings = {**WORLD_REWARD_TRAINING.get(preset, {}), **inputs.lengths, **reads_data_alike,
                           **config.reward_training,
                           "seed": config.seed, "cache_dir": config.cache_dir,
                           "data_format": inputs.train_format, "data_filter": inputs.train_filter}
            train_reward_model(RewardModelConfig(model=inputs.rm_base, data=inputs.train_data,
                                                 eval_data=inputs.heldout_data, out=str(rm_dir), overwrite=True,
                                                 **rm_settings))
        proxy_rm = str(rm_dir / "model")
        rm_accuracy = json.loads((rm_dir / "train_summary.json").read_text())["heldout_accuracy"]

    # What the report says about the study; nothing here may vary between a run and its resumption.
    description = {k: v for k, v in inputs.description.items() if k != "world models cached"}
    atomic.write_json(out / "study.json", {
        **description,
        "training": ", ".join(f"{k}={training[k]}" for k in REPORTED_TRAINING if k in training),
        "generation": f"temperature {generation.temperature}, top-p {generation.top_p}, "
                      f"max {generation.max_new_tokens} new tokens" + (" (greedy)" if generation.greedy else ""),
        **({"proxy RM held-out accuracy": f"{rm_accuracy:.3f}"} if rm_accuracy is not None else {})})

    raw_prompts, revision = training.get("raw_prompts", False), training.get("revision")
    if indist_pairs and not (out / "runs" / "sft" / "indist" / "metrics.json").exists():
        log.info("evaluating the SFT model in distribution")
        evaluate_model(inputs.sft_model, indist_pairs, inputs.scorer, generation=generation,
                       out_dir=out / "runs" / "sft" / "indist", revision=revision, raw_prompts=raw_prompts)
    if not (out / "runs" / "sft" / "metrics.json").exists():
        log.info("evaluating the SFT model")
        evaluate_model(inputs.sft_model, inputs.test_pairs, inputs.scorer, sft_model_path=inputs.sft_model,
                       generation=generation, out_dir=out / "runs" / "sft",
                       proxy_scorer=cached_reward_scorer(proxy_rm, raw_prompts) if proxy_rm else None,
                       revision=revision, sft_revision=revision, raw_prompts=raw_prompts)
    return Shared(inputs, training, generation, proxy_rm, rm_accuracy)


def indist_pairs_of(inputs: StudyInputs, reporting_prompts: int) -> list:
    """The in-distribution prompts: the first held-out training-style pairs, as many as the test
    prompts that report (fewer when the held-out set is smaller), so the two means the report compares
    weigh alike; none without held-out pairs."""
    from alignlab.data.pairs import load_pairs

    if inputs.heldout_data is None:
        return []
    heldout = load_pairs(inputs.heldout_data, inputs.train_format, filter=inputs.train_filter).pairs
    return heldout[:reporting_prompts]


def warm_reference_cache(train_configs: list[TrainConfig]) -> None:
    """Compute the reference log-probs the runs will look up once, before parallel workers would each
    compute them, set up as the runs set themselves up (alignlab.training.offline.fill_reference_cache).
    A run whose setup fails here fails again as a run, where the store records its error."""
    from alignlab.training.offline import fill_reference_cache

    try:
        fill_reference_cache(train_configs)
    except AlignlabError as err:
        log.warning("reference cache not filled ahead of the runs (%s); each run computes its own", err)


def add_seeds_where_the_noise_is(config: StudyConfig, out: Path, specs: list[RunSpec], looks: list[dict],
                                 started: float, train: Callable[[set[str]], None]) -> None:
    """The sweep's sequential looks (alignlab.analysis.sequential.run_looks) on its finished runs: each
    look's new seeds (the next seed of each configuration it names, from `specs`) are saved in
    sequential.json before `train(run names)` trains them, so a resumed sweep trains the same runs. A look
    is made only while its runs fit what is left of the budget, at the mean wall-clock of this sweep's
    runs so far over its workers."""
    from alignlab.analysis import claims_of
    from alignlab.analysis.sequential import run_looks
    from alignlab.report.blocks import Sweep
    from alignlab.report.document import finite_summary

    max_seeds, budget_minutes = sequential_design(config)
    with RunStore(out / "runs.sqlite", readonly=True) as store:
        seconds = [run.seconds for run in store.runs("finished") if run.seconds]
    per_run = sum(seconds) / max(len(seconds), 1)
    trained: set[str] = {name for look in looks for name in look["added_runs"]}

    families = {}

    def evidence():
        swept = read_sweep(out)
        families["of prompts"] = swept.families
        return Sweep.of(swept.runs, swept.sft, swept.families).evidence

    def claims_at(ev, looks):
        return claims_of(ev, families["of prompts"], looks=looks, interim=True)

    def affordable(runs: int) -> bool:
        if budget_minutes is None:
            return True
        return time.perf_counter() - started + per_run * runs / config.workers <= 60 * budget_minutes

    def next_seeds(configurations, looks):
        new = []
        for configuration in configurations:
            same = json.dumps(configuration.params, sort_keys=True)
            name = next((spec.name for spec in specs if spec.method == configuration.method
                         and json.dumps({k: v for k, v in spec.all_params.items() if k != "seed"}, sort_keys=True)
                         == same and spec.name not in trained and spec.training["seed"] not in configuration.seeds),
                        None)
            if name is None:  # its stored parameters match no grid point: nothing to add, say so
                log.warning("look: no further seed of %s in the grid; it keeps its seeds", configuration.name)
                continue
            new.append(name)
        trained.update(new)
        looks[-1]["added_runs"] = new
        atomic.write_text(out / LOOKS_FILE, json.dumps(finite_summary({"looks": looks}), indent=1))
        log.info("look %d: %s decided; one more seed for %d configurations", looks[-1]["look"],
                 ", ".join(c["claim"] for c in looks[-1]["decided"]) or "nothing", len(new))
        train(trained)

    run_looks(evidence, next_seeds, max_seeds, claims_at, affordable, looks)


def run_sweep(config: StudyConfig) -> Path:
    """Run (or resume) a study over its grid and write its report; returns the sweep directory."""
    config.validate()
    config = dataclasses.replace(config, workers=default_workers(config))
    out = Path(config.out)
    started = time.perf_counter()
    # Everything the configuration alone can get wrong is checked before anything is written.
    preset = config.preset if config.uses_world else None
    base = {"learning_rate": TrainConfig.learning_rate, "epochs": TrainConfig.epochs,
            **WORLD_TRAINING.get(preset, {}), **config.training}
    specs = expand_grid(config, base, seeds=sequential_design(config)[0])  # every seed a look may add
    for spec in specs:
        TrainConfig.for_run({**base, **spec.training}, spec.method, spec.params,
                            model=config.model or "the study world's SFT model",
                            data=config.train_data or "the study world's pairs", out=out / "runs" / spec.name)
    inputs = [config.model, config.train_data, config.test_data, config.gold_rm, config.proxy_rm, config.cache_dir,
              config.selection_data]
    with claim_output_dir(out, overwrite=config.overwrite, inputs=inputs, writes=()):
        users_empty_dir = out.is_dir() and not any(out.iterdir())  # on failure, left as it was: there, empty
        resuming = open_sweep_dir(config)
        if resuming:
            remove_temp_files(out)
        return _run_open_sweep(config, specs, base, resuming, started, keep_dir=users_empty_dir)


# The names atomic writes give their temp files and directories (tempfile's 8 random characters).
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_temp_files(out: Path) -> None:
    """The temp files and dirs of atomic writes that a killed sweep left. The caller holds the
    directory's lock, so no writer is left that could still be using one."""
    for stale in sorted(out.rglob(".*.tmp"), reverse=True):
        if TEMP_NAME.fullmatch(stale.name) and not stale.is_symlink():
            remove(stale, out)


def _run_open_sweep(config: StudyConfig, specs: list[RunSpec], base: dict, resuming: bool, started: float,
                    keep_dir: bool) -> Path:
    out = Path(config.out)
    if resuming:
        log.info("resuming the sweep in %s", out)
    methods = list(dict.fromkeys(spec.method for spec in specs))
    try:
        shared = prepare_shared(config, out, methods, base)
    except AlignlabError:
        if not resuming:  # bad input files found while preparing: leave nothing behind
            for entry in out.iterdir():  # all ours: the directory was missing or empty, and we hold its lock
                remove(entry, out)
            if not keep_dir:
                out.rmdir()
        raise
    fingerprint = _resolved_yaml(config)  # the inputs follow from the configuration

    store = RunStore(out / "runs.sqlite")
    scorer = ({"gold_rm": config.gold_rm, "raw_prompts": shared.training.get("raw_prompts", False)}
              if not config.uses_world else {"world": config.preset, "seed": config.seed})

    def task_of(spec: RunSpec) -> RunTask:
        train_config = TrainConfig.for_run({**shared.training, **spec.training}, spec.method, spec.params,
                                           model=shared.inputs.sft_model, data=shared.inputs.train_data,
                                           out=out / "runs" / spec.name, reward_model=shared.proxy_rm)
        run_id = _run_id(train_config, shared.generation, fingerprint)
        store.register(run_id, spec.name, spec.method, spec.all_params, f"runs/{spec.name}")
        return RunTask(run_id, spec.name, str(out), train_config, dataclasses.asdict(shared.generation),
                       shared.inputs.sft_model, scorer, shared.proxy_rm)

    def run_tasks(tasks: list[RunTask]) -> None:
        finished = {run.run_id for run in store.runs("finished") if (out / run.run_dir / "metrics.json").exists()}
        todo = [task for task in tasks if task.run_id not in finished]
        needing_reference = [t for t in todo if get_method(t.train_config.method).uses_reference]
        if needing_reference and config.workers > 1:
            warm_reference_cache([task.train_config for task in needing_reference])
        log.info("%d runs: %d finished, %d to run", len(tasks), len(tasks) - len(todo), len(todo))
        execute_all(todo, store, config, len(tasks) - len(todo), len(tasks))

    # The first `seeds` of every configuration, and the seeds that earlier looks of a resumed sweep added.
    last_first_seed = config.first_training_seed + config.seeds - 1
    looks = read_looks(out)
    added = {name for look in looks for name in look["added_runs"]}
    run_tasks([task_of(spec) for spec in specs if spec.replicate <= last_first_seed or spec.name in added])
    if sequential_design(config)[0] > config.seeds:
        add_seeds_where_the_noise_is(config, out, specs, looks, started,
                                     lambda names: run_tasks([task_of(spec) for spec in specs if spec.name in names]))
    counts = store.counts()
    store.close()
    if config.study == "var":
        from alignlab.study.var_stages import run_var_stages

        run_var_stages(out, shared, config)
    write_sweep_report(out)
    log.info("sweep finished in %.1f s: %d runs finished, %d failed", time.perf_counter() - started,
             counts["finished"], counts["failed"])
    return out
