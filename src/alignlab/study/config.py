"""What a study is made of: its configuration (`StudyConfig`) and its inputs — the SFT model, the
training pairs, the test prompts and the gold reward (`StudyInputs`), and what a sweep's runs share
(`Shared`, for the sweep and the VAR study's stages). `alignlab.study.sweep` runs the study: every
method over its hyper-parameter grid, evaluation, report.

Two worlds, one code path. By default the built-in study world (`alignlab.world`) supplies the
SFT model, the training pairs (SafeRLHF-like style), the OOD test prompts (HH-like style) and an
exact gold reward. With `model`, `train_data`, `test_data` and `gold_rm` set (in a YAML config),
the same stages run on any Hugging Face model, dataset and sequence-classification gold RM.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from alignlab.checks import COUNT, POSITIVE, SEED, check_number, check_numbers
from alignlab.config import RewardModelConfig, TrainConfig, field_types
from alignlab.trl_settings import resolve_aliases
from alignlab.yaml_input import coerce_value
from alignlab.data.options import DATA_OPTIONS, data_options
from alignlab.errors import AlignlabError, unknown_name_message
from alignlab.objectives.registry import get_method

log = logging.getLogger(__name__)

STUDIES = ("robustness", "var")
TEST_DATA_OPTIONS = ("data_split", *DATA_OPTIONS)

STUDY_RANGES = {"seed": SEED, "training_seed": SEED, "seeds": COUNT, "race_snapshots": COUNT, "race_grpo_steps": COUNT,
                "workers": COUNT, "test_limit": COUNT, "max_seeds": COUNT,
                "budget_minutes": POSITIVE}  # unset (None): every test pair; the grid preset's design


@dataclass
class StudyConfig:
    out: str = ""
    preset: str = "default"  # study-world preset: tiny | default | large
    seed: int = 0  # the world's (its pairs, models and gold reward), the proxy reward model's and generation's
    # The first replicate's training seed (None: `seed`, as before the two were separate): a study
    # re-run with another one trains new seeds in the same world.
    training_seed: int | None = None
    methods: list[str] | None = None  # default: the grid preset's methods
    method_params: dict = field(default_factory=dict)  # method -> fixed hyper-parameters, e.g. {dpo: {beta: 0.1}}
    grid_preset: str | None = "small"  # named grid (see grid.GRID_PRESETS); None: only `grid`
    study: str = "robustness"  # robustness | var: also the VAR section's race, Z estimators, compute profile
    race_snapshots: int = 5  # VAR study: evaluation points per race curve, the last at the end of training
    race_grpo_steps: int = 40  # VAR study: GRPO's optimizer steps in the race (8 prompts × G 4 responses each)
    grid: dict = field(default_factory=dict)  # method (or "all") -> {hyper-parameter: [values]}
    seeds: int = 3  # replicate training seeds of every configuration: training_seed, … + 1, …, … + seeds − 1
    # Seeds where the noise is (alignlab.analysis.sequential): after the first `seeds`, a configuration
    # whose noise keeps a primary claim open gets more, up to max_seeds, while the runs fit the budget
    # (minutes of this invocation). None: `seeds` and no limit (`alignlab run`: grid.RUN_DESIGN).
    max_seeds: int | None = None
    budget_minutes: float | None = None
    # Runs in parallel (local processes or Ray tasks); None: `executors.default_workers` (the study
    # world's runs one per CPU core, on one thread each).
    workers: int | None = None
    executor: str = "local"  # local | ray
    ray_address: str | None = None  # an existing Ray cluster; default: start a local one
    training: dict = field(default_factory=dict)  # TrainConfig fields for every method (learning_rate, ...)
    reward_training: dict = field(default_factory=dict)  # RewardModelConfig fields for the proxy RM
    generation: dict = field(default_factory=dict)  # GenerationConfig fields (max_new_tokens, temperature, ...)
    # Real models and data (all four together replace the study world):
    model: str | None = None  # the SFT model: policy initialisation and reference
    train_data: str | None = None
    train_format: str = "pairs"
    train_filter: str | None = None
    test_data: str | None = None
    test_format: str = "pairs"
    # What picks test_data's part and columns, named as TrainConfig's fields: data_split (default
    # test), dataset_config, data_dir, data_revision and the *_column settings. `training` carries
    # them for train_data (and the proxy reward model), with revision and raw_prompts for the model.
    test_data_options: dict = field(default_factory=dict)
    test_limit: int | None = None  # evaluate on the first N test pairs
    # Prompts that pick runs (best, top-25%, top-k%): with them every test prompt reports; without
    # them the test prompts are split in halves (alignlab.evidence.split).
    selection_data: str | None = None
    selection_format: str = "pairs"
    selection_data_options: dict = field(default_factory=dict)  # as test_data_options, for selection_data
    gold_rm: str | None = None  # sequence classifier that judges the evaluation
    proxy_rm: str | None = None  # VAR's reward model; default: trained with train-rm on train_data
    cache_dir: str | None = None
    overwrite: bool = False

    @property
    def uses_world(self) -> bool:
        return self.model is None

    @property
    def first_training_seed(self) -> int:
        return self.seed if self.training_seed is None else self.training_seed

    def validate(self) -> None:
        """Checks that need no files; the grid itself is checked when it is expanded (grid.expand_grid)."""
        if not self.out:
            raise AlignlabError("config: 'out' is required")
        if self.methods is not None and not self.methods:
            raise AlignlabError("config: 'methods' is empty; name at least one of sft, dpo, ln-dpo, simpo, var")
        for name in self.methods or []:
            get_method(name)
        if self.study not in STUDIES:
            raise AlignlabError(unknown_name_message("config: study", self.study, list(STUDIES)))
        if self.study == "var" and "var" not in (self.methods or ["var"]):
            raise AlignlabError("config: study 'var' compares VAR with DPO; add var to 'methods'")
        check_numbers("config", vars(self), STUDY_RANGES)
        for name in ("test_data_options", "selection_data_options"):
            options = getattr(self, name)
            for key, value in options.items():
                if key not in TEST_DATA_OPTIONS:
                    raise AlignlabError(unknown_name_message(f"config: {name} has unknown key", key,
                                                             list(TEST_DATA_OPTIONS)))
                options[key] = coerce_value(key, value, str | None, f"config: {name}")
        if self.seeds is not None:  # a valid count by now (check_numbers)
            first = "'training_seed'" if self.training_seed is not None else "'seed' (the first training seed)"
            check_number("config", f"{first} + 'seeds' − 1 (the last training seed)",
                         self.first_training_seed + self.seeds - 1, SEED)
            if self.max_seeds is not None and self.max_seeds < self.seeds:
                raise AlignlabError(f"config: 'max_seeds' ({self.max_seeds}) is below 'seeds' ({self.seeds}); "
                                    "give at least as many, or leave it out for a fixed number of seeds")
        if self.executor not in ("local", "ray"):
            raise AlignlabError(unknown_name_message("config: executor", self.executor, ["local", "ray"]))
        real = {"model": self.model, "train_data": self.train_data, "test_data": self.test_data,
                "gold_rm": self.gold_rm}
        given = [k for k, v in real.items() if v]
        if given and len(given) < len(real):
            missing = ", ".join(k for k in real if k not in given)
            raise AlignlabError(f"config: a study on real models needs model, train_data, test_data and "
                                f"gold_rm together; missing: {missing}")
        from alignlab.models.generate import GenerationConfig

        for section, cls in (("training", TrainConfig), ("reward_training", RewardModelConfig),
                             ("generation", GenerationConfig)):
            types = {k: v for k, v in field_types(cls).items()
                     if k not in ("model", "data", "out", "method", "params", "seed")}
            values = resolve_aliases(getattr(self, section), types, lambda key: f"config: {section}: {key!r}")
            setattr(self, section, values)
            for key in values:
                if key not in types:
                    raise AlignlabError(unknown_name_message(f"config: {section} has unknown key", key, sorted(types)))
                # YAML reads 1e-3 as text: give every value its field's type, or a clear error.
                values[key] = coerce_value(key, values[key], types[key], f"config: {section}")
            check_numbers(f"config: {section}", values, cls.ranges)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Training settings for the study world's presets (lengths come from the world's config): the tiny
# world models learn at rates far above those of billion-parameter models.
WORLD_TRAINING = {
    "tiny": dict(learning_rate=1e-3, epochs=1, batch_size=16),
    "default": dict(learning_rate=5e-4, epochs=1, batch_size=16),
    "large": dict(learning_rate=1e-4, epochs=2, batch_size=32),
}
WORLD_REWARD_TRAINING = {
    "tiny": dict(learning_rate=2e-3, epochs=2, batch_size=16),
    "default": dict(learning_rate=1e-3, epochs=2, batch_size=16),
    "large": dict(learning_rate=3e-4, epochs=2, batch_size=32),
}
REPORTED_TRAINING = ("learning_rate", "epochs", "batch_size", "max_length", "max_prompt_length")
# Generating from the world's small models costs per step, not per row: 200 prompts took 1.35 s in
# batches of 64 and 1.8 s in batches of 32 (one thread; 1.25–1.8 s from 50 to 128 a batch).
WORLD_GENERATION = {
    "tiny": dict(max_new_tokens=48, batch_size=32),
    "default": dict(max_new_tokens=64, batch_size=64),
    "large": dict(max_new_tokens=96, batch_size=64),
}


@dataclass
class StudyInputs:
    """What the stages need, from the study world or from real models and data."""

    sft_model: str
    rm_base: str
    train_data: str
    heldout_data: str | None
    train_format: str
    train_filter: str | None
    test_pairs: list
    scorer: object  # (prompts, responses) -> tensor of gold rewards
    description: dict
    lengths: dict  # max_length / max_prompt_length for training, when the source fixes them
    families: dict | None = None  # test prompt id -> "helpful" | "harmful", when the source knows


@dataclass
class Shared:
    """What every run of a sweep reuses."""

    inputs: StudyInputs
    training: dict
    generation: object
    proxy_rm: str | None
    rm_accuracy: float | None


def world_inputs(config: StudyConfig, out: Path) -> StudyInputs:
    from alignlab.data.pairs import write_pairs_jsonl
    from alignlab.world import build_world, build_world_models, world_config

    world = build_world(world_config(config.preset, seed=config.seed))
    models = build_world_models(world, Path(config.cache_dir) if config.cache_dir else None)
    write_pairs_jsonl(world.train_pairs, out / "data" / "train.jsonl")
    write_pairs_jsonl(world.heldout_pairs, out / "data" / "heldout.jsonl")
    description = {"world": f"study world '{config.preset}' (seed {config.seed})",
                   "training pairs": f"{len(world.train_pairs)} (SafeRLHF-like style)",
                   "test prompts": f"{len(world.test_pairs)} (HH-like style: out of distribution)",
                   "gold reward": "the world's closed form", "world models cached": models.cached}
    lengths = {"max_length": world.config.max_length, "max_prompt_length": world.config.max_prompt_length}
    return StudyInputs(str(models.sft), str(models.sft), str(out / "data" / "train.jsonl"),
                       str(out / "data" / "heldout.jsonl"), "pairs", None, world.test_pairs, world.score,
                       description, lengths, {pair.id: world.family(pair.prompt) for pair in world.test_pairs})


def load_evaluation_pairs(source: str, data_format: str, options: dict) -> list:
    """The pairs of a study's test or selection data, read with its options (split default: test)."""
    from alignlab.data.pairs import load_pairs

    return load_pairs(source, data_format, split=options.get("data_split") or "test", **data_options(options)).pairs


