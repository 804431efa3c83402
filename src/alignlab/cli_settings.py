"""How the settings of alignlab's typed configs become command-line flags: one flag per field,
listed by `--help` with its type, default and TRL's name (see alignlab.config)."""

from __future__ import annotations


def metavar_of(annotation) -> str:
    """How a field's value is written on the command line."""
    import types
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return "NAME"
    return {int: "INT", float: "NUMBER", bool: "true|false", str: "TEXT"}.get(annotation, "VALUE")


def add_config_arguments(parser, config_cls) -> None:
    """`--config` and one flag per field of `config_cls` (a dataclass whose fields carry help, see
    alignlab.config.setting), listed with its type, default and TRL's name for it. Every default is
    None so that a --config file's value stands unless the command line gives one. On/off fields
    are also bare flags (`--use_peft`); list fields, and those TRL gives as lists (`report_to`),
    take several values (`--lora_target_modules q_proj v_proj`, or comma-separated)."""
    import dataclasses

    from alignlab.config import field_types
    from alignlab.trl_settings import LIST_IN_TRL, PRECISION_FLAGS, TRL_ALIASES, is_list_type

    parser.add_argument("--config", help=f"YAML file of {config_cls.__name__} fields (config.yaml of a run repeats it)")
    group = parser.add_argument_group(f"settings ({config_cls.__name__} fields; also YAML keys of --config)")
    trl_names: dict[str, list[str]] = {}
    for theirs, ours in TRL_ALIASES.items():
        trl_names.setdefault(ours, []).append(theirs)
    annotations = field_types(config_cls)
    for spec in sorted(dataclasses.fields(config_cls), key=lambda spec: spec.name != "method"):  # method first
        if spec.name == "params":  # the method's hyper-parameters, listed in the epilog
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        # A field whose help says what its unset value means ("(default: half of max_length)") needs no "none".
        stated = default is None and "(default:" in spec.metadata.get("help", "")
        notes = [] if stated else [f"default: {default if default not in ('', None) else 'none'}"]
        if spec.name in trl_names:
            notes.append(f"TRL: {' / '.join(trl_names[spec.name])}")
        if spec.name == "mixed_precision":
            notes.append("TRL: " + " / ".join(f"--{flag}" for flag in PRECISION_FLAGS))
        help_text = (spec.metadata.get("help", "") + (f" ({'; '.join(notes)})" if notes else "")).replace("%", "%%")
        metavar = metavar_of(annotations[spec.name])
        if annotations[spec.name] is bool:
            group.add_argument(f"--{spec.name}", nargs="?", const=True, default=None, metavar=metavar, help=help_text)
        elif is_list_type(annotations[spec.name]) or spec.name in LIST_IN_TRL:
            group.add_argument(f"--{spec.name}", nargs="+", default=None, metavar=metavar, help=help_text)
        else:
            group.add_argument(f"--{spec.name}", default=None, metavar=metavar, help=help_text)


def add_dataset_arguments(parser, revision_flag: str, rewards: bool = True) -> None:
    """What picks a Hugging Face dataset's part and the columns of the pairs format (alignlab.data.pairs)."""
    parser.add_argument("--dataset_config", help="configuration (subset) of a Hugging Face dataset")
    parser.add_argument("--data_dir", help="folder inside a Hugging Face dataset repository, e.g. harmless-base")
    parser.add_argument(revision_flag, dest="data_revision",
                        help="the dataset's revision on the Hub: branch, tag or commit (default: main)")
    parser.add_argument("--prompt_column", help="pairs format: column holding the prompt (default: prompt)")
    parser.add_argument("--chosen_column", help="pairs format: column holding the chosen response (default: chosen)")
    parser.add_argument("--rejected_column", help="pairs format: column holding the rejected response "
                                                  "(default: rejected)")
    if rewards:
        parser.add_argument("--reward_chosen_column", help="pairs format: column read as the chosen response's "
                                                           "reward (default: reward_chosen, else score_chosen)")
        parser.add_argument("--reward_rejected_column", help="pairs format: column read as the rejected "
                                                             "response's reward (default: reward_rejected, else "
                                                             "score_rejected)")


