"""The base models shipped with the package: verified by key and checksums, used instead of
pre-training, refused with a warning when a file was changed."""

import json
import logging
import shutil

import pytest

from alignlab.cache import sha256_file
from alignlab.world import build_world, build_world_models, world_config, world_key
from alignlab.world import models as world_module
from alignlab.world.ship_base import SHIPPED_PRESETS


class Pretrained(Exception):
    """Raised by a stand-in for `pretrain`: pre-training would have started here."""


def no_pretraining(*args, **kwargs):
    raise Pretrained


@pytest.mark.parametrize("preset", SHIPPED_PRESETS)
def test_each_shipped_manifest_names_its_presets_key_and_every_files_checksum(preset):
    home = world_module.SHIPPED_BASES / preset
    manifest = json.loads((home / world_module.WORLD_MANIFEST).read_text())
    assert manifest["key"] == world_key(world_config(preset))
    assert manifest["rebuild"] == f"python -m alignlab.world.ship_base --preset {preset}"
    on_disk = {p.name for p in home.iterdir()} - {world_module.WORLD_MANIFEST}
    assert set(manifest["files"]) == on_disk and set(world_module.BASE_REQUIRED) <= on_disk
    for name, digest in manifest["files"].items():
        assert sha256_file(home / name) == digest, name
    assert world_module.shipped_base(manifest["key"]) == home


def test_the_shipped_base_is_used_for_its_key_and_sft_still_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(world_module, "pretrain", no_pretraining)
    built = build_world_models(build_world(world_config("tiny")), tmp_path)
    assert built.shipped_base and not built.cached and built.pretrain_seconds == 0 and built.sft_seconds > 0
    shipped = world_module.SHIPPED_BASES / "tiny"
    assert sha256_file(built.pretrained / "model.safetensors") == sha256_file(shipped / "model.safetensors")
    assert (built.sft / "model.safetensors").exists()
    again = build_world_models(build_world(world_config("tiny")), tmp_path)
    assert again.cached and again.shipped_base


def test_another_seed_pre_trains_without_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(world_module, "pretrain", no_pretraining)
    with caplog.at_level(logging.WARNING), pytest.raises(Pretrained):
        build_world_models(build_world(world_config("tiny", seed=1)), tmp_path)
    assert not caplog.records


@pytest.mark.parametrize("damage", ["tamper", "remove"])
def test_a_changed_shipped_file_falls_back_to_pre_training_with_a_warning_naming_it(tmp_path, monkeypatch, caplog,
                                                                                    damage):
    bases = tmp_path / "base_models"
    shutil.copytree(world_module.SHIPPED_BASES, bases)
    weights = bases / "tiny" / "model.safetensors"
    if damage == "tamper":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    monkeypatch.setattr(world_module, "SHIPPED_BASES", bases)
    monkeypatch.setattr(world_module, "pretrain", no_pretraining)
    with caplog.at_level(logging.WARNING), pytest.raises(Pretrained):
        build_world_models(build_world(world_config("tiny")), tmp_path / "cache")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = "does not match its checksum" if damage == "tamper" else "is missing"
    assert f"model.safetensors {expected}" in warning and str(bases / "tiny") in warning
    assert "python -m alignlab.world.ship_base --preset tiny" in warning
