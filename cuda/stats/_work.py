"""Per-call work buffers of the statistics paths that never fragment the heap.

glibc serves an allocation from its heap when it is below the mmap threshold, a threshold that
rises to the size of each mmapped chunk freed, up to 32 MiB on 64-bit Linux. A buffer
allocated and freed once per attention call (per layer), with the call's small outputs
allocated in between, then leaves holes the next layer's buffer does not fit, and the heap
(peak RSS) grows layer after layer. A buffer of more than 32 MiB is always mmapped and returned
to the system when freed; its pages cost RSS only once written, so asking for more than a
small call needs costs nothing.
"""
from __future__ import annotations

import torch

MMAP_BYTES = (32 << 20) + (1 << 20)      # above glibc's largest mmap threshold (64-bit)


def work_buffer(numel: int, device) -> torch.Tensor:
    """float32 [numel] (uninitialised), allocated apart from the heap on the CPU (see above)."""
    size = max(numel, MMAP_BYTES // 4) if torch.device(device).type == "cpu" else numel
    return torch.empty(size, dtype=torch.float32, device=device)[:numel]
