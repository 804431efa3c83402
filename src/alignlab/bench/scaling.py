"""`alignlab bench --scaling 512,2048`: seconds and tokens/s of DPO, alignlab and TRL, on the first
N pairs of a shape for each N, so that the growth with the data is visible (linear when no per-step
overhead grows with the dataset; 512 → 2,048 HH-RLHF pairs showed flat seconds per 1,000 pairs, and
the 8,192-pair row of earlier rounds is retired).

Each count is one run per library in a fresh worker process (after one discarded alignlab run on the
first 64 pairs, which warms the file caches), timed end to end as in the `dpo_vs_trl` row, with the
equal-work check. On `hh`, counts larger than the pairs that fit max_length untruncated (2,059 of the
HH-RLHF harmless-base test split at 512) repeat those pairs in order: each repeat is the same work as
a new pair of the same lengths for both libraries (neither deduplicates pairs), and the results say
how many pairs were distinct. A larger file (e.g. the train split) goes in with --data.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from alignlab.bench.runner import Measurement, run_worker, check_equal_work
from alignlab.bench.setups import SHAPES, first_pairs, prepare_hh, prepare_tiny

WARM_UP_PAIRS = 64  # enough to load every module and file once; a full-size warm-up doubled an 8,192-pair run


def run_scaling(counts: list[int], device: str, shape: str = "hh", data: str | None = None,
                data_format: str | None = None, progress=print) -> dict:
    size = dict(SHAPES[shape]["full"], pairs=max(counts))
    data_format = data_format or ("hh-rlhf" if shape == "hh" and data is None else "pairs")
    try:
        import trl  # noqa: F401
        libraries = ("alignlab", "trl")
    except ImportError:
        libraries = ("alignlab",)
    results: dict = {"device": device, "shape": shape, **size, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        setup = (prepare_hh(workdir, size, data, data_format, cycle=True) if shape == "hh"
                 else prepare_tiny(workdir, size))
        ids = [json.loads(line)["id"] for line in Path(setup["data"]).read_text().splitlines()]
        results["distinct_pairs"] = next((i for i, pair_id in enumerate(ids) if pair_id == f"{ids[0]}#1"), len(ids))
        progress(f"bench scaling: shape {shape}, DPO on the first {', '.join(map(str, counts))} pairs, "
                 f"batch {size['batch_size']}, device {device}, one run each after a warm-up")
        run_worker("alignlab-dpo", first_pairs(setup, min(WARM_UP_PAIRS, *counts), workdir), device)
        for n in sorted(counts):
            subset = first_pairs(setup, n, workdir)
            row = {"pairs": n}
            ours = Measurement(**run_worker("alignlab-dpo", subset, device))
            row["alignlab"] = asdict(ours)
            progress(f"  {n} pairs: alignlab {ours.seconds:.1f} s")
            if "trl" in libraries:
                theirs = Measurement(**run_worker("trl-dpo", subset, device, precompute=False))
                check_equal_work(ours, theirs, ("alignlab", "trl_dpo"))
                row["trl"] = asdict(theirs)
            results["rows"].append(row)
            progress(format_scaling({"rows": [row]}).splitlines()[-1])
    return results


def format_scaling(results: dict) -> str:
    lines = [f"{'pairs':>6}{'tokens':>10}{'alignlab s':>12}{'tokens/s':>10}{'s/1k pairs':>12}"
             f"{'TRL s':>10}{'tokens/s':>10}{'s/1k pairs':>12}{'ratio':>7}"]
    for row in results["rows"]:
        ours, theirs = row["alignlab"], row.get("trl")
        line = (f"{row['pairs']:>6}{ours['tokens']:>10}{ours['seconds']:>12.1f}"
                f"{ours['tokens'] / ours['seconds']:>10,.0f}{1000 * ours['seconds'] / row['pairs']:>12.1f}")
        if theirs:
            line += (f"{theirs['seconds']:>10.1f}{theirs['tokens'] / theirs['seconds']:>10,.0f}"
                     f"{1000 * theirs['seconds'] / row['pairs']:>12.1f}{theirs['seconds'] / ours['seconds']:>7.2f}")
        lines.append(line)
    return "\n".join(lines)
