"""What this machine's matrix units do fast: where bf16 pays (measured in bench/, not assumed).

On a CPU with AMX (``amx_bf16``: Intel Sapphire Rapids and later) a bf16 GEMM runs several times
faster than fp32 (bench/probe_sweep.py, bench/train_step.py); on CPUs without it, bf16 is emulated
and slower, so the fp32 path stays the default there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """True where bf16 matrix products are faster than fp32 ones: a CUDA device with bf16 support,
    or a CPU with AMX bf16 tiles."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and "amx_bf16" in cpu_flags()
