"""The objectives: pure functions of per-sequence log-probs, lengths and rewards (`losses`), and
the registry of methods with their hyper-parameters (`registry`)."""

from alignlab.objectives.losses import (dpo_loss, grpo_advantages, grpo_clipped_surrogate, grpo_loss, k3_kl,
                                        ln_dpo_loss, sampled_log_z, sft_loss, simpo_loss, var_loss, var_weights)
from alignlab.objectives.registry import METHODS, GroupBatch, HyperParameter, Method, PairBatch, get_method

__all__ = ["METHODS", "GroupBatch", "HyperParameter", "Method", "PairBatch", "dpo_loss", "get_method",
           "grpo_advantages", "grpo_clipped_surrogate", "grpo_loss", "k3_kl", "ln_dpo_loss", "sampled_log_z",
           "sft_loss", "simpo_loss", "var_loss", "var_weights"]
