"""Every claim of one report, in one place: what `alignlab run`/`sweep`/`report` and `alignlab verdict`
(alignlab.report.verdict) both decide, so the two cannot drift apart.

The claims
    papers'    the Hitchhiker claims (alignlab.analysis.hitchhiker), when `papers` (a study always; a
               scores table when it holds DPO, LN-DPO or SimPO), and when VAR ran, VAR against DPO in
               expected score and VAR's gain over DPO (alignlab.analysis.var)
    others     each method outside the papers against a reference method, in best and in expected
               score (`variant_claims`): the reference given, else DPO, else the first other method
The primary family (alignlab.analysis.claims) is declared before the data: the titles given, or by
default `DEFAULT_PRIMARY` — the papers' headline comparisons of expected score (the most powerful of
their claims: it pools every configuration's seeds) and VAR against DPO in gold (on the grid means,
as the other two: with 2–3 seeds a picked configuration reports on one seed, so a best-vs-best claim
cannot be decided there; "+7.16%" is tested only where DPO's mean is above 0, which the data decide, so
it cannot be declared beforehand) —, and where the report holds
fewer than `MAX_PRIMARY` of those, each other method's expected score against the reference, in
order, up to `MAX_PRIMARY`. Claims the data cannot test (a method without runs) are not declared:
which methods ran is the design, not the outcome. Holm's correction then runs within each family, the
primary family at the level a sequential design leaves it (alignlab.analysis.sequential: 5% without
interim looks).
"""

from __future__ import annotations

from alignlab.analysis.claims import decide, declare_primary
from alignlab.analysis.hitchhiker import expected_claim, hitchhiker_claims, variant_claims
from alignlab.analysis.replicates import SweepEvidence
from alignlab.analysis.sequential import carry_decided, primary_level
from alignlab.analysis.var import VAR_EXPECTED, var_gain_claims

DEFAULT_PRIMARY = ("expected score: LN-DPO ≥ DPO", "expected score: SimPO ≥ LN-DPO", VAR_EXPECTED)
MAX_PRIMARY = 4


def claims_of(ev: SweepEvidence, families: dict | None = None, primary=None, reference: str | None = None,
              papers: bool = True, looks: list[dict] = (), interim: bool = False) -> list[dict]:
    """Every claim of the report on `ev`, each in its family, decided (see the module docstring).

    families: prompt id -> family (the VAR claims' per-family gains); primary: claim titles (None: the
    default family); reference: the method the other methods are compared with; papers: whether the
    Hitchhiker claims are made; looks: the interim looks of a sequential design so far, whose decided
    claims are carried and whose levels are spent; interim: decide the primary family at an interim
    look's level, not the final analysis's (alignlab.analysis.sequential). A `primary` title no claim has
    is a ValueError naming the claims."""
    var = [expected_claim(ev, "var", "dpo"), *var_gain_claims(ev, families)] if ev.by_method.get("var") else []
    variants = variant_claims(ev, reference)
    claims = (hitchhiker_claims(ev) if papers else []) + variants + var
    if primary is None:
        testable = [c["claim"] for c in claims if c["verdict"] != "not tested"]
        headline = [t for t in DEFAULT_PRIMARY if t in testable]
        headline += [t for t in testable if t.startswith("expected score:") and t not in headline]
        primary = headline[:MAX_PRIMARY]
    decided = decide(declare_primary(claims, primary), primary_level(list(looks), interim))
    return carry_decided(decided, list(looks))
