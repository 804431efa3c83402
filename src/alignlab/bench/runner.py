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
need the bench's own models and are skipped.
Equal work is checked, not assumed: pairs, tokens, optimizer steps and batch size of both sides are
printed, and the run fails if they differ.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from alignlab.bench.setups import SHAPES, prepare_hh, prepare_tiny, prepare_user_model
from alignlab.bench.sweep import measure_sweep_vs_independent

TARGETS = {"dpo_vs_trl": (">=", 2.0), "dpo_vs_trl_precomputed": (">=", 1.3), "peak_mem_vs_trl": ("<=", 1.0),
           "dpo_vs_sft": (">=", 0.95), "ln_dpo_vs_sft": (">=", 0.95), "simpo_vs_sft": (">=", 0.95),
           "var_vs_sft": (">=", 0.95), "dpo_mfu_vs_sft": (">=", 0.9), "sweep_vs_independent": ("<=", 0.6),
           "study_vs_sequential": (">=", 2.0)}
OBJECTIVES = ["sft", "dpo", "ln-dpo", "simpo", "var"]
LEARNING_RATE, BETA = 1e-4, 0.1
# On realistic shapes the reference pass is a larger share of TRL's run, and precomputing it saves more.
SHAPE_TARGETS = {"hh": {"dpo_vs_trl_precomputed": (">=", 1.5)}}


@dataclass
class Measurement:
    seconds: float
    pairs: int
    tokens: int
    optimizer_steps: int
    batch_size: int
    peak_memory_mb: float


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _train_config(setup: dict, method: str, out: Path, cache_dir: Path, device: str):
    from alignlab.config import TrainConfig

    settings = {"batch_size": setup["batch_size"], "learning_rate": LEARNING_RATE, "warmup_ratio": 0.0,
                "max_length": setup["max_length"], "max_prompt_length": setup["max_length"] // 2,
                "cache_dir": str(cache_dir), "logging_steps": 10**9}
    return TrainConfig.for_run(settings, method, {"beta": BETA} if method == "dpo" else {}, model=setup["model"],
                               data=setup["data"], out=out)


def token_counts(setup: dict) -> dict:
    """Token counts of the bench data as alignlab tokenises it: `forwarded` (prompt twice, as TRL
    counts a pair's two rows: the equal-work check), `pair` (prompt once plus both responses) and
    `sft` (prompt plus chosen), the last two the useful tokens of the MFU rows."""
    from alignlab.data.pairs import load_pairs
    from alignlab.data.tokenise import tokenize_pairs
    from alignlab.models.loading import load_tokenizer

    examples, _ = tokenize_pairs(load_tokenizer(setup["model"]), load_pairs(setup["data"]).pairs,
                                 setup["max_length"], setup["max_length"] // 2)
    prompt, chosen, rejected = (sum(len(getattr(e, f"{part}_ids")) for e in examples)
                                for part in ("prompt", "chosen", "rejected"))
    return {"pairs": len(examples), "forwarded": 2 * prompt + chosen + rejected,
            "pair": prompt + chosen + rejected, "sft": prompt + chosen}


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
    counts = token_counts(setup)
    return Measurement(seconds, counts["pairs"], counts["forwarded"], result.optimizer_steps, setup["batch_size"],
                       _peak_memory_mb(device))


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
        args = DPOConfig(output_dir=tmp, use_cpu=device == "cpu", bf16=False, per_device_train_batch_size=setup["batch_size"],
                         num_train_epochs=1, max_length=setup["max_length"], learning_rate=LEARNING_RATE, beta=BETA,
                         precompute_ref_log_probs=precompute, report_to=[], save_strategy="no",
                         logging_steps=10**9, disable_tqdm=True, seed=0)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        output = trainer.train()
        trainer.save_model(str(Path(tmp) / "model"))
        seconds = time.perf_counter() - start
        tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                     for r in trainer.train_dataset)
    return Measurement(seconds, len(dataset), tokens, output.global_step, setup["batch_size"], _peak_memory_mb(device))


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


