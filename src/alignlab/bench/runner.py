"""`alignlab bench`: throughput and memory against TRL and against the SFT limit, as ratios.

Every figure is measured in the same command, on the same model and pairs: a shape's (`tiny`, the
default, or `hh`, real HH-RLHF pairs at max_length 512; see alignlab.bench.setups), built locally
with a chat template so that alignlab and TRL split prompt and response into exactly the same
tokens. Each measurement runs in a fresh worker process (so peak memory is that run's own), once as
a warm-up and then `repeats` times; the median counts.

Rows (higher is better, except memory):
- dpo_vs_trl: alignlab DPO pairs/s ÷ TRL DPOTrainer pairs/s at TRL's defaults. Both sides are timed
  from files on disk to the trained model on disk: load, tokenise, reference log-probs, train, save.
  alignlab starts with an empty reference cache, so its one-off reference pass is included.
- dpo_vs_trl_precomputed: the same against TRL with precompute_ref_log_probs=True.
- dpo_vs_sft, ln_dpo_vs_sft, simpo_vs_sft, var_vs_sft: training tokens/s of each objective ÷ SFT
  tokens/s (tokens = prompt + response tokens of every forwarded row), training loop only, with
  reference log-probs already cached — the practical limit for a preference objective.
- sweep_vs_independent (tiny shape only): wall-clock of one `alignlab sweep` over a 6-point DPO β grid ÷ the same six
  runs done independently, each as `alignlab train` then `alignlab eval --sft` (lower is better).
  Both sides train the same pairs and evaluate the same prompts with the same gold RM (a tiny
  sequence classifier built here); each starts with an empty cache. The sweep also evaluates the
  SFT model once; the independent evaluations each evaluate it again, as a user would.
- study_vs_sequential (tiny shape only): runs per minute of `alignlab run` on the default study
  world (6 runs of DPO, LN-DPO and SimPO at the default `workers`) ÷ runs per minute of the same
  runs each done as `alignlab train` + `alignlab eval` commands (3 of them, one per method), with
  study_runs_per_minute, the study's own rate, beside it (alignlab.bench.study).
- peak_mem_vs_trl: alignlab peak memory ÷ TRL's for the same DPO training (lower is better):
  peak RSS of the worker process on CPU, peak allocated CUDA memory on a GPU.
- dpo_mfu_vs_sft, and the MFU line: model FLOPs utilisation (alignlab.bench.mfu) of SFT's and DPO's
  training loops and of both libraries' end-to-end DPO, against the device's dense float32 matmul
  throughput measured in the same run.
With `--model PATH` (any local model, or a .gguf file) the DPO-vs-TRL rows (dpo_vs_trl,
dpo_vs_trl_precomputed, peak_mem_vs_trl) run on that model instead, on the bench pairs or on the
pairs of `--data FILE` (the "pairs" format `alignlab data` writes), the first `--pairs N` of them
that fit max_length 256 (prompt ≤ 128 tokens) untruncated; the rows that compare objectives or sweeps
need the bench's own models and are skipped. They run in two modes (MODES): full-parameter DPO, and
LoRA DPO (rows prefixed `lora_`) with alignlab's default adapter, given to TRL as the same
peft.LoraConfig (`peft_config`); `use_peft` runs the LoRA mode alone. `--quick` on a user's model
sizes its pairs from timed warm-ups to five minutes (alignlab.bench.sizing).
Equal work is checked, not assumed: pairs, tokens, optimizer steps, batch size and the parameters
saved (the model's, or the adapter's) of both sides are printed, and the run fails if they differ.
TRL 1.16's DPOTrainer turns `padding_free` off whatever it is given (TRL_PADDING_FREE, printed
under the table): its side always trains on padded batches.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from alignlab.bench.setups import SHAPES, prepare_hh, prepare_tiny, token_counts
from alignlab.bench.sweep import measure_sweep_vs_independent
from alignlab.bench.study import measure_study_rows

TARGETS = {"dpo_vs_trl": (">=", 2.0), "dpo_vs_trl_precomputed": (">=", 1.3), "peak_mem_vs_trl": ("<=", 1.0),
           "dpo_vs_sft": (">=", 0.95), "ln_dpo_vs_sft": (">=", 0.95), "simpo_vs_sft": (">=", 0.95),
           "var_vs_sft": (">=", 0.95), "dpo_mfu_vs_sft": (">=", 0.9), "sweep_vs_independent": ("<=", 0.6),
           "study_vs_sequential": (">=", 2.0)}
OBJECTIVES = ["sft", "dpo", "ln-dpo", "simpo", "var"]
LEARNING_RATE, BETA = 1e-4, 0.1
# tiny is overhead-bound and no user trains there: a regression row. On realistic shapes the reference
# pass is a larger share of TRL's run, and precomputing it saves more.
SHAPE_TARGETS = {"tiny": {"dpo_vs_trl": (">=", 1.5)}, "hh": {"dpo_vs_trl_precomputed": (">=", 1.5)}}
# --model: each mode's rows (MODES' prefix) on a real model, where logits decide time and memory.
MODEL_TARGETS = {"dpo_vs_trl": (">=", 2.5), "dpo_vs_trl_precomputed": (">=", 1.3), "peak_mem_vs_trl": ("<=", 0.6)}


@dataclass
class Measurement:
    seconds: float
    pairs: int
    tokens: int
    optimizer_steps: int
    batch_size: int
    peak_memory_mb: float
    saved_parameters: int  # in the saved model: all weights, or with LoRA the adapter's (the same adapter)


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _train_config(setup: dict, method: str, out: Path, cache_dir: Path, device: str):
    from alignlab.config import TrainConfig

    settings = {"batch_size": setup["batch_size"], "learning_rate": LEARNING_RATE, "warmup_ratio": 0.0,
                "max_length": setup["max_length"], "max_prompt_length": setup["max_length"] // 2,
                "cache_dir": str(cache_dir), "logging_steps": 10**9, "use_peft": setup.get("use_peft", False)}
    return TrainConfig.for_run(settings, method, {"beta": BETA} if method == "dpo" else {}, model=setup["model"],
                               data=setup["data"], out=out)


def saved_parameters(directory: Path) -> int:
    """Elements of every tensor saved in `directory` (a model's weights, or a LoRA adapter's)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def _import_libraries() -> None:
    """Import what both sides use before their clocks start: the benchmark times work, not imports
    (TRL's side imports its trainer, and with it transformers' Trainer, before its clock too)."""
    import accelerate  # noqa: F401
    from transformers import AutoTokenizer, LlamaForCausalLM, get_scheduler  # noqa: F401

    import alignlab.training.offline  # noqa: F401


