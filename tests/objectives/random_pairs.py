"""Random per-sequence log-probs for the loss tests (a helper module, not a test file)."""

import torch


def random_pairs(n: int, seed: int, dtype=torch.float64):
    """Summed log-probs of n pairs (chosen w, rejected l), their reference values (rw, rl) and
    lengths (1–19 tokens): each response's mean token log-prob lies in [-2.1, -0.1]."""
    g = torch.Generator().manual_seed(seed)
    lw = torch.randint(1, 20, (n,), generator=g)
    ll = torch.randint(1, 20, (n,), generator=g)
    w = -(torch.rand(n, generator=g, dtype=dtype) * 2 + 0.1) * lw
    l = -(torch.rand(n, generator=g, dtype=dtype) * 2 + 0.1) * ll
    rw = w + torch.randn(n, generator=g, dtype=dtype) * 3
    rl = l + torch.randn(n, generator=g, dtype=dtype) * 3
    return w, l, rw, rl, lw, ll
