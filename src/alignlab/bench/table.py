"""The bench's printed table: each ratio against its target, the runs behind them, and the notes."""

from __future__ import annotations

from alignlab.bench.runner import MODEL_TARGETS, MODES, SHAPE_TARGETS, TARGETS
from alignlab.bench.study import study_line


def table_targets(results: dict) -> dict:
    """Each row's target: with --model every mode's MODEL_TARGETS, else TARGETS and the shape's own."""
    if "model" in results:
        return {MODES[mode] + key: target for mode in results["modes"] for key, target in MODEL_TARGETS.items()}
    return {**TARGETS, **SHAPE_TARGETS.get(results.get("shape", "tiny"), {})}


def format_table(results: dict) -> str:
    lines = [f"{'ratio':<28}{'value':>9}  {'target':<8} met", "-" * 52]
    for key, (op, target) in table_targets(results).items():
        value = results["ratios"].get(key)
        if value is None:
            lines.append(f"{key:<28}{'n/a':>9}  {op} {target:<5}")
            continue
        met = value >= target if op == ">=" else value <= target
        lines.append(f"{key:<28}{value:>9.2f}  {op} {target:<5} {'yes' if met else 'NO'}")
    absolute = results["absolute"]
    lines.append("")
    lines.append(f"{'run':<26}{'seconds':>9}{'pairs':>7}{'tokens':>9}{'steps':>7}{'batch':>7}{'peak MB':>9}"
                 f"{'saved params':>14}")
    for key in (prefix + run for prefix in MODES.values() for run in ("alignlab_dpo", "trl_dpo", "trl_dpo_precomputed")):
        if key in absolute:
            m = absolute[key]
            lines.append(f"{key:<26}{m['seconds']:>9.2f}{m['pairs']:>7}{m['tokens']:>9}{m['optimizer_steps']:>7}"
                         f"{m['batch_size']:>7}{m['peak_memory_mb']:>9.0f}{m.get('saved_parameters', 0):>14,}")
    if "sweep" in absolute:
        sweep = absolute["sweep"]
        lines.append(f"{'sweep (6 DPO runs)':<26}{sweep['sweep_seconds']:>9.2f}{sweep['pairs']:>7}"
                     f"{'':>9}{sweep['optimizer_steps']:>7}{results['batch_size']:>7}")
        lines.append(f"{'independent (6 runs)':<26}{sweep['independent_seconds']:>9.2f}{sweep['pairs']:>7}"
                     f"{'':>9}{sweep['optimizer_steps']:>7}{results['batch_size']:>7}")
    if "study" in absolute:
        lines.append(study_line(absolute))
    if "tokens_per_second" in absolute:
        lines.append("")
        lines.append("training tokens/s (reference cached): " + ", ".join(
            f"{k} {v:,.0f}" for k, v in absolute["tokens_per_second"].items()))
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
    lines += [f"{name}: {text}" for name, text in results.get("notes", {}).items()]
    return "\n".join(lines)