def worker_alignlab_dpo(setup: dict, device: str) -> Measurement:
    from alignlab.training import train

    _import_libraries()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(_train_config(setup, "dpo", Path(tmp) / "run", Path(tmp) / "cache", device))
        seconds = time.perf_counter() - start
        saved = saved_parameters(Path(tmp) / "run" / "model")
    counts = token_counts(setup)
    return Measurement(seconds, counts["pairs"], counts["forwarded"], result.optimizer_steps, setup["batch_size"],
                       _peak_memory_mb(device), saved)


def worker_trl_dpo(setup: dict, device: str, precompute: bool) -> Measurement:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    _import_libraries()
    rows = [json.loads(line) for line in Path(setup["data"]).read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": r["prompt"] if isinstance(r["prompt"], list)
                                  else [{"role": "user", "content": r["prompt"]}],
                                  "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(setup["model"])
        tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(setup["model"])
        adapter = trl_peft_config(setup, model, Path(tmp))
        args = DPOConfig(output_dir=tmp, use_cpu=device == "cpu", bf16=False, per_device_train_batch_size=setup["batch_size"],
                         num_train_epochs=1, max_length=setup["max_length"], learning_rate=LEARNING_RATE, beta=BETA,
                         precompute_ref_log_probs=precompute, report_to=[], save_strategy="no",
                         logging_steps=10**9, disable_tqdm=True, seed=0)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=adapter)
        output = trainer.train()
        trainer.save_model(str(Path(tmp) / "model"))
        seconds = time.perf_counter() - start
        tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                     for r in trainer.train_dataset)
        saved = saved_parameters(Path(tmp) / "model")
    return Measurement(seconds, len(dataset), tokens, output.global_step, setup["batch_size"], _peak_memory_mb(device),
                       saved)


def trl_peft_config(setup: dict, model, workdir: Path):
    """With `use_peft`, the LoRA adapter alignlab trains with its default settings (r, alpha, dropout,
    every linear layer but the output head), as the same peft.LoraConfig object; else None."""
    if not setup.get("use_peft"):
        return None
    from alignlab.training.policy import lora_config

    return lora_config(_train_config(setup, "dpo", workdir / "unused", workdir / "unused-cache", "cpu"), model)


def worker_objectives(setup: dict, device: str, repeats: int) -> dict:
    """Training-loop seconds per objective, reference log-probs cached, median over repeats."""
    from alignlab.training import train

    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for method in OBJECTIVES:
            seconds = []
            for repeat in range(repeats + 1):  # the first is the warm-up (and fills the cache)
                out = Path(tmp) / f"{method}-{repeat}"
                seconds.append(train(_train_config(setup, method, out, cache, device)).seconds)
            medians[method] = statistics.median(seconds[1:])
    return medians