def check_selection_is_held_out(selection_pairs: list, test_pairs: list, source: str) -> None:
    """Refuse selection prompts that are also test prompts. The report measures the runs it picked on
    the test prompts; picked on some of those very prompts, a run's numbers are optimistic — one
    shared prompt leaks as surely as all of them, so any overlap is refused. Prompts compare as the
    evaluation sees them: the same messages (roles and texts), whatever the pairs' ids and answers."""
    def messages(pair) -> tuple:
        return tuple((turn["role"], turn["content"]) for turn in pair.prompt)

    test_prompts = {messages(pair) for pair in test_pairs}
    shared = sum(messages(pair) in test_prompts for pair in selection_pairs)
    if shared:
        raise AlignlabError(f"{source}: {shared} of its {len(selection_pairs)} prompts are also test prompts; runs "
                            "picked on prompts they are then reported on look better than they are, so selection_data "
                            "may share no prompt with the test data. Give selection_data a held-out set disjoint "
                            "from test_data, or leave selection_data unset to select runs on a half of the test "
                            "prompts")


def real_inputs(config: StudyConfig) -> StudyInputs:
    from alignlab.models.score import RewardScorer

    test = load_evaluation_pairs(config.test_data, config.test_format, config.test_data_options)
    test_pairs = test[:config.test_limit] if config.test_limit else test
    description = {"model": config.model, "training data": config.train_data,
                   "test data": f"{config.test_data} ({len(test_pairs)} pairs)", "gold reward model": config.gold_rm}
    scorer = RewardScorer(config.gold_rm, raw_prompts=config.training.get("raw_prompts", False))
    return StudyInputs(config.model, config.model, config.train_data, None, config.train_format,
                       config.train_filter, test_pairs, scorer, description, {})
