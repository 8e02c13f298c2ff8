"""Argument checks shared by every delta-rule implementation.

Errors name the argument and the expected shape; nothing is broadcast silently.
"""

from __future__ import annotations

import functools

import torch

MODES = ("standard", "no_decay")


def float32_state(fn):
    """Run a delta-rule op with autocast off for its inputs' device.

    Under bf16 autocast (training on a GPU) the op's matmuls would otherwise run in bf16; the
    `r x r` state is tiny and its rounding errors compound over thousands of writes, so the
    recurrence stays float32 whatever the caller's autocast says. No cost when autocast is off.
    """

    @functools.wraps(fn)
    def wrapper(q, *args, **kwargs):
        dev = q.device.type if isinstance(q, torch.Tensor) else "cpu"
        if not torch.is_autocast_enabled(dev):
            return fn(q, *args, **kwargs)
        with torch.autocast(dev, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _shape(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in x.shape) + "]"


def check_sequence_inputs(q, k, v, beta, initial_state, mask) -> tuple[int, int, int, int]:
    """Validate `[B, T, H, r]` inputs; return `(B, T, H, r)`."""
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape [B, T, H, r], got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape [B, T, H, r] (4 dims), got {_shape(x)}")
    B, T, H, r = q.shape
    for name, x in (("k", k), ("v", v), ("beta", beta)):
        if tuple(x.shape) != (B, T, H, r):
            raise ValueError(f"{name} must have shape [B, T, H, r] = [{B}, {T}, {H}, {r}] like q, got {_shape(x)}")
    check_beta(beta)
    if initial_state is not None:
        check_state(initial_state, B, H, r, "initial_state")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, T):
            got = _shape(mask) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must have shape [B, T] = [{B}, {T}], got {got}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = valid token), got dtype {mask.dtype}")
    return B, T, H, r


def check_step_inputs(q, k, v, beta, state) -> tuple[int, int, int]:
    """Validate one-token `[B, H, r]` inputs and a `[B, H, r, r]` state; return `(B, H, r)`."""
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape [B, H, r] (one token), got {got}")
    B, H, r = q.shape
    for name, x in (("k", k), ("v", v), ("beta", beta)):
        if tuple(x.shape) != (B, H, r):
            raise ValueError(f"{name} must have shape [B, H, r] = [{B}, {H}, {r}] like q, got {_shape(x)}")
    check_beta(beta)
    check_state(state, B, H, r, "state")
    return B, H, r


def check_state(state, B: int, H: int, r: int, name: str) -> None:
    if not isinstance(state, torch.Tensor) or tuple(state.shape) != (B, H, r, r):
        got = _shape(state) if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"{name} must have shape [B, H, r, r] = [{B}, {H}, {r}, {r}], got {got}")


def check_beta(beta: torch.Tensor) -> None:
    # One reduction over the gates; skipped under tracing costs nothing measurable next to the op itself.
    with torch.no_grad():
        if beta.numel() and not bool(((beta > 0) & (beta < 1)).all()):
            lo, hi = beta.min().item(), beta.max().item()
            raise ValueError(f"beta must lie strictly inside (0, 1), got values in [{lo:.4g}, {hi:.4g}]")


def check_write_mask(write_mask, B: int, T: int) -> None:
    if write_mask is None:
        return
    if not isinstance(write_mask, torch.Tensor) or tuple(write_mask.shape) != (B, T):
        got = _shape(write_mask) if isinstance(write_mask, torch.Tensor) else type(write_mask).__name__
        raise ValueError(f"write_mask must have shape [B, T] = [{B}, {T}], got {got}")
    if write_mask.dtype != torch.bool:
        raise ValueError(f"write_mask must be a bool tensor (True = token writes), got dtype {write_mask.dtype}")


def combine_masks(mask, write_mask):
    """Tokens that write: valid AND not read-only. None means every token writes."""
    if mask is None:
        return write_mask
    return mask if write_mask is None else mask & write_mask
