"""The VAR study's own stages (SPEC §6 items 8–10), run after the sweep by `alignlab run --study var`.

Item 7 (VAR vs DPO vs SFT on helpful and harmful prompts) needs only the sweep's runs; the stages
here add what a sweep does not measure, each written to `var/` in the sweep directory and skipped
when its result is already there (a killed study resumes):

- race:    VAR, DPO and GRPO trained from the SFT model with a model snapshot every few steps, each
           snapshot evaluated on the test prompts: gold (and proxy) reward against wall-clock and
           against training responses. Each race run has its own empty cache (none reuses what
           another computed), so its one-off work (reward scoring, reference log-probs, loading)
           counts: a curve starts at its setup time.
- z:       the spread of VAR's in-batch normaliser and weights against micro-batch size, from the
           training data's reference log-probs and proxy rewards (cached by the sweep's VAR runs),
           with summed and with length-normalised reference log-probs.
- compute: SFT, DPO, SimPO and VAR each trained for one epoch on the same pairs in a fresh process
           (reference log-probs cached): wall-clock per epoch, tokens/s, peak memory.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from alignlab import atomic
from alignlab.config import TrainConfig
from alignlab.objectives.registry import get_method
from alignlab.study.config import Shared, StudyConfig

log = logging.getLogger(__name__)

RACE_METHODS = ("var", "dpo", "grpo")
# GRPO samples G responses per prompt at every step, so a step costs far more than an offline one:
# the race gives it a step budget (StudyConfig.race_grpo_steps, over as many epochs as that takes)
# rather than an epoch over every prompt.
RACE_GRPO = {"epochs": 1000, "batch_size": 8}
RACE_GRPO_PARAMS = {"group_size": 4}
Z_BATCH_SIZES = (2, 4, 8, 16, 32, 64)
COMPUTE_METHODS = ("sft", "dpo", "simpo", "var")


def run_var_stages(out: Path, shared: Shared, config: StudyConfig) -> None:
    """The race, the Z-estimator spread and the compute profile, each skipped when already done."""
    var_dir = out / "var"
    var_dir.mkdir(exist_ok=True)
    if not (var_dir / "race.json").exists():
        atomic.write_json(var_dir / "race.json", run_race(var_dir / "race", shared, config.race_snapshots,
                                                          config.race_grpo_steps))
    if not (var_dir / "z_variance.json").exists():
        atomic.write_json(var_dir / "z_variance.json", z_variance(shared))
    if not (var_dir / "compute.json").exists():
        atomic.write_json(var_dir / "compute.json", compute_profile(shared))


def _train_config(shared: Shared, method: str, out: Path, params: dict | None = None, **settings) -> TrainConfig:
    """A stage's run of `method` on the sweep's SFT model and training pairs: the sweep's training
    settings, `settings` over them."""
    return TrainConfig.for_run({**shared.training, **settings}, method, params or {}, model=shared.inputs.sft_model,
                               data=shared.inputs.train_data, out=out, reward_model=shared.proxy_rm)


# ---------------------------------------------------------------- race

def run_race(race_dir: Path, shared: Shared, snapshots: int, grpo_steps: int) -> dict:
    """Train the race's three runs with snapshots and evaluate every snapshot; the curves as JSON."""
    from alignlab.evaluation.evaluate import evaluate_model
    from alignlab.models.score import cached_reward_scorer
    from alignlab.training import train
    from alignlab.training.outputs import SNAPSHOTS

    n_pairs = sum(1 for line in Path(shared.inputs.train_data).read_text().splitlines() if line.strip())
    offline_steps = math.ceil(n_pairs / shared.training["batch_size"]) * shared.training.get("epochs", 1)
    proxy = cached_reward_scorer(shared.proxy_rm, shared.training.get("raw_prompts", False))
    curves = {}
    for method in RACE_METHODS:
        run = race_dir / method
        settings = {**RACE_GRPO, "max_steps": grpo_steps} if method == "grpo" else {}
        steps = settings.get("max_steps", offline_steps)
        config = _train_config(shared, method, run, RACE_GRPO_PARAMS if method == "grpo" else None,
                               cache_dir=str(race_dir / "cache" / method), snapshot_steps=max(1, steps // snapshots),
                               resume=True, overwrite=True, **settings)
        if not (run / "train_summary.json").exists():
            log.info("race: training %s with a snapshot every %d steps", method, config.snapshot_steps)
            train(config)
        summary = json.loads((run / "train_summary.json").read_text())
        points = []
        for snapshot in sorted((run / SNAPSHOTS).iterdir()):
            if not (snapshot / "eval" / "metrics.json").exists():
                evaluate_model(str(snapshot), shared.inputs.test_pairs, shared.inputs.scorer, generation=shared.generation,
                               out_dir=snapshot / "eval", proxy_scorer=proxy, tokenizer_path=str(run / "model"),
                               raw_prompts=config.raw_prompts)
            point = json.loads((snapshot / "snapshot.json").read_text())
            samples = _samples(snapshot / "eval" / "samples.parquet")
            points.append({"step": point["step"], "seconds": summary["setup_seconds"] + point["train_seconds"],
                           "samples": point["responses_seen"], **samples})
        curves[method] = {"params": summary["params"], "setup_seconds": summary["setup_seconds"],
                          "batch_size": config.batch_size, "max_steps": config.max_steps, "points": points}
    return {"methods": curves, "test_prompts": len(shared.inputs.test_pairs)}


def _samples(path: Path) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["prompt_id", "gold_score", "proxy_score"]).to_pydict()
    return {"prompt_id": table["prompt_id"], "gold_score": table["gold_score"], "proxy_score": table["proxy_score"]}


