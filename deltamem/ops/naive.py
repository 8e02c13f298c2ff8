"""Reference delta rule with reads: the readable, sequential ground truth.

δ-mem (arXiv 2605.12357) keeps, per attention layer and state head, an `r x r`
state `S` (rows = value dimension, columns = key dimension). Every valid token
first reads `S @ q_t`, then writes with a gated delta rule whose gate is one
scalar per state row. Everything here runs in float32.
"""

from __future__ import annotations

import torch

from ._validate import check_mode, float32_state, check_sequence_inputs, check_write_mask, combine_masks


@float32_state
def delta_rule_naive(
    q: torch.Tensor,  # [B, T, H, r], L2-normalised
    k: torch.Tensor,  # [B, T, H, r], L2-normalised
    v: torch.Tensor,  # [B, T, H, r]
    beta: torch.Tensor,  # [B, T, H, r], in (0, 1): one gate per state row
    initial_state: torch.Tensor | None = None,  # [B, H, r, r]
    mask: torch.Tensor | None = None,  # [B, T] bool, True = valid
    mode: str = "standard",
    write_mask: torch.Tensor | None = None,  # [B, T] bool, False = valid but read-only
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the recurrence token by token. Returns `(reads [B, T, H, r], final_state [B, H, r, r])`.

    For each valid token t (per batch row and head)::

        read_t = S @ q_t                                  # the state BEFORE t's write
        S = (1 - b) * S - b * (S @ k) k^T + b * v k^T     # mode="standard"; b scales rows
        S =           S - b * (S @ k) k^T + b * v k^T     # mode="no_decay"

    A masked token reads 0 and leaves `S` unchanged. A valid token whose
    `write_mask` is False reads normally but does not write. The state is float32;
    reads come back in the dtype of `q`.
    """
    check_mode(mode)
    B, T, H, r = check_sequence_inputs(q, k, v, beta, initial_state, mask)
    check_write_mask(write_mask, B, T)
    writes = combine_masks(mask, write_mask)
    out_dtype = q.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    S = q.new_zeros(B, H, r, r) if initial_state is None else initial_state.float()
    reads = []
    for t in range(T):
        q_t, k_t, v_t, b_t = q[:, t], k[:, t], v[:, t], beta[:, t]  # [B, H, r]
        read = S @ q_t.unsqueeze(-1)  # [B, H, r, 1]: read before write
        Sk = S @ k_t.unsqueeze(-1)  # [B, H, r, 1]: what S currently recalls for k_t
        b = b_t.unsqueeze(-1)  # [B, H, r, 1]: gate of each row
        kT = k_t.unsqueeze(-2)  # [B, H, 1, r]
        keep = (1 - b) * S if mode == "standard" else S  # decay coupled to the write
        S_new = keep - b * Sk * kT + b * v_t.unsqueeze(-1) * kT  # erase old association, write new one
        if mask is not None:
            read = read * mask[:, t].view(B, 1, 1, 1)  # an invalid token reads 0
        if writes is not None:
            S_new = torch.where(writes[:, t].view(B, 1, 1, 1), S_new, S)  # a non-writing token leaves S unchanged
        reads.append(read.squeeze(-1))
        S = S_new
    out = torch.stack(reads, dim=1) if T else q.new_zeros(B, 0, H, r)  # [B, T, H, r]
    return out.to(out_dtype), S
