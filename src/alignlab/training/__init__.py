"""Training: `train` runs one method (dispatch), online GRPO (`grpo`) or an offline objective
(`offline`: SFT, DPO, LN-DPO, SimPO, VAR, with the pairs' per-batch `inputs`), all through one
loop (`loop`); Bradley-Terry reward models (`reward_model`), and pickle-free resumable
checkpoints (`checkpoint`)."""

from alignlab.training.dispatch import train
from alignlab.training.loop import TrainResult
from alignlab.training.reward_model import RewardModelResult, train_reward_model

__all__ = ["TrainResult", "train", "RewardModelResult", "train_reward_model"]
