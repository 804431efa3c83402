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
    data/                        train.jsonl, heldout.jsonl (world), test.jsonl
    proxy_rm/                    the proxy reward model
    runs/sft/                    the SFT model's evaluation (samples.parquet, metrics.json)
    runs/<run name>/             a run: config.yaml, train_summary.json, model/, samples.parquet, metrics.json
    summary.json, report.md, report.html, figures/

Resuming: starting the same sweep again skips finished runs and redoes the rest. Each step of a
run leaves a file that says it is complete (training renames `.NAME.partial` to `NAME` when it
ends; evaluation writes `metrics.json` last), so a run killed after training only evaluates.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from alignlab import atomic
from alignlab.config import RewardModelConfig, TrainConfig, dump_yaml
from alignlab.errors import AlignlabError, unknown_name_message
from alignlab.models.score import cached_reward_scorer
from alignlab.objectives.registry import get_method
from alignlab.output_dirs import claim_output_dir, mark, marked_kind
from alignlab.study.store import RunStore
from alignlab.study.config import (REPORTED_TRAINING, WORLD_GENERATION, WORLD_REWARD_TRAINING, WORLD_TRAINING,
                            StudyConfig, StudyInputs, real_inputs, world_inputs)

log = logging.getLogger(__name__)

# Named grids. Learning rates are multiples of the study's base rate (the world preset's, or the
# `training.learning_rate` you give), because sensible absolute rates differ by orders of magnitude
# between the study world's tiny models and billion-parameter ones.
GRID_PRESETS = {
    # `alignlab run`: two points per method, so the default world finishes in minutes.
    "small": {"methods": ["dpo", "ln-dpo", "simpo", "var"], "learning_rate_scales": [1.0],
              "grid": {"dpo": {"beta": [0.1, 0.5]}, "ln-dpo": {"beta": [1.0, 2.0]},
                       "simpo": {"beta": [2.0], "gamma": [0.5, 1.0]}, "var": {"lam": [0.5, 1.0]}}},
    # The Hitchhiker study: β ranges of the DPO and SimPO papers, each at three learning rates.
    "hitchhiker": {"methods": ["dpo", "ln-dpo", "simpo"], "learning_rate_scales": [0.5, 1.0, 2.0],
                   "grid": {"dpo": {"beta": [0.01, 0.05, 0.1, 0.3, 0.5]},
                            "ln-dpo": {"beta": [0.5, 1.0, 2.0, 3.0, 5.0]},
                            "simpo": {"beta": [1.0, 2.0, 2.5], "gamma": [0.5, 1.0, 1.5]}}},
    # The VAR paper's comparison: VAR's λ grid against DPO's β grid.
    "var": {"methods": ["var", "dpo"], "learning_rate_scales": [0.5, 1.0, 2.0],
            "grid": {"var": {"lam": [0.25, 0.5, 1.0, 2.0, 4.0]}, "dpo": {"beta": [0.01, 0.05, 0.1, 0.3, 0.5]}}},
    # `alignlab run --study var`: two λ for each Z estimator, summed and length-normalised, against two β.
    "var-small": {"methods": ["var", "dpo"], "learning_rate_scales": [1.0],
                  "grid": {"var": {"lam": [0.5, 1.0], "z_estimator": ["batch", "prompt", "sampled"],
                                   "length_normalize": [False, True], "z_samples": [4]},
                           "dpo": {"beta": [0.1, 0.5]}}},
}
TRAINING_GRID_KEYS = ("learning_rate", "epochs")  # grid keys that are training settings, not method parameters
SHORT_NAMES = {"learning_rate": "lr", "epochs": "ep", "seed": "s"}


# ---------------------------------------------------------------- the grid

@dataclass
class RunSpec:
    """One grid point: a method, its hyper-parameters and its training settings."""

    name: str
    method: str
    params: dict  # the method's hyper-parameters, resolved (defaults filled in)
    training: dict  # learning_rate, epochs, seed

    @property
    def all_params(self) -> dict:
        return {**self.params, **self.training}