def _median_measurement(kind: str, setup: dict, device: str, repeats: int, **extra) -> Measurement:
    runs = [Measurement(**run_worker(kind, setup, device, **extra)) for _ in range(repeats + 1)][1:]
    middle = sorted(runs, key=lambda m: m.seconds)[len(runs) // 2]
    return Measurement(statistics.median(m.seconds for m in runs), middle.pairs, middle.tokens,
                       middle.optimizer_steps, middle.batch_size, max(m.peak_memory_mb for m in runs))


def check_equal_work(a: Measurement, b: Measurement, names: tuple[str, str]) -> None:
    for field_name in ("pairs", "tokens", "optimizer_steps", "batch_size"):
        if getattr(a, field_name) != getattr(b, field_name):
            raise RuntimeError(f"unequal work: {names[0]} {field_name}={getattr(a, field_name)} but "
                               f"{names[1]} {field_name}={getattr(b, field_name)}")


def run_bench(out: str | None, quick: bool, device: str, progress=print, model: str | None = None,
              data: str | None = None, pairs: int | None = None, shape: str = "tiny",
              data_format: str | None = None) -> dict:
    """Every row of the bench on `shape` (alignlab.bench.setups), or with `model` the DPO-vs-TRL rows
    on that model; `data_format` reads `data` (default: hh-rlhf for the hh shape, else pairs)."""
    size = dict(SHAPES[shape]["quick" if quick else "full"])
    size["pairs"] = pairs or size["pairs"]
    data_format = data_format or ("hh-rlhf" if shape == "hh" and data is None else "pairs")
    repeats = size["repeats"]
    results: dict = {"device": device, "shape": shape, "size": "quick" if quick else "full", **size,
                     "ratios": {}, "absolute": {}}
    ratios, absolute = results["ratios"], results["absolute"]
    with tempfile.TemporaryDirectory() as tmp:
        if model:
            setup = prepare_user_model(Path(tmp), size, model, data, data_format)
            results.update(model=model, data=data or "bench pairs", max_length=setup["max_length"])
            progress(f"bench: {model}, {size['pairs']} pairs, batch {size['batch_size']}, device {device}, "
                     f"median of {repeats} after a warm-up; DPO-vs-TRL rows only")
        else:
            setup = prepare_hh(Path(tmp), size, data, data_format) if shape == "hh" else prepare_tiny(Path(tmp), size)
            results["data"] = setup["data"] if shape == "tiny" else (data or "HH-RLHF harmless-base test")
            progress(f"bench: shape {shape}, {size['pairs']} pairs, Llama hidden {size['hidden_size']} × "
                     f"{size['layers']} layers, max_length {size['max_length']}, batch {size['batch_size']}, "
                     f"device {device}, median of {repeats} after a warm-up")
        ours = _median_measurement("alignlab-dpo", setup, device, repeats)
        absolute["alignlab_dpo"] = asdict(ours)
        try:
            import trl  # noqa: F401
            trl_available = True
        except ImportError:
            trl_available = False
        if trl_available:
            for key, precompute in (("trl_dpo", False), ("trl_dpo_precomputed", True)):
                theirs = _median_measurement("trl-dpo", setup, device, repeats, precompute=precompute)
                check_equal_work(ours, theirs, ("alignlab", key))
                absolute[key] = asdict(theirs)
            ratios["dpo_vs_trl"] = absolute["trl_dpo"]["seconds"] / ours.seconds
            ratios["dpo_vs_trl_precomputed"] = absolute["trl_dpo_precomputed"]["seconds"] / ours.seconds
            ratios["peak_mem_vs_trl"] = ours.peak_memory_mb / absolute["trl_dpo"]["peak_memory_mb"]
        else:
            results["trl"] = "not installed: pip install 'alignlab[bench]' for the TRL rows"
        counts = token_counts(setup)
        if model:
            results["skipped"] = "objective and sweep rows: they run on the bench's own models"
        else:
            measure_objective_rows(setup, device, repeats, counts, results)
            if shape != "tiny":
                results["skipped"] = "sweep_vs_independent, study_vs_sequential: measured on the tiny shape only"
            else:
                progress("bench: a 6-run DPO sweep against 6 independent train + eval runs")
                sweep = absolute["sweep"] = measure_sweep_vs_independent(setup, Path(tmp), LEARNING_RATE)
                ratios["sweep_vs_independent"] = sweep["sweep_seconds"] / sweep["independent_seconds"]
                measure_study_rows(Path(tmp), results, progress)
        measure_utilisation(setup, device, counts, results)
    if out:
        from alignlab.atomic import write_json

        write_json(out, results)
    return results


def measure_study_rows(workdir: Path, results: dict, progress=print) -> None:
    """study_runs_per_minute and study_vs_sequential (alignlab.bench.study): `alignlab run` on the
    default study world against its runs done one by one as separate commands."""
    from alignlab.bench.study import measure_study_vs_sequential

    progress("bench: `alignlab run` on the default world against its runs as separate train + eval commands")
    study = results["absolute"]["study"] = measure_study_vs_sequential(workdir / "study-row")
    per_minute = 60 * study["study_runs"] / study["study_seconds"]
    results["absolute"]["study_runs_per_minute"] = per_minute
    results["ratios"]["study_vs_sequential"] = per_minute / (60 * study["sequential_runs"] / study["sequential_seconds"])


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


def format_table(results: dict) -> str:
    lines = [f"{'ratio':<24}{'value':>9}  {'target':<8} met", "-" * 48]
    targets = {**TARGETS, **SHAPE_TARGETS.get(results.get("shape", "tiny"), {})}
    for key, (op, target) in targets.items():
        value = results["ratios"].get(key)
        if value is None:
            lines.append(f"{key:<24}{'n/a':>9}  {op} {target:<5}")
            continue
        met = value >= target if op == ">=" else value <= target
        lines.append(f"{key:<24}{value:>9.2f}  {op} {target:<5} {'yes' if met else 'NO'}")
    absolute = results["absolute"]
    lines.append("")
    lines.append(f"{'run':<22}{'seconds':>9}{'pairs':>7}{'tokens':>9}{'steps':>7}{'batch':>7}{'peak MB':>9}")
    for key in ("alignlab_dpo", "trl_dpo", "trl_dpo_precomputed"):
        if key in absolute:
            m = absolute[key]
            lines.append(f"{key:<22}{m['seconds']:>9.2f}{m['pairs']:>7}{m['tokens']:>9}{m['optimizer_steps']:>7}"
                         f"{m['batch_size']:>7}{m['peak_memory_mb']:>9.0f}")
    if "sweep" in absolute:
        sweep = absolute["sweep"]
        lines.append(f"{'sweep (6 DPO runs)':<22}{sweep['sweep_seconds']:>9.2f}{sweep['pairs']:>7}"
                     f"{'':>9}{sweep['optimizer_steps']:>7}{results['batch_size']:>7}")
        lines.append(f"{'independent (6 runs)':<22}{sweep['independent_seconds']:>9.2f}{sweep['pairs']:>7}"
                     f"{'':>9}{sweep['optimizer_steps']:>7}{results['batch_size']:>7}")
    if "study" in absolute:
        study = absolute["study"]
        lines.append(f"study_runs_per_minute {absolute['study_runs_per_minute']:.2f}: `alignlab run` on the default "
                     f"world, {study['study_runs']} runs in {study['study_seconds']:.1f} s ({study['workers']} "
                     f"workers); {study['sequential_runs']} of them as separate train + eval commands in "
                     f"{study['sequential_seconds']:.1f} s")
    lines.append("")
    lines.append("training tokens/s (reference cached): " + ", ".join(
        f"{k} {v:,.0f}" for k, v in absolute.get("tokens_per_second", {}).items()))
    if "mfu" in results:
        mfu = results["mfu"]
        shares = ", ".join(f"{name} {mfu[key]:.1%}" for key, name in (
            ("sft_loop", "SFT loop"), ("dpo_loop", "DPO loop"), ("alignlab_dpo", "alignlab DPO end to end"),
            ("trl_dpo", "TRL DPO end to end"), ("trl_dpo_precomputed", "TRL DPO precomputed")) if key in mfu)
        lines.append(f"model FLOPs utilisation of {mfu['matmul_flops_per_second'] / 1e9:,.1f} GFLOP/s (dense "
                     f"float32 matmul, N = {mfu['flop_parameters']:,}): {shares}")
    for note in ("trl", "skipped"):
        if isinstance(results.get(note), str):
            lines.append(f"{note}: {results[note]}")
    return "\n".join(lines)


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
