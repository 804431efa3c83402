"""Ratios of two estimated means, tested as linear contrasts, with Fieller's interval (Fieller 1954).

A ratio θ = N/D of two estimates is not estimated well by a bootstrap of N/D itself: where D's
interval comes near 0 the resampled ratio has no variance to speak of (it explodes), and a claim
"θ ≥ θ0" tested on it is mis-calibrated. The contrast N − θ0·D is linear in the estimates, so its
estimate (alignlab.evidence.bootstrap) is as well calibrated as a difference of means, and
"θ > θ0" ⟺ "N − θ0·D > 0" whenever D > 0.

Fieller's 1 − α interval for θ is the set of θ0 the contrast test does not reject:

    (N − θ·D)² ≤ t² · (v_N − 2θ·c + θ²·v_D)
    ⟺ a·θ² − 2b·θ + e ≤ 0,   a = D² − t²·v_D,  b = N·D − t²·c,  e = N² − t²·v_N

with v_N, v_D the variances of the two estimates, c their covariance and t the critical value of
the contrast's Student t. When a > 0 (D significantly ≠ 0 at that t) the set is the bounded interval
(b ± √(b² − a·e)) / a, which contains N/D; when a ≤ 0 it is two rays ("exclusive") or the whole
line: the data cannot bound the ratio, and a claim on it is left untested.

Variances and covariance from the report's resampling (`ratio_variances`): v_N and v_D are the
estimates' variances (seed and prompt levels, the seed × prompt interaction counted once) and the
covariance comes by polarisation, c = (v_N + v_D − v_{N−D}) / 2, from the same estimate of N − D.
So the quadratic above is the variance the contrast's own estimate uses (exactly so when no
estimate is clamped at the larger one-level variance), and the interval excludes θ0 exactly when the
contrast's test at that t rejects. The shared prompt draw makes c positive for two models judged on
the same prompts; the seed draws are independent between configurations and add nothing to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from alignlab.evidence.bootstrap import Resampled, combine, estimate


@dataclass(frozen=True)
class FiellerInterval:
    ratio: float           # N / D (NaN when D = 0)
    kind: str              # "bounded", "exclusive" (two rays) or "unbounded" (the whole line)
    low: float             # bounded: the interval; exclusive: the set is (−∞, low] ∪ [high, ∞)
    high: float

    @property
    def bounded(self) -> bool:
        return self.kind == "bounded"

    def contains(self, theta: float) -> bool:
        if self.kind == "bounded":
            return self.low <= theta <= self.high
        if self.kind == "exclusive":
            return theta <= self.low or theta >= self.high
        return True

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "kind": self.kind,
                "ci": [self.low, self.high] if self.kind != "unbounded" else None}


def fieller(numerator: float, denominator: float, var_numerator: float, var_denominator: float,
            covariance: float, t: float) -> FiellerInterval:
    """Fieller's interval for numerator/denominator at critical value t (module docstring)."""
    n, d = numerator, denominator
    ratio = n / d if d != 0 else math.nan
    a = d * d - t * t * var_denominator
    b = n * d - t * t * covariance
    e = n * n - t * t * var_numerator
    discriminant = b * b - a * e
    if a > 0:  # N/D itself satisfies the inequality, so the discriminant is ≥ 0 up to rounding
        root = math.sqrt(max(discriminant, 0.0))
        return FiellerInterval(ratio, "bounded", (b - root) / a, (b + root) / a)
    if a < 0 and discriminant > 0:
        root = math.sqrt(discriminant)
        low, high = sorted(((b + root) / a, (b - root) / a))
        return FiellerInterval(ratio, "exclusive", low, high)
    return FiellerInterval(ratio, "unbounded", -math.inf, math.inf)


def ratio_variances(numerator: Resampled, denominator: Resampled) -> tuple[float, float, float]:
    """(v_N, v_D, c) of two resampled estimates: their estimated variances and, by polarisation,
    their covariance (module docstring)."""
    v_n, v_d = estimate(numerator).se ** 2, estimate(denominator).se ** 2
    v_difference = estimate(combine(lambda x, y: x - y, numerator, denominator)).se ** 2
    return v_n, v_d, (v_n + v_d - v_difference) / 2


def ratio_interval(numerator: Resampled, denominator: Resampled, reference_ratio: float,
                   level: float = 0.95) -> FiellerInterval:
    """Fieller's interval for N/D from the report's resampling, with t at the Welch–Satterthwaite df of
    the contrast N − reference_ratio·D: the interval excludes reference_ratio exactly when that
    contrast's two-sided test at 1 − level rejects."""
    contrast = estimate(combine(lambda n, d: n - reference_ratio * d, numerator, denominator))
    t = float(stats.t.ppf(0.5 + level / 2, contrast.df))
    return fieller(numerator.value, denominator.value, *ratio_variances(numerator, denominator), t)
