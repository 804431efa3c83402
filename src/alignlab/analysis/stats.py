"""Generic statistics of the analyses: Wilson intervals (alignlab.evidence.shares) and a stable log-sum-exp.

Everything here is a pure function of plain Python / numpy data: no plotting, no file IO, no torch,
and no knowledge of runs or their methods (alignlab.analysis.runs has those).

Claims and their verdicts are alignlab.analysis.claims; the two-level bootstrap is alignlab.evidence.
"""

from __future__ import annotations

import numpy as np

from alignlab.evidence.shares import WILSON_Z, wilson_interval  # noqa: F401  (the analyses' import path)


def logsumexp(a: np.ndarray) -> np.ndarray:
    """log Σ exp(a) over the last axis, shifted by the max so that summed log-probs (≈ −1000) do not underflow."""
    top = a.max(axis=-1)
    return top + np.log(np.exp(a - top[..., None]).sum(axis=-1))
