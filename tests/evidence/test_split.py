"""The selection/reporting split of the test prompts (alignlab.evidence.split) against its rule:
ids ordered by sha256 of their text, the first half (rounded down) selects, the rest reports."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.evidence import split_prompts

IDS = [f"p{i}" for i in range(11)]


def by_rule(ids):
    """The selection half worked out from the documented rule, independently of the module."""
    unique = list(dict.fromkeys(str(p) for p in ids))
    ranked = sorted(unique, key=lambda p: hashlib.sha256(p.encode("utf-8")).hexdigest())
    return set(ranked[:len(unique) // 2])


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10, 11, 100])
def test_halves_partition_the_ids_with_floor_half_selecting(n):
    ids = [f"prompt-{i}" for i in range(n)]
    split = split_prompts(ids)
    assert len(split.selection) == n // 2 and len(split.reporting) == n - n // 2
    assert not set(split.selection) & set(split.reporting)
    assert set(split.selection) | set(split.reporting) == set(ids)
    assert set(split.selection) == by_rule(ids)
    assert split.describe()["selection_prompts"] == n // 2
    assert split.describe()["reporting_prompts"] == n - n // 2


def test_each_half_keeps_the_order_given():
    split = split_prompts(IDS)
    assert list(split.selection) == [p for p in IDS if p in split.selection]
    assert list(split.reporting) == [p for p in IDS if p in split.reporting]


def test_deterministic():
    assert split_prompts(IDS) == split_prompts(list(IDS))
    assert split_prompts(IDS) == split_prompts(tuple(IDS))


def test_ids_are_compared_as_text():
    as_int = split_prompts([3, 1, 4, 15, 9, 2, 6])
    as_text = split_prompts(["3", "1", "4", "15", "9", "2", "6"])
    assert as_int == as_text
    assert all(isinstance(p, str) for p in as_int.selection + as_int.reporting)
    # 3 and "3" are one prompt: 3 distinct ids, one selecting and two reporting.
    mixed = split_prompts([3, "3", 4, "5"])
    assert len(mixed.selection) + len(mixed.reporting) == 3 and len(mixed.selection) == 1


@pytest.mark.parametrize("ids", [[], ["a"], ["a", "a"], [3, "3"]])
def test_fewer_than_two_distinct_ids_is_an_error(ids):
    with pytest.raises(ValueError, match="at least 2"):
        split_prompts(ids)


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.one_of(st.text(max_size=8), st.integers(-10 ** 6, 10 ** 6)), min_size=2, max_size=40,
                    unique_by=str).filter(lambda xs: len({str(x) for x in xs}) >= 2),
       data=st.data())
def test_partition_independent_of_input_order(ids, data):
    shuffled = data.draw(st.permutations(ids))
    a, b = split_prompts(ids), split_prompts(shuffled)
    text = {str(p) for p in ids}
    assert set(a.selection) == set(b.selection) and set(a.reporting) == set(b.reporting)
    assert not set(a.selection) & set(a.reporting)
    assert set(a.selection) | set(a.reporting) == text
    assert len(a.selection) == len(text) // 2
    assert set(a.selection) == by_rule(ids)
