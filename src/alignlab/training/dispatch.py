"""`alignlab train`'s entry point: one method, online (GRPO) or offline (the rest)."""

from __future__ import annotations

from alignlab.config import TrainConfig
from alignlab.models.backends import require_backend
from alignlab.objectives.registry import get_method
from alignlab.training.grpo import train_grpo
from alignlab.training.loop import TrainResult, claim_run_dir
from alignlab.training.offline import train_offline


def train(config: TrainConfig) -> TrainResult:
    """Train `config.method` into the run directory `config.out`: GRPO online, the rest offline."""
    config.validate()
    online = get_method(config.method).online
    if online or config.params.get("z_estimator") == "sampled":  # runs that sample responses
        require_backend(config.generation_backend)  # e.g. vLLM not installed: before the run directory is claimed
    with claim_run_dir(config):
        if online:  # samples from the policy as it trains: its own step, the same `fit`
            return train_grpo(config)
        return train_offline(config)

