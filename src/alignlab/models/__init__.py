"""Models: loading weights safely and per-sequence log-probs (`loading`), sampling responses
(`generate`), reward-model scores (`score`), and the tiny models tests and benches build (`tiny`)."""

from alignlab.models.generate import Generation, GenerationConfig, generate_from_ids, generate_responses
from alignlab.models.loading import (batch_logps, load_causal_lm, load_sequence_classifier, load_tokenizer,
                                     sequence_logps, shared_prompt_logps, token_logps)
from alignlab.models.score import RewardScorer

__all__ = ["Generation", "GenerationConfig", "generate_from_ids", "generate_responses", "batch_logps",
           "load_causal_lm", "load_sequence_classifier", "load_tokenizer", "sequence_logps", "shared_prompt_logps",
           "token_logps", "RewardScorer"]
