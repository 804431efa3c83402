"""`alignlab bench --model PATH --quick`: the run sized from its own warm-ups to a wall-clock budget.

Every measured side (alignlab, TRL, TRL with precomputed reference log-probs; in each mode) first
runs once on one optimizer step's pairs, b = batch_size: the warm-up each measurement has anyway,
timed here. Its worker process took `wall` seconds, `timed` of them inside the side's own clock
(load, tokenise, reference pass, the step, save). A measured run on n pairs is predicted to take

    wall + (n − b) · timed / b

everything inside the clock counted as growing with the pairs. That over-estimates (loading and
saving do not grow with n), so the runs end inside the budget rather than past it. The pairs are the
largest multiple of b (whole optimizer steps) whose predicted runs, one per side, fit the seconds
left; at least b, at most the pairs prepared. One repeat: at a fixed budget more pairs shrink the
fixed costs' share of each ratio more than a second repeat would shrink its noise. When no more than
b pairs fit, the warm-ups themselves are the first mode's rows (alignlab.bench.user_model): running
the same pairs again would only spend the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

QUICK_BUDGET_SECONDS = 300  # the whole command, warm-ups and repeats included: "under 5 minutes"
# Kept back from the budget for what follows the measured runs (the MFU line: a process that measures
# the matmul throughput, and the model loaded once more for its parameter count; the token counts)
# and for the command's own start before the clock here begins.
CLOSING_SECONDS = 30


@dataclass(frozen=True)
class Probe:
    """One side's timed warm-up: `wall` seconds of its worker process, `timed` inside its clock, on
    `pairs` pairs."""

    side: str
    wall: float
    timed: float
    pairs: int

    def predicted_seconds(self, pairs: int) -> float:
        return self.wall + (pairs - self.pairs) * self.timed / self.pairs


def predicted_runs_seconds(probes: list[Probe], pairs: int, runs_per_probe: int = 1) -> float:
    """Seconds predicted for `runs_per_probe` runs (one per mode) of each probe's side on `pairs` pairs."""
    return runs_per_probe * sum(probe.predicted_seconds(pairs) for probe in probes)


def quick_pairs(probes: list[Probe], seconds_left: float, batch_size: int, available: int,
                runs_per_probe: int = 1) -> int:
    """The most pairs, a multiple of `batch_size` in [batch_size, available], whose predicted runs
    (`runs_per_probe` per probe: one per mode) take at most `seconds_left` together; `batch_size`
    when even that does not fit."""
    per_pair = runs_per_probe * sum(probe.timed / probe.pairs for probe in probes)
    at_one_step = predicted_runs_seconds(probes, batch_size, runs_per_probe)
    extra_steps = int((seconds_left - at_one_step) // (per_pair * batch_size)) if seconds_left > at_one_step else 0
    return min(batch_size * (1 + extra_steps), available - available % batch_size)


def describe(probes: list[Probe], pairs: int, seconds_left: float, batch_size: int, runs_per_probe: int = 1) -> str:
    """Why the quick run has `pairs` pairs: each side's warm-up and what the chosen size predicts."""
    sides = ", ".join(f"{p.side} {p.wall:.0f} s" for p in probes)
    predicted = predicted_runs_seconds(probes, pairs, runs_per_probe)
    fits = ("fits" if predicted <= seconds_left else
            "does NOT fit: the warm-ups alone left too little; the run ends past the budget")
    return (f"bench --quick: warm-ups on {batch_size} pairs (1 step) took {sides}; {seconds_left:.0f} s of the "
            f"{QUICK_BUDGET_SECONDS} s budget are left (after {CLOSING_SECONDS} s kept for the closing steps), "
            f"so {pairs} pairs ({pairs // batch_size} steps), {runs_per_probe} run(s) per side, predicted {predicted:.0f} s: {fits}")
