"""`DeltaMemLayer`: the δ-mem parameters of one attention layer (docs/design.md section 2).

    q_t = l2norm(tanh(W_q h_t))      k_t = l2norm(tanh(W_k h_t))
    v_t = W_v h_t                    b_t = sigmoid(W_b h_t + c_b)   (one gate per state row)
    m_t = S q_t                      (read, before token t's write)
    q_proj(h_t) + s U_q m_t          o_proj(a_t) + s U_o m_t         (s = alpha / r)

The four input projections are stored as one `[4 H r, d]` matrix `W` (rows
W_q; W_k; W_v; W_b) so that a token costs one matmul. The layer owns only
δ-mem parameters; the base projections are read, never copied or changed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import kernels
from ..ops.step import step_core
from .config import DeltaMemConfig

BETA_EPS = 1e-6  # keep gates strictly inside (0, 1) so log(1 - b) stays finite


def _like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == ref.dtype else x.to(ref.dtype)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _unit(x: torch.Tensor) -> torch.Tensor:
    """`F.normalize(x, dim=-1, eps=1e-6)` in fewer tensor ops (same values)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-6)


class DeltaMemLayer(nn.Module):
    """Memory projections and corrections for one attention layer.

    Args:
        config: the adapter configuration.
        hidden_size: `d`, the width of the attention block's input.
        out_features: output width of each corrected projection, e.g. `{"q": 576, "o": 576}`.
        base_weights: the base projection weights, used by the "base_slice" init.
    """

    def __init__(self, config: DeltaMemConfig, hidden_size: int, out_features: dict[str, int],
                 base_weights: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.config = config
        self.num_heads, self.rank = config.num_state_heads, config.rank
        rows = config.state_rows
        self.W = nn.Parameter(torch.empty(4 * rows, hidden_size))  # [W_q; W_k; W_v; W_b]
        self.c_b = nn.Parameter(torch.full((rows,), config.gate_bias_init))
        self.U = nn.ParameterDict({h: nn.Parameter(torch.zeros(out_features[h], rows)) for h in config.heads})
        self.reset_parameters(base_weights or {})

    def reset_parameters(self, base_weights: dict[str, torch.Tensor]) -> None:
        rows = self.config.state_rows
        with torch.no_grad():
            for part in self.W[: 3 * rows].split(rows):  # W_q, W_k, W_v: Kaiming-uniform like nn.Linear
                nn.init.kaiming_uniform_(part, a=math.sqrt(5))
            self.W[3 * rows:].zero_()  # W_b = 0: every gate starts at sigmoid(c_b)
            self.c_b.fill_(self.config.gate_bias_init)
            for name, U in self.U.items():
                U.zero_()
                if self.config.init == "base_slice" and name in base_weights:
                    cols = base_weights[name][:, : min(rows, base_weights[name].shape[1])].float()
                    U[:, : cols.shape[1]] = 0.05 * cols / cols.norm(dim=0, keepdim=True).clamp_min(1e-12)

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`h [B, T, d]` -> `q, k, v, beta`, each `[B, T, H, r]` in float32."""
        qk, v, beta = self.project_packed(h)
        return qk[:, :, 0], qk[:, :, 1], v, beta

    def project_packed(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`project` with q and k kept in one tensor: `qk [B, T, 2, H, r]`, `v`, `beta` `[B, T, H, r]`."""
        B, T, _ = h.shape
        H, r = self.num_heads, self.rank
        x = _float(F.linear(_like(h, self.W), self.W)).view(B, T, 4, H, r)  # [q; k; v; gate logits]
        qk = _unit(torch.tanh(x[:, :, :2]))
        beta = torch.sigmoid(x[:, :, 3] + _float(self.c_b).view(H, r)).clamp(BETA_EPS, 1 - BETA_EPS)
        return qk, x[:, :, 2], beta

    def step(self, h: torch.Tensor, S: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding token, read then written: `project_packed` and `ops.step.step_core` in as few tensor
        ops as possible (the decode hot path; the same values), or in one fused kernel on CPU inference
        (`ops.kernels`, the same values to float32 rounding). `h [B, 1, d]`, `S [B, H, r, r]` float32
        -> `(m [B, 1, H r], new state [B, H, r, r])`."""
        B = h.shape[0]
        H, r = self.num_heads, self.rank
        arrays = kernels.arrays(self, h, S)
        if arrays is not None:  # CPU inference: the whole step in one compiled call
            m, S_new = kernels.write_step(h.view(B, -1), S, arrays, mode)
            return m.view(B, 1, H * r), S_new
        W, c_b = self.W, self.c_b
        x = F.linear(h.view(B, -1) if h.dtype == W.dtype else h.view(B, -1).to(W.dtype), W)
        x = (x if x.dtype == torch.float32 else x.float()).view(B, 4, H, r)  # [q; k; v; gate logits]
        t = torch.tanh(x[:, :2])  # [B, 2, H, r]
        qk = t / torch.linalg.vector_norm(t, dim=-1, keepdim=True).clamp_min(1e-6)
        beta = torch.sigmoid(x[:, 3] + (c_b if c_b.dtype == torch.float32 else c_b.float()).view(H, r))
        m, S_new = step_core(qk, x[:, 2], beta.clamp(BETA_EPS, 1 - BETA_EPS), S, mode)
        return m.view(B, 1, H * r), S_new

    def project_q(self, h: torch.Tensor) -> torch.Tensor:
        """Only `q` of `project` (what a read-only call needs): `h [B, T, d]` -> `[B, T, H, r]` in float32."""
        B, T, _ = h.shape
        rows = self.config.state_rows
        return _unit(torch.tanh(_float(F.linear(_like(h, self.W), self.W[:rows]))).view(B, T, self.num_heads, self.rank))

    def correction(self, name: str, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`s * U_name m`: `m [B, T, H r]` -> `[B, T, out]` in the dtype of `like`."""
        U = self.U[name]
        return F.linear(m.to(U.dtype), U).mul_(self.config.scale).to(like.dtype)

    def add_correction(self, name: str, m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out + s * U_name m` for a projection output `out [B, T, out]`: one `addmm` when the dtypes agree;
        on a CPU decode step (`ops.kernels`) added into `out` in place."""
        arrays = kernels.arrays(self, out, m) if out.shape[-2] == 1 and out.is_contiguous() else None
        if arrays is not None:  # a CPU decode step: added in place by one compiled call
            return kernels.add_lowrank_(out, m, arrays["U." + name], arrays["scale"])
        U = self.U[name]
        if out.dtype != U.dtype or m.dtype != U.dtype:
            return out + self.correction(name, m, out)
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), m.reshape(-1, m.shape[-1]), U.t(), alpha=self.config.scale)
        return flat.view(out.shape)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.config
        return f"H={c.num_state_heads}, r={c.rank}, heads={c.heads}, granularity={c.write_granularity}, mode={c.update_mode}"
