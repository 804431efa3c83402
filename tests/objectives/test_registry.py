"""The method registry: names, flags and hyper-parameters of every method (SPEC §3). Its batch
losses are tested against plain-math values in test_losses.py."""

from __future__ import annotations

import pytest

from alignlab.errors import AlignlabError
from alignlab.objectives.registry import METHODS, Method, get_method

ALL_METHODS = ["sft", "dpo", "ln-dpo", "simpo", "var", "grpo"]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_get_method(name):
    m = get_method(name)
    assert isinstance(m, Method) and m.name == name and METHODS[name] is m
    resolved = m.resolve({})
    assert set(resolved) == {hp.name for hp in m.hyperparameters}


def test_method_flags_follow_spec():
    assert not get_method("sft").uses_rejected
    assert get_method("dpo").uses_reference and get_method("ln-dpo").uses_reference
    assert not get_method("simpo").uses_reference  # SimPO: no reference model
    assert get_method("var").uses_rewards and get_method("var").uses_reference
    assert set(get_method("dpo").resolve({})) == {"beta"}
    assert set(get_method("simpo").resolve({})) == {"beta", "gamma"}
    assert set(get_method("var").resolve({})) == {"lam", "z_estimator", "length_normalize", "z_samples"}
    assert get_method("var").resolve({})["z_estimator"] == "batch"  # SPEC: the paper's default


def test_unknown_method_lists_names_and_suggests():
    with pytest.raises(AlignlabError) as e:
        get_method("dop")
    msg = str(e.value)
    assert "'dpo'" in msg and "did you mean" in msg
    for name in ALL_METHODS:
        assert name in msg
    with pytest.raises(AlignlabError) as e:
        get_method("simpoo")
    assert "'simpo'" in str(e.value)
    with pytest.raises(AlignlabError) as e:
        get_method("zzzzzz")
    assert all(name in str(e.value) for name in ALL_METHODS)


@pytest.mark.parametrize("method,typo,closest", [
    ("dpo", "bta", "beta"), ("ln-dpo", "betta", "beta"), ("simpo", "gama", "gamma"),
    ("var", "lamb", "lam"), ("var", "z_estimater", "z_estimator"),
    ("var", "length_normalise", "length_normalize"), ("var", "z_sample", "z_samples"),
    ("grpo", "group_sise", "group_size"), ("grpo", "clip_epsilon", "clip_eps"), ("grpo", "temprature", "temperature"),
])
def test_unknown_hyperparameter_suggests_closest(method, typo, closest):
    with pytest.raises(AlignlabError) as e:
        get_method(method).resolve({typo: 1})
    msg = str(e.value)
    assert f"'{closest}'" in msg and typo in msg


def test_sft_takes_no_hyperparameters():
    assert get_method("sft").resolve({}) == {}
    with pytest.raises(AlignlabError):
        get_method("sft").resolve({"beta": 0.1})


@pytest.mark.parametrize("method,param", [("dpo", "beta"), ("ln-dpo", "beta"), ("simpo", "beta"),
                                          ("var", "lam")])
@pytest.mark.parametrize("bad", [-0.1, 0.0, "-1", "nan"])
def test_non_positive_rejected(method, param, bad):
    with pytest.raises(AlignlabError) as e:
        get_method(method).resolve({param: bad})
    assert param in str(e.value)


def test_cli_strings_coerced():
    r = get_method("dpo").resolve({"beta": "0.2"})
    assert r["beta"] == 0.2 and isinstance(r["beta"], float)
    r = get_method("simpo").resolve({"beta": "2.5", "gamma": "-0.5"})
    assert r == {"beta": 2.5, "gamma": -0.5}
    r = get_method("var").resolve({"lam": "0.5", "length_normalize": "true", "z_estimator": "prompt"})
    assert r == {"lam": 0.5, "length_normalize": True, "z_estimator": "prompt", "z_samples": 8}
    assert get_method("var").resolve({})["length_normalize"] is True  # the documented default
    assert get_method("var").resolve({"length_normalize": "false"})["length_normalize"] is False
    assert get_method("var").resolve({"length_normalize": "True"})["length_normalize"] is True
    assert get_method("var").resolve({"length_normalize": True})["length_normalize"] is True
    for bad in ({"beta": "abc"}, {"beta": True}):
        with pytest.raises(AlignlabError):
            get_method("dpo").resolve(bad)
    with pytest.raises(AlignlabError):
        get_method("var").resolve({"length_normalize": "maybe"})


@pytest.mark.parametrize("value,ok", [("batch", True), ("prompt", True), ("sampled", True), ("foo", False),
                                      ("Batch", False), ("", False), (3, False)])
def test_z_estimator_choices(value, ok):
    if ok:
        assert get_method("var").resolve({"z_estimator": value})["z_estimator"] == value
    else:
        with pytest.raises(AlignlabError) as e:
            get_method("var").resolve({"z_estimator": value})
        assert "batch" in str(e.value) and "prompt" in str(e.value)


def test_grpo_registry_and_integer_hyperparameters():
    m = get_method("grpo")
    assert m.online and m.uses_reference and m.uses_rewards and not m.uses_rejected
    defaults = m.resolve({})
    assert defaults == {"group_size": 8, "beta": 0.04, "clip_eps": 0.2, "temperature": 1.0, "max_new_tokens": 64,
                        "num_iterations": 1}
    assert not any(get_method(name).online for name in ALL_METHODS if name != "grpo")
    resolved = m.resolve({"group_size": "4", "max_new_tokens": 16.0, "beta": "0"})
    assert resolved["group_size"] == 4 and isinstance(resolved["group_size"], int)
    assert resolved["max_new_tokens"] == 16 and isinstance(resolved["max_new_tokens"], int)
    assert resolved["beta"] == 0.0  # no KL penalty is allowed
    for bad, needle in (({"group_size": 1}, ">= 2"), ({"group_size": 2.5}, "integer"), ({"group_size": True}, "integer"),
                        ({"group_size": "nan"}, "integer"), ({"beta": -0.1}, ">= 0"), ({"clip_eps": 0}, "in (0, 1)"),
                        ({"clip_eps": 1.5}, "in (0, 1)"), ({"beta": "inf"}, "finite"),
                        ({"temperature": -1}, "> 0"), ({"num_iterations": 0}, ">= 1")):
        with pytest.raises(AlignlabError) as e:
            m.resolve(bad)
        assert needle in str(e.value) and next(iter(bad)) in str(e.value)
