"""Chunked (WY-form) delta rule with reads, for training and long writes.

Each of the `H * r` state rows is an independent linear recurrence of an
`r`-vector that shares its head's keys. Inside a chunk the recurrence is
solved with one unit-lower-triangular system per row; across chunks it is an
affine map `s -> s M + c` applied sequentially (`T / chunk_size` tiny steps).
See `deltamem/ops/README.md` for the derivation. Differentiable by autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import check_mode, float32_state, check_sequence_inputs, check_write_mask, combine_masks

DEFAULT_CHUNK_SIZE = 16


@float32_state
def delta_rule_chunked(
    q: torch.Tensor,  # [B, T, H, r], L2-normalised
    k: torch.Tensor,  # [B, T, H, r], L2-normalised
    v: torch.Tensor,  # [B, T, H, r]
    beta: torch.Tensor,  # [B, T, H, r], in (0, 1)
    initial_state: torch.Tensor | None = None,  # [B, H, r, r]
    mask: torch.Tensor | None = None,  # [B, T] bool, True = valid
    mode: str = "standard",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    write_mask: torch.Tensor | None = None,  # [B, T] bool, False = valid but read-only
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `delta_rule_naive`, computed chunk by chunk in parallel.

    Returns `(reads [B, T, H, r], final_state [B, H, r, r])`; the state is
    float32 and reads come back in the dtype of `q`. Any `T` works: the tail is
    padded with masked tokens.
    """
    check_mode(mode)
    B, T, H, r = check_sequence_inputs(q, k, v, beta, initial_state, mask)
    check_write_mask(write_mask, B, T)
    writes = combine_masks(mask, write_mask)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    out_dtype = q.dtype
    S0 = q.new_zeros(B, H, r, r, dtype=torch.float32) if initial_state is None else initial_state.float()
    if T == 0:
        return q.new_zeros(B, 0, H, r), S0.clone()

    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    b = beta.float()
    if writes is not None:
        b = torch.where(writes[:, :, None, None], b, torch.zeros((), device=b.device))  # b = 0: no write

    def chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, r] -> [B, H, N, C, r]
        return F.pad(x.float(), (0, 0, 0, 0, 0, pad)).view(B, N, C, H, r).permute(0, 3, 1, 2, 4)

    def row_chunks(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, r] -> [B, H, r_row, N, C]
        return chunks(x).permute(0, 1, 4, 2, 3)

    qc, kc = chunks(q), chunks(k)  # [B, H, N, C, r]
    bc, vc = row_chunks(b), row_chunks(v)  # [B, H, R, N, C] (R = r rows)
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)  # j < t

    if mode == "standard":
        log_a = torch.log1p(-bc)  # per-row decay 1 - b, in log space
        cum = log_a.cumsum(-1)  # log prod_{j<=t} a_j inside the chunk
        cum_prev = cum - log_a  # log prod_{j<t} a_j
        gap = cum_prev.unsqueeze(-1) - cum.unsqueeze(-2)  # [B, H, R, N, C, C]: log prod_{j<i<t} a_i
        D = torch.where(strict, gap, torch.full((), float("-inf"), device=q.device)).exp()
        g_prev = cum_prev.exp()  # [B, H, R, N, C]
        g_end = cum[..., -1:]  # [B, H, R, N, 1]
        E = (g_end - cum).exp()  # decay from j to the chunk end
        g_end = g_end.exp()
    else:
        D = strict.float()
        g_prev = E = g_end = None

    KK = (kc @ kc.transpose(-1, -2)).unsqueeze(2)  # [B, H, 1, N, C, C], shared by the rows of a head
    QK = (qc @ kc.transpose(-1, -2)).unsqueeze(2)
    kr = kc.unsqueeze(2)  # [B, H, 1, N, C, r]

    # u_t = b_t (v_t - s_{t-1}.k_t) solves (I + L) u = b v - (b g_prev k) s0^T, L_tj = b_t D_tj (k_j.k_t)
    L = bc.unsqueeze(-1) * (D * KK)  # [B, H, R, N, C, C], strictly lower
    bk = bc.unsqueeze(-1) * kr if g_prev is None else (bc * g_prev).unsqueeze(-1) * kr
    rhs = torch.cat([(bc * vc).unsqueeze(-1), bk.expand(B, H, r, N, C, r)], dim=-1)  # [B, H, R, N, C, 1 + r]
    X = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True)
    u_v, W = X[..., 0], X[..., 1:]  # u = u_v - W s0^T

    # reads: m_t = g_prev_t s0.q_t + sum_{j<t} D_tj (q_t.k_j) u_j
    Y = (D * QK) @ X  # [B, H, R, N, C, 1 + r]
    q_eff = qc.unsqueeze(2) if g_prev is None else g_prev.unsqueeze(-1) * qc.unsqueeze(2)
    q_eff = q_eff - Y[..., 1:]  # [B, H, R, N, C, r]: what s0 contributes to each read

    # chunk map: s_end = s0 M + c, M = g_end I - W^T diag(E) K, c = (E u_v) K
    Ek = kr if E is None else E.unsqueeze(-1) * kr  # [B, H, R, N, C, r]
    eye = torch.eye(r, device=q.device)
    M = (eye if g_end is None else g_end.unsqueeze(-1) * eye) - W.transpose(-1, -2) @ Ek  # [B, H, R, N, r, r]
    c = (u_v.unsqueeze(-2) @ Ek).squeeze(-2)  # [B, H, R, N, r]

    s = S0.reshape(B * H * r, 1, r)  # one row of S per recurrence
    Ms = M.reshape(B * H * r, N, r, r).unbind(1)
    cs = c.reshape(B * H * r, N, 1, r).unbind(1)
    starts = []
    for n in range(N):
        starts.append(s)
        s = torch.baddbmm(cs[n], s, Ms[n])
    s_start = torch.cat(starts, dim=1).view(B, H, r, N, 1, r)  # state row at each chunk start

    reads = (q_eff * s_start).sum(-1) + Y[..., 0]  # [B, H, R, N, C]
    reads = reads.reshape(B, H, r, N * C)[..., :T].permute(0, 3, 1, 2)  # [B, T, H, r]
    if mask is not None:
        reads = reads * mask[:, :, None, None]
    return reads.to(out_dtype), s.view(B, H, r, r)
