"""Models: loading weights safely and per-sequence log-probs (`loading`), per-token log-probs from the
final hidden states without the full logits (`logps`), sampling responses
(`generate`; the backend chosen by name in `backends`, vLLM's in `vllm_generate`), reward-model
scores (`score`), and the tiny models tests and benches build (`tiny`)."""

from alignlab.models.backends import make_backend
from alignlab.models.generate import (Generation, GenerationBackend, GenerationConfig, HFBackend, generate_responses,
                                      stop_token_ids)
from alignlab.models.loading import (batch_logps, load_causal_lm, load_sequence_classifier, load_tokenizer,
                                     sequence_logps, gathered_logps)
from alignlab.models.logps import final_states, linear_token_logps, token_logps
from alignlab.models.score import RewardScorer

__all__ = ["Generation", "GenerationBackend", "GenerationConfig", "HFBackend", "generate_responses", "make_backend",
           "stop_token_ids", "batch_logps", "load_causal_lm", "load_sequence_classifier", "load_tokenizer",
           "sequence_logps", "gathered_logps", "token_logps", "final_states", "linear_token_logps", "RewardScorer"]
