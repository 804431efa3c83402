"""Evaluating one model on test prompts: generate → score → metrics (SPEC §5).

A scorer is any callable `(prompts, responses) -> tensor of rewards`: the study world's exact gold
reward (`StudyWorld.score`) or a sequence-classification reward model (`RewardScorer`): any
`alignlab.models.score.Scorer`.

Per-sample results (`samples.parquet`), one row per test prompt: prompt_id, prompt (JSON of the
turns), response, length (tokens), gold_score, chosen_score (the dataset's chosen response),
sft_score (the SFT model's response to the same prompt, when given) and, with an SFT model, kl,
kl_length and ln_kl: the exact KL to the SFT model summed over a second response sampled at
temperature 1 (`alignlab.evaluation.kl`), that response's length in tokens, and their ratio.
Responses are sampled by the generation backend (`alignlab.models.backends`: transformers, or vLLM
with `generation_backend vllm`) and end at the model's stop tokens (`alignlab.models.generate`).
`metrics.json` holds `metrics.summarize` of them; `config.yaml` the resolved `EvalConfig`
(`alignlab eval`). With an LLM judge (`alignlab.evaluation.judge`, optional), also judge_score and
judge_error per sample and `judge_win_rate` in `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from alignlab import atomic
from alignlab.config import dump_yaml
from alignlab.errors import AlignlabError
from alignlab.evaluation.config import EvalConfig
from alignlab.models.backends import make_backend, require_backend
from alignlab.models.generate import GenerationConfig
from alignlab.evaluation.judge import JudgeConfig, judge_columns, judge_config, summary_line, win_rate_metric
from alignlab.evaluation.metrics import summarize
from alignlab.evaluation.kl import kl_generation, kl_to_sft
from alignlab.models.loading import load_causal_lm, load_tokenizer
from alignlab.models.score import RewardScorer
from alignlab.output_dirs import claim_output_dir, mark

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    samples: dict  # column name -> list, one entry per test prompt
    metrics: dict


def write_parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic.atomic_open(path, "wb") as handle:
        pq.write_table(pa.table(columns), handle)


def evaluate_model(model_path: str, pairs, scorer, *, sft_model_path: str | None = None,
                   sft_samples: dict | None = None, generation: GenerationConfig = GenerationConfig(),
                   out_dir: str | Path | None = None, device="cpu", trust_remote_code: bool = False,
                   judge: JudgeConfig | None = None, proxy_scorer=None, tokenizer_path: str | None = None,
                   generation_backend: str = "hf", revision: str | None = None, sft_revision: str | None = None,
                   raw_prompts: bool = False) -> EvalResult:
    """Generate a response per test pair, score it, and summarise; write the results to `out_dir`.
    With `judge`, an LLM judge also compares each response with the baseline it names; with
    `proxy_scorer` (the reward model training saw) each response also gets a `proxy_score`.
    `tokenizer_path` serves weights saved without their tokenizer (training snapshots).
    `generation_backend` ("hf" | "vllm") samples every response, the ones KL is estimated on included.
    `revision` and `sft_revision` are the hub revisions of a hub model and SFT model; `raw_prompts`
    encodes text prompts as they are, as training did (the scorers render prompts their own way)."""
    tokenizer = load_tokenizer(tokenizer_path or model_path, trust_remote_code, revision)
    model = load_causal_lm(model_path, trust_remote_code=trust_remote_code, revision=revision).to(device)
    backend = make_backend(generation_backend, model, tokenizer, model_path, revision=revision, device=device,
                           trust_remote_code=trust_remote_code)
    prompts = [pair.prompt for pair in pairs]
    generations = backend.respond(prompts, generation, raw_prompts)
    responses = [g.text for g in generations]
    ids = [g.token_ids for g in generations]
    samples = {
        "prompt_id": [pair.id for pair in pairs],
        "prompt": [json.dumps(pair.prompt, ensure_ascii=False) for pair in pairs],
        "response": responses,
        "length": [len(t) for t in ids],
        "gold_score": scorer(prompts, responses).double().tolist(),
        "chosen_score": scorer(prompts, [pair.chosen for pair in pairs]).double().tolist(),
    }
    if proxy_scorer is not None:
        samples["proxy_score"] = proxy_scorer(prompts, responses).double().tolist()
    if sft_samples is not None:
        sft_by_id = dict(zip(sft_samples["prompt_id"], sft_samples["gold_score"]))
        samples["sft_score"] = [sft_by_id[pair.id] for pair in pairs]
    if sft_model_path is not None:
        same = Path(sft_model_path).resolve() == Path(model_path).resolve() and sft_revision == revision
        if not same and load_tokenizer(sft_model_path, trust_remote_code,
                                       sft_revision).get_vocab() != tokenizer.get_vocab():
            raise AlignlabError(f"{sft_model_path}: the SFT model's tokenizer differs from "
                                f"{tokenizer_path or model_path}'s; KL to SFT needs both models to share one tokenizer")
        sft = model if same else load_causal_lm(sft_model_path, trust_remote_code=trust_remote_code,
                                                revision=sft_revision).to(device)
        if sft.config.vocab_size != model.config.vocab_size:
            raise AlignlabError(f"{sft_model_path}: the SFT model has {sft.config.vocab_size} output tokens, "
                                f"{model_path} {model.config.vocab_size}; KL to SFT needs one vocabulary: "
                                "pass the SFT model this one was trained from")
        kl_ids = [g.token_ids for g in backend.respond(prompts, kl_generation(generation), raw_prompts)]
        # Against itself the KL is 0 exactly; its samples are still drawn, for kl_length.
        kl = [0.0] * len(pairs) if same else kl_to_sft(model, sft, tokenizer, prompts, kl_ids,
                                                       generation.batch_size, device, raw_prompts)
        samples["kl"], samples["kl_length"] = kl, [len(t) for t in kl_ids]
        samples["ln_kl"] = [k / max(n, 1) for k, n in zip(kl, samples["kl_length"])]
    if judge is not None:
        samples.update(judge_columns(judge, pairs, responses, sft_samples))
    result = EvalResult(samples, summarize(samples, seed=generation.seed))
    if judge is not None:
        result.metrics["judge_win_rate"] = win_rate_metric(samples["judge_score"], judge.model, generation.seed)
    if out_dir is not None:
        write_parquet(Path(out_dir) / "samples.parquet", samples)
        atomic.write_json(Path(out_dir) / "metrics.json", result.metrics)
    return result


def run_eval(config: EvalConfig) -> int:
    """`alignlab eval`: check the settings, evaluate into `config.out` (default: eval-<model name>),
    print the metrics and the results directory."""
    config.validate()
    require_backend(config.generation_backend)
    judge = judge_config(config)
    config = dataclasses.replace(config, out=config.out or f"eval-{Path(config.model.rstrip('/')).name}")
    out = Path(config.out)
    inputs = [config.model, config.data, config.gold_rm, config.sft]
    with claim_output_dir(out, overwrite=config.overwrite, inputs=inputs):
        result = _evaluate_into(out, config, judge)
    for name, metric in result.metrics.items():
        if metric is not None and metric["value"] is not None:  # a judge that judged nothing has no value
            print(f"{name:<14} {metric['value']:>10.4f}  [{metric['ci_low']:.4f}, {metric['ci_high']:.4f}]")
    if judge is not None:
        print(summary_line(result.metrics["judge_win_rate"], result.samples["judge_error"]))
    print(out)
    return 0


def _evaluate_into(out: Path, config: EvalConfig, judge: JudgeConfig | None) -> EvalResult:
    """`alignlab eval`'s work; the caller holds `out`."""
    from alignlab.data.options import data_options
    from alignlab.data.pairs import load_pairs
    from alignlab.models.loading import load_sequence_classifier

    new_dir = not out.exists() or not any(out.iterdir())
    pairs = load_pairs(config.data, config.data_format, split=config.split,
                       **data_options(vars(config))).pairs[:config.limit]
    if not pairs:
        raise AlignlabError(f"{config.data}: no test pairs to evaluate")
    load_sequence_classifier(config.gold_rm, trust_remote_code=config.trust_remote_code)  # fail before work
    generation = GenerationConfig(config.max_new_tokens, config.temperature, config.top_p, config.greedy,
                                  config.batch_size, config.seed)
    scorer = RewardScorer(config.gold_rm, trust_remote_code=config.trust_remote_code, batch_size=config.batch_size,
                          raw_prompts=config.raw_prompts)
    sft_samples = None
    with atomic.staged_dir(out) as staging:  # results appear together at the end, or not at all
        if new_dir:
            mark(staging, "evaluation")
        atomic.write_text(staging / "config.yaml", dump_yaml(config))
        if config.sft:
            sft_samples = evaluate_model(config.sft, pairs, scorer, sft_model_path=config.sft, generation=generation,
                                         out_dir=staging / "sft", trust_remote_code=config.trust_remote_code,
                                         generation_backend=config.generation_backend, revision=config.sft_revision,
                                         sft_revision=config.sft_revision, raw_prompts=config.raw_prompts).samples
        result = evaluate_model(config.model, pairs, scorer, sft_model_path=config.sft, sft_samples=sft_samples,
                                generation=generation, out_dir=staging, trust_remote_code=config.trust_remote_code,
                                judge=judge, generation_backend=config.generation_backend, revision=config.revision,
                                sft_revision=config.sft_revision, raw_prompts=config.raw_prompts)
    return result
