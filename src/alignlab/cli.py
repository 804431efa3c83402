"""The `alignlab` command line: `alignlab data`, `alignlab train`, ...

User errors print one line (`alignlab: error: ...`) and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial
from pathlib import Path

from alignlab.cli_settings import (add_bench_arguments, add_config_arguments, add_dataset_arguments,
                                   add_eval_arguments, add_sequential_arguments)
from alignlab.errors import AlignlabError

TRAIN_EPILOG = """\
Every setting above is also a key of a --config YAML file; TRL's names (model_name_or_path,
dataset_name, output_dir, per_device_train_batch_size, num_train_epochs, lr_scheduler_type, bf16,
fp16, save_steps, ...) are accepted for ours and written to config.yaml under our name. A method's
hyper-parameters are --name value too, e.g.
  --method dpo --beta 0.2 --learning_rate 5e-6 --epochs 2 --batch_size 16 --max_length 1024
grpo samples its own responses (the data gives prompts; batch_size counts prompts) and needs
--reward_model; var --z_estimator sampled needs it too.
Methods and their hyper-parameters (defaults):
{methods}
"""


def _methods_help() -> str:
    from alignlab.objectives.registry import METHODS

    lines = []
    for method in METHODS.values():
        params = ", ".join(f"{hp.name}={hp.default}" for hp in method.hyperparameters) or "-"
        lines.append(f"  {method.name:<7} {method.summary}; {params}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="load preference data, report what was kept, write pairs JSONL")
    data.add_argument("path", help="local file (.jsonl/.json/.csv/.parquet, optionally .gz) or HF dataset name")
    data.add_argument("--format", default="pairs", dest="data_format",
                      help="hh-rlhf | pku-saferlhf | pairs (default: pairs)")
    data.add_argument("--filter", default=None, help="pku-saferlhf: double-safe-unsafe")
    data.add_argument("--preference", default="better", help="pku-saferlhf without filter: better | safer")
    data.add_argument("--split", default="train", help="split of a Hugging Face dataset or saved DatasetDict")
    add_dataset_arguments(data, revision_flag="--revision")
    data.add_argument("--out", default=None, help="write normalised pairs (id, prompt, chosen, rejected) here")
    data.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")

    train = commands.add_parser(
        "train", help="train a model with one objective (offline, or online: grpo)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TRAIN_EPILOG.format(methods=_methods_help()), allow_abbrev=False,
        usage="alignlab train --method METHOD --model PATH --data PATH --out DIR [--config FILE] [--SETTING VALUE ...]")
    from alignlab.config import RewardModelConfig, TrainConfig

    add_config_arguments(train, TrainConfig)
    train_rm = commands.add_parser(
        "train-rm", help="train a Bradley-Terry reward model (sequence classifier) on preference pairs",
        epilog="TRL's names for settings (output_dir, per_device_train_batch_size, ...) are accepted too.",
        allow_abbrev=False, usage="alignlab train-rm --model PATH --data PATH --out DIR [--config FILE] [--SETTING VALUE ...]")
    add_config_arguments(train_rm, RewardModelConfig)
    run = commands.add_parser(
        "run", help="a whole study: world (or your models and data), SFT, proxy RM, methods, evaluation, report",
        epilog="Any StudyConfig field can be overridden as --key value (see README).")
    run.add_argument("--world", dest="preset", help="study-world size: tiny | default | large (default: default)")
    run.add_argument("--grid", dest="grid_preset", help="named grid: small (default) | hitchhiker | var | var-small")
    run.add_argument("--preset", dest="deprecated_preset", help=argparse.SUPPRESS)
    run.add_argument("--seed", help="seed of the world and generation (and the first training seed unless "
                                    "--training_seed)")
    run.add_argument("--training_seed", help="first replicate's training seed: training_seed … training_seed + "
                                             "seeds − 1 (default: --seed)")
    run.add_argument("--methods", help="comma-separated methods (default: dpo,ln-dpo,simpo,var)")
    run.add_argument("--config", help="YAML file of StudyConfig fields (real models and data go here)")
    run.add_argument("--out", help="study directory (default: alignlab-run-<preset>-<time>)")
    run.add_argument("--seeds", help="replicate training seeds per configuration (default 3)")
    run.add_argument("--workers", help="runs in parallel (default: on the study world one per CPU core, at most 8; "
                                       "with your own models 1)")
    add_sequential_arguments(run, "6", "9")
    run.add_argument("--study", help="robustness (default: the Hitchhiker analyses) | var (adds the VAR section: "
                                     "GRPO race, Z estimators, compute profile; grid var-small)")
    sweep = commands.add_parser(
        "sweep", help="every method over its hyper-parameter grid, evaluated, with the robustness report; resumable",
        epilog="Any StudyConfig field can be overridden as --key value (see README).")
    sweep.add_argument("config", nargs="?", help="YAML file of StudyConfig fields with a `grid` (or use --grid)")
    sweep.add_argument("--out", required=True, help="sweep directory; run the same command again to resume")
    sweep.add_argument("--grid", dest="grid_preset", help="named grid: hitchhiker | var | var-small | small")
    sweep.add_argument("--preset", dest="deprecated_preset", help=argparse.SUPPRESS)
    sweep.add_argument("--world", dest="preset", help="study-world size: tiny | default | large (default: default)")
    sweep.add_argument("--workers", help="runs in parallel (default: on the study world one per CPU core, at most "
                                         "8; with your own models 1)")
    sweep.add_argument("--executor", help="local (processes, default) | ray")
    sweep.add_argument("--seed", help="seed of the world and generation (and the first training seed unless "
                                      "--training_seed)")
    sweep.add_argument("--training_seed", help="first replicate's training seed (default: --seed)")
    sweep.add_argument("--seeds", help="replicate training seeds per configuration: training_seed … training_seed + "
                                       "N − 1 (default 3)")
    add_sequential_arguments(sweep, "--seeds: a fixed design", "none")
    sweep.add_argument("--study", help="robustness (default) | var (adds the VAR section's stages and analyses)")
    report = commands.add_parser("report", help="(re)write the robustness report of a sweep or run directory")
    report.add_argument("dir", help="the --out of alignlab sweep or alignlab run")
    verdict = commands.add_parser(
        "verdict", help="the claims and report of a study from your own per-response scores (.parquet/.csv/.jsonl)",
        epilog="SCORES has one row per generated response: method, configuration (a name or a JSON object of "
               "hyper-parameters), seed, prompt_id, score, and optionally length, kl, family; rows of method sft "
               "are the baseline. See README, 'alignlab verdict'.")
    verdict.add_argument("scores", help="the table of scores")
    verdict.add_argument("--out", default=None,
                         help="directory for summary.json, report.md, report.html (default: SCORES' name with "
                              "-verdict, beside it)")
    verdict.add_argument("--overwrite", action="store_true", help="replace the report an earlier verdict wrote there")
    verdict.add_argument("--primary", action="append", default=None, metavar="CLAIM",
                         help="a claim of the primary family, by its title (e.g. \"expected score: my-dpo ≥ DPO\"); "
                              "repeat for each (default: the papers' headline claims, else each method's expected "
                              "score against the reference, at most 4)")
    verdict.add_argument("--reference", default=None, metavar="METHOD",
                         help="the method the others are compared with (default: dpo, else the first other method "
                              "in alphabetical order)")

    add_eval_arguments(commands.add_parser(
        "eval", help="evaluate a model: generate, score with a gold reward model, metrics with CIs",
        epilog="Any EvalConfig field can be overridden as --key value; on/off settings also as a bare --key."))

    bench = commands.add_parser("bench", help="throughput and memory against TRL and the SFT limit, as ratios")
    add_bench_arguments(bench)
    return parser


def run_bench(args) -> int:
    from alignlab.bench.runner import run_bench as bench
    from alignlab.bench.table import format_table
    from alignlab.checks import COUNT, check_number
    from alignlab.output_dirs import check_output_file

    if args.data and not args.model and args.shape == "tiny":
        raise AlignlabError("bench: --data goes with --model or --shape hh (the tiny bench model trains on its own pairs)")
    if args.model and args.shape != "tiny":
        raise AlignlabError("bench: --model runs the DPO-vs-TRL rows on your model, and --shape hh on the bench's own "
                            "HH-RLHF model; to run your model on HH-RLHF pairs, pass --model with --data FILE")
    if args.use_peft and not args.model:
        raise AlignlabError("bench: --use_peft picks the LoRA rows of --model PATH; pass --model, or drop --use_peft")
    if args.pairs is not None:
        check_number("bench", "--pairs", args.pairs, COUNT)
    if args.out:
        check_output_file(args.out, overwrite=args.overwrite, inputs=[args.model, args.data])
    if args.scaling is not None:
        return run_scaling_bench(args)
    from alignlab.bench.user_model import run_model_bench

    progress = partial(print, flush=True)
    results = (run_model_bench(args.out, args.quick, args.device, args.model, progress, args.data, args.pairs,
                               args.data_format, args.use_peft) if args.model else
               bench(args.out, args.quick, args.device, progress, args.data, args.pairs, args.shape, args.data_format))
    print(format_table(results))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def run_scaling_bench(args) -> int:
    from alignlab.bench.scaling import format_scaling, run_scaling
    from alignlab.checks import COUNT, check_number
    from alignlab.untrusted import shown

    if args.model or args.pairs is not None:
        raise AlignlabError("bench: --scaling sets the pair counts itself and runs on the shape's own model; "
                            "drop --model and --pairs")
    try:
        counts = [int(part) for part in args.scaling.split(",")]
    except ValueError:
        raise AlignlabError(f"bench: --scaling takes pair counts separated by commas (e.g. 512,2048), "
                            f"not {shown(args.scaling)}") from None
    for count in counts:
        check_number("bench", "--scaling", count, COUNT)
    results = run_scaling(counts, args.device, args.shape, args.data, args.data_format,
                          progress=lambda line: print(line, flush=True))
    print(format_scaling(results))
    if args.out:
        from alignlab.atomic import write_json

        write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0


def run_data(args) -> int:
    from alignlab.data.options import data_options
    from alignlab.data.pairs import load_pairs, write_pairs_jsonl
    from alignlab.output_dirs import check_output_file

    if args.out:
        check_output_file(args.out, overwrite=args.overwrite, inputs=[args.path])  # before reading the data
    result = load_pairs(args.path, args.data_format, filter=args.filter, preference=args.preference,
                        split=args.split, **data_options(vars(args)))
    if args.out:
        write_pairs_jsonl(result.pairs, args.out)
    print(result.summary() + (f"; wrote {args.out}" if args.out else ""))
    return 0


def _fields(cls) -> tuple[str, ...]:
    from alignlab.config import field_types

    return tuple(field_types(cls))


def _config_from_args(cls, args, names: tuple[str, ...], overrides: list[str]):
    from alignlab.config import build_config, parse_overrides
    from alignlab.output_dirs import refuse_unsafe_output

    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    config = build_config(cls, args.config, {**given, **parse_overrides(overrides)})
    if config.out:  # the commands check their other inputs; the config file only the CLI knows
        refuse_unsafe_output(config.out, [args.config])
    return config


def run_train(args, overrides: list[str]) -> int:
    from alignlab.config import TrainConfig
    from alignlab.training import train
    from alignlab.training.outputs import where_to_look

    config = _config_from_args(TrainConfig, args, _fields(TrainConfig), overrides)
    result = train(config)
    if config.method == "grpo":  # online: what it trained on are prompts, and its margin is the reward
        print(f"{result.out}: {result.optimizer_steps} steps, {result.pairs_trained} prompts × "
              f"{config.params['group_size']} responses in {result.seconds:.1f}s, final loss "
              f"{result.final_loss:.4f}, mean proxy reward {result.final_margin:.3f}")
        return 0
    print(f"{result.out}: {result.optimizer_steps} steps, {result.pairs_trained} pairs in "
          f"{result.seconds:.1f}s ({result.pairs_per_second:.1f} pairs/s), final loss "
          f"{result.final_loss:.4f}, margin {result.final_margin:.3f}")
    print(where_to_look(config, Path(result.out)))
    return 0


def run_train_rm(args, overrides: list[str]) -> int:
    from alignlab.config import RewardModelConfig
    from alignlab.training.reward_model import train_reward_model

    config = _config_from_args(RewardModelConfig, args, _fields(RewardModelConfig), overrides)
    result = train_reward_model(config)
    print(f"{result.out}: {result.optimizer_steps} steps in {result.seconds:.1f}s, final loss "
          f"{result.final_loss:.4f}; held-out pairwise accuracy {result.heldout_accuracy:.3f} "
          f"on {result.heldout_pairs} pairs")
    return 0


def run_eval_command(args, overrides: list[str]) -> int:
    from alignlab.evaluation.config import EvalConfig
    from alignlab.evaluation.evaluate import run_eval

    return run_eval(_config_from_args(EvalConfig, args, _fields(EvalConfig), overrides))


def run_study_command(args, overrides: list[str]) -> int:
    import time

    from alignlab.study.config import StudyConfig
    from alignlab.study.grid import RUN_DESIGN
    from alignlab.study.sweep import run_sweep

    _deprecated_preset(args, "preset", "--world tiny|default|large")
    config = _config_from_args(StudyConfig, args, ("preset", "grid_preset", "seed", "training_seed", "seeds", "methods",
                                                   "out", "workers", "study", "max_seeds", "budget_minutes"),
                              overrides)
    if config.study == "var" and config.grid_preset == "small":
        config.grid_preset = "var-small"
    if config.study == "robustness":  # seeds where the noise is, unless the study says otherwise
        config.max_seeds = config.max_seeds or max(RUN_DESIGN["max_seeds"], config.seeds)
        config.budget_minutes = config.budget_minutes or RUN_DESIGN["budget_minutes"]
    if not config.out:
        config.out = f"alignlab-run-{config.preset if config.uses_world else 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(run_sweep(config))
    return 0


def _deprecated_preset(args, meaning: str, replacement: str) -> None:
    """`--preset` meant the world in `run` and the grid in `sweep`; it still does, with a warning."""
    if args.deprecated_preset is None:
        return
    if getattr(args, meaning) is not None:
        raise AlignlabError(f"--preset is the old spelling of {replacement.split()[0]}; give only {replacement.split()[0]}")
    print(f"alignlab: warning: --preset is deprecated in `alignlab {args.command}`: use {replacement}", file=sys.stderr)
    setattr(args, meaning, args.deprecated_preset)


def run_sweep_command(args, overrides: list[str]) -> int:
    from alignlab.yaml_input import read_yaml
    from alignlab.study.config import StudyConfig
    from alignlab.study.sweep import run_sweep

    _deprecated_preset(args, "grid_preset", "--grid hitchhiker|var|var-small|small")
    if args.config is None and args.grid_preset is None:
        raise AlignlabError("alignlab sweep needs a CONFIG.yaml with a grid or --grid (hitchhiker | var | var-small | small)")
    names = ("grid_preset", "preset", "seed", "training_seed", "seeds", "out", "workers", "executor", "study",
             "max_seeds", "budget_minutes")
    config = _config_from_args(StudyConfig, args, names, overrides)
    if args.grid_preset is None and "grid_preset" not in read_yaml(args.config):
        config.grid_preset = None  # a config file's own grid replaces the default one
    print(run_sweep(config))
    return 0


def run_report(args) -> int:
    from alignlab.output_dirs import output_lock
    from alignlab.study.results import write_sweep_report

    with output_lock(args.dir, option="DIR"):  # not while a sweep writes there
        write_sweep_report(args.dir)
    print(f"{args.dir}/report.html")
    return 0


def run_verdict(args) -> int:
    from alignlab.output_dirs import claim_output_dir, mark, marked_kind
    from alignlab.report.verdict import OUTPUTS, claims_table, read_scores, write_verdict

    scores = Path(args.scores)
    out = args.out or str(scores.with_name(Path(scores.name.removesuffix(".gz")).stem + "-verdict"))
    models = read_scores(args.scores)  # a bad table is refused before anything is written
    with claim_output_dir(out, overwrite=args.overwrite, inputs=[args.scores], writes=OUTPUTS) as directory:
        if marked_kind(directory) not in (None, "verdict"):  # a sweep's report is not a verdict's to replace
            raise AlignlabError(f"{out}: holds an alignlab {marked_kind(directory)}, not a verdict; choose another "
                                "--out")
        directory.mkdir(parents=True, exist_ok=True)
        mark(directory, "verdict")
        summary = write_verdict(args.scores, models, directory, args.primary, args.reference)
    for note in summary["context"]["notes"]:
        print(f"alignlab: note: {note}", file=sys.stderr)
    print(claims_table(summary["claims"]))
    print(f"{out}/report.html")
    return 0


def underscored(token: str) -> str:
    """Flags are spelled with underscores, as the config fields they set (`--batch_size`); the
    dashed spelling (`--batch-size`) is accepted for every flag of every command."""
    if not token.startswith("--") or token == "--":
        return token
    name, eq, value = token[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value


def _return_override_value(args, argv: list[str], extra: list[str]) -> None:
    """argparse cannot know that `--key value` overrides take a value, so in `sweep ... --overwrite
    true` it reads `true` as the positional CONFIG: give such a value back to its override."""
    if args.config is None:
        return
    position = argv.index(args.config)
    flag = argv[position - 1]
    if flag.startswith("--") and "=" not in flag and flag in extra:
        extra.insert(extra.index(flag) + 1, args.config)
        args.config = None


COMMANDS_WITH_OVERRIDES = {"train": run_train, "train-rm": run_train_rm, "eval": run_eval_command,
                           "run": run_study_command, "sweep": run_sweep_command}


def main(argv: list[str] | None = None) -> int:
    argv = [underscored(token) for token in (sys.argv[1:] if argv is None else argv)]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "sweep":
        _return_override_value(args, argv, extra)
    if extra and args.command not in COMMANDS_WITH_OVERRIDES:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Library progress bars for loading and saving weights are noise next to alignlab's own bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        if args.command == "data":
            return run_data(args)
        if args.command == "bench":
            return run_bench(args)
        if args.command == "report":
            return run_report(args)
        if args.command == "verdict":
            return run_verdict(args)
        return COMMANDS_WITH_OVERRIDES[args.command](args, extra)
    except AlignlabError as err:
        if args.debug:
            raise
        print(f"alignlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignlab: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # disk full or read-only mid-way, also inside a library's error: one line
        from alignlab.atomic import disk_error, write_error

        full = disk_error(err)
        if args.debug or full is None:
            raise
        print(f"alignlab: error: {write_error(getattr(err, 'filename', None) or 'output', full)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
