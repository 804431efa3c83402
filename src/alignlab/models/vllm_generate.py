"""The vLLM generation backend (`generation_backend vllm`, the extra `alignlab[vllm]`).

Written against vLLM's offline API: `vllm.LLM` loads the checkpoint, `LLM.generate` takes the prompts
as token ids (`TokensPrompt`, so they are exactly training's encoding) with one `SamplingParams` per
request, and each `RequestOutput.outputs[0].token_ids` is cut and decoded here as the transformers
backend's are (`GenerationBackend.finish`). The engine runs without its tokenizer: prompts come
encoded and responses are decoded by alignlab's, so a snapshot saved without tokenizer files loads
too.

For GRPO the engine follows the policy (`follow`), as TRL's GRPO trainer does in its colocate mode:
the engine runs in this process (vLLM's `external_launcher` executor) and the policy's weights are
loaded into its model under their checkpoint names, a LoRA adapter merged in first, then the prefix
cache is reset (it holds keys computed with the old weights).
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager

from alignlab.errors import AlignlabError
from alignlab.models.generate import Generation, GenerationBackend, GenerationConfig
from alignlab.models.gguf import local_model_dir

# vLLM shares the GPU with the transformers models (the policy being trained, KL's forward passes),
# so it takes the share TRL's colocate mode gives it by default, not its own default of 0.9.
GPU_MEMORY_SHARE = 0.3


def import_vllm():
    """The vllm package, or an error saying how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise AlignlabError(f"generation_backend 'vllm' needs the vllm package, which cannot be imported ({err}); "
                            "install it with pip install 'alignlab[vllm]' (Linux with a CUDA GPU), or use "
                            "generation_backend hf") from None
    return vllm


def request_seed(seed: int, index: int) -> int:
    """Request `index`'s sampling seed: each request its own stream, so repeated prompts (GRPO's
    group) differ and a run is reproducible however vLLM batches its requests."""
    return (seed * 1_000_003 + index) % (1 << 63)


@contextmanager
def checkpoint_weights(model):
    """The model's weights as (checkpoint name, tensor) pairs, what vLLM's `load_weights` takes.

    A PEFT model's adapter is merged into its base weights while the context is open, and the names
    lose PEFT's wrapping (`base_model.model.`, `.base_layer`, `modules_to_save.default.`); the adapter's
    own tensors and the originals that `modules_to_save` shadows are left out."""
    adapter = hasattr(model, "merge_adapter")
    if adapter:
        model.merge_adapter()
    try:
        weights = []
        for name, parameter in model.named_parameters():
            if adapter and (model.prefix in name or "original_module" in name):
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            weights.append((name.replace("modules_to_save.default.", ""), parameter.data))
        yield weights
    finally:
        if adapter:
            model.unmerge_adapter()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


class VLLMBackend(GenerationBackend):
    """A vLLM engine on the checkpoint at `model_path`, stopping at `stop_ids`."""

    def __init__(self, model_path: str, tokenizer, stop_ids: list[int], *, revision: str | None = None,
                 trust_remote_code: bool = False, max_model_len: int | None = None, in_process: bool = False,
                 progress: bool = True):
        super().__init__(tokenizer, stop_ids)
        vllm = import_vllm()
        options = {}
        if in_process:
            # The external launcher runs the engine in this process as one rank of a torch.distributed
            # job; a single process (not started by accelerate launch) is rank 0 of 1.
            for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "localhost")):
                os.environ.setdefault(name, value)
            os.environ.setdefault("MASTER_PORT", str(free_port()))
            options["distributed_executor_backend"] = "external_launcher"
        # dtype stays vLLM's `auto`, as in TRL: its fast attention kernels need half precision, and a
        # float32 policy's weights are cast as they are loaded.
        # A .gguf file is read from the de-quantised copy training and evaluation use, not by vLLM's own
        # GGUF reader; a hub model at the revision the run names.
        self.llm = vllm.LLM(model=local_model_dir(model_path), revision=revision,
                            trust_remote_code=trust_remote_code, skip_tokenizer_init=True,
                            gpu_memory_utilization=GPU_MEMORY_SHARE, max_model_len=max_model_len, **options)
        self.progress = progress

    def follow(self, model) -> None:
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with checkpoint_weights(model) as weights:
            engine_model.load_weights(weights)
        self.llm.reset_prefix_cache()

    def sampling_params(self, config: GenerationConfig, index: int):
        from vllm import SamplingParams

        if config.greedy:
            sampling = {"temperature": 0.0}  # vLLM's greedy decoding
        else:
            sampling = {"temperature": config.temperature, "top_p": config.top_p,
                        "seed": request_seed(config.seed, index)}
        return SamplingParams(n=1, max_tokens=config.max_new_tokens, stop_token_ids=list(self.stop_ids),
                              detokenize=False, **sampling)

    def generate(self, encoded: list[list[int]], config: GenerationConfig) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in encoded],
                                    [self.sampling_params(config, i) for i in range(len(encoded))],
                                    use_tqdm=self.progress)
        return [self.finish(list(output.outputs[0].token_ids)) for output in outputs]