def _value_name(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_grid(config: StudyConfig, base_training: dict) -> list[RunSpec]:
    """The runs of a study: per method, the product of its grid values (preset, then `grid`, whose
    entries win), learning rates, epochs and seeds. Names carry every value that varies."""
    preset = {}
    if config.grid_preset is not None:
        if config.grid_preset not in GRID_PRESETS:
            raise AlignlabError(unknown_name_message("config: grid_preset", config.grid_preset, list(GRID_PRESETS)))
        preset = GRID_PRESETS[config.grid_preset]
    methods = config.methods or preset.get("methods") or []
    if not methods:
        raise AlignlabError("config: no methods; set 'methods' or a 'grid_preset'")
    for key in config.grid:
        if key != "all" and key not in methods:
            raise AlignlabError(unknown_name_message("config: grid names method", key, ["all", *methods]))
    for key in config.method_params:
        if key not in methods:
            raise AlignlabError(unknown_name_message("config: method_params names method", key, methods))
    base_lr = base_training["learning_rate"]
    shared_grid = {"learning_rate": [base_lr * s for s in preset.get("learning_rate_scales", [1.0])],
                   "epochs": [base_training["epochs"]], **config.grid.get("all", {})}
    seeds = config.seeds or [config.seed]
    runs = []
    for method_name in methods:
        method = get_method(method_name)
        names = {hp.name for hp in method.hyperparameters}
        grid = {**{k: [v] for k, v in config.method_params.get(method_name, {}).items()},
                **({k: v for k, v in preset["grid"].get(method_name, {}).items()} if preset else {}),
                **shared_grid, **config.grid.get(method_name, {})}
        for key, values in grid.items():
            if key not in names and key not in TRAINING_GRID_KEYS:
                raise AlignlabError(unknown_name_message(f"config: grid.{method_name} has unknown key", key,
                                                         sorted(names | set(TRAINING_GRID_KEYS))))
            if not isinstance(values, list) or not values:
                raise AlignlabError(f"config: grid.{method_name}.{key} must be a non-empty list of values, "
                                    f"got {values!r}")
        grid["seed"] = seeds
        keys = sorted(grid, key=lambda k: k not in names)  # method parameters first, in names too
        for values in itertools.product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values))
            training = {k: point.pop(k) for k in (*TRAINING_GRID_KEYS, "seed")}
            try:
                params = method.resolve(point)
            except AlignlabError as err:
                raise AlignlabError(f"config: grid (or method_params) of {err}") from None
            varying = [k for k in keys if len(grid[k]) > 1 or k in ("learning_rate", "seed")]
            name = "-".join([method_name, *(f"{SHORT_NAMES.get(k, k)}{_value_name({**params, **training}[k])}"
                                            for k in varying)])
            runs.append(RunSpec(name, method_name, params, training))
    duplicates = [n for n, count in collections.Counter(r.name for r in runs).items() if count > 1]
    if duplicates:
        raise AlignlabError(f"config: the grid repeats runs ({', '.join(duplicates[:3])}); remove repeated values")
    return runs


# ---------------------------------------------------------------- one run

@dataclass
class RunTask:
    """Everything a worker needs to train and evaluate one run; plain data, so it pickles."""

    run_id: str
    name: str
    sweep_dir: str
    train_config: dict  # TrainConfig fields
    generation: dict  # GenerationConfig fields
    sft_model: str
    scorer: dict  # {"world": preset, "seed": n} or {"gold_rm": path}
    proxy_rm: str | None = None  # scores every response a second time: the reward training saw


@functools.lru_cache(maxsize=4)
def _test_pairs(path: str):
    from alignlab.data.pairs import load_pairs

    return load_pairs(path, "pairs").pairs


@functools.lru_cache(maxsize=4)
def _scorer(spec_json: str):
    spec = json.loads(spec_json)
    if "gold_rm" in spec:
        return cached_reward_scorer(spec["gold_rm"])
    from alignlab.world import build_world, world_config

    return build_world(world_config(spec["world"], seed=spec["seed"])).score


@functools.lru_cache(maxsize=4)
def _sft_samples(path: str) -> dict:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["prompt_id", "gold_score"]).to_pydict()


def execute_run(task: RunTask) -> dict:
    """Train and evaluate one run, skipping the steps a previous attempt completed; returns its
    metrics and wall-clock seconds."""
    from alignlab.evaluation.evaluate import evaluate_model
    from alignlab.models.generate import GenerationConfig
    from alignlab.training import train

    started = time.perf_counter()
    sweep_dir = Path(task.sweep_dir)
    run_dir = sweep_dir / "runs" / task.name
    if not (run_dir / "train_summary.json").exists():
        # resume=True continues from the checkpoint a killed attempt left in `.NAME.partial`.
        train(TrainConfig(**{**task.train_config, "out": str(run_dir), "resume": True, "overwrite": True}))
    if not (run_dir / "metrics.json").exists():
        evaluate_model(str(run_dir / "model"), _test_pairs(str(sweep_dir / "data" / "test.jsonl")),
                       _scorer(json.dumps(task.scorer, sort_keys=True)), sft_model_path=task.sft_model,
                       sft_samples=_sft_samples(str(sweep_dir / "runs" / "sft" / "samples.parquet")),
                       generation=GenerationConfig(**task.generation), out_dir=run_dir,
                       proxy_scorer=cached_reward_scorer(task.proxy_rm) if task.proxy_rm else None)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"metrics": metrics, "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- executors

