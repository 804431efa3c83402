"""Generic statistics of the analyses: Wilson intervals and a stable log-sum-exp.

Everything here is a pure function of plain Python / numpy data: no plotting, no file IO, no torch,
and no knowledge of runs or their methods (alignlab.analysis.runs has those).

Claims and their verdicts are alignlab.analysis.claims; the two-level bootstrap is alignlab.evidence.
"""

from __future__ import annotations

import math
import numpy as np

WILSON_Z = 1.959964  # two-sided 95% normal quantile


def wilson_interval(count: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion count/n.

    centre = (p + z²/2n) / (1 + z²/n),  half = z/(1 + z²/n) · √(p(1 − p)/n + z²/4n²).
    Unlike p ± z√(p(1−p)/n) it stays inside [0, 1] and is not degenerate at p = 0 or 1,
    which matters for the handful of runs a method's grid has.
    """
    if n <= 0:
        raise ValueError("Wilson interval of zero trials")
    p, z2 = count / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def logsumexp(a: np.ndarray) -> np.ndarray:
    """log Σ exp(a) over the last axis, shifted by the max so that summed log-probs (≈ −1000) do not underflow."""
    top = a.max(axis=-1)
    return top + np.log(np.exp(a - top[..., None]).sum(axis=-1))
