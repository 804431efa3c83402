"""Host memory of a training process: a freed tensor's pages go back to the operating system.

glibc's malloc serves a request of at least its mmap threshold with a mapping of its own, which
`free` unmaps at once; smaller requests come from its heaps, which keep freed memory for reuse. The
threshold starts at 128 KiB and, each time a mapped block is freed, rises to that block's size (up
to 32 MiB). After the first freed activation, then, a CPU training step's tensors (a few MB each)
come from the heaps, and the next step, whose tensors differ in shape, reuses what the last one
freed only in part: resident memory grows step after step beyond what is live. Measured on
SmolLM2-135M (full-parameter DPO, 6 HH pairs, batch 2, one process's peak RSS): 3,272 MB with the
rising threshold, the first step's activations (565 MB) still resident after its optimizer step.

`return_freed_memory` fixes the threshold at MMAP_THRESHOLD_BYTES (glibc then stops moving it), so
every tensor of that size or more is a mapping returned on free. The numbers trained are the same:
only where their bytes live changes. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
# Activations of a 135M model at batch 2 are 1-4 MB; the tiny study models' are under this, so
# their many small tensors keep coming from the heaps, without a system call each.
MMAP_THRESHOLD_BYTES = 256 * 1024


@functools.cache
def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process (see the module docstring); whether it was set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    return libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
