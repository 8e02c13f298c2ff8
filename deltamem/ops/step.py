"""Single-token delta rule for decoding: one step of `delta_rule_naive`."""

from __future__ import annotations

import torch

from ._validate import check_mode, check_step_inputs


def delta_rule_step(
    q: torch.Tensor,  # [B, H, r]
    k: torch.Tensor,  # [B, H, r]
    v: torch.Tensor,  # [B, H, r]
    beta: torch.Tensor,  # [B, H, r]
    state: torch.Tensor,  # [B, H, r, r]
    mode: str = "standard",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read `state @ q`, then write one token. Returns `(read [B, H, r], new_state [B, H, r, r])`.

    Identical to one step of `delta_rule_naive`; the input state is not modified.
    """
    check_mode(mode)
    check_step_inputs(q, k, v, beta, state)
    out_dtype = q.dtype
    q, k, v, b = q.float(), k.float(), v.float(), beta.float().unsqueeze(-1)  # b: [B, H, r, 1]
    S = state.float()
    read = (S @ q.unsqueeze(-1)).squeeze(-1)  # [B, H, r]
    kT = k.unsqueeze(-2)  # [B, H, 1, r]
    Sk = S @ k.unsqueeze(-1)  # [B, H, r, 1]
    keep = (1 - b) * S if mode == "standard" else S
    new_state = keep + b * (v.unsqueeze(-1) - Sk) * kT
    return read.to(out_dtype), new_state