def _worker_init(threads: int) -> None:
    """A local worker process: share the cores, and die with the sweep."""
    import torch

    torch.set_num_threads(threads)
    try:  # Linux: a SIGKILLed sweep takes its workers along, so a restart never races an orphan.
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class InProcessExecutor:
    """Runs each task when it is submitted, in this process (one worker: progress bars nest)."""

    def submit(self, fn, task) -> futures.Future:
        future = futures.Future()
        try:
            future.set_result(fn(task))
        except Exception as err:  # a failed run is recorded, the sweep goes on
            future.set_exception(err)
        return future

    def shutdown(self) -> None:
        pass


class RayExecutor:
    """One Ray task per run, on the cluster at `address` or a local one started here."""

    def __init__(self, address: str | None, cpus_per_run: int):
        try:
            import ray
        except ImportError as err:
            raise AlignlabError("executor 'ray' needs Ray: pip install 'alignlab[ray]' (or pip install ray)") from err
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.remote = ray.remote(num_cpus=cpus_per_run, max_retries=0)(execute_run)

    def submit(self, fn, task) -> futures.Future:
        return self.remote.remote(task).future()

    def shutdown(self) -> None:
        pass  # a cluster the user started stays up; a local one ends with this process




def make_executor(config: StudyConfig):
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    if config.executor == "ray":
        return RayExecutor(config.ray_address, threads)
    if config.workers == 1:
        return InProcessExecutor()
    import multiprocessing

    return futures.ProcessPoolExecutor(config.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(threads,))


@contextlib.contextmanager
def quiet_worker_processes(config: StudyConfig):
    """Worker processes started meanwhile show no progress bars of their own: several runs' bars
    would interleave under the sweep's. tqdm reads TQDM_DISABLE when it is imported, so it must be
    in the environment the workers start with; this process's own bars are already set up."""
    if config.executor != "local" or config.workers == 1:
        yield
        return
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = previous


def execute_all(tasks: list[RunTask], store: RunStore, config: StudyConfig, finished: int, total: int) -> None:
    """Run the tasks, at most `workers` at a time, recording each start and end in the store."""
    with quiet_worker_processes(config):
        _execute_all(tasks, store, config, finished, total)


def _execute_all(tasks: list[RunTask], store: RunStore, config: StudyConfig, finished: int, total: int) -> None:
    executor = make_executor(config)
    waiting = list(tasks)
    in_flight: dict[futures.Future, RunTask] = {}
    progress = tqdm(total=total, initial=finished, desc="sweep", unit="run", position=0)
    try:
        while waiting or in_flight:
            while waiting and len(in_flight) < config.workers:
                task = waiting.pop(0)
                store.mark_running(task.run_id)
                progress.set_postfix_str(task.name)
                in_flight[executor.submit(execute_run, task)] = task
            done, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
            for future in done:
                task = in_flight.pop(future)
                try:
                    result = future.result()
                except Exception as err:
                    log.error("run %s failed: %s: %s", task.name, type(err).__name__, err)
                    store.mark_failed(task.run_id, f"{type(err).__name__}: {err}")
                else:
                    store.mark_finished(task.run_id, result["metrics"], result["seconds"])
                progress.update(1)
    finally:
        progress.close()
        executor.shutdown()


# ---------------------------------------------------------------- the sweep

RESULT_NEUTRAL_FIELDS = ("out", "workers", "executor", "ray_address", "overwrite")  # may differ on restart


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
            shutil.rmtree(out)
        elif not previous.exists():
            raise AlignlabError(f"{out}: holds an alignlab {marked_kind(out)}, not a sweep; choose another --out "
                                "or pass --overwrite true to replace it")
        elif previous.read_text() != resolved:
            raise AlignlabError(f"{previous}: this directory holds a sweep with a different configuration; "
                                "rerun with the same settings to resume it, or choose another --out "
                                "(or --overwrite true to start over)")
        else:
            return True
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "sweep")
    atomic.write_text(out / "sweep.yaml", resolved)
    return False


