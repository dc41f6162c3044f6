"""bf16 on CPUs: the matmul and attention helpers model plugins use.

On CPUs that only emulate bf16 (no AVX512-BF16/AMX, e.g. AVX2), bf16 GEMMs, attention and convolutions
are ~6-7x slower than fp32 ones (measured, see docs/performance.md). Under bf16 autocast the helpers below
compute the same product -- operands rounded to bf16 as autocast would, fp32 accumulation, a bf16
result -- with the fp32 kernels instead. On CPUs with native bf16, attention in bf16 runs as explicit
matmuls (``explicit_attention``), 1.3-5x faster than the fused CPU kernel at the model's sequence lengths.
Everything else (fp32, GPUs) is the plain functional op.
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


def native_bf16_cpu(x: torch.Tensor) -> bool:
    """Whether ``x``'s attention would run in bf16 on a CPU that computes bf16 natively: ``x`` is bf16,
    or bf16 autocast is on."""
    return (
        not EMULATED_BF16
        and x.device.type == "cpu"
        and (
            x.dtype == torch.bfloat16
            or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        )
    )


# Above this many scores per head (L x S) attention keeps the fused kernel: the explicit path keeps the
# probabilities for backward (6 bytes per score) and was measured faster only up to 196 x 196 (base).
EXPLICIT_MAX_SCORES = 256 * 256


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` as matmuls and an fp32 softmax: the reference implementation
    that ``F.scaled_dot_product_attention`` documents, with its arguments and conventions (a bool
    ``attn_mask`` is True where a query may attend; the causal mask is aligned top-left; a query that may
    attend to no key gets zeros, as SDPA gives), q (..., L, E), k (..., S, E), v (..., S, Ev) -> (..., L, Ev).

    Used for bf16 on CPUs with native bf16, where the fused CPU kernel is 1.3-5x slower than this at the
    model's sequence lengths (forward + backward, docs/performance.md). The probabilities are computed in
    fp32 and rounded to ``v``'s dtype for the product; both are kept for backward (6 bytes per score,
    B x heads x L x S per layer).

    Raises:
        ValueError: for ``is_causal`` together with ``attn_mask`` (as SDPA).
    """
    if is_causal and attn_mask is not None:
        raise ValueError("explicit_attention: is_causal and attn_mask are exclusive (as in SDPA)")
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q * scale, k.transpose(-2, -1))
    if is_causal:
        L, S = q.shape[-2], k.shape[-2]
        s = s.masked_fill(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if attn_mask is None:
        p = torch.softmax(s, -1, dtype=torch.float32)
    else:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
        # rows with no key: zeros, not NaN; filled before the softmax so that their gradient is 0 too
        empty = torch.isneginf(s).all(-1, keepdim=True)
        p = torch.softmax(s.masked_fill(empty, 0.0), -1, dtype=torch.float32).masked_fill(empty, 0.0)
    p = p.to(v.dtype)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``F.scaled_dot_product_attention``; bf16 on a CPU: with the emulated-bf16 treatment above, or
    ``explicit_attention`` where bf16 is native (up to ``EXPLICIT_MAX_SCORES`` scores per head)."""
    if native_bf16_cpu(q) and q.shape[-2] * k.shape[-2] <= EXPLICIT_MAX_SCORES:
        return explicit_attention(q, k, v, **kwargs)
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