# ---------------------------------------------------------------- Z estimator

def z_variance(shared: Shared) -> dict:
    """VAR's normaliser and weights over random micro-batches of the training responses (every
    chosen and rejected response is a sample), at VAR's default λ, summed and length-normalised."""
    import torch

    from alignlab.analysis import z_estimator_variance
    from alignlab.models.loading import load_causal_lm, load_tokenizer
    from alignlab.cache import default_cache_dir
    from alignlab.data.tokenise import length_settings, tokenize_pairs
    from alignlab.training.inputs import choose_layout, pair_rewards, reference_logps
    from alignlab.training.loop import load_training_pairs

    config = _train_config(shared, "var", Path("unused"))
    lam = config.params["lam"]  # VAR's default
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.revision)
    pairs = load_training_pairs(config).pairs
    examples, _ = tokenize_pairs(tokenizer, pairs, raw_prompts=config.raw_prompts, **length_settings(config))
    model = load_causal_lm(config.model, config.dtype, config.trust_remote_code, config.revision)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    layout = choose_layout(model, examples, tokenizer.pad_token_id, "cpu", config.packing, config.max_length)
    reference = reference_logps(config, examples, tokenizer.pad_token_id, cache_dir, "cpu", model, layout).logps
    rewards = pair_rewards(config, pairs, cache_dir, "cpu")
    ref_logps = torch.cat([reference["chosen"], reference["rejected"]]).double().numpy()
    lengths = torch.tensor([len(e.chosen_ids) for e in examples] + [len(e.rejected_ids) for e in examples],
                           dtype=torch.float64).clamp(min=1).numpy()
    reward = torch.cat([rewards["chosen"], rewards["rejected"]]).double().numpy()
    return {"lam": lam, "responses": len(reward),
            "summed": z_estimator_variance(ref_logps, reward, lam, Z_BATCH_SIZES),
            "length_normalised": z_estimator_variance(ref_logps / lengths, reward, lam, Z_BATCH_SIZES)}


# ---------------------------------------------------------------- compute profile

def compute_profile(shared: Shared) -> dict:
    """One epoch of each method on the same pairs, each in a fresh process (its own peak memory),
    one after another; the reference log-probs come from the cache, so the epoch is training only."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in COMPUTE_METHODS:
            config = _train_config(shared, method, Path(tmp) / method)
            # The built config itself, pickled: the process trains it as it is, its hyper-parameters resolved.
            done = subprocess.run([sys.executable, "-m", "alignlab.study.var_stages"], input=pickle.dumps(config),
                                  capture_output=True, check=False, env=_quiet_env())
            if done.returncode != 0:
                raise RuntimeError(f"compute profile: training {method} failed:\n"
                                   f"{done.stderr.decode(errors='replace')[-3000:]}")
            rows.append({"method": method, **json.loads(done.stdout.decode().strip().splitlines()[-1])})
    return {"rows": rows, "device": _device_name()}


def _quiet_env() -> dict:
    import os

    return {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


class ResidentSetSampler:
    """The process's resident set, sampled every few milliseconds while training runs.

    The process's lifetime peak (ru_maxrss) is reached while the libraries load, before any model
    exists, so it is the same for every method; the peak while training, above the resident set just
    before it, is what the method itself costs. Linux only (/proc); elsewhere both read as None.
    """

    def __init__(self, interval_s: float = 0.005):
        import os
        import threading

        self.page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self.interval_s = interval_s
        self.baseline_mb = self.peak_mb = self._current_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _current_mb(self) -> float | None:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * self.page_mb
        except OSError:
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self._current_mb())

    def __enter__(self):
        if self.baseline_mb is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def measure_training(config: TrainConfig) -> dict:
    """Train one epoch and measure it: seconds, tokens forwarded per second, peak memory."""
    import resource

    import torch

    from alignlab.models.loading import load_tokenizer
    from alignlab.data.tokenise import length_settings, tokenize_pairs
    from alignlab.training import train
    from alignlab.training.loop import load_training_pairs

    with ResidentSetSampler() as resident:
        result = train(config)
    examples, _ = tokenize_pairs(load_tokenizer(config.model, config.trust_remote_code, config.revision),
                                 load_training_pairs(config).pairs, raw_prompts=config.raw_prompts,
                                 **length_settings(config))
    # The tokens of the rows each method trains on, prompts counted once per response.
    if get_method(config.method).uses_rejected:
        tokens = sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)
    else:
        tokens = sum(len(e.prompt_ids) + len(e.chosen_ids) for e in examples)
    if torch.cuda.is_available():
        peak_mb, memory = torch.cuda.max_memory_allocated() / 2**20, "peak CUDA memory"
    else:
        peak_mb, memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"
    added = None if resident.baseline_mb is None else resident.peak_mb - resident.baseline_mb
    return {"epoch_seconds": result.seconds / config.epochs,
            "tokens_per_second": tokens * config.epochs / result.seconds,
            "peak_memory_mb": peak_mb, "memory": memory, "training_rss_peak_mb": resident.peak_mb,
            "training_rss_added_mb": added, "pairs": result.pairs_trained, "steps": result.optimizer_steps}


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    print(json.dumps(measure_training(pickle.load(sys.stdin.buffer))))