def _run_id(train_config: TrainConfig, generation, inputs_fingerprint: str) -> str:
    payload = json.dumps({"train": {k: v for k, v in dataclasses.asdict(train_config).items() if k != "out"},
                          "generation": dataclasses.asdict(generation), "inputs": inputs_fingerprint},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Shared:
    """What every run of a sweep reuses."""

    inputs: StudyInputs
    training: dict
    generation: object
    proxy_rm: str | None
    rm_accuracy: float | None


def prepare_shared(config: StudyConfig, out: Path, methods: list[str], base_training: dict) -> Shared:
    from alignlab.data.pairs import write_pairs_jsonl
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
    if inputs.families:
        atomic.write_json(out / "data" / "test_families.json", inputs.families)

    proxy_rm, rm_accuracy = config.proxy_rm, None
    if any(get_method(m).uses_rewards for m in methods) and proxy_rm is None:
        rm_dir = out / "proxy_rm"
        if not (rm_dir / "train_summary.json").exists():
            log.info("training the proxy reward model")
            rm_settings = {**WORLD_REWARD_TRAINING.get(preset, {}), **inputs.lengths, **config.reward_training,
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

    if not (out / "runs" / "sft" / "metrics.json").exists():
        log.info("evaluating the SFT model")
        evaluate_model(inputs.sft_model, inputs.test_pairs, inputs.scorer, sft_model_path=inputs.sft_model,
                       generation=generation, out_dir=out / "runs" / "sft",
                       proxy_scorer=cached_reward_scorer(proxy_rm) if proxy_rm else None)
    return Shared(inputs, training, generation, proxy_rm, rm_accuracy)


def warm_reference_cache(train_config: TrainConfig) -> None:
    """Compute the reference log-probs once, before parallel workers would each compute them."""
    from alignlab.models.loading import load_causal_lm, load_tokenizer
    from alignlab.cache import default_cache_dir
    from alignlab.data.tokenise import tokenize_pairs
    from alignlab.training.inputs import reference_logps, shared_prompt_works
    from alignlab.training.loop import load_training_pairs

    tokenizer = load_tokenizer(train_config.model, train_config.trust_remote_code)
    pairs = load_training_pairs(train_config).pairs
    examples, _ = tokenize_pairs(tokenizer, pairs, train_config.max_length, train_config.max_prompt_length)
    model = load_causal_lm(train_config.reference_model or train_config.model, train_config.dtype,
                           train_config.trust_remote_code)
    cache_dir = Path(train_config.cache_dir) if train_config.cache_dir else default_cache_dir()
    reference_logps(train_config, examples, tokenizer.pad_token_id, cache_dir, "cpu", model,
                    shared_prompt_works(model, examples, tokenizer.pad_token_id, "cpu"))


def run_sweep(config: StudyConfig) -> Path:
    """Run (or resume) a study over its grid and write its report; returns the sweep directory."""
    config.validate()
    out = Path(config.out)
    started = time.perf_counter()
    # Everything the configuration alone can get wrong is checked before anything is written.
    preset = config.preset if config.uses_world else None
    base = {"learning_rate": TrainConfig.learning_rate, "epochs": TrainConfig.epochs,
            **WORLD_TRAINING.get(preset, {}), **config.training}
    specs = expand_grid(config, base)
    for spec in specs:
        TrainConfig(method=spec.method, model=config.model or "the study world's SFT model",
                    data=config.train_data or "the study world's pairs", out=str(out / "runs" / spec.name),
                    params=spec.params, **{**base, **spec.training}).validate()
    inputs = [config.model, config.train_data, config.test_data, config.gold_rm, config.proxy_rm, config.cache_dir]
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
        if not TEMP_NAME.fullmatch(stale.name):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink()


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
            for entry in out.iterdir():  # all ours: the directory was missing or empty
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            if not keep_dir:
                out.rmdir()
        raise
    fingerprint = _resolved_yaml(config)  # the inputs follow from the configuration

    tasks, store = [], RunStore(out / "runs.sqlite")
    scorer = {"gold_rm": config.gold_rm} if not config.uses_world else {"world": config.preset, "seed": config.seed}
    for spec in specs:
        train_config = TrainConfig(method=spec.method, model=shared.inputs.sft_model, data=shared.inputs.train_data,
                                   out=str(out / "runs" / spec.name), params=spec.params,
                                   reward_model=shared.proxy_rm if get_method(spec.method).uses_rewards else None,
                                   **{**shared.training, **spec.training})
        train_config.validate()
        run_id = _run_id(train_config, shared.generation, fingerprint)
        store.register(run_id, spec.name, spec.method, spec.all_params, f"runs/{spec.name}")
        tasks.append(RunTask(run_id, spec.name, str(out), dataclasses.asdict(train_config),
                             dataclasses.asdict(shared.generation), shared.inputs.sft_model, scorer,
                             shared.proxy_rm))
    finished = {run.run_id for run in store.runs("finished") if (out / run.run_dir / "metrics.json").exists()}
    todo = [task for task in tasks if task.run_id not in finished]
    needing_reference = [t for t in todo if get_method(t.train_config["method"]).uses_reference]
    if needing_reference and config.workers > 1:
        warm_reference_cache(TrainConfig(**needing_reference[0].train_config))
    log.info("%d runs: %d finished, %d to run", len(tasks), len(tasks) - len(todo), len(todo))
    execute_all(todo, store, config, len(tasks) - len(todo), len(tasks))
    counts = store.counts()
    store.close()
    if config.study == "var":
        from alignlab.study.var_stages import run_var_stages

        run_var_stages(out, shared, config)
    write_sweep_report(out)
    log.info("sweep finished in %.1f s: %d runs finished, %d failed", time.perf_counter() - started,
             counts["finished"], counts["failed"])
    return out


# ---------------------------------------------------------------- report

def load_run_record(run_dir: Path, name: str, method: str, params: dict, metrics: dict):
    """A run's evaluation as an analysis.RunRecord: metrics plus per-sample columns from its
    samples.parquet. An AlignlabError names the file when it is missing or unreadable, has no rows,
    lacks a column or holds one of another type."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alignlab.analysis import RunRecord
    from alignlab.untrusted import clip

    path = run_dir / "samples.parquet"
    redo = f"delete {run_dir / 'metrics.json'} and rerun the sweep to evaluate the run again"
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

    samples = {"prompt_id": np.array(table["prompt_id"]), "gold_score": numbers("gold_score"),
               "length": numbers("length")}
    if "proxy_score" in table:
        samples["proxy_score"] = numbers("proxy_score")
    if "logp_sft" in table:
        kl = numbers("logp_policy") - numbers("logp_sft")
        samples["kl"], samples["ln_kl"] = kl, kl / np.maximum(samples["length"], 1)
    return RunRecord(name, method, params, metrics, samples)


def write_sweep_report(out: str | Path) -> dict:
    """`alignlab report DIR`: the robustness report of the finished runs in a sweep directory.

    The run store is opened read-only: the report never writes runs.sqlite, whatever it holds.
    Damage to what every run shares (runs.sqlite, sweep.yaml, study.json, runs/sft/) is an
    AlignlabError naming the file; a damaged run is skipped and named in the report's "runs" line
    (alignlab.report's docstring says why)."""
    from alignlab.config import read_yaml
    from alignlab.report import check_metrics, check_params, write_report
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
    sft = load_run_record(sft_dir, "sft", "sft", {}, read_json(sft_dir / "metrics.json", check_metrics))
    sft_prompts = set(sft.samples["prompt_id"].tolist())

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
            run = load_run_record(out / row.run_dir, row.name, row.method, params, metrics)
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
    seeds = sorted({r.params["seed"] for r in runs if "seed" in r.params}, key=lambda s: (isinstance(s, str), s))
    context = {**study,
               "runs": f"{len(runs)} finished of {len(rows)}"
                       + (f"; unfinished or failed: {', '.join(unfinished)}" if unfinished else "")
                       + (f"; skipped as damaged: {'; '.join(skipped)}" if skipped else ""),
               "methods": ", ".join(dict.fromkeys(r.method for r in runs)),
               "grid": config.get("grid_preset") or "custom",
               "training seeds": ", ".join(str(s) for s in seeds),
               "test prompts": len(sft.samples["prompt_id"])}
    var = None
    if config.get("study") == "var":
        def optional_json(path: Path):
            return read_json(path) if path.exists() else None

        var = {"families": optional_json(out / "data" / "test_families.json"),
               "race": optional_json(out / "var" / "race.json"), "z": optional_json(out / "var" / "z_variance.json"),
               "compute": optional_json(out / "var" / "compute.json")}
    return write_report(out, runs, sft, context, title="alignlab sweep report", var=var)
