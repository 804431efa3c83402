"""`alignlab run`: one alignment study end to end — data, SFT, proxy reward model, every method,
evaluation against the gold reward, report.

Two worlds, one code path. By default the built-in study world (`alignlab.world`) supplies the
SFT model, the training pairs (SafeRLHF-like style), the OOD test prompts (HH-like style) and an
exact gold reward. With `model`, `train_data`, `test_data` and `gold_rm` set (in a YAML config),
the same stages run on any Hugging Face model, dataset and sequence-classification gold RM.

Directory layout under `out`:
    data/train.jsonl, data/heldout.jsonl     training and reward-model held-out pairs
    proxy_rm/                                the proxy reward model (when VAR runs and none is given)
    runs/<method>/                           a training run (config.yaml, metrics.jsonl, model/ ...)
    runs/<name>/samples.parquet, metrics.json  its evaluation (runs/sft holds the SFT model's)
    summary.json, report.md, report.html, figures/
Every file is written atomically; the report appears last.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignlab import atomic
from alignlab.config import RewardModelConfig, TrainConfig, dump_yaml
from alignlab.errors import AlignlabError
from alignlab.objectives import get_method, unknown_name_message

log = logging.getLogger(__name__)

DEFAULT_METHODS = ["dpo", "ln-dpo", "simpo", "var"]


@dataclass
class StudyConfig:
    out: str = ""
    preset: str = "default"  # study-world preset: tiny | default | large
    seed: int = 0
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    method_params: dict = field(default_factory=dict)  # method -> hyper-parameters, e.g. {dpo: {beta: 0.1}}
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
    test_limit: int | None = None  # evaluate on the first N test pairs
    gold_rm: str | None = None  # sequence classifier that judges the evaluation
    proxy_rm: str | None = None  # VAR's reward model; default: trained with train-rm on train_data
    cache_dir: str | None = None
    overwrite: bool = False

    @property
    def uses_world(self) -> bool:
        return self.model is None

    def validate(self) -> None:
        if not self.out:
            raise AlignlabError("config: 'out' is required")
        if not self.methods:
            raise AlignlabError("config: 'methods' is empty; name at least one of sft, dpo, ln-dpo, simpo, var")
        for name in self.methods:
            get_method(name)
        for name, params in self.method_params.items():
            if name not in self.methods:
                raise AlignlabError(unknown_name_message("config: method_params names method", name, self.methods))
            get_method(name).resolve(params)
        real = {"model": self.model, "train_data": self.train_data, "test_data": self.test_data,
                "gold_rm": self.gold_rm}
        given = [k for k, v in real.items() if v]
        if given and len(given) < len(real):
            missing = ", ".join(k for k in real if k not in given)
            raise AlignlabError(f"config: a study on real models needs model, train_data, test_data and "
                                f"gold_rm together; missing: {missing}")
        from alignlab.generate import GenerationConfig

        for section, cls in (("training", TrainConfig), ("reward_training", RewardModelConfig),
                             ("generation", GenerationConfig)):
            fields = {f.name for f in dataclasses.fields(cls)} - {"model", "data", "out", "method", "params", "seed"}
            for key in getattr(self, section):
                if key not in fields:
                    raise AlignlabError(unknown_name_message(f"config: {section} has unknown key", key, sorted(fields)))

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
WORLD_GENERATION = {
    "tiny": dict(max_new_tokens=48, batch_size=32),
    "default": dict(max_new_tokens=64, batch_size=32),
    "large": dict(max_new_tokens=96, batch_size=64),
}


def check_study_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new study into an old one; the directory itself appears with the first result."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise AlignlabError(f"{out}: output directory exists and is not empty; choose another --out or "
                            "pass --overwrite true")


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


def world_inputs(config: StudyConfig, out: Path) -> StudyInputs:
    from alignlab.data import write_pairs_jsonl
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
                       description, lengths)


def real_inputs(config: StudyConfig) -> StudyInputs:
    from alignlab.data import load_pairs
    from alignlab.evaluate import reward_model_scorer

    test = load_pairs(config.test_data, config.test_format, split="test")
    test_pairs = test.pairs[:config.test_limit] if config.test_limit else test.pairs
    description = {"model": config.model, "training data": config.train_data,
                   "test data": f"{config.test_data} ({len(test_pairs)} pairs)", "gold reward model": config.gold_rm}
    return StudyInputs(config.model, config.model, config.train_data, None, config.train_format,
                       config.train_filter, test_pairs, reward_model_scorer(config.gold_rm), description, {})


def run_study(config: StudyConfig) -> Path:
    """Run every stage of the study and write its report; returns the study directory."""
    from alignlab.evaluate import evaluate_model
    from alignlab.generate import GenerationConfig
    from alignlab.report import write_report
    from alignlab.reward_model import train_reward_model
    from alignlab.train import train

    config.validate()
    out = Path(config.out)
    check_study_dir(out, config.overwrite)
    started = time.perf_counter()
    inputs = world_inputs(config, out) if config.uses_world else real_inputs(config)
    preset = config.preset if config.uses_world else None
    training = {**WORLD_TRAINING.get(preset, {}), **inputs.lengths, **config.training, "seed": config.seed,
                "cache_dir": config.cache_dir, "data_format": inputs.train_format,
                "data_filter": inputs.train_filter}
    generation = GenerationConfig(**{**WORLD_GENERATION.get(preset, {}), **config.generation, "seed": config.seed})

    proxy_rm = config.proxy_rm
    rm_accuracy = None
    if "var" in config.methods and proxy_rm is None:
        log.info("training the proxy reward model")
        rm_settings = {**WORLD_REWARD_TRAINING.get(preset, {}), **inputs.lengths, **config.reward_training,
                       "seed": config.seed, "cache_dir": config.cache_dir,
                       "data_format": inputs.train_format, "data_filter": inputs.train_filter}
        rm = train_reward_model(RewardModelConfig(model=inputs.rm_base, data=inputs.train_data,
                                                  eval_data=inputs.heldout_data, out=str(out / "proxy_rm"),
                                                  **rm_settings))
        proxy_rm, rm_accuracy = str(rm.out / "model"), rm.heldout_accuracy

    runs = {}
    for method in config.methods:
        log.info("training %s", method)
        runs[method] = train(TrainConfig(method=method, model=inputs.sft_model, data=inputs.train_data,
                                         out=str(out / "runs" / method), params=config.method_params.get(method, {}),
                                         reward_model=proxy_rm if method == "var" else None, **training))

    log.info("evaluating sft")
    sft_eval = evaluate_model(inputs.sft_model, inputs.test_pairs, inputs.scorer, sft_model_path=inputs.sft_model,
                              generation=generation, out_dir=out / "runs" / "sft")
    entries = [entry("sft", sft_eval, {}, "runs/sft")]
    for method, run in runs.items():
        log.info("evaluating %s", method)
        result = evaluate_model(str(run.out / "model"), inputs.test_pairs, inputs.scorer,
                                sft_model_path=inputs.sft_model, sft_samples=sft_eval.samples,
                                generation=generation, out_dir=run.out)
        params = get_method(method).resolve(config.method_params.get(method, {}))
        entries.append(entry(method, result, params, f"runs/{method}"))

    context = {**inputs.description, "methods": ", ".join(config.methods), "seed": config.seed,
               "training": ", ".join(f"{k}={training[k]}" for k in REPORTED_TRAINING if k in training),
               "generation": f"temperature {generation.temperature}, top-p {generation.top_p}, "
                             f"max {generation.max_new_tokens} new tokens" + (" (greedy)" if generation.greedy else ""),
               "wall-clock seconds": round(time.perf_counter() - started, 1)}
    if rm_accuracy is not None:
        context["proxy RM held-out accuracy"] = f"{rm_accuracy:.3f}"
    atomic.write_text(out / "study.yaml", dump_yaml(config))
    write_report(out, entries, context, title="alignlab study")
    return out


def entry(name: str, result, params: dict, run_dir: str):
    from alignlab.report import ModelEntry

    gold = dict(zip(result.samples["prompt_id"], result.samples["gold_score"]))
    return ModelEntry(name, result.metrics, gold, params, run_dir)
