"""The precision of mixed-precision (``amp``) training and evaluation on each device."""

from __future__ import annotations

import torch


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """The autocast precision of a mixed-precision step: float16 on CUDA (with gradient scaling),
    bfloat16 on the CPU (float32's range, so no scaling; oneDNN's bfloat16 kernels where the CPU has
    AVX-512 BF16 or AMX)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def cpu_has_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (else bfloat16 is emulated, slower than float32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
