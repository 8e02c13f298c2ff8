"""How a layer reads and writes its state during one forward call.

Each strategy maps `(layer, h, S, valid, write_mask, span_ids)` to
`(reads m [B, T, H r], new state [B, H, r, r], (gates [B, N, H, r], written [B, N] or None))`,
the last pair being the gates of the N write steps and which of them wrote.
`read_only` never writes; `TokenWrite` writes every valid writable token (TSW,
MSW); `SpanWrite` writes once per span from the span's mean hidden state
(SSW), with span-level causality: tokens of span j read the state after
spans < j and before span j's own write.
"""

from __future__ import annotations

import torch

from ..ops import delta_rule, kernels
from ..ops.step import step_core
from .layer import DeltaMemLayer


def read_only(layer: DeltaMemLayer, h: torch.Tensor, S: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Every token reads the fixed state: `m_t = S q_t`, 0 on invalid tokens. Returns `[B, T, H r]`."""
    arrays = kernels.arrays(layer, h, S) if h.shape[1] == 1 else None
    if arrays is not None:  # a decode step on CPU inference: one compiled call
        m = kernels.read_step(h, S, arrays)
        return m if valid is None else m * valid[:, :, None]
    q = layer.project_q(h)  # [B, T, H, r]
    B, T, H, r = q.shape
    if H == 1:  # m_t = S q_t as one batched matmul: [B, T, r] @ [B, r, r]
        m = torch.bmm(q.view(B, T, r), S.reshape(B, r, r).transpose(1, 2))
    else:
        m = (q.transpose(1, 2) @ S.transpose(-1, -2)).transpose(1, 2).reshape(B, T, H * r)
    return m if valid is None else m * valid[:, :, None]


class TokenWrite:
    """One write per token (TSW; MSW when the config has several state heads)."""

    def __call__(self, layer, h, S, valid, write_mask, span_ids):
        mode = layer.config.update_mode
        B, T = h.shape[:2]
        if T == 1 and write_mask is None:  # decode: the single-step form
            qk, v, beta = layer.project_packed(h)  # [B, 1, 2, H, r], [B, 1, H, r] x 2
            m, S_new = step_core(qk[:, 0], v[:, 0], beta[:, 0], S, mode)
            m = m.unsqueeze(1)  # [B, 1, H r]
            if valid is not None:
                keep = valid[:, 0].view(B, 1, 1, 1)
                S_new = torch.where(keep, S_new, S)
                m = m * keep.view(B, 1, 1)
            return m, S_new, (beta, valid)
        q, k, v, beta = layer.project(h)  # [B, T, H, r] each
        m, S_new = delta_rule(q, k, v, beta, initial_state=S, mask=valid, write_mask=write_mask, mode=mode)
        written = valid if write_mask is None else (write_mask if valid is None else valid & write_mask)
        return m.flatten(2), S_new, (beta, written)


class SpanWrite:
    """One write per span (SSW) from the span's mean hidden state.

    `span_ids [B, T]` (long): tokens sharing an id in a contiguous run form a
    span; -1 marks tokens outside any span (they read but never write). The
    call is turned into one delta-rule sequence in which every token is a
    read-only step and each span adds one write step right after its last
    token, so span j's tokens read the state before span j's write.
    """

    def __call__(self, layer, h, S, valid, write_mask, span_ids):
        if span_ids is None:
            raise ValueError(
                f"write_granularity={layer.config.write_granularity!r} writes need span_ids [B, T] for this call "
                "(pass span_ids to use_memory, or use write=False)"
            )
        B, T = span_ids.shape
        member = span_ids >= 0
        if valid is not None:
            member = member & valid
        if write_mask is not None:
            member = member & write_mask
        nxt_same = torch.zeros_like(member)
        nxt_same[:, :-1] = member[:, :-1] & member[:, 1:] & (span_ids[:, 1:] == span_ids[:, :-1])
        prv_same = torch.zeros_like(member)
        prv_same[:, 1:] = nxt_same[:, :-1]
        is_end, is_start = member & ~nxt_same, member & ~prv_same
        J = int(is_start.sum(1).max()) if B else 0
        if J == 0:
            return read_only(layer, h, S, valid), S, (h.new_zeros(B, 0, 1, 1), None)

        # mean hidden state of every span: [B, J, d]
        sidx = (is_start.long().cumsum(1) - 1).clamp_min(0)  # span index of each token
        w = member.to(torch.float32).unsqueeze(-1)
        hf = h.float()
        sums = hf.new_zeros(B, J, h.shape[-1]).scatter_add(1, sidx.unsqueeze(-1).expand_as(hf), hf * w)
        counts = w.new_zeros(B, J, 1).scatter_add(1, sidx.unsqueeze(-1), w)
        h_span = sums / counts.clamp_min(1.0)

        q, _, _, _ = layer.project(h)
        _, k_s, v_s, b_s = layer.project(h_span)  # [B, J, H, r]
        Hh, r = q.shape[2:]

        # positions in the interleaved sequence of length T + J (+1 scratch slot)
        ends = is_end.long().cumsum(1)
        tok_pos = torch.arange(T, device=h.device) + ends - is_end.long()  # [B, T]
        dump = T + J
        ev_pos = torch.full((B, J + 1), dump, dtype=torch.long, device=h.device)
        ev_pos.scatter_(1, torch.where(is_end, sidx, J), tok_pos + 1)
        ev_pos = ev_pos[:, :J]
        span_real = torch.arange(J, device=h.device) < is_start.sum(1, keepdim=True)  # [B, J]

        L = T + J + 1
        def place(tok, ev, fill):  # -> [B, L, H, r]
            out = tok.new_full((B, L, Hh, r), fill)
            out = out.scatter(1, tok_pos[:, :, None, None].expand(B, T, Hh, r), tok) if tok is not None else out
            return out.scatter(1, ev_pos[:, :, None, None].expand(B, J, Hh, r), ev) if ev is not None else out

        zeros_tok = q.new_zeros(B, T, Hh, r)
        q_x = place(q, None, 0.0)
        k_x = place(zeros_tok, k_s, 0.0)
        v_x = place(zeros_tok, v_s, 0.0)
        b_x = place(zeros_tok + 0.5, b_s, 0.5)
        tok_valid = torch.ones(B, T, dtype=torch.bool, device=h.device) if valid is None else valid
        mask_x = torch.zeros(B, L, dtype=torch.bool, device=h.device)
        mask_x.scatter_(1, tok_pos, tok_valid)
        write_x = torch.zeros_like(mask_x)
        write_x.scatter_(1, ev_pos, span_real)
        mask_x = mask_x | write_x
        mask_x[:, dump] = False
        write_x[:, dump] = False

        reads, S_new = delta_rule(q_x, k_x, v_x, b_x, initial_state=S, mask=mask_x, write_mask=write_x,
                                  mode=layer.config.update_mode)
        m = reads.gather(1, tok_pos[:, :, None, None].expand(B, T, Hh, r))  # [B, T, H, r]
        return m.flatten(2), S_new, (b_s, span_real)


def strategy_for(granularity: str):
    return TokenWrite() if granularity == "token" else SpanWrite()
