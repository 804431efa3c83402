"""Training a proxy reward model: a sequence classifier with the Bradley–Terry loss (SPEC §4).

    loss = −log σ(r(x, y_w) − r(x, y_l))

where r is the classifier's single output. Works on any preference data and any
`AutoModelForSequenceClassification`-capable checkpoint (a causal LM checkpoint gets a fresh
one-output score head). Reports pairwise accuracy — the fraction of held-out pairs with
r(x, y_w) > r(x, y_l), ties counted half — on `eval_data` or a seeded `eval_fraction` of the data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from alignlab.config import RewardModelConfig
from alignlab.data.tokenise import collate_pairs, length_settings, tokenize_pairs
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_sequence_classifier, load_tokenizer
from alignlab.training.inputs import check_pairs_differ
from alignlab.training.loop import (FitResult, check_enough_for_a_step, claim_run_dir, fit, load_training_pairs,
                                    make_accelerator)
from alignlab.training.outputs import run_directory, save_run
from alignlab.training.policy import prepare_policy

log = logging.getLogger(__name__)


@dataclass
class RewardModelResult(FitResult):
    out: Path
    heldout_accuracy: float
    heldout_pairs: int


def pair_rewards(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen rows and the rejected rows of a collated batch."""
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    n = len(batch["index"])
    return rewards[:n], rewards[n:]


@torch.inference_mode()
def pairwise_accuracy(model, examples, pad_id: int, batch_size: int, device) -> float:
    model.eval()
    wins = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
        batch["index"] = torch.arange(len(chunk))
        chosen, rejected = pair_rewards(model, batch)
        wins += (chosen > rejected).float().sum().item() + 0.5 * (chosen == rejected).float().sum().item()
    return wins / len(examples)


def split_heldout(config: RewardModelConfig, pairs):
    """(train, held-out): the held-out file when given, else a seeded fraction of the data."""
    if config.eval_data:
        return pairs, load_training_pairs(config, config.eval_data).pairs
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_heldout = max(1, round(config.eval_fraction * len(pairs)))
    heldout = set(order[:n_heldout])
    return ([p for i, p in enumerate(pairs) if i not in heldout],
            [p for i, p in enumerate(pairs) if i in heldout])


def train_reward_model(config: RewardModelConfig) -> RewardModelResult:
    config.validate()
    if config.use_peft:
        raise AlignlabError("train-rm: use_peft is not supported for reward models (their new score head must "
                            "train whole); train the reward model without use_peft")
    with claim_run_dir(config):
        return _fit_reward_model(config)


def _fit_reward_model(config: RewardModelConfig) -> RewardModelResult:
    started = time.perf_counter()
    out = Path(config.out)
    loaded = load_training_pairs(config)
    train_pairs, heldout_pairs = split_heldout(config, loaded.pairs)
    accelerator = make_accelerator(config)
    check_enough_for_a_step(config, accelerator, len(train_pairs),
                            "pairs to train on (once the held-out pairs are set aside)")
    is_main = accelerator.is_main_process
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.revision)
    examples, truncation = tokenize_pairs(tokenizer, train_pairs, raw_prompts=config.raw_prompts,
                                          **length_settings(config))
    check_pairs_differ(config, examples)
    heldout, _ = tokenize_pairs(tokenizer, heldout_pairs, raw_prompts=config.raw_prompts, **length_settings(config))
    if is_main:
        log.info("%s; %d pairs train the reward model, %d are held out", loaded.summary(),
                 len(train_pairs), len(heldout_pairs))
    model = load_sequence_classifier(config.model, config.dtype, config.trust_remote_code, num_labels=1,
                                     revision=config.revision)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = prepare_policy(model, config)  # dropout and gradient checkpointing (use_peft is refused above)

    def collate(indices):
        batch = collate_pairs([examples[i] for i in indices], tokenizer.pad_token_id)
        batch["index"] = torch.tensor(indices)
        return batch

    def step_loss(model, batch):
        chosen, rejected = pair_rewards(model, batch)
        return -F.logsigmoid(chosen - rejected).mean(), (chosen - rejected).mean()

    with run_directory(out, accelerator, config) as run_dir:
        model, fitted = fit(config, accelerator, model, len(examples), collate, step_loss, run_dir, "reward model",
                            started=started)
        accuracy = pairwise_accuracy(accelerator.unwrap_model(model), heldout, tokenizer.pad_token_id,
                                     config.batch_size, accelerator.device)
        save_run(run_dir, accelerator, model, tokenizer, config, {
            **fitted.summary(accelerator, loaded, truncation), "heldout_accuracy": accuracy,
            "heldout_pairs": len(heldout)})
    accelerator.wait_for_everyone()
    return RewardModelResult(**vars(fitted), out=out, heldout_accuracy=accuracy, heldout_pairs=len(heldout))
