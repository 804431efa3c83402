"""Rebuild a base model that ships with alignlab: `python -m alignlab.world.ship_base --preset default`.

Pre-trains the preset's world LM (seed 0) from scratch and writes `pretrain()`'s files with a
manifest.json (the world key `build_world_models` caches under, a sha256 of every file, how it was
built) to `alignlab/world/base_models/<preset>/`, replaced whole. Run it after changing anything the
world key covers (the preset's config, WORLD_VERSION) and commit the result: `build_world_models`
uses a shipped base only for the key in its manifest, so a stale one is ignored, not wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch

from alignlab.atomic import atomic_dir, write_json
from alignlab.world.models import SHIPPED_BASES, WORLD_MANIFEST, file_hashes, pretrain, world_key
from alignlab.world.sampling import build_world
from alignlab.world.spec import WORLD_VERSION, world_config

SHIPPED_PRESETS = ("tiny", "default")
REBUILD = "python -m alignlab.world.ship_base --preset {preset}"


def ship_base(preset: str, destination: Path = SHIPPED_BASES) -> Path:
    """Pre-train `preset`'s base model and write it with its manifest to `destination/preset`."""
    import transformers

    world = build_world(world_config(preset))
    with atomic_dir(destination / preset) as staging:
        started = time.perf_counter()
        pretrain(world, staging)
        seconds = time.perf_counter() - started
        write_json(staging / WORLD_MANIFEST, {
            "preset": preset, "key": world_key(world.config), "world_version": WORLD_VERSION,
            "config": dataclasses.asdict(world.config), "rebuild": REBUILD.format(preset=preset),
            "built_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "torch_threads": torch.get_num_threads()},
            "pretrain_seconds": round(seconds, 1), "files": file_hashes(staging)})
    return destination / preset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignlab.world.ship_base", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=SHIPPED_PRESETS, required=True)
    parser.add_argument("--out", type=Path, default=SHIPPED_BASES,
                        help="directory of the shipped bases (default: the package's, %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ship_base(args.preset, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
