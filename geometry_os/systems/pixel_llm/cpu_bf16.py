"""bf16 autocast on CPUs that only emulate bf16 (no AVX512-BF16/AMX, e.g. AVX2).

There, bf16 GEMMs, attention and convolutions are ~6-7x slower than fp32 ones (measured, see
docs/performance.md). Under bf16 autocast the helpers below compute the same product -- operands rounded
to bf16 as autocast would, fp32 accumulation, a bf16 result -- with the fp32 kernels instead. On GPUs
and CPUs with native bf16 they are the plain functional ops. Model plugins use them for their matmuls.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware: AVX512-BF16 or AMX-BF16 on x86 (``torch.cpu``'s cpuinfo
    flags; oneDNN's own check also says yes for AVX-512 without BF16, where it converts to fp32), oneDNN's
    check elsewhere (e.g. Arm with BF16)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps.get("architecture") in ("x86_64", "x86"):
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


EMULATED_BF16 = not native_bf16()


def upcast_bf16(x: torch.Tensor) -> bool:
    """Whether autocast asks for bf16 on a CPU that only emulates it."""
    return (
        EMULATED_BF16
        and x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def bf16(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to bf16 (as autocast would), in fp32 storage for the fp32 kernels; same shape."""
    return t.to(torch.bfloat16).float()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, with the emulated-bf16 treatment above."""
    if not upcast_bf16(x):
        return F.linear(x, weight, bias)
    with torch.autocast("cpu", enabled=False):
        x, weight = bf16(x), bf16(weight)
        return F.linear(x, weight, None if bias is None else bf16(bias)).to(torch.bfloat16)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, with the emulated-bf16 treatment above."""
    if not upcast_bf16(q):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(bf16(q), bf16(k), bf16(v), **kwargs).to(torch.bfloat16)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype to caption in on ``device`` for ``name``: ``float32``, ``bfloat16`` or ``float16`` as
    named; ``auto`` picks bfloat16 where the hardware computes it natively (a CUDA GPU that supports it,
    a CPU with AVX512-BF16 or AMX-BF16, see ``native_bf16``) and float32 elsewhere (emulated bf16 is several
    times slower than fp32, see docs/performance.md).

    Raises:
        ValueError: for another name.
    """
    if name in DTYPES:
        return DTYPES[name]
    if name != "auto":
        raise ValueError(f"dtype {name!r}: expected auto, {', '.join(DTYPES)}")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.float32 if EMULATED_BF16 else torch.bfloat16
    return torch.float32
