"""Single-token delta rule for decoding: one step of `delta_rule_naive`."""

from __future__ import annotations

import torch

from ._validate import check_mode, float32_state, check_step_inputs


def step_core(qk: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, S: torch.Tensor,
              mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The step without argument checks, in few tensor ops (the decode hot path).

    `qk [B, 2, H, r]` (q and k stacked), `v, beta [B, H, r]`, `S [B, H, r, r]`, all float32
    -> `(read [B, H r], new state [B, H, r, r])`.
    """
    B, _, H, r = qk.shape
    if H == 1:  # one head: the same products as 3-D bmm's, without the 4-D matmul's reshapes
        qk, v, beta, S1 = qk.view(B, 2, r), v.view(B, 1, r), beta.view(B, r, 1), S.view(B, r, r)
        qkS = torch.bmm(qk, S1.transpose(1, 2))  # [B, 2, r]: S q and S k
        delta = (v - qkS[:, 1:]).transpose(1, 2) * qk[:, 1:]  # [B, r, r]: (v - S k) k^T
        S_new = torch.lerp(S1, delta, beta) if mode == "standard" else torch.addcmul(S1, beta, delta)
        return qkS[:, 0], S_new.view(B, 1, r, r)
    qkS = qk.transpose(1, 2) @ S.transpose(-1, -2)  # [B, H, 2, r]: S q (the read, before the write) and S k
    delta = (v - qkS[:, :, 1]).unsqueeze(-1) * qk[:, 1].unsqueeze(-2)  # (v - S k) k^T
    b = beta.unsqueeze(-1)  # [B, H, r, 1]: one gate per row
    # standard: (1 - b) S + b (v - S k) k^T = lerp(S, (v - S k) k^T, b); no_decay: S + b (v - S k) k^T
    S_new = torch.lerp(S, delta, b) if mode == "standard" else torch.addcmul(S, b, delta)
    return qkS[:, :, 0].reshape(B, H * r), S_new


@float32_state
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
    B, H, r = check_step_inputs(q, k, v, beta, state)
    qk = torch.stack([q.float(), k.float()], dim=1)  # [B, 2, H, r]
    read, new_state = step_core(qk, v.float(), beta.float(), state.float(), mode)
    return read.view(B, H, r).to(q.dtype), new_state
