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
def compute_sequence_logps(model, examples, pad_id: int, batch_size: int, device, layout=None
                           ) -> dict[str, torch.Tensor]:
    """Summed response log-probs of every chosen and rejected response, in example order.

    Batches are formed from examples sorted by the width they take in `layout` (default: padded;
    see alignlab.data.layouts), so that little compute goes to padding. They hold the training
    batch's pair count, as TRL's precompute does: larger ones bought no speed (512 HH-RLHF pairs on
    2 CPU cores, packed: 28.0 s in batches of 8 pairs, 42.6 s in batches of 32) and their longest
    batch set the run's peak memory (1.1 GB against 2.3 GB).
    """
    from alignlab.data.layouts import PairLayout
    from alignlab.models.loading import batch_logps

    layout = layout or PairLayout("padded")
    model.eval()
    chosen = torch.empty(len(examples), dtype=torch.float32)
    rejected = torch.empty(len(examples), dtype=torch.float32)
    order = sorted(range(len(examples)), key=lambda i: layout.row_width(examples[i]))
    for start in range(0, len(order), batch_size):
        index = torch.tensor(order[start:start + batch_size])
        batch = layout.collate([examples[i] for i in index], pad_id)
        logps = batch_logps(model, {k: v.to(device) for k, v in batch.items()}).float().cpu()
        chosen[index] = logps[:len(index)]
        rejected[index] = logps[len(index):]
    return {"chosen": chosen, "rejected": rejected}
