"""A hub model's cache identity (issue 16): the commit its revision stands for, so an updated
upstream model is computed afresh; offline, the commit of the locally cached snapshot; else the
revision's name, with a warning that upstream changes go unnoticed."""

from __future__ import annotations

import hashlib
import json
import types

import huggingface_hub
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.cache import file_fingerprint, model_fingerprint

SHA_A, SHA_B = "a" * 40, "b" * 40


@pytest.fixture
def hub(monkeypatch):
    """The hub's answer per (name, revision); a missing entry is an unreachable hub."""
    answers, asked = {}, []

    def model_info(self, name, revision=None, timeout=None, **_):
        asked.append((name, revision))
        if (name, revision) not in answers:
            raise ConnectionError("offline")
        return types.SimpleNamespace(sha=answers[name, revision])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    return types.SimpleNamespace(answers=answers, asked=asked)


def test_a_hub_model_is_known_by_the_commit_of_its_revision(hub, tmp_path):
    hub.answers["org/model", "main"] = SHA_A
    assert model_fingerprint("org/model", tmp_path) == f"hub:org/model@{SHA_A}"
    hub.answers["org/model", "main"] = SHA_B  # the model was updated upstream
    assert model_fingerprint("org/model", tmp_path) == f"hub:org/model@{SHA_B}"
    hub.answers["org/model", "v1"] = SHA_A
    assert model_fingerprint("org/model", tmp_path, "v1") == f"hub:org/model@{SHA_A}"
    assert hub.asked == [("org/model", "main"), ("org/model", "main"), ("org/model", "v1")]


def test_a_commit_revision_is_its_own_identity_without_asking(hub, tmp_path):
    assert model_fingerprint("org/model", tmp_path, SHA_B) == f"hub:org/model@{SHA_B}"
    assert hub.asked == []


def test_offline_the_cached_snapshot_names_the_commit(hub, tmp_path, monkeypatch):
    snapshots = tmp_path / "hf" / "models--org--model" / "snapshots"

    def cached(name, filename, revision=None, **_):
        commit = {"main": SHA_A, "v2": SHA_B}.get(revision)
        return str(snapshots / commit / filename) if commit else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    assert model_fingerprint("org/model", tmp_path) == f"hub:org/model@{SHA_A}"
    assert model_fingerprint("org/model", tmp_path, "v2") == f"hub:org/model@{SHA_B}"


def test_with_neither_hub_nor_snapshot_the_revision_name_stands_with_a_warning(hub, tmp_path, caplog):
    assert model_fingerprint("org/model", tmp_path) == "hub:org/model@main"
    assert model_fingerprint("org/model", tmp_path, "v1") == "hub:org/model@v1"
    assert "reused even if the model changes upstream" in caplog.text


def test_a_local_directory_is_known_by_its_bytes_not_a_revision(tiny_model, tmp_path):
    assert model_fingerprint(str(tiny_model), tmp_path) == model_fingerprint(str(tiny_model), tmp_path, "v1")


# ---------------------------------------------------------------- the cache directory and its index (issue 28)

@pytest.mark.parametrize("where", ["setting", "below", "environment"])
def test_a_cache_dir_that_is_a_file_is_one_line_before_any_work(tiny_model, pairs_file, tmp_path, monkeypatch,
                                                                 capsys, where):
    from alignlab.cli import main

    some_file = tmp_path / "some_file.txt"
    some_file.write_text("not a directory\n")
    argv = ["train", "--method", "dpo", "--model", str(tiny_model), "--data", str(pairs_file), "--out",
            str(tmp_path / "run"), "--max_length", "64", "--max_prompt_length", "32", "--batch_size", "4"]
    if where == "environment":
        monkeypatch.setenv("ALIGNLAB_CACHE", str(some_file))
    else:
        argv += ["--cache_dir", str(some_file if where == "setting" else some_file / "cache")]
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("alignlab: error: "), lines
    assert str(some_file) in lines[0] and ("ALIGNLAB_CACHE" if where == "environment" else "cache_dir") in lines[0]
    assert not (tmp_path / "run").exists()  # refused with the settings, before the run directory is claimed
    assert some_file.read_text() == "not a directory\n"


def fingerprinted_file(tmp_path):
    """A file fingerprinted once into a fresh cache: (file, cache, its index, its key there, its sha256)."""
    weights, cache = tmp_path / "model.gguf", tmp_path / "cache"
    weights.write_bytes(b"weights" * 100)
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_fingerprint(weights, cache) == expected
    index = cache / "fingerprints.json"
    (key,) = json.loads(index.read_text())
    return weights, cache, index, key, expected


def test_an_index_of_the_wrong_shape_is_rebuilt_with_a_warning(tmp_path, caplog):
    weights, cache, index, key, expected = fingerprinted_file(tmp_path)
    for damaged in ([], {"x": 5}, "str", f"[{key}]", 7, None, {key: 5}, {key: [expected]}, {key: "not a sha"}):
        index.write_text(json.dumps(damaged))
        caplog.clear()
        assert file_fingerprint(weights, cache) == expected, damaged
        assert json.loads(index.read_text()) == {key: expected}, damaged  # rewritten whole, wrong entries gone
        assert "fingerprints.json" in caplog.text and "rebuilding" in caplog.text, damaged


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4),
                           max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index_value=JSON_VALUES, own_entry=st.none() | JSON_VALUES)
def test_any_json_as_the_index_gives_the_file_sha256(tmp_path_factory, index_value, own_entry):
    """Whatever JSON the index holds, also under the file's own key, the fingerprint is the file's sha256."""
    weights, cache, index, key, expected = fingerprinted_file(tmp_path_factory.mktemp("index"))
    if own_entry is not None:
        index_value = {**index_value, key: own_entry} if isinstance(index_value, dict) else {key: own_entry}
    index.write_text(json.dumps(index_value))
    assert file_fingerprint(weights, cache) == expected
    assert json.loads(index.read_text())[key] == expected


def _write_rows(cache_dir, first: int) -> None:
    """Rows first..first+199, each value its own number, stored 10 at a time (for a process of its own)."""
    from alignlab.cache import cached_rows

    keys = [f"item-{i}" for i in range(first, first + 200)]
    cached_rows(cache_dir, "numbers", keys, ("value", "double"),
                lambda positions: {"value": torch.tensor([float(first + p) for p in positions]),
                                   "double": torch.tensor([2.0 * (first + p) for p in positions])}, chunk=10)


def test_rows_written_by_two_processes_at_once_are_all_kept(tmp_path):
    import multiprocessing

    from alignlab.cache import cached_rows

    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_rows, args=(tmp_path, first)) for first in (0, 200)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    keys = [f"item-{i}" for i in range(400)]
    values, cached = cached_rows(tmp_path, "numbers", keys, ("value", "double"),
                                 lambda positions: pytest.fail(f"recomputed {len(positions)} rows"), chunk=10)
    assert cached == 400
    assert values["value"].tolist() == [float(i) for i in range(400)]
    assert values["double"].tolist() == [2.0 * i for i in range(400)]
