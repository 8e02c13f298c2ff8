"""The δ-mem memory op: a read-then-write gated delta rule over `[B, T, H, r]` inputs.

Three implementations share one contract (see `deltamem/ops/README.md`):
`delta_rule_naive` (sequential ground truth), `delta_rule_chunked` (parallel,
for training and prefill) and `delta_rule_step` (one token, for decoding).
"""

from __future__ import annotations

import torch

from .chunked import DEFAULT_CHUNK_SIZE, delta_rule_chunked
from .naive import delta_rule_naive
from .step import delta_rule_step

IMPLS = ("auto", "naive", "chunked")
NAIVE_MAX_T = 8  # below this many tokens the loop is cheaper than building chunks


def choose_impl(impl: str, T: int) -> tuple[str, str]:
    """Resolve `impl` for a sequence of `T` tokens; return `(name, reason)`."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl, "requested"
    if T <= NAIVE_MAX_T:
        return "naive", f"T={T} <= {NAIVE_MAX_T}: a short loop beats chunk set-up"
    return "chunked", f"T={T} > {NAIVE_MAX_T}: chunked parallel form"


def delta_rule(
    q, k, v, beta, initial_state=None, mask=None, mode="standard", impl="auto", chunk_size=DEFAULT_CHUNK_SIZE, write_mask=None
):
    """Dispatch to the implementation chosen by `impl` ("auto" | "naive" | "chunked")."""
    name, _ = choose_impl(impl, q.shape[1] if isinstance(q, torch.Tensor) and q.dim() == 4 else 0)
    kw = dict(initial_state=initial_state, mask=mask, mode=mode, write_mask=write_mask)
    if name == "naive":
        return delta_rule_naive(q, k, v, beta, **kw)
    return delta_rule_chunked(q, k, v, beta, chunk_size=chunk_size, **kw)


__all__ = ["delta_rule", "delta_rule_naive", "delta_rule_chunked", "delta_rule_step", "choose_impl", "IMPLS"]
