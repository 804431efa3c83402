"""One run of a sweep and the executors that run many: `execute_run` trains (alignlab.training.offline)
then evaluates (alignlab.evaluation.evaluate) one grid point, in distribution (when the sweep has
data/indist.jsonl) and on the test prompts, skipping the steps a previous attempt completed;
`execute_all` runs the tasks in this process, in local worker processes or on Ray, recording each
start and end in the run store."""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from alignlab.config import TrainConfig
from alignlab.errors import AlignlabError
from alignlab.models.score import cached_reward_scorer
from alignlab.study.config import StudyConfig
from alignlab.study.store import RunStore

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- one run

@dataclass
class RunTask:
    """Everything a worker needs to train and evaluate one run; it pickles (to worker processes and Ray)."""

    run_id: str
    name: str
    sweep_dir: str
    train_config: TrainConfig  # built once, by TrainConfig.for_run: its hyper-parameters resolved
    generation: dict  # GenerationConfig fields
    sft_model: str
    scorer: dict  # {"world": preset, "seed": n} or {"gold_rm": path, "raw_prompts": bool}
    proxy_rm: str | None = None  # scores every response a second time: the reward training saw


# Evaluations of a run beside the test prompts', each on data/<name>.jsonl into <run>/<name>/ when the
# sweep has that file: the in-distribution prompts, and the user's selection prompts.
EXTRA_EVALUATIONS = ("indist", "selection")


@functools.lru_cache(maxsize=4)
def _pairs(path: str):
    from alignlab.data.pairs import load_pairs

    return load_pairs(path, "pairs").pairs


@functools.lru_cache(maxsize=4)
def _scorer(spec_json: str):
    spec = json.loads(spec_json)
    if "gold_rm" in spec:
        return cached_reward_scorer(spec["gold_rm"], spec["raw_prompts"])
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
        train(dataclasses.replace(task.train_config, out=str(run_dir), resume=True, overwrite=True))
    scorer, generation = _scorer(json.dumps(task.scorer, sort_keys=True)), GenerationConfig(**task.generation)
    raw_prompts = task.train_config.raw_prompts  # the run's prompts are encoded as it trained
    for extra in EXTRA_EVALUATIONS:  # each before metrics.json: a run with it has them all
        pairs = sweep_dir / "data" / f"{extra}.jsonl"
        if pairs.exists() and not (run_dir / extra / "metrics.json").exists():
            evaluate_model(str(run_dir / "model"), _pairs(str(pairs)), scorer, generation=generation,
                           out_dir=run_dir / extra, raw_prompts=raw_prompts)
    if not (run_dir / "metrics.json").exists():
        evaluate_model(str(run_dir / "model"), _pairs(str(sweep_dir / "data" / "test.jsonl")), scorer,
                       sft_model_path=task.sft_model,
                       sft_samples=_sft_samples(str(sweep_dir / "runs" / "sft" / "samples.parquet")),
                       generation=generation, out_dir=run_dir,
                       proxy_scorer=cached_reward_scorer(task.proxy_rm, raw_prompts) if task.proxy_rm else None,
                       sft_revision=task.train_config.revision, raw_prompts=raw_prompts)
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




# The study world's runs are small (hidden size 128 in the default world): two threads on one run's
# matrix products gain less than a second run on the other core, and a thread that waits on a busy
# core stalls its run. Measured on 2 CPU cores, the default world (see README, "Speed of a study").
MAX_DEFAULT_WORKERS = 8  # each local worker is a process of its own (~0.5 GB with torch and transformers)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(config: StudyConfig) -> int:
    """`workers` when given; else the study world's runs go one per CPU core (at most
    MAX_DEFAULT_WORKERS) in local worker processes of one thread each, and runs of your own models,
    or on Ray, one at a time (each may need every core and its memory)."""
    if config.workers is not None:
        return config.workers
    if config.uses_world and config.executor == "local":
        return max(1, min(available_cpus(), MAX_DEFAULT_WORKERS))
    return 1


def make_executor(config: StudyConfig):
    threads = max(1, available_cpus() // config.workers)
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

