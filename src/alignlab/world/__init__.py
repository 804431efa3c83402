"""The built-in study world: a synthetic preference world with an exact gold reward (`spec`), its
sampled and labelled pairs (`sampling`), and the tiny Llama pre-trained and SFT-ed in it, cached by
configuration (`models`)."""

from alignlab.world.models import (WORLD_MANIFEST, WorldModels, build_tokenizer, build_world_models,
                                   world_cache_problem, world_key)
from alignlab.world.sampling import build_world
from alignlab.world.spec import PROMPT_TEMPLATES, TEST_STYLE, TRAIN_STYLE, StudyWorld, WorldConfig, world_config

__all__ = ["PROMPT_TEMPLATES", "TEST_STYLE", "TRAIN_STYLE", "StudyWorld", "WorldConfig", "world_config", "build_world",
           "WORLD_MANIFEST", "WorldModels", "build_tokenizer", "build_world_models", "world_cache_problem", "world_key"]