def worker_matmul(device: str) -> dict:
    from alignlab.bench.mfu import matmul_flops_per_second

    return {"flops_per_second": matmul_flops_per_second(device)}


def run_worker(kind: str, setup: dict, device: str, **extra) -> dict:
    """Run one measurement in a fresh process and return its JSON result."""
    payload = json.dumps({"kind": kind, "setup": setup, "device": device, **extra})
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "alignlab.bench.runner", payload], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_measurement(kind: str, setup: dict, device: str, repeats: int, warm_up: bool = True,
                        **extra) -> Measurement:
    runs = [Measurement(**run_worker(kind, setup, device, **extra)) for _ in range(repeats + warm_up)][warm_up:]
    middle = sorted(runs, key=lambda m: m.seconds)[len(runs) // 2]
    return Measurement(statistics.median(m.seconds for m in runs), middle.pairs, middle.tokens,
                       middle.optimizer_steps, middle.batch_size, max(m.peak_memory_mb for m in runs),
                       middle.saved_parameters)


def check_equal_work(a: Measurement, b: Measurement, names: tuple[str, str]) -> None:
    """Both sides trained the same pairs and tokens in the same steps and batches, and saved as many
    parameters (the whole model, or with LoRA an adapter of the same shape)."""
    for field_name in ("pairs", "tokens", "optimizer_steps", "batch_size", "saved_parameters"):
        if getattr(a, field_name) != getattr(b, field_name):
            raise RuntimeError(f"unequal work: {names[0]} {field_name}={getattr(a, field_name)} but "
                               f"{names[1]} {field_name}={getattr(b, field_name)}")


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


# Where alignlab accepts TRL's name `padding_free` (as `packing`), TRL 1.16's DPOTrainer does not honour it.
TRL_PADDING_FREE = ("TRL 1.16's DPOTrainer turns padding_free off whatever it is given (trl/trainer/dpo_trainer.py, "
                    "lines 732-739: a warning, then self.padding_free = False), so TRL's rows are padded and forward "
                    "each prompt once per response; alignlab packs (packing, which also takes the name padding_free)")
TRL_MISSING = "not installed: pip install 'alignlab[bench]' for the TRL rows"


def run_bench(out: str | None, quick: bool, device: str, progress=print, data: str | None = None,
              pairs: int | None = None, shape: str = "tiny", data_format: str | None = None) -> dict:
    """Every row of the bench on `shape` (alignlab.bench.setups); `data_format` reads `data` (default:
    hh-rlhf for the hh shape, else pairs). A user's model: alignlab.bench.user_model."""
    size = dict(SHAPES[shape]["quick" if quick else "full"])
    size["pairs"] = pairs or size["pairs"]
    data_format = data_format or ("hh-rlhf" if shape == "hh" and data is None else "pairs")
    repeats = size["repeats"]
    results: dict = {"device": device, "shape": shape, "size": "quick" if quick else "full", **size,
                     "ratios": {}, "absolute": {}}
    ratios, absolute = results["ratios"], results["absolute"]
    with tempfile.TemporaryDirectory() as tmp:
        setup = prepare_hh(Path(tmp), size, data, data_format) if shape == "hh" else prepare_tiny(Path(tmp), size)
        results["data"] = setup["data"] if shape == "tiny" else (data or "HH-RLHF harmless-base test")
        progress(f"bench: shape {shape}, {size['pairs']} pairs, Llama hidden {size['hidden_size']} × "
                 f"{size['layers']} layers, max_length {size['max_length']}, batch {size['batch_size']}, "
                 f"device {device}, median of {repeats} after a warm-up")
        if trl_available():
            measure_dpo_vs_trl(setup, device, repeats, results)
        else:
            absolute["alignlab_dpo"] = asdict(median_measurement("alignlab-dpo", setup, device, repeats))
            results["trl"] = TRL_MISSING
        counts = token_counts(setup)
        measure_objective_rows(setup, device, repeats, counts, results)
        if shape != "tiny":
            results["skipped"] = "sweep_vs_independent, study_vs_sequential: measured on the tiny shape only"
        else:
            progress("bench: a 6-run DPO sweep against 6 independent train + eval runs")
            sweep = absolute["sweep"] = measure_sweep_vs_independent(setup, Path(tmp), LEARNING_RATE)
            ratios["sweep_vs_independent"] = sweep["sweep_seconds"] / sweep["independent_seconds"]
            measure_study_rows(Path(tmp), results, progress)  # alignlab.bench.study
        measure_utilisation(setup, device, counts, results)
    return written(out, results)


def written(out: str | None, results: dict) -> dict:
    if out:
        from alignlab.atomic import write_json

        write_json(out, results)
    return results


# A TRL side's row name and its DPOTrainer setting: TRL at its defaults, and with the reference
# log-probs precomputed.
TRL_SIDES = (("trl_dpo", False), ("trl_dpo_precomputed", True))
# With --model: full-parameter DPO, and LoRA with alignlab's default adapter (`use_peft`), whose rows
# and runs carry the prefix.
MODES = {"full": "", "lora": "lora_"}


def measure_dpo_vs_trl(setup: dict, device: str, repeats: int, results: dict, mode: str = "full",
                       warm_up: bool = True, trl_sides=TRL_SIDES) -> None:
    """One mode's DPO-vs-TRL rows: alignlab and each of `trl_sides` on the same pairs, equal work
    checked; `warm_up` false when the caller has already run this setup's warm-ups."""
    ours = median_measurement("alignlab-dpo", setup, device, repeats, warm_up)
    theirs = {key: median_measurement("trl-dpo", setup, device, repeats, warm_up, precompute=precompute)
              for key, precompute in trl_sides}
    record_dpo_vs_trl(results, mode, ours, theirs)


def record_dpo_vs_trl(results: dict, mode: str, ours: Measurement, theirs: dict[str, Measurement]) -> None:
    """One mode's runs (alignlab's, and TRL's by TRL_SIDES key) and ratios, after the equal-work check."""
    prefix, ratios, absolute = MODES[mode], results["ratios"], results["absolute"]
    results.setdefault("notes", {})["padding_free"] = TRL_PADDING_FREE
    absolute[prefix + "alignlab_dpo"] = asdict(ours)
    for key, measurement in theirs.items():
        check_equal_work(ours, measurement, (prefix + "alignlab_dpo", prefix + key))
        absolute[prefix + key] = asdict(measurement)
        ratios[prefix + key.replace("trl_dpo", "dpo_vs_trl")] = measurement.seconds / ours.seconds
    ratios[prefix + "peak_mem_vs_trl"] = ours.peak_memory_mb / theirs["trl_dpo"].peak_memory_mb


def measure_objective_rows(setup: dict, device: str, repeats: int, counts: dict, results: dict) -> None:
    """Each objective's training tokens/s against SFT's, on the shape's own model."""
    ratios, absolute = results["ratios"], results["absolute"]
    seconds = absolute["objective_seconds"] = run_worker("objectives", setup, device, repeats=repeats)
    # SFT forwards prompt + chosen only; every other objective forwards both rows.
    rates = {method: counts["sft" if method == "sft" else "forwarded"] / seconds[method] for method in OBJECTIVES}
    absolute["tokens_per_second"] = rates
    for method in OBJECTIVES[1:]:
        ratios[f"{method.replace('-', '_')}_vs_sft"] = rates[method] / rates["sft"]


def measure_utilisation(setup: dict, device: str, counts: dict, results: dict) -> None:
    """MFU of every timed training (see alignlab.bench.mfu) against the device's matmul throughput,
    measured here in a fresh process: the training loops of SFT and DPO (reference cached) and the
    end-to-end DPO runs of both libraries (their reference pass counted once, as 2·N per token)."""
    from alignlab.bench.mfu import flop_parameters, training_flops, utilisation
    from alignlab.models.loading import load_causal_lm

    absolute = results["absolute"]
    peak = run_worker("matmul", setup, device)["flops_per_second"]
    parameters = flop_parameters(load_causal_lm(setup["model"]))
    mfu = {"matmul_flops_per_second": peak, "flop_parameters": parameters}
    for key in ("alignlab_dpo", "trl_dpo", "trl_dpo_precomputed"):
        if key in absolute:
            flops = training_flops(parameters, counts["pair"], reference_tokens=counts["pair"])
            mfu[key] = utilisation(flops, absolute[key]["seconds"], peak)
    if "objective_seconds" in absolute:
        for method, tokens in (("sft", counts["sft"]), ("dpo", counts["pair"])):
            mfu[f"{method}_loop"] = utilisation(training_flops(parameters, tokens),
                                                absolute["objective_seconds"][method], peak)
        results["ratios"]["dpo_mfu_vs_sft"] = mfu["dpo_loop"] / mfu["sft_loop"]
    results["mfu"] = mfu


def _worker_main(payload: str) -> None:
    request = json.loads(payload)
    kind, setup, device = request["kind"], request["setup"], request["device"]
    if kind == "alignlab-dpo":
        result = asdict(worker_alignlab_dpo(setup, device))
    elif kind == "trl-dpo":
        result = asdict(worker_trl_dpo(setup, device, request["precompute"]))
    elif kind == "matmul":
        result = worker_matmul(device)
    else:
        result = worker_objectives(setup, device, request["repeats"])
    print(json.dumps(result))


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    _worker_main(sys.argv[1])
