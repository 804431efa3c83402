"""The report of a sweep: `summary.json`, `report.md`, `report.html` and `figures/`.

    blocks      the document model (sections of paragraphs, tables, figures), the sweep in canonical
                order, the formatting of metrics and hyper-parameters
    figures     the matplotlib figures, as PNG bytes
    hitchhiker  the robustness sections (SPEC §6 items 1–6) and the table of all runs
    curves      the best configurations' training curves (metrics.jsonl)
    examples    example generations of the SFT baseline and each method's best configuration
    var         the VAR study's sections (SPEC §6 items 7–10)
    render      report.md and report.html from the same sections, with the escaping of untrusted text
    document    what the report needs of a run (check_params, check_metrics) and write_report; its
                docstring says what the report does with a damaged sweep directory
    verdict     `alignlab verdict`: a table of anyone's per-response scores → the same claims and report
"""

from alignlab.report.document import check_metrics, check_params, write_report
from alignlab.report.examples import example_prompt_ids

__all__ = ["check_metrics", "check_params", "example_prompt_ids", "write_report"]
