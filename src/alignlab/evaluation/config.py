"""`alignlab eval`'s typed configuration: dataclass defaults < YAML file (`--config`) < `--key value`
on the command line, as for training (`alignlab.config.build_config`). The evaluation writes the
resolved configuration as `config.yaml` next to its results, to repeat it with `--config`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from alignlab.checks import COUNT, check_numbers
from alignlab.config import GENERATION_BACKENDS
from alignlab.errors import AlignlabError, unknown_name_message
from alignlab.evaluation.judge import JudgeConfig
from alignlab.models.generate import GenerationConfig


@dataclass
class EvalConfig:
    """One evaluation (`alignlab eval`): a model's responses to test prompts, scored by a gold reward
    model, optionally compared with an SFT model's and judged by an LLM."""

    model: str = ""  # model to evaluate: directory, .gguf file or HF name
    gguf_file: str | None = None  # a GGUF file inside the `model` directory
    revision: str | None = None  # the model's revision on the Hub (branch, tag or commit)
    data: str = ""  # test pairs (their chosen responses give win vs chosen)
    data_format: str = "pairs"  # hh-rlhf | pku-saferlhf | pairs
    split: str = "test"  # split of a Hugging Face dataset or saved DatasetDict
    dataset_config: str | None = None  # configuration (subset) of a Hugging Face dataset
    data_dir: str | None = None  # folder inside a Hugging Face dataset repository, e.g. harmless-base
    data_revision: str | None = None  # the dataset's revision on the Hub (branch, tag or commit)
    prompt_column: str | None = None  # column holding the prompt (default: prompt)
    chosen_column: str | None = None  # column holding the chosen response (default: chosen)
    rejected_column: str | None = None  # column holding the rejected response (default: rejected)
    raw_prompts: bool = False  # text prompts as they are, no chat template or plain format (as the model trained)
    gold_rm: str = ""  # sequence-classification reward model that judges (one output)
    sft: str | None = None  # SFT model: adds win vs SFT, KL and length-normalised KL
    sft_revision: str | None = None  # the SFT model's revision on the Hub
    out: str | None = None  # results directory (default: eval-<model name>)
    overwrite: bool = False  # replace the results of an earlier alignlab eval in `out`
    max_new_tokens: int = GenerationConfig.max_new_tokens
    temperature: float = GenerationConfig.temperature
    top_p: float = GenerationConfig.top_p
    greedy: bool = False  # greedy decoding instead of sampling
    batch_size: int = GenerationConfig.batch_size
    seed: int = 0
    limit: int | None = None  # evaluate the first N pairs only
    trust_remote_code: bool = False
    generation_backend: str = "hf"  # hf | vllm: what samples the responses (vllm: pip install 'alignlab[vllm]')
    # The LLM judge (optional, `alignlab.evaluation.judge`): on with judge_url.
    judge_url: str | None = None  # base URL of the API, e.g. http://127.0.0.1:8000/v1
    judge_model: str | None = None  # the judge model's name at that API
    judge_baseline: str | None = None  # sft (default with `sft`) | chosen
    judge_key_env: str = JudgeConfig.key_env  # environment variable holding the API key
    judge_retries: int = JudgeConfig.retries  # retries of a failed request
    judge_timeout: float = JudgeConfig.timeout_s  # seconds to wait for each reply
    judge_workers: int = JudgeConfig.workers  # requests in flight at once
    judge_follow_redirects: bool = JudgeConfig.follow_cross_origin_redirects  # follow redirects off-origin, no key

    def validate(self) -> None:
        for name in ("model", "data", "gold_rm"):
            if not getattr(self, name):
                raise AlignlabError(f"config: '{name}' is required (pass --{name} or set it in the YAML)")
        if self.gguf_file:
            self.model, self.gguf_file = str(Path(self.model) / self.gguf_file), None
        check_numbers("eval", vars(self), {**GenerationConfig.ranges, "limit": COUNT}, label=lambda name: "--" + name)
        if self.generation_backend not in GENERATION_BACKENDS:
            raise AlignlabError(unknown_name_message("eval: --generation_backend", self.generation_backend,
                                                     list(GENERATION_BACKENDS)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
