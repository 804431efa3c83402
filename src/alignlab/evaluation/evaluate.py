"""Evaluating one model on test prompts: generate → score → metrics (SPEC §5).

A scorer is any callable `(prompts, responses) -> tensor of rewards`: the study world's exact gold
reward (`StudyWorld.score`) or a sequence-classification reward model (`RewardScorer`): any
`alignlab.models.score.Scorer`.

Per-sample results (`samples.parquet`), one row per test prompt: prompt_id, prompt (JSON of the
turns), response, length (tokens), gold_score, chosen_score (the dataset's chosen response),
sft_score (the SFT model's response to the same prompt, when given), logp_policy and logp_sft
(summed log-probs of the response under the policy and the SFT model, for KL). `metrics.json`
holds `metrics.summarize` of them. With an LLM judge (`alignlab.evaluation.judge`, optional), also
judge_score and judge_error per sample and `judge_win_rate` in `metrics.json`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab import atomic
from alignlab.checks import COUNT, check_numbers
from alignlab.errors import AlignlabError
from alignlab.models.generate import GenerationConfig, generate_responses
from alignlab.evaluation.judge import BASELINES, JudgeConfig, judge_columns, judge_config, summary_line, win_rate_metric
from alignlab.evaluation.metrics import summarize
from alignlab.models.loading import load_causal_lm, load_tokenizer, sequence_logps
from alignlab.models.score import RewardScorer
from alignlab.output_dirs import claim_output_dir, mark
from alignlab.data.tokenise import PromptRenderer, collate_sequences

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    samples: dict  # column name -> list, one entry per test prompt
    metrics: dict


@torch.inference_mode()
def response_logps(model, tokenizer, prompts: list[list[dict]], response_ids: list[list[int]],
                   batch_size: int = 16, device="cpu") -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) over each response's tokens (temperature 1, a clean forward pass)."""
    renderer = PromptRenderer(tokenizer)
    prompt_ids = [renderer.prompt_ids(prompt)[0] for prompt in prompts]
    totals = torch.zeros(len(prompts), dtype=torch.float64)
    model.eval()
    for start in range(0, len(prompts), batch_size):
        stop = min(start + batch_size, len(prompts))
        batch = collate_sequences(prompt_ids[start:stop], response_ids[start:stop], tokenizer.pad_token_id)
        totals[start:stop] = sequence_logps(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                            batch["loss_mask"].to(device)).double().cpu()
    return totals


def write_parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic.atomic_open(path, "wb") as handle:
        pq.write_table(pa.table(columns), handle)


def evaluate_model(model_path: str, pairs, scorer, *, sft_model_path: str | None = None,
                   sft_samples: dict | None = None, generation: GenerationConfig = GenerationConfig(),
                   out_dir: str | Path | None = None, device="cpu", trust_remote_code: bool = False,
                   judge: JudgeConfig | None = None, proxy_scorer=None, tokenizer_path: str | None = None
                   ) -> EvalResult:
    """Generate a response per test pair, score it, and summarise; write the results to `out_dir`.
    With `judge`, an LLM judge also compares each response with the baseline it names; with
    `proxy_scorer` (the reward model training saw) each response also gets a `proxy_score`.
    `tokenizer_path` serves weights saved without their tokenizer (training snapshots)."""
    tokenizer = load_tokenizer(tokenizer_path or model_path, trust_remote_code)
    model = load_causal_lm(model_path, trust_remote_code=trust_remote_code).to(device)
    prompts = [pair.prompt for pair in pairs]
    generations = generate_responses(model, tokenizer, prompts, generation, device)
    responses = [g.text for g in generations]
    ids = [g.token_ids for g in generations]
    samples = {
        "prompt_id": [pair.id for pair in pairs],
        "prompt": [json.dumps(pair.prompt, ensure_ascii=False) for pair in pairs],
        "response": responses,
        "length": [len(t) for t in ids],
        "gold_score": scorer(prompts, responses).double().tolist(),
        "chosen_score": scorer(prompts, [pair.chosen for pair in pairs]).double().tolist(),
        "logp_policy": response_logps(model, tokenizer, prompts, ids, generation.batch_size, device).tolist(),
    }
    if proxy_scorer is not None:
        samples["proxy_score"] = proxy_scorer(prompts, responses).double().tolist()
    if sft_samples is not None:
        sft_by_id = dict(zip(sft_samples["prompt_id"], sft_samples["gold_score"]))
        samples["sft_score"] = [sft_by_id[pair.id] for pair in pairs]
    if sft_model_path is not None:
        same = Path(sft_model_path).resolve() == Path(model_path).resolve()
        if not same and load_tokenizer(sft_model_path, trust_remote_code).get_vocab() != tokenizer.get_vocab():
            raise AlignlabError(f"{sft_model_path}: the SFT model's tokenizer differs from "
                                f"{tokenizer_path or model_path}'s; KL to SFT needs both models to share one tokenizer")
        sft = model if same else load_causal_lm(sft_model_path, trust_remote_code=trust_remote_code).to(device)
        samples["logp_sft"] = (samples["logp_policy"] if same else
                               response_logps(sft, tokenizer, prompts, ids, generation.batch_size, device).tolist())
    if judge is not None:
        samples.update(judge_columns(judge, pairs, responses, sft_samples))
    result = EvalResult(samples, summarize(samples, seed=generation.seed))
    if judge is not None:
        result.metrics["judge_win_rate"] = win_rate_metric(samples["judge_score"], judge.model, generation.seed)
    if out_dir is not None:
        write_parquet(Path(out_dir) / "samples.parquet", samples)
        atomic.write_json(Path(out_dir) / "metrics.json", result.metrics)
    return result


