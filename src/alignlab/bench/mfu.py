"""Model FLOPs utilisation (MFU): useful training FLOPs per second ÷ the device's own dense matmul
throughput, measured in the same bench run.

Useful FLOPs count each token once, whatever a trainer forwards: 6 × N per token trained (forward and
backward) and 2 × N per token of the one reference pass (forward only), with N the parameters that
multiply — every parameter but the input embedding, which is a lookup. A preference pair's tokens are
its prompt once plus both responses; an SFT example's, its prompt plus the chosen response. A trainer
that forwards a prompt twice, or pads, spends FLOPs that do not count, and its MFU shows it.
"""

from __future__ import annotations

import statistics
import time

import torch

MATMUL_SIZE = 2048


def matmul_flops_per_second(device: str, dtype: torch.dtype = torch.float32, size: int = MATMUL_SIZE,
                            repeats: int = 5) -> float:
    """Median FLOP/s of `size`×`size` matrix products in `dtype` on `device` (2·size³ FLOPs each)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.matmul(a, b)  # warm-up: kernels chosen, memory touched
    seconds = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds)


def flop_parameters(model) -> int:
    """The parameters that multiply in a forward pass: all of them but the input embedding's, a
    lookup — unless the output layer shares that matrix (tied embeddings), which then multiplies."""
    embedding, output = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return model.num_parameters() - (0 if output is embedding else embedding.numel())


def training_flops(parameters: int, trained_tokens: int, reference_tokens: int = 0) -> float:
    """6·N per token trained plus 2·N per token of the reference pass."""
    return 6 * parameters * trained_tokens + 2 * parameters * reference_tokens


def utilisation(flops: float, seconds: float, peak_flops_per_second: float) -> float:
    """The share of the device's throughput that went into useful FLOPs."""
    return flops / seconds / peak_flops_per_second
