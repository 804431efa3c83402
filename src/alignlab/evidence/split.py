"""Selection apart from testing: the test prompts are split once, deterministically, into a
selection half (every "best", "top-25%" or "top-k%" pick is made on it) and a reporting half (every
number and verdict of the report is computed on it). Picking and judging on the same prompts favours
the method with the larger grid: its best run is the luckiest draw among more. The same holds for
training seeds, which this module does not see: alignlab.analysis.replicates also ranks each
configuration on some of its seeds and reports a pick on the others.

The split depends on the prompt ids alone (sha256 of each id's text), not on their order, the runs or
the methods, so every report of a sweep, and every sweep on the same test set, splits alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SPLIT_RULE = ("test prompts ordered by sha256 of their id; the first half (rounded down) selects runs, "
              "the second half reports")


@dataclass(frozen=True)
class PromptSplit:
    selection: tuple[str, ...]  # prompt ids (as text) that pick runs, in the order given
    reporting: tuple[str, ...]  # prompt ids (as text) every reported number is computed on
    rule: str = SPLIT_RULE

    def describe(self) -> dict:
        return {"rule": self.rule, "selection_prompts": len(self.selection),
                "reporting_prompts": len(self.reporting)}


SEPARATE_RULE = "a separate selection set the user named (data/selection.jsonl) selects runs; every test prompt reports"


def separate_selection(selection_ids, test_ids) -> PromptSplit:
    """The user's own selection prompts pick runs, and every test prompt reports."""
    selection = tuple(dict.fromkeys(str(p) for p in selection_ids))
    reporting = tuple(dict.fromkeys(str(p) for p in test_ids))
    if not selection or len(reporting) < 2:
        raise ValueError(f"a separate selection set needs a prompt and at least 2 test prompts, got "
                         f"{len(selection)} and {len(reporting)}")
    return PromptSplit(selection, reporting, SEPARATE_RULE)


def _digest(prompt_id: str) -> str:
    return hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()


def reporting_half_size(n_prompts: int) -> int:
    """How many of `n_prompts` distinct test prompts report when `split_prompts` halves them."""
    return n_prompts - n_prompts // 2


def split_prompts(prompt_ids) -> PromptSplit:
    """The selection and reporting halves of `prompt_ids` (compared as text; needs ≥ 2 distinct ids)."""
    ids = list(dict.fromkeys(str(p) for p in prompt_ids))
    if len(ids) < 2:
        raise ValueError(f"splitting test prompts into selection and reporting halves needs at least 2, "
                         f"got {len(ids)}")
    ranked = sorted(ids, key=lambda p: (_digest(p), p))
    selecting = set(ranked[:len(ids) // 2])
    return PromptSplit(tuple(p for p in ids if p in selecting), tuple(p for p in ids if p not in selecting))
