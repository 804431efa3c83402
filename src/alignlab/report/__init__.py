"""The report of a sweep: `summary.json`, `report.md`, `report.html` and `figures/`."""

from alignlab.report.document import write_report

__all__ = ["write_report"]
