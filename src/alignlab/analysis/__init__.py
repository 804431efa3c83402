"""The robustness analyses: pure functions of finished runs' per-sample results."""

from alignlab.analysis.hitchhiker import RunRecord

__all__ = ["RunRecord"]