def add_eval_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model to evaluate: directory or HF name")
    parser.add_argument("--data", required=True, help="test pairs (their chosen responses give win vs chosen)")
    parser.add_argument("--data_format", default="pairs", help="hh-rlhf | pku-saferlhf | pairs")
    parser.add_argument("--split", default="test", help="split of a Hugging Face dataset")
    parser.add_argument("--gold_rm", required=True,
                        help="sequence-classification reward model that judges (one output)")
    parser.add_argument("--sft", default=None, help="SFT model: adds win vs SFT, KL and length-normalised KL")
    parser.add_argument("--out", default=None, help="results directory (default: eval-<model name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier alignlab eval in --out")
    parser.add_argument("--max_new_tokens", type=int, default=GenerationConfig.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=GenerationConfig.temperature)
    parser.add_argument("--top_p", type=float, default=GenerationConfig.top_p)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--batch_size", type=int, default=GenerationConfig.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N pairs only")
    parser.add_argument("--trust_remote_code", action="store_true")
    judge = parser.add_argument_group("LLM judge (optional): pairwise win rate from an OpenAI-compatible API")
    judge.add_argument("--judge_url", default=None,
                       help="base URL of the API, e.g. http://127.0.0.1:8000/v1 (turns the judge on)")
    judge.add_argument("--judge_model", default=None, help="the judge model's name at that API")
    judge.add_argument("--judge_baseline", choices=BASELINES, default=None,
                       help="answers to compare with: the SFT model's (default with --sft) or the dataset's chosen")
    judge.add_argument("--judge_key_env", default=JudgeConfig.key_env,
                       help="environment variable holding the API key; unset: no Authorization header")
    judge.add_argument("--judge_retries", type=int, default=JudgeConfig.retries,
                       help="retries of a failed request (timeout, 429, 5xx, malformed reply)")
    judge.add_argument("--judge_timeout", type=float, default=JudgeConfig.timeout_s,
                       help="seconds to wait for each reply")
    judge.add_argument("--judge_workers", type=int, default=JudgeConfig.workers,
                       help="requests in flight at once")


def run_eval(args) -> int:
    check_numbers("eval", vars(args), {**GenerationConfig.ranges, "limit": COUNT}, label=lambda name: "--" + name)
    judge = judge_config(args)
    out = Path(args.out or f"eval-{Path(args.model.rstrip('/')).name}")
    inputs = [args.model, args.data, args.gold_rm, args.sft]
    with claim_output_dir(out, overwrite=args.overwrite, inputs=inputs):
        result = _evaluate_into(out, args, judge)
    for name, metric in result.metrics.items():
        if metric is not None and metric["value"] is not None:  # a judge that judged nothing has no value
            print(f"{name:<14} {metric['value']:>10.4f}  [{metric['ci_low']:.4f}, {metric['ci_high']:.4f}]")
    if judge is not None:
        print(summary_line(result.metrics["judge_win_rate"], result.samples["judge_error"]))
    print(out)
    return 0


def _evaluate_into(out: Path, args, judge: JudgeConfig | None) -> EvalResult:
    """`alignlab eval`'s work; the caller holds `out`."""
    from alignlab.data.pairs import load_pairs
    from alignlab.models.loading import load_sequence_classifier

    new_dir = not out.exists() or not any(out.iterdir())
    pairs = load_pairs(args.data, args.data_format, split=args.split).pairs[:args.limit]
    if not pairs:
        raise AlignlabError(f"{args.data}: no test pairs to evaluate")
    load_sequence_classifier(args.gold_rm, trust_remote_code=args.trust_remote_code)  # fail before work
    generation = GenerationConfig(args.max_new_tokens, args.temperature, args.top_p, args.greedy,
                                  args.batch_size, args.seed)
    scorer = RewardScorer(args.gold_rm, trust_remote_code=args.trust_remote_code, batch_size=args.batch_size)
    sft_samples = None
    with atomic.staged_dir(out) as staging:  # results appear together at the end, or not at all
        if new_dir:
            mark(staging, "evaluation")
        if args.sft:
            sft_samples = evaluate_model(args.sft, pairs, scorer, sft_model_path=args.sft, generation=generation,
                                         out_dir=staging / "sft", trust_remote_code=args.trust_remote_code).samples
        result = evaluate_model(args.model, pairs, scorer, sft_model_path=args.sft, sft_samples=sft_samples,
                                generation=generation, out_dir=staging, trust_remote_code=args.trust_remote_code,
                                judge=judge)
    return result
