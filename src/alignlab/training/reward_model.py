"""Training a proxy reward model: a sequence classifier with the Bradley–Terry loss (SPEC §4).

    loss = −log σ(r(x, y_w) − r(x, y_l))

where r is the classifier's single output. Works on any preference data and any
`AutoModelForSequenceClassification`-capable checkpoint (a causal LM checkpoint gets a fresh
one-output score head). Reports pairwise accuracy — the fraction of held-out pairs with
r(x, y_w) > r(x, y_l), ties counted half — on `eval_data` or a seeded `eval_fraction` of the data.

Training batches are laid out as DPO's are (`packing`, alignlab.data.layouts): a pair's prompt is
forwarded once with both responses, several pairs to a row, and r is the score head at the position
transformers' classifiers read — each sequence's rightmost token that is not the pad token. The layout
is checked against the padded one on a few pairs first, as DPO's is (a model without a linear `score`
head, or whose attention takes no custom mask, trains on padded batches).
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
from alignlab.data.layouts import PairLayout
from alignlab.training.inputs import (LAYOUT_HALF_TOLERANCE, LAYOUT_TOLERANCE, candidate_layout,
                                      check_pairs_differ)
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
    """Rewards of the chosen and the rejected responses of a collated batch, in any layout."""
    rewards = (gathered_rewards(model, batch) if "score_positions" in batch else
               model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0])
    n = len(batch["index"])
    return rewards[:n], rewards[n:]


def gathered_rewards(model, batch: dict) -> torch.Tensor:
    """The score head on the backbone's hidden states at [response_rows, score_positions] of a
    shared-prompt (packed) batch; its boolean mask goes in as transformers' own masks do (additive in
    the model's dtype for attention other than sdpa)."""
    core = getattr(model, "module", model)  # under DDP, the wrapped model holds the config
    mask = batch["attention_mask"]
    if core.config._attn_implementation != "sdpa":
        mask = torch.zeros(mask.shape, dtype=core.dtype, device=mask.device).masked_fill_(~mask,
                                                                                        torch.finfo(core.dtype).min)
    backbone = getattr(core, core.base_model_prefix)
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                      use_cache=False).last_hidden_state
    return core.score(hidden[batch["response_rows"], batch["score_positions"]])[:, 0]


def score_positions(examples, sequence_ends: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Where each sequence's score is read in a shared-prompt batch: transformers' classifiers read the
    rightmost token of prompt + response that is not the pad token (the first token if all are), so
    a sequence ending in pad tokens is read before them. Chosen 1..B, then rejected 1..B; a rejected
    response's prompt lies before its pair's chosen tokens."""
    positions = []
    for j, (example, response, skipped) in enumerate(
            [(e, e.chosen_ids, 0) for e in examples] + [(e, e.rejected_ids, len(e.chosen_ids)) for e in examples]):
        tokens = example.prompt_ids + response
        read = max((k for k, token in enumerate(tokens) if token != pad_id), default=0)
        in_prompt = read < len(example.prompt_ids)
        positions.append(int(sequence_ends[j]) - (len(tokens) - 1 - read) - (skipped if response and in_prompt else 0))
    return torch.tensor(positions, dtype=torch.long)


def collate_rewards(layout: PairLayout, examples, pad_id: int) -> dict:
    """A training batch of `examples` in `layout`, with score_positions when it is a shared-prompt one."""
    batch = layout.collate(examples, pad_id)
    if layout.name != "padded":
        batch["score_positions"] = score_positions(examples, batch["sequence_ends"], pad_id)
    return batch


def reward_layout(model, examples, pad_id: int, device, packing: bool, max_length: int) -> PairLayout:
    """DPO's layout for this attention (training.inputs.candidate_layout) when the model's rewards in
    it match the padded layout's on a few pairs; the padded layout otherwise, with a warning."""
    candidate = candidate_layout(getattr(model.config, "_attn_implementation", None), packing, max_length)
    head = getattr(model, "score", None)
    if candidate.name not in ("packed", "shared-prompt") or not isinstance(head, torch.nn.Linear):
        return PairLayout("padded")
    sample = examples[:4]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            index = {"index": torch.arange(len(sample))}
            padded, packed = (torch.cat(pair_rewards(model, {**{k: v.to(device) for k, v in
                                                               collate_rewards(layout, sample, pad_id).items()},
                                                            **index}))
                              for layout in (PairLayout("padded"), candidate))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:  # a backbone that rejects the 4-D mask
        log.warning("%s batches failed on this reward model (%s): padded pair batches", candidate.name, err)
        return PairLayout("padded")
    finally:
        model.train(was_training)
    tolerance = LAYOUT_TOLERANCE if model.dtype == torch.float32 else LAYOUT_HALF_TOLERANCE
    if (padded - packed).abs().max().item() > tolerance:
        log.warning("this reward model does not honour the %s layout's attention mask or position ids (rewards "
                    "differ by %.3g from the padded layout): padded pair batches", candidate.name,
                    (padded - packed).abs().max().item())
        return PairLayout("padded")
    return candidate


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

    layout = reward_layout(model.to(accelerator.device), examples, tokenizer.pad_token_id, accelerator.device,
                           config.packing, config.max_length)

    def collate(indices):
        batch = collate_rewards(layout, [examples[i] for i in indices], tokenizer.pad_token_id)
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
