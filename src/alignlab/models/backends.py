"""Choosing the generation backend by name (`generation_backend`): "hf" (transformers, the default)
or "vllm" (`alignlab.models.vllm_generate`, imported only when chosen)."""

from __future__ import annotations

from alignlab.models.generate import GenerationBackend, HFBackend, stop_token_ids


def require_backend(name: str) -> None:
    """Fail before any work when the backend cannot run here (vLLM not installed)."""
    if name == "vllm":
        from alignlab.models.vllm_generate import import_vllm

        import_vllm()


def make_backend(name: str, model, tokenizer, model_path: str, *, revision: str | None = None, device="cpu",
                 trust_remote_code: bool = False, max_model_len: int | None = None, follows_training: bool = False,
                 progress: bool = True) -> GenerationBackend:
    """The backend `name` ("hf" | "vllm") for `model`, loaded from `model_path`. Both stop at
    `stop_token_ids` of the tokenizer and the model's generation config. vLLM loads the checkpoint
    at `model_path` (a hub model at `revision`) in its own dtype choice (`auto`: the checkpoint's,
    half precision for a float32 one), with room for `max_model_len` tokens (default: the model's);
    `follows_training` runs it in this process so `follow` can load a policy's weights."""
    if name == "hf":
        return HFBackend(model, tokenizer, device, progress)
    from alignlab.models.vllm_generate import VLLMBackend

    return VLLMBackend(model_path, tokenizer, stop_token_ids(tokenizer, getattr(model, "generation_config", None)),
                       revision=revision, trust_remote_code=trust_remote_code, max_model_len=max_model_len,
                       in_process=follows_training, progress=progress)
