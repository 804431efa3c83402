"""`alignlab bench --model PATH`: the DPO-vs-TRL rows on a user's model (alignlab.bench.runner's
module docstring), full-parameter and LoRA, with `--quick` sized from timed warm-ups to five minutes
(alignlab.bench.sizing)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from alignlab.bench.runner import (MODES, TRL_MISSING, TRL_SIDES, Measurement, measure_dpo_vs_trl,
                                   measure_utilisation, record_dpo_vs_trl, run_worker, trl_available, written)
from alignlab.bench.setups import SHAPES, USER_MODEL_QUICK_BATCH, first_pairs, prepare_user_model, token_counts
from alignlab.bench.sizing import (CLOSING_SECONDS, QUICK_BUDGET_SECONDS, Probe, describe, predicted_runs_seconds,
                                   quick_pairs)


def run_model_bench(out: str | None, quick: bool, device: str, model: str, progress=print, data: str | None = None,
                    pairs: int | None = None, data_format: str | None = None, use_peft: bool = False) -> dict:
    """The DPO-vs-TRL rows of each mode on `model` (run_model_rows), the MFU line, written to `out`."""
    started = time.perf_counter()
    size = dict(SHAPES["tiny"]["quick" if quick else "full"])  # pairs, batch and repeats as before --model had modes
    results: dict = {"device": device, "size": "quick" if quick else "full", "pairs": pairs or size["pairs"],
                     "batch_size": size["batch_size"], "repeats": size["repeats"], "ratios": {}, "absolute": {}}
    with tempfile.TemporaryDirectory() as tmp:
        setup = run_model_rows(Path(tmp), results, quick, device, progress, model, data, data_format or "pairs",
                               pairs, use_peft, started)
        if "alignlab_dpo" in results["absolute"]:  # the MFU line counts full-parameter training's FLOPs
            measure_utilisation(setup, device, token_counts(setup), results)
    return written(out, results)


def run_model_rows(workdir: Path, results: dict, quick: bool, device: str, progress, model: str,
                   data: str | None, data_format: str, pairs: int | None, use_peft: bool, started: float) -> dict:
    """`--model`: the DPO-vs-TRL rows on the user's model, full-parameter and LoRA (only LoRA with
    `use_peft`). With `quick` and no `pairs` the run sizes itself to QUICK_BUDGET_SECONDS from timed
    warm-ups (alignlab.bench.sizing) and leaves TRL's precomputed variant out. Returns the setup
    (model and pairs) the rows trained on."""
    modes = ["lora"] if use_peft else list(MODES)
    size = {"batch_size": USER_MODEL_QUICK_BATCH if quick else results["batch_size"],
            "pairs": results["pairs"]}
    setup = prepare_user_model(workdir, size, model, data, data_format)
    results.update(model=model, data=data or "bench pairs", max_length=setup["max_length"], modes=modes,
                   batch_size=size["batch_size"], notes={})
    if not trl_available():
        results["trl"] = TRL_MISSING
        return setup
    repeats, trl_sides, warmed_up = results["repeats"], TRL_SIDES, False
    if quick:
        repeats, trl_sides = 1, TRL_SIDES[:1]
        results["notes"]["dpo_vs_trl_precomputed"] = ("not measured with --quick on a user's model: its runs do "
                                                      "not fit 5 minutes beside the others; run without --quick")
        if pairs is None:  # the timed warm-ups that size the run are the runs' warm-ups
            chosen, warm_ups, rows_fit = size_quick_run(workdir, setup, device, modes, progress, started,
                                                        results["pairs"])
            setup, warmed_up = first_pairs(setup, chosen, workdir), True
            if not rows_fit:  # no room to run the warm-ups' own pairs again: they are the first mode's rows
                record_dpo_vs_trl(results, modes[0], warm_ups["alignlab"], {"trl_dpo": warm_ups["TRL"]})
                results["notes"]["warm_ups"] = (f"the {modes[0]} rows are the timed warm-ups (alignlab's ran first, on "
                                                "colder caches): a run of the same pairs again would not fit")
    results.update(pairs=token_counts(setup)["pairs"], repeats=repeats)
    progress(f"bench: {model}, {results['pairs']} pairs, batch {size['batch_size']}, device {device}, modes "
             f"{' and '.join(modes)}, " + ("one run each after the warm-ups" if warmed_up else
                                            f"median of {repeats} after a warm-up") + "; DPO-vs-TRL rows only")
    for mode in modes:
        if MODES[mode] + "dpo_vs_trl" not in results["ratios"]:
            measure_dpo_vs_trl({**setup, "use_peft": mode == "lora"}, device, repeats, results, mode,
                               not warmed_up, trl_sides)
    results["skipped"] = "objective and sweep rows: they run on the bench's own models"
    return setup


def size_quick_run(workdir: Path, setup: dict, device: str, modes: list[str], progress, started: float,
                   available: int) -> tuple[int, dict[str, Measurement], bool]:
    """The pairs of a quick run on a user's model (alignlab.bench.sizing): each side's warm-up on one
    step's pairs in the first mode, timed; a later mode (LoRA after full parameters) is predicted from
    the first mode's. That is not a bound: a LoRA step has less backward and optimizer work, but its
    forward adds the adapters' own, and with LoRA's dropout kept (disable_dropout false) a mask per
    adapted layer. On 2 CPU cores (SmolLM2-135M, 8 HH pairs) alignlab's LoRA run took 16.6 s against
    16.3 s with full parameters, and 1.2-1.3 times as long with LoRA's dropout kept; the over-estimated
    fixed costs and the CLOSING_SECONDS kept back absorb it (whole quick runs: 2.5-3.8 min). Returns
    the pairs, the warm-ups' measurements by side, and whether a run per side and mode fits after them
    (else the warm-ups are the first mode's rows)."""
    batch_size = setup["batch_size"]
    step_setup = {**first_pairs(setup, batch_size, workdir), "use_peft": modes[0] == "lora"}
    probes, warm_ups = [], {}
    for side, kind, extra in (("alignlab", "alignlab-dpo", {}), ("TRL", "trl-dpo", {"precompute": False})):
        begun = time.perf_counter()
        warm_ups[side] = Measurement(**run_worker(kind, step_setup, device, **extra))
        probes.append(Probe(side, time.perf_counter() - begun, warm_ups[side].seconds, batch_size))
    seconds_left = QUICK_BUDGET_SECONDS - CLOSING_SECONDS - (time.perf_counter() - started)
    chosen = quick_pairs(probes, seconds_left, batch_size, available, runs_per_probe=len(modes))
    rows_fit = predicted_runs_seconds(probes, chosen, len(modes)) <= seconds_left
    progress(describe(probes, chosen, seconds_left, batch_size, runs_per_probe=len(modes) - (not rows_fit)))
    return chosen, warm_ups, rows_fit