def add_eval_arguments(parser) -> None:
    """`alignlab eval`'s settings: the fields of EvalConfig. Every default is None so that a --config
    file's value stands unless the command line gives one; the defaults are EvalConfig's."""
    from alignlab.evaluation.config import EvalConfig
    from alignlab.evaluation.judge import BASELINES

    def on_off(group, name: str, help: str | None = None) -> None:  # a bare --name means true
        group.add_argument(f"--{name}", nargs="?", const=True, default=None, metavar="true|false", help=help)

    parser.add_argument("--config", help="YAML file of EvalConfig fields (an evaluation's config.yaml repeats it)")
    parser.add_argument("--model", help="model to evaluate: directory, .gguf file or HF name")
    parser.add_argument("--gguf_file", help="a GGUF file inside the --model directory")
    parser.add_argument("--revision", help="the model's revision on the Hub: branch, tag or commit (default: main)")
    parser.add_argument("--data", help="test pairs (their chosen responses give win vs chosen)")
    parser.add_argument("--data_format", help="hh-rlhf | pku-saferlhf | pairs (default: pairs)")
    parser.add_argument("--split", help="split of a Hugging Face dataset or saved DatasetDict (default: test)")
    add_dataset_arguments(parser, revision_flag="--data_revision", rewards=False)
    on_off(parser, "raw_prompts", "use text prompts as they are, without the chat template or plain format "
                                  "(as the model was trained)")
    parser.add_argument("--gold_rm", help="sequence-classification reward model that judges (one output)")
    parser.add_argument("--sft", help="SFT model: adds win vs SFT, KL and length-normalised KL")
    parser.add_argument("--sft_revision", help="the SFT model's revision on the Hub (default: main)")
    parser.add_argument("--out", help="results directory (default: eval-<model name>)")
    on_off(parser, "overwrite", "replace the results of an earlier alignlab eval in --out")
    parser.add_argument("--max_new_tokens", help=f"default: {EvalConfig.max_new_tokens}")
    parser.add_argument("--temperature", help=f"default: {EvalConfig.temperature}")
    parser.add_argument("--top_p", help=f"default: {EvalConfig.top_p}")
    on_off(parser, "greedy", "greedy decoding instead of sampling")
    parser.add_argument("--batch_size", help=f"default: {EvalConfig.batch_size}")
    parser.add_argument("--seed", help=f"default: {EvalConfig.seed}")
    parser.add_argument("--limit", help="evaluate the first N pairs only")
    parser.add_argument("--generation_backend", help="hf (transformers, default) | vllm: what samples the responses "
                                                     "(vllm: pip install 'alignlab[vllm]', a CUDA GPU)")
    on_off(parser, "trust_remote_code")
    judge = parser.add_argument_group("LLM judge (optional): pairwise win rate from an OpenAI-compatible API")
    judge.add_argument("--judge_url", help="base URL of the API, e.g. http://127.0.0.1:8000/v1 (turns the judge on)")
    judge.add_argument("--judge_model", help="the judge model's name at that API")
    judge.add_argument("--judge_baseline", choices=BASELINES,
                       help="answers to compare with: the SFT model's (default with --sft) or the dataset's chosen")
    judge.add_argument("--judge_key_env",
                       help=f"environment variable holding the API key (default: {EvalConfig.judge_key_env}); "
                            "unset: no Authorization header")
    judge.add_argument("--judge_retries", help="retries of a failed request (timeout, 429, 5xx, malformed reply); "
                                               f"default: {EvalConfig.judge_retries}")
    judge.add_argument("--judge_timeout", help=f"seconds to wait for each reply (default: {EvalConfig.judge_timeout})")
    judge.add_argument("--judge_workers", help=f"requests in flight at once (default: {EvalConfig.judge_workers})")
    on_off(judge, "judge_follow_redirects", "follow a redirect to another host, port or scheme, without the API key "
                                            "(default: such a redirect fails the request)")


def add_sequential_arguments(parser, max_seeds: str, budget_minutes: str) -> None:
    """A study's sequential design (alignlab.analysis.sequential), with the command's defaults as text."""
    parser.add_argument("--max_seeds", help="seeds where the noise is: up to this many per configuration whose noise "
                                            f"keeps a primary claim open (default {max_seeds})")
    parser.add_argument("--budget_minutes", help="no sequential look starts whose runs would end past this many "
                                                 f"minutes (default {budget_minutes})")


def add_bench_arguments(parser) -> None:
    """`alignlab bench`'s flags: the shape or the user's model, the rows' sizes, where results go."""
    parser.add_argument("--out", default=None, help="write the results as JSON here (e.g. bench.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run of every row (under 3 minutes on CPU; --shape hh under 5; --model sizes its "
                             "pairs from timed warm-ups to finish in 5)")
    parser.add_argument("--shape", default="tiny", choices=["tiny", "hh"],
                        help="tiny: short synthetic pairs on a tiny Llama; hh: real HH-RLHF pairs, a BPE tokenizer "
                             "trained on them and a ~23M-parameter Llama at max_length 512")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default=None,
                        help="run the DPO-vs-TRL rows on this model (a local directory or .gguf file) instead of the tiny one")
    parser.add_argument("--data", default=None,
                        help="with --model: pairs to train on (default: the bench pairs); with --shape hh: the "
                             "file to take pairs from (default: ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz)")
    parser.add_argument("--data_format", default=None, choices=["pairs", "hh-rlhf", "pku-saferlhf"],
                        help="how --data is read (default: pairs; hh-rlhf for the default HH-RLHF file)")
    parser.add_argument("--scaling", default=None, metavar="N,N,...",
                        help="instead of the ratios: DPO seconds and tokens/s of both libraries on the first N pairs "
                             "of the shape, for each N (e.g. 512,2048)")
    parser.add_argument("--use_peft", action="store_true", help="with --model: only the LoRA rows (alignlab's default "
                        "adapter, given to TRL as peft_config); without it --model measures full-parameter and LoRA DPO")
    parser.add_argument("--pairs", type=int, default=None,
                        help="how many pairs (default: tiny 256 with --quick, else 512; hh 48 with --quick, else 128; --model 512, "
                             "with --quick as many as fit 5 minutes)")
