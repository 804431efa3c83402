"""Training: one loop for every objective (`offline`: SFT, DPO, LN-DPO, SimPO, VAR), the online
GRPO baseline (`grpo`), Bradley-Terry reward models (`reward_model`), and pickle-free resumable
checkpoints (`checkpoint`)."""

from alignlab.training.offline import TrainResult, train
from alignlab.training.reward_model import RewardModelResult, train_reward_model

__all__ = ["TrainResult", "train", "RewardModelResult", "train_reward_model"]
