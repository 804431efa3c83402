"""A hub model's cache identity (issue 16): the commit its revision stands for, so an updated
upstream model is computed afresh; offline, the commit of the locally cached snapshot; else the
revision's name, with a warning that upstream changes go unnoticed."""

from __future__ import annotations

import types

import huggingface_hub
import pytest

from alignlab.cache import model_fingerprint

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
