"""Reference log-probs: the summed response log-probs of tokenised examples under the reference
model, one no-gradient pass (training caches them with `alignlab.cache`).
"""

from __future__ import annotations

import torch


def reference_and_revision(config) -> tuple[str, str | None]:
    """The reference model of a TrainConfig and its hub revision: `revision` is the policy's, so it
    applies when the reference is the policy's starting point (the default)."""
    reference = config.reference_model or config.model
    return reference, config.revision if reference == config.model else None


@torch.inference_mode()
def compute_sequence_logps(model, examples, pad_id: int, batch_size: int, device, shared_prompt: bool = False
                           ) -> dict[str, torch.Tensor]:
    """Summed response log-probs of every chosen and rejected response, in example order.

    Batches are formed from length-sorted examples so that little compute goes to padding; with
    no gradients to keep, they hold 4× the training batch. `shared_prompt` picks that batch layout
    (see tokenise.py) over the padded one.
    """
    from alignlab.models.loading import batch_logps
    from alignlab.data.tokenise import collate_pairs, collate_shared_prompt

    model.eval()
    chosen = torch.empty(len(examples), dtype=torch.float32)
    rejected = torch.empty(len(examples), dtype=torch.float32)
    def row_width(ex):
        responses = (len(ex.chosen_ids) + len(ex.rejected_ids) if shared_prompt
                     else max(len(ex.chosen_ids), len(ex.rejected_ids)))
        return len(ex.prompt_ids) + responses

    order = sorted(range(len(examples)), key=lambda i: row_width(examples[i]))
    pairs_per_batch = 4 * batch_size
    for start in range(0, len(order), pairs_per_batch):
        index = torch.tensor(order[start:start + pairs_per_batch])
        batch = (collate_shared_prompt if shared_prompt else collate_pairs)([examples[i] for i in index], pad_id)
        logps = batch_logps(model, {k: v.to(device) for k, v in batch.items()}).float().cpu()
        chosen[index] = logps[:len(index)]
        rejected[index] = logps[len(index):]
    return {"chosen": chosen, "rejected": rejected}
