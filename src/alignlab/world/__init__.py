"""The built-in study world: a synthetic preference world with an exact gold reward, and the tiny
Llama pre-trained and SFT-ed in it, cached by configuration."""

from alignlab.world.study_world import StudyWorld, WorldConfig, build_world, build_world_models, world_config

__all__ = ["StudyWorld", "WorldConfig", "build_world", "build_world_models", "world_config"]
