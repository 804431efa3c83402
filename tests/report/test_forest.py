"""The forest plot of the claims (alignlab.report.figures): its rows, with and without claim families."""

from alignlab.report.figures import forest_figure, forest_rows

PNG = b"\x89PNG\r\n\x1a\n"


def claim(name, verdict="confirmed", family=None):
    c = {"claim": name, "verdict": verdict, "value": 1.0, "ci": [0.5, 1.5], "null": [0.0, 0.0]}
    return c if family is None else {**c, "family": family}


def test_without_families_the_claims_are_one_block_in_order():
    claims = [claim("a"), claim("b", "reversed"), claim("c", "inconclusive")]
    assert forest_rows(claims) == [("claim", c) for c in claims]


def test_primary_claims_come_first_in_a_block_of_their_own():
    a, b, c = claim("a", family="secondary"), claim("b", family="primary"), claim("c", family="secondary")
    assert forest_rows([a, b, c]) == [("title", "Primary claims"), ("claim", b),
                                      ("title", "Secondary claims"), ("claim", a), ("claim", c)]


def test_the_figure_draws_point_nulls_and_null_regions():
    region = {**claim("gain", "inconclusive"), "null": [0.0, 7.16], "value": 3.0, "ci": [-1.0, 9.0]}
    flat = {**claim("no spread"), "value": 0.2, "ci": [0.2, 0.2]}  # a CI of zero width still gets an axis
    assert forest_figure([claim("a", family="primary"), {**region, "family": "secondary"}, flat]).startswith(PNG)
